"""Run the real Kamailio and SIPp for the example-configuration tests.

- `Kamailio` starts `kamailio -DD -E` with one of the example configurations
  in packaging/examples/kamailio/, on 127.0.0.1 and a free port given with
  `-A` defines (so the file that runs is exactly the example), waits until it
  answers an OPTIONS, and stops its whole process group afterwards.
- `SippNode` is a SIPp UAS standing for one Asterisk node (it answers
  INVITEs with 200 OK and names itself in X-Node).
- `place_calls` runs a SIPp UAC through the proxy and counts where the calls
  went (the UAC logs the X-Node of each answer).
- `SipClient` sends PUBLISH, NOTIFY and OPTIONS built by hand over UDP and
  returns the final response; `Publisher` keeps the entity tag and the
  agent's instance and seq, like the agent's publisher does.
- `Caller` is `place_calls` in the background, with SIPp's own statistics.
- `stream_reports` PUBLISHes paced reports for several nodes at once (far
  above an agent's ceiling of 10/s), as a stress source; `simulate_agents`
  runs many publishing agents in one process with the library's Publisher,
  each from its own loopback address.
- `Agent` runs a real `sipstatus-agent run` process; `FakeAmis` serves the
  fake Asterisk managers (tests/support/fake_ami.py) such agents read; `Sidecar` runs
  a real `sipstatus sidecar` that follows agents and pushes into Kamailio.

Everything binds 127.0.0.1 only. Every process is started in its own session
and killed as a group, so no Kamailio or SIPp outlives a test.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil
import pytest

from sipstatus.codec import encode
from sipstatus.net import Endpoint, SipService
from sipstatus.sip.publication import PublicationFailed, Published
from sipstatus.sip.publication import Publisher as LibraryPublisher
from sipstatus.sip.transaction import Destination
from sipstatus.status import LoadStatus, State
from tests.support import ROOT, SIPP_SCENARIOS
from tests.support.fake_ami import FakeAmi, Scenario
from tests.support.ports import free_port

EXAMPLES = ROOT / "packaging" / "examples" / "kamailio"
SCENARIOS = SIPP_SCENARIOS / "kamailio"
HOST = "127.0.0.1"
MEDIA_TYPE = "application/load-status+json"
#: Seconds between dispatcher's OPTIONS probes in the tests' Kamailios.
PING_INTERVAL = 2


def have_tools(*modules: str) -> bool:
    """kamailio, kamcmd, sipp and ss are installed, and these Kamailio modules."""
    if not all(shutil.which(tool) for tool in ("kamailio", "sipp", "kamcmd", "ss")):
        return False
    return all(any(Path("/usr/lib").glob(f"*/kamailio/modules/{m}.so")) for m in modules)


#: The Debian package of each Kamailio module the examples load beyond the core.
MODULE_PACKAGES = {"jansson": "kamailio-extra-modules", "app_python3": "kamailio-python3-modules"}


def needs_kamailio(*modules: str) -> list[pytest.MarkDecorator]:
    """The marks of a test module that runs a real Kamailio loading `modules`:
    `interop`, and a skip naming the Debian packages when one is missing."""
    packages = ["kamailio", *(MODULE_PACKAGES[m] for m in modules), "sip-tester", "iproute2"]
    return [pytest.mark.interop,
            pytest.mark.skipif(not have_tools(*modules), reason=f"needs Debian packages {', '.join(packages)}")]


def _bound_by(port: int, pid: int) -> bool:
    """True when process `pid` has a UDP socket bound to 127.0.0.1:`port`."""
    out = subprocess.run(["ss", "-Hlunp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return f"pid={pid}," in out


def _stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 5.0) -> None:
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


# -- SIP over UDP, by hand ---------------------------------------------------


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, list[str]]
    raw: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


def parse_response(data: bytes) -> Response:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    _, status, *reason = lines[0].split(" ", 2)
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Response(int(status), reason[0] if reason else "", headers, data)


class SipClient:
    """A UDP socket on 127.0.0.1 that sends requests to one proxy and waits
    for their final responses (no retransmission: loopback loses nothing)."""

    def __init__(self, proxy_port: int) -> None:
        self.proxy = (HOST, proxy_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self._cseq = 0

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        method: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        call_id: str | None = None,
        from_tag: str | None = None,
        to_tag: str | None = None,
        ruri: str | None = None,
    ) -> tuple[bytes, Response]:
        """Send one request; return its bytes and the final response."""
        data = self.build(method, headers, body, call_id=call_id, from_tag=from_tag, to_tag=to_tag, ruri=ruri)
        return data, self.send(data)

    def build(
        self,
        method: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        call_id: str | None = None,
        from_tag: str | None = None,
        to_tag: str | None = None,
        ruri: str | None = None,
    ) -> bytes:
        self._cseq += 1
        host, port = self.proxy
        ruri = ruri or f"sip:{host}:{port}"
        to = f"<sip:load-status@{host}:{port}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP {HOST}:{self.port};branch=z9hG4bK{secrets.token_hex(8)};rport",
            "Max-Forwards: 70",
            f"From: <sip:agent@{HOST}:{self.port}>;tag={from_tag or secrets.token_hex(4)}",
            f"To: {to}",
            f"Call-ID: {call_id or secrets.token_hex(8) + '@' + HOST}",
            f"CSeq: {self._cseq} {method}",
        ]
        items = headers.items() if isinstance(headers, Mapping) else headers
        lines += [f"{name}: {value}" for name, value in items]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def send(self, data: bytes, timeout: float = 5.0) -> Response:
        self.sock.sendto(data, self.proxy)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no final response from the proxy")
            self.sock.settimeout(left)
            reply = parse_response(self.sock.recv(65535))
            if reply.status >= 200:
                return reply

    def options(self, timeout: float = 0.2) -> Response:
        return self.send(self.build("OPTIONS"), timeout)


def body(
    node: str,
    weight: int | None = None,
    *,
    state: State = State.ACTIVE,
    instance: str = "test1",
    seq: int = 1,
    validity: int = 60,
    limit: int | None = None,
) -> bytes:
    """A valid load-status body from the library's own encoder: an active
    node with `weight` (capacity weight/100), or another state (weight 0)."""
    from sipstatus.status import Asterisk

    capacity = 0.0 if weight is None else weight / 100
    asterisk = Asterisk(limit=limit) if limit is not None else None
    return encode(LoadStatus(node, instance, seq, validity, state, capacity, asterisk=asterisk))


@dataclass
class Publisher:
    """One node's publication at the proxy, as the agent keeps it: the entity
    tag of the last 200, and its own instance and seq."""

    client: SipClient
    node: str
    instance: str = field(default_factory=lambda: secrets.token_hex(4))
    seq: int = 0
    etag: str | None = None
    expires: int = 600

    def publish(self, payload: bytes | None, *, expires: int | None = None, if_match: str | None = None) -> Response:
        headers = [("Event", "load-status"), ("Expires", str(self.expires if expires is None else expires))]
        tag = if_match if if_match is not None else self.etag
        if tag is not None:
            headers.append(("SIP-If-Match", tag))
        if payload:
            headers.append(("Content-Type", MEDIA_TYPE))
        _, reply = self.client.request("PUBLISH", headers, payload or b"")
        if reply.status == 200:
            self.etag = reply.header("SIP-ETag")
        return reply

    def report(self, weight: int | None = None, *, state: State = State.ACTIVE, validity: int = 60, limit: int | None = None) -> Response:
        self.seq += 1
        return self.publish(body(self.node, weight, state=state, instance=self.instance, seq=self.seq, validity=validity, limit=limit))


# -- a stream of reports ------------------------------------------------------


@dataclass
class StreamStats:
    """What `stream_reports` sent and got back, per node."""

    sent: Counter[str] = field(default_factory=Counter)
    answered: dict[str, Counter[int]] = field(default_factory=dict)
    timeouts: Counter[str] = field(default_factory=Counter)
    retransmissions: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    #: The weight (0 unless active) of each node's last report answered 200.
    last_weight: dict[str, int] = field(default_factory=dict)
    #: (node, start, end) of the periods a node reported `draining`, epoch seconds.
    drains: list[tuple[str, float, float]] = field(default_factory=list)
    duration: float = 0.0

    def ok(self, node: str) -> int:
        return self.answered.get(node, Counter())[200]

    def latency(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


class _ReportSocket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[Response] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = parse_response(data)
        if reply.status >= 200:
            self.replies.put_nowait(reply)


Schedule = Callable[[str, int, float], tuple[State, int]]


async def stream_reports(proxy_port: int, nodes: Sequence[str], *, rate: float, duration: float,
                         schedule: Schedule, validity: int = 3, timeout: float = 0.5,
                         retries: int = 3) -> StreamStats:
    """PUBLISH `rate` reports per second for each of `nodes` for `duration`
    seconds, each from its own UDP socket, as an agent would but faster:
    one PUBLISH at a time per node (RFC 3903 4.1), a modification with
    SIP-If-Match after the first, a fresh seq each time. `schedule(node, k,
    elapsed)` gives the state and weight of the k-th report. A PUBLISH
    unanswered after `timeout` s is sent again (the same bytes: Kamailio's
    transaction answers a retransmission with the same reply). Reports are
    paced to the schedule; a node that falls behind sends at once until it
    has caught up."""
    loop = asyncio.get_running_loop()
    stats = StreamStats()
    start = time.time()
    t0 = loop.time()

    async def one(node: str) -> None:
        transport, proto = await loop.create_datagram_endpoint(_ReportSocket, local_addr=(HOST, 0))
        port = transport.get_extra_info("sockname")[1]
        instance = secrets.token_hex(4)
        tag = secrets.token_hex(4)
        call_id = f"{secrets.token_hex(8)}@{HOST}"
        etag: str | None = None
        answered = stats.answered.setdefault(node, Counter())
        drain_from: float | None = None
        k = 0
        try:
            while True:
                due = t0 + k / rate
                now = loop.time()
                if due - t0 >= duration:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
                state, weight = schedule(node, k, loop.time() - t0)
                if state is State.DRAINING and drain_from is None:
                    drain_from = time.time()
                elif state is not State.DRAINING and drain_from is not None:
                    stats.drains.append((node, drain_from, time.time()))
                    drain_from = None
                k += 1
                payload = body(node, weight if state is State.ACTIVE else None, state=state, instance=instance,
                               seq=k, validity=validity)
                headers = [f"PUBLISH sip:load-status@{HOST}:{proxy_port} SIP/2.0",
                           f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport",
                           "Max-Forwards: 70", f"From: <sip:{node}@{HOST}>;tag={tag}",
                           f"To: <sip:{node}@{HOST}>", f"Call-ID: {call_id}", f"CSeq: {k} PUBLISH",
                           "Event: load-status", "Expires: 600", f"Content-Type: {MEDIA_TYPE}"]
                if etag is not None:
                    headers.append(f"SIP-If-Match: {etag}")
                headers.append(f"Content-Length: {len(payload)}")
                data = ("\r\n".join(headers) + "\r\n\r\n").encode() + payload
                sent_at = loop.time()
                reply = None
                for attempt in range(retries + 1):
                    if attempt:
                        stats.retransmissions[node] += 1
                    transport.sendto(data, (HOST, proxy_port))
                    if attempt == 0:
                        stats.sent[node] += 1
                    try:
                        while True:
                            reply = await asyncio.wait_for(proto.replies.get(), timeout)
                            if reply.header("cseq") == f"{k} PUBLISH":
                                break
                        break
                    except TimeoutError:
                        reply = None
                if reply is None:
                    stats.timeouts[node] += 1
                    etag = None  # the outcome is unknown: start a new publication
                    continue
                stats.latencies.append(loop.time() - sent_at)
                answered[reply.status] += 1
                if reply.status == 200:
                    etag = reply.header("sip-etag")
                    stats.last_weight[node] = weight if state is State.ACTIVE else 0
                elif reply.status == 412:
                    etag = None
        finally:
            if drain_from is not None:
                stats.drains.append((node, drain_from, time.time()))
            transport.close()

    await asyncio.gather(*(one(node) for node in nodes))
    stats.duration = time.time() - start
    return stats


@dataclass
class SimulationStats:
    """What `simulate_agents` saw: reports answered 200 (`Published`),
    failed PUBLISHes, and each node's weight in its last answered report."""

    published: int = 0
    failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    final: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    #: Seconds from the final weights' PUBLISHes to the last one answered.
    settle: float = 0.0


async def simulate_agents(proxy_port: int, names: Sequence[str], *, duration: float, change_every: float,
                          final: Mapping[str, int], validity: int = 6,
                          hosts: Sequence[str] | None = None) -> SimulationStats:
    """Agents for `names`, each a `sipstatus.sip.publication.Publisher` in its
    own `SipService` bound to its own address (127.0.0.10 to .209, then
    127.0.1.10 ..., unless `hosts`), publishing to the proxy as the agent does: a fresh body per
    PUBLISH (`produce`), a heartbeat every validity / 3, at most 10 PUBLISH
    per second (the spec's ceiling). Every `change_every` seconds for
    `duration` seconds each node's weight moves by a significant step (spec
    8.3: 5 or more) and is published; then every node publishes its `final`
    weight, and the call returns once each has been answered."""
    loop = asyncio.get_running_loop()
    stats = SimulationStats()
    target = f"sip:load-status@{HOST}:{proxy_port}"
    destination = Destination("UDP", HOST, proxy_port)
    weights = {name: 50 for name in names}
    sent_weight: dict[str, int] = {}
    services: list[tuple[SipService, LibraryPublisher]] = []

    def on_event(event: object) -> None:
        if isinstance(event, Published):
            stats.published += 1
        elif isinstance(event, PublicationFailed):
            stats.failed += 1
            stats.failures[f"{event.status} {event.reason}"] += 1

    def producer(name: str) -> Callable[[float], bytes]:
        instance = secrets.token_hex(4)
        seq = 0

        def produce(now: float) -> bytes:
            nonlocal seq
            seq += 1
            sent_weight[name] = weights[name]
            return body(name, weights[name], instance=instance, seq=seq, validity=validity)

        return produce

    hosts = list(hosts) if hosts is not None else [f"127.0.{i // 200}.{10 + i % 200}" for i in range(len(names))]
    started = time.monotonic()
    try:
        for name, host in zip(names, hosts, strict=True):
            publisher = LibraryPublisher(target, "load-status", MEDIA_TYPE, f"sip:{name}@{host}",
                                         destination=destination, produce=producer(name),
                                         heartbeat=validity / 3, min_interval=0.1, key=name)
            service = SipService(Endpoint([publisher], allow_events=["load-status"]), on_event=on_event)
            await service.listen("UDP", host, 0)
            services.append((service, publisher))
            service.submit(publisher, publisher.publish(None, service.now()))
        rng = secrets.SystemRandom()
        end = loop.time() + duration
        while loop.time() < end:
            await asyncio.sleep(change_every)
            for service, publisher in services:
                name = publisher.key
                assert isinstance(name, str)
                # A significant step (5 to 30) up or down, reflected at 1 and 100.
                step = rng.choice((-1, 1)) * rng.randint(5, 30)
                moved = weights[name] + step
                weights[name] = moved if 1 <= moved <= 100 else weights[name] - step
                service.submit(publisher, publisher.publish(None, service.now()))
        weights.update(final)
        settle_from = loop.time()
        for service, publisher in services:
            service.submit(publisher, publisher.publish(None, service.now()))
        deadline = loop.time() + 30
        while any(p.pending is not None or p.dirty or p.queued is not None for _, p in services):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.01)
        stats.settle = loop.time() - settle_from
        stats.final = {name: sent_weight[name] for name in names if name in sent_weight}
    finally:
        stats.elapsed = time.monotonic() - started
        for service, _ in services:
            await service.close()
    return stats


# -- Kamailio ----------------------------------------------------------------


class Kamailio:
    """A Kamailio started from an example configuration with -A defines."""

    def __init__(
        self,
        config: Path,
        workdir: Path,
        defines: Mapping[str, str | int | None] = {},
        env: Mapping[str, str] = {},
    ) -> None:
        self.config = config
        self.env = {**os.environ, **env}
        self.workdir = workdir
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "kamailio.log"
        self.ctl = f"unix:{workdir}/kamailio_ctl"
        self.defines: dict[str, str | int | None] = {
            "LISTEN": f"udp:{HOST}:{self.port}",
            "RUN_DIR": f'"{workdir}"',
            "CHILDREN": 4,
            # Probing on, as in production: every node must answer OPTIONS
            # (a pool of `Destinationless` members turns it off).
            "DS_PING_INTERVAL": PING_INTERVAL,
            # "{port}" in a value stands for the SIP port chosen here.
            **{name: value.replace("{port}", str(self.port)) if isinstance(value, str) else value
               for name, value in defines.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = ["kamailio", "-DD", "-E", "-w", str(self.workdir), "-m", "256", "-f", str(self.config)]
        for name, value in self.defines.items():
            cmd += ["-A", name if value is None else f"{name}={value}"]
        return cmd

    def start(self, timeout: float = 10.0) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, env=self.env, start_new_session=True,
            )
        client = SipClient(self.port)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"kamailio exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.options().status == 200:
                        return
                except (TimeoutError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kamailio did not answer OPTIONS within {timeout} s:\n{self.log_tail()}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def rpc(self, *args: str) -> str:
        """A kamcmd command against this Kamailio's ctl socket."""
        done = subprocess.run(["kamcmd", "-s", self.ctl, *args], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"kamcmd {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def htable(self, table: str) -> dict[str, str]:
        """The items of an htable (`kamcmd htable.dump`), name -> value as text."""
        return parse_htable_dump(self.rpc("htable.dump", table))

    def processes(self) -> list[psutil.Process]:
        """Kamailio's main process and every process it forked."""
        assert self.proc is not None
        main = psutil.Process(self.proc.pid)
        return [main, *main.children(recursive=True)]

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by all of Kamailio's processes."""
        total = 0.0
        for process in self.processes():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def alive(self) -> bool:
        """Running, and answering an OPTIONS."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        client = SipClient(self.port)
        try:
            return client.options(2.0).status == 200
        except (TimeoutError, OSError):
            return False
        finally:
            client.close()


def parse_htable_dump(text: str) -> dict[str, str]:
    """name -> value from kamcmd's rendering of `htable.dump` (each item is a
    block with `name: ...` and `value: ...` lines)."""
    items: dict[str, str] = {}
    name: str | None = None
    for line in text.splitlines():
        key, sep, value = line.strip().partition(": ")
        if not sep:
            continue
        if key == "name":
            name = value
        elif key == "value" and name is not None:
            items[name] = value
            name = None
    return items


class PoolNode(Protocol):
    """A destination of the dispatcher list: a SippNode, or any name and port."""

    name: str
    port: int
    rweight: int


@dataclass
class Destinationless:
    """A pool member with nothing behind its port (tests that route no calls)."""

    name: str
    port: int
    rweight: int = 1


def start_example(
    config: Path,
    workdir: Path,
    nodes: Iterable[PoolNode],
    defines: Mapping[str, str | int | None] = {},
    env: Mapping[str, str] = {},
    attrs: Mapping[str, str] = {},
) -> Kamailio:
    """A started Kamailio running `config` in a new folder under `workdir`,
    with a dispatcher list of `nodes` (`attrs`: more attributes by node)."""
    run = workdir / f"kam-{secrets.token_hex(3)}"
    run.mkdir()
    ds = dispatcher_list(run / "dispatcher.list", nodes, attrs=attrs)
    kam = Kamailio(config, run, {"DS_LIST": f'"{ds}"', **defines}, env)
    try:
        kam.start()
    except BaseException:
        kam.stop()
        raise
    return kam


#: Debian's own configuration, from the kamailio package.
STOCK_CONFIG = Path("/etc/kamailio/kamailio.cfg")
#: What an operator adds to it to use packaging/examples/kamailio/native/
#: sipstatus.cfg (the snippet's "Use" section), as (anchor, text, where):
#: the text goes before or after the first line matching the anchor, which
#: in request_route is searched after `request_route {`.
STOCK_EDITS = (
    (r'^modparam\(', 'include_file "{snippet}"\n', "before"),
    (r'^\s*route\(REQINIT\);', '\troute(SIPSTATUS_REPORTS);\n', "after"),
    (r'^\s*route\(SIPOUT\);', '\tif (is_method("INVITE")) {\n\t\troute(SIPSTATUS_DISPATCH);\n'
                               '\t\troute(RELAY);\n\t}\n', "before"),
)


def stock_config(folder: Path, stock: Path = STOCK_CONFIG) -> Path:
    """Debian's stock kamailio.cfg with the native snippet dropped in (three
    edits, STOCK_EDITS), written to `folder`, with the kamailio-local.cfg the
    stock file imports: `listen=LISTEN` and `run_dir=RUN_DIR` (the -A
    defines `Kamailio` passes). Raises when a line to edit is not there."""
    import re

    folder.mkdir(parents=True, exist_ok=True)
    lines = stock.read_text().splitlines(keepends=True)
    body_from = next(i for i, line in enumerate(lines) if line.startswith("request_route"))
    for pattern, text, where in STOCK_EDITS:
        start = body_from if "route(" in pattern else 0
        at = next((i for i in range(start, len(lines)) if re.match(pattern, lines[i])), None)
        if at is None:
            raise ValueError(f"{stock}: no line matching {pattern!r} to add {text.strip()!r} to")
        lines.insert(at if where == "before" else at + 1, text.replace("{snippet}", str(EXAMPLES / "native" / "sipstatus.cfg")))
        if at < body_from:
            body_from += 1
    path = folder / "kamailio.cfg"
    path.write_text("".join(lines))
    (folder / "kamailio-local.cfg").write_text("listen=LISTEN\nrun_dir=RUN_DIR\n")
    return path


def dispatcher_list(path: Path, nodes: Iterable[PoolNode], set_id: int = 1, attrs: Mapping[str, str] = {}) -> Path:
    """A dispatcher list with one destination per node (duid = its name),
    with `attrs[node]` ("name=value;...") added to its attributes."""
    lines = [f"{set_id} sip:{HOST}:{n.port} 0 0 duid={n.name};rweight={n.rweight}"
             + (f";{attrs[n.name]}" if n.name in attrs else "") for n in nodes]
    path.write_text("\n".join(lines) + "\n")
    return path


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
        self.scenario = scenario or SCENARIOS / "uas.xml"
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
        while not _bound_by(self.port, self.proc.pid):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SIPp UAS {self.name} did not bind {HOST}:{self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, signal.SIGKILL)

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
            "sipp", "-sf", str(SCENARIOS / "uac.xml"), "-s", "load",
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
        _stop_group(self.proc, signal.SIGKILL)
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
            _stop_group(self.proc, signal.SIGKILL)


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


# -- agents ------------------------------------------------------------------


class FakeAmis:
    """Fake Asterisk managers (tests/support/fake_ami.py, replaying real Asterisk 20
    transcripts) for agents that run as processes: the servers live in one
    background thread with its own event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-ami", daemon=True)
        self.thread.start()
        self.servers: list[FakeAmi] = []

    def serve(self, scenario: Scenario) -> int:
        """A new server playing `scenario`; returns its TCP port on 127.0.0.1."""
        async def open_server() -> FakeAmi:
            return await FakeAmi(scenario).__aenter__()

        server = asyncio.run_coroutine_threadsafe(open_server(), self.loop).result(10)
        self.servers.append(server)
        return server.port

    def close(self) -> None:
        for server in self.servers:
            asyncio.run_coroutine_threadsafe(server.close(), self.loop).result(10)
        self.servers.clear()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


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
        self.config_path.write_text(
            "[agent]\n"
            f'node = "{node}"\nvalidity = {validity}\ninterval = {interval}\nsample_gap = 0.2\n'
            "[collectors]\n"
            f"enabled = {json.dumps(list(collectors))}\n"
            "[collectors.asterisk]\n"
            f'port = {ami_port}\nsecret = "secret"\nmax_calls = {max_calls}\n'
            "[collectors.probe]\n"
            f'target = "{probe}"\ninterval = 0.5\ntimeout = 2.0\nwindow = 5.0\n'
            "[scoring]\n"
            "unknown_capacity = 1.0\n"
            "[notifier]\n"
            f'listen = ["udp:{HOST}:{self.port}"]\ntrust = ["127.0.0.0/8"]\nmax_rate = 10.0\n'
            "[publisher]\n"
            "max_rate = 10.0\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """Where this agent's notifier takes SUBSCRIBEs."""
        return f"sip:{HOST}:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "agent", "run", "--config", str(self.config_path), "--control", self.control]
        for target in self.publish:
            cmd += ["--publish", target]
        return cmd

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT, start_new_session=True)
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
        done = subprocess.run([sys.executable, "-m", "agent", command, "--control", self.control, *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=30)
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
            _stop_group(self.proc)

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
            _stop_group(self.proc)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


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
