"""In-process agents for the watcher's tests (tested in tests/agent/test_watcher_fakeagent.py).

`FakeAgent` serves the `load-status` package with the library's Notifier on
its own SipService (UDP on a 127.0.0.x address): a body at once, a fresh
body (next seq) as heartbeat, new bodies when told. The real
`sipstatus-agent` daemon replaces it in the end-to-end tests later.

Run as a program it serves several agents in one process, for the CLI and
scale tests:

    python -m tests.support.fake_agents ast1:0.5:100 ast2:0.8:200 [--hosts 127.0.0.x]

It prints one JSON line per agent ({"node", "uri"}) and then "ready", and
takes commands on standard input, answering each with "ok" (or "error ..."):

    set NODE key=value ...      state=draining capacity=0.3 channels=40 ...
    stop NODE                   stop answering (close its socket)
    terminate NODE REASON [S]   end the subscriptions (probation, retry-after S)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import queue
import secrets
import subprocess
import sys
import threading

from sipstatus.codec import MEDIA_TYPE, encode
from sipstatus.net import Endpoint, SipService
from sipstatus.sip.subscription import Notifier, SubscriptionCreated
from sipstatus.status import Asterisk, Cpu, LoadStatus, Probe, Quality, State
from tests.support import ROOT

WAIT = 10.0


def status_for(node: str, *, capacity: float = 0.5, limit: int | None = 100, validity: int = 15,
               state: State | str = State.ACTIVE, channels: int | None = 10, seq: int = 1,
               instance: str | None = None) -> LoadStatus:
    return LoadStatus(
        node=node, instance=instance or secrets.token_hex(6), seq=seq, validity=validity,
        state=State(state), capacity=capacity,
        cpu=Cpu(usage=round(1 - capacity, 2), cores=4),
        asterisk=Asterisk(channels=channels, calls=None if channels is None else channels // 2, limit=limit),
        quality=Quality(mos=4.3), probe=Probe(p50=1.5, p95=3.2, samples=10, timeouts=0))


class FakeAgent:
    """One agent: a Notifier for `node` on UDP `host`:`port` (0: any).

    Every NOTIFY carries a freshly produced body (spec 8.5: a heartbeat has a
    new seq), except the one after `set()` or `send()`, which carries exactly
    the status or bytes given."""

    def __init__(self, node: str, host: str = "127.0.0.1", port: int = 0, *, validity: int = 15,
                 capacity: float = 0.5, limit: int | None = 100) -> None:
        self.node, self.host, self.port = node, host, port
        self.status = status_for(node, capacity=capacity, limit=limit, validity=validity)
        self.notifier = Notifier("load-status", MEDIA_TYPE, lambda source: self.contact,
                                 produce=self._produce, heartbeat=max(0.1, validity / 3), max_rate=10.0)
        self.events: asyncio.Queue = asyncio.Queue()
        self.service: SipService | None = None
        self.subscriptions = 0
        self._next: bytes | None = encode(self.status)

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"

    @property
    def contact(self) -> str:
        return f"sip:agent@{self.host}:{self.port}"

    async def start(self) -> FakeAgent:
        self.service = SipService(Endpoint([self.notifier], allow_events=["load-status"]),
                                  on_event=self._event)
        _, self.port = await self.service.listen("UDP", self.host, self.port)
        return self

    def _produce(self, now: float) -> bytes:
        body, self._next = self._next, None
        if body is None:  # a heartbeat: current figures, a new seq
            self.status = dataclasses.replace(self.status, seq=self.status.seq + 1)
            body = encode(self.status)
        return body

    def _event(self, event: object) -> None:
        if isinstance(event, SubscriptionCreated):
            self.subscriptions += 1
        self.events.put_nowait(event)

    async def next(self, kind: type, timeout: float = WAIT) -> object:
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if isinstance(event, kind):
                return event

    def set(self, **changes: object) -> LoadStatus:
        """A new status (next seq) with `changes`, sent as a significant change."""
        status = self.status
        asterisk_changes = {k: changes.pop(k) for k in ("channels", "limit") if k in changes}
        if asterisk_changes:
            changes["asterisk"] = dataclasses.replace(status.asterisk or Asterisk(), **asterisk_changes)
        if "state" in changes:
            changes["state"] = State(changes["state"])
        self.send(dataclasses.replace(status, seq=status.seq + 1, **changes))
        return self.status

    def send(self, status: LoadStatus) -> None:
        """Send `status` as it is (an old seq too: the notifier does not look)."""
        if status.seq > self.status.seq or status.instance != self.status.instance:
            self.status = status
        self.send_raw(encode(status))

    def send_raw(self, body: bytes) -> None:
        assert self.service is not None
        self._next = body
        self.service.submit(self.notifier, self.notifier.state_changed(None, self.service.now()))

    async def terminate(self, reason: str, retry_after: int | None = None) -> None:
        """End every subscription as spec 4.7.4 says a stopping agent does:
        the final NOTIFY carries a `down` body."""
        assert self.service is not None
        self.status = dataclasses.replace(self.status, seq=self.status.seq + 1, state=State.DOWN,
                                          capacity=0.0, reason="agent shutting down")
        self._next = encode(self.status)
        self.service.submit(self.notifier, self.notifier.terminate_all(
            reason, self.service.now(), retry_after=retry_after))

    async def stop(self) -> None:
        """Stop answering: the socket closes, nothing more is sent."""
        if self.service is not None:
            await self.service.close()
            self.service = None


# -- the program ----------------------------------------------------------------------------


def parse_spec(text: str) -> tuple[str, float, int | None]:
    node, _, rest = text.partition(":")
    capacity, _, limit = rest.partition(":")
    return node, float(capacity or 0.5), int(limit) if limit else 100


async def serve(specs: list[str], hosts: str | None, validity: int, port: int) -> None:
    addresses = (f"127.0.0.{i}" for i in itertools.count(10)) if hosts == "127.0.0.x" \
        else itertools.repeat("127.0.0.1")
    agents: dict[str, FakeAgent] = {}
    for spec in specs:
        node, capacity, limit = parse_spec(spec)
        agents[node] = await FakeAgent(node, next(addresses), port, validity=validity,
                                       capacity=capacity, limit=limit).start()
        print(json.dumps({"node": node, "uri": agents[node].uri}), flush=True)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode():
        words = line.split()
        try:
            command, node, *args = words
            agent = agents[node]
            if command == "set":
                changes: dict[str, object] = {}
                for arg in args:
                    key, _, value = arg.partition("=")
                    changes[key] = value if key in ("state", "reason") else \
                        (int(value) if key in ("channels", "limit") else float(value))
                agent.set(**changes)
            elif command == "stop":
                await agent.stop()
            elif command == "terminate":
                await agent.terminate(args[0], int(args[1]) if len(args) > 1 else None)
            else:
                raise ValueError(f"unknown command {command!r}")
            print("ok", flush=True)
        except Exception as err:  # noqa: BLE001 - the test reads the answer
            print(f"error {line.strip()!r}: {err}", flush=True)
    for agent in agents.values():
        await agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("agents", nargs="+", help="NODE[:CAPACITY[:LIMIT]]")
    parser.add_argument("--hosts", choices=["127.0.0.1", "127.0.0.x"], default="127.0.0.1")
    parser.add_argument("--validity", type=int, default=15)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.agents, args.hosts, args.validity, args.port))


if __name__ == "__main__":
    main()


# -- driving the program from a test ------------------------------------------------------------



class Lines:
    """The lines a process writes, read by a thread, taken with a timeout."""

    def __init__(self, stream) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self, timeout: float = WAIT) -> str:
        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s; so far: {self.seen[-5:]}") from None
        if line is None:
            raise AssertionError(f"the process ended; its last lines: {self.seen[-5:]}")
        self.seen.append(line)
        return line


class AgentsProcess:
    """`python -m tests.support.fake_agents SPECS...` as a context manager:
    `uris` maps node -> agent URI; `command("set ast2 state=draining")`."""

    def __init__(self, *specs: str, hosts: str = "127.0.0.1", validity: int = 15, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_agents", *specs, "--hosts", hosts,
             "--validity", str(validity), "--port", str(port)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.out = Lines(self.proc.stdout)
        self.uris: dict[str, str] = {}
        while (line := self.out.next(30)) != "ready":
            agent = json.loads(line)
            self.uris[agent["node"]] = agent["uri"]

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.out.next()
        assert answer == "ok", answer

    def __enter__(self) -> AgentsProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
