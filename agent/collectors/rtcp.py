"""Call quality from Asterisk's RTCPSent / RTCPReceived AMI events.

What the events carry (Asterisk 20.20.1, tests/data/ami/rtcp_events.txt):
  - RTCPSent is the report Asterisk sent about the stream it RECEIVES from
    the peer (its report block's SourceSSRC is the peer's SSRC): direction
    "rx" here. RTCPReceived is the peer's report about the stream Asterisk
    SENDS (SourceSSRC = the SSRC in Asterisk's RTCPSent): direction "tx".
  - Streams are told apart by the channel's Uniqueid, never by the event's
    SSRC field: RTCPReceived's "SSRC" is garbage (0xeeae0f24, 0xeeae0f25, ...
    counting up across unrelated channels).
  - Report<i>FractionLost is RFC 3550's 8-bit fixed point (lost/expected in
    the reporter's interval * 256); Report<i>CumulativeLost and
    Report<i>HighestSequence (+ 65536 * SequenceNumberCycles) are cumulative.
    Checked: for lossy1 the last RTCPSent/RTCPReceived CumulativeLost (107,
    236) equal the lp/rlp of RTPAUDIOQOS at hangup (event_stream.txt).
  - Report<i>IAJitter is in RTP timestamp units, as RFC 3550 says: 13 in the
    RTCPSent of SIP/127.0.0.1-00000000 at 01:02:42 is 13 / 8000 Hz = 1.625 ms,
    and CHANNEL(rtpqos,audio,rxjitter) read at that moment is 0.001625 (s)
    (getvar_rtpqos_sip_clean.txt). So jitter_ms = IAJitter / clock_rate * 1000.
  - RTT is only in RTCPReceived, in seconds (RTPAUDIOQOSRTT avgrtt=0.000442
    for the same calls). Values near 65536 s are garbage (RTT: 65535.9997
    from a report whose LSR/DLSR wrap): >= 65535 s is discarded. A report
    with LSR 0 has no round trip to measure (RFC 3550 6.4.1) and Asterisk
    prints RTT 0.0000 for it: discarded too.
  - MES is Asterisk's Media Experience Score (0..100), in both events.
  - A peer may report on nothing yet: pjsua's first RRs have SourceSSRC
    0x00000000 and HighestSequence 0 (lossy1/lossy2 in rtcp_events.txt);
    such blocks are skipped. A report whose HighestSequence did not move
    since the previous one (the final RR after the last SR) carries no new
    loss or jitter information.

Reduction per report block (one stream direction of one channel):
  - packets lost and expected since the previous block of the same stream:
    the deltas of CumulativeLost and of the extended HighestSequence. Both
    fields are in the transcripts, and so is FractionLost (which agrees:
    lossy2's 27 lost of 222 expected is 31.1/256, the report says 31), but
    FractionLost is quantised to 1/256 and covers an interval of unknown
    length after a stream's first report (pjsua's first SR came after 12
    packets), so the deltas are used, and the first block of a stream is
    only a baseline;
  - jitter = IAJitter / clock_rate, in ms; RTT in ms when valid; MES.
Then over the window, per channel: each direction's loss is its packets
lost over its packets expected (summed over its blocks), its jitter the mean
of its blocks'; the channel's loss and jitter are those of its worse
direction; its RTT the mean of its valid RTTs (the last valid one before the
window when none is in it, else 0: on a local network the delay term is
small, see agent.mos); its MOS the E-model estimate from those; its MES the
lower of the two directions' latest. The node's Quality is the mean over
channels with a usable report in the window: "streams" counts them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from sipstatus.status import Quality

from ..mos import estimate_mos

#: RTT values at or above this many seconds are garbage (see module doc).
RTT_GARBAGE_S = 65535.0
#: A jump of the extended highest sequence number larger than this is a
#: restarted stream, not packets (RFC 3550 A.1 MAX_DROPOUT is 3000; a 5 s
#: report interval of 50 packets/s is 250 packets).
MAX_SEQUENCE_JUMP = 3000 * 4

RX = "rx"  # RTCPSent: how Asterisk receives the peer
TX = "tx"  # RTCPReceived: how the peer receives Asterisk


@dataclass(frozen=True, slots=True)
class BlockSample:
    """One report block reduced to what the window needs."""

    time: float
    channel: str
    direction: str
    lost: int | None  # packets lost since the previous block of the stream
    expected: int | None  # packets expected since then
    jitter_ms: float | None
    rtt_ms: float | None
    mes: float | None


@dataclass(frozen=True, slots=True)
class ChannelQuality:
    loss: float
    jitter_ms: float
    rtt_ms: float | None
    mos: float
    mes: float | None


@dataclass(slots=True)
class _Baseline:
    extended_seq: int
    cumulative_lost: int


@dataclass(slots=True)
class RtcpTracker:
    """Keeps the report blocks of the last `window` seconds, per channel."""

    window: float = 10.0
    clock_rate: int = 8000
    #: Report blocks that could not be read (a number that is not a number).
    malformed: int = 0
    _samples: deque[BlockSample] = field(default_factory=deque)
    _baselines: dict[tuple[str, str, str], _Baseline] = field(default_factory=dict)
    _last_rtt: dict[str, float] = field(default_factory=dict)

    def report(self, fields: Mapping[str, str], now: float) -> None:
        """Take one RTCPSent or RTCPReceived event's fields."""
        event = fields.get("Event")
        if event == "RTCPSent":
            direction = RX
        elif event == "RTCPReceived":
            direction = TX
        else:
            return
        channel = fields.get("Uniqueid") or fields.get("Channel")
        if not channel:
            self.malformed += 1
            return
        rtt = None
        try:
            count = int(fields.get("ReportCount", "0"))
            rtt = _rtt_ms(fields) if direction == TX else None
            mes = _float(fields.get("MES"))
            for i in range(count):
                sample = self._block(fields, f"Report{i}", channel, direction, now, rtt, mes)
                if sample is not None:
                    self._samples.append(sample)
        except (ValueError, KeyError):
            self.malformed += 1
        if rtt is not None:
            self._last_rtt[channel] = rtt
        self._prune(now)

    def _block(self, f: Mapping[str, str], p: str, channel: str, direction: str, now: float, rtt: float | None, mes: float | None) -> BlockSample | None:
        source = f[f"{p}SourceSSRC"]
        highest = int(f[f"{p}HighestSequence"])
        if int(source, 16) == 0 and highest == 0:
            return None  # a report about no stream yet
        extended = int(f.get(f"{p}SequenceNumberCycles", "0")) * 65536 + highest
        cumulative = int(f[f"{p}CumulativeLost"])
        jitter_ms = int(f[f"{p}IAJitter"]) / self.clock_rate * 1000.0
        key = (channel, direction, source)
        before = self._baselines.get(key)
        self._baselines[key] = _Baseline(extended, cumulative)
        lost: int | None = None
        expected: int | None = None
        if before is not None:
            expected = extended - before.extended_seq
            if expected == 0:
                # Nothing new since the previous report (the closing RR):
                # only its RTT and MES are news.
                return BlockSample(now, channel, direction, None, None, None, rtt, mes)
            if 0 < expected <= MAX_SEQUENCE_JUMP:
                lost = min(expected, max(0, cumulative - before.cumulative_lost))
            else:
                expected = None  # a restarted stream: this block is a new baseline
        return BlockSample(now, channel, direction, lost, expected, jitter_ms, rtt, mes)

    def hangup(self, channel: str) -> None:
        """Forget a channel that hung up: its streams are no longer active."""
        self._samples = deque(s for s in self._samples if s.channel != channel)
        self._baselines = {k: v for k, v in self._baselines.items() if k[0] != channel}
        self._last_rtt.pop(channel, None)

    def clear(self) -> None:
        self._samples.clear()
        self._baselines.clear()
        self._last_rtt.clear()

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        while self._samples and self._samples[0].time < horizon:
            self._samples.popleft()

    def channels(self, now: float) -> dict[str, ChannelQuality]:
        """Per channel (Uniqueid), the figures over the window ending at `now`."""
        self._prune(now)
        grouped: dict[str, list[BlockSample]] = {}
        for s in self._samples:
            grouped.setdefault(s.channel, []).append(s)
        out = {}
        for channel, samples in grouped.items():
            losses, jitters, latest_mes = [], [], []
            for direction in (RX, TX):
                mine = [s for s in samples if s.direction == direction]
                expected = sum(s.expected for s in mine if s.expected)
                dj = [s.jitter_ms for s in mine if s.jitter_ms is not None]
                if expected and dj:
                    losses.append(sum(s.lost for s in mine if s.expected and s.lost is not None) / expected)
                    jitters.append(sum(dj) / len(dj))
                mes = [s.mes for s in mine if s.mes is not None]
                if mes:
                    latest_mes.append(mes[-1])
            if not losses:
                continue
            rtts = [s.rtt_ms for s in samples if s.rtt_ms is not None]
            rtt = sum(rtts) / len(rtts) if rtts else None
            loss, jitter = max(losses), max(jitters)
            delay_rtt = rtt if rtt is not None else self._last_rtt.get(channel, 0.0)
            out[channel] = ChannelQuality(
                loss=loss,
                jitter_ms=jitter,
                rtt_ms=rtt,
                mos=estimate_mos(loss, jitter, delay_rtt),
                mes=min(latest_mes) if latest_mes else None,
            )
        return out

    def quality(self, now: float) -> Quality:
        """The node's Quality over the window: means over the channels with a
        usable report; `streams=0` (everything else unknown) when none."""
        per = list(self.channels(now).values())
        if not per:
            return Quality(streams=0)
        rtts = [c.rtt_ms for c in per if c.rtt_ms is not None]
        mes = [c.mes for c in per if c.mes is not None]
        return Quality(
            mos=sum(c.mos for c in per) / len(per),
            loss=sum(c.loss for c in per) / len(per),
            jitter=sum(c.jitter_ms for c in per) / len(per),
            rtt=sum(rtts) / len(rtts) if rtts else None,
            streams=len(per),
            mes=sum(mes) / len(mes) if mes else None,
        )


def _rtt_ms(fields: Mapping[str, str]) -> float | None:
    rtt = _float(fields.get("RTT"))
    if rtt is None or rtt < 0 or rtt >= RTT_GARBAGE_S:
        return None
    if int(fields.get("Report0LSR", "0") or "0") == 0:
        return None  # no Last SR to measure a round trip from
    return rtt * 1000.0


def _float(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    value = float(text)
    return value if value == value else None  # NaN is no value
