"""agent.config: defaults that run anywhere, errors that name the key."""

import dataclasses
import re

import pytest

from agent import config
from tests.support import ROOT
from tests.support.fake_ami import ami_dir


def test_no_file_gives_working_defaults():
    c = config.load(None)
    assert c.collectors.enabled == ("host", "asterisk", "probe", "network")
    assert (c.collectors.asterisk.host, c.collectors.asterisk.port) == ("127.0.0.1", 5038)
    assert c.collectors.probe.target == "sip:127.0.0.1:5060"
    assert re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._:-]{0,62}[A-Za-z0-9])?", c.node)


def test_a_file_overrides_only_what_it_sets(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nnode = "ast-3"\n[collectors.asterisk]\nport = 5039\n[scoring]\ncpu_max = 0.9\n')
    c = config.load(path)
    assert (c.node, c.collectors.asterisk.port, c.scoring.cpu_max) == ("ast-3", 5039, 0.9)
    assert c.collectors.asterisk.host == "127.0.0.1" and c.agent.validity == 15


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[collectors.asterisk]\nport = "abc"', 'collectors.asterisk.port: must be an integer 1..65535, got "abc"'),
        ("[collectors.asterisk]\nport = 70000", "collectors.asterisk.port: must be an integer 1..65535, got 70000"),
        ("[collectors.asterisk]\nport = true", "collectors.asterisk.port: must be an integer 1..65535, got true"),
        ("[agent]\nnod = 1", "agent.nod: unknown key (known keys here: node, validity, interval, sample_gap, log_level)"),
        ("[agnet]\n", "agnet: unknown key"),
        ('[collectors]\nenabled = ["host", "sql"]', 'collectors.enabled: "sql" is not one of host, asterisk, probe, network'),
        ('[collectors]\nenabled = ["host", "host"]', "collectors.enabled: lists a name twice"),
        ('[collectors.asterisk]\nauth = "sha"', 'collectors.asterisk.auth: must be one of "md5", "plain", got "sha"'),
        ('[collectors.probe]\ntarget = "http://x"', 'collectors.probe.target: must be a sip: URI'),
        ("[scoring]\ncpu_max = 0", "scoring.cpu_max: must be a number above 0 and at most 1, got 0"),
        ("[collectors.host]\ncpu_jump = 0", "collectors.host.cpu_jump: must be a number above 0 and at most 1, got 0"),
        ("[collectors.host]\ncpu_watch_interval = -1", "collectors.host.cpu_watch_interval: must be a number 0..10, got -1"),
        ("[scoring]\nunknown_capacity = 1.5", "scoring.unknown_capacity: must be a number 0..1, got 1.5"),
        ('[agent]\nnode = "bad node"', 'agent.node: must be a host name or token'),
        ("[agent]\nvalidity = 0", "agent.validity: must be an integer 1..3600, got 0"),
        ("collectors = 3", "collectors: must be a table, got 3"),
        ("[notifier]\nlisten = 1", 'notifier.listen: must be a list of addresses like "udp:0.0.0.0:5070", got 1'),
        ('[notifier]\nlisten = ["udp:ast1:5070"]', "notifier.listen: \"udp:ast1:5070\": 'ast1' is not an IP address (listen on an address, not a name)"),
        ('[notifier]\nlisten = ["sctp:127.0.0.1:5070"]', 'notifier.listen: "sctp:127.0.0.1:5070": expected udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT'),
        ('[notifier]\nlisten = ["tls:127.0.0.1:5071"]', "notifier.tls_certificate: a TLS listener (tls:127.0.0.1:5071) needs tls_certificate and tls_key"),
        ('[notifier]\ntrust = ["10.0.0.0/33"]', 'notifier.trust: "10.0.0.0/33" is not an IP network (CIDR, e.g. 192.0.2.0/24 or 2001:db8::/32)'),
        ("[notifier]\nmax_rate = 20", "notifier.max_rate: must be a number above 0 and at most 10, got 20"),
        ("[agent]\nvalidity = 5\n[notifier]\nheartbeat = 2.0",  # main's default validity is 15
         "notifier.heartbeat: must be at most agent.validity / 3 (1.66667 s), got 2"),
        ("[agent]\nvalidity = 15\n[notifier]\nmax_rate = 0.1",
         "notifier.max_rate: must be at least 3 / agent.validity (0.2/s) for a heartbeat every validity / 3 s, got 0.1"),
        ("[agent]\nvalidity = 1\n[publisher]\nmax_rate = 2.0\n[notifier]\nmax_rate = 3.0",
         "publisher.max_rate: must be at least 3 / agent.validity (3/s)"),
        ('[publisher]\ntargets = ["http://x"]', 'publisher.targets: "http://x" is not a sip: or sips: URI'),
        ('[publisher]\nusername = "a"', "publisher.password: username and password go together"),
        ("[collectors.asterisk]\nbackoff_initial = 10.0\nbackoff_max = 5.0", "collectors.asterisk.backoff_max: must be at least backoff_initial"),
        ("[agent\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key_and_what_was_wrong(tmp_path, toml, message):
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert message in str(err.value)


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(config.ConfigError, match="nope.toml: cannot read: No such file"):
        config.load(tmp_path / "nope.toml")


def test_secret_comes_from_manager_conf():
    conf = ami_dir() / "asterisk-conf" / "manager.conf"
    assert config.manager_secret(conf, "agent") == "secret"
    c = config.from_dict({"collectors": {"asterisk": {"manager_conf": str(conf), "username": "agentro"}}})
    assert config.ami_secret(c.collectors.asterisk) == "secret"


def test_manager_conf_format_details(tmp_path):
    conf = tmp_path / "manager.conf"
    conf.write_text("[general]\nenabled = yes\n\n[tpl](!)\nread = all\n\n[agent](tpl) ; our user\n"
                    "secret => s3cr\\;et ; a comment\nread = system\n")
    assert config.manager_secret(conf, "agent") == "s3cr;et"


@pytest.mark.parametrize(
    ("text", "message"),
    [("[other]\nsecret = x\n", "has no [agent] section (collectors.asterisk.username)"),
     ("[agent]\nread = all\n", "section [agent] has no secret")],
)
def test_manager_conf_problems_are_named(tmp_path, text, message):
    conf = tmp_path / "manager.conf"
    conf.write_text(text)
    with pytest.raises(config.ConfigError, match=re.escape(message)) as err:
        config.from_dict({"collectors": {"asterisk": {"manager_conf": str(conf)}}})
    assert err.value.key == "collectors.asterisk.manager_conf"


def test_packaging_example_documents_every_key_with_its_default():
    text = (ROOT / "packaging" / "agent.toml").read_text()
    assert config.load(ROOT / "packaging" / "agent.toml") == config.Config()
    uncommented = re.sub(r"(?m)^# (\w+ = )", r"\1", text)
    import tomllib

    assert config.from_dict(tomllib.loads(uncommented)) == config.Config()  # the shown values are the defaults

    def keys(cls, prefix):
        for f in dataclasses.fields(cls):
            section = config._SECTIONS.get(f.type if isinstance(f.type, str) else "")
            if section is not None:
                assert f"[{prefix}{f.name}]" in text, f"section [{prefix}{f.name}] missing"
                yield from keys(section, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}", f.name

    for dotted, name in keys(config.Config, ""):
        assert re.search(rf"(?m)^# {name} = ", text), f"{dotted} is not documented in packaging/agent.toml"
