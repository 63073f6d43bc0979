"""Processes the tests start in a session of their own, and stop as a group
(so that no Kamailio, SIPp or agent outlives a test).
"""

from __future__ import annotations

import os
import signal
import subprocess


def bound_by(port: int, pid: int) -> bool:
    """True when process `pid` has a UDP socket bound to 127.0.0.1:`port`."""
    out = subprocess.run(["ss", "-Hlunp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return f"pid={pid}," in out


def stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)
