"""The agent's log when its publication's removal is refused.

The OpenSIPS compositor example answered every body-less PUBLISH with 415
(OpenSIPS 3.6.8: has_body() is true for Content-Length 0), the agent's
removal on SIGTERM included; the agent then logged "failed: 415 ...; not
retried" and, right after, "publication ... removed", though nothing was.
Here a compositor refuses the removal the same way; the log must say only
what happened.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from sipstatus.sip import make_response
from tests.support.agents import AgentProcess, Compositor, agent_config, fake_asterisk

pytestmark = pytest.mark.slow

QUICK = {"agent": {"validity": 3}, "scoring": {"unknown_capacity": 1.0}}


def run(coro, timeout: float = 120.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def stop_with_removal_answered(tmp_path, answer) -> list[str]:
    """The agent's log lines after it PUBLISHed, was SIGTERMed and had its
    removal (Expires: 0) answered by `answer(compositor, request)`."""
    async def main():
        compositor = await Compositor().open()

        def reply(request):
            if request.header("Expires") == "0":
                return answer(compositor, request)
            return compositor.grant(request)

        compositor.answer = reply
        try:
            async with fake_asterisk() as ami:
                config = agent_config(ami.port, notifier={"listen": []}, **QUICK)
                target = f"sip:load-status@127.0.0.1:{compositor.port}"
                async with AgentProcess(tmp_path, config, "--publish", target) as agent:
                    await compositor.wait_for(lambda: len(compositor.received) >= 1, timeout=30, what="a PUBLISH")
                    agent.signal(signal.SIGTERM)
                    assert await agent.wait(30) == 0
                    return agent.lines
        finally:
            compositor.close()

    return run(main())


def test_a_refused_removal_is_logged_as_failed_and_not_as_removed(tmp_path):
    lines = stop_with_removal_answered(
        tmp_path, lambda c, request: make_response(request, 415, "Unsupported Media Type"))
    assert [line for line in lines if "failed: 415 Unsupported Media Type; not retried" in line]
    assert [line for line in lines if "removed" in line] == []


def test_a_granted_removal_is_logged_as_removed(tmp_path):
    lines = stop_with_removal_answered(tmp_path, lambda c, request: make_response(request, 200, headers=[("Expires", "0")]))
    assert [line for line in lines if "publication at" in line and "removed" in line]
