"""The fake agents of tests/support/fake_agents.py: in process and as a program."""

import asyncio

from sipstatus.codec import decode, encode
from sipstatus.status import State
from tests.support.fake_agents import AgentsProcess, FakeAgent, status_for


def test_fake_agent_status_is_a_valid_body():
    status = status_for("ast1", capacity=0.625, limit=200)
    assert decode(encode(status)).weight == 63


def test_fake_agent_set_bumps_seq_and_keeps_instance():
    async def run():
        agent = await FakeAgent("ast1").start()
        try:
            first = agent.status
            second = agent.set(state="draining", channels=40)
            assert (second.seq, second.instance) == (first.seq + 1, first.instance)
            assert second.state is State.DRAINING and second.asterisk.channels == 40
        finally:
            await agent.stop()

    asyncio.run(run())


def test_agents_process_serves_and_obeys_commands():
    with AgentsProcess("ast1:0.5:100", "ast2:0.8:100") as agents:
        assert set(agents.uris) == {"ast1", "ast2"}
        agents.command("set ast2 state=draining")
