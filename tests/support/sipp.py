"""Running SIPp (Debian's sip-tester: 3.6.1 in Debian 12, 3.7.3 in Debian 13) from asyncio tests.

FIELD-NOTES: always ``-cp <port> -ci 127.0.0.1`` (the control socket would
otherwise be 0.0.0.0:8888 and collide); ``-mp N`` binds N and N+2, so both
must be free; a UAS whose port is taken fails silently, so its port is
checked first; ``kill -USR1`` ends SIPp softly with its statistics.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from tests.support import SIPP_SCENARIOS
from tests.support.ports import free_port

SCENARIOS = SIPP_SCENARIOS
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
