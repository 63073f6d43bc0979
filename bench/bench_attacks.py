"""Benchmark: the attacks of issue 17 against a real agent, as figures.

The real agent (`python -m agent run`, its own process, started under
`prlimit --nofile=1024`, the usual default limit) on loopback; the attackers
in this process. Four scenarios:

1. connections: 1,100 idle TCP connections from 40 loopback addresses
   (127.0.0.1-40). Figures: connections the agent holds at once and after
   `--idle-wait` seconds, its RSS per held connection, and whether the
   control socket's `status`, a UDP OPTIONS and a TCP OPTIONS from a new
   source are answered while they are held (AMI shares the descriptor fate
   of the control socket: both need a free descriptor).
2. reflection: a trusted source sends 16 SUBSCRIBEs (distinct Event ids)
   whose Contact names a third party; figures: octets the attacker sent,
   octets the third party received in `--reflect-window` seconds (validity
   3 s: a heartbeat every second), and the ratio.
3. burst: 256 SUBSCRIBEs (16 sources x 16, the default caps) sent at once;
   figure: how many got a final answer within 10 s.
4. garbage: 2,000 datagrams whose empty Via once raised IndexError;
   figures: octets the agent's log grew by, tracebacks in it, and the time
   a real SUBSCRIBE then takes to be answered.

    python bench/bench_attacks.py [--repo PATH] [--idle-wait 130] [--reflect-window 30]

`--repo` runs the agent of another checkout (e.g. the code before issue 17)
with this bench. Prints the figures and writes them to
bench/results/attacks.txt (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import agents  # noqa: E402
from tests.support.agents import AgentProcess, agent_config  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

RESULTS = REPO / "bench" / "results" / "attacks.txt"
NOFILE = 1024
RCVBUF = 4 * 2**20


def subscribe(agent: tuple[str, int], local: tuple[str, int], *, contact: str | None = None,
              event_id: str | None = None) -> bytes:
    host, port = agent
    call_id = secrets.token_hex(8)
    event = "load-status" + (f";id={event_id}" if event_id else "")
    contact = contact or f"sip:proxy@{local[0]}:{local[1]}"
    return (f"SUBSCRIBE sip:load-status@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{call_id};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:proxy@{local[0]}>;tag={call_id[:8]}\r\n"
            f"To: <sip:load-status@{host}:{port}>\r\nCall-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\n"
            f"Contact: <{contact}>\r\nEvent: {event}\r\nAccept: application/load-status+json\r\n"
            f"Expires: 600\r\nContent-Length: 0\r\n\r\n").encode()


def options(transport: str, local: tuple[str, int]) -> bytes:
    branch = secrets.token_hex(8)
    return (f"OPTIONS sip:load-status@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch=z9hG4bK{branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:p@{local[0]}>;tag=1\r\nTo: <sip:load-status@127.0.0.1>\r\n"
            f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def udp_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, RCVBUF)
                break
            except OSError:
                continue
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


async def collect(sockets: list[socket.socket], seconds: float,
                  done=lambda got: False) -> dict[socket.socket, list[bytes]]:
    got: dict[socket.socket, list[bytes]] = {s: [] for s in sockets}
    end = time.monotonic() + seconds
    while time.monotonic() < end and not done(got):
        for s in sockets:
            got[s] += drain(s)
        await asyncio.sleep(0.02)
    return got


async def start_agent(tmp: Path, port: int, extra: dict | None = None) -> AgentProcess:
    config = agent_config(None, **(extra or {}))
    config["notifier"] = {**config.get("notifier", {}), "trust": ["127.0.0.0/8"]}
    agent = AgentProcess(tmp, config, "--listen", f"udp:127.0.0.1:{port}",
                         "--listen", f"tcp:127.0.0.1:{port}",
                         wrap=["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"])
    await agent.start()
    return agent


def is_open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


async def answered_over_tcp(port: int, source: str, timeout: float = 5.0) -> bool:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout)
        writer.write(options("TCP", writer.get_extra_info("sockname")))
        line = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
        return line.startswith(b"SIP/2.0 200")
    except (OSError, TimeoutError):
        return False


async def answered_over_udp(port: int, timeout: float = 5.0) -> bool:
    sock = udp_socket()
    try:
        sock.sendto(options("UDP", sock.getsockname()), ("127.0.0.1", port))
        got = await collect([sock], timeout, lambda g: any(g.values()))
        return any(m.startswith(b"SIP/2.0 200") for m in got[sock])
    finally:
        sock.close()


async def status_answered(agent: AgentProcess, timeout: float = 5.0) -> bool:
    try:
        await agent.command("status", timeout=timeout)
        return True
    except (RuntimeError, TimeoutError):
        return False


async def connections(tmp: Path, count: int, idle_wait: float) -> dict:
    port = free_port()
    agent = await start_agent(tmp / "conn", port)
    held: list[socket.socket] = []
    try:
        rss0 = agent.ps().memory_info().rss
        loop = asyncio.get_running_loop()
        for i in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((f"127.0.0.{1 + i % 40}", 0))
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5.0)
            except (OSError, TimeoutError):
                sock.close()
                continue
            held.append(sock)
        await asyncio.sleep(3.0)
        open_now = sum(is_open(s) for s in held)
        rss1 = agent.ps().memory_info().rss
        fds = agent.ps().num_fds()
        while_held = {
            "status": await status_answered(agent),
            "udp": await answered_over_udp(port),
            "tcp_new_source": await answered_over_tcp(port, "127.0.0.200"),
        }
        await asyncio.sleep(idle_wait)
        open_later = sum(is_open(s) for s in held)
        return {"opened": len(held), "held": open_now, "held_later": open_later, "fds": fds,
                "rss_per_conn": (rss1 - rss0) / max(1, open_now), **while_held}
    finally:
        for s in held:
            s.close()
        await agent.kill()


async def reflection(tmp: Path, window: float) -> dict:
    port = free_port()
    agent = await start_agent(tmp / "refl", port, {"agent": {"validity": 3}})
    attacker, victim = udp_socket("127.0.0.1"), udp_socket("127.0.0.2")
    try:
        victim_contact = "sip:victim@{}:{}".format(*victim.getsockname())
        sent = 0
        for i in range(16):
            data = subscribe(("127.0.0.1", port), attacker.getsockname(), contact=victim_contact,
                             event_id=str(i))
            attacker.sendto(data, ("127.0.0.1", port))
            sent += len(data)
        got = await collect([attacker, victim], window)
        return {"sent": sent, "victim": sum(map(len, got[victim])),
                "victim_messages": len(got[victim]), "attacker": sum(map(len, got[attacker]))}
    finally:
        attacker.close()
        victim.close()
        await agent.kill()


async def burst(tmp: Path) -> dict:
    port = free_port()
    agent = await start_agent(tmp / "burst", port)
    sockets = [udp_socket(f"127.0.0.{1 + i}") for i in range(16)]
    try:
        datagrams = [(s, subscribe(("127.0.0.1", port), s.getsockname(), event_id=str(k)))
                     for k in range(16) for s in sockets]
        for s, data in datagrams:
            s.sendto(data, ("127.0.0.1", port))

        def final(message: bytes) -> bool:
            return message.startswith(b"SIP/2.0 ") and not message.startswith(b"SIP/2.0 1") \
                and b"SUBSCRIBE" in message.split(b"\r\nCSeq:", 1)[-1][:30]

        def count(got) -> int:
            return sum(final(m) for ms in got.values() for m in ms)

        got = await collect(sockets, 10.0, lambda g: count(g) >= len(datagrams))
        return {"sent": len(datagrams), "answered": count(got)}
    finally:
        for s in sockets:
            s.close()
        await agent.kill()


async def garbage(tmp: Path, count: int) -> dict:
    port = free_port()
    agent = await start_agent(tmp / "garbage", port)
    flooder, watcher = udp_socket(), udp_socket()
    bad = (b"OPTIONS sip:load-status@127.0.0.1 SIP/2.0\r\nVia: \r\nMax-Forwards: 70\r\n"
           b"From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:load-status@127.0.0.1>\r\n"
           b"Call-ID: flood\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    try:
        await agent.command("status")
        before = sum(len(line) + 1 for line in agent.lines)
        for i in range(count):
            flooder.sendto(bad, ("127.0.0.1", port))
            if i % 100 == 99:
                await asyncio.sleep(0.005)
        start = time.monotonic()
        watcher.sendto(subscribe(("127.0.0.1", port), watcher.getsockname()), ("127.0.0.1", port))
        got = await collect([watcher], 30.0, lambda g: any(m.startswith(b"SIP/2.0 200") for m in g[watcher]))
        answer = time.monotonic() - start if any(m.startswith(b"SIP/2.0 200") for m in got[watcher]) else None
        await agent.command("status")
        await asyncio.sleep(1.0)
        lines = agent.lines
        return {"log_growth": sum(len(line) + 1 for line in lines) - before,
                "tracebacks": sum("Traceback" in line for line in lines), "answer": answer,
                "sent": count}
    finally:
        flooder.close()
        watcher.close()
        await agent.kill()


async def measure(args: argparse.Namespace) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-attacks-") as tmp:
        base = Path(tmp)
        for name in ("conn", "refl", "burst", "garbage"):
            (base / name).mkdir()
        return {
            "connections": await connections(base, args.connections, args.idle_wait),
            "reflection": await reflection(base, args.reflect_window),
            "burst": await burst(base),
            "garbage": await garbage(base, 2000),
        }


def describe_repo(repo: Path) -> str:
    try:
        commit = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return f"{repo} ({commit})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose agent is attacked")
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--idle-wait", type=float, default=130.0)
    parser.add_argument("--reflect-window", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    agents.REPO = args.repo.resolve()  # where `python -m agent` runs from
    r = asyncio.run(measure(args))
    c, f, b, g = r["connections"], r["reflection"], r["burst"], r["garbage"]
    yes = {True: "answered", False: "NO ANSWER"}
    lines = [
        "attack benchmark (bench/bench_attacks.py): issue 17's attacks on a real agent",
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}",
        f"agent: {describe_repo(args.repo)}, under prlimit --nofile={NOFILE}, UDP+TCP on 127.0.0.1",
        f"connections: opened {c['opened']} of {args.connections} idle TCP connections from 40 addresses;"
        f" held {c['held']} after 3 s ({c['fds']} descriptors in the agent),"
        f" {c['held_later']} after {args.idle_wait:g} s more;"
        f" RSS {c['rss_per_conn'] / 1024:.1f} KiB per held connection",
        f"  while held: control status {yes[c['status']]}, UDP OPTIONS {yes[c['udp']]},"
        f" TCP OPTIONS from a new source {yes[c['tcp_new_source']]}",
        f"reflection: attacker sent {f['sent']} B of SUBSCRIBEs naming a third party;"
        f" the third party received {f['victim']} B ({f['victim_messages']} messages) in"
        f" {args.reflect_window:g} s (x{f['victim'] / max(1, f['sent']):.1f}); the attacker received {f['attacker']} B",
        f"burst: {b['sent']} SUBSCRIBEs at once (16 sources x 16): {b['answered']} answered within 10 s",
        f"garbage: {g['sent']} unparseable datagrams grew the log by {g['log_growth']} B,"
        f" {g['tracebacks']} tracebacks; a SUBSCRIBE then answered in "
        + (f"{1000 * g['answer']:.0f} ms" if g["answer"] is not None else "NO ANSWER (30 s)"),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
