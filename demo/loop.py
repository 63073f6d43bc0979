"""`./dev demo`: the whole loop on this machine, with real parts, in a minute or so.

    3 sipstatus agents ──NOTIFY──> sipstatus sidecar ──JSON-RPC──> Kamailio ──INVITE──> 3 SIPp nodes
         ^ AMI                        (weights)                      ^ SIPp caller, 30 calls/s
    3 fake Asterisks replaying recorded AMI transcripts

Real: the `sipstatus-agent run` processes, the `sipstatus sidecar`
process, Kamailio 5.6 from Debian running
packaging/examples/kamailio/sidecar/kamailio.cfg unchanged, SIPp placing
calls and SIPp standing for the three Asterisk nodes (answering the calls
and the agents' SIP probes). Recorded: what each agent reads from
"Asterisk" is a fake AMI server (tests/support/fake_ami.py) replaying real Asterisk
20 transcripts (tests/data/ami/), so that the three nodes carry different
call counts without three Asterisks. The processes are started with the
tests' own runners (tests/support/), the code that runs them in
the test suite.

The script: steady load; a CPU hog (busy processes) while ast2's agent
reads this machine's CPU (the other two leave CPU out, as the three nodes
share one machine here); `sipstatus-agent drain` on ast3; ast1's agent
SIGKILLed. Meanwhile the `sipstatus watch` screen and the calls per node
are shown live; at the end a summary (the split of calls against the
weights Kamailio held, the drain, the kill) and a PNG plot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from sipstatus.proxy import watchview
from sipstatus.proxy.agents import Agent as WatchedAgent
from sipstatus.proxy.kamailio import JsonRpcClient, RpcError
from sipstatus.proxy.watcher import Watcher, WatcherConfig
from tests.support import ROOT
from tests.support.agents import Agent, Sidecar
from tests.support.fake_ami import FakeAmis, Scenario
from tests.support.kamailio import EXAMPLES, Kamailio, have_tools, start_example
from tests.support.sipp import Caller, SippNode

from . import report
from .report import Phase, Recording

UAS = ROOT / "tests" / "sipp" / "e2e" / "uas.xml"
DEFAULT_PLOT = ROOT / "build" / "demo" / "sipstatus-demo.png"
#: The agents' validity: a killed agent's node is out this long after its last report.
VALIDITY = 5
RATE = 30.0


@dataclass(frozen=True)
class NodeSpec:
    transcript: str  # the CoreShowChannels answer the fake Asterisk replays
    max_calls: int  # the agent's call limit (the fake Asterisk has none)
    what: str  # for the screen
    collectors: tuple[str, ...] = ("asterisk", "probe")


NODES = {
    "ast1": NodeSpec("coreshowchannels", 20, "5 calls (coreshowchannels.txt), limit 20"),
    "ast2": NodeSpec("coreshowchannels_idle", 16, "idle (coreshowchannels_idle.txt), limit 16, "
                     "and this machine's CPU", ("asterisk", "probe", "host")),
    "ast3": NodeSpec("coreshowchannels_b2b", 12, "4 calls (coreshowchannels_b2b.txt), limit 12"),
}
HOGGED, DRAINED, KILLED = "ast2", "ast3", "ast1"


def script(phase: float, hogs: int) -> list[tuple[str, str, str]]:
    """(name, title, what happens) of each phase."""
    return [
        ("steady", "steady load", "calls split by the weights the agents report"),
        ("hog", f"CPU hog: {hogs} busy", f"{hogs} busy process(es) on this machine: {HOGGED}'s agent "
         "reads its CPU, so its weight falls (or it is overloaded: weight 0)"),
        ("drain", f"drain {DRAINED}", f"`sipstatus-agent drain` on {DRAINED}: from the moment Kamailio "
         "has its weight 0, it gets no new call"),
        ("kill", f"kill {KILLED}'s agent", f"{KILLED}'s agent SIGKILLed: its last report goes stale "
         f"{VALIDITY} s (its validity) after it came, and {KILLED} is out"),
    ]


# -- the parts ------------------------------------------------------------------------------


class Pool:
    """The processes of the demo, started with the tests' runners."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.amis = FakeAmis()
        self.uas: dict[str, SippNode] = {}
        self.agents: dict[str, Agent] = {}
        self.kam: Kamailio | None = None
        self.sidecar: Sidecar | None = None
        self.hogs: list[subprocess.Popen[bytes]] = []

    def start(self, say: TextIO) -> None:
        for name in NODES:
            self.uas[name] = SippNode(name, self.workdir, scenario=UAS, log=True)
            self.uas[name].start()
        say.write(f"  SIPp nodes   {', '.join(f'{n} udp:{u.port}' for n, u in self.uas.items())}\n")
        self.kam = start_example(EXAMPLES / "sidecar" / "kamailio.cfg", self.workdir, list(self.uas.values()))
        say.write(f"  Kamailio     udp:127.0.0.1:{self.kam.port}, "
                  "packaging/examples/kamailio/sidecar/kamailio.cfg as shipped\n")
        for name, spec in NODES.items():
            port = self.amis.serve(Scenario(answers={"CoreShowChannels": spec.transcript}))
            self.agents[name] = Agent(name, self.workdir, ami_port=port, probe=self.uas[name].uri,
                                      max_calls=spec.max_calls, validity=VALIDITY,
                                      collectors=spec.collectors)
        errors: list[Exception] = []

        def start(agent: Agent) -> None:
            try:
                agent.start()
            except Exception as err:  # noqa: BLE001 - raised below, in this thread
                errors.append(err)

        threads = [threading.Thread(target=start, args=(a,)) for a in self.agents.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        for name, agent in self.agents.items():
            say.write(f"  agent {name}   {agent.uri}, reads a fake Asterisk (recorded AMI): "
                      f"{NODES[name].what}\n")
        self.sidecar = Sidecar(self.kam, {n: a.uri for n, a in self.agents.items()}, self.workdir)
        self.sidecar.start()
        say.write("  sidecar      `sipstatus sidecar`: subscribes to the agents, pushes weights into "
                  "Kamailio's htable `sipstatus`\n")

    def rpc(self) -> JsonRpcClient:
        assert self.kam is not None
        return JsonRpcClient(f"unix:{self.kam.workdir}/kamailio_rpc.sock")

    def start_hog(self, count: int) -> None:
        for _ in range(count):
            self.hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                              start_new_session=True))

    def stop_hog(self) -> None:
        for hog in self.hogs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(hog.pid, signal.SIGKILL)
            hog.wait()
        self.hogs.clear()

    def stop(self) -> None:
        self.stop_hog()
        for part in (self.sidecar, *self.agents.values(), self.kam, *self.uas.values()):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        self.amis.close()


def htable_weights(rpc: JsonRpcClient) -> dict[str, int]:
    """Kamailio's htable `sipstatus` (node -> weight), as the sidecar set it."""
    weights = {}
    for entry in rpc.call("htable.dump", "sipstatus") or []:
        for item in entry.get("slot", []):
            weights[item["name"]] = int(item["value"])
    return weights


class Poller(threading.Thread):
    """Reads Kamailio's weights every `report.POLL` seconds into the recording."""

    def __init__(self, rpc: JsonRpcClient, recording: Recording) -> None:
        super().__init__(name="kamailio-poller", daemon=True)
        self.rpc = rpc
        self.recording = recording
        self.halt = threading.Event()
        self.latest: dict[str, int] = {}

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                weights = htable_weights(self.rpc)
            except (RpcError, OSError, ValueError):
                weights = None
            if weights is not None:
                self.latest = weights
                self.recording.polls.append((time.time(), weights))
            self.halt.wait(report.POLL)


# -- the screen -------------------------------------------------------------------------------


def calls_panel(recording: Recording, weights: dict[str, int], now: float, window: float = 5.0) -> str:
    shares = report.shares({n: weights.get(n, 0) for n in recording.nodes})
    recent = {n: sum(1 for t in recording.calls.get(n, ()) if now - window <= t < now) for n in recording.nodes}
    total_recent = sum(recent.values())
    lines = [f"calls through Kamailio (a SIPp caller at {recording.rate:g}/s; each node a SIPp that answers)",
             f"  {'NODE':<6} {'WEIGHT IN KAMAILIO':>18} {'SHARE':>6}   {'CALLS, LAST 5 s':>15} {'SHARE':>6}"
             f"   {'TOTAL':>6}"]
    for node in recording.nodes:
        got = recent[node]
        lines.append(f"  {node:<6} {weights.get(node, 0):>18} {100 * shares[node]:>5.0f}%   {got:>15} "
                     f"{(100 * got / total_recent if total_recent else 0):>5.0f}%   "
                     f"{len(recording.calls.get(node, ())):>6}")
    return "\n".join(lines)


def screen(recording: Recording, watcher: Watcher, weights: dict[str, int], phase: tuple[int, str, str],
           left: float, start: float, now: float) -> str:
    index, title, what = phase
    events = [f"  +{at - start:5.1f} s  {text}" for at, text in recording.events[-6:]]
    return "\n".join([
        f"sipstatus demo   {time.strftime('%H:%M:%S')}   +{now - start:.0f} s   "
        f"phase {index}/4: {title} ({left:.0f} s left)",
        textwrap.fill(what, 100, initial_indent="  ", subsequent_indent="  "),
        "  real: the agents, the sidecar, Kamailio (its sidecar example), SIPp calls and nodes",
        "  recorded: what each agent reads from Asterisk (AMI transcripts replayed by tests/support/fake_ami.py)",
        "",
        watchview.render_table(watcher.rows(), policy=watcher.policy.name),
        "",
        calls_panel(recording, weights, now),
        "",
        "what happened",
        *(events or ["  (nothing yet)"]),
    ])


# -- the run ----------------------------------------------------------------------------------


async def run(phase_seconds: float, plot_path: Path, json_path: Path | None, live: bool,
              out: TextIO) -> int:
    if not have_tools("jansson"):
        out.write("./dev demo needs kamailio, kamailio-extra-modules and sip-tester (SIPp) from Debian; "
                  "run it as ./dev demo, which installs them\n")
        return 2
    hogs = max(1, (os.cpu_count() or 2) // 2)
    phases = script(phase_seconds, hogs)
    workdir = Path(tempfile.mkdtemp(prefix="sipstatus-demo-"))
    recording = Recording(nodes=list(NODES), validity=VALIDITY, rate=RATE, drained=DRAINED, killed=KILLED)
    # Ctrl-C or SIGTERM: stop where we are and take every process down with us.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    pool = Pool(workdir)
    keep = False
    watcher: Watcher | None = None
    poller: Poller | None = None
    caller: Caller | None = None
    out.write("sipstatus demo: the whole loop on this machine\n"
              "  agents -> NOTIFY -> sipstatus sidecar -> JSON-RPC -> Kamailio -> INVITE -> nodes\n"
              "starting (real processes; only Asterisk is replaced: by recorded AMI transcripts)\n")
    out.flush()
    try:
        await asyncio.to_thread(pool.start, out)
        # What an operator runs beside the proxy to see the pool: the agents
        # given by address only (each named by the node it reports).
        watcher = Watcher([WatchedAgent(None, a.uri) for a in pool.agents.values()],
                          config=WatcherConfig(expires=60))
        logging.getLogger("sipstatus").addHandler(_EventLog(recording, out, live))
        logging.getLogger("sipstatus").propagate = False
        await watcher.start()
        poller = Poller(pool.rpc(), recording)
        poller.start()
        if not await _until(lambda: len(poller.latest) == len(NODES), 30):
            keep = True
            out.write(f"Kamailio never got a weight for every node: {poller.latest}; the processes' "
                      f"logs are in {workdir}\nsidecar log:\n{pool.sidecar.log_tail() if pool.sidecar else ''}\n")
            return 1
        total = phase_seconds * len(phases)
        caller = Caller(pool.kam.port, int(RATE * (total + 30)), workdir, rate=RATE,  # type: ignore[union-attr]
                        timeout=total + 60).start()
        start = recording.start = time.time()
        out.write(f"calls: a SIPp caller at {RATE:g} calls/s through Kamailio\n")
        out.flush()
        for index, (name, title, what) in enumerate(phases, 1):
            begin = time.time()
            phase = Phase(name, title, begin, begin + phase_seconds)
            recording.phases.append(phase)
            await _act(name, pool, recording, out, hogs, live)
            while (now := time.time()) < phase.end:
                _refresh_calls(recording, pool)
                if live:
                    out.write(watchview.CLEAR + screen(recording, watcher, poller.latest, (index, title, what),
                                                       phase.end - now, start, now) + "\n")
                    out.flush()
                await asyncio.sleep(min(1.0, max(0.0, phase.end - now)))
            if name == "hog":
                pool.stop_hog()
                _event(recording, "hog stopped", out, live)
        result = await asyncio.to_thread(caller.stop_softly)
        await asyncio.sleep(0.5)  # the last INVITEs in the nodes' logs
        _refresh_calls(recording, pool)
        recording.placed = None if result.successful is None else result.successful + (result.failed or 0)
        recording.failed = result.failed
        poller.halt.set()
        poller.join(5)
        splits = [report.split(recording, p) for p in recording.phases]
        drain = report.drain_result(recording)
        kill = report.kill_result(recording)
        try:
            written: Path | None = await asyncio.to_thread(report.plot, recording, plot_path, start)
        except ImportError as err:
            written = None
            out.write(f"no plot: {err} (./dev demo installs matplotlib from requirements-bench.txt)\n")
        if live:
            out.write(watchview.CLEAR)
        out.write(report.summary(recording, splits, drain, kill, written) + "\n")
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report.to_json(recording, splits, drain, kill, written), indent=1))
        if all(s.ok for s in splits) and drain.ok and kill.ok and written is not None:
            return 0
        keep = True
        out.write(f"something did not hold: the processes' logs are in {workdir}\n")
        return 1
    except asyncio.CancelledError:
        keep = True
        out.write(f"\nstopped; the processes' logs are in {workdir}\n")
        return 130
    except BaseException:
        keep = True
        out.write(f"\nthe demo stopped; the processes' logs are in {workdir}\n")
        raise
    finally:
        if poller is not None:
            poller.halt.set()
        if caller is not None:
            caller.stop()
        if watcher is not None:
            await watcher.close()
        await asyncio.to_thread(pool.stop)
        out.flush()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


async def _act(name: str, pool: Pool, recording: Recording, out: TextIO, hogs: int, live: bool) -> None:
    if name == "hog":
        pool.start_hog(hogs)
        _event(recording, f"hog: {hogs} busy process(es) started", out, live)
    elif name == "drain":
        recording.drain_started = time.time()
        await asyncio.to_thread(pool.agents[DRAINED].ctl, "drain")
        recording.drain_at = time.time()
        _event(recording, f"`sipstatus-agent drain` on {DRAINED}", out, live)
    elif name == "kill":
        recording.kill_at = time.time()
        await asyncio.to_thread(pool.agents[KILLED].kill)
        _event(recording, f"{KILLED}'s agent SIGKILLed", out, live)


def _event(recording: Recording, text: str, out: TextIO, live: bool) -> None:
    recording.events.append((time.time(), text))
    if not live:
        out.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
        out.flush()


class _EventLog(logging.Handler):
    """The watch screen's warnings (a node gone quiet, ...) as events."""

    def __init__(self, recording: Recording, out: TextIO, live: bool) -> None:
        super().__init__(logging.WARNING)
        self.recording, self.out, self.live = recording, out, live

    def emit(self, record: logging.LogRecord) -> None:
        _event(self.recording, f"watch: {record.getMessage()}", self.out, self.live)


def _refresh_calls(recording: Recording, pool: Pool) -> None:
    for name, uas in pool.uas.items():
        recording.calls[name] = uas.invite_times()


async def _until(predicate, timeout: float) -> bool:  # noqa: ANN001 - a callable
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ci", action="store_true",
                        help="not interactive: no live screen, a line per event, the summary; "
                             "exit 1 unless every check holds")
    parser.add_argument("--phase", type=float, default=12.0, metavar="S",
                        help="seconds of each of the 4 phases (default 12, at least 10)")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, metavar="PNG",
                        help=f"where the plot goes (default {DEFAULT_PLOT.relative_to(ROOT)})")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the summary's figures here")
    args = parser.parse_args(argv)
    if args.phase < 10:
        parser.error("--phase: at least 10 seconds (the killed node needs its validity of 5 s and more)")
    live = not args.ci and sys.stdout.isatty()
    return asyncio.run(run(args.phase, args.plot, args.json, live, sys.stdout))
