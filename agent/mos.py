"""A MOS estimate from loss, jitter and round-trip time: the simplified
ITU-T G.107 E-model, for G.711 with packet loss concealment.

    R      = R0 - Id - Ie_eff                     (G.107 section 7, A = 0, Is ~ 0)
    R0     = 93.2                                 (G.107 default parameters)
    d      = RTT/2 + 2 * jitter + PACKET_MS       one-way mouth-to-ear delay, ms
    Id     = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)
    Ie_eff = Ie + (95 - Ie) * Ppl / (Ppl + Bpl)   (G.107 eq. 7-29, random loss:
                                                   BurstR = 1)
    MOS    = 1 + 0.035 R + 7e-6 R (R - 60)(100 - R), 1 for R <= 0,
             4.5 for R >= 100                     (G.107 Annex B)

Ie and Bpl for G.711 with PLC are 0 and 25.1 (ITU-T G.113 Appendix I, the
table of equipment impairment and packet-loss robustness factors; without
PLC, Bpl is 4.3). Asterisk conceals lost G.711 frames when it transcodes
and every common handset does, so the PLC row is the realistic one.

The delay term `d` is an estimate, stated here so it can be argued with:
  - RTT/2: the network one-way delay, from RTCP (LSR/DLSR) round trips;
  - 2 * jitter: a jitter buffer sized at twice the interarrival jitter;
  - PACKET_MS = 20 ms: one packet of audio buffered at the sender. The
    recorded Asterisk calls send 160-octet G.711 packets (SentOctets /
    SentPackets = 40000 / 250 in rtcp_events.txt), i.e. 20 ms at 8 kHz;
    G.711's own algorithmic delay (0.125 ms) is negligible.
Below d = 177.3 ms the delay costs little (0.024 R per ms), so the estimate
is dominated by loss, which is what RTCP measures best.
"""

from __future__ import annotations

import math

#: G.107 default basic signal-to-noise ratio with default parameters.
R0 = 93.2
#: ITU-T G.113 Appendix I: G.711 equipment impairment factor.
IE_G711 = 0.0
#: ITU-T G.113 Appendix I: G.711 packet-loss robustness factor, with PLC.
BPL_G711_PLC = 25.1
#: Sender-side packetisation delay assumed in `d`, ms (ptime 20, see above).
PACKET_MS = 20.0
#: The G.107 delay impairment knee, ms.
DELAY_KNEE_MS = 177.3


def one_way_delay(rtt_ms: float, jitter_ms: float) -> float:
    """The mouth-to-ear delay `d` the E-model is fed with, in ms."""
    return rtt_ms / 2.0 + 2.0 * jitter_ms + PACKET_MS


def delay_impairment(d_ms: float) -> float:
    """Id, the simplified G.107 delay impairment for one-way delay `d_ms`."""
    excess = d_ms - DELAY_KNEE_MS
    return 0.024 * d_ms + (0.11 * excess if excess > 0 else 0.0)


def effective_equipment_impairment(loss: float, ie: float = IE_G711, bpl: float = BPL_G711_PLC) -> float:
    """Ie_eff for a loss fraction `loss` (0..1), random (not bursty) loss."""
    ppl = 100.0 * loss
    return ie + (95.0 - ie) * ppl / (ppl + bpl)


def r_factor(loss: float, jitter_ms: float, rtt_ms: float) -> float:
    """The transmission rating R for G.711 with PLC."""
    d = one_way_delay(rtt_ms, jitter_ms)
    return R0 - delay_impairment(d) - effective_equipment_impairment(loss)


def mos_from_r(r: float) -> float:
    """G.107 Annex B: R to MOS, clamped to [1, 4.5]."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    mos = 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)
    return min(4.5, max(1.0, mos))


def estimate_mos(loss: float, jitter_ms: float, rtt_ms: float) -> float:
    """The MOS estimate for one stream.

    `loss` is a fraction 0..1, `jitter_ms` the interarrival jitter and
    `rtt_ms` the round-trip time, both in milliseconds. Raises ValueError for
    values no measurement can give (negative, NaN, loss above 1), so that a
    reduction bug is loud instead of producing a plausible MOS.
    """
    for name, value in (("loss", loss), ("jitter_ms", jitter_ms), ("rtt_ms", rtt_ms)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"estimate_mos: {name} must be a finite number >= 0, got {value!r}")
    if loss > 1:
        raise ValueError(f"estimate_mos: loss is a fraction 0..1, got {loss!r}")
    return mos_from_r(r_factor(loss, jitter_ms, rtt_ms))
