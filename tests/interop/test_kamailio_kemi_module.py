"""The KEMI module, sipstatus.kemi, in an operator's own KEMI script: the
real Kamailio from Debian (app_python3) running tests/kemi_operator/ (a
minimal proxy of the operator's, with packaging/examples/kamailio/kemi/
sipstatus.cfg included and the module's three calls added, nothing else),
with the library found through PYTHONPATH as python3-sipstatus would
install it.

It goes through the end-to-end scenarios the complete KEMI example passes
(the scenario bodies are those of test_e2e_kamailio.py and
test_kamailio_failover.py, called with this configuration):

- the split follows the weights three real agents report (their PUBLISH),
  by the library's default policy;
- failover: a node that refuses, a node that never answers, every node
  refusing, the cap on attempts, and a node reported fresh that does not
  answer OPTIONS (probing on).

Besides: a parameter the module cannot use is named in the answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop import test_e2e_kamailio as e2e
from tests.interop import test_kamailio_failover as failover
from tests.support import HOST, ROOT, TESTS, failover_pool
from tests.support.agents import Agent
from tests.support.e2e_pool import SPECS, VALIDITY, E2eNode
from tests.support.kamailio import Destinationless, Kamailio, needs_kamailio, start_example
from tests.support.ports import free_port
from tests.support.sip import Publisher, SipClient
from tests.support.sipp import SippNode

pytestmark = needs_kamailio("app_python3")

OPERATOR = TESTS / "kemi_operator"
CONFIG = OPERATOR / "kamailio.cfg"
DEFINES = {"KEMI_SCRIPT": f'"{OPERATOR / "routes.py"}"'}
#: The library as the Debian package puts it: on the embedded Python's path.
ENV = {"PYTHONPATH": str(ROOT)}
#: The failover scenarios' SIPp nodes (tests/conftest.py's `nodes`).
RWEIGHTS, SCENARIOS = failover_pool.RWEIGHTS, failover_pool.SCENARIOS


def start_operator(workdir: Path, members: list, **defines: str | int) -> Kamailio:
    return start_example(CONFIG, workdir, members, {**DEFINES, **defines}, ENV)


# -- the split follows the weights the agents report ------------------------------------


@pytest.fixture
def setup(workdir: Path, pool: dict[str, E2eNode]) -> Iterator[e2e.Setup]:
    """As test_e2e_kamailio's `setup`, for the operator's configuration:
    three real agents PUBLISHing to it."""
    way = e2e.Way("kemi-module", start_operator, e2e.default_policy_weights, e2e.kemi_held)
    kam = way.start(workdir, [n.uas for n in pool.values()])
    agents: dict[str, Agent] = {}
    try:
        for name, node in pool.items():
            agents[name] = Agent(name, workdir, ami_port=node.ami_port, probe=node.uas.uri,
                                 max_calls=SPECS[name].max_calls, validity=VALIDITY,
                                 publish=[f"sip:load-status@{HOST}:{kam.port}"])
            agents[name].start()
        yield e2e.Setup(way, kam, agents, pool, workdir)
    finally:
        for agent in agents.values():
            agent.stop()
        kam.stop()


def test_calls_split_by_the_weights_the_agents_report(setup: e2e.Setup) -> None:
    e2e.test_calls_split_by_the_weights_the_agents_report(setup)


# -- failover ----------------------------------------------------------------------------


@pytest.fixture
def way() -> failover.Way:
    return failover.Way(lambda workdir: CONFIG, failover._weigh_by_publish,
                        tuple(DEFINES.items()), tuple(ENV.items()))


def test_calls_a_node_refuses_are_taken_by_the_next_node(way: failover.Way, workdir: Path,
                                                         nodes: dict[str, SippNode]) -> None:
    failover.test_calls_a_node_refuses_are_taken_by_the_next_node(way, workdir, nodes)


def test_a_node_that_never_answers_loses_its_calls_to_the_next_node_and_is_marked_out(
        way: failover.Way, workdir: Path, nodes: dict[str, SippNode]) -> None:
    failover.test_a_node_that_never_answers_loses_its_calls_to_the_next_node_and_is_marked_out(way, workdir, nodes)


def test_when_every_node_refuses_the_caller_gets_the_refusal_after_one_try_each(
        way: failover.Way, workdir: Path, nodes: dict[str, SippNode]) -> None:
    failover.test_when_every_node_refuses_the_caller_gets_the_refusal_after_one_try_each(way, workdir, nodes)


def test_attempts_per_call_are_capped(way: failover.Way, workdir: Path, nodes: dict[str, SippNode]) -> None:
    failover.test_attempts_per_call_are_capped(way, workdir, nodes)


def test_a_node_reported_fresh_that_does_not_answer_options_is_marked_out_and_gets_no_calls(
        way: failover.Way, workdir: Path, nodes: dict[str, SippNode]) -> None:
    failover.test_a_node_reported_fresh_that_does_not_answer_options_is_marked_out_and_gets_no_calls(
        way, workdir, nodes)


# -- bad configuration --------------------------------------------------------------------


def test_a_parameter_it_cannot_use_gets_500_naming_it(workdir: Path) -> None:
    """POLICY names no policy: reports and calls get 500 with the reason
    (not silence, not a default the operator did not ask for)."""
    kam = start_operator(workdir, [Destinationless("ast1", free_port())], POLICY='"nonsense"', DS_PING_INTERVAL=0)
    client = SipClient(kam.port)
    try:
        reply = Publisher(client, "ast1").report(50)
        invite = client.build("INVITE", [("Contact", f"<sip:caller@{HOST}:{client.port}>")],
                              ruri=f"sip:load@{HOST}:{kam.port}")
        call = client.send(invite)
        for answer in (reply, call):
            assert answer.status == 500, kam.log_tail()
            assert answer.reason.startswith("sipstatus configuration: no weight policy named 'nonsense'"), answer
    finally:
        client.close()
        kam.stop()
