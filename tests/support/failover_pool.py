"""The pool of the failover tests: SIPp nodes that misbehave as a real pool
does (see tests/interop/test_kamailio_failover.py), each of weight 1 in the
dispatcher list and logging the time of every INVITE it receives."""

from __future__ import annotations

from tests.support import SIPP_SCENARIOS
from tests.support.sipp import CALL_SCENARIOS

E2E_UAS = SIPP_SCENARIOS / "e2e" / "uas.xml"
SCENARIOS = {
    "ok": E2E_UAS,
    "full": CALL_SCENARIOS / "refuse.xml",
    "full2": CALL_SCENARIOS / "refuse.xml",
    "dead": CALL_SCENARIOS / "silent.xml",
}
RWEIGHTS = {name: 1 for name in SCENARIOS}
