"""The conformance kit (`sipstatus conform`) against real implementations and broken ones.

It must pass the agent (a real `sipstatus-agent run` process), the library's
notifier, compositor and subscriber, and the Kamailio native and KEMI example
compositors (the real Kamailio from Debian); and it must fail peers that
break one rule on purpose, naming that rule.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipstatus import cli, conform
from tests.support import ROOT
from tests.support.agents import AgentProcess, agent_config, fake_asterisk
from tests.support.conform_peers import (
    Served,
    bodies,
    case_blind_notifier,
    compositor,
    notifier,
    subscriber,
)
from tests.support.kamailio import EXAMPLES, have_tools, start_example
from tests.support.ports import free_port


def failures(report: conform.Report) -> str:
    return "\n".join(r.line() for r in report.failed) or "no rule checked"


def check_subscriber(make_subscriber) -> conform.Report:
    """The kit listening as a notifier, and a subscriber made to subscribe to it."""
    port = free_port()
    found: dict[str, conform.Report] = {}
    kit = threading.Thread(target=lambda: found.setdefault(
        "report", conform.run("subscriber", f"sip:127.0.0.1:{port}", wait=30)))
    kit.start()
    time.sleep(0.2)  # the kit's socket is bound at once; the subscriber retries anyway
    with Served(make_subscriber(port)):
        kit.join(300)
    return found["report"]


# -- this project's implementations pass ------------------------------------------------


def test_the_library_notifier_passes():
    with Served(notifier()) as served:
        report = conform.run("notifier", served.target)
    assert report.ok, failures(report)


def test_the_library_compositor_passes():
    with Served(compositor()) as served:
        report = conform.run("compositor", served.target)
    assert report.ok, failures(report)


def test_the_library_subscriber_passes():
    report = check_subscriber(subscriber)
    assert report.ok, failures(report)


def test_the_agent_passes_as_notifier(tmp_path):
    async def main() -> conform.Report:
        async with fake_asterisk() as ami:
            port = free_port()
            config = agent_config(ami.port, agent={"validity": 3})  # a heartbeat every second
            agent = AgentProcess(tmp_path, config, "--listen", f"udp:127.0.0.1:{port}")
            await agent.start()
            try:
                await agent.wait_measured()
                return await asyncio.to_thread(conform.run, "notifier", f"sip:127.0.0.1:{port}")
            finally:
                await agent.kill()

    report = asyncio.run(asyncio.wait_for(main(), 240))
    assert report.ok, failures(report)


@dataclass
class PoolNode:
    name: str
    port: int
    rweight: int = 1


@pytest.mark.interop
@pytest.mark.skipif(not have_tools("jansson"), reason="needs Debian packages kamailio, "
                    "kamailio-extra-modules, sip-tester, iproute2")
def test_the_kamailio_native_example_passes_as_compositor(tmp_path: Path):
    kam = start_example(EXAMPLES / "native" / "kamailio.cfg", tmp_path, [PoolNode("ast1", free_port())])
    try:
        report = conform.run("compositor", f"sip:127.0.0.1:{kam.port}", node="ast1")
    finally:
        kam.stop()
    assert report.ok, failures(report)


@pytest.mark.interop
@pytest.mark.skipif(not have_tools("app_python3"), reason="needs Debian packages kamailio, "
                    "kamailio-python3-modules, sip-tester, iproute2")
def test_the_kamailio_kemi_example_passes_as_compositor(tmp_path: Path):
    kemi = EXAMPLES / "kemi"
    kam = start_example(kemi / "kamailio.cfg", tmp_path, [PoolNode("ast1", free_port())],
                        {"KEMI_SCRIPT": f'"{kemi / "sipstatus_kemi.py"}"'}, {"SIPSTATUS_PATH": str(ROOT)})
    try:
        report = conform.run("compositor", f"sip:127.0.0.1:{kam.port}", node="ast1")
    finally:
        kam.stop()
    assert report.ok, failures(report)


# -- broken peers fail, naming the rule --------------------------------------------------


def test_a_notifier_comparing_the_package_name_without_case_fails_4_1():
    with Served(case_blind_notifier()) as served:
        report = conform.run("notifier", served.target)
    assert "4.1" in report.failed_rules()


def test_a_notifier_honouring_max_rate_100_fails_8_2():
    with Served(notifier(max_rate_limit=100.0, max_min_rate=100.0)) as served:
        report = conform.run("notifier", served.target)
    assert "8.2" in report.failed_rules()


def test_a_notifier_sending_copies_as_heartbeats_fails_4_7_2():
    with Served(notifier(produce=bodies(copies=True))) as served:
        report = conform.run("notifier", served.target)
    assert "4.7.2" in report.failed_rules()


def test_a_compositor_reusing_its_entity_tag_fails_5_4():
    with Served(compositor(make_etag=lambda: "always-the-same")) as served:
        report = conform.run("compositor", served.target)
    assert "5.4" in report.failed_rules()


def test_a_compositor_granting_30_s_fails_5_3():
    with Served(compositor(min_expires=10)) as served:
        report = conform.run("compositor", served.target)
    assert "5.3" in report.failed_rules()


def test_a_subscriber_that_accepts_any_body_fails_4_8():
    report = check_subscriber(lambda port: subscriber(port, decode=None))
    assert "4.8" in report.failed_rules()
    assert any("breaks a rule of section 6" in r.text for r in report.failed)


# -- the command line ----------------------------------------------------------------------


def test_conform_prints_a_line_per_rule_and_exits_0_when_all_pass(capsys):
    with Served(compositor()) as served:
        status = cli.main(["conform", "compositor", served.target])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out[0].startswith("PASS  5.5 ")
    assert out[-1].startswith(f"compositor {served.target}: ") and " 0 failed " in out[-1]


def test_conform_exits_1_and_names_the_failed_rule(capsys):
    with Served(compositor(min_expires=10)) as served:
        status = cli.main(["conform", "compositor", served.target])
    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL  5.3      Expires: 30 gets 423 with Min-Expires: 60  (200 OK" in out


def test_conform_names_a_target_that_is_not_a_sip_uri(capsys):
    status = cli.main(["conform", "notifier", "sip:"])
    assert status == 1
    assert "'sip:'" in capsys.readouterr().err
