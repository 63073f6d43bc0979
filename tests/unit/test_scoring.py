"""agent.scoring: state, capacity and reason from tables of inputs."""

import pytest

from agent.collectors.interface import AsteriskLink, Reading
from agent.config import ScoringConfig
from agent.scoring import REASON_MAX, Scorer, reason_text
from sipstatus.codec import _REASON
from sipstatus.status import Asterisk, Cpu, Memory, Quality, State

GiB = 2**30


def reading(cpu=0.17, calls=10, channels=None, limit=100, link=AsteriskLink.UP, mos=None, streams=0,
            load=(0.5, 0.5, 0.5), max_load=None, cps=1.0, available=8 * GiB, process=True, probe_failures=0):
    return Reading(
        cpu=Cpu(usage=cpu, cores=4, steal=0.0, load=load),
        memory=Memory(total=16 * GiB, available=available, used=16 * GiB - available) if available is not None else None,
        asterisk=None if link is not AsteriskLink.UP else Asterisk(
            channels=channels if channels is not None else calls, calls=calls, limit=limit, cps=cps),
        quality=Quality(mos=mos, streams=streams) if link is AsteriskLink.UP else None,
        link=link,
        max_load=max_load,
        asterisk_process=process,
        probe_failures_in_row=probe_failures,
    )


CFG = ScoringConfig(cpu_max=0.85, limit_margin=0.05)  # limit on calls, mos_min 3.0 over >= 3 streams, unknown cap 0.5


@pytest.mark.parametrize(
    ("name", "r", "state", "capacity"),
    [
        # capacity = min((0.85 - cpu) / 0.85, (limit - calls) / limit)
        ("idle node", reading(cpu=0.0, calls=0), State.ACTIVE, 1.0),
        ("cpu binds", reading(cpu=0.425, calls=10), State.ACTIVE, 0.5),
        ("calls bind", reading(cpu=0.085, calls=75), State.ACTIVE, 0.25),
        ("no limit: cpu alone", reading(cpu=0.17, calls=500, limit=None), State.ACTIVE, 0.8),
        ("b2b: limit counts calls, not channels", reading(cpu=0.0, calls=40, channels=60), State.ACTIVE, 0.6),
        ("cpu at the threshold", reading(cpu=0.85), State.OVERLOADED, 0.0),
        ("calls at the limit", reading(cpu=0.1, calls=100), State.OVERLOADED, 0.0),
        ("mos below floor", reading(mos=2.8, streams=5), State.OVERLOADED, 0.8),
        ("bad mos over too few streams", reading(mos=2.8, streams=2), State.ACTIVE, 0.8),
        ("memory nearly gone", reading(available=GiB // 2), State.OVERLOADED, 0.8),
        ("load at CoreMaxLoadAvg", reading(load=(4.0, 3.0, 2.0), max_load=4.0), State.OVERLOADED, 0.0),
        ("load under CoreMaxLoadAvg binds", reading(cpu=0.0, calls=0, load=(3.0, 1, 1), max_load=4.0), State.ACTIVE, 0.25),
        # unknown is never idle
        ("cpu unknown", reading(cpu=None, calls=0), State.ACTIVE, 0.5),
        ("cpu unknown, calls bind harder", reading(cpu=None, calls=80), State.ACTIVE, 0.2),
        ("ami unreachable, asterisk runs", reading(cpu=0.0, link=AsteriskLink.UNREACHABLE), State.ACTIVE, 0.5),
        ("ami unreachable, cpu binds harder", reading(cpu=0.68, link=AsteriskLink.UNREACHABLE), State.ACTIVE, 0.2),
        # down
        ("ami unreachable and no asterisk process", reading(link=AsteriskLink.UNREACHABLE, process=False), State.DOWN, 0.0),
        ("shutting down", reading(link=AsteriskLink.SHUTTING_DOWN), State.DOWN, 0.0),
        ("stopping gracefully", reading(link=AsteriskLink.STOPPING), State.DRAINING, 0.8),
        ("probe unanswered 3 times", reading(probe_failures=3), State.DOWN, 0.0),
        ("probe unanswered twice", reading(probe_failures=2), State.ACTIVE, 0.8),
        ("probe disabled", reading(probe_failures=None), State.ACTIVE, 0.8),
    ],
)
def test_state_and_capacity_table(name, r, state, capacity):
    score = Scorer(CFG).score(r)
    assert (score.state, round(score.capacity, 6)) == (state, capacity), name
    if score.reason is not None:
        assert _REASON.fullmatch(score.reason), score.reason


@pytest.mark.parametrize(
    ("r", "reason"),
    [
        (reading(cpu=0.9), "overloaded: cpu 90%"),
        (reading(cpu=0.9, calls=100), "overloaded: cpu 90%, calls 100/100"),
        (reading(link=AsteriskLink.SHUTTING_DOWN), "asterisk is shutting down"),
        (reading(link=AsteriskLink.STOPPING), "asterisk stopping gracefully"),
        (reading(probe_failures=4), "sip probe: 4 unanswered in a row"),
        (reading(cpu=None), "unknown: cpu"),
        (reading(link=AsteriskLink.UNREACHABLE), "unknown: asterisk"),
        (reading(), None),
    ],
)
def test_reasons_say_why(r, reason):
    assert Scorer(CFG).score(r).reason == reason


def test_a_gracefully_stopping_asterisk_drains_even_when_overloaded_but_a_probe_verdict_is_down():
    assert Scorer(CFG).score(reading(cpu=0.99, link=AsteriskLink.STOPPING)).state is State.DRAINING
    assert Scorer(CFG).score(reading(link=AsteriskLink.STOPPING, probe_failures=3)).state is State.DOWN


def test_draining_wins_over_overloaded_but_not_over_down():
    assert Scorer(CFG).score(reading(cpu=0.99), draining=True).state is State.DRAINING
    assert Scorer(CFG).score(reading(link=AsteriskLink.SHUTTING_DOWN), draining=True).state is State.DOWN


@pytest.mark.parametrize(
    ("series", "states"),
    [
        # cpu: enter at 0.85, leave only below 0.80
        ([0.84, 0.86, 0.84, 0.81, 0.80, 0.79, 0.84], "AOOOOAA"),
        # a node hovering just under the threshold never flaps
        ([0.849, 0.848, 0.849, 0.847], "AAAA"),
    ],
)
def test_cpu_hysteresis(series, states):
    scorer = Scorer(CFG)
    got = "".join(scorer.score(reading(cpu=u, calls=0)).state.value[0].upper() for u in series)
    assert got == states


def test_calls_hysteresis_leaves_below_limit_minus_margin():
    scorer = Scorer(CFG)  # limit 100, margin max(1, 5 % of 100) = 5
    got = "".join(scorer.score(reading(cpu=0.0, calls=n)).state.value[0].upper() for n in [99, 100, 99, 96, 95, 94, 99])
    assert got == "AOOOOAA"


def test_small_limits_still_have_a_margin_of_one_call():
    scorer = Scorer(CFG)
    got = "".join(scorer.score(reading(cpu=0.0, calls=n, limit=4)).state.value[0].upper() for n in [4, 3, 2, 3])
    assert got == "OOAA"


def test_mos_hysteresis_and_clearing_when_calls_end():
    scorer = Scorer(CFG)  # enter below 3.0, leave at 3.2 or more
    seq = [(3.1, 5), (2.9, 5), (3.1, 5), (3.2, 5), (2.9, 5), (None, 0)]
    got = "".join(scorer.score(reading(mos=m, streams=s)).state.value[0].upper() for m, s in seq)
    assert got == "AOOAOA"


def test_unknown_keeps_a_trigger_as_it_was():
    scorer = Scorer(CFG)
    assert scorer.score(reading(cpu=0.9)).state is State.OVERLOADED
    assert scorer.score(reading(cpu=None)).state is State.OVERLOADED  # no news is not good news
    assert scorer.score(reading(cpu=0.5)).state is State.ACTIVE


def test_limit_can_be_configured_to_count_channels():
    cfg = ScoringConfig(limit_applies_to="channels")
    assert Scorer(cfg).score(reading(cpu=0.0, calls=40, channels=60)).capacity == pytest.approx(0.4)
    assert Scorer(cfg).score(reading(cpu=0.0, calls=40, channels=100)).state is State.OVERLOADED


def test_cps_limit_when_configured():
    cfg = ScoringConfig(cps_max=10.0)
    assert Scorer(cfg).score(reading(cpu=0.0, calls=0, cps=2.5)).capacity == pytest.approx(0.75)
    assert Scorer(cfg).score(reading(cpu=0.0, calls=0, cps=10.0)).state is State.OVERLOADED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('say "hi"\\', "say ?hi??"),
        ("é", "?"),
        ("x" * 60, "x" * 45 + "..."),
    ],
)
def test_reason_text_keeps_to_the_spec_rule(text, expected):
    out = reason_text(text)
    assert out == expected and len(out) <= REASON_MAX and _REASON.fullmatch(out)


def test_the_shipped_cpu_threshold_stops_calls_only_at_saturation():
    # spec/scoring.md "Two conditions": a busy node is preferred less (its
    # capacity), not refused; only a saturated one stops taking calls.
    busy = Scorer(ScoringConfig()).score(reading(cpu=0.95))
    saturated = Scorer(ScoringConfig()).score(reading(cpu=1.0))
    assert busy.state is State.ACTIVE and busy.capacity == pytest.approx(0.05)
    assert saturated.state is State.OVERLOADED


def test_the_shipped_call_limit_margin_is_one_percent():
    # A node at its limit takes calls again once 1 % below it (at least one call).
    scorer = Scorer(ScoringConfig())
    got = "".join(scorer.score(reading(cpu=0.0, calls=n)).state.value[0].upper() for n in [100, 99, 98])
    assert got == "OOA"
