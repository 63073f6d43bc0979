"""Benchmark: from an Asterisk channel event at a node to the new weight in
effect inside Kamailio.

The real agent (`python -m agent run`, its own process) reads the fake AMI
server (tests/fakeami.py, the recorded Asterisk bytes) served by this
process; the real Kamailio runs one of the examples; each change is one
recorded Newchannel or Hangup written to the AMI socket (the node's calls
go 0 -> 1 -> 0 ..., its weight hint 100 -> 90 -> 100 with a limit of 10).
The time is taken just before the write and when Kamailio's htable first
holds the new weight, read over its JSON-RPC datagram socket every 0.5 ms
or so (both on this process's monotonic clock):

- native: the agent PUBLISHes to packaging/examples/kamailio/native; the
  weight is the second field of `ns` NODE (route[SIPSTATUS_STORE]);
- sidecar: `sipstatus sidecar` (policy headroom: the node's own hint)
  subscribes to the agent and pushes `htable.seti sipstatus NODE WEIGHT`
  into packaging/examples/kamailio/sidecar.

The agent's ceiling is 10 reports per second (spec 8.1); each change comes
at least 120 ms (plus 0-50 ms of jitter) after the previous one was seen in
Kamailio, so the ceiling has always passed.

    python bench/bench_kamailio_reaction.py [--changes 1000] [--ways native,sidecar]

Prints the figures and writes them to bench/results/kamailio_reaction.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.collectors.probe import nearest_rank  # noqa: E402
from sipstatus.kamailio import JsonRpcClient, RpcError  # noqa: E402
from tests.agent_harness import AgentProcess, ChannelEvents, agent_config, fake_asterisk  # noqa: E402
from tests.kamailio_runner import EXAMPLES, HOST, Destinationless, Kamailio, Sidecar, start_example  # noqa: E402
from tests.sipp_runner import free_port  # noqa: E402

RESULTS = REPO / "bench" / "results" / "kamailio_reaction.txt"
NODE = "ast-test"  # tests.agent_harness.agent_config's node
LIMIT = 10


def weight_reader(kam: Kamailio, way: str):
    rpc = JsonRpcClient(f"unix:{kam.workdir}/kamailio_rpc.sock", timeout=1.0)
    table = "ns" if way == "native" else "sipstatus"

    def read() -> int | None:
        try:
            value = rpc.call("htable.get", table, NODE)
        except RpcError:
            return None
        item = value.get("item", value) if isinstance(value, dict) else value
        text = str(item.get("value") if isinstance(item, dict) else item)
        return int(text.split(";")[1]) if way == "native" else int(text)

    return read


async def measure(way: str, changes: int) -> dict:
    channel = ChannelEvents.recorded()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="bench-kamailio-reaction-") as tmp:
        workdir = Path(tmp)
        config = EXAMPLES / way / "kamailio.cfg"
        kam = start_example(config, workdir, [Destinationless(NODE, free_port())], {"DS_PING_INTERVAL": 0})
        sidecar = None
        try:
            async with fake_asterisk(LIMIT) as ami:
                port = free_port()
                cfg = agent_config(ami.port, agent={"interval": 30.0, "validity": 60, "log_level": "info"},
                                   notifier={"max_rate": 10.0}, publisher={"max_rate": 10.0},
                                   scoring={"unknown_capacity": 1.0})
                args = ["--listen", f"udp:{HOST}:{port}"]
                if way == "native":
                    args += ["--publish", f"sip:load-status@{HOST}:{kam.port}"]
                async with AgentProcess(workdir, cfg, *args) as agent:
                    await agent.wait_measured()
                    if way == "sidecar":
                        sidecar = Sidecar(kam, {NODE: f"sip:{HOST}:{port}"}, workdir, policy="headroom")
                        sidecar.start()
                    read = weight_reader(kam, way)
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 30
                    while read() != 100:
                        if loop.time() > deadline:
                            raise RuntimeError(f"{way}: Kamailio never held weight 100 for {NODE}:\n{kam.log_tail()}")
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.2)
                    latencies: list[float] = []
                    lost = 0
                    calls = 0
                    for _ in range(changes):
                        calls = 1 - calls
                        want = 100 - calls * (100 // LIMIT)
                        sent = loop.time()
                        await ami.emit(channel.newchannel if calls else channel.hangup)
                        seen = None
                        while loop.time() - sent < 10.0:
                            if read() == want:
                                seen = loop.time()
                                break
                            await asyncio.sleep(0.0005)
                        if seen is None:
                            lost += 1
                            continue
                        latencies.append(seen - sent)
                        await asyncio.sleep(0.12 + 0.05 * rng.random())
        finally:
            if sidecar is not None:
                sidecar.stop()
            kam.stop()
    latencies.sort()
    return {"latencies": latencies, "lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--ways", default="native,sidecar")
    args = parser.parse_args()
    lines = [
        "Kamailio reaction benchmark (bench/bench_kamailio_reaction.py): AMI channel event at a node -> "
        "new weight in Kamailio's htable",
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs (shared), "
        f"Python {platform.python_version()}, Kamailio from Debian",
        "setup: real agent and Kamailio processes (UDP 127.0.0.1), fake AMI in the bench process; htable read",
        "       over JSON-RPC about every 0.5 ms; next change >= 120 ms after the previous one was seen",
    ]
    for way in args.ways.split(","):
        r = asyncio.run(measure(way, args.changes))
        ms = [1000 * x for x in r["latencies"]]
        lines.append(f"{way}: {args.changes} changes, measured {len(ms)}, lost {r['lost']}; latency ms: "
                     f"p50 {nearest_rank(ms, 50):.2f}  p90 {nearest_rank(ms, 90):.2f}  "
                     f"p99 {nearest_rank(ms, 99):.2f}  min {ms[0]:.2f}  max {ms[-1]:.2f}")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
