"""One watcher following 100 agents: every node's weight converges.

The agents are one other process serving 100 notifier identities, each on
its own loopback address (127.0.0.10 .. 127.0.0.109). The test asserts
behaviour only; it prints how long convergence took and the CPU time the
watcher's process used (run with -s to see them), never asserting speed.
"""

from __future__ import annotations

import asyncio
import math
import resource
import time

import pytest

from sipstatus.proxy.agents import Agent
from sipstatus.proxy.policy import FreeSlotsPolicy
from sipstatus.proxy.watcher import Watcher
from tests.support.fake_agents import AgentsProcess

pytestmark = pytest.mark.slow

AGENTS = 100


def spec(i: int) -> tuple[str, float, int]:
    return f"ast{i:03d}", (i % 20 + 1) / 20, 100 + 50 * (i % 5)


def expected_free_slots() -> dict[str, int]:
    free = {node: capacity * limit for node, capacity, limit in map(spec, range(AGENTS))}
    top = max(free.values())
    return {node: max(1, math.floor(100 * f / top + 0.5)) for node, f in free.items()}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_one_watcher_follows_100_agents_and_every_weight_converges():
    specs = [f"{node}:{capacity}:{limit}" for node, capacity, limit in map(spec, range(AGENTS))]
    expected = expected_free_slots()
    with AgentsProcess(*specs, hosts="127.0.0.x", validity=6) as agents:
        assert len(set(agents.uris.values())) == AGENTS

        async def main() -> dict[str, float]:
            watcher = Watcher([Agent(node, uri) for node, uri in agents.uris.items()], policy=FreeSlotsPolicy())
            cpu0, t0 = cpu(), time.monotonic()
            await watcher.start()
            try:
                converged = await watcher.wait_for(lambda w: w.weights() == expected, 60)
                assert converged, {n: (w, expected[n]) for n, w in watcher.weights().items()
                                   if w != expected[n]}
                figures = {"converged_s": time.monotonic() - t0, "converge_cpu_s": cpu() - cpu0}
                assert all(r.state == "active" for r in watcher.rows())
                # Steady state: two more heartbeats from every agent (validity 6 s: one per 2 s).
                cpu1, t1, accepted = cpu(), time.monotonic(), watcher.counters["accepted"]
                assert await watcher.wait_for(
                    lambda w: w.counters["accepted"] >= accepted + 2 * AGENTS, 30)
                figures["steady_s"] = time.monotonic() - t1
                figures["steady_cpu_s"] = cpu() - cpu1
                figures["steady_reports"] = watcher.counters["accepted"] - accepted
                assert watcher.weights() == expected and watcher.counters["rejected"] == 0
                return figures
            finally:
                await watcher.close()

        figures = asyncio.run(main())
    print(f"\n100 agents: weights converged in {figures['converged_s']:.3f} s "
          f"using {figures['converge_cpu_s']:.3f} s CPU; steady state: {figures['steady_reports']} "
          f"reports in {figures['steady_s']:.2f} s using {figures['steady_cpu_s']:.3f} s CPU "
          f"({100 * figures['steady_cpu_s'] / figures['steady_s']:.1f} % of one core)")
