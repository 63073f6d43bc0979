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

Everything binds 127.0.0.1 only. Every process is started in its own session
and killed as a group, so no Kamailio or SIPp outlives a test.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sipstatus.codec import encode
from sipstatus.status import LoadStatus, State

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "packaging" / "examples" / "kamailio"
SCENARIOS = Path(__file__).resolve().parent / "sipp" / "kamailio"
HOST = "127.0.0.1"
MEDIA_TYPE = "application/load-status+json"


def have_tools(*modules: str) -> bool:
    """kamailio, kamcmd, sipp and ss are installed, and these Kamailio modules."""
    if not all(shutil.which(tool) for tool in ("kamailio", "sipp", "kamcmd", "ss")):
        return False
    return all(any(Path("/usr/lib").glob(f"*/kamailio/modules/{m}.so")) for m in modules)


# -- ports -------------------------------------------------------------------

_handed_out: set[int] = set()


def free_udp_port(span: int = 1) -> int:
    """A port p on 127.0.0.1 with p..p+span-1 free for UDP right now (SIPp's
    -mp needs p and p+2). Ports handed out before in this process are not
    handed out again, so processes started together do not collide."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            base = probe.getsockname()[1]
        ports = range(base, base + span)
        if base + span > 65535 or any(p in _handed_out for p in ports):
            continue
        if all(_udp_free(p) for p in ports):
            _handed_out.update(ports)
            return base
    raise RuntimeError("no free UDP port on 127.0.0.1")


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


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
        self.port = free_udp_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "kamailio.log"
        self.ctl = f"unix:{workdir}/kamailio_ctl"
        self.defines: dict[str, str | int | None] = {
            "LISTEN": f"udp:{HOST}:{self.port}",
            "RUN_DIR": f'"{workdir}"',
            "CHILDREN": 4,
            "DS_PING_INTERVAL": 0,
            **defines,
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


def start_example(
    config: Path,
    workdir: Path,
    nodes: Iterable[SippNode],
    defines: Mapping[str, str | int | None] = {},
    env: Mapping[str, str] = {},
) -> Kamailio:
    """A started Kamailio running `config` in a new folder under `workdir`,
    with a dispatcher list of `nodes`."""
    run = workdir / f"kam-{secrets.token_hex(3)}"
    run.mkdir()
    ds = dispatcher_list(run / "dispatcher.list", nodes)
    kam = Kamailio(config, run, {"DS_LIST": f'"{ds}"', **defines}, env)
    try:
        kam.start()
    except BaseException:
        kam.stop()
        raise
    return kam


def dispatcher_list(path: Path, nodes: Iterable[SippNode], set_id: int = 1) -> Path:
    """A dispatcher list with one destination per node (duid = its name)."""
    lines = [f"{set_id} sip:{HOST}:{n.port} 0 0 duid={n.name};rweight={n.rweight}" for n in nodes]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- SIPp --------------------------------------------------------------------


class SippNode:
    """A SIPp UAS standing for one Asterisk node."""

    def __init__(self, name: str, workdir: Path, rweight: int = 1) -> None:
        self.name = name
        self.rweight = rweight
        self.port = free_udp_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            "sipp", "-sf", str(SCENARIOS / "uas.xml"), "-s", self.name,
            "-i", HOST, "-p", str(self.port),
            "-cp", str(free_udp_port()), "-ci", HOST, "-mp", str(free_udp_port(4)),
            "-nostdin",
        ]
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


def place_calls(proxy_port: int, calls: int, workdir: Path, *, rate: int = 300, timeout: float = 60.0) -> Counter[str]:
    """Run `calls` calls through the proxy with a SIPp UAC; return how many
    each node answered (by X-Node), plus "failed" for calls that got no 200."""
    tag = secrets.token_hex(3)
    log = workdir / f"uac-{tag}.log"
    stats = workdir / f"uac-{tag}.out"
    cmd = [
        "sipp", "-sf", str(SCENARIOS / "uac.xml"), "-s", "load",
        "-i", HOST, "-p", str(free_udp_port()),
        "-cp", str(free_udp_port()), "-ci", HOST, "-mp", str(free_udp_port(4)),
        "-m", str(calls), "-r", str(rate), "-l", str(rate),
        "-timeout", f"{int(timeout)}s", "-recv_timeout", "5s",
        "-trace_logs", "-log_file", str(log), "-nostdin",
        f"{HOST}:{proxy_port}",
    ]
    with open(stats, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=workdir, start_new_session=True)
    try:
        proc.wait(timeout + 10)
    finally:
        _stop_group(proc, signal.SIGKILL)
    counts: Counter[str] = Counter()
    if log.exists():
        counts.update(line.strip() for line in log.read_text().splitlines() if line.strip())
    failed = calls - sum(counts.values())
    if failed:
        counts["failed"] = failed
    return counts


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
