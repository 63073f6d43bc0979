"""What the demo recorded, and what it shows: the split of calls against the
weights Kamailio held, the drain, the kill, and the plot.

Pure functions over a `Recording` (no processes, no clock), so that the
summary's arithmetic is tested on its own (tests/interop/test_demo.py).

The split. Kamailio's script (packaging/examples/kamailio/sidecar) sends
each new call to node i with probability w_i / sum(w) over the weights in
its htable at that moment. The demo reads that htable every `POLL` seconds;
a call is compared with the weights of the last reading before it, and left
out when the next reading differs (which weights Kamailio used for it is not
known). A node's count over a phase is then a sum of independent Bernoulli
trials with those probabilities: it must lie within `SIGMAS` standard
deviations (plus one call) of their sum, as tests/support/sipp.py's
`split_within` asks of a fixed split; a node whose weight was 0 for a call
must not have got it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Seconds between readings of Kamailio's htable.
POLL = 0.1
#: Tolerance of the split, in standard deviations (+ 1 call), as in the tests.
SIGMAS = 5.0
#: An INVITE Kamailio routed just before a change may be logged by the SIPp
#: node this much later (in flight, and the node's own clock reading).
IN_FLIGHT = 0.25
#: After a kill, the sidecar notices the staleness at its timer and pushes
#: weight 0 over JSON-RPC: this much is allowed for that on a busy machine.
PUSH_ALLOWANCE = 1.0


@dataclass
class Phase:
    name: str
    title: str
    start: float  # Unix time
    end: float


@dataclass
class Recording:
    """Everything the demo saw, in Unix time."""

    nodes: list[str]
    #: (time after the reading came back, Kamailio's weight of each node).
    polls: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    #: node -> arrival times of the INVITEs its SIPp node logged.
    calls: dict[str, list[float]] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    #: (time, text) of what the script did.
    events: list[tuple[float, str]] = field(default_factory=list)
    #: When the calls began (times in the summary are counted from it).
    start: float = 0.0
    drained: str = ""
    drain_started: float | None = None  # `sipstatus-agent drain` was run
    drain_at: float | None = None  # it returned (the agent drains on the request, before)
    killed: str = ""
    kill_at: float | None = None
    validity: int = 0
    rate: float = 0.0
    placed: int | None = None  # calls SIPp placed (successful + failed)
    failed: int | None = None  # calls that got no 200 (503 when no node took calls)

    def weight_seen(self, node: str, value: int, after: float) -> float | None:
        """When a reading after `after` first gave `node` weight `value`."""
        for at, weights in self.polls:
            if at > after and weights.get(node) == value:
                return at
        return None


# -- the split --------------------------------------------------------------------------


@dataclass
class NodeSplit:
    node: str
    calls: int
    expected: float
    bound: float
    #: Calls the node got while its weight was 0 (must be none).
    at_zero: int

    @property
    def ok(self) -> bool:
        return self.at_zero == 0 and abs(self.calls - self.expected) <= self.bound


@dataclass
class PhaseSplit:
    phase: Phase
    nodes: list[NodeSplit]
    counted: int  # calls compared with the weights
    left_out: int  # calls while the weights were changing (between two readings)

    @property
    def ok(self) -> bool:
        return all(n.ok for n in self.nodes)


def split(recording: Recording, phase: Phase) -> PhaseSplit:
    """The calls of `phase` against the weights Kamailio held for each."""
    times = [at for at, _ in recording.polls]
    expected = dict.fromkeys(recording.nodes, 0.0)
    variance = dict.fromkeys(recording.nodes, 0.0)
    got = dict.fromkeys(recording.nodes, 0)
    at_zero = dict.fromkeys(recording.nodes, 0)
    counted = left_out = 0
    arrivals = sorted((t, node) for node in recording.nodes for t in recording.calls.get(node, ())
                      if phase.start <= t < phase.end)
    for t, node in arrivals:
        weights = _weights_for(recording.polls, times, t)
        total = sum(weights.values()) if weights else 0
        if not weights or total <= 0:
            left_out += 1
            continue
        counted += 1
        got[node] += 1
        if weights.get(node, 0) <= 0:
            at_zero[node] += 1
        for n in recording.nodes:
            p = weights.get(n, 0) / total
            expected[n] += p
            variance[n] += p * (1 - p)
    nodes = [NodeSplit(n, got[n], expected[n], SIGMAS * math.sqrt(variance[n]) + 1, at_zero[n])
             for n in recording.nodes]
    return PhaseSplit(phase, nodes, counted, left_out)


def _weights_for(polls: Sequence[tuple[float, dict[str, int]]], times: list[float],
                 t: float) -> dict[str, int] | None:
    """The weights of the last reading before `t`, or None if there is none
    or the next reading differs (the change happened somewhere between)."""
    i = bisect.bisect_right(times, t)
    if i == 0:
        return None
    before = polls[i - 1][1]
    if i < len(polls) and polls[i][1] != before:
        return None
    return before


# -- the drain and the kill ---------------------------------------------------------------------


@dataclass
class DrainResult:
    node: str
    seen_after: float | None  # seconds from the command's return to Kamailio holding weight 0
    last_call_after: float | None  # seconds from the command's return to its last INVITE
    late: int  # INVITEs after Kamailio held weight 0 (+ IN_FLIGHT)

    @property
    def ok(self) -> bool:
        return self.seen_after is not None and self.late == 0


def drain_result(recording: Recording) -> DrainResult:
    node, at = recording.drained, recording.drain_at
    assert at is not None, "the drain did not happen"
    # The agent drained when it got the request, before the command returned:
    # Kamailio may have had the drain since the command started, not before.
    started = recording.drain_started if recording.drain_started is not None else at
    seen = recording.weight_seen(node, 0, started)
    times = recording.calls.get(node, [])
    late = 0 if seen is None else sum(1 for t in times if t > seen + IN_FLIGHT)
    return DrainResult(node, None if seen is None else seen - at,
                       None if not times else max(times) - at, late)


@dataclass
class KillResult:
    node: str
    validity: int
    out_after: float | None  # seconds from the kill to Kamailio holding weight 0
    last_call_after: float | None
    late: int  # INVITEs after Kamailio held weight 0 (+ IN_FLIGHT)

    @property
    def ok(self) -> bool:
        return (self.out_after is not None and self.out_after <= self.validity + PUSH_ALLOWANCE
                and self.late == 0)


def kill_result(recording: Recording) -> KillResult:
    node, at = recording.killed, recording.kill_at
    assert at is not None, "the kill did not happen"
    out = recording.weight_seen(node, 0, at)
    times = [t for t in recording.calls.get(node, ()) if t >= at]
    late = 0 if out is None else sum(1 for t in times if t > out + IN_FLIGHT)
    return KillResult(node, recording.validity, None if out is None else out - at,
                      None if not times else max(times) - at, late)


# -- the summary --------------------------------------------------------------------------------


def _at(recording: Recording, offset: float | None, base: float | None) -> str:
    """`offset` seconds after `base`, as a time since the calls began."""
    if offset is None or base is None:
        return "never"
    return f"+{base + offset - recording.start:.2f} s"


def _calls(n: int) -> str:
    return f"{n} call" + ("" if n == 1 else "s")


def summary(recording: Recording, splits: Sequence[PhaseSplit], drain: DrainResult, kill: KillResult,
            plot: Path | None) -> str:
    """The one-screen summary."""
    total = sum(len(v) for v in recording.calls.values())
    placed = "" if recording.placed is None else f"SIPp placed {recording.placed} calls; "
    lines = [f"sipstatus demo: summary — {placed}{total} reached the nodes"
             + (f"; {_calls(recording.failed)} got no answer from a node\n  (Kamailio answers 503 while no "
                "node takes calls)" if recording.failed else ""),
             "",
             f"calls per node against the weights Kamailio held at each call (tolerance {SIGMAS:g} sigma + 1 call):",
             f"  {'phase':<10} {'node':<6} {'calls':>6} {'expected':>9} {'':>9}  {'share':>6} {'of weight':>9}"]
    for ps in splits:
        counted = max(1, ps.counted)
        for i, n in enumerate(ps.nodes):
            mark = "ok" if n.ok else ("GOT CALLS AT WEIGHT 0" if n.at_zero else "OUTSIDE")
            lines.append(f"  {ps.phase.name if i == 0 else '':<10} {n.node:<6} {n.calls:>6} {n.expected:>9.1f} "
                         f"{'± ' + format(n.bound, '.1f'):>9}  {100 * n.calls / counted:>5.1f}% "
                         f"{100 * n.expected / counted:>8.1f}%  {mark}")
        if ps.left_out:
            lines.append(f"  {'':<10} ({_calls(ps.left_out)} left out: made while Kamailio's weights changed)")
    lines += [
        "",
        "(times from the first call)",
        f"drain  {drain.node}: `sipstatus-agent drain` ran from {_at(recording, 0, recording.drain_started)} "
        f"to {_at(recording, 0, recording.drain_at)}; weight 0 in Kamailio at "
        f"{_at(recording, drain.seen_after, recording.drain_at)}",
        f"       its last call {_at(recording, drain.last_call_after, recording.drain_at)}; "
        f"calls after Kamailio had the drain: {drain.late}  {'ok' if drain.ok else 'FAILED'}",
        f"kill   {kill.node}: agent SIGKILLed at {_at(recording, 0, recording.kill_at)}; weight 0 in Kamailio "
        f"at {_at(recording, kill.out_after, recording.kill_at)}"
        + ("" if kill.out_after is None else f", {kill.out_after:.2f} s later (validity {kill.validity} s)"),
        f"       its last call {_at(recording, kill.last_call_after, recording.kill_at)}; "
        f"calls after it was out: {kill.late}  {'ok' if kill.ok else 'FAILED'}",
    ]
    if plot is not None:
        lines.append(f"plot   {plot}")
    return "\n".join(lines)


def to_json(recording: Recording, splits: Sequence[PhaseSplit], drain: DrainResult, kill: KillResult,
            plot: Path | None) -> dict:
    """The summary's figures, for scripts and the test."""
    return {
        "calls": {n: len(recording.calls.get(n, ())) for n in recording.nodes},
        "failed": recording.failed,
        "phases": [{"name": ps.phase.name, "counted": ps.counted, "left_out": ps.left_out, "ok": ps.ok,
                    "nodes": {n.node: {"calls": n.calls, "expected": round(n.expected, 2),
                                       "bound": round(n.bound, 2), "at_zero": n.at_zero, "ok": n.ok}
                              for n in ps.nodes}}
                   for ps in splits],
        "drain": {"node": drain.node, "seen_after": drain.seen_after, "last_call_after": drain.last_call_after,
                  "late": drain.late, "ok": drain.ok},
        "kill": {"node": kill.node, "validity": kill.validity, "out_after": kill.out_after,
                 "last_call_after": kill.last_call_after, "late": kill.late, "ok": kill.ok},
        "plot": None if plot is None else str(plot),
        "tolerance": {"sigmas": SIGMAS, "in_flight": IN_FLIGHT, "push_allowance": PUSH_ALLOWANCE},
    }


# -- the plot -----------------------------------------------------------------------------------


def plot(recording: Recording, path: Path, start: float) -> Path:
    """Weights in Kamailio and calls per second per node over time, with the
    script's phases, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    colours = dict(zip(recording.nodes, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=False))
    for node in recording.nodes:
        xs = [at - start for at, _ in recording.polls]
        ys = [w.get(node, 0) for _, w in recording.polls]
        top.step(xs, ys, where="post", label=node, color=colours.get(node))
        times = recording.calls.get(node, [])
        end = max((p.end for p in recording.phases), default=start) - start
        bins = max(1, math.ceil(end))
        counts = [0] * bins
        for t in times:
            i = int(t - start)
            if 0 <= i < bins:
                counts[i] += 1
        bottom.plot([i + 0.5 for i in range(bins)], counts, label=node, color=colours.get(node))
    for index, phase in enumerate(recording.phases):
        for axis in (top, bottom):
            if index % 2:
                axis.axvspan(phase.start - start, phase.end - start, color="0.93")
        top.text(phase.start - start + 0.3, 103, phase.title, fontsize=8, va="bottom")
    for at, _ in recording.events:
        for axis in (top, bottom):
            axis.axvline(at - start, color="0.5", linestyle=":", linewidth=1)
    top.set_ylim(0, 115)
    top.set_ylabel("weight in Kamailio")
    top.legend(loc="lower left", fontsize=8)
    bottom.set_ylabel("calls per second")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper left", fontsize=8)
    fig.suptitle("sipstatus demo: agents' reports -> sidecar -> Kamailio weights -> calls")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def shares(weights: Mapping[str, int]) -> dict[str, float]:
    """Each node's share of the total weight (0 when the total is 0)."""
    total = sum(weights.values())
    return {n: (w / total if total else 0.0) for n, w in weights.items()}
