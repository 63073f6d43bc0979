"""sipstatus.kemi outside Kamailio: what can be checked without app_python3
(the module itself runs only inside Kamailio: tests/interop/test_kamailio_kemi_module.py
and tests/interop/test_kamailio_kemi.py run it there)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from sipstatus import kemi
from tests.support.kamailio import EXAMPLES

DROP_IN = EXAMPLES / "kemi" / "sipstatus.cfg"


def test_outside_kamailio_sipstatus_says_it_needs_kamailio() -> None:
    with pytest.raises(RuntimeError, match="inside Kamailio's app_python3 .*no module KSR"):
        kemi.SipStatus()


def test_every_parameter_is_documented_in_the_drop_in_cfg() -> None:
    """Each Settings field is read from a define; the KEMI drop-in must
    document each (a #!trydef with its default, or a comment naming it)."""
    text = DROP_IN.read_text()
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    missing = [f.metadata["define"] for f in dataclasses.fields(kemi.Settings)
               if not re.search(rf"\b{f.metadata['define']}\b", comments)]
    assert not missing, f"{DROP_IN.name} does not document {missing}"


def test_the_drop_in_defaults_are_the_modules_defaults() -> None:
    """A #!trydef in the cfg and the field's default must agree, or the
    module would behave differently with and without the cfg's define."""
    defaults = {f.metadata["define"]: f.default for f in dataclasses.fields(kemi.Settings)}
    wrong = {}
    for name, value in re.findall(r"^#!trydef (\w+) (.+)$", DROP_IN.read_text(), re.M):
        if name in defaults and str(defaults[name]) != value.strip().strip('"'):
            wrong[name] = (value, defaults[name])
    assert not wrong, f"cfg value vs module default: {wrong}"
    assert {"DS_LIST", "DS_SET", "FAILOVER_CODES", "MAX_ATTEMPTS"} <= set(
        re.findall(r"^#!trydef (\w+)", DROP_IN.read_text(), re.M))


def test_the_kemi_default_policy_is_water_filling() -> None:
    assert kemi.Settings().policy == "water-fill"
