"""The running agent facing bad input and faults (spec 4.6, 4.7.3, 5.7).

Refused SUBSCRIBEs (489, 423, 403, 401), a flood of SUBSCRIBEs from SIPp
against the caps, watchers that reject or ignore NOTIFYs, and a compositor
that is gone. Same set-up as test_agent_service: the real agent process, the
fake AMI server, raw UDP watchers that see every byte.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from sipstatus.sip import make_response
from sipstatus.sip.digest import DigestClient, challenges_of
from tests.support.agent_faults import QUICK, agent_with_watchers, new_branch, run
from tests.support.agents import AgentProcess, Compositor, agent_config, fake_asterisk, rss
from tests.support.ports import free_port
from tests.support.sipp import SIPP, run_sipp

pytestmark = pytest.mark.slow


def test_subscribe_for_another_event_package_gets_489_with_allow_events(tmp_path):
    async def main():
        async with fake_asterisk() as ami:
            agent, _, (watcher,) = await agent_with_watchers(tmp_path, ami, "127.0.0.1")
            try:
                request = watcher.subscribe(event="presence")
                response = await watcher.response(request.call_id)
                await agent.command("status")  # the agent has handled it: a NOTIFY would be out by now
                return response, watcher.notifies()
            finally:
                watcher.close()
                await agent.kill()

    response, notifies = run(main())
    assert response.status == 489
    assert response.allow_events == ["load-status", "load-affinity"]  # both packages it serves (spec/load-affinity.md 2)
    assert notifies == []


def test_expires_below_60_gets_423_with_min_expires_60(tmp_path):
    async def main():
        async with fake_asterisk() as ami:
            agent, _, (watcher,) = await agent_with_watchers(tmp_path, ami, "127.0.0.1")
            try:
                short = await watcher.response(watcher.subscribe(expires=59).call_id)
                minimum = await watcher.response(watcher.subscribe(expires=60).call_id)
                return short, minimum
            finally:
                watcher.close()
                await agent.kill()

    short, minimum = run(main())
    assert short.status == 423 and short.min_expires == 60
    assert minimum.status == 200 and minimum.expires == 60


def test_an_untrusted_source_gets_403_and_never_a_notify(tmp_path):
    # Trust only 127.0.0.2: the watcher on 127.0.0.2 is served, the one on
    # 127.0.0.1 is refused. While the trusted one receives five heartbeats,
    # the refused socket receives nothing but its answers.
    async def main():
        async with fake_asterisk() as ami:
            agent, _, (trusted, stranger) = await agent_with_watchers(
                tmp_path, ami, "127.0.0.2", "127.0.0.1", args=("--trust", "127.0.0.2/32"))
            try:
                served = trusted.subscribe()
                assert (await trusted.response(served.call_id)).status == 200
                refused = [await stranger.response(stranger.subscribe(**kw).call_id)
                           for kw in ({}, {"expires": 30}, {"expires": None})]
                # Spec 4.6.1: authorization comes before the duration check, so
                # a stranger learns nothing of the policy; the event check is first.
                bad_event = await stranger.response(stranger.subscribe(event="dialog").call_id)
                await trusted.notify(served.call_id, count=5, timeout=30)
                return refused, bad_event, stranger.received
            finally:
                trusted.close()
                stranger.close()
                await agent.kill()

    refused, bad_event, received = run(main())
    assert [r.status for r in refused] == [403, 403, 403]
    assert bad_event.status == 489
    assert [r.message.start_line() for r in received] == [
        "SIP/2.0 403 Forbidden (source not trusted)"] * 3 + ["SIP/2.0 489 event package 'dialog' not supported"]


def test_digest_users_are_challenged_and_then_accepted(tmp_path):
    async def main():
        async with fake_asterisk() as ami:
            config = agent_config(ami.port, notifier={"users": {"proxy1": "s3cret"}, "trust": []}, **QUICK)
            agent, _, (watcher,) = await agent_with_watchers(tmp_path, ami, "127.0.0.1", config=config)
            try:
                results = {}
                for name, password, keep in (("sha256", "s3cret", None), ("md5", "s3cret", "MD5"),
                                             ("wrong", "guess", None)):
                    request = watcher.subscribe(user=f"proxy-{name}")
                    challenge = await watcher.response(request.call_id)
                    if keep:  # answer the MD5 challenge only, as SIPp does
                        challenge.headers[:] = [(n, v) for n, v in challenge.headers
                                                if n != "WWW-Authenticate" or f"algorithm={keep}" in v]
                    retry = new_branch(DigestClient("proxy1", password).authorize(request, challenge))
                    watcher.subscribe(authorization=retry)
                    answer = await watcher.response(request.call_id, cseq=2)
                    results[name] = (challenge, answer)
                await watcher.notify(results["sha256"][1].call_id)
                await watcher.notify(results["md5"][1].call_id)
                await agent.command("status")
                return results, watcher.notifies(results["wrong"][1].call_id)
            finally:
                watcher.close()
                await agent.kill()

    results, to_the_refused = run(main())
    challenge = results["sha256"][0]
    assert challenge.status == 401
    # RFC 8760: a challenge per algorithm, SHA-256 first, MD5 last.
    assert [c.algorithm for c in challenges_of(challenge)] == ["SHA-256", "MD5"]
    assert results["sha256"][1].status == 200 and results["md5"][1].status == 200
    assert results["wrong"][1].status == 401
    assert to_the_refused == []


@pytest.mark.interop
@pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) not installed")
def test_a_subscribe_flood_meets_the_caps_and_the_existing_subscriber_keeps_its_heartbeats(tmp_path):
    # SIPp sends 2 x 4000 SUBSCRIBEs at 1000/s from 127.0.0.1, each a new
    # watcher; the per-source cap (16) admits 16 and answers the rest 503
    # with Retry-After. A subscriber on 127.0.0.2 is served throughout.
    # Memory: the first flood grows the agent (server transactions live 32 s,
    # Timer J); after they are gone, a second flood of the same size must
    # reuse that memory, not add as much again (a leak would).
    async def flood(port, rounds_dir):
        return await run_sipp("agent/flood.xml", "-t", "u1", "-i", "127.0.0.1", "-p", str(free_port()),
                              "-m", "4000", "-r", "1000", "-timeout", "60s", tmp=rounds_dir,
                              remote=f"127.0.0.1:{port}", timeout=120)

    async def main():
        async with fake_asterisk() as ami:
            config = agent_config(ami.port, notifier={"max_subscriptions": 64}, **QUICK)
            agent, port, (watcher,) = await agent_with_watchers(tmp_path, ami, "127.0.0.2", config=config)
            try:
                served = watcher.subscribe()
                await watcher.notify(served.call_id, count=3, timeout=30)
                process = agent.ps()
                before = rss(process)
                loop = asyncio.get_running_loop()
                results, sizes, windows = [], [], []
                for n in (1, 2):
                    if n == 2:
                        # Timer J (32 s) of the first flood's transactions, and the
                        # accepted flood subscriptions end (their NOTIFYs time out).
                        await agent.wait_log(r"ended: notify-timeout", timeout=60)
                        await asyncio.sleep(35)
                    rounds_dir = tmp_path / f"round{n}"
                    rounds_dir.mkdir()
                    start = loop.time()
                    results.append(await flood(port, rounds_dir))
                    windows.append((start, loop.time()))
                    sizes.append(rss(process))
                heartbeats = [[r for r in watcher.notifies(served.call_id) if a <= r.at <= b] for a, b in windows]
                after = await watcher.notify(served.call_id, where=lambda r: r.at > windows[-1][1], timeout=10)
                return before, sizes, results, heartbeats, windows, after, agent.lines
            finally:
                watcher.close()
                await agent.kill()

    before, sizes, results, heartbeats, windows, after, lines = run(main(), timeout=400)
    for result in results:
        assert result.returncode == 0, result.explain()  # every answer 200 or 503 + Retry-After: 60
        table = result.received()
        assert table["503"] + table["200"] == 4000
        assert table["200"] <= 16  # the per-source cap
    assert results[0].received()["200"] == 16
    assert any("too many subscriptions from this address" in line for line in lines)
    # The existing subscription was served during both floods and after them.
    for (a, b), beats in zip(windows, heartbeats, strict=True):
        assert len(beats) >= max(1, int(b - a) - 2), (b - a, len(beats))
    assert after.state == "active"
    first_growth, second_growth = sizes[0] - before, sizes[1] - sizes[0]
    assert sizes[1] - before < 64 * 2**20, (before, sizes)
    assert second_growth < max(first_growth / 2, 4 * 2**20), (before, sizes)


def test_a_notify_answered_481_ends_the_subscription_at_once(tmp_path):
    async def main():
        async with fake_asterisk() as ami:
            agent, _, (watcher, other) = await agent_with_watchers(tmp_path, ami, "127.0.0.1", "127.0.0.2")
            try:
                request = watcher.subscribe()
                await watcher.notify(request.call_id, count=2, timeout=10)
                watcher.answer = 481  # the proxy restarted and forgot the subscription
                rejected = len(watcher.notifies(request.call_id)) + 1
                await watcher.notify(request.call_id, count=rejected, timeout=10)
                await agent.wait_log(r"ended: notify-rejected", timeout=10)
                # Five more heartbeat periods: nothing more on that dialog.
                served = other.subscribe()
                await other.notify(served.call_id, count=6, timeout=30)
                return len(watcher.notifies(request.call_id)), rejected
            finally:
                watcher.close()
                other.close()
                await agent.kill()

    total, rejected = run(main())
    assert total == rejected


def test_a_notify_refused_for_its_body_ends_the_subscription_and_is_logged_with_the_reason(tmp_path):
    # Spec 4.7.3: a 400 without Retry-After is a failed NOTIFY: the
    # subscription ends without a further NOTIFY; the log names status and
    # reason (how an operator finds what the proxy disliked).
    reason = "Invalid load-status body: weight (weight-hint)"

    async def main():
        async with fake_asterisk() as ami:
            agent, _, (watcher, other) = await agent_with_watchers(tmp_path, ami, "127.0.0.1", "127.0.0.2")
            try:
                request = watcher.subscribe()
                await watcher.notify(request.call_id, count=2, timeout=10)
                watcher.answer = lambda notify: make_response(notify, 400, reason)
                refused = len(watcher.notifies(request.call_id)) + 1
                await watcher.notify(request.call_id, count=refused, timeout=10)
                await agent.wait_log(r"ended: notify-failed", timeout=10)
                served = other.subscribe()
                await other.notify(served.call_id, count=5, timeout=30)  # five heartbeat periods
                return len(watcher.notifies(request.call_id)), refused, agent.lines
            finally:
                watcher.close()
                other.close()
                await agent.kill()

    total, refused, lines = run(main())
    assert total == refused
    assert any(f"failed: 400 {reason}" in line for line in lines)


def test_a_notify_answered_503_with_retry_after_pauses_the_notifies_until_then(tmp_path):
    # Spec 4.7.3 and 8.6: not a failure; no NOTIFY before Retry-After has passed.
    async def main():
        async with fake_asterisk() as ami:
            agent, _, (watcher,) = await agent_with_watchers(tmp_path, ami, "127.0.0.1")
            try:
                request = watcher.subscribe()
                await watcher.notify(request.call_id, count=2, timeout=10)
                busy = len(watcher.notifies(request.call_id)) + 1
                watcher.answer = lambda notify: make_response(notify, 503, "Busy", headers=[("Retry-After", "6")])
                answered = await watcher.notify(request.call_id, count=busy, timeout=10)
                watcher.answer = 200
                resumed = await watcher.notify(request.call_id, count=busy + 1, timeout=20)
                return answered, resumed
            finally:
                watcher.close()
                await agent.kill()

    answered, resumed = run(main())
    assert resumed.at - answered.at >= 6 - 0.05  # heartbeats are 1 s apart otherwise
    assert resumed.state == "active"


def test_a_proxy_that_stops_answering_loses_its_subscription_after_timer_f(tmp_path):
    # A vanished proxy: the NOTIFY is retransmitted (UDP) for 64*T1 = 32 s,
    # then the subscription ends (spec 4.7.3) and nothing more is sent to it.
    async def main():
        async with fake_asterisk() as ami:
            agent, _, (silent, other) = await agent_with_watchers(tmp_path, ami, "127.0.0.1", "127.0.0.2")
            try:
                request = silent.subscribe()
                await silent.notify(request.call_id, count=2, timeout=10)
                silent.answer = None
                loop = asyncio.get_running_loop()
                gone = loop.time()
                line = await agent.wait_log(r"ended: notify-timeout", timeout=60)
                ended = loop.time()
                count = len(silent.notifies(request.call_id))
                served = other.subscribe()
                await other.notify(served.call_id, count=5, timeout=30)
                return gone, ended, line, count, len(silent.notifies(request.call_id)), silent.notifies(request.call_id)
            finally:
                silent.close()
                other.close()
                await agent.kill()

    gone, ended, line, count, later, notifies = run(main())
    assert request_call_id_in(line, notifies)
    assert ended - gone >= 30  # Timer F, not sooner
    assert later == count  # nothing after the end
    # Only one NOTIFY was outstanding: the unanswered one, retransmitted (same CSeq).
    unanswered = [r for r in notifies if r.at > gone]
    assert len({r.message.cseq.number for r in unanswered}) == 1


def request_call_id_in(line: str, notifies) -> bool:
    return bool(notifies) and notifies[0].message.call_id in line


def test_publications_back_off_while_the_compositor_fails_and_resume_when_it_is_back(tmp_path):
    # Spec 5.7: after a 500 without Retry-After wait 5 s, doubling (up to
    # 60 s), then publish the newest body; not one PUBLISH per heartbeat (1 s).
    async def main():
        compositor = await Compositor().open()
        compositor.answer = lambda request: make_response(request, 500, "compositor broken")
        try:
            async with fake_asterisk() as ami:
                config = agent_config(ami.port, notifier={"listen": []}, **QUICK)
                target = f"sip:load-status@127.0.0.1:{compositor.port}"
                async with AgentProcess(tmp_path, config, "--publish", target) as agent:
                    await compositor.wait_for(lambda: len(compositor.received) >= 3, timeout=40, what="3 PUBLISH")
                    compositor.answer = compositor.grant  # back
                    await compositor.wait_for(lambda: len(compositor.received) >= 5, timeout=40,
                                              what="PUBLISHes after the recovery")
                    return compositor.received, agent.lines
        finally:
            compositor.close()

    received, lines = run(main())
    gaps = [b.at - a.at for a, b in zip(received[:3], received[1:4], strict=True)]
    assert gaps[0] >= 5 - 0.05, gaps
    assert all(b >= 1.5 * a for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    # Each failure is logged with its status, reason and the wait (spec 5.7).
    assert sum(bool(re.search(r"PUBLISH to .* failed: 500 compositor broken; will retry in \d+ s", line))
               for line in lines) == 3
    # The fourth, granted, is an initial publication (no entity tag) with the
    # newest body; then modifications with the tag.
    assert received[3].message.header("SIP-If-Match") is None and received[3].message.body
    assert received[3].status.seq > received[2].status.seq
    assert received[4].message.header("SIP-If-Match") == "e1"
