"""Reading SIPp's final scenario screen, as recorded from the real SIPp of
Debian 12 (3.6.1) and Debian 13 (3.7.3): tests/data/sipp/README.md."""


import pytest

from tests.support import DATA
from tests.support.sipp import SippResult

DATA = DATA / "sipp"


def result_of(name: str) -> SippResult:
    return SippResult(0, (DATA / name).read_text(), "", "")


@pytest.mark.parametrize("name", ["flood-3.6.1.txt", "flood-3.7.3.txt"])
def test_the_responses_received_are_read_from_sipp_3_6_and_3_7(name):
    assert result_of(name).received() == {"200": 0, "503": 20}


def test_output_without_a_scenario_screen_is_an_error_naming_it():
    with pytest.raises(AssertionError, match="no scenario screen with received responses"):
        SippResult(1, "sipp: cannot bind\n", "", "").received()
