"""Dispatch quality: sipstatus's weight policies against what proxies do today.

Runs bench/dispatchsim.py over SEEDS seeds, every dispatcher on the same calls
(common random numbers), in two models of a full node and with two
holding-time distributions:

- rejecting: a node at or above its limit rejects the call (it is lost);
- without rejection: it takes the call and its utilisation goes above 100 %,
  so a dispatcher's distance from the ideal shows in full (rejection caps
  every node near 100 % and hides it);
- holding times log-normal (sigma 1) and exponential, mean 180 s.

Reports per model and distribution, per dispatcher, mean and 95% confidence
interval across seeds:

- p95 ratio: the 95th percentile over time of the most loaded node's
  utilisation, divided by the ideal dispatcher's on the same seed;
- calls at limit: calls sent to a node at or above its limit (rejected there,
  or put on it in overload without rejection);
- refused: calls the proxy refused (no node would take them); "with room":
  of those, the ones refused while some node was below its limit;
- overload time: seconds with any node above 100%;
- peak: the highest utilisation of any node.

Every sipstatus dispatcher runs with the agent's shipped defaults (scoring
thresholds, CPU watch) unless its name says otherwise.

Writes bench/results/dispatch.txt, .json and .png; with --set sensitivity,
side questions to bench/results/dispatch.sensitivity.txt and .json.
Usage: bench/bench_dispatch.py [--seeds N] [--jobs N] [--set main|sensitivity]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import HostConfig, ScoringConfig  # noqa: E402
from bench.dispatchsim import (  # noqa: E402
    AGENT_SOURCE,
    Agent,
    AgentNotifyPolicy,
    Dispatcher,
    FreeSwitchHeartbeat,
    Ideal,
    LeastCalls,
    RoundRobin,
    RunResult,
    Scenario,
    Sipstatus,
    StaticWeights,
    agent_scorer,
    make_workload,
    simulate,
)
from sipstatus.proxy.nodetable import NodeView  # noqa: E402
from sipstatus.proxy.policy import (  # noqa: E402
    FreeSlotsPolicy,
    HeadroomPolicy,
    LeastUtilisedSelector,
    WaterFillPolicy,
)
from sipstatus.proxy.policy import _load as policy_load  # noqa: E402
from sipstatus.proxy.policy import _scale as policy_scale  # noqa: E402

SEEDS = 30
RESULTS = ROOT / "bench" / "results"
BASE = Scenario()
#: The two models of a full node, and the holding-time distributions.
MODELS = (("no-reject", "without rejection", False), ("reject", "rejecting", True))
HOLDS = ("lognormal", "exponential")
VARIANTS = tuple((f"{model}/{hold}", f"{title}, {hold} holding times", dataclasses.replace(BASE, reject=reject, hold=hold))
                 for model, title, reject in MODELS for hold in HOLDS)
SCENARIOS = {key: scenario for key, _, scenario in VARIANTS}

#: The agent's shipped scoring defaults, and two others for comparison: the
#: CPU threshold where the simulated nodes really fail (100%), and the
#: threshold shipped before (85%).
DEFAULT = ScoringConfig()
MATCHED = ScoringConfig(cpu_max=1.0)
OLD = ScoringConfig(cpu_max=0.85)
WATCH = HostConfig().cpu_watch_interval
WATER_FILL = "sipstatus-water-fill (default)"


def main_set() -> list[Callable[[], Dispatcher]]:
    """What proxies do today against the default policy, in the order of the table."""
    default = agent_scorer(DEFAULT)
    return [
        RoundRobin,
        StaticWeights,
        LeastCalls,
        lambda: FreeSwitchHeartbeat(20.0),
        lambda: FreeSwitchHeartbeat(1.0),
        lambda: Sipstatus(WaterFillPolicy(), default, name=WATER_FILL),
        Ideal,
    ]


def policies_set() -> list[Callable[[], Dispatcher]]:
    """sipstatus's policies side by side, all with the agent's defaults."""
    default = agent_scorer(DEFAULT)
    return [
        lambda: Sipstatus(HeadroomPolicy(), default),
        lambda: Sipstatus(FreeSlotsPolicy(), default),
        lambda: Sipstatus(WaterFillPolicy(), default, name=WATER_FILL),
        lambda: Sipstatus(LeastUtilisedSelector(), default, name="sipstatus-least-utilised (selector)"),
        Ideal,
    ]


def sensitivity_set() -> list[Callable[[], Dispatcher]]:
    """Side questions: the default policy without the CPU watch (a sample a
    second only), with the CPU threshold at 100% and at the old 85%; the
    selector at the old 85%, and with its sent-call memory split over 8
    proxy worker processes."""
    default = agent_scorer(DEFAULT)
    return [
        lambda: Sipstatus(WaterFillPolicy(), default, name=WATER_FILL),
        lambda: Sipstatus(WaterFillPolicy(), default, watch=None, name="sipstatus-water-fill, no cpu watch"),
        lambda: Sipstatus(WaterFillPolicy(), agent_scorer(MATCHED), name="sipstatus-water-fill, cpu_max 1"),
        lambda: Sipstatus(WaterFillPolicy(), agent_scorer(OLD), name="sipstatus-water-fill, cpu_max 0.85"),
        lambda: Sipstatus(LeastUtilisedSelector(), agent_scorer(OLD), name="sipstatus-least-utilised, cpu_max 0.85"),
        lambda: Sipstatus(LeastUtilisedSelector(), default, name="sipstatus-least-utilised, 8 workers", workers=8),
        Ideal,
    ]


@dataclass
class MarginForm(WaterFillPolicy):
    """Water-fill with another form of the margin m of a CPU-bound node, for
    comparison with the default's (nothing up to 1 - 2m, all of m from
    1 - m): "everywhere", m added at every utilisation (the rule before);
    "ceiling", no such node aimed above 1 - m, and at the pool's level
    below that (water-filling with a ceiling: the others share what it
    does not take)."""

    form: str = "everywhere"

    def weights(self, views: Iterable[NodeView]) -> dict[str, int]:
        views = list(views)
        loads = {}
        for v in views:
            if v.accepts_calls:
                u, size, calls = policy_load(v, self.default_limit, 0.0)
                cpu_bound = policy_load(v, self.default_limit, 1.0)[0] > u
                if cpu_bound and self.form == "everywhere":
                    u += self.measured_margin
                ceiling = 1.0 - self.measured_margin if cpu_bound and self.form == "ceiling" else math.inf
                loads[v.node] = (u, size, calls, ceiling)
        raw = {v.node: 0.0 for v in views}
        if self.form == "ceiling":
            level = ceiling_level(list(loads.values()))
        else:
            sizes = sum(size for _, size, _, _ in loads.values())
            level = sum(u * size for u, size, _, _ in loads.values()) / sizes if sizes > 0 else 0.0
        for node, (u, size, calls, ceiling) in loads.items():
            raw[node] = max(0.0, calls + self.gain * size * (min(level, ceiling) - u)) + self.floor * size * (1.0 - u)
        top = max(raw.values(), default=0.0)
        if top <= 0:
            return {node: 0 for node in raw}
        return {node: policy_scale(w, top) for node, w in raw.items()}


def ceiling_level(loads: list[tuple[float, float, float, float]]) -> float:
    """The level L with sum(size x min(L, ceiling)) = sum(size x u); inf when
    the ceilings cannot hold the load."""
    total = sum(u * size for u, size, _, _ in loads)
    size_left = sum(size for _, size, _, _ in loads)
    for _, size, _, ceiling in sorted(loads, key=lambda load: load[3]):
        if size_left <= 0:
            break
        if total / size_left <= ceiling:
            return total / size_left
        total -= size * ceiling
        size_left -= size
    return math.inf if loads else 0.0


def margins_set() -> list[Callable[[], Dispatcher]]:
    """What keeps calls off a node at its limit: the default policy with and
    without the agent's CPU watch, without water-fill's margin for a node
    whose room is its CPU, and with two other forms of that margin."""
    default = agent_scorer(DEFAULT)
    return [
        lambda: Sipstatus(WaterFillPolicy(), default, name=WATER_FILL),
        lambda: Sipstatus(WaterFillPolicy(), default, watch=None, name="sipstatus-water-fill, no cpu watch"),
        lambda: Sipstatus(WaterFillPolicy(measured_margin=0.0), default, name="sipstatus-water-fill, no cpu margin"),
        lambda: Sipstatus(MarginForm(form="everywhere"), default, name="sipstatus-water-fill, cpu margin everywhere"),
        lambda: Sipstatus(MarginForm(form="ceiling"), default, name="sipstatus-water-fill, cpu margin from 0.95 only"),
        Ideal,
    ]


SETS = {"main": main_set, "policies": policies_set, "sensitivity": sensitivity_set, "margins": margins_set}


def run_seed(job: tuple[str, str, int]) -> list[dict]:
    """Every dispatcher of a set on one seed's workload with one holding-time
    distribution, in both models: a summary per dispatcher and model.

    Without rejection first: a run in which no call ever met a full node
    (warm-up included) runs the very same events as the rejecting run, so
    it stands for both; the others run again with rejection."""
    which, hold, seed = job
    no_reject = SCENARIOS[f"no-reject/{hold}"]
    reject = SCENARIOS[f"reject/{hold}"]
    workload = make_workload(no_reject, seed)
    rows = []
    for make in SETS[which]():
        dispatcher = make()
        r = simulate(no_reject, workload, dispatcher)
        rows.append(summary_row(f"no-reject/{hold}", no_reject, r, dispatcher))
        if r.at_limit_all:
            dispatcher = make()
            r = simulate(reject, workload, dispatcher)
        rows.append(summary_row(f"reject/{hold}", reject, r, dispatcher))
    for variant in (f"no-reject/{hold}", f"reject/{hold}"):
        mine = [row for row in rows if row["variant"] == variant]
        ideal = next(row for row in mine if row["dispatcher"] == "ideal")
        for row in mine:
            row["p95_ratio"] = row["p95"] / ideal["p95"]
    return rows


def summary_row(variant: str, scenario: Scenario, r: RunResult, dispatcher: Dispatcher) -> dict:
    half = int(scenario.duration // 2)
    agents = getattr(dispatcher, "agents", None)
    return {
        "variant": variant,
        "dispatcher": r.dispatcher,
        "seed": r.seed,
        "offered": r.offered,
        "p95": r.percentile(95),
        "p95_before_hog": r.percentile(95, 0, half),
        "p95_with_hog": r.percentile(95, half),
        "peak": max(r.max_util),
        "at_limit": r.at_limit,
        "refused": r.refused,
        "refused_with_room": r.refused_with_room,
        "lost": r.lost,
        "overload_time": r.overload_time,
        # sipstatus only: reports per node per second, statuses that expired
        # before the next report arrived, CPU jumps taken
        "reports_per_node_s": sum(a.sent for a in agents) / len(agents) / scenario.end if agents else None,
        "expired": getattr(dispatcher, "expired", None),
        "jumps": sum(a.jumps for a in agents) if agents else None,
        # per-minute maxima of the first seed, for the plot
        "minutes": [max(r.max_util[i : i + 60]) for i in range(0, len(r.max_util), 60)] if r.seed == 0 else None,
    }


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (Hill's expansion about the normal; error < 1e-4
    for df >= 5, which is all this is used for)."""
    z = statistics.NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan
    return mean, t_quantile(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)


METRICS = (
    # key, column heading, format
    ("p95_ratio", "p95 ratio", "{:.3f}"),
    ("p95", "p95 util", "{:.3f}"),
    ("at_limit", "calls at limit", "{:.1f}"),
    ("refused", "refused", "{:.1f}"),
    ("refused_with_room", "refused w/ room", "{:.1f}"),
    ("overload_time", "time >100% (s)", "{:.1f}"),
    ("peak", "peak util", "{:.3f}"),
)


def summarise(rows: list[dict], names: list[str], variant: str) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for name in names:
        mine = [r for r in rows if r["dispatcher"] == name and r["variant"] == variant]
        out[name] = {key: list(mean_ci([r[key] for r in mine])) for key, _, _ in METRICS}
    return out


def table(summary: dict[str, dict[str, list[float]]]) -> list[str]:
    cells = [["dispatcher"] + [heading for _, heading, _ in METRICS]]
    for name, metrics in summary.items():
        row = [name]
        for key, _, fmt in METRICS:
            mean, half = metrics[key]
            row.append(f"{fmt.format(mean)} ± {fmt.format(half)}")
        cells.append(row)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def plot(summary: dict[str, dict[str, list[float]]], minutes: dict[str, list[float]], seeds: int, path: Path,
         variant: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def colour(name: str) -> str:
        if name == "ideal":
            return "#2ca02c"
        if name.startswith("sipstatus"):
            return "#1f77b4" if "default" in name else "#9ecae1"
        return "#9e9e9e"

    names = list(summary)
    colours = [colour(n) for n in names]
    fig = plt.figure(figsize=(14, 9.5))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.15, 1])
    first = fig.add_subplot(grid[0, 0])
    panels = [
        ("p95_ratio", "p95 of the most loaded node's\nutilisation, relative to the ideal", first),
        ("at_limit", "calls sent to a node at or above\nits limit, per 2 h (log scale)", fig.add_subplot(grid[0, 1], sharey=first)),
        ("refused", "calls the proxy refused, per 2 h\n(log scale)", fig.add_subplot(grid[0, 2], sharey=first)),
    ]
    y = list(range(len(names)))
    for key, title, ax in panels:
        means = [summary[n][key][0] for n in names]
        halves = [summary[n][key][1] for n in names]
        if key == "p95_ratio":
            lower = halves
        else:  # counts: the interval is not allowed below 0
            lower = [min(h, m) for m, h in zip(means, halves, strict=True)]
        ax.barh(y, means, xerr=[lower, halves], color=colours, capsize=3)
        ax.set_title(title, fontsize=10)
        if key == "p95_ratio":
            low = min(m - h for m, h in zip(means, halves, strict=True))
            top = max(m + h for m, h in zip(means, halves, strict=True))
            ax.set_xlim(max(0.0, low - 0.01), top + 0.02)
            ax.axvline(1.0, color="#2ca02c", lw=1, ls="--")
            fmt = "{:.3f}"
        else:
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(0, max(m + h for m, h in zip(means, halves, strict=True)) * 4)
            ax.tick_params(labelleft=False)
            fmt = "{:.1f}"
        for yi, m, h in zip(y, means, halves, strict=True):
            label = fmt.format(m) if m < 10 else f"{m:.0f}"
            ax.annotate(label, (m + h, yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
        ax.grid(axis="x", lw=0.3)
    first.set_yticks(y, names, fontsize=9)
    first.invert_yaxis()

    ax = fig.add_subplot(grid[1, :])
    shown = {
        "round-robin": ("#7f7f7f", 0.8),
        "static-weights": ("#ff7f0e", 0.8),
        "least-calls": ("#9467bd", 0.8),
        "fs-heartbeat-20s": ("#d62728", 0.8),
        "fs-heartbeat-1s": ("#e377c2", 0.8),
        "sipstatus-water-fill (default)": ("#1f77b4", 1.6),
        "ideal": ("#2ca02c", 1.0),
    }
    for name, (c, lw) in shown.items():
        if name in minutes:
            series = minutes[name]
            ax.plot(range(len(series)), series, label=name, color=c, lw=lw)
    hog = BASE.duration / 2 / 60
    ax.axvline(hog, color="k", lw=0.8, ls=":")
    ax.text(hog + 0.5, 1.0, " CPU hog on", transform=ax.get_xaxis_transform(), fontsize=8, va="top")
    ax.annotate("least-calls: the small node at its limit", (2, 1.0), xytext=(0, 4),
                textcoords="offset points", fontsize=8, color="#555555")
    ax.set_title("seed 0: the most loaded node's utilisation, highest per minute "
                 "(sipstatus-water-fill runs just above the ideal)", fontsize=10)
    ax.set_xlabel("minute of the measured window")
    ax.set_ylabel("utilisation")
    ax.grid(lw=0.3)
    ax.legend(fontsize=8, loc="lower right", ncol=4)
    fig.suptitle(f"Dispatch over 4 Asterisk nodes (limits 400/400/200/400), CPU hog on one for the 2nd hour, "
                 f"{variant};\nmean and 95% CI over {seeds} seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--jobs", type=int, default=min(2, multiprocessing.cpu_count()))
    parser.add_argument("--replot", action="store_true", help="redraw dispatch.png from dispatch.json")
    parser.add_argument("--rows", metavar="FILE", help="summarise the saved rows of an earlier run (*.rows.json)")
    parser.add_argument("--holds", default=",".join(HOLDS), help="comma-separated: " + ", ".join(HOLDS))
    parser.add_argument(
        "--set",
        choices=SETS,
        default="main",
        help="main: today's proxies against the default (dispatch.txt/.json/.png); policies: sipstatus's "
        "policies (dispatch.policies.txt/.json); sensitivity, margins: side questions (dispatch.SET.txt/.json)",
    )
    args = parser.parse_args()
    titles = {key: title for key, title, _ in VARIANTS}
    if args.replot:
        saved = json.loads((RESULTS / "dispatch.json").read_text())
        key = VARIANTS[0][0]
        summary = {n: {k: [v["mean"], v["ci95"]] for k, v in m.items()} for n, m in saved["summary"][key].items()}
        plot(summary, saved["seed0_minutes"][key], saved["seeds"], RESULTS / "dispatch.png", titles[key])
        return
    holds = [h for h in args.holds.split(",") if h]
    unknown = [h for h in holds if h not in HOLDS]
    if unknown:
        parser.error(f"--holds: unknown {', '.join(unknown)}; known: {', '.join(HOLDS)}")
    variants = [key for key, _, scenario in VARIANTS if scenario.hold in holds]
    jobs = [(args.set, hold, seed) for seed in range(args.seeds) for hold in holds]

    stem = "dispatch" if args.set == "main" else f"dispatch.{args.set}"
    if args.rows:
        # Summarise the rows of an earlier run again (they are saved before the summary).
        saved = json.loads(Path(args.rows).read_text())
        rows, elapsed, cpu_seconds = saved["rows"], saved["wall_seconds"], saved["cpu_seconds"]
    else:
        started = time.perf_counter()
        with multiprocessing.Pool(args.jobs) as pool:
            rows = [row for seed_rows in pool.imap_unordered(run_seed, jobs) for row in seed_rows]
        elapsed = time.perf_counter() - started
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds = cpu.ru_utime + cpu.ru_stime
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{stem}.rows.json").write_text(
            json.dumps({"wall_seconds": elapsed, "cpu_seconds": cpu_seconds, "rows": rows}) + "\n")

    names = [make().name for make in SETS[args.set]()]
    summaries = {v: summarise(rows, names, v) for v in variants}
    minutes = {v: {r["dispatcher"]: r["minutes"] for r in rows if r["variant"] == v and r["minutes"] is not None}
               for v in variants}
    sc = BASE
    offered = statistics.fmean(r["offered"] for r in rows if r["dispatcher"] == "ideal")
    agent_rows = [r for r in rows if r["reports_per_node_s"] is not None]
    reports = statistics.fmean(r["reports_per_node_s"] for r in agent_rows)
    expired = statistics.fmean(r["expired"] for r in agent_rows)
    jumps = statistics.fmean(r["jumps"] for r in agent_rows)
    d = DEFAULT
    lines = [
        f"# dispatch benchmark ({args.set} set): {args.seeds} seeds, {args.jobs} processes, {elapsed:.0f} s wall, "
        f"{cpu_seconds:.0f} s CPU, Python {platform.python_version()}",
        f"# pool: {', '.join(f'{n.name} limit {n.limit} ({n.cores} cores)' for n in sc.nodes)}; one channel per call",
        f"# cpu = {sc.nodes[0].cpu_base} + {sc.nodes[0].cpu_at_limit} x channels/limit + hog + noise "
        f"(AR(1), sd {sc.noise_sd}, rho {sc.noise_rho} per s); utilisation = max(channels/limit, cpu)",
        f"# offered {sc.load:.0%} of the pool's channels: Poisson {sc.arrival_rate:.2f} calls/s, holding time mean "
        f"{sc.mean_hold:.0f} s (log-normal sigma {sc.hold_sigma}, or exponential); {offered:.0f} calls per seed in the window",
        f"# window {sc.duration:.0f} s after {sc.warmup:.0f} s warm-up; hog eats {sc.hog_share:.0%} of "
        f"{sc.nodes[sc.hog_node].name}'s CPU for the second half",
        f"# sipstatus: {AGENT_SOURCE}; delivery delay {sc.delay_min * 1000:.0f}-{sc.delay_max * 1000:.0f} ms; "
        f"validity {Agent.VALIDITY} s (agent default)",
        f"#   the agent's shipped defaults: overloaded at cpu_max {d.cpu_max:.0%} CPU (off below "
        f"{d.cpu_max - d.cpu_margin:.0%}) or at the call limit (off {d.limit_margin:.0%} below); CPU sampled every "
        f"{Agent.SAMPLE_INTERVAL:g} s, and watched over {WATCH:g} s windows between samples (a jump of "
        f"{HostConfig().cpu_jump:g} or more is taken at once)",
        "# every dispatcher sees the same calls (common random numbers); mean ± 95% CI half-width across seeds",
    ]
    for v in variants:
        lines += ["", f"## {titles[v]}", "", *table(summaries[v])]
    lines += [
        "",
        "p95 ratio: p95 over time of the most loaded node's utilisation, over the ideal dispatcher's on the same seed.",
        "calls at limit: sent to a node at or above its limit (channels at maxcalls or CPU saturated): rejected",
        "there in the rejecting model, put on it (overloading it further) without rejection.",
        "refused: calls the proxy refused because no node accepted calls; w/ room: while some node was below its limit.",
        "time >100%: seconds with any node's utilisation above 100%.",
        "No dispatcher can avoid the first seconds after a load step (the hog lands on calls already",
        "in progress), so peak and time >100% say little between good dispatchers; the p95 ratio",
        "and calls at limit separate them. A ratio below 1 is possible: the ideal places every call,",
        "a proxy that refuses calls keeps its nodes lighter.",
        f"sipstatus agents sent {reports:.2f} reports per node per second and took {jumps:.1f} CPU jumps per run; a",
        f"node's status expired before the next report arrived {expired:.0f} times per run (heartbeat "
        f"{AgentNotifyPolicy().heartbeat:g} s, validity {Agent.VALIDITY} s).",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.txt").write_text(text)
    (RESULTS / f"{stem}.json").write_text(
        json.dumps(
            {
                "set": args.set,
                "seeds": args.seeds,
                "jobs": args.jobs,
                "wall_seconds": round(elapsed, 1),
                "cpu_seconds": round(cpu_seconds, 1),
                "python": platform.python_version(),
                "agent": AGENT_SOURCE,
                "scoring_default": asdict(DEFAULT),
                "host_default": asdict(HostConfig()),
                "validity": Agent.VALIDITY,
                "variants": {v: asdict(SCENARIOS[v]) for v in variants},
                "seed0_minutes": minutes,
                "summary": {v: {n: {k: {"mean": m, "ci95": h} for k, (m, h) in s.items()} for n, s in summaries[v].items()}
                            for v in variants},
                "runs": sorted(
                    ({k: v for k, v in r.items() if k != "minutes"} for r in rows),
                    key=lambda r: (r["variant"], r["seed"], names.index(r["dispatcher"])),
                ),
            },
            indent=1,
        )
        + "\n"
    )
    if args.set == "main" and variants[0] in minutes:
        plot(summaries[variants[0]], minutes[variants[0]], args.seeds, RESULTS / "dispatch.png", titles[variants[0]])


if __name__ == "__main__":
    main()
