"""Running SIPp (Debian's sip-tester: 3.6.1 in Debian 12, 3.7.3 in Debian 13).

- `run_sipp`: one scenario from asyncio tests, with its outcome (`SippResult`).
- `SippNode`: a SIPp UAS standing for one Asterisk node of a proxy's pool (it
  answers INVITEs with 200 OK and names itself in X-Node).
- `place_calls`: a SIPp UAC through the proxy, counting where the calls went
  (the UAC logs the X-Node of each answer); `Caller` is the same in the
  background, with SIPp's own statistics; `split_within` judges the split.

FIELD-NOTES: always ``-cp <port> -ci 127.0.0.1`` (the control socket would
otherwise be 0.0.0.0:8888 and collide); ``-mp N`` binds N and N+2, so both
must be free; a UAS whose port is taken fails silently, so its port is
checked first; ``kill -USR1`` ends SIPp softly with its statistics.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support import HOST, SIPP_SCENARIOS
from tests.support.ports import free_port
from tests.support.processes import bound_by, stop_group

SCENARIOS = SIPP_SCENARIOS
#: The pool nodes' UAS and the callers' UAC (tests/sipp/kamailio/).
CALL_SCENARIOS = SIPP_SCENARIOS / "kamailio"
SIPP = shutil.which("sipp")


@dataclass
class SippResult:
    returncode: int
    stdout: str
    stderr: str
    errors: str  # the -trace_err log: unexpected messages, failed checks

    def explain(self) -> str:
        return f"exit {self.returncode}\n{self.stderr[-3000:]}\n{self.errors[-3000:]}"

    def received(self) -> dict[str, int]:
        """The responses counted in SIPp's final scenario screen: status code ->
        messages received (summed over the scenario's lines for that code).

        SIPp 3.6 writes ``      503 <----------   20 ...``; 3.7 numbers each
        line first: ``2 :         503 <----------   20 ...`` (recorded in
        tests/data/sipp/)."""
        counts: dict[str, int] = {}
        for status, count in ANSWER_LINE.findall(self.stdout):
            counts[status] = counts.get(status, 0) + int(count)
        if not counts:
            raise AssertionError(f"no scenario screen with received responses in SIPp's output:\n"
                                 f"{self.stdout[-3000:]}")
        return counts


# A received response's line of the scenario screen, with or without 3.7's "N :".
ANSWER_LINE = re.compile(r"^(?:\d+ :)?\s+(\d{3}) <-+\s+(\d+)", re.M)


async def run_sipp(scenario: str, *args: str, tmp: Path, timeout: float = 30.0,
                   remote: str | None = None) -> SippResult:
    """Run one SIPp instance to completion (``-m`` in ``args``) or ``timeout``."""
    assert SIPP is not None
    control = free_port()
    media = free_port(3)
    errors = tmp / f"{Path(scenario).stem}_errors.log"
    command = [SIPP, *([remote] if remote else []), "-sf", str(SCENARIOS / scenario),
               "-cp", str(control), "-ci", "127.0.0.1", "-mp", str(media),
               "-nostdin", "-trace_err", "-error_file", str(errors), *args]
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.send_signal(signal.SIGUSR1)  # soft end: statistics are written
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), 5)
        except TimeoutError:
            process.kill()
            stdout, stderr = await process.communicate()
    text = errors.read_text(errors="replace") if errors.exists() else ""
    return SippResult(process.returncode if process.returncode is not None else -1,
                      stdout.decode(errors="replace"), stderr.decode(errors="replace"), text)


# -- SIPp --------------------------------------------------------------------


class SippNode:
    """A SIPp UAS standing for one Asterisk node.

    `scenario` defaults to tests/sipp/kamailio/uas.xml; with `log`, SIPp's
    -log_file gets what the scenario logs (tests/sipp/e2e/uas.xml logs the
    arrival time of each INVITE: see `invite_times`).
    """

    def __init__(self, name: str, workdir: Path, rweight: int = 1, *, scenario: Path | None = None,
                 log: bool = False, extra: Sequence[str] = ()) -> None:
        self.name = name
        self.extra = list(extra)  # more SIPp arguments (e.g. -key NAME VALUE)
        self.rweight = rweight
        self.port = free_port()
        self.workdir = workdir
        self.scenario = scenario or CALL_SCENARIOS / "uas.xml"
        self.log_path = workdir / f"uas-{name}-{secrets.token_hex(3)}.log" if log else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"sip:{HOST}:{self.port}"

    def start(self) -> None:
        cmd = [
            "sipp", "-sf", str(self.scenario), "-s", self.name,
            "-i", HOST, "-p", str(self.port),
            "-cp", str(free_port()), "-ci", HOST, "-mp", str(free_port(4)),
            "-nostdin", *self.extra,
        ]
        if self.log_path is not None:
            cmd += ["-trace_logs", "-log_file", str(self.log_path)]
        out = open(self.workdir / f"uas-{self.name}.out", "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, start_new_session=True)
        out.close()
        # A SIPp whose port is taken fails silently (field notes): wait until
        # this very process holds the port.
        deadline = time.monotonic() + 5
        while not bound_by(self.port, self.proc.pid):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SIPp UAS {self.name} did not bind {HOST}:{self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, signal.SIGKILL)

    def invite_times(self) -> list[float]:
        """Epoch times at which this node received INVITEs (a scenario that
        logs "<seconds> <microseconds>" per INVITE, or "<seconds>
        <microseconds> <method>" per request, and `log`)."""
        return self.request_times("INVITE")

    def request_times(self, method: str) -> list[float]:
        """Epoch times at which this node received `method` requests (see
        `invite_times`: a line without a method is an INVITE)."""
        if self.log_path is None or not self.log_path.exists():
            return []
        times = []
        for line in self.log_path.read_text().splitlines():
            fields = line.split()
            if len(fields) in (2, 3) and (fields[2:] or ["INVITE"])[0] == method:
                times.append(float(fields[0]) + float(fields[1]) / 1e6)
        return times


@dataclass
class CallResult:
    """What a SIPp caller reported: answers per node (by X-Node), and its own
    count of successful and failed calls (-trace_stat, the last line; None
    when SIPp wrote none)."""

    calls: int  # asked for
    counts: Counter[str]
    successful: int | None
    failed: int | None
    returncode: int | None
    output: str


class Caller:
    """A SIPp UAC placing `calls` calls through the proxy at `rate` per
    second, in the background: `start`, then `wait`. tests/sipp/kamailio/
    uac.xml: INVITE, ACK and BYE along the recorded route, no pause; it logs
    the X-Node of each answer."""

    def __init__(self, proxy_port: int, calls: int, workdir: Path, *, rate: float = 300,
                 limit: int | None = None, timeout: float = 60.0) -> None:
        tag = secrets.token_hex(3)
        self.calls = calls
        self.timeout = timeout
        self.workdir = workdir
        self.log = workdir / f"uac-{tag}.log"
        self.stat = workdir / f"uac-{tag}.csv"
        self.out = workdir / f"uac-{tag}.out"
        self.errors = workdir / f"uac-{tag}.err"  # what a failed call received
        self.cmd = [
            "sipp", "-sf", str(CALL_SCENARIOS / "uac.xml"), "-s", "load",
            "-i", HOST, "-p", str(free_port()),
            "-cp", str(free_port()), "-ci", HOST, "-mp", str(free_port(4)),
            "-m", str(calls), "-r", f"{rate:g}", "-l", str(limit or max(10, int(rate))),
            "-timeout", f"{int(timeout)}s", "-recv_timeout", "5s",
            "-trace_logs", "-log_file", str(self.log),
            "-trace_stat", "-stf", str(self.stat), "-fd", "1",
            "-trace_err", "-error_file", str(self.errors),
            "-nostdin",
            f"{HOST}:{proxy_port}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.started: float | None = None

    def start(self) -> Caller:
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, start_new_session=True)
        self.started = time.time()
        return self

    def wait(self) -> CallResult:
        """Wait until all `calls` are done (or the timeout); "failed" in the
        counts is every call that got no 200 from a node."""
        assert self.proc is not None
        try:
            self.proc.wait(self.timeout + 10)
        except subprocess.TimeoutExpired:
            self._soft_end()
        result = self._collect()
        unanswered = self.calls - sum(result.counts.values())
        if unanswered:
            result.counts["failed"] = unanswered
        return result

    def stop_softly(self) -> CallResult:
        """End the run now: SIPp places no new call, lets the calls under
        way finish and writes its statistics (SIGUSR1)."""
        self._soft_end()
        return self._collect()

    def _soft_end(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGUSR1)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass

    def _collect(self) -> CallResult:
        assert self.proc is not None
        stop_group(self.proc, signal.SIGKILL)
        counts: Counter[str] = Counter()
        if self.log.exists():
            counts.update(line.strip() for line in self.log.read_text().splitlines() if line.strip())
        successful, failed = _final_stat(self.stat)
        output = self.out.read_text(errors="replace") if self.out.exists() else ""
        if failed and self.errors.exists():  # the messages a failed call got, for the assertion's text
            output += "\n--- SIPp's error log (its end) ---\n" + self.errors.read_text(errors="replace")[-3000:]
        return CallResult(self.calls, counts, successful, failed, self.proc.returncode, output)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, signal.SIGKILL)


def _final_stat(path: Path) -> tuple[int | None, int | None]:
    """SuccessfulCall(C) and FailedCall(C) of the last line of a -trace_stat file."""
    if not path.exists():
        return None, None
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(lines) < 2:
        return None, None
    head = lines[0].split(";")
    last = lines[-1].split(";")
    try:
        return int(last[head.index("SuccessfulCall(C)")]), int(last[head.index("FailedCall(C)")])
    except (ValueError, IndexError):
        return None, None


def place_calls(proxy_port: int, calls: int, workdir: Path, *, rate: int = 300, timeout: float = 60.0) -> Counter[str]:
    """Run `calls` calls through the proxy with a SIPp UAC; return how many
    each node answered (by X-Node), plus "failed" for calls that got no 200."""
    return Caller(proxy_port, calls, workdir, rate=rate, limit=rate, timeout=timeout).start().wait().counts


# -- statistics --------------------------------------------------------------


def split_within(counts: Mapping[str, int], weights: Mapping[str, int], calls: int, sigmas: float = 5.0) -> list[str]:
    """Problems with a weighted random split, or [] when it matches.

    Each node's count is Binomial(calls, p) with p = its weight / the total
    weight; it must lie within `sigmas` standard deviations sqrt(calls p (1-p))
    of calls * p (plus one call for rounding). A node of weight 0 must get
    no call at all, and every call must reach some node.
    """
    problems = []
    total = sum(weights.values())
    if counts.get("failed"):
        problems.append(f"{counts['failed']} of {calls} calls failed")
    for node in counts:
        if node != "failed" and node not in weights:
            problems.append(f"{node} got {counts[node]} calls and is not in the pool")
    for node, weight in weights.items():
        got = counts.get(node, 0)
        p = weight / total
        expected = calls * p
        bound = sigmas * math.sqrt(calls * p * (1 - p)) + 1
        if weight == 0 and got:
            problems.append(f"{node} (weight 0) got {got} calls")
        elif abs(got - expected) > bound:
            problems.append(f"{node} got {got} calls, expected {expected:.0f} +- {bound:.0f}")
    return problems
