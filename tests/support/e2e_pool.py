"""The pool of the end-to-end Kamailio tests: three nodes, each a SIPp UAS
standing for its Asterisk (tests/sipp/e2e/uas.xml) and a fake AMI replaying
a real Asterisk 20 transcript, and what each node's agent is told."""

from __future__ import annotations

import dataclasses

from tests.support import SIPP_SCENARIOS
from tests.support.sipp import SippNode

UAS = SIPP_SCENARIOS / "e2e" / "uas.xml"
VALIDITY = 3


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    transcript: str  # the CoreShowChannels answer the fake AMI replays
    core_max_calls: int  # CoreSettings CoreMaxCalls (0: Asterisk has no limit)
    max_calls: int  # the agent's [collectors.asterisk] max_calls
    rweight: int  # cold-start weight in the dispatcher list


SPECS = {
    "ast1": NodeSpec("coreshowchannels", 0, 25, 10),
    "ast2": NodeSpec("coreshowchannels_b2b", 5, 0, 60),
    "ast3": NodeSpec("coreshowchannels_idle", 0, 10, 30),
}


@dataclasses.dataclass
class E2eNode:
    name: str
    uas: SippNode
    ami_port: int
