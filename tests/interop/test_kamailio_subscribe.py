"""Kamailio subscribing to the agents by itself: the native drop-in
(packaging/examples/kamailio/native/sipstatus.cfg) and the KEMI script
(packaging/examples/kamailio/kemi/) with WITH_SUBSCRIBE,
the real Kamailio, three real agents (`sipstatus-agent run`, each with a
fake AMI and a SIPp UAS as its Asterisk) and no other program.

The agents are found through the `agent` attribute of their dispatcher
destinations. Kamailio asks for subscriptions of SUBSCRIBE_EXPIRES = 60 s
(the least the spec allows), so that a refresh in the dialog comes within
the module's run (at a fifth of the duration left: 48 s in). Each way has
its own setup, both started with the module; the tests run in order on
them, the two ways' runs of a test one after the other (so the second
way's refresh comes while the first way's is awaited), each test leaving
every node subscribed again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import ROOT, SIPP_SCENARIOS
from tests.support.agents import Agent
from tests.support.fake_ami import FakeAmis, Scenario
from tests.support.kamailio import EXAMPLES, Kamailio, needs_kamailio, start_example
from tests.support.sipp import SippNode

pytestmark = needs_kamailio("jansson")

UAS = SIPP_SCENARIOS / "e2e" / "uas.xml"
VALIDITY = 3
EXPIRES = 60
#: node -> (CoreShowChannels transcript, agent max_calls).
NODES = {"ast1": ("coreshowchannels", 25), "ast2": ("coreshowchannels_idle", 10), "ast3": ("coreshowchannels_idle", 20)}


def native_fresh(value: str, now: float) -> str | None:
    """The agent instance of a fresh report in the native script's `ns`."""
    until, _, _, instance = value.split(";")[:4]
    return instance if int(until) > now else None


def kemi_fresh(value: str, now: float) -> str | None:
    """The agent instance of a fresh report in the KEMI script's `ns`."""
    entry = json.loads(value)
    body = json.loads(entry["body"])
    return body["instance"] if entry["received"] + body["validity"] > now else None


@dataclass(frozen=True)
class Way:
    config: Path
    fresh: Callable[[str, float], str | None]
    defines: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()


WAYS = {
    "native": Way(EXAMPLES / "native" / "kamailio.cfg", native_fresh),
    "kemi": Way(EXAMPLES / "kemi" / "kamailio.cfg", kemi_fresh,
                (("KEMI_SCRIPT", f'"{EXAMPLES / "kemi" / "sipstatus_kemi.py"}"'),),
                (("SIPSTATUS_PATH", str(ROOT)),)),
}


@dataclass
class Pool:
    kam: Kamailio
    agents: dict[str, Agent]
    way: Way
    #: Kamailio's subscriptions when they were first seen (`subscriptions`).
    first: dict[str, tuple[str, int]] = field(default_factory=dict)

    def held(self) -> dict[str, str]:
        """node -> agent instance of the fresh reports Kamailio holds."""
        now = time.time()
        out = {}
        for node, value in self.kam.htable("ns").items():
            instance = self.way.fresh(value, now)
            if instance is not None:
                out[node] = instance
        return out

    def subscriptions(self) -> dict[str, tuple[str, int]]:
        """node -> (Call-ID, CSeq) of Kamailio's own subscription."""
        return {node: (v.split(";")[0], int(v.split(";")[2])) for node, v in self.kam.htable("lssub").items()}

    def expected(self) -> dict[str, str]:
        return {name: agent.status()["instance"] for name, agent in self.agents.items()}

    def wait_converged(self, timeout: float = 30.0) -> float:
        """Seconds until Kamailio holds a fresh report of every agent's
        current instance."""
        start = time.monotonic()
        while (held := self.held()) != (expected := self.expected()):
            if time.monotonic() - start > timeout:
                raise AssertionError(f"Kamailio holds {held}, the agents report {expected}\n{self.kam.log_tail(20)}")
            time.sleep(0.1)
        return time.monotonic() - start


@contextmanager
def running_pool(way: Way, workdir: Path) -> Iterator[Pool]:
    amis = FakeAmis()
    uases: list[SippNode] = []
    agents: dict[str, Agent] = {}
    kam = None
    try:
        for name, (transcript, max_calls) in NODES.items():
            uas = SippNode(name, workdir, scenario=UAS)
            uas.start()
            uases.append(uas)
            port = amis.serve(Scenario(answers={"CoreShowChannels": transcript}))
            agents[name] = Agent(name, workdir, ami_port=port, probe=uas.uri, max_calls=max_calls, validity=VALIDITY)
            agents[name].start()
        kam = start_example(way.config, workdir, uases,
                            {"WITH_SUBSCRIBE": None, "SUBSCRIBE_CONTACT": '"sip:load-status@127.0.0.1:{port}"',
                             "SUBSCRIBE_EXPIRES": EXPIRES, **dict(way.defines)}, dict(way.env),
                            attrs={name: f"agent={agent.uri}" for name, agent in agents.items()})
        yield Pool(kam, agents, way)
    finally:
        if kam is not None:
            kam.stop()
        for agent in agents.values():
            agent.stop()
        for uas in uases:
            uas.stop()
        amis.close()


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Pool]]:
    """Both ways' setups, started together: their subscriptions come due for
    a refresh at about the same time, so the module waits for one refresh
    (EXPIRES) rather than one per way."""
    with ExitStack() as stack:
        yield {name: stack.enter_context(running_pool(way, tmp_path_factory.mktemp(f"kamailio-subscribe-{name}")))
               for name, way in WAYS.items()}


@pytest.fixture(params=list(WAYS))
def pool(request: pytest.FixtureRequest, pools: dict[str, Pool]) -> Pool:
    return pools[request.param]


def test_kamailio_subscribes_to_every_agent_by_itself(pool: Pool) -> None:
    took = pool.wait_converged()
    print(f"every node's report in Kamailio {took:.1f} s after the first look")
    pool.first = pool.subscriptions()
    assert set(pool.first) == set(NODES)


def test_subscriptions_are_refreshed_in_their_dialogs(pool: Pool) -> None:
    # The subscriptions as the test before saw them (the other way's tests
    # ran in between), else as they are now.
    first = pool.first or pool.subscriptions()
    deadline = time.monotonic() + EXPIRES
    while any(cseq < 2 for _, cseq in pool.subscriptions().values()):
        assert time.monotonic() < deadline, f"no refresh: {pool.subscriptions()}\n{pool.kam.log_tail(20)}"
        time.sleep(0.5)
    refreshed = pool.subscriptions()
    # Same dialogs (Call-IDs), next CSeq; the agents kept sending in them.
    assert {n: c for n, (c, _) in refreshed.items()} == {n: c for n, (c, _) in first.items()}
    assert all(cseq == 2 for _, cseq in refreshed.values())
    time.sleep(2 * VALIDITY)
    pool.wait_converged(timeout=1.0)


def test_a_restarted_agent_is_subscribed_to_again_within_seconds(pool: Pool) -> None:
    agent = pool.agents["ast2"]
    agent.stop()
    agent.start()
    took = pool.wait_converged(timeout=20.0)
    print(f"restarted agent's new instance in Kamailio {took:.1f} s after it served")


def test_a_killed_agent_is_subscribed_to_again_when_it_is_back(pool: Pool) -> None:
    agent = pool.agents["ast3"]
    old = pool.subscriptions()["ast3"]
    agent.kill()
    time.sleep(VALIDITY + 1)
    assert "ast3" not in pool.held()
    agent.start()
    took = pool.wait_converged(timeout=30.0)
    print(f"killed agent's new instance in Kamailio {took:.1f} s after it served again")
    assert pool.subscriptions()["ast3"][0] != old[0]


def test_after_its_own_restart_kamailio_subscribes_again(pool: Pool) -> None:
    pool.kam.stop()
    pool.kam.start()
    took = pool.wait_converged(timeout=20.0)
    print(f"restarted Kamailio holds every report {took:.1f} s after it answered")
