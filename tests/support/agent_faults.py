"""The set-up of the tests of the running agent facing faults and attacks:
the real agent process with a quick heartbeat and raw UDP watchers.
"""

from __future__ import annotations

import asyncio
import re

from sipstatus.sip import Request
from tests.support.agents import AgentProcess, Watcher, agent_config
from tests.support.ports import free_port

QUICK = {"agent": {"validity": 3}, "scoring": {"unknown_capacity": 1.0}}  # a heartbeat every second


def run(coro, timeout: float = 180.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def new_branch(request: Request) -> Request:
    """The request as a new transaction (DigestClient leaves the branch to the sender)."""
    via = request.header("Via") or ""
    request.set_header("Via", re.sub(r";branch=[^;]*", "", via) + f";branch=z9hG4bK{id(request):x}")
    return request


async def agent_with_watchers(tmp_path, ami, *hosts: str, config: dict | None = None, args=()):
    port = free_port()
    agent = AgentProcess(tmp_path, config or agent_config(ami.port, **QUICK),
                         "--listen", f"udp:127.0.0.1:{port}", *args)
    await agent.start()
    await agent.wait_measured()
    watchers = [await Watcher(("127.0.0.1", port), host=h).open() for h in hosts]
    return agent, port, watchers
