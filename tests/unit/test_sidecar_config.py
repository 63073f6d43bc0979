"""The sidecar's TOML configuration: defaults, the documented example, and
errors that name the key (or flag) and what was wrong."""

from __future__ import annotations

import dataclasses
import re
import tomllib

import pytest

from sipstatus.proxy.agents import Agent
from sipstatus.sidecar_config import ConfigError, SidecarConfig, from_mapping, load, with_flags
from tests.support import ROOT

EXAMPLE = ROOT / "packaging" / "examples" / "sidecar.toml"
KEY_LINE = re.compile(r"^# (\"[^\"]+\"|[A-Za-z0-9_]+) = (.*)$")


def uncommented(text: str) -> str:
    """The example with every `# key = value` line switched on."""
    return "\n".join(line[2:] if KEY_LINE.match(line) else line for line in text.splitlines())


def config(text: str) -> SidecarConfig:
    return from_mapping(tomllib.loads(text))


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        config(text)
    return str(info.value)


def test_no_file_content_means_the_defaults():
    assert config("") == SidecarConfig()


def test_the_example_as_shipped_is_the_defaults():
    assert load(EXAMPLE) == SidecarConfig()


def test_the_example_uncommented_parses_and_its_values_are_the_defaults_except_the_examples():
    got = config(uncommented(EXAMPLE.read_text()))
    assert got.agents == (Agent("ast1", "sip:192.0.2.21:5070"), Agent("ast2", "sip:192.0.2.22:5070"),
                          Agent("ast3.example.com", "sip:ast3.example.com:5070;transport=tcp"))
    assert dataclasses.replace(got, agents=()) == SidecarConfig()


def test_every_key_is_documented_in_the_example():
    documented: dict[str, set[str]] = {}
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
            documented[section] = set()
        elif match := KEY_LINE.match(line):
            documented[section].add(match.group(1))
    for field in dataclasses.fields(SidecarConfig):
        assert field.name in documented, f"[{field.name}] missing from the example"
        if field.name == "agents":
            continue
        keys = {f.name for f in dataclasses.fields(field.default_factory())}
        assert keys == documented[field.name], f"[{field.name}]"


def test_an_unknown_key_is_named():
    assert error("[kamailio]\nrcp = 'unix:/x'\n").startswith("kamailio.rcp: unknown key (known: rpc, ")


def test_an_unknown_section_is_named():
    assert error("[kamalio]\n").startswith("kamalio: unknown section")


@pytest.mark.parametrize("text, message", [
    ("[sip]\nlisten = ['udp:localhost:5080']", "sip.listen: item 1: listen address 'udp:localhost:5080': 'localhost' is not an IP address"),
    ("[sip]\nlisten = ['sctp:127.0.0.1:5080']", "sip.listen: item 1: listen address 'sctp:127.0.0.1:5080': expected udp:HOST:PORT"),
    ("[sip]\nexpires = 30", "sip.expires: must be an integer 60..3600, got 30"),
    ("[sip]\nmax_rate = 20", "sip.max_rate: must be a number 0..10, got 20"),
    ("[kamailio]\nrpc = 'tcp:127.0.0.1:8080'", 'kamailio.rpc: expected unix:PATH or fifo:PATH (or "" for none), got "tcp:127.0.0.1:8080"'),
    ("[kamailio]\nhtable = 'a-b'", "kamailio.htable: must be an htable name"),
    ("[policy]\nname = 'random'", 'policy.name: must be one of "water-fill", "headroom", "free-slots", got "random"'),
    ("[policy]\ndamper_step = true", "policy.damper_step: must be an integer 1..100, got true"),
    ("[compositor]\ntrusted = ['10.0.0.0/33']", 'compositor.trusted: item 1: "10.0.0.0/33" is not an IP network'),
    ("[compositor]\nnodes = ['ast1', 'ast1']", "compositor.nodes: lists the same value twice"),
    ("[agents]\nast1 = 'http://192.0.2.1'", "agents.ast1: agent URI 'http://192.0.2.1': must be a sip: or sips: URI"),
    ("[agents]\nast1 = 5070", "agents.ast1: must be the agent's SIP URI"),
    ('[agents]\n"-bad" = "sip:192.0.2.1"', "agents.-bad: agent node '-bad': must be 1 to 64 of"),
    ("[discover]\ndispatcher_group = 1", "discover.dispatcher_group: needs kamailio.rpc"),
    ("[kamailio]\nlist_file = '/etc/kamailio/dispatcher.list'", "kamailio.list_file: needs kamailio.rpc"),
    ("[sip]\nmax_rate = 1\nmin_rate = 2", "sip.min_rate: 2 is above sip.max_rate 1"),
    ("[agents]\nast1 = 'sip:192.0.2.1'\n[compositor]\nnodes = ['ast1']", "compositor.nodes: ast1 also listed in [agents]"),
    ("sip = 1", "sip: must be a table ([sip]), got 1"),
])
def test_errors_name_the_key_and_the_problem(text, message):
    assert error(text).startswith(message)


def test_an_unreadable_or_broken_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no-such.toml: No such file"):
        load(tmp_path / "no-such.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[sip\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load(broken)


# -- flags over the file ---------------------------------------------------------------------------


def test_flags_add_agents_and_override_the_file():
    base = config("[agents]\nast1 = 'sip:192.0.2.1:5070'\n[policy]\nname = 'free-slots'\n")
    got = with_flags(base, agents=["ast2=sip:192.0.2.2:5070"], listen=["udp:127.0.0.1:5099"],
                     policy="headroom", kamailio_rpc="unix:/run/kamailio/kamailio_rpc.sock",
                     kamailio_list_file="/etc/kamailio/dispatcher.list", discover_group=2)
    assert [a.node for a in got.agents] == ["ast1", "ast2"]
    assert got.sip.listen == ("udp:127.0.0.1:5099",) and got.policy.name == "headroom"
    assert got.kamailio.rpc == "unix:/run/kamailio/kamailio_rpc.sock"
    assert got.kamailio.list_file == "/etc/kamailio/dispatcher.list"
    assert got.discover.dispatcher_group == 2


def test_an_agent_flag_without_a_name_leaves_the_node_to_its_first_report():
    got = with_flags(SidecarConfig(), agents=["sip:192.0.2.1:5070", "ast2=sip:192.0.2.2:5070"])
    assert [(a.node, a.uri) for a in got.agents] == [(None, "sip:192.0.2.1:5070"),
                                                      ("ast2", "sip:192.0.2.2:5070")]


@pytest.mark.parametrize("flags, message", [
    ({"agents": ["ast1"]}, "--agent: agent 'ast1': expected SIP-URI or NODE=SIP-URI"),
    ({"agents": ["sip:192.0.2.1", "sip:192.0.2.1"]}, "--agent: agent sip:192.0.2.1 is given twice"),
    ({"agents": ["ast1=sip:192.0.2.1", "ast1=sip:192.0.2.2"]}, "--agent: node 'ast1' is given twice"),
    ({"listen": ["udp:127.0.0.1"]}, "--listen: listen address 'udp:127.0.0.1': expected udp:HOST:PORT"),
    ({"kamailio_rpc": "/run/kamailio.sock"}, "--kamailio-rpc: expected unix:PATH or fifo:PATH"),
    ({"policy": "random"}, "--policy: must be one of water-fill, headroom, free-slots"),
    ({"discover_group": 3}, "--discover-from-dispatcher: needs --kamailio-rpc"),
    ({"kamailio_list_file": "/x"}, "--kamailio-list-file: needs --kamailio-rpc"),
])
def test_flag_errors_name_the_flag(flags, message):
    with pytest.raises(ConfigError) as info:
        with_flags(SidecarConfig(), **flags)
    assert str(info.value).startswith(message)


def test_auto_join_flag_turns_the_compositor_on():
    got = with_flags(SidecarConfig(), auto_join=True)
    assert got.compositor.enabled and got.compositor.auto_join
    assert got.watcher_config().compositor and got.watcher_config().auto_join
