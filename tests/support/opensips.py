"""Run the real OpenSIPS 3.6.8 with the example configurations, for the
real-OpenSIPS tier (pytest marker `opensips`).

- `opensips_build()` finds the build that tests/peers/opensips.sh made (the
  cache is keyed by the tarball's sha256), or says in one line why there is
  none.
- `customize()` changes an example config the way its reader is told to:
  only the lines marked "CUSTOMIZE ME" (addresses, the db_text folder, the
  pool in route[NODE_MAP], the agents in route[AGENT], the subscription's
  Expires); `add_mi_http()` adds the README's own "The sidecar" lines.
- `dbtext_tables()` writes the db_text tables with the column lines the
  README gives, so a wrong README schema stops OpenSIPS here too.
- `OpenSips` starts `opensips -F` from a scratch folder on a free port,
  waits until it answers, reads its log for errors and crashes, and stops
  or restarts it.
- `LiveNode` is one Asterisk node: a SIPp UAS (tests/sipp/opensips/node.xml
  or refuse.xml) that logs each INVITE and BYE, a fake AMI
  (tests/support/fake_ami.py) to which those become Newchannel and Hangup events
  (recorded bytes, with a Uniqueid per call), so that the node's real agent
  counts the calls it carries, as with a real Asterisk; and that agent.
- `Calls` is a SIPp caller (tests/sipp/opensips/caller.xml) whose calls last
  `duration` seconds; it counts the answers per node and the rejections.

Everything binds 127.0.0.1 on free ports; every process runs in its own
session and is stopped as a group.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import psutil

from tests.support import HOST, ROOT, SIPP_SCENARIOS
from tests.support.agents import Agent, ChannelEvents
from tests.support.fake_ami import FakeAmi, FakeAmis, Scenario
from tests.support.ports import free_port
from tests.support.processes import stop_group
from tests.support.sipp import SippNode

EXAMPLES = ROOT / "packaging" / "examples" / "opensips"
README = EXAMPLES / "README.md"
SCENARIOS = SIPP_SCENARIOS / "opensips"
PEER_SCRIPT = ROOT / "tests" / "peers" / "opensips.sh"
VERSION = "3.6.8"


# -- the build ----------------------------------------------------------------------------------


def peer_sources() -> Path:
    return Path(os.environ.get("SIPSTATUS_PEER_SOURCES") or ROOT.parent / "shared" / "peers")


def peer_cache() -> Path:
    return Path(os.environ.get("SIPSTATUS_PEER_CACHE") or "/var/cache/sipstatus/peers")


@cache
def opensips_build() -> tuple[Path | None, str]:
    """(the installation prefix, "") or (None, why the tier cannot run)."""
    tarball = peer_sources() / f"opensips-{VERSION}.tar.xz"
    if not tarball.is_file():
        return None, f"no {tarball} (set SIPSTATUS_PEER_SOURCES): the real-OpenSIPS tier does not run"
    sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    prefix = peer_cache() / f"opensips-{sha}"
    if not (prefix / ".complete").exists() or not (prefix / "sbin" / "opensips").exists():
        return None, f"OpenSIPS {VERSION} is not built in {prefix}: run tests/peers/opensips.sh build (./dev test does)"
    return prefix, ""


# -- the example configs, customized as their reader is told ------------------------------------


@dataclass(frozen=True)
class PoolEntry:
    """One node of route[NODE_MAP]: its load_balancer id, dispatcher group and address."""

    node: str
    lb_id: int
    port: int

    @property
    def uri(self) -> str:
        return f"sip:{HOST}:{self.port}"


def _replace_cases(text: str, route: str, cases: str) -> str:
    """route[ROUTE]'s `switch` with its CUSTOMIZE ME cases replaced by `cases`."""
    start = text.index(f"route[{route}] {{")
    switch = text.index("\tswitch ($param(1)) {\n", start) + len("\tswitch ($param(1)) {\n")
    end = text.index("\n\t}\n", switch) + 1
    old = text[switch:end]
    assert "CUSTOMIZE ME" in old, f"route[{route}]: the cases are not marked CUSTOMIZE ME"
    return text[:switch] + cases + text[end:]


def customize(text: str, *, port: int, dbtext: Path, pool: Sequence[PoolEntry],
              agents: Sequence[tuple[str, str]] = (), expires: int | None = None,
              modules: Path | None = None) -> str:
    """The example config with only what its CUSTOMIZE ME lines ask changed:
    the module path, the socket, the db_url folder, this proxy's address,
    route[NODE_MAP]'s cases (and route[AGENT]'s: node, SUBSCRIBE URI), the
    SUBSCRIBE Expires."""
    out = []
    for line in text.splitlines(keepends=True):
        if "CUSTOMIZE ME" in line:
            if modules is not None:
                line = re.sub(r'^mpath="[^"]*"', f'mpath="{modules}/"', line)
            line = re.sub(r"^socket=udp:[0-9.]+:\d+", f"socket=udp:{HOST}:{port}", line)
            line = line.replace("text:///etc/opensips/dbtext", f"text://{dbtext}")
            line = line.replace("@127.0.0.1:5060", f"@{HOST}:{port}")
            if expires is not None:
                line = re.sub(r'"Expires: \d+\\r\\n"', f'"Expires: {expires}\\\\r\\\\n"', line)
        out.append(line)
    text = "".join(out)
    cases = "".join(
        f'\tcase "{e.node}":                                  # CUSTOMIZE ME\n'
        f"\t\t$var(lb_id) = {e.lb_id};\n"
        f'\t\t$var(ds_group) = "1";\n'
        f'\t\t$var(ds_uri) = "{e.uri}";\n'
        f"\t\treturn(1);\n" for e in pool)
    text = _replace_cases(text, "NODE_MAP", cases)
    if "route[AGENT] {" in text:
        cases = "".join(
            f"\tcase {i}:                                                  # CUSTOMIZE ME\n"
            f'\t\t$var(agent_node) = "{node}";\n'
            f'\t\t$var(agent_uri) = "{uri}";\n'
            f"\t\treturn(1);\n" for i, (node, uri) in enumerate(agents))
        text = _replace_cases(text, "AGENT", cases)
    return text


def readme_block(marker: str) -> str:
    """The indented block of the README that follows the line holding `marker`."""
    lines = README.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if marker in line)
    block, started = [], False
    for line in lines[at + 1:]:
        if line.startswith("    "):
            block.append(line[4:])
            started = True
        elif started and line.strip():
            break
    return "\n".join(block).strip("\n") + "\n"


def add_mi_http(text: str, mi_port: int) -> str:
    """The config with the README's "The sidecar" lines (httpd + mi_http)
    added at the end of its modules section, on `mi_port`."""
    lines = readme_block("Load the HTTP MI transport")
    lines = lines.replace("8888", str(mi_port))
    marker = "####### Routing Logic ########"
    assert marker in text
    return text.replace(marker, lines + "\n" + marker, 1)


def dbtext_tables(folder: Path, pool: Sequence[PoolEntry], *, capacity: int = 100) -> Path:
    """db_text tables for `pool`, with the README's column lines and versions."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {}
    for e in pool:
        uri = e.uri.replace(":", "\\:")
        values[e.node] = {
            "id": str(e.lb_id), "group_id": "1", "setid": "1", "dst_uri": uri, "destination": uri,
            "resources": f"channels={capacity}", "probe_mode": "0", "state": "0", "weight": "1",
            "priority": "0", "socket": "", "attrs": f"node={e.node}", "description": e.node,
        }
    for table in ("load_balancer", "dispatcher"):
        header = readme_block(f"`/etc/opensips/dbtext/{table}`").splitlines()[0]
        columns = [c.split("(")[0] for c in header.split()]
        rows = [":".join(v[c] for c in columns) for v in values.values()]
        (folder / table).write_text(header + "\n" + "\n".join(rows) + "\n")
    version = readme_block("`/etc/opensips/dbtext/version`").splitlines()
    (folder / "version").write_text(version[0] + "\n" + "\n".join(version[1:]) + "\n")
    return folder


# -- OpenSIPS -----------------------------------------------------------------------------------

#: Log lines that mean something went wrong (OpenSIPS prints "ERROR:" and
#: "CRITICAL:" before the module and function; a dead worker is reported by
#: the main process as a signal or an exit).
LOG_PROBLEM = re.compile(r"\bERROR:|\bCRITICAL:|\bsegfault|signal 11|Segmentation|core dumped|"
                         r"exited by a signal|child process \d+ exited", re.I)


class OpenSips:
    """OpenSIPS running `config_text` from `workdir` (its own scratch folder)."""

    def __init__(self, prefix: Path, workdir: Path, config_text: str, port: int, *, mi_port: int | None = None) -> None:
        self.prefix, self.dir, self.port, self.mi_port = prefix, workdir, port, mi_port
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "opensips.cfg"
        self.config.write_text(config_text)
        self.log_path = self.dir / "opensips.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started_at = 0.0  # when the last start ran the binary

    @property
    def mi_url(self) -> str:
        return f"http://{HOST}:{self.mi_port}/mi"

    def command(self) -> list[str]:
        return [str(self.prefix / "sbin" / "opensips"), "-F", "-f", str(self.config), "-w", str(self.dir),
                "-m", "128", "-M", "16"]

    def start(self, timeout: float = 20.0) -> None:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"---- start {self.starts} ----\n".encode())
            log.flush()
            self.started_at = time.time()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"OpenSIPS exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"OpenSIPS does not answer on {HOST}:{self.port}:\n{self.log_tail()}")
            time.sleep(0.1)

    def answers(self) -> bool:
        """Whether OpenSIPS answers an OPTIONS (any response: the examples say 405)."""
        tag = secrets.token_hex(4)
        msg = (f"OPTIONS sip:{HOST}:{self.port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {HOST}:{{port}};branch=z9hG4bK{tag}\r\n"
               f"From: <sip:probe@{HOST}>;tag={tag}\r\nTo: <sip:{HOST}:{self.port}>\r\n"
               f"Call-ID: {tag}@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((HOST, 0))
            sock.settimeout(0.3)
            sock.sendto(msg.replace("{port}", str(sock.getsockname()[1])).encode(), (HOST, self.port))
            try:
                return sock.recv(65536).startswith(b"SIP/2.0 ")
            except OSError:
                return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_group(self.proc, sig, wait=10.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def problems(self) -> list[str]:
        """Every log line that reports an error or a crash."""
        return [line for line in self.log().splitlines() if LOG_PROBLEM.search(line)]

    def processes(self) -> list[psutil.Process]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            main = psutil.Process(self.proc.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.processes():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total


# -- the nodes ----------------------------------------------------------------------------------


class NodeAgent(Agent):
    """tests.support.agents.Agent with the periodic CoreShowChannels check off:
    the fake AMI answers it with a recorded list that does not hold the
    calls this test places (they reach the agent as events, see LiveNode);
    the check after each Login still runs."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        text = self.config_path.read_text()
        self.config_path.write_text(text.replace("[collectors.asterisk]\n",
                                                 "[collectors.asterisk]\nreconcile_interval = 3600\n"))


def _with_ids(raw: bytes, uniqueid: str) -> bytes:
    """A recorded channel event with its Uniqueid and Linkedid set to `uniqueid`
    (one channel, one call) and its channel name made unique with it."""
    raw = re.sub(rb"^(Uniqueid|Linkedid): [^\r\n]*", lambda m: m.group(1) + b": " + uniqueid.encode(), raw, flags=re.M)
    return re.sub(rb"^(Channel): ([^\r\n-]*)-[^\r\n]*", lambda m: m.group(1) + b": " + m.group(2) + b"-" + uniqueid.encode(),
                  raw, flags=re.M)


@dataclass
class LiveNode:
    """One Asterisk node: SIPp UAS + fake AMI fed with the UAS's calls + a real agent.

    `transcript` is the CoreShowChannels answer after each Login (the calls
    the node had before: "coreshowchannels" holds 5, "..._b2b" 4, "..._idle"
    none); `limit` the agent's max_calls."""

    name: str
    workdir: Path
    amis: FakeAmis
    limit: int
    transcript: str = "coreshowchannels_idle"
    scenario: str = "node.xml"
    publish: Sequence[str] = ()
    validity: int = 3
    uas: SippNode = field(init=False)
    agent: NodeAgent = field(init=False)
    server: FakeAmi = field(init=False)
    _seen: int = field(default=0, init=False)
    _live: set[str] = field(default_factory=set, init=False)
    _ids: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.uas = SippNode(self.name, self.workdir, scenario=SCENARIOS / self.scenario, log=True)
        port = self.amis.serve(Scenario(answers={"CoreShowChannels": self.transcript}))
        self.server = self.amis.servers[-1]
        self.agent = NodeAgent(self.name, self.workdir, ami_port=port, probe=self.uas.uri, max_calls=self.limit,
                               validity=self.validity, publish=self.publish)
        self.events = ChannelEvents.recorded()

    @property
    def port(self) -> int:
        return self.uas.port

    @property
    def rweight(self) -> int:
        return 1

    def start(self) -> None:
        self.uas.start()
        self.agent.start()

    def stop(self) -> None:
        self.agent.stop()
        self.uas.stop()

    def lines(self) -> list[str]:
        path = self.uas.log_path
        return path.read_text(errors="replace").splitlines() if path is not None and path.exists() else []

    def invites(self) -> list[tuple[float, str]]:
        """(epoch time, Call-ID) of every INVITE this node received ("+"
        taken, "x" refused)."""
        out = []
        for line in self.lines():
            fields = line.split()
            if len(fields) == 4 and fields[0] in "+x":
                out.append((float(fields[1]) + float(fields[2]) / 1e6, fields[3]))
        return out

    def pump(self) -> None:
        """Turn the UAS's new log lines into Newchannel/Hangup events of its AMI."""
        lines = self.lines()
        new, self._seen = lines[self._seen:], len(lines)
        for line in new:
            fields = line.split()
            if len(fields) == 4 and fields[0] == "+":
                uid = self._ids.setdefault(fields[3], f"{secrets.token_hex(4)}.{len(self._ids)}")
                self._live.add(fields[3])
                self._emit(_with_ids(self.events.newchannel, uid))
            elif len(fields) == 2 and fields[0] == "-" and fields[1] in self._live:
                self._live.discard(fields[1])
                self._emit(_with_ids(self.events.hangup, self._ids[fields[1]]))

    def _emit(self, raw: bytes) -> None:
        asyncio.run_coroutine_threadsafe(self.server.emit(raw), self.amis.loop).result(10)

    @property
    def live_calls(self) -> int:
        return len(self._live)


class Pump:
    """A thread that keeps every node's fake AMI in step with its UAS's calls."""

    def __init__(self, nodes: Iterable[LiveNode], period: float = 0.05) -> None:
        self.nodes, self.period = list(nodes), period
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ami-pump", daemon=True)

    def start(self) -> Pump:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for node in self.nodes:
                node.pump()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(5)


# -- calls --------------------------------------------------------------------------------------


@dataclass
class CallCounts:
    """Answers per node (X-Node), rejections by status, and the calls with no line."""

    calls: int
    answered: Counter[str]
    rejected: Counter[str]
    output: str

    @property
    def missing(self) -> int:
        return self.calls - sum(self.answered.values()) - sum(self.rejected.values())

    def share(self, node: str) -> float:
        total = sum(self.answered.values())
        return self.answered.get(node, 0) / total if total else 0.0


class Calls:
    """A SIPp caller through OpenSIPS: `calls` calls at `rate` per second,
    each lasting `duration` seconds, in the background."""

    def __init__(self, proxy_port: int, calls: int, workdir: Path, *, rate: float, duration: float = 0.0,
                 timeout: float | None = None) -> None:
        tag = secrets.token_hex(3)
        self.calls, self.workdir = calls, workdir
        self.log = workdir / f"caller-{tag}.log"
        self.out = workdir / f"caller-{tag}.out"
        self.timeout = timeout or calls / rate + duration + 30
        self.cmd = [
            "sipp", "-sf", str(SCENARIOS / "caller.xml"), "-s", "pool",
            "-i", HOST, "-p", str(free_port()),
            "-cp", str(free_port()), "-ci", HOST, "-mp", str(free_port(4)),
            "-m", str(calls), "-r", f"{rate:g}", "-l", str(max(10, int(rate * (duration + 3)))),
            "-d", str(int(duration * 1000)),
            "-timeout", f"{int(self.timeout)}s", "-recv_timeout", "10s",
            "-trace_logs", "-log_file", str(self.log), "-nostdin",
            f"{HOST}:{proxy_port}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Calls:
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, start_new_session=True)
        return self

    def wait(self) -> CallCounts:
        assert self.proc is not None
        try:
            self.proc.wait(self.timeout + 15)
        except subprocess.TimeoutExpired:
            self.stop_softly()
        return self.counts()

    def stop_softly(self) -> CallCounts:
        """No new call; the calls under way finish (SIGUSR1, field notes)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGUSR1)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        stop_group(self.proc, signal.SIGKILL)
        return self.counts()

    def counts(self) -> CallCounts:
        answered: Counter[str] = Counter()
        rejected: Counter[str] = Counter()
        if self.log.exists():
            for line in self.log.read_text(errors="replace").splitlines():
                line = line.strip()
                if line.startswith("rejected "):
                    rejected[line.split()[1]] += 1
                elif line:
                    answered[line] += 1
        output = self.out.read_text(errors="replace") if self.out.exists() else ""
        return CallCounts(self.calls, answered, rejected, output)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, signal.SIGKILL)


# -- the sidecar --------------------------------------------------------------------------------


class OpenSipsSidecar:
    """A real `sipstatus sidecar --opensips-mi URL` process following `agents`."""

    def __init__(self, mi_url: str, agents: Mapping[str, str], workdir: Path, *, expires: int = 60,
                 refresh_interval: float | None = None) -> None:
        self.dir = workdir / f"sidecar-{secrets.token_hex(2)}"
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / "sidecar.log"
        config = f"[sip]\nexpires = {expires}\n[opensips]\nlb_group = 1\n"
        if refresh_interval is not None:
            config += f"refresh_interval = {refresh_interval:g}\n"
        self.config_path = self.dir / "sidecar.toml"
        self.config_path.write_text(config)
        self.cmd = [sys.executable, "-m", "sipstatus.cli", "sidecar", "--config", str(self.config_path),
                    "--listen", f"udp:{HOST}:{free_port()}", "--policy", "free-slots", "--log-level", "info",
                    "--opensips-mi", mi_url, *(f"--agent={node}={uri}" for node, uri in agents.items())]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT, start_new_session=True)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited with {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def wait_for(predicate, timeout: float, what: str, period: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something true; its value, or AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(period)
