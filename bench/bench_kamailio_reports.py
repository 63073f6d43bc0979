"""What load-status reports cost Kamailio: CPU seconds per 1,000 reports.

Many simulated agents (the library's `Publisher`, each in its own
`SipService` on its own loopback address, as `tests.support.kamailio.
simulate_agents` runs them) PUBLISH to the real Kamailio 5.6 running one of
the example configurations (packaging/examples/kamailio/native or kemi),
with a dispatcher list of as many destinations. Each node publishes a new
weight `rate` times a second (a significant change each time, so every one
is sent, up to the spec's ceiling of 10 per second and node) for `seconds`
seconds. Kamailio's CPU time is read with psutil over its main process and
every process it forked, before and after; its idle consumption over the
same time (measured first) is taken off. No calls are routed.

    python bench/bench_kamailio_reports.py                 # the full set
    python bench/bench_kamailio_reports.py --quick         # 100 nodes, 2/s, 10 s
    python bench/bench_kamailio_reports.py --nodes 100 --rates 2,10 --configs native

Prints a table and writes bench/results/kamailio_reports.txt (not with
--quick or --no-write). Needs the Debian packages kamailio,
kamailio-extra-modules and kamailio-python3-modules.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.kamailio import EXAMPLES, Destinationless, Kamailio, have_tools, start_example  # noqa: E402
from tests.support.reports import simulate_agents  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "kamailio_reports.txt"
#: Idle consumption is measured over two periods of the native example's
#: pool timer (route[POOL_LOAD] every 10 s, whose cost grows with the pool).
IDLE_SECONDS = 20.0
#: The native example reads the dispatcher list through a buffer of this
#: many octets; about 370 per destination (see its PV_BUFFER_SIZE).
OCTETS_PER_DESTINATION = 400


@dataclass
class Run:
    config: str
    nodes: int
    rate: float
    seconds: float
    reports: int
    failed: int
    elapsed: float
    cpu: float
    idle: float
    converged: bool

    @property
    def net(self) -> float:
        return max(0.0, self.cpu - self.idle)

    @property
    def per_thousand(self) -> float:
        return 1000 * self.net / self.reports if self.reports else float("nan")

    def row(self) -> str:
        per_core = 1000 / self.per_thousand if self.per_thousand > 0 else float("inf")
        return (f"{self.config:7} {self.nodes:5d} {self.rate:5g} {self.reports:8d} "
                f"{self.reports / self.elapsed:8.0f} {self.failed:6d} {self.cpu:7.2f} {self.idle:6.2f} "
                f"{self.per_thousand:9.3f} {per_core:10.0f} {'yes' if self.converged else 'NO':>9}")


HEADER = (f"{'config':7} {'nodes':>5} {'rate':>5} {'reports':>8} {'per s':>8} {'failed':>6} {'cpu s':>7} "
          f"{'idle s':>6} {'cpu s/1k':>9} {'1 core/s':>10} {'converged':>9}")


def start(config: str, workdir: Path, nodes: int) -> Kamailio:
    members = [Destinationless(f"node{i:04d}", 20000 + i) for i in range(nodes)]
    defines: dict[str, str | int | None] = {"LOG_LEVEL": 0}  # a log line per report would dominate
    env: dict[str, str] = {}
    if config == "native":
        defines["PV_BUFFER_SIZE"] = max(65536, OCTETS_PER_DESTINATION * nodes)
        defines["MAX_WHILE_LOOPS"] = max(1000, 2 * nodes)
        path = EXAMPLES / "native" / "kamailio.cfg"
    else:
        defines["KEMI_SCRIPT"] = f'"{EXAMPLES / "kemi" / "sipstatus_kemi.py"}"'
        env["SIPSTATUS_PATH"] = str(ROOT)
        path = EXAMPLES / "kemi" / "kamailio.cfg"
    return start_example(path, workdir, members, defines, env)


def held_weights(kam: Kamailio, config: str) -> dict[str, int]:
    import json

    from sipstatus import codec

    out = {}
    for node, value in kam.htable("ns").items():
        if config == "native":
            out[node] = int(value.split(";")[1])
        else:
            out[node] = codec.decode(json.loads(value)["body"]).weight
    return out


def measure(config: str, nodes: int, rate: float, seconds: float, workdir: Path) -> Run:
    kam = start(config, workdir, nodes)
    try:
        names = [f"node{i:04d}" for i in range(nodes)]
        final = {name: 1 + (37 * i) % 100 for i, name in enumerate(names)}
        idle_from, idle_cpu = time.monotonic(), kam.cpu_seconds()
        time.sleep(IDLE_SECONDS)
        idle_rate = (kam.cpu_seconds() - idle_cpu) / (time.monotonic() - idle_from)
        before = kam.cpu_seconds()
        stats = asyncio.run(simulate_agents(kam.port, names, duration=seconds, change_every=1 / rate, final=final))
        cpu = kam.cpu_seconds() - before
        deadline = time.monotonic() + 10
        converged = False
        while time.monotonic() < deadline and not converged:
            converged = held_weights(kam, config) == final
            time.sleep(0.2)
        return Run(config, nodes, rate, seconds, stats.published, stats.failed, stats.elapsed, cpu,
                   idle_rate * stats.elapsed, converged)
    finally:
        kam.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="native,kemi")
    parser.add_argument("--nodes", default="100,300", help="comma-separated node counts")
    parser.add_argument("--rates", default="2,10", help="reports per second and node, comma-separated (at most 10)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="100 nodes, 2/s, 10 s, native only; writes nothing")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not have_tools("jansson", "app_python3"):
        print("needs kamailio, kamailio-extra-modules, kamailio-python3-modules, sip-tester, iproute2", file=sys.stderr)
        return 1
    if args.quick:
        args.configs, args.nodes, args.rates, args.seconds, args.no_write = "native", "100", "2", 10.0, True
    configs = args.configs.split(",")
    counts = [int(n) for n in args.nodes.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    lines = [
        "Kamailio CPU for load-status PUBLISH reports (bench/bench_kamailio_reports.py)",
        f"host: {platform.node()} {platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"load average {' '.join(f'{x:.2f}' for x in psutil.getloadavg())} at start",
        f"{args.seconds:g} s per run; Kamailio 4 UDP workers, LOG_LEVEL 0; idle CPU measured over "
        f"{IDLE_SECONDS:g} s before each run and taken off",
        "reports: PUBLISHes answered 200 (each a modification with a fresh body, from the library's Publisher);",
        "cpu s/1k: Kamailio CPU seconds (all processes, net of idle) per 1,000 reports;",
        "1 core/s: reports per second one core of this host would take at that cost;",
        "converged: Kamailio's htable held every node's last reported weight afterwards.",
        "per s is what one Python process simulating all the agents sends: it, not Kamailio, is the limit",
        "at about 2,000 PUBLISH/s on this host.",
        "",
        HEADER,
    ]
    print("\n".join(lines), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-kamailio-"))
    try:
        for config in configs:
            for nodes in counts:
                for rate in rates:
                    run = measure(config, nodes, rate, args.seconds, workdir)
                    print(run.row(), flush=True)
                    lines.append(run.row())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.no_write:
        RESULTS.write_text("\n".join(lines) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
