"""Driving the real `sipstatus-agent run` process from asyncio tests and benchmarks.

- `AgentProcess`: the agent as a subprocess (`sys.executable -m agent run`,
  cwd = the repository), with its configuration written to a TOML file, its
  log read line by line (`wait_log`), its control socket, and its CPU and
  memory through psutil.
- `Watcher`: a minimal UDP subscriber built on the SIP core's parser. It
  records every message it receives with the time of arrival, answers each
  NOTIFY with a chosen status (or not at all), and can send the SUBSCRIBEs a
  proxy sends, or broken ones. Unlike the library's Subscriber it hides
  nothing: tests read the exact headers and bodies.
- `OptionsResponder`: the far end of the agent's SIP probe; `answering =
  False` makes it fall silent (a hung Asterisk).
- Events for the fake AMI server: a Newchannel and its Hangup, byte for byte
  from the recorded Asterisk transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from sipstatus import codec
from sipstatus.net.endpoint import Endpoint
from sipstatus.net.service import SipService
from sipstatus.sip import Request, Response, SipError, parse_message
from sipstatus.sip.message import make_response
from sipstatus.sip.subscription import Subscriber, SubscriberConfig, SubscriberPool
from sipstatus.sip.transaction import Destination
from sipstatus.status import LoadStatus
from tests.support import HOST, ROOT
from tests.support.fake_ami import FakeAmi, Scenario, Transcript
from tests.support.kamailio import Kamailio
from tests.support.ports import free_port
from tests.support.processes import stop_group

#: Where `python -m agent` runs from (bench/bench_attacks.py points it at
#: another checkout).
REPO = ROOT
TYPE = "application/load-status+json"


# -- configuration ----------------------------------------------------------------


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml(sections: dict[str, dict[str, object]]) -> str:
    """`{"agent": {"node": "n1"}, "collectors.asterisk": {...}}` as TOML."""
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in keys.items())
        lines.append("")
    return "\n".join(lines)


def agent_config(ami_port: int | None, *, probe_port: int | None = None, **overrides: dict) -> dict:
    """A configuration that makes the agent's state depend only on what a test
    controls: AMI (the fake server; CoreMaxCalls gives the limit) and, if
    `probe_port` is given, the SIP probe. The host and network collectors are
    off, so CPU noise never makes a change."""
    enabled = []
    sections: dict[str, dict[str, object]] = {
        "agent": {"node": "ast-test", "log_level": "debug"},
        "collectors": {},
    }
    if ami_port is not None:
        enabled.append("asterisk")
        sections["collectors.asterisk"] = {
            "port": ami_port, "username": "agent", "secret": "secret", "auth": "plain",
            "reconcile_interval": 3600.0, "backoff_initial": 0.1, "backoff_max": 1.0,
        }
    if probe_port is not None:
        enabled.append("probe")
        sections["collectors.probe"] = {"target": f"sip:127.0.0.1:{probe_port}",
                                        "interval": 0.2, "timeout": 0.3, "window": 5.0}
    sections["collectors"]["enabled"] = enabled
    for name, keys in overrides.items():
        sections.setdefault(name.replace("__", "."), {}).update(keys)
    return sections


# -- the agent process ---------------------------------------------------------------


def agent_command(*args: str) -> list[str]:
    """`sipstatus-agent ARGS` as every test runs it: `python -m agent` with
    this interpreter (run it with cwd=REPO, so that it is this checkout's)."""
    return [sys.executable, "-m", "agent", *args]


class AgentProcess:
    """`async with AgentProcess(tmp, config, "--listen", "udp:127.0.0.1:5070") as agent:`

    Starts the agent, waits until its control socket answers, and on exit
    stops it (SIGTERM, then SIGKILL if it hangs) whatever happened.
    """

    def __init__(self, tmp: Path, config: dict, *args: str, name: str = "agent",
                 wrap: list[str] | None = None) -> None:
        self.tmp = Path(tmp)
        self.config_path = self.tmp / f"{name}.toml"
        self.config_path.write_text(toml(config))
        self.control = str(self.tmp / f"{name}-control" / "control")
        self.args = args
        self.wrap = wrap or []  # e.g. ["ip", "netns", "exec", "ns1"]
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.times: list[float] = []  # loop time each line was read
        self._line = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AgentProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 30.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.wrap, *agent_command("run", "--config", str(self.config_path), "--control", self.control,
                                      *self.args), cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.ensure_future(self._read_log())
        # The control socket answers once start() is through (SIP bound, first status).
        try:
            await self.wait_for_control(timeout)
        except RuntimeError:
            await self.kill()
            raise RuntimeError("the agent did not start:\n" + self.log()) from None

    async def wait_for_control(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await self.command("status")
                return
            except RuntimeError:
                if loop.time() > deadline or (self.process and self.process.returncode is not None):
                    raise
                await asyncio.sleep(0.05)

    async def status(self) -> dict:
        """The running agent's status body, through `sipstatus-agent status --json`."""
        return json.loads(await self.command("status", "--json"))

    async def wait_measured(self, timeout: float = 20.0) -> dict:
        """Wait until the agent has taken its first measurement (the control
        socket answers from the start, with a `down`/`starting` placeholder)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (body := await self.status()).get("reason") == "starting":
            if loop.time() > deadline:
                raise AssertionError("the agent took no measurement within {timeout} s:\n" + self.log())
            await asyncio.sleep(0.1)
        return body

    async def _read_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            self.times.append(asyncio.get_running_loop().time())
            self._line.set()
        self._line.set()

    def log(self) -> str:
        return "\n".join(self.lines[-200:])

    def log_times(self, pattern: str) -> list[float]:
        """When each log line matching `pattern` was read (loop time)."""
        return [t for line, t in zip(self.lines, self.times, strict=False) if re.search(pattern, line)]

    def find_log(self, pattern: str, start: int = 0) -> list[str]:
        return [line for line in self.lines[start:] if re.search(pattern, line)]

    async def wait_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> str:
        """The first log line from index `start` on matching `pattern`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.find_log(pattern, start)
            if found:
                return found[0]
            left = deadline - loop.time()
            if left <= 0 or (self.process is not None and self.process.returncode is not None
                             and self._reader is not None and self._reader.done()):
                raise AssertionError(f"no log line matching {pattern!r} within {timeout} s:\n{self.log()}")
            self._line.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._line.wait(), min(left, 0.5))

    async def command(self, *args: str, timeout: float = 15.0) -> str:
        """`sipstatus-agent ARGS --control PATH` (status, drain, undrain) as a
        separate process, as an operator runs it; its stdout. RuntimeError
        when it fails."""
        process = await asyncio.create_subprocess_exec(
            *self.wrap, *agent_command(*args, "--control", self.control), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        if process.returncode != 0:
            raise RuntimeError(f"sipstatus-agent {' '.join(args)}: exit {process.returncode}: {err.decode()}")
        return out.decode()

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader, 5.0)
        return code

    async def kill(self) -> None:
        """Stop the agent if it still runs: SIGTERM, then SIGKILL after 10 s."""
        if self.process is None:
            return
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader

    def ps(self) -> psutil.Process:
        """The agent's own process (under `ip netns exec` too: that execs)."""
        return psutil.Process(self.pid)


# -- SIP peers on a UDP socket ------------------------------------------------------------


async def wait_on(arrived: asyncio.Event, predicate: Callable[[], object], timeout: float, what: str,
                  received: list[Received]) -> object:
    """Wait until `predicate()` is truthy, checking it whenever `arrived` is
    set (a message came); its value. AssertionError with the last messages."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := predicate()):
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; got: "
                                 + "; ".join(r.message.start_line() for r in received[-10:]))
        arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), left)
    return value


@dataclass
class Received:
    message: Request | Response
    at: float  # loop time of arrival
    source: tuple[str, int]

    @property
    def status(self) -> LoadStatus | None:
        """The decoded load-status body (None without a body)."""
        return codec.decode(self.message.body) if self.message.body else None

    @property
    def state(self) -> str:
        return (self.message.header("Subscription-State") or "").split(";")[0].strip()


class SipPeer(asyncio.DatagramProtocol):
    """One UDP socket that speaks SIP: it records every message `accepts`
    lets in, with its time of arrival, and answers each request with
    `reply(request)` (None: no answer)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.received: list[Received] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self._arrived = asyncio.Event()

    async def open(self) -> SipPeer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, 0))
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        try:
            message = parse_message(data)
        except SipError:
            return
        if not self.accepts(message):
            return
        self.received.append(Received(message, asyncio.get_running_loop().time(), (addr[0], addr[1])))
        if isinstance(message, Request):
            reply = self.reply(message)
            if reply is not None and self.transport is not None:
                self.transport.sendto(reply.to_bytes(), addr)
        else:
            self.response_received(message)
        self._arrived.set()

    def accepts(self, message: Request | Response) -> bool:
        return True

    def reply(self, request: Request) -> Response | None:
        return None

    def response_received(self, response: Response) -> None:
        pass

    async def wait_for(self, predicate: Callable[[], object], timeout: float, what: str = "a message") -> object:
        """Wait until `predicate()` is truthy (checked on each arrival); its value."""
        return await wait_on(self._arrived, predicate, timeout, what, self.received)


class OptionsResponder(SipPeer):
    """The probe's far end: answers every OPTIONS with 200 while `answering` is true."""

    def __init__(self) -> None:
        super().__init__()
        self.answering = True

    def accepts(self, message: Request | Response) -> bool:
        return isinstance(message, Request) and message.method == "OPTIONS"

    def reply(self, request: Request) -> Response | None:
        return make_response(request, 200) if self.answering else None


@dataclass
class Dialog:
    call_id: str
    from_tag: str
    to_tag: str | None = None
    cseq: int = 1
    user: str = "proxy"


class Watcher(SipPeer):
    """A proxy's view of the agent, over UDP, with nothing hidden.

    `answer` is the status each NOTIFY gets (None: no answer at all, as from
    a proxy that vanished), or a function of the NOTIFY giving the response.
    """

    def __init__(self, agent: tuple[str, int], host: str = "127.0.0.1",
                 answer: int | None | Callable[[Request], Response | None] = 200) -> None:
        super().__init__(host)
        self.agent = agent
        self.answer = answer
        self.dialogs: dict[str, Dialog] = {}

    # -- receiving --

    def reply(self, request: Request) -> Response | None:
        if request.method != "NOTIFY" or self.answer is None:
            return None
        return self.answer(request) if callable(self.answer) else make_response(request, self.answer)

    def response_received(self, response: Response) -> None:
        to = response.to_addr
        if response.call_id in self.dialogs and 200 <= response.status < 300 and to is not None and to.tag \
                and response.cseq and response.cseq.method == "SUBSCRIBE":
            self.dialogs[response.call_id].to_tag = to.tag

    def notifies(self, call_id: str | None = None) -> list[Received]:
        return [r for r in self.received if isinstance(r.message, Request) and r.message.method == "NOTIFY"
                and (call_id is None or r.message.call_id == call_id)]

    def responses(self, call_id: str | None = None) -> list[Received]:
        return [r for r in self.received if isinstance(r.message, Response)
                and (call_id is None or r.message.call_id == call_id)]

    async def response(self, call_id: str, timeout: float = 10.0, cseq: int | None = None) -> Response:
        def final() -> Response | None:
            for r in self.responses(call_id):
                assert isinstance(r.message, Response)
                if r.message.status >= 200 and (cseq is None or (r.message.cseq and r.message.cseq.number == cseq)):
                    return r.message
            return None
        return await self.wait_for(final, timeout, f"a final response to {call_id}")  # type: ignore[return-value]

    async def notify(self, call_id: str, count: int = 1, timeout: float = 10.0,
                     where: Callable[[Received], bool] = lambda r: True) -> Received:
        """The `count`-th NOTIFY of `call_id` matching `where`."""
        def nth() -> Received | None:
            matching = [r for r in self.notifies(call_id) if where(r)]
            return matching[count - 1] if len(matching) >= count else None
        return await self.wait_for(nth, timeout, f"NOTIFY #{count} on {call_id}")  # type: ignore[return-value]

    # -- sending --

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.agent)

    def subscribe(self, *, expires: int | None = 600, event: str = "load-status", user: str = "proxy",
                  dialog: Dialog | None = None, headers: list[tuple[str, str]] = (),
                  authorization: Request | None = None, accept: str = TYPE) -> Request:
        """Send a SUBSCRIBE (a new dialog, or in `dialog`); returns it (Call-ID
        in `.call_id`). `authorization`: send this prepared request instead."""
        if authorization is not None:
            request = authorization
        else:
            if dialog is None:
                dialog = Dialog(call_id=f"{secrets.token_hex(8)}@{self.host}", from_tag=secrets.token_hex(4), user=user)
                self.dialogs[dialog.call_id] = dialog
            else:
                dialog.cseq += 1
            host, port = self.agent
            to = f"<sip:load-status@{host}:{port}>" + (f";tag={dialog.to_tag}" if dialog.to_tag else "")
            hdrs = [
                ("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{secrets.token_hex(8)};rport"),
                ("Max-Forwards", "70"),
                ("From", f"<sip:{dialog.user}@{self.host}>;tag={dialog.from_tag}"),
                ("To", to), ("Call-ID", dialog.call_id), ("CSeq", f"{dialog.cseq} SUBSCRIBE"),
                ("Contact", f"<sip:{dialog.user}@{self.host}:{self.port}>"),
                ("Event", event), ("Accept", accept),
            ]
            if expires is not None:
                hdrs.append(("Expires", str(expires)))
            hdrs.extend(headers)
            request = Request("SUBSCRIBE", f"sip:load-status@{host}:{port}", hdrs)
        self.send(request.to_bytes())
        return request

    def dialog(self, call_id: str) -> Dialog:
        return self.dialogs[call_id]


def seqs(notifies: list[Received]) -> list[int]:
    return [r.status.seq for r in notifies if r.message.body]


class Compositor(SipPeer):
    """A UDP compositor that records every PUBLISH and answers it with
    `answer(request)` (None: no answer). The default grants 600 s with a
    new entity tag each time, as RFC 3903 requires."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.answer: Callable[[Request], Response | None] = self.grant
        self._tags = itertools.count(1)

    def grant(self, request: Request) -> Response:
        return make_response(request, 200, headers=[("SIP-ETag", f"e{next(self._tags)}"), ("Expires", "600")])

    def accepts(self, message: Request | Response) -> bool:
        return isinstance(message, Request) and message.method == "PUBLISH"

    def reply(self, request: Request) -> Response | None:
        return self.answer(request)


# -- many subscriptions with the library (benchmarks) ----------------------------------


async def subscriber_pool(agent_port: int, count: int, on_event: Callable[[object], None], *,
                          rcvbuf: int | None = None) -> tuple[SipService, SubscriberPool]:
    """`count` library Subscribers in one SubscriberPool on one UDP socket of
    127.0.0.1, subscribed to the agent at 127.0.0.1:`agent_port`; each has its
    own Event id (spec 4.2.1) so that none replaces another, and its index as
    `key`. `rcvbuf`: the socket's receive buffer (SO_RCVBUF), for bursts."""
    pool = SubscriberPool()
    service = SipService(Endpoint([pool]), on_event=on_event)
    _, local = await service.listen("UDP", "127.0.0.1", 0)
    if rcvbuf is not None:
        service._udp[socket.AF_INET].get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    config = SubscriberConfig(package="load-status", accept=codec.MEDIA_TYPE, local_uri="sip:bench@127.0.0.1",
                              contact=f"sip:bench@127.0.0.1:{local}", decode=codec.decode)
    target = Destination("UDP", "127.0.0.1", agent_port)
    for i in range(count):
        subscriber = Subscriber(f"sip:load-status@127.0.0.1:{agent_port}", config, key=i,
                                destination=target, event_id=str(i))
        service.submit(pool, pool.add(subscriber, service.now()))
        if i % 50 == 49:
            await asyncio.sleep(0)  # let answers in
    return service, pool


# -- the fake Asterisk ---------------------------------------------------------------


@dataclass
class ChannelEvents:
    """A channel's Newchannel with its first Newexten (it enters the
    dialplan: a call, as Asterisk counts calls), and its Hangup, from the
    recorded event stream: emitting them in turn makes the agent count one
    call, then none."""

    newchannel: bytes
    hangup: bytes
    names: list[str] = field(default_factory=list)

    @classmethod
    def recorded(cls, index: int = 0) -> ChannelEvents:
        events = Transcript.load("event_stream").events()
        new = [e for e in events if e.get("Event") == "Newchannel"][index]
        mine = [e for e in events if e.get("Uniqueid") == new.get("Uniqueid")]
        exten = next(e for e in mine if e.get("Event") == "Newexten")
        hangup = next(e for e in mine if e.get("Event") == "Hangup")
        return cls(new.raw + exten.raw, hangup.raw, [new.get("Channel") or ""])


def fake_asterisk(max_calls: int = 10) -> FakeAmi:
    """An idle Asterisk (no channels at login) with a call limit: one call
    is then a capacity step of 1/max_calls (a significant change, spec 8.3,
    for max_calls <= 20)."""
    return FakeAmi(Scenario(answers={"CoreShowChannels": "coreshowchannels_idle"}, max_calls=max_calls))


def rss(process: psutil.Process) -> int:
    return process.memory_info().rss


# -- an Asterisk node's agent, run from synchronous tests -------------------------


class Agent:
    """A real `sipstatus-agent run` process (`python -m agent` from the
    repository), configured as one Asterisk node's agent:

    - the asterisk collector reads a fake AMI (`ami_port`); the probe sends
      OPTIONS to `probe` (the SIPp node standing for that Asterisk);
    - the host collector is off and `scoring.unknown_capacity` is 1: the
      host's CPU would be that of the shared test machine (often at 100 %
      with other jobs), not the node's, and would decide the capacity. With
      it unknown and not capping, capacity = the free call slots
      (limit - calls) / limit, as the node's fake Asterisk reports them;
    - notifier on udp:127.0.0.1:<port> (trusting 127.0.0.0/8), and PUBLISH
      to each of `publish`; both at the spec's ceiling of 10 per second, so
      that a drain goes out at once.

    `collectors` adds others (`./dev demo` gives one node "host", so that a
    CPU hog counts against it). `start` waits until the agent answers on its
    control socket with a measured status. `ctl` runs `sipstatus-agent
    <command> --control`.
    """

    def __init__(self, node: str, workdir: Path, *, ami_port: int, probe: str, max_calls: int = 0,
                 validity: int = 3, publish: Sequence[str] = (), interval: float = 1.0,
                 collectors: Sequence[str] = ("asterisk", "probe")) -> None:
        self.node = node
        self.dir = workdir / f"agent-{node}-{secrets.token_hex(6)}"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.control = str(self.dir / "control")
        self.config_path = self.dir / "agent.toml"
        self.log_path = self.dir / "agent.log"
        self.publish = list(publish)
        self.config_path.write_text(toml({
            "agent": {"node": node, "validity": validity, "interval": interval, "sample_gap": 0.2},
            "collectors": {"enabled": list(collectors)},
            "collectors.asterisk": {"port": ami_port, "secret": "secret", "max_calls": max_calls},
            "collectors.probe": {"target": probe, "interval": 0.5, "timeout": 2.0, "window": 5.0},
            "scoring": {"unknown_capacity": 1.0},
            "notifier": {"listen": [f"udp:{HOST}:{self.port}"], "trust": ["127.0.0.0/8"], "max_rate": 10.0},
            "publisher": {"max_rate": 10.0},
        }))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """Where this agent's notifier takes SUBSCRIBEs."""
        return f"sip:{HOST}:{self.port}"

    def command(self) -> list[str]:
        cmd = agent_command("run", "--config", str(self.config_path), "--control", self.control)
        for target in self.publish:
            cmd += ["--publish", target]
        return cmd

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + timeout
        from agent.control import ControlError, request

        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.node} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if request(self.control, "status", 2.0).get("reason") != "starting":
                    return
            except ControlError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"agent {self.node} not serving within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def ctl(self, command: str, *args: str) -> str:
        """`sipstatus-agent <command> --control PATH [args]`: its output."""
        done = subprocess.run(agent_command(command, "--control", self.control, *args),
                              cwd=REPO, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"sipstatus-agent {command}: exit {done.returncode}: {done.stderr}")
        return done.stdout

    def status(self) -> dict:
        """The running agent's status body (`sipstatus-agent status --json`)."""
        return json.loads(self.ctl("status", "--json"))

    def kill(self) -> None:
        """SIGKILL: the agent says nothing more (no final NOTIFY, no removal)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Sidecar:
    """A real `sipstatus sidecar` process (`python -m sipstatus.cli`): it
    subscribes to `agents` (node -> SIP URI) and pushes their weights into
    Kamailio over its jsonrpcs datagram socket (RUN_DIR/kamailio_rpc.sock):
    `htable.seti TABLE NODE WEIGHT` (unless `htable` is "") and dispatcher
    states (`dispatcher.set_duid_state`), as packaging/examples/kamailio/
    sidecar expects. `expires` is the subscription duration it asks for."""

    def __init__(self, kam: Kamailio, agents: Mapping[str, str], workdir: Path, *, expires: int = 60,
                 policy: str = "free-slots", htable: str = "sipstatus") -> None:
        self.dir = workdir / f"sidecar-{secrets.token_hex(6)}"
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / "sidecar.log"
        self.config_path = self.dir / "sidecar.toml"
        self.config_path.write_text(
            f"[sip]\nexpires = {expires}\n"
            f'[kamailio]\nhtable = "{htable}"\ngroup = 1\n'
        )
        self.cmd = [sys.executable, "-m", "sipstatus.cli", "sidecar", "--config", str(self.config_path),
                    "--listen", f"udp:{HOST}:{free_port()}", "--policy", policy, "--log-level", "info",
                    "--kamailio-rpc", f"unix:{kam.workdir}/kamailio_rpc.sock",
                    *(f"--agent={node}={uri}" for node, uri in agents.items())]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT, start_new_session=True)
        time.sleep(0.2)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited with {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
