"""The running agent as a notifier (spec sections 4, 7.1 and 8), end to end.

Each test starts the real `sipstatus-agent run` process against the fake AMI
server (the recorded Asterisk transcripts) and subscribes to it over UDP
with a raw watcher that records every message as it arrives. The host and
network collectors are off and `scoring.unknown_capacity` is 1, so the only
changes are the ones a test makes: with CoreMaxCalls 10 one call is a
weight step of 10, a significant change (spec 8.3).

Timing: `agent.interval` is 30 s and the heartbeat 30 s (validity 90) where
a test proves that something happens *because of an event*: anything that
arrives within 10 s cannot have been the sampling tick or the heartbeat.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from sipstatus import codec
from tests.support.agents import (
    AgentProcess,
    ChannelEvents,
    OptionsResponder,
    Watcher,
    agent_config,
    fake_asterisk,
    seqs,
    toml,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

#: A sampling tick and a heartbeat this far apart can never explain a NOTIFY
#: that arrives within REACTION_BOUND of its cause.
SLOW = {"agent": {"interval": 30.0, "validity": 90}, "scoring": {"unknown_capacity": 1.0}}
REACTION_BOUND = 10.0


def run(coro, timeout: float = 120.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def calls_of(received) -> int | None:
    status = received.status
    return None if status is None or status.asterisk is None else status.asterisk.calls


async def subscribed(watcher: Watcher, **kw):
    """SUBSCRIBE, the 200, and the first NOTIFY; returns (request, 200, NOTIFY)."""
    request = watcher.subscribe(**kw)
    response = await watcher.response(request.call_id)
    assert response.status == 200, response.start_line()
    first = await watcher.notify(request.call_id)
    return request, response, first


def test_the_first_notify_follows_the_200_at_once_with_the_full_state(tmp_path):
    async def main():
        async with fake_asterisk() as ami:
            port = free_port()
            async with AgentProcess(tmp_path, agent_config(ami.port, **SLOW), "--listen", f"udp:127.0.0.1:{port}") as agent:
                measured = await agent.wait_measured()
                watcher = await Watcher(("127.0.0.1", port)).open()
                request, response, first = await subscribed(watcher)
                watcher.close()
                return measured, watcher, request, response, first

    measured, watcher, request, response, first = run(main())
    # The 200 came first, then the NOTIFY (spec 4.6.4), on the dialog the 200 made.
    kinds = [r.message.start_line() for r in watcher.received]
    assert kinds[0].startswith("SIP/2.0 200") and kinds[1].startswith("NOTIFY")
    assert response.expires == 600 and len(response.contacts) == 1
    assert "load-status" in (response.header("Allow-Events") or "")
    notify = first.message
    assert notify.header("Event") == "load-status"
    assert notify.header("Subscription-State") in ("active;expires=600", "active;expires=599")
    assert notify.content_type == codec.MEDIA_TYPE
    assert notify.from_addr.tag == response.to_addr.tag and notify.call_id == request.call_id
    # The full state of the node (spec 4.5): every member the agent measures.
    status = first.status
    assert status.node == "ast-test" and status.state.value == "active" and status.weight == 100
    assert status.asterisk.channels == 0 and status.asterisk.calls == 0 and status.asterisk.limit == 10
    assert status.instance == measured["instance"] and status.seq > measured["seq"]


def test_a_channel_event_reaches_the_subscriber_without_waiting_for_the_sampling_tick(tmp_path):
    async def main():
        channel = ChannelEvents.recorded()
        async with fake_asterisk() as ami:
            port = free_port()
            async with AgentProcess(tmp_path, agent_config(ami.port, **SLOW), "--listen", f"udp:127.0.0.1:{port}") as agent:
                await agent.wait_measured()
                watcher = await Watcher(("127.0.0.1", port)).open()
                request, _, first = await subscribed(watcher)
                assert calls_of(first) == 0
                loop = asyncio.get_running_loop()
                sent = loop.time()
                assert await ami.emit(channel.newchannel) == 1
                up = await watcher.notify(request.call_id, where=lambda r: calls_of(r) == 1, timeout=REACTION_BOUND)
                went = loop.time()
                assert await ami.emit(channel.hangup) == 1
                down = await watcher.notify(request.call_id, where=lambda r: calls_of(r) == 0 and r.at > went,
                                            timeout=REACTION_BOUND)
                watcher.close()
                return sent, up, went, down

    sent, up, went, down = run(main())
    assert up.status.weight == 90 and up.status.asterisk.channels == 1
    assert down.status.weight == 100
    assert up.at - sent < REACTION_BOUND and down.at - went < REACTION_BOUND


def test_drain_and_undrain_from_the_command_line_reach_the_subscriber(tmp_path):
    async def main():
        async with fake_asterisk() as ami:
            port = free_port()
            async with AgentProcess(tmp_path, agent_config(ami.port, **SLOW), "--listen", f"udp:127.0.0.1:{port}") as agent:
                await agent.wait_measured()
                watcher = await Watcher(("127.0.0.1", port)).open()
                request, _, first = await subscribed(watcher)
                printed = await agent.command("drain")
                drained = await watcher.notify(request.call_id, where=lambda r: r.status.state.value == "draining",
                                               timeout=REACTION_BOUND)
                await agent.command("undrain")
                back = await watcher.notify(request.call_id, where=lambda r: r.at > drained.at
                                            and r.status.state.value == "active", timeout=REACTION_BOUND)
                watcher.close()
                return first, printed, drained, back

    first, printed, drained, back = run(main())
    assert first.status.state.value == "active"
    assert "state     draining" in printed
    assert drained.status.weight == 0 and drained.status.reason == "draining"
    assert back.status.weight == 100 and back.status.seq > drained.status.seq


def test_a_probe_target_that_stops_answering_makes_the_node_down_promptly(tmp_path):
    async def main():
        responder = await OptionsResponder().open()
        try:
            async with fake_asterisk() as ami:
                port = free_port()
                config = agent_config(ami.port, probe_port=responder.port, **SLOW)
                async with AgentProcess(tmp_path, config, "--listen", f"udp:127.0.0.1:{port}") as agent:
                    await agent.wait_measured()
                    watcher = await Watcher(("127.0.0.1", port)).open()
                    request, _, _ = await subscribed(watcher)
                    await watcher.notify(request.call_id, where=lambda r: r.status.state.value == "active"
                                         and r.status.probe.samples, timeout=REACTION_BOUND)
                    responder.answering = False
                    down = await watcher.notify(request.call_id, where=lambda r: r.status.state.value == "down",
                                                timeout=REACTION_BOUND)
                    responder.answering = True
                    up = await watcher.notify(request.call_id, where=lambda r: r.at > down.at
                                              and r.status.state.value == "active", timeout=REACTION_BOUND)
                    watcher.close()
                    return down, up
        finally:
            responder.close()

    down, up = run(main())
    assert down.status.reason == "sip probe: 3 unanswered in a row" and down.status.weight == 0
    assert up.status.probe.samples


def test_sigterm_ends_every_subscription_with_probation_and_a_down_body_and_exits_0(tmp_path):
    async def main():
        async with fake_asterisk() as ami:
            port = free_port()
            async with AgentProcess(tmp_path, agent_config(ami.port, **SLOW), "--listen", f"udp:127.0.0.1:{port}") as agent:
                await agent.wait_measured()
                watchers = [await Watcher(("127.0.0.1", port), host=f"127.0.0.{i}").open() for i in (1, 2, 3)]
                dialogs = [(w, (await subscribed(w))[0].call_id) for w in watchers]
                loop = asyncio.get_running_loop()
                signalled = loop.time()
                agent.signal(signal.SIGTERM)
                finals = [await w.notify(call_id, where=lambda r: r.state == "terminated", timeout=REACTION_BOUND)
                          for w, call_id in dialogs]
                code = await agent.wait(REACTION_BOUND)
                exited = loop.time()
                for w in watchers:
                    w.close()
                return signalled, finals, code, exited, agent.lines

    signalled, finals, code, exited, lines = run(main())
    assert code == 0
    assert exited - signalled < REACTION_BOUND  # well before the next sampling tick (30 s)
    for final in finals:
        assert final.message.header("Subscription-State") == "terminated;reason=probation;retry-after=2"
        status = final.status
        assert (status.state.value, status.capacity, status.weight) == ("down", 0.0, 0)
        assert status.reason == "agent shutting down"
        assert final.at - signalled < REACTION_BOUND
    assert not [line for line in lines if "unanswered" in line]  # every final NOTIFY was answered


def test_every_notify_carries_a_greater_seq_than_the_one_before_heartbeats_included(tmp_path):
    async def main():
        channel = ChannelEvents.recorded()
        async with fake_asterisk() as ami:
            port = free_port()
            # validity 3: a heartbeat every second; one sample a second.
            config = agent_config(ami.port, agent={"interval": 1.0, "validity": 3},
                                  scoring={"unknown_capacity": 1.0})
            async with AgentProcess(tmp_path, config, "--listen", f"udp:127.0.0.1:{port}") as agent:
                await agent.wait_measured()
                watchers = [await Watcher(("127.0.0.1", port), host=f"127.0.0.{i}").open() for i in (1, 2)]
                dialogs = [(w, (await subscribed(w))[0].call_id) for w in watchers]
                for event in (channel.newchannel, channel.hangup) * 3:
                    await ami.emit(event)
                    await asyncio.sleep(0.3)
                # and then only heartbeats
                w, call_id = dialogs[0]
                await w.notify(call_id, count=len(w.notifies(call_id)) + 4, timeout=30)
                agent.signal(signal.SIGTERM)
                for w, call_id in dialogs:
                    await w.notify(call_id, where=lambda r: r.state == "terminated", timeout=REACTION_BOUND)
                assert await agent.wait(REACTION_BOUND) == 0
                for w in watchers:
                    w.close()
                return [w.notifies(call_id) for w, call_id in dialogs]

    per_subscription = run(main())
    for notifies in per_subscription:
        numbers = seqs(notifies)
        assert len(numbers) >= 8
        assert all(a < b for a, b in zip(numbers, numbers[1:], strict=False)), numbers
        # heartbeats among them: NOTIFYs whose weight did not change
        weights = [r.status.weight for r in notifies]
        assert any(a == b for a, b in zip(weights, weights[1:], strict=False))


def test_publication_heartbeats_keep_their_interval_whatever_the_sampling_interval(tmp_path):
    # validity 3: a heartbeat PUBLISH at least every second (spec 5.2.2, 7.2,
    # 8.7), while the agent samples only every 10 s. Heartbeats tied to the
    # sampling tick would leave the node stale at the compositor for 7 s in 10.
    async def main():
        from tests.support.agents import Compositor

        compositor = await Compositor().open()
        try:
            async with fake_asterisk() as ami:
                config = agent_config(ami.port, agent={"interval": 10.0, "validity": 3},
                                      scoring={"unknown_capacity": 1.0}, notifier={"listen": []})
                target = f"sip:load-status@127.0.0.1:{compositor.port}"
                async with AgentProcess(tmp_path, config, "--publish", target, name="publisher") as agent:
                    await agent.wait_measured()
                    start = len(compositor.received)
                    await compositor.wait_for(lambda: len(compositor.received) >= start + 6, timeout=REACTION_BOUND,
                                              what="6 heartbeat PUBLISHes")
                    return compositor.received
        finally:
            compositor.close()

    received = run(main())
    bodies = [r for r in received if r.message.body]
    assert len(bodies) >= 6
    numbers = seqs(bodies)
    assert all(a < b for a, b in zip(numbers, numbers[1:], strict=False))
    assert all(r.status.validity == 3 for r in bodies)


def test_sighup_applies_who_may_subscribe_and_defers_the_rest_to_a_restart(tmp_path):
    # Trust moves from 127.0.0.1 to 127.0.0.2: the subscription from
    # 127.0.0.1 ends without a NOTIFY (spec 4.6.2), a new SUBSCRIBE from there
    # gets 403, one from 127.0.0.2 is served. The validity (90 -> 3) and the
    # rate are not applied (the heartbeats were derived from them at start):
    # bodies keep validity 90, and the log names both keys.
    async def main():
        async with fake_asterisk() as ami:
            port = free_port()
            config = agent_config(ami.port, notifier={"trust": ["127.0.0.1/32"]}, **SLOW)
            async with AgentProcess(tmp_path, config, "--listen", f"udp:127.0.0.1:{port}") as agent:
                await agent.wait_measured()
                old = await Watcher(("127.0.0.1", port)).open()
                request, _, _ = await subscribed(old)
                changed = agent_config(ami.port, notifier={"trust": ["127.0.0.2/32"], "max_rate": 8.0},
                                       agent={"interval": 30.0, "validity": 3},
                                       scoring={"unknown_capacity": 1.0})
                agent.config_path.write_text(toml(changed))
                mark = len(agent.lines)
                agent.signal(signal.SIGHUP)
                await agent.wait_log(r"reload: configuration .* applied", start=mark)
                await agent.wait_log(r"ended: unauthorized", start=mark)
                refused = await old.response(old.subscribe().call_id)
                new = await Watcher(("127.0.0.1", port), host="127.0.0.2").open()
                _, _, served = await subscribed(new)
                body = await agent.status()
                notifies_to_old = len(old.notifies(request.call_id))
                old.close()
                new.close()
                return agent.lines[mark:], refused, served, body, notifies_to_old

    lines, refused, served, body, notifies_to_old = run(main())
    assert any("agent.validity, notifier.max_rate changed; that takes effect at the next restart" in line
               for line in lines), lines
    assert refused.status == 403
    assert notifies_to_old == 1  # only the first: no final NOTIFY when authorization is withdrawn
    assert served.status.validity == 90 and body["validity"] == 90


def test_sighup_keeps_the_command_line_overrides(tmp_path):
    # --trust and --listen on the command line replace the file's lists; a
    # reload of the same file must not bring the file's lists back.
    async def main():
        async with fake_asterisk() as ami:
            port = free_port()
            config = agent_config(ami.port, notifier={"trust": ["127.0.0.3/32"]}, **SLOW)
            async with AgentProcess(tmp_path, config, "--listen", f"udp:127.0.0.1:{port}",
                                    "--trust", "127.0.0.2/32") as agent:
                await agent.wait_measured()
                watcher = await Watcher(("127.0.0.1", port), host="127.0.0.2").open()
                request, _, _ = await subscribed(watcher)
                mark = len(agent.lines)
                agent.signal(signal.SIGHUP)
                await agent.wait_log(r"reload: configuration .* applied", start=mark)
                again = await watcher.response(watcher.subscribe(dialog=watcher.dialog(request.call_id)).call_id,
                                               cseq=2)
                watcher.close()
                return agent.lines[mark:], again

    lines, again = run(main())
    assert not [line for line in lines if "changed" in line or "ended" in line], lines
    assert again.status == 200  # the refresh from 127.0.0.2 is still authorized
