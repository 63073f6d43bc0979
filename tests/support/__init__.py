"""What the test modules share, one module per tool.

- `ports`: free loopback ports for the processes a test starts.
- `sip`: SIP requests and responses built and parsed by hand (a UDP client,
  the agent's PUBLISH as a proxy receives it).
- `agents`: real `sipstatus-agent run` processes and the peers they talk to.
- `kamailio`, `sipp`, `asterisk`, `opensips`: the real peers.
- `fake_ami`, `fake_ami_rooms`, `fake_opensips_mi`: fakes replaying what the
  real peers were recorded doing (tests/data/).

The constants below are the places in the repository the tests read.
"""

from pathlib import Path

#: The repository's root.
ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
#: Recorded peer transcripts and corpora (tests/data/).
DATA = TESTS / "data"
#: SIPp scenarios (tests/sipp/).
SIPP_SCENARIOS = TESTS / "sipp"
#: The event package's specification, schema and vectors.
SPEC = ROOT / "spec"
#: Everything the tests start binds the loopback address only.
HOST = "127.0.0.1"
