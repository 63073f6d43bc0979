"""A real Asterisk 22 for the `asterisk` test tier.

`tests/peers/asterisk.sh build` (run by `./dev test`) builds Asterisk from
the exact upstream tarball and caches it; this module finds that build and
runs it from a scratch directory with a configuration the test writes:

- chan_pjsip on a free UDP port of 127.0.0.1 (the endpoint `callers`,
  identified by the address 127.0.0.1, takes every call into the context
  `test`; the endpoint `loop` dials Asterisk itself, for two-leg calls);
- AMI on a free TCP port, with the user `agent` holding exactly the
  permissions packaging/agent.toml documents (read
  system,call,reporting,dialplan; write system,reporting) and, for the
  test's own checks, `tester` (read/write all);
- extensions `echo` (Answer, Echo), `dial` (Dial() back into Asterisk: two
  channels, the second leg in Echo), `local` (Dial(Local/echo@test)) and
  `conf` (ConfBridge);
- `maxcalls` in asterisk.conf when the test wants a call limit.

Everything listens on 127.0.0.1 only, on ports picked free at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT
from tests.support.ports import free_port

BUILD = ROOT / "tests" / "peers" / "asterisk.sh"
VERSION = "22.10.1"

#: The AMI user's permissions, exactly as packaging/agent.toml documents them.
AGENT_READ = "system,call,reporting,dialplan"
AGENT_WRITE = "system,reporting"


def sources_dir() -> Path:
    return Path(os.environ.get("SIPSTATUS_PEER_SOURCES", ROOT.parent / "shared" / "peers"))


def asterisk_prefix() -> tuple[Path | None, str]:
    """The cached build's prefix, or None and the one-line reason why the
    tier cannot run (missing tarball, or not built yet)."""
    tarball = sources_dir() / f"asterisk-{VERSION}.tar.xz"
    if not tarball.is_file():
        return None, f"no {tarball} (set SIPSTATUS_PEER_SOURCES): the asterisk tier does not run"
    found = subprocess.run([str(BUILD), "prefix"], capture_output=True, text=True, check=False)
    prefix = found.stdout.strip()
    if found.returncode != 0 or not prefix:
        return None, f"Asterisk {VERSION} is not built: run `{BUILD.relative_to(ROOT)} build` (./dev test does)"
    return Path(prefix), ""


@dataclass
class AsteriskConfig:
    maxcalls: int = 0
    #: Extra dialplan lines appended to the context `test`.
    dialplan: str = ""
    #: Extra lines of manager.conf's [general] (e.g. `channelvars = TENANT`).
    manager_general: str = ""


class Asterisk:
    """One Asterisk in `scratch`. `start()` returns once it is fully booted."""

    def __init__(self, prefix: Path, scratch: Path, config: AsteriskConfig | None = None) -> None:
        self.prefix = prefix
        self.dir = scratch
        self.config = config or AsteriskConfig()
        self.sip_port = free_port()
        self.ami_port = free_port()
        self.rtp_start = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.agent_secret = "agent-secret"
        self.tester_secret = "tester-secret"
        self._consoles: list[subprocess.Popen[bytes]] = []
        self._write_config()

    # -- configuration ------------------------------------------------------------

    def _write_config(self) -> None:
        d = self.dir
        for sub in ("etc", "run", "log", "spool", "lib", "db", "keys"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        rtp = free_port(2)  # RTP ranges of concurrent tests rarely meet; Asterisk skips used ports
        self.rtp_start = rtp - rtp % 2
        maxcalls = f"maxcalls = {self.config.maxcalls}\n" if self.config.maxcalls else ""
        files = {
            "asterisk.conf": f"""[directories]
astetcdir => {d}/etc
astmoddir => {self.prefix}/lib/asterisk/modules
astvarlibdir => {d}/lib
astdbdir => {d}/db
astkeydir => {d}/keys
astdatadir => {self.prefix}/var/lib/asterisk
astagidir => {d}/lib/agi-bin
astspooldir => {d}/spool
astrundir => {d}/run
astlogdir => {d}/log
astsbindir => {self.prefix}/sbin

[options]
verbose = 3
debug = 0
{maxcalls}""",
            "modules.conf": """[modules]
autoload = yes
noload = res_pjsip_stir_shaken.so
noload = res_stir_shaken.so
""",
            "logger.conf": """[general]
[logfiles]
messages.log => notice,warning,error,verbose
""",
            "manager.conf": f"""[general]
enabled = yes
port = {self.ami_port}
bindaddr = 127.0.0.1
displayconnects = yes
{self.config.manager_general}
[agent]
secret = {self.agent_secret}
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255
read = {AGENT_READ}
write = {AGENT_WRITE}

[tester]
secret = {self.tester_secret}
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255
read = all
write = all
""",
            "pjsip.conf": f"""[transport-udp]
type = transport
protocol = udp
bind = 127.0.0.1:{self.sip_port}

[callers]
type = endpoint
transport = transport-udp
context = test
disallow = all
allow = ulaw,alaw
direct_media = no
rtp_symmetric = yes
media_address = 127.0.0.1
bind_rtp_to_media_address = yes

[callers]
type = identify
endpoint = callers
match = 127.0.0.1

[loop]
type = aor
contact = sip:127.0.0.1:{self.sip_port}

[loop]
type = endpoint
transport = transport-udp
context = test
aors = loop
disallow = all
allow = ulaw,alaw
direct_media = no
""",
            "rtp.conf": f"""[general]
rtpstart = {self.rtp_start}
rtpend = {self.rtp_start + 400}
rtcpinterval = 1000
""",
            "extensions.conf": f"""[general]
static = yes
writeprotect = yes

[test]
exten => echo,1,Answer()
 same => n,Echo()
 same => n,Hangup()
exten => dial,1,Dial(PJSIP/echo@loop)
 same => n,Hangup()
exten => local,1,Dial(Local/echo@test)
 same => n,Hangup()
exten => conf,1,Answer()
 same => n,ConfBridge(room1)
 same => n,Hangup()
{self.config.dialplan}
""",
            "confbridge.conf": """[general]
[default_bridge]
type = bridge
[default_user]
type = user
quiet = yes
""",
            "cdr.conf": "[general]\nenable = no\n",
            "cel.conf": "[general]\nenable = no\n",
            "indications.conf": "[general]\ncountry = us\n[us]\ndescription = United States\nringcadence = 2000,4000\n"
                                "dial = 350+440\nbusy = 480+620/500,0/500\nring = 440+480/2000,0/4000\n"
                                "congestion = 480+620/250,0/250\ncallwaiting = 440/300,0/10000\n"
                                "dialrecall = !350+440/100,!0/100,!350+440/100,!0/100,!350+440/100,!0/100,350+440\n"
                                "record = 1400/500,0/15000\ninfo = !950/330,!1400/330,!1800/330,0\n"
                                "stutter = !350+440/100,!0/100,!350+440/100,!0/100,350+440\n",
            "musiconhold.conf": "[general]\n",
        }
        for name, text in files.items():
            path = d / "etc" / name
            path.write_text(text)
        (d / "asterisk.conf").write_text(files["asterisk.conf"])

    @property
    def conf(self) -> Path:
        return self.dir / "asterisk.conf"

    @property
    def binary(self) -> str:
        return str(self.prefix / "sbin" / "asterisk")

    # -- running ------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Start and wait until fully booted (`core waitfullybooted`)."""
        log = open(self.dir / "log" / "console.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen([self.binary, "-C", str(self.conf), "-f", "-n", "-q"],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Asterisk exited at start (code {self.process.returncode}):\n{self.log_tail()}")
            try:
                out = self.cli("core waitfullybooted", timeout=max(1.0, deadline - time.monotonic()))
            except (RuntimeError, subprocess.TimeoutExpired):
                out = ""
            if "fully booted" in out.lower():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"Asterisk did not boot within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def cli(self, command: str, timeout: float = 20.0) -> str:
        """`asterisk -rx COMMAND` on this Asterisk's control socket."""
        done = subprocess.run([self.binary, "-C", str(self.conf), "-rx", command],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"asterisk -rx {command!r}: exit {done.returncode}: {done.stderr.strip()}{done.stdout.strip()}")
        return done.stdout

    def cli_nowait(self, command: str) -> subprocess.Popen[bytes]:
        """`asterisk -rx COMMAND` without waiting for it: a stop command's
        remote console may only return when Asterisk goes away."""
        process = subprocess.Popen([self.binary, "-C", str(self.conf), "-rx", command],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._consoles.append(process)
        return process

    async def acli(self, command: str, timeout: float = 20.0) -> str:
        """`cli` without blocking the event loop."""
        return await asyncio.to_thread(self.cli, command, timeout)

    def counts(self) -> tuple[int, int]:
        """(channels, calls) as "core show channels count" prints them."""
        text = self.cli("core show channels count")
        channels = re.search(r"(\d+) active channels?", text)
        calls = re.search(r"(\d+)(?: of \d+ max)? active calls?", text)  # "3 of 10 max active calls" with maxcalls
        if not channels or not calls:
            raise AssertionError(f"core show channels count: unexpected output {text!r}")
        return int(channels.group(1)), int(calls.group(1))

    async def acounts(self) -> tuple[int, int]:
        return await asyncio.to_thread(self.counts)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.process.poll() is None:
            if loop.time() > deadline:
                raise AssertionError(f"Asterisk still runs after {timeout} s")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def kill(self) -> None:
        """Stop it whatever its state (a SIGSTOPped one too)."""
        for console in self._consoles:
            if console.poll() is None:
                console.kill()
            console.wait(5)
        self._consoles.clear()
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGCONT)
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for name in ("console.log", "messages.log"):
            path = self.dir / "log" / name
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


def copy_config(asterisk: Asterisk, to: Path) -> None:
    """Keep the configuration a recording was made with (tests/data/ami/22/)."""
    to.mkdir(parents=True, exist_ok=True)
    for path in sorted((asterisk.dir / "etc").glob("*.conf")):
        shutil.copy(path, to / path.name)


# -- calls ---------------------------------------------------------------------


SCENARIO = ROOT / "tests" / "sipp" / "asterisk" / "call.xml"


class Calls:
    """`count` SIPp calls (tests/sipp/asterisk/call.xml) to extension `exten`,
    `rate` per second, each held `hold` seconds, in the background:
    `await calls.start()`, later `await calls.finish()` for the statistics."""

    def __init__(self, asterisk: Asterisk, exten: str, count: int, *, hold: float, rate: float = 10.0,
                 tmp: Path, pcap: Path | None = None) -> None:
        self.asterisk = asterisk
        self.exten = exten
        self.count = count
        self.hold = hold
        self.rate = rate
        self.tmp = tmp
        self.process: asyncio.subprocess.Process | None = None
        self.stat = tmp / f"sipp-{exten}-{free_port()}.csv"
        self.errors = self.stat.with_suffix(".err")
        self.log = self.stat.with_suffix(".log")
        self.scenario = SCENARIO
        if pcap is not None:
            # The same call, sending the pcap's RTP (from the -mp port) right after the ACK.
            text = SCENARIO.read_text().replace(
                "  <pause />",
                f'  <nop>\n    <action>\n      <exec play_pcap_audio="{pcap}" />\n    </action>\n  </nop>\n  <pause />', 1)
            self.scenario = self.stat.with_suffix(".xml")
            self.scenario.write_text(text)

    async def start(self) -> Calls:
        sipp = shutil.which("sipp")
        assert sipp is not None, "sipp (Debian sip-tester) is not installed"
        control, media = free_port(), free_port(3)
        self.process = await asyncio.create_subprocess_exec(
            sipp, f"127.0.0.1:{self.asterisk.sip_port}", "-sf", str(self.scenario), "-s", self.exten,
            "-i", "127.0.0.1", "-p", str(free_port()), "-m", str(self.count), "-l", str(self.count),
            "-r", f"{self.rate:g}", "-rp", "1000", "-d", str(int(self.hold * 1000)),
            "-cp", str(control), "-ci", "127.0.0.1", "-mp", str(media), "-nostdin",
            "-trace_stat", "-stf", str(self.stat), "-fd", "1", "-trace_err", "-error_file", str(self.errors),
            "-trace_logs", "-log_file", str(self.log),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        return self

    async def finish(self, timeout: float | None = None) -> dict[str, int]:
        """Wait for SIPp to end; its cumulative statistics (SuccessfulCall,
        FailedCall, ...) from the last line of -trace_stat."""
        assert self.process is not None
        limit = timeout if timeout is not None else self.hold + self.count / self.rate + 30.0
        try:
            await asyncio.wait_for(self.process.wait(), limit)
        except TimeoutError:
            self.process.send_signal(signal.SIGUSR1)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.statistics()

    @property
    def refused(self) -> int:
        """Calls Asterisk answered 503 (at its call limit, or stopping)."""
        if not self.log.exists():
            return 0
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if "refused 503" in line)

    def statistics(self) -> dict[str, int]:
        if not self.stat.exists():
            return {}
        lines = [line for line in self.stat.read_text(errors="replace").splitlines() if line.strip()]
        if len(lines) < 2:
            return {}
        head = lines[0].rstrip(";").split(";")
        last = lines[-1].rstrip(";").split(";")
        out = {}
        for key, value in zip(head, last, strict=False):
            if key.endswith("(C)") and value.isdigit():
                out[key[:-3]] = int(value)
        return out

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


#: G.711 A-law RTP shipped with SIPp (Debian sip-tester): 236 packets, 7 s.
G711A_PCAP = Path("/usr/share/sip-tester/g711a.pcap")


def pcap_without_every(source: Path, target: Path, nth: int) -> tuple[int, int]:
    """`source` (a classic pcap) with every `nth` packet left out: a stream
    of known loss. Returns (packets kept, packets dropped)."""
    data = source.read_bytes()
    out = bytearray(data[:24])
    offset, index, dropped = 24, 0, 0
    while offset + 16 <= len(data):
        length = int.from_bytes(data[offset + 8:offset + 12], "little" if data[:4] == b"\xd4\xc3\xb2\xa1" else "big")
        record = data[offset:offset + 16 + length]
        offset += 16 + length
        index += 1
        if index % nth == 0:
            dropped += 1
            continue
        out += record
    target.write_bytes(bytes(out))
    return index - dropped, dropped
