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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

#: Where the packaged service puts it (systemd RuntimeDirectory=sipstatus-agent).
SERVICE_SOCKET = "/run/sipstatus-agent/control"
#: A request line longer than this is refused (one small JSON object is expected).
MAX_REQUEST_OCTETS = 4096
COMMANDS = ("status", "drain", "undrain")

Handler = Callable[[str], Awaitable[dict[str, Any]]]
#: Members added to every successful answer (the operator's drain flag).
Details = Callable[[], dict[str, Any]]


def default_socket_path() -> str:
    """The service's path when running as root, else one in the user's runtime directory."""
    if os.geteuid() == 0:
        return SERVICE_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/sipstatus-agent-{os.geteuid()}"
    return str(Path(runtime) / "sipstatus-agent" / "control")


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
        with contextlib.suppress(FileNotFoundError):
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


def request(path: str, command: str, timeout: float = 5.0) -> dict[str, Any]:
    """Send `command` to the agent at `path`; return the status body it sends
    back. Raises ControlError with a reason an operator can act on."""
    return answer(path, command, timeout)["status"]


def answer(path: str, command: str, timeout: float = 5.0) -> dict[str, Any]:
    """Send `command` to the agent at `path`; its whole answer (`status`,
    and `drain` from agents that report it). Raises ControlError."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
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
        raise ControlError(f"{path}: permission denied (run as root or as the agent's user)") from None
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
