"""The agent's local control socket: `status`, `drain`, `undrain`.

A UNIX stream socket (mode 0660, in the agent's runtime directory) that
speaks one JSON object per line each way:

    -> {"command": "drain"}
    <- {"ok": true, "status": {...the current load-status body...},
        "drain": {"on": true, "since": 1795440683.25}}
    <- {"ok": false, "error": "unknown command 'foo' (expected status, drain, undrain)"}

`drain` is the operator's flag, whatever the state (a node that is `down`
with the flag on stays out when it recovers); `since` is when it was set
(Unix time), null when off. `sipstatus-agent status|drain|undrain` are its
clients, so an operator or a deploy script can read the node's status or take
it out of rotation.

Where it is (:func:`default_socket_path`, the same for the agent and its
clients): under the packaged unit, /run/sipstatus-agent/control
(RuntimeDirectory=, owned by the service user `sipstatus`, group
`sipstatus`, directory 0750 and socket 0660: root and members of the group
may use it). Trust goes both ways:

- the agent refuses to serve from a directory (or any directory above it)
  that another user owns or could rename, or over a socket another user
  owns: whoever controls the directory could swap the socket;
- a client checks the peer with SO_PEERCRED before it believes an answer:
  only root, its own user and the service user may answer for the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

#: Where the packaged service puts it (systemd RuntimeDirectory=sipstatus-agent).
SERVICE_DIRECTORY = "/run/sipstatus-agent"
SERVICE_SOCKET = f"{SERVICE_DIRECTORY}/control"
#: The packaged service's user (User= in the unit): clients trust its answers.
SERVICE_USER = "sipstatus"
#: A request line longer than this is refused (one small JSON object is expected).
MAX_REQUEST_OCTETS = 4096
COMMANDS = ("status", "drain", "undrain")

Handler = Callable[[str], Awaitable[dict[str, Any]]]
#: Members added to every successful answer (the operator's drain flag).
Details = Callable[[], dict[str, Any]]


def default_socket_path(environ: dict[str, str] | None = None) -> str:
    """The control socket's path, found the same way by the agent and its clients.

    1. ``$RUNTIME_DIRECTORY/control``: systemd sets it for the unit's
       RuntimeDirectory= (the agent under the packaged unit);
    2. /run/sipstatus-agent/control when that directory exists (the packaged
       service's, for the operator's commands) or the caller is root;
    3. otherwise the user's own runtime directory (an agent run by hand).
    """
    env = os.environ if environ is None else environ
    runtime_directory = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime_directory:
        return str(Path(runtime_directory) / "control")
    if os.geteuid() == 0 or os.path.isdir(SERVICE_DIRECTORY):
        return SERVICE_SOCKET
    runtime = env.get("XDG_RUNTIME_DIR") or f"/tmp/sipstatus-agent-{os.geteuid()}"
    return str(Path(runtime) / "sipstatus-agent" / "control")


def trusted_uids() -> set[int]:
    """Users whose process may answer for the agent: root, ourselves and the
    packaged service's user (when it exists here)."""
    uids = {0, os.geteuid()}
    with contextlib.suppress(KeyError):
        uids.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    return uids


def _owner_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_private_directory(directory: Path, uid: int | None = None) -> None:
    """Raise ControlError unless ``directory`` and every directory above it are
    safe for a socket of ``uid`` (default: ours): each owned by that user or
    root, and none that another user could write to without the sticky bit
    (which would let them rename what is in it, our directory included)."""
    uid = os.geteuid() if uid is None else uid
    for path in (directory, *directory.parents):
        try:
            info = os.lstat(path)
        except OSError as err:
            raise ControlError(f"{path}: {err.strerror}") from None
        if stat.S_ISLNK(info.st_mode):
            raise ControlError(f"{path}: is a symbolic link; the control socket's directory "
                               "must be a real path")
        if info.st_uid not in (uid, 0):
            raise ControlError(f"{path}: owned by {_owner_name(info.st_uid)}, not by "
                               f"{_owner_name(uid)} or root: refusing to serve the control socket "
                               "from a directory another user controls")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
            raise ControlError(f"{path}: writable by other users (mode {stat.S_IMODE(info.st_mode):04o}): "
                               "refusing to serve the control socket from it")


class ControlError(Exception):
    """The control socket could not be reached or answered with an error."""


class ControlServer:
    """Serves the control socket; `handler(command)` returns the status body
    (as a JSON object) after carrying the command out; `details()` gives
    further members of the answer."""

    def __init__(self, path: str, handler: Handler, details: Details | None = None) -> None:
        self.path = path
        self._handler = handler
        self._details = details
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        directory = Path(self.path).parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        check_private_directory(directory)
        with contextlib.suppress(FileNotFoundError):
            owner = os.lstat(self.path).st_uid
            if owner != os.geteuid():
                raise ControlError(f"{self.path}: owned by {_owner_name(owner)}, not by the agent's "
                                   f"user {_owner_name(os.geteuid())}: refusing to replace it")
            if _is_live_socket(self.path):
                raise ControlError(f"{self.path}: another agent is already listening here")
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST_OCTETS)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            reply = await self._answer(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass  # a client that went away or sent an endless line: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "request is not a JSON object on one line"}
        command = request.get("command") if isinstance(request, dict) else None
        if command not in COMMANDS:
            return {"ok": False, "error": f"unknown command {command!r} (expected {', '.join(COMMANDS)})"}
        try:
            reply = {"ok": True, "status": await self._handler(command)}
            return reply | (self._details() if self._details is not None else {})
        except Exception as err:  # noqa: BLE001 - reported to the client, the agent goes on
            return {"ok": False, "error": f"{command} failed: {err}"}


def peer_uid(sock: socket.socket) -> int:
    """The user of the process at the other end of a connected UNIX socket
    (SO_PEERCRED: as the kernel recorded it at connect/listen time)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid


def request(path: str, command: str, timeout: float = 5.0,
            trusted: set[int] | None = None) -> dict[str, Any]:
    """Send `command` to the agent at `path`; return the status body it sends
    back. The peer must run as one of ``trusted`` (default:
    :func:`trusted_uids`), checked before anything is sent. Raises
    ControlError with a reason an operator can act on."""
    return answer(path, command, timeout, trusted)["status"]


def answer(path: str, command: str, timeout: float = 5.0,
           trusted: set[int] | None = None) -> dict[str, Any]:
    """Send `command` to the agent at `path`; its whole answer (`status`,
    and `drain` from agents that report it). The peer must run as one of
    ``trusted`` (default: :func:`trusted_uids`). Raises ControlError."""
    trusted = trusted_uids() if trusted is None else trusted
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            uid = peer_uid(sock)
            if uid not in trusted:
                raise ControlError(
                    f"{path}: answered by a process of {_owner_name(uid)}, not of root or the "
                    f"agent's user ({', '.join(_owner_name(u) for u in sorted(trusted))}): "
                    "not trusting it")
            sock.sendall(json.dumps({"command": command}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise ControlError(f"{path}: no such socket (is sipstatus-agent running?)") from None
    except ConnectionRefusedError:
        raise ControlError(f"{path}: connection refused (the agent is not running)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (run as root or as a member of the group sipstatus)") from None
    except TimeoutError:
        raise ControlError(f"{path}: no answer within {timeout:g} s") from None
    except OSError as err:
        raise ControlError(f"{path}: {err.strerror or err}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: the agent's answer is not JSON: {data[:80]!r}") from None
    if not reply.get("ok"):
        raise ControlError(f"agent refused {command}: {reply.get('error', 'no reason given')}")
    return reply


def _is_live_socket(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return False
    return True
