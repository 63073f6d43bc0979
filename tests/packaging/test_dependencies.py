"""What pip users get: the library with dnspython alone, the agent with the
extra `agent`; the declared ranges start at Debian 12's versions (the pins
that ./dev test runs with; ./dev newest runs the newest releases)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys

import pytest
from packaging.requirements import Requirement

from agent import cli
from tests.support.debian import third_party_imports

ROOT = cli.__file__.rsplit("/agent/", 1)[0]


def declared() -> dict[str | None, dict[str, Requirement]]:
    """extra (None: always) -> project name -> requirement, from the installed metadata."""
    out: dict[str | None, dict[str, Requirement]] = {}
    for text in importlib.metadata.requires("sipstatus") or []:
        req = Requirement(text)
        extra = re.search(r'extra == "([^"]+)"', str(req.marker)) if req.marker else None
        out.setdefault(extra.group(1) if extra else None, {})[req.name.lower()] = req
    return out


def pins() -> dict[str, str]:
    text = open(f"{ROOT}/requirements.txt").read()
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([\w.-]+)==(\S+)", text, re.M)}


def test_the_library_depends_on_dnspython_alone():
    assert set(declared()[None]) == {"dnspython"}
    assert set(third_party_imports("sipstatus")) == {"dns"}


def test_the_agent_extra_holds_what_only_the_agent_imports():
    assert set(declared()["agent"]) == {"psutil", "pyroute2"}
    assert set(third_party_imports("agent")) - {"sipstatus", "dns"} == {"psutil", "pyroute2"}


def test_each_range_starts_at_the_debian_12_pin():
    ranges = {**declared()[None], **declared()["agent"]}
    assert set(pins()) == set(ranges)
    for name, pin in pins().items():
        lows = [s.version for s in ranges[name].specifier if s.operator == ">="]
        assert lows == [pin], f"{name}: requirements.txt pins {pin} (Debian 12), setup.py says {ranges[name]}"


def test_each_range_has_an_upper_bound_past_the_newest_tested_series():
    for name, req in {**declared()[None], **declared()["agent"]}.items():
        assert [s for s in req.specifier if s.operator == "<"], f"{name}: {req} has no upper bound"


@pytest.mark.parametrize("module", ["psutil", "pyroute2"])
@pytest.mark.parametrize("command", [["sample"], ["run"]])
def test_agent_without_its_extra_names_the_extra_in_one_line(monkeypatch, capsys, module, command):
    monkeypatch.setitem(sys.modules, module, None)  # import fails: not installed
    assert cli.main(command) == cli.EXIT_FAILURE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert f"{module} not installed" in err and "pip install 'sipstatus[agent]'" in err


def test_agent_version_and_check_config_need_no_extra(monkeypatch, capsys, tmp_path):
    for module in cli.AGENT_DEPENDENCIES:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(SystemExit) as version:
        cli.main(["--version"])
    assert version.value.code == 0
    config = tmp_path / "agent.toml"
    config.write_text("")
    assert cli.main(["check-config", str(config)]) == cli.EXIT_OK


def test_a_sample_carries_the_network_rates_with_the_installed_pyroute2(capsys, tmp_path):
    """pyroute2 from 0.8 on runs asyncio inside every call; the collector
    must still read the counters from within the agent's event loop."""
    config = tmp_path / "agent.toml"
    config.write_text('[collectors]\nenabled = ["network"]\n[collectors.network]\ninterfaces = ["lo"]\n')
    assert cli.main(["sample", "--config", str(config), "--json"]) == cli.EXIT_OK
    body = json.loads(capsys.readouterr().out)
    assert body["network"]["rx_pps"] is not None and body["network"]["errors"] is not None
