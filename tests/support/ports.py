"""Free ports for the processes a test starts, on the loopback addresses."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from tests.support import HOST

#: Ports handed out before in this process, not handed out again, so that
#: processes started together do not collide.
_handed_out: set[int] = set()


def free_port(span: int = 1, *, hosts: Sequence[str] = (HOST,)) -> int:
    """A port p with p..p+span-1 free for UDP and TCP on every one of `hosts`
    right now (SIPp's -mp needs p and p+2; a SIP service listens on both)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((hosts[0], 0))
            base = probe.getsockname()[1]
        ports = range(base, base + span)
        if base + span > 65535 or any(p in _handed_out for p in ports):
            continue
        if all(_free(host, p, kind) for host in hosts for p in ports
               for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)):
            _handed_out.update(ports)
            return base
    raise RuntimeError(f"no free port on {', '.join(hosts)}")


def _free(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
