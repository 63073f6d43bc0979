"""The simplified G.107 E-model in agent.mos, against values worked out by hand
from the formulas in ITU-T G.107 (R to MOS, Annex B) and G.113 Appendix I
(G.711 with PLC: Ie = 0, Bpl = 25.1)."""

import math

import pytest

from agent import mos


@pytest.mark.parametrize(
    ("r", "expected"),
    [
        # 1 + 0.035 R + 7e-6 R (R - 60)(100 - R), by hand:
        (93.2, 1 + 3.262 + 7e-6 * 93.2 * 33.2 * 6.8),  # 4.409: best G.711 call
        (80.0, 4.024),  # 1 + 2.8 + 0.224
        (60.0, 3.1),  # the cubic term vanishes at R = 60
        (50.0, 2.575),  # 1 + 1.75 - 0.175
        (0.0, 1.0),
        (-12.0, 1.0),
        (100.0, 4.5),
        (130.0, 4.5),
    ],
)
def test_r_to_mos_follows_g107_annex_b(r, expected):
    assert mos.mos_from_r(r) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (0.0, 0.0),
        (0.01, 95 * 1 / 26.1),  # 3.64 R points for 1 % loss with PLC
        (0.05, 95 * 5 / 30.1),  # 15.78
        (1.0, 95 * 100 / 125.1),
    ],
)
def test_effective_impairment_uses_g711_plc_bpl(loss, expected):
    assert mos.effective_equipment_impairment(loss) == pytest.approx(expected)


def test_delay_impairment_has_its_knee_at_177_3_ms():
    assert mos.delay_impairment(100.0) == pytest.approx(2.4)
    assert mos.delay_impairment(177.3) == pytest.approx(0.024 * 177.3)
    assert mos.delay_impairment(277.3) == pytest.approx(0.024 * 277.3 + 11.0)


def test_one_way_delay_adds_half_rtt_twice_jitter_and_one_packet():
    assert mos.one_way_delay(rtt_ms=100.0, jitter_ms=10.0) == pytest.approx(50 + 20 + 20)


def test_clean_local_call_scores_just_under_the_g711_ceiling():
    # d = 0.5/2 + 2*2 + 20 = 24.25 ms -> Id = 0.582; R = 92.618
    r = 93.2 - 0.024 * 24.25
    expected = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    assert mos.estimate_mos(0.0, 2.0, 0.5) == pytest.approx(expected)
    assert 4.35 < expected < 4.41


def test_loss_lowers_the_estimate_monotonically():
    values = [mos.estimate_mos(loss / 100, 2.0, 1.0) for loss in range(0, 30, 2)]
    assert values == sorted(values, reverse=True)
    assert values[0] - values[-1] > 1.5


def test_estimate_is_clamped_to_1_for_hopeless_streams():
    assert mos.estimate_mos(1.0, 500.0, 5000.0) == 1.0


@pytest.mark.parametrize(
    ("loss", "jitter", "rtt"),
    [(-0.1, 1, 1), (1.5, 1, 1), (0, -1, 1), (0, 1, math.nan), (0, math.inf, 1)],
)
def test_impossible_inputs_are_refused_with_the_name(loss, jitter, rtt):
    with pytest.raises(ValueError, match="estimate_mos: (loss|jitter_ms|rtt_ms)"):
        mos.estimate_mos(loss, jitter, rtt)
