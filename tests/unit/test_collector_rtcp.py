"""RTCP reduction against the real RTCPSent/RTCPReceived events of
rtcp_events.txt (5 calls: ua1, ua2, ua3 clean; lossy1, lossy2 with 5 % drop
each way). Expected figures are computed here from the raw fields, by a
different route than the code (cumulative counters over the whole call)."""

import math
from datetime import datetime

import pytest

from agent.collectors.rtcp import RtcpTracker
from tests.support.fake_ami import Transcript

CALLERS = {"ua1": "clean", "ua2": "clean", "ua3": "clean", "lossy1": "lossy", "lossy2": "lossy"}


def events():
    return [e for e in Transcript.load("rtcp_events").events() if e.get("Event") in ("RTCPSent", "RTCPReceived")]


def fed_tracker(window=1000.0, until=None):
    tracker = RtcpTracker(window=window, clock_rate=8000)
    last = 0.0
    for e in events():
        if until is not None and e.time > until:
            break
        tracker.report(dict(e.pairs), e.time)
        last = e.time
    return tracker, last


def uniqueid_of(caller):
    return next(e.get("Uniqueid") for e in events() if e.get("CallerIDNum") == caller)


def expected_by_hand(caller):
    """Loss, jitter (ms), RTT (ms) and MOS for one call, from the raw fields:
    loss over the whole call per direction = (last CumulativeLost - first) /
    (last HighestSequence - first), ignoring blocks about SSRC 0; worse
    direction; mean IAJitter / 8 (ms at 8 kHz); RTT from RTCPReceived when
    LSR != 0 and RTT < 65535 s; then G.107 with G.711+PLC (Bpl 25.1) and
    d = RTT/2 + 2 jitter + 20 ms."""
    mine = [e for e in events() if e.get("CallerIDNum") == caller and int(e.get("Report0SourceSSRC"), 16) != 0]
    losses, jitters = [], []
    for kind in ("RTCPSent", "RTCPReceived"):
        blocks = [e for e in mine if e.get("Event") == kind]
        seq = [int(b.get("Report0HighestSequence")) + 65536 * int(b.get("Report0SequenceNumberCycles")) for b in blocks]
        lost = [int(b.get("Report0CumulativeLost")) for b in blocks]
        losses.append((lost[-1] - lost[0]) / (seq[-1] - seq[0]))
        jitters.append(sum(int(b.get("Report0IAJitter")) for b in blocks) / len(blocks) / 8.0)
    rtts = [float(e.get("RTT")) * 1000 for e in mine
            if e.get("Event") == "RTCPReceived" and int(e.get("Report0LSR")) != 0 and float(e.get("RTT")) < 65535]
    loss, jitter = max(losses), max(jitters)
    rtt = sum(rtts) / len(rtts)
    d = rtt / 2 + 2 * jitter + 20
    r = 93.2 - (0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0)) - 95 * (100 * loss) / (100 * loss + 25.1)
    mos = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    return loss, jitter, rtt, mos


@pytest.mark.parametrize("caller", sorted(CALLERS))
def test_per_call_figures_agree_with_the_raw_counters(caller):
    tracker, last = fed_tracker()
    got = tracker.channels(last)[uniqueid_of(caller)]
    loss, jitter, rtt, mos = expected_by_hand(caller)
    assert got.loss == pytest.approx(loss, abs=0.01)
    assert got.jitter_ms == pytest.approx(jitter, rel=0.25)
    assert got.rtt_ms == pytest.approx(rtt, abs=0.2)
    assert got.mos == pytest.approx(mos, abs=0.1)


def test_clean_calls_score_high_and_lossy_calls_lower():
    tracker, last = fed_tracker()
    per = tracker.channels(last)
    clean = [per[uniqueid_of(c)].mos for c, kind in CALLERS.items() if kind == "clean"]
    lossy = [per[uniqueid_of(c)].mos for c, kind in CALLERS.items() if kind == "lossy"]
    assert min(clean) > 4.3
    assert max(lossy) < 3.6
    assert min(clean) - max(lossy) > 0.8
    # 5 % dropped each way at the caller: Asterisk receives ~5-7 % lost
    # (RTCPSent), the caller reports ~10-12 % (RTCPReceived: its own 5 % on
    # top of what Asterisk echoed back with gaps).
    for c in ("lossy1", "lossy2"):
        assert 0.08 < per[uniqueid_of(c)].loss < 0.15


def test_garbage_rtt_near_65536_seconds_is_discarded():
    # ua1's RTCPReceived carry RTT: 65535.9997, 65536.0000, ... between good ones.
    assert any(float(e.get("RTT")) >= 65535 for e in events() if e.get("CallerIDNum") == "ua1" and e.get("RTT"))
    tracker, last = fed_tracker()
    assert tracker.channels(last)[uniqueid_of("ua1")].rtt_ms < 5.0


def test_iajitter_is_in_rtp_timestamp_units():
    # The last RTCPSent of ua1's channel before the getvar capture carries
    # IAJitter 13; CHANNEL(rtpqos,audio,rxjitter) read then is 0.001625 s.
    def start(name):
        return datetime.strptime(Transcript.load(name).wallclock_start(), "%Y-%m-%dT%H:%M:%S%z")

    at = (start("getvar_rtpqos_sip_clean") - start("rtcp_events")).total_seconds()
    sent = [e for e in events() if e.get("Channel") == "SIP/127.0.0.1-00000000" and e.get("Event") == "RTCPSent" and e.time <= at]
    answer = Transcript.load("getvar_rtpqos_sip_clean").answer_to("Getvar")
    rxjitter = next(m for m in Transcript.load("getvar_rtpqos_sip_clean").messages if m.get("Variable") == "CHANNEL(rtpqos,audio,rxjitter)")
    assert answer and int(sent[-1].get("Report0IAJitter")) / 8000 == pytest.approx(float(rxjitter.get("Value")))


def test_quality_is_the_mean_over_calls_with_mes_alongside():
    tracker, last = fed_tracker()
    q = tracker.quality(last)
    per = tracker.channels(last).values()
    assert q.streams == 5
    assert q.mos == pytest.approx(sum(c.mos for c in per) / 5)
    assert q.loss == pytest.approx(sum(c.loss for c in per) / 5)
    # Asterisk's own MES is carried, never in place of the estimate
    assert 0 <= q.mes <= 100 and 1 <= q.mos <= 4.5


def test_window_keeps_only_recent_reports():
    tracker, last = fed_tracker(window=10.0)
    assert tracker.quality(last).streams == 5
    assert tracker.quality(last + 30.0).streams == 0
    assert tracker.quality(last + 30.0).mos is None  # no streams: unknown, not zero


def test_first_reports_about_ssrc_zero_carry_nothing():
    # lossy1 and lossy2 start with RRs about SSRC 0x00000000 (pjsua before media).
    early = events()[:2]
    assert all(int(e.get("Report0SourceSSRC"), 16) == 0 for e in early)
    tracker = RtcpTracker()
    for e in early[:2]:
        tracker.report(dict(e.pairs), e.time)
    assert tracker.quality(early[1].time).streams == 0


def test_hangup_forgets_the_channel():
    tracker, last = fed_tracker()
    tracker.hangup(uniqueid_of("lossy1"))
    assert tracker.quality(last).streams == 4
    assert uniqueid_of("lossy1") not in tracker.channels(last)


def test_malformed_numbers_are_counted_not_fatal():
    tracker = RtcpTracker()
    bad = dict(events()[10].pairs)
    bad["Report0IAJitter"] = "lots"
    tracker.report(bad, 1.0)
    assert tracker.malformed == 1
    assert math.isclose(tracker.quality(1.0).streams, 0)


def test_fraction_lost_agrees_with_the_cumulative_deltas():
    # RFC 3550 6.4.1: FractionLost = 256 * lost / expected in the interval.
    # Checked on every pair of consecutive lossy reports of a stream.
    checked = 0
    for caller in ("lossy1", "lossy2"):
        for kind in ("RTCPSent", "RTCPReceived"):
            blocks = [e for e in events() if e.get("CallerIDNum") == caller and e.get("Event") == kind
                      and int(e.get("Report0SourceSSRC"), 16) != 0]
            for a, b in zip(blocks, blocks[1:], strict=False):
                expected = int(b.get("Report0HighestSequence")) - int(a.get("Report0HighestSequence"))
                lost = int(b.get("Report0CumulativeLost")) - int(a.get("Report0CumulativeLost"))
                if expected > 50:
                    assert int(b.get("Report0FractionLost")) == pytest.approx(256 * lost / expected, abs=1.0)
                    checked += 1
    assert checked > 20


def test_the_first_block_of_a_stream_is_a_baseline_only():
    tracker = RtcpTracker()
    first = next(e for e in events() if e.get("CallerIDNum") == "lossy2" and int(e.get("Report0SourceSSRC"), 16) != 0)
    tracker.report(dict(first.pairs), first.time)
    assert tracker.quality(first.time).streams == 0
