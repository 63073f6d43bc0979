"""A live node for the asterisk tier: a real Asterisk 22, the real agent
daemon watching it (AMI with the documented permissions, SIP probe), and a
subscriber reading the agent's NOTIFYs, as a proxy would.

Timing: every delay measured here is between two loop times of this test
process (a command returning, a NOTIFY arriving); assertions about them
are the issue's bounds, not speed claims, and the tests print the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from sipstatus.status import LoadStatus
from tests.support.agents import AgentProcess, Received, Watcher
from tests.support.asterisk import Asterisk, AsteriskConfig, asterisk_prefix
from tests.support.ports import free_port

PREFIX, WHY_NOT = asterisk_prefix()


def agent_settings(asterisk: Asterisk, *, secret: str | None = None, **sections: dict) -> dict:
    """The agent's configuration: the asterisk and probe collectors with
    their defaults (the delays measured are the product's), the host and
    network collectors off (CPU noise from other work on the machine must
    not change the state)."""
    config: dict[str, dict[str, object]] = {
        "agent": {"node": "ast-live", "log_level": "debug"},
        "collectors": {"enabled": ["asterisk", "probe"]},
        "collectors.asterisk": {"port": asterisk.ami_port, "username": "agent",
                                "secret": asterisk.agent_secret if secret is None else secret, "auth": "md5"},
        "collectors.probe": {"target": f"sip:127.0.0.1:{asterisk.sip_port}"},
    }
    for name, keys in sections.items():
        config.setdefault(name.replace("__", "."), {}).update(keys)
    return config


class LiveNode:
    """`async with LiveNode(tmp, AsteriskConfig(...)) as node:`"""

    def __init__(self, tmp: Path, asterisk: AsteriskConfig | None = None, *, start_asterisk: bool = True,
                 secret: str | None = None, agent: dict | None = None) -> None:
        assert PREFIX is not None, WHY_NOT
        self.tmp = tmp
        self.asterisk = Asterisk(PREFIX, tmp / "asterisk", asterisk)
        self.start_asterisk = start_asterisk
        self.port = free_port()
        self.agent = AgentProcess(tmp, agent_settings(self.asterisk, secret=secret, **(agent or {})),
                                  "--listen", f"udp:127.0.0.1:{self.port}")
        self.watcher: Watcher | None = None
        self.call_id = ""
        self.calls: list = []

    async def __aenter__(self) -> LiveNode:
        try:
            if self.start_asterisk:
                await asyncio.to_thread(self.asterisk.start)
            await self.agent.start()
            await self.subscribe()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for calls in self.calls:
            calls.kill()
        if self.watcher is not None:
            self.watcher.close()
        await self.agent.kill()
        await asyncio.to_thread(self.asterisk.kill)

    async def subscribe(self) -> None:
        self.watcher = await Watcher(("127.0.0.1", self.port)).open()
        request = self.watcher.subscribe()
        response = await self.watcher.response(request.call_id)
        assert response.status == 200, response.start_line()
        self.call_id = request.call_id
        await self.watcher.notify(self.call_id)

    # -- what the subscriber saw --

    def notifies(self) -> list[Received]:
        assert self.watcher is not None
        return [r for r in self.watcher.notifies(self.call_id) if r.message.body]

    @property
    def latest(self) -> LoadStatus:
        return self.notifies()[-1].status

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def first(self, predicate: Callable[[LoadStatus], bool], *, after: float = 0.0, timeout: float = 30.0,
                    what: str = "a status") -> Received:
        """The first NOTIFY that arrived at or after loop time `after` whose
        status satisfies `predicate`."""
        assert self.watcher is not None

        def found() -> Received | None:
            return next((r for r in self.notifies() if r.at >= after and predicate(r.status)), None)

        try:
            return await self.watcher.wait_for(found, timeout, what)  # type: ignore[return-value]
        except AssertionError as exc:
            seen = [f"{r.at - after:+.2f}s {describe(r.status)}" for r in self.notifies()[-8:]]
            raise AssertionError(f"{exc}\nlast NOTIFYs: {seen}\nagent log:\n{self.agent.log()[-4000:]}") from None

    async def control_status(self) -> dict:
        """The agent's current status body over its control socket (the
        protocol of agent/control.py, spoken directly: polling through the
        `sipstatus-agent status` command would cost a process per look)."""
        reader, writer = await asyncio.open_unix_connection(self.agent.control)
        try:
            writer.write(b'{"command": "status"}\n')
            await writer.drain()
            answer = json.loads(await asyncio.wait_for(reader.readline(), 10.0))
        finally:
            writer.close()
        assert answer.get("ok"), answer
        return answer["status"]

    async def control_until(self, predicate: Callable[[dict], bool], timeout: float, what: str) -> tuple[float, dict]:
        """Poll the control socket every 50 ms until the status body
        satisfies `predicate`; (loop time seen, body)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            body = await self.control_status()
            if predicate(body):
                return loop.time(), body
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {body}\n"
                                     f"agent log:\n{self.agent.log()[-4000:]}")
            await asyncio.sleep(0.05)

    async def counts_equal_asterisks(self, timeout: float = 20.0) -> tuple[tuple[int, int], LoadStatus]:
        """Asterisk's (channels, calls) from "core show channels count" and
        the first NOTIFY after that with the same figures."""
        own = await self.asterisk.acounts()
        asked = self.now()
        received = await self.first(lambda s: counts(s) == own, after=asked - 5.0, timeout=timeout,
                                    what=f"a NOTIFY with channels, calls = {own}")
        return own, received.status


def counts(status: LoadStatus) -> tuple[int | None, int | None]:
    a = status.asterisk
    return (a.channels, a.calls) if a is not None else (None, None)


def body_counts(body: dict) -> tuple[int | None, int | None]:
    a = body.get("asterisk") or {}
    return a.get("channels"), a.get("calls")


def describe(status: LoadStatus) -> str:
    a = status.asterisk
    figures = f" ch={a.channels} calls={a.calls} limit={a.limit}" if a is not None else ""
    return f"{status.state.value} w={status.weight} ({status.reason}){figures}"


async def settle(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.2) -> object:
    """Poll `predicate` (it may be a coroutine function) until truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(step)


@contextlib.contextmanager
def report(name: str):
    """Print a measured figure (pytest -s shows it; -rA keeps it)."""
    figures: dict[str, float] = {}
    yield figures
    print(f"\n[asterisk tier] {name}: " + ", ".join(f"{k} = {v:.2f} s" for k, v in figures.items()))
