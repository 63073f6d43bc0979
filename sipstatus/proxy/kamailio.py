"""Pushing node weights and states into a running Kamailio over JSON-RPC.

For the "sidecar" way of running with Kamailio: a `sipstatus` process on the
proxy host follows the agents and pushes what it learns into Kamailio with
the `jsonrpcs` module, over its UNIX datagram socket or its FIFO (see
Kamailio's README.jsonrpcs, section 7).

What is pushed (`KamailioSink`):
- `htable.seti TABLE NODE WEIGHT` for the script-side weighted choice (the
  routing script reads `$sht(TABLE=>NODE)`);
- `dispatcher.set_duid_state a|i GROUP NODE` so that a node that takes no
  new calls (draining, overloaded, down, stale) is skipped by the
  dispatcher too; each destination's `duid` attribute names its node;
- optionally, for operators who let the dispatcher choose (algorithm 11,
  relative weights), the list file rewritten with each node's `rweight` and
  its state flag, and one `dispatcher.reload` at most every
  `reload_interval` seconds. Destinations are never removed and re-added
  per report: Kamailio 5.6 rate-limits reloads (`reload_delta`, 5 s; a
  second call gets "500 - Ongoing reload" and the destination is lost) and
  crashed in `ds_select_dst` with remove+add under load (FIELD-NOTES).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import select
import shutil
import socket
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agents import DEFAULT_AGENT_PORT, Agent, parse_agent_uri
from .sinks import RoomSink, SinkError, parse_attrs, uri_host

#: Kamailio 5.6's shared `reload_delta` for dispatcher.reload (README.dispatcher 3.40).
DISPATCHER_RELOAD_DELTA = 5.0
#: Dispatcher list-file flag bit for an inactive destination (README.dispatcher 6.1).
FLAG_INACTIVE = 1
MAX_DATAGRAM = 65535


class RpcError(SinkError):
    """Kamailio answered an RPC with an error, or could not be reached.

    Carries the method and params that caused it, for the operator's log."""

    def __init__(self, method: str, params: tuple[Any, ...], message: str, code: int | None = None) -> None:
        self.method, self.params, self.code = method, params, code
        where = f"{method}({', '.join(map(repr, params))})"
        super().__init__(f"{where}: {message}" + (f" (code {code})" if code is not None else ""))


class JsonRpcClient:
    """A JSON-RPC 2.0 client for Kamailio's jsonrpcs module.

    `address` is `unix:PATH` (the module's `dgram_socket`) or `fifo:PATH`
    (its `fifo_name`; replies come through a FIFO made in `reply_dir`, which
    must be the module's `fifo_reply_dir`, default /tmp).
    """

    def __init__(self, address: str, *, timeout: float = 2.0, reply_dir: str = "/tmp") -> None:
        kind, _, path = address.partition(":")
        if kind not in ("unix", "fifo") or not path:
            raise ValueError(f"Kamailio RPC address {address!r}: expected unix:PATH or fifo:PATH")
        self.kind, self.path, self.timeout, self.reply_dir = kind, path, timeout, reply_dir
        self._ids = itertools.count(1)

    def call(self, method: str, *params: Any) -> Any:
        """Call `method`; return its result or raise RpcError."""
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params:
            request["params"] = list(params)
        try:
            if self.kind == "unix":
                raw = self._call_datagram(request)
            else:
                raw = self._call_fifo(request)
        except OSError as err:
            raise RpcError(method, params, f"{self.kind}:{self.path}: {err.strerror or err}") from None
        try:
            reply = json.loads(raw)
        except ValueError:
            raise RpcError(method, params, f"answer is not JSON: {raw[:80]!r}") from None
        if "error" in reply:
            error = reply["error"] or {}
            raise RpcError(method, params, str(error.get("message", "error")), error.get("code"))
        return reply.get("result")

    def _call_datagram(self, request: dict[str, Any]) -> bytes:
        # The client binds its own socket: Kamailio sends the answer to it.
        reply_path = os.path.join(tempfile.gettempdir(), f"sipstatus-rpc-{os.getpid()}-{secrets.token_hex(4)}.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(reply_path)
            try:
                sock.settimeout(self.timeout)
                sock.sendto(json.dumps(request).encode(), self.path)
                return sock.recv(MAX_DATAGRAM)
            except TimeoutError:
                raise OSError(f"no answer within {self.timeout:g} s") from None
            finally:
                os.unlink(reply_path)

    def _call_fifo(self, request: dict[str, Any]) -> bytes:
        # README.jsonrpcs 7.2: reply_name names a FIFO in fifo_reply_dir; it
        # must not contain '.', '/' or '\'. Open it for reading first.
        name = f"sipstatus_rpc_{os.getpid()}_{secrets.token_hex(4)}"
        reply_path = os.path.join(self.reply_dir, name)
        os.mkfifo(reply_path, 0o600)
        try:
            fd = os.open(reply_path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                with open(self.path, "w") as fifo:
                    fifo.write(json.dumps(dict(request, reply_name=name)) + "\n")
                return _read_fifo(fd, self.timeout)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(reply_path)


def _read_fifo(fd: int, timeout: float) -> bytes:
    data = b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            if data:
                return data
            raise OSError(f"no answer within {timeout:g} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            if data:
                return data
            continue  # no writer yet: select returns at once on EOF, wait for one
        data += chunk
        with contextlib.suppress(ValueError):
            json.loads(data)
            return data


# -- dispatcher destinations --------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """One dispatcher destination, as `dispatcher.list` reports it."""

    group: int
    uri: str
    flags: str  # e.g. "AX": state letter (A, I, T, D) and probing letter (P, X)
    priority: int
    attrs: Mapping[str, str]

    @property
    def node(self) -> str:
        """The sipstatus node this destination is: its `duid`, else its host."""
        return self.attrs.get("duid") or uri_host(self.uri)

    @property
    def active(self) -> bool:
        return self.flags[:1] == "A"


def parse_dispatcher_list(result: Mapping[str, Any]) -> list[Destination]:
    """The destinations in a `dispatcher.list` RPC result."""
    destinations = []
    for record in result.get("RECORDS") or []:
        group = record.get("SET", {})
        for target in group.get("TARGETS") or []:
            dest = target.get("DEST", {})
            body = (dest.get("ATTRS") or {}).get("BODY") or ""
            destinations.append(Destination(
                group=int(group["ID"]), uri=dest["URI"], flags=dest.get("FLAGS", ""),
                priority=int(dest.get("PRIORITY", 0)), attrs=parse_attrs(body)))
    return destinations


def agents_from_destinations(destinations: Iterable[Destination],
                             port: int = DEFAULT_AGENT_PORT) -> list[Agent]:
    """The agents of a Kamailio dispatcher group: node = the destination's
    `duid` (else its host), agent = sip:<destination host>:<port>."""
    agents: dict[str, Agent] = {}
    for destination in destinations:
        uri = parse_agent_uri(destination.uri)
        host = uri.host if ":" not in uri.host or uri.host.startswith("[") else f"[{uri.host}]"
        agent = Agent(destination.node, f"sip:{host}:{port}")
        if agents.setdefault(agent.node, agent) != agent:
            raise ValueError(f"dispatcher destinations {agents[agent.node].uri} and {destination.uri} "
                             f"both name node {agent.node!r}: give each a distinct duid")
    return list(agents.values())


# -- the dispatcher list file ---------------------------------------------------


@dataclass
class _ListLine:
    text: str
    group: int | None = None
    uri: str = ""
    flags: int = 0
    priority: int = 0
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def node(self) -> str:
        return self.attrs.get("duid") or uri_host(self.uri)

    def render(self) -> str:
        if self.group is None:
            return self.text
        attrs = ";".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.group} {self.uri} {self.flags} {self.priority} {attrs}".rstrip()


def read_list_file(text: str) -> list[_ListLine]:
    lines = []
    for raw in text.splitlines():
        fields = raw.split()
        if not fields or raw.lstrip().startswith("#"):
            lines.append(_ListLine(raw))
            continue
        try:
            group = int(fields[0])
            flags = int(fields[2]) if len(fields) > 2 else 0
            priority = int(fields[3]) if len(fields) > 3 else 0
        except ValueError:
            raise ValueError(f"dispatcher list line {raw!r}: set id, flags and priority must be integers") from None
        attrs = parse_attrs(" ".join(fields[4:])) if len(fields) > 4 else {}
        lines.append(_ListLine(raw, group, fields[1], flags, priority, attrs))
    return lines


def rewrite_list_file(text: str, weights: Mapping[str, int], group: int) -> str:
    """The list file `text` with each node of `group` given its weight as
    `rweight` and, when the weight is 0, the inactive flag (a reload resets
    states to the file, so the file must carry them). Other lines, comments
    and attributes are kept as they are."""
    out = []
    for line in read_list_file(text):
        if line.group == group and line.node in weights:
            weight = weights[line.node]
            if weight > 0:
                line.attrs["rweight"] = str(weight)
                line.flags &= ~FLAG_INACTIVE
            else:
                line.flags |= FLAG_INACTIVE
        out.append(line.render())
    return "\n".join(out) + "\n"


# -- pushing ---------------------------------------------------------------------


class KamailioSink:
    """Pushes a pool's weights into Kamailio: htable, dispatcher states, and
    (with `list_file`) the rate-limited list-file rewrite and reload.

    `push(weights, now)` sends only what changed since the last push;
    `flush(now)` performs a reload that was held back by the rate limit and
    is called from a timer at `next_flush()`.
    """

    def __init__(self, rpc: JsonRpcClient, *, group: int = 1, htable: str | None = "sipstatus",
                 list_file: str | None = None, reload_interval: float = DISPATCHER_RELOAD_DELTA) -> None:
        self.rpc, self.group, self.htable = rpc, group, htable
        self.list_file = Path(list_file) if list_file else None
        self.reload_interval = reload_interval
        self._pushed: dict[str, int] = {}
        self._last_reload = float("-inf")
        self._reload_pending = False

    def destinations(self) -> list[Destination]:
        """The destinations Kamailio has in this sink's group."""
        return [d for d in parse_dispatcher_list(self.rpc.call("dispatcher.list")) if d.group == self.group]

    def push(self, weights: Mapping[str, int], now: float) -> None:
        changed = {n: w for n, w in weights.items() if self._pushed.get(n) != w}
        for node, weight in changed.items():
            if self.htable:
                self.rpc.call("htable.seti", self.htable, node, weight)
            was = self._pushed.get(node)
            if was is None or (was > 0) != (weight > 0):
                self.rpc.call("dispatcher.set_duid_state", "a" if weight > 0 else "i", self.group, node)
            self._pushed[node] = weight
        if self.list_file is not None and changed:
            text = self.list_file.read_text()
            new = rewrite_list_file(text, self._pushed, self.group)
            if new != text:
                _atomic_write(self.list_file, new)
                self._reload_pending = True
            self.flush(now)

    def next_flush(self) -> float | None:
        return self._last_reload + self.reload_interval if self._reload_pending else None

    def flush(self, now: float) -> bool:
        """Reload the dispatcher if a rewrite is waiting and the rate limit allows."""
        if not self._reload_pending or now < self._last_reload + self.reload_interval:
            return False
        self._last_reload = now
        try:
            self.rpc.call("dispatcher.reload")
        except RpcError as err:
            # Kamailio counts its own start-up load as a reload: a reload within
            # reload_delta of it (or of an operator's) is refused. Try again later.
            if "Ongoing reload" in str(err):
                return False
            raise
        self._reload_pending = False
        return True

    def forget(self, nodes: Iterable[str]) -> None:
        for node in nodes:
            self._pushed.pop(node, None)


class KamailioRoomSink(RoomSink):
    """Pushes room key -> node (spec/load-affinity.md 7.2) into a Kamailio
    htable: `htable.sets TABLE KEY NODE` for a new or moved room,
    `htable.delete TABLE KEY` for one that ended (or whose node no longer
    takes calls). The script reads `$sht(TABLE=>KEY)`, KEY being
    `$(var(room){s.sha256}{s.substr,0,16})`."""

    def __init__(self, rpc: JsonRpcClient, htable: str = "affinity") -> None:
        super().__init__()
        self.rpc, self.htable = rpc, htable

    def store(self, key: str, node: str) -> None:
        self.rpc.call("htable.sets", self.htable, key, node)

    def remove(self, key: str) -> None:
        self.rpc.call("htable.delete", self.htable, key)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    shutil.copymode(path, tmp)
    os.replace(tmp, path)
