"""A tiny, dependency-free sd_notify(3): tell systemd how the agent is doing.

The unit (`packaging/debian/sipstatus-agent.service`) is `Type=notify` with
`NotifyAccess=main` and `WatchdogSec=`, so the agent's main process sends:

    ready("listening on udp 5070")  once it listens and has its first status
    watchdog()                      from its loop, every watchdog_period() / 2
    status("3 subscriptions")       whenever it has something to show in `systemctl status`
    reloading()  ...  ready()       around a SIGHUP reload
    stopping()                      when SIGTERM starts the clean shutdown

Each is one datagram of "KEY=VALUE" lines sent to the unix socket named by
$NOTIFY_SOCKET (an absolute path, or "@name" for the abstract namespace). When
the variable is unset (the agent run by hand, in tests, under another init)
every call is a no-op that returns False. A failure to send is never raised:
a daemon must not die because its supervisor went away; the caller gets False.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_period",
]


def _address(env: Mapping[str, str]) -> str | None:
    """The socket address from $NOTIFY_SOCKET, or None when unset or unusable."""
    name = env.get("NOTIFY_SOCKET", "")
    if name.startswith("@"):
        return "\0" + name[1:] if len(name) > 1 else None
    if name.startswith("/"):
        return name
    return None  # unset, empty, or a kind of address this helper does not speak (vsock:)


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send "KEY=VALUE" fields in one datagram; True when the datagram was sent.

    A value must be one line: newlines in a field are replaced by spaces so a
    STATUS text cannot inject another assignment.
    """
    address = _address(os.environ if env is None else env)
    if address is None or not fields:
        return False
    message = "\n".join(f.replace("\r", " ").replace("\n", " ") for f in fields) + "\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode("utf-8"), address)
    except OSError:
        return False
    return True


def ready(text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """READY=1: start-up (or a reload) is complete; optionally with a STATUS text."""
    fields = ["READY=1"]
    if text is not None:
        fields.append(f"STATUS={text}")
    return notify(*fields, env=env)


def watchdog(*, env: Mapping[str, str] | None = None) -> bool:
    """WATCHDOG=1: the main loop is alive (send every watchdog_period() / 2)."""
    return notify("WATCHDOG=1", env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """STATUS=...: a one-line text that `systemctl status` shows."""
    return notify(f"STATUS={text}", env=env)


def stopping(text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """STOPPING=1: the clean shutdown has begun."""
    fields = ["STOPPING=1"]
    if text is not None:
        fields.append(f"STATUS={text}")
    return notify(*fields, env=env)


def reloading(text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """RELOADING=1 (send ready() when the reload is done).

    MONOTONIC_USEC goes with it, as systemd 253 and later require for
    Type=notify-reload; older managers ignore the extra field.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = ["RELOADING=1", f"MONOTONIC_USEC={usec}"]
    if text is not None:
        fields.append(f"STATUS={text}")
    return notify(*fields, env=env)


def watchdog_period(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds that systemd set for this process, or None.

    Read from $WATCHDOG_USEC, honouring $WATCHDOG_PID as sd_watchdog_enabled(3)
    does: when it names another process, the watchdog is not ours.
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000
