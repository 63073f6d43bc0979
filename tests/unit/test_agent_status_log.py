"""The agent's periodic "alive" line at info level (agent.service
STATUS_LOG_INTERVAL, every five minutes in production): an operator reading
the log can tell a quiet agent from a hung one, and sees its state, its
subscribers and its publications."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent import config as agent_config
from agent.service import STATUS_LOG_INTERVAL, AgentService
from sipstatus.status import LoadStatus, State
from tests.support.ports import free_port


def service(**sections: dict) -> AgentService:
    raw = {"agent": {"node": "ast-test", "interval": 0.2}, "collectors": {"enabled": []}, **sections}
    return AgentService(agent_config.from_dict(raw))


def test_the_alive_line_comes_every_few_minutes() -> None:
    assert 60.0 <= STATUS_LOG_INTERVAL <= 600.0


def test_the_alive_line_names_state_weight_capacity_reason_and_subscriptions() -> None:
    agent = service()
    agent.status = LoadStatus("ast-test", "i1", 1, 15, State.DRAINING, 0.0, reason="drained by the operator")
    assert agent.status_line() == ("alive: draining, weight 0, capacity 0.00 (drained by the operator); "
                                   "0 subscriptions")


def test_the_alive_line_before_any_status() -> None:
    assert service().status_line() == "alive: no status yet; 0 subscriptions"


def test_a_running_agent_logs_the_alive_line_at_info_repeatedly(caplog: pytest.LogCaptureFixture) -> None:
    agent = service(notifier={"listen": [f"udp:127.0.0.1:{free_port()}"]},
                    publisher={"targets": ["sip:load-status@127.0.0.1:9"]})
    agent.status_log_interval = 0.3

    async def main() -> int:
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(1.5)
        agent.stop()
        return await task

    with caplog.at_level(logging.INFO, logger="agent.service"):
        assert asyncio.run(main()) == 0
    alive = [r for r in caplog.records if r.getMessage().startswith("alive: ") and r.levelno == logging.INFO]
    assert len(alive) >= 2, [r.getMessage() for r in caplog.records]
    assert alive[0].getMessage().startswith("alive: active, weight ")
    assert alive[0].getMessage().endswith("; 0 subscriptions; publications held at 0 of 1 targets")
