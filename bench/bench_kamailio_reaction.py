"""Benchmark: from an Asterisk channel event at a node to the new weight in
effect inside the proxy: Kamailio, and OpenSIPS where its tier exists.

The real agent (`python -m agent run`, its own process) reads the fake AMI
server (tests/support/fake_ami.py, the recorded Asterisk bytes) served by this
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

OpenSIPS 3.6.8 (built by tests/peers/opensips.sh into its cache; these
ways are left out, with one line saying why, when it is not built): what is
in effect there is the load_balancer capacity of the node's destination,
`max` of resource `channels` in MI `lb_list` (mi_http, read about every
0.5 ms, a new connection each time: see LbCapacity). A node's capacity is
min(OpenSIPS's calls on it, its own calls) + its free slots (see
packaging/examples/opensips/README.md): 10 -> 9 -> 10 ... here (no call
goes through OpenSIPS, limit 10). The examples as the tests run them
(tests/support/opensips.py: only their CUSTOMIZE ME lines changed, plus the
README's mi_http lines):

- opensips-compositor: the agent PUBLISHes to
  packaging/examples/opensips/compositor; its script calls MI `lb_list` and
  `lb_resize` through mi_script;
- opensips-subscriber: packaging/examples/opensips/subscriber SUBSCRIBEs to
  the agent and does the same on each NOTIFY;
- opensips-sidecar: `sipstatus sidecar --opensips-mi` (policy free-slots)
  subscribes to the agent and calls `lb_list` + `lb_resize` over mi_http.

The agent's ceiling is 10 reports per second (spec 8.1); each change comes
at least 120 ms (plus 0-50 ms of jitter) after the previous one was seen in
the proxy, so the ceiling has always passed.

    python bench/bench_kamailio_reaction.py [--changes 1000] [--ways native,sidecar,opensips-compositor,...]

Prints the figures and writes them to bench/results/kamailio_reaction.txt
(Kamailio ways) and bench/results/opensips_reaction.txt (OpenSIPS ways).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.collectors.probe import nearest_rank  # noqa: E402
from sipstatus.proxy.kamailio import JsonRpcClient, RpcError  # noqa: E402
from tests.support import HOST  # noqa: E402
from tests.support.agents import (  # noqa: E402
    AgentProcess,
    ChannelEvents,
    Sidecar,  # noqa: E402
    agent_config,
    fake_asterisk,
)
from tests.support.kamailio import EXAMPLES, Destinationless, Kamailio, start_example  # noqa: E402
from tests.support.opensips import EXAMPLES as OPENSIPS_EXAMPLES  # noqa: E402
from tests.support.opensips import (  # noqa: E402
    OpenSips,
    OpenSipsSidecar,
    PoolEntry,
    add_mi_http,
    customize,
    dbtext_tables,
    opensips_build,
)
from tests.support.ports import free_port  # noqa: E402

RESULTS = REPO / "bench" / "results" / "kamailio_reaction.txt"
OPENSIPS_RESULTS = REPO / "bench" / "results" / "opensips_reaction.txt"
KAMAILIO_WAYS = ("native", "sidecar")
OPENSIPS_WAYS = ("opensips-compositor", "opensips-subscriber", "opensips-sidecar")
NODE = "ast-test"  # tests.support.agents.agent_config's node
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


def node_agent(workdir: Path, ami_port: int, port: int, publish_port: int | None) -> AgentProcess:
    """The node's agent as every way runs it: no sampling tick or heartbeat
    in the way of a change (interval 30 s, validity 60 s), the rate ceiling
    at 10/s, the capacity from the call slots alone; listening on `port`,
    and PUBLISHing to `publish_port` when there is one."""
    cfg = agent_config(ami_port, agent={"interval": 30.0, "validity": 60, "log_level": "info"},
                       notifier={"max_rate": 10.0}, publisher={"max_rate": 10.0},
                       scoring={"unknown_capacity": 1.0})
    args = ["--listen", f"udp:{HOST}:{port}"]
    if publish_port is not None:
        args += ["--publish", f"sip:load-status@{HOST}:{publish_port}"]
    return AgentProcess(workdir, cfg, *args)


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
                async with node_agent(workdir, ami.port, port, kam.port if way == "native" else None) as agent:
                    await agent.wait_measured()
                    if way == "sidecar":
                        sidecar = Sidecar(kam, {NODE: f"sip:{HOST}:{port}"}, workdir, policy="headroom")
                        sidecar.start()
                    latencies, lost = await follow_changes(weight_reader(kam, way), 100, ami, channel, changes, rng,
                                                           f"{way}: Kamailio", kam.log_tail)
        finally:
            if sidecar is not None:
                sidecar.stop()
            kam.stop()
    latencies.sort()
    return {"latencies": latencies, "lost": lost}


async def follow_changes(read, idle: int, ami, channel: ChannelEvents, changes: int, rng: random.Random,
                         proxy: str, log_tail) -> tuple[list[float], int]:  # type: ignore[no-untyped-def]
    """Waits until `read()` gives `idle`, the idle node's value (Kamailio's
    weight 100, OpenSIPS's capacity 10), then makes `changes` changes (a
    Newchannel, then a Hangup, ...) and times each until `read()` gives the
    new value (one call: a tenth less). Returns the latencies (seconds) and
    the number of changes never seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (value := read()) != idle:
        if loop.time() > deadline:
            raise RuntimeError(f"{proxy} never held {idle} for {NODE} (holds {value}):\n{log_tail()}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    step = idle // LIMIT
    latencies: list[float] = []
    lost = 0
    calls = 0
    for _ in range(changes):
        calls = 1 - calls
        want = idle - calls * step
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
    return latencies, lost


class LbCapacity:
    """The `channels` max of NODE's destination in OpenSIPS's MI lb_list
    over mi_http (None while disabled or unreadable). One connection per
    reading (`Connection: close`, TCP_NODELAY): about 0.3 ms each here.
    A keep-alive connection (http.client) stalled now and then until its
    timeout (2 s) in the compositor and subscriber ways: mi_http left the
    next request on it unanswered; a new connection never did."""

    def __init__(self, port: int) -> None:
        self.port = port
        body = json.dumps({"jsonrpc": "2.0", "method": "lb_list", "id": 1}).encode()
        self.request = (b"POST /mi HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (HOST.encode(), len(body)) + body)
        #: Readings that failed or timed out (the time they took is in a latency).
        self.failed = 0

    def __call__(self) -> int | None:
        try:
            with socket.create_connection((HOST, self.port), timeout=2.0) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(self.request)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            head, _, text = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise ValueError(head[:40])
            result = json.loads(text)["result"]
        except (OSError, ValueError, KeyError):
            self.failed += 1
            return None
        for dst in result["Destinations"]:
            if dst.get("attrs") == f"node={NODE}" and dst["enabled"] == "yes":
                return int({r["name"]: r for r in dst["Resources"]}["channels"]["max"])
        return None


async def measure_opensips(way: str, changes: int, prefix: Path) -> dict:
    channel = ChannelEvents.recorded()
    rng = random.Random(1)
    config = "subscriber" if way == "opensips-subscriber" else "compositor"
    with tempfile.TemporaryDirectory(prefix="bench-opensips-reaction-") as tmp:
        workdir = Path(tmp)
        port, mi_port, agent_port = free_port(), free_port(), free_port()
        pool = [PoolEntry(NODE, 1, free_port())]  # nobody answers there: no call is routed
        run = workdir / "opensips"
        text = customize((OPENSIPS_EXAMPLES / config / "opensips.cfg").read_text(), port=port, dbtext=run / "dbtext",
                         pool=pool, agents=[(NODE, f"sip:load-status@{HOST}:{agent_port}")],
                         modules=prefix / "lib64" / "opensips" / "modules")
        dbtext_tables(run / "dbtext", pool)
        opensips = OpenSips(prefix, run, add_mi_http(text, mi_port), port, mi_port=mi_port)
        sidecar = None
        read = LbCapacity(mi_port)
        try:
            opensips.start()
            async with fake_asterisk(LIMIT) as ami:
                async with node_agent(workdir, ami.port, agent_port,
                                      port if way == "opensips-compositor" else None) as agent:
                    await agent.wait_measured()
                    if way == "opensips-sidecar":
                        sidecar = OpenSipsSidecar(opensips.mi_url, {NODE: f"sip:{HOST}:{agent_port}"}, workdir)
                        sidecar.start()
                    latencies, lost = await follow_changes(read, LIMIT, ami, channel, changes, rng, f"{way}: OpenSIPS",
                                                           opensips.log_tail)
            problems = opensips.problems()
        finally:
            if sidecar is not None:
                sidecar.stop()
            opensips.stop()
    latencies.sort()
    return {"latencies": latencies, "lost": lost, "problems": problems, "failed_reads": read.failed}


def figures(way: str, changes: int, r: dict) -> str:
    ms = [1000 * x for x in r["latencies"]]
    line = (f"{way}: {changes} changes, measured {len(ms)}, lost {r['lost']}; latency ms: "
            f"p50 {nearest_rank(ms, 50):.2f}  p90 {nearest_rank(ms, 90):.2f}  "
            f"p99 {nearest_rank(ms, 99):.2f}  min {ms[0]:.2f}  max {ms[-1]:.2f}")
    if r.get("failed_reads"):
        line += f"; {r['failed_reads']} lb_list readings failed"
    if r.get("problems"):
        line += f"; OpenSIPS logged {len(r['problems'])} errors, the first: {r['problems'][0]}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--ways", default=",".join(KAMAILIO_WAYS + OPENSIPS_WAYS))
    args = parser.parse_args()
    ways = args.ways.split(",")
    unknown = set(ways) - set(KAMAILIO_WAYS + OPENSIPS_WAYS)
    if unknown:
        parser.error(f"unknown ways {', '.join(sorted(unknown))}; known: {', '.join(KAMAILIO_WAYS + OPENSIPS_WAYS)}")
    head = [
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs (shared), "
        f"Python {platform.python_version()}",
    ]
    kamailio = [w for w in ways if w in KAMAILIO_WAYS]
    if kamailio:
        lines = [
            "Kamailio reaction benchmark (bench/bench_kamailio_reaction.py): AMI channel event at a node -> "
            "new weight in Kamailio's htable",
            *head[:1], head[1] + ", Kamailio from Debian",
            "setup: real agent and Kamailio processes (UDP 127.0.0.1), fake AMI in the bench process; htable read",
            "       over JSON-RPC about every 0.5 ms; next change >= 120 ms after the previous one was seen",
        ]
        for way in kamailio:
            lines.append(figures(way, args.changes, asyncio.run(measure(way, args.changes))))
            print(lines[-1], flush=True)
        write(RESULTS, lines)
    opensips = [w for w in ways if w in OPENSIPS_WAYS]
    if opensips:
        prefix, why = opensips_build()
        if prefix is None:
            print(f"OpenSIPS ways left out: {why}")
            return
        lines = [
            "OpenSIPS reaction benchmark (bench/bench_kamailio_reaction.py): AMI channel event at a node -> "
            "new load_balancer capacity in OpenSIPS",
            *head[:1], head[1] + f", OpenSIPS built from source ({prefix.name[:20]}...)",
            "setup: real agent and OpenSIPS 3.6.8 processes (UDP 127.0.0.1), fake AMI in the bench process; lb_list",
            "       read over mi_http (a new connection each time) about every 0.5 ms; next change >= 120 ms after",
            "       the previous one was seen",
        ]
        for way in opensips:
            lines.append(figures(way, args.changes, asyncio.run(measure_opensips(way, args.changes, prefix))))
            print(lines[-1], flush=True)
        write(OPENSIPS_RESULTS, lines)


def write(path: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    print(text, end="")
    path.write_text(text)


if __name__ == "__main__":
    main()
