"""The agent against a live Asterisk 22: channels and calls as Asterisk
itself counts them, and its call limit (tests/peers/asterisk.sh builds it).

Each test starts its own Asterisk, the agent daemon and a subscriber; the
figures compared are those of the subscriber's NOTIFYs and Asterisk's own
"core show channels count" (whose "active calls" is the count `maxcalls`
is compared with: ast_active_calls() in main/pbx.c)."""

import asyncio
import re
import time

import pytest

from tests.support.asterisk import G711A_PCAP, AsteriskConfig, Calls, pcap_without_every
from tests.support.asterisk_live import LiveNode, counts, settle

# (a missing peer skips the whole tier: tests/conftest.py)
pytestmark = [pytest.mark.asterisk]


def run(coro, timeout: float = 240.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def calls_up(node: LiveNode, exten: str, count: int, *, hold: float, expect: tuple[int, int]) -> Calls:
    """Start `count` calls to `exten` and wait until Asterisk counts `expect`
    (channels, calls)."""
    calls = await Calls(node.asterisk, exten, count, hold=hold, tmp=node.tmp).start()
    node.calls.append(calls)
    await settle(lambda: _counts_are(node, expect), 30.0, f"Asterisk to count {expect}")
    return calls


async def _counts_are(node: LiveNode, expect: tuple[int, int]) -> bool:
    return await node.asterisk.acounts() == expect


def test_idle_asterisk_is_zero_channels_zero_calls_known_not_absent(tmp_path):
    async def main():
        async with LiveNode(tmp_path) as node:
            own, status = await node.counts_equal_asterisks()
            return own, status

    own, status = run(main())
    assert own == (0, 0)
    assert counts(status) == (0, 0) and status.state.value == "active"


def test_plain_two_leg_and_local_calls_are_counted_as_asterisk_counts_them(tmp_path):
    # 3 Echo calls (1 channel, 1 call each), 2 Dial() calls looping back
    # into Asterisk (3 channels: caller, AppDial leg, looped-back callee in
    # Echo; 2 calls) and 2 Dial(Local/echo@test) calls (3 channels: caller,
    # Local ;1 as the Dial leg, Local ;2 running Echo; 2 calls).
    async def main():
        async with LiveNode(tmp_path) as node:
            seen = []
            await calls_up(node, "echo", 3, hold=40, expect=(3, 3))
            seen.append(await node.counts_equal_asterisks())
            await calls_up(node, "dial", 2, hold=40, expect=(9, 7))
            seen.append(await node.counts_equal_asterisks())
            await calls_up(node, "local", 2, hold=40, expect=(15, 11))
            seen.append(await node.counts_equal_asterisks())
            return seen

    seen = run(main())
    for own, status in seen:
        assert counts(status) == own


def test_thirty_and_more_channels_are_counted_as_asterisk_counts_them(tmp_path):
    async def main():
        async with LiveNode(tmp_path) as node:
            await calls_up(node, "dial", 12, hold=40, expect=(36, 24))
            return await node.counts_equal_asterisks()

    own, status = run(main())
    assert own == (36, 24) and counts(status) == own


def test_every_call_ended_is_zero_again(tmp_path):
    async def main():
        async with LiveNode(tmp_path) as node:
            calls = await calls_up(node, "local", 3, hold=3, expect=(9, 6))
            stats = await calls.finish()
            await settle(lambda: _counts_are(node, (0, 0)), 20.0, "Asterisk to count no channel")
            own, status = await node.counts_equal_asterisks()
            return stats, own, status

    stats, own, status = run(main())
    assert stats.get("SuccessfulCall") == 3
    assert own == (0, 0) and counts(status) == (0, 0)


def test_at_maxcalls_with_local_channels_the_node_is_overloaded_as_asterisk_refuses_calls(tmp_path):
    # The defect 1: maxcalls = 10, 6 Echo calls and 2 Dial(Local/..)
    # calls. Asterisk counts 10 calls (each Local ;2 half runs the dialplan)
    # and refuses the next INVITE; the agent counted 8 Linkedids and said
    # active. Now it counts 10 of 10: overloaded.
    async def main():
        async with LiveNode(tmp_path, AsteriskConfig(maxcalls=10)) as node:
            await calls_up(node, "echo", 6, hold=40, expect=(6, 6))
            await calls_up(node, "local", 2, hold=40, expect=(12, 10))
            overloaded = await node.first(lambda s: s.state.value == "overloaded", after=node.now() - 5.0,
                                          timeout=20.0, what="overloaded at Asterisk's limit")
            refused = await Calls(node.asterisk, "echo", 1, hold=1, tmp=node.tmp).start()
            node.calls.append(refused)
            await refused.finish()
            own = await node.asterisk.acounts()
            return overloaded.status, refused.refused, own

    status, refused, own = run(main())
    assert own == (12, 10)
    assert refused == 1  # Asterisk answered the 11th call 503
    assert status.asterisk.limit == 10 and status.asterisk.calls == 10
    assert status.weight == 0 and "calls 10/10" in status.reason


def test_maxcalls_is_the_limit_in_the_body(tmp_path):
    async def main():
        async with LiveNode(tmp_path, AsteriskConfig(maxcalls=7)) as node:
            received = await node.first(lambda s: s.state.value == "active", timeout=20.0, what="active")
            return received.status

    status = run(main())
    assert status.asterisk.limit == 7 and status.asterisk.calls == 0


def test_confbridge_calls_are_counted_and_its_announcer_channels_are_not_seen(tmp_path):
    # ConfBridge's announcer (CBAnn/...) is an internal channel: AMI shows
    # it neither in events nor in CoreShowChannels, so the agent's channels
    # are fewer than "core show channels" by the announcers. It runs no
    # dialplan: the calls, which the limit applies to, are equal.
    async def main():
        async with LiveNode(tmp_path) as node:
            calls = await Calls(node.asterisk, "conf", 3, hold=40, tmp=node.tmp).start()
            node.calls.append(calls)
            await settle(lambda: _calls_are(node, 3), 30.0, "3 calls in the conference")
            await asyncio.sleep(1.0)
            own = await node.asterisk.acounts()
            listed = await node.asterisk.acli("core show channels")
            status = await node.first(lambda s: s.asterisk is not None and s.asterisk.calls == own[1]
                                      and s.asterisk.channels is not None, after=node.now() - 5.0, timeout=20.0,
                                      what="the conference's calls")
            return own, listed, status.status

    own, listed, status = run(main())
    announcers = sum(1 for line in listed.splitlines() if line.startswith("CBAnn/"))
    assert own == (5, 3) and announcers == 2  # CBAnn/room1-N;1 and ;2, in "core show channels" only
    assert status.asterisk.calls == own[1] == 3
    assert status.asterisk.channels == own[0] - announcers == 3


async def _calls_are(node: LiveNode, calls: int) -> bool:
    return (await node.asterisk.acounts())[1] == calls


def test_calls_per_second_equal_asterisks_own_calls_processed_over_the_same_ten_seconds(tmp_path):
    # 5 calls a second for 16 s; the agent's cps (new calls over its 10 s
    # window) read at the end of a 10 s span, against the growth of
    # Asterisk's own "calls processed" over that span.
    async def main():
        async with LiveNode(tmp_path) as node:
            calls = await Calls(node.asterisk, "echo", 80, hold=0.5, rate=5.0, tmp=node.tmp).start()
            node.calls.append(calls)
            await asyncio.sleep(3.0)
            first = await asyncio.to_thread(_processed, node)
            await asyncio.sleep(10.0)
            second = await asyncio.to_thread(_processed, node)
            body = await node.control_status()
            stats = await calls.finish()
            return (second[0] - first[0]) / (second[1] - first[1]), body["asterisk"]["cps"], stats

    asterisks, agents, stats = run(main())
    print(f"\n[asterisk tier] cps: agent {agents:.2f}, Asterisk {asterisks:.2f} (SIPp -r 5)")
    assert stats.get("SuccessfulCall") == 80
    assert 4.0 <= asterisks <= 6.0  # SIPp kept its rate
    assert abs(agents - asterisks) <= 0.35, (agents, asterisks)


def _processed(node: LiveNode) -> tuple[int, float]:
    """Asterisk's "calls processed", and the monotonic time of the answer."""
    text = node.asterisk.cli("core show channels count")
    return int(re.search(r"(\d+) calls? processed", text).group(1)), time.monotonic()


async def quality_of(node: LiveNode, calls: Calls, streams: int) -> dict:
    """The agent's quality once `streams` calls have RTCP reports from
    about 5 s of audio."""
    await settle(lambda: _calls_are(node, streams), 30.0, f"{streams} calls up")
    await asyncio.sleep(6.0)
    _, body = await node.control_until(lambda b: (b.get("quality") or {}).get("streams") == streams, 20.0,
                                       f"quality over {streams} streams")
    await calls.finish()
    return body["quality"]


def test_loss_equals_the_loss_in_the_rtp_sent_and_lowers_the_mos(tmp_path):
    # RTP from SIPp's own G.711 pcap, whole and with every 20th packet left
    # out (5 % loss); Asterisk measures what it receives and reports it in
    # its RTCP (RTCPSent events), which the agent reads.
    lossy = tmp_path / "lossy.pcap"
    kept, dropped = pcap_without_every(G711A_PCAP, lossy, 20)

    async def main():
        async with LiveNode(tmp_path) as node:
            clean = await Calls(node.asterisk, "echo", 2, hold=9, tmp=node.tmp, pcap=G711A_PCAP).start()
            node.calls.append(clean)
            whole = await quality_of(node, clean, 2)
            await asyncio.sleep(11.0)  # the quality window (10 s) forgets them
            bad = await Calls(node.asterisk, "echo", 2, hold=9, tmp=node.tmp, pcap=lossy).start()
            node.calls.append(bad)
            return whole, await quality_of(node, bad, 2)

    whole, lossy_quality = run(main())
    print(f"\n[asterisk tier] quality: clean {whole}, {dropped}/{kept + dropped} dropped {lossy_quality}")
    assert whole["loss"] == 0.0
    # 1 packet in 20 is missing from any stretch of the stream the reports cover.
    assert lossy_quality["loss"] == pytest.approx(1 / 20, abs=0.01)
    assert lossy_quality["mos"] < whole["mos"]
