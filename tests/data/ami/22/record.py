"""Records the Asterisk 22 AMI transcripts in this folder (README.txt says
what each holds). Run from the repository's root, with the Asterisk build
of tests/peers/asterisk.sh in the cache:

    SIPSTATUS_PEER_SOURCES=/path/to/peers .venv/bin/python tests/data/ami/22/record.py

It starts Asterisk 22 from a scratch directory with the configuration of
tests/support/asterisk.py (copied to asterisk-conf/ here), places calls with
SIPp, and records each AMI connection with a raw socket client (no AMI
library): NAME.txt is every byte received, sent/NAME.sent.txt every byte
sent, meta/NAME.chunks.txt the time and size of each recv()/send(), the
same layout as the Asterisk 20 transcripts one folder up.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))

from tests.support.asterisk import Asterisk, AsteriskConfig, Calls, asterisk_prefix, copy_config  # noqa: E402

CRLF = "\r\n"


def action(name: str, action_id: str, **fields: str) -> bytes:
    lines = [f"Action: {name}", f"ActionID: {action_id}", *(f"{k}: {v}" for k, v in fields.items())]
    return (CRLF.join(lines) + CRLF + CRLF).encode()


class Recorder:
    """One AMI connection, every byte and its timing kept."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setblocking(False)
        self.start = time.monotonic()
        self.wallclock = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
        self.received = bytearray()
        self.sent = bytearray()
        self.chunks: list[tuple[float, str, int, str]] = []
        self.eof = False

    def t(self) -> float:
        return time.monotonic() - self.start

    def send(self, data: bytes) -> None:
        self.sock.setblocking(True)
        self.sock.sendall(data)
        self.sock.setblocking(False)
        self.sent += data
        first = data.decode().split(CRLF, 1)[0]
        self.chunks.append((self.t(), "sent", len(data), first))

    def pump(self, seconds: float) -> None:
        """Read whatever arrives for `seconds` (or until EOF)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.eof:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                time.sleep(0.002)
                continue
            if not data:
                self.eof = True
                self.chunks.append((self.t(), "recv", 0, "EOF (peer closed)"))
                break
            self.received += data
            self.chunks.append((self.t(), "recv", len(data), ""))

    def until(self, text: str, seconds: float = 10.0) -> None:
        end = time.monotonic() + seconds
        while text.encode() not in self.received and time.monotonic() < end and not self.eof:
            self.pump(0.05)

    def login(self, user: str, secret: str, events: str | None = None) -> None:
        self.until("\r\n", 5.0)
        fields = {"Username": user, "Secret": secret}
        if events is not None:
            fields["Events"] = events
        self.send(action("Login", "login-1", **fields))
        self.until("ActionID: login-1", 5.0)

    def logoff(self) -> None:
        self.send(action("Logoff", "logoff-1"))
        self.until("Goodbye", 5.0)
        self.pump(0.3)

    def save(self, note: str = "") -> None:
        self.sock.close()
        self.chunks.append((self.t(), "note", 0, note or "client closed socket"))
        (HERE / f"{self.name}.txt").write_bytes(bytes(self.received))
        (HERE / "sent").mkdir(exist_ok=True)
        (HERE / "sent" / f"{self.name}.sent.txt").write_bytes(bytes(self.sent))
        (HERE / "meta").mkdir(exist_ok=True)
        lines = [f"# wallclock_start={self.wallclock}", "# t_rel_s\tdirection\tbytes\tnote"]
        lines += [f"{t:.3f}\t{d}\t{n}\t{note}" for t, d, n, note in self.chunks]
        (HERE / "meta" / f"{self.name}.chunks.txt").write_text("\n".join(lines) + "\n")
        print(f"recorded {self.name}: {len(self.received)} octets")


def command(rec: Recorder, text: str, action_id: str) -> None:
    rec.send(action("Command", action_id, Command=text))
    rec.until("--END COMMAND--", 5.0)
    rec.until(f"ActionID: {action_id}", 5.0)
    rec.pump(0.2)


async def place(asterisk: Asterisk, tmp: Path, exten: str, count: int, hold: float) -> Calls:
    return await Calls(asterisk, exten, count, hold=hold, tmp=tmp).start()


def wait_counts(asterisk: Asterisk, want: tuple[int, int] | None = None, calls: int | None = None) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        got = asterisk.counts()
        if (want is not None and got == want) or (calls is not None and got[1] == calls):
            return
        time.sleep(0.2)
    raise RuntimeError(f"counts never reached {want or calls}: {asterisk.counts()}")


def record_channels(asterisk: Asterisk, name: str) -> None:
    """NAME.txt: a CoreShowChannels answer, as the agent's check reads it."""
    snap = Recorder(name, asterisk.ami_port)
    snap.login("agent", asterisk.agent_secret, "off")
    snap.send(action("CoreShowChannels", "csc-1"))
    snap.until("CoreShowChannelsComplete")
    snap.logoff()
    snap.save()


def record_commands(asterisk: Asterisk, name: str, *commands: str) -> None:
    """NAME.txt: CLI commands over AMI (the tester's login), ActionIDs cmd-1, cmd-2, ..."""
    cli = Recorder(name, asterisk.ami_port)
    cli.login("tester", asterisk.tester_secret, "off")
    for n, text in enumerate(commands, 1):
        command(cli, text, f"cmd-{n}")
    cli.logoff()
    cli.save()


AGENT_EVENTS = "system,call,reporting,dialplan"


async def main() -> None:
    prefix, why = asterisk_prefix()
    if prefix is None:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)

        # 1. Idle: login banner, Ping, CoreSettings with maxcalls.
        ast = Asterisk(prefix, tmp / "a1", AsteriskConfig(maxcalls=10))
        copy_config(ast, HERE / "asterisk-conf")
        ast.start()
        try:
            rec = Recorder("login_ping_coresettings", ast.ami_port)
            rec.login("agent", ast.agent_secret, AGENT_EVENTS)
            rec.pump(0.5)
            rec.send(action("Ping", "ping-1"))
            rec.until("ActionID: ping-1")
            rec.send(action("CoreSettings", "cs-1"))
            rec.until("ActionID: cs-1")
            rec.send(action("CoreShowChannels", "csc-1"))
            rec.until("CoreShowChannelsComplete")
            rec.logoff()
            rec.save()

            # 2. Local channels: 1 Echo call and 2 Dial(Local/echo@test) calls.
            events = Recorder("event_stream_local", ast.ami_port)
            events.login("agent", ast.agent_secret, AGENT_EVENTS)
            echo = await place(ast, tmp, "echo", 1, hold=6)
            local = await place(ast, tmp, "local", 2, hold=6)
            await asyncio.to_thread(wait_counts, ast, (7, 5))
            events.pump(1.0)
            record_channels(ast, "coreshowchannels_local")
            record_commands(ast, "command_core_show_channels_count_local", "core show channels count")
            await echo.finish()
            await local.finish()
            await asyncio.to_thread(wait_counts, ast, (0, 0))
            events.pump(1.0)
            events.logoff()
            events.save()

            # 3. ConfBridge: 3 callers in one conference.
            events = Recorder("event_stream_confbridge", ast.ami_port)
            events.login("agent", ast.agent_secret, AGENT_EVENTS)
            conf = await place(ast, tmp, "conf", 3, hold=6)
            await asyncio.to_thread(wait_counts, ast, None, 3)
            events.pump(1.5)
            record_channels(ast, "coreshowchannels_confbridge")
            record_commands(ast, "command_core_show_channels_confbridge",
                            "core show channels count", "core show channels concise")
            await conf.finish()
            await asyncio.to_thread(wait_counts, ast, (0, 0))
            events.pump(1.0)
            events.logoff()
            events.save()

            # 4. core stop gracefully with 2 calls up: a session logged in
            # before it Pings every 0.5 s; a new connection during it.
            stop = Recorder("ping_during_graceful_shutdown", ast.ami_port)
            stop.login("agent", ast.agent_secret, AGENT_EVENTS)
            calls = await place(ast, tmp, "echo", 2, hold=5)
            await asyncio.to_thread(wait_counts, ast, (2, 2))
            stop.pump(0.5)
            stop.chunks.append((stop.t(), "note", 0, "core stop gracefully"))
            ast.cli_nowait("core stop gracefully")
            for i in range(1, 40):
                if stop.eof:
                    break
                stop.send(action("Ping", f"ping-{i}"))
                stop.pump(0.5)
                if i == 2:
                    late = Recorder("login_during_graceful_shutdown", ast.ami_port)
                    late.login("agent", ast.agent_secret, AGENT_EVENTS)
                    late.send(action("Ping", "ping-1"))
                    late.pump(1.0)
                    late.save("client closed socket (the server keeps it open)")
            stop.pump(5.0)
            stop.save()
            await calls.finish()
            ast.process.wait(30)
        finally:
            ast.kill()


if __name__ == "__main__":
    asyncio.run(main())
