"""The sipstatus-agent command line."""

import asyncio
import dataclasses
import json
import subprocess
import threading
import time

import jsonschema
import pytest

from agent import cli
from sipstatus import __version__, codec
from sipstatus.status import State
from tests.support import ROOT
from tests.support.agents import REPO, AgentProcess, OptionsResponder, agent_command, agent_config
from tests.support.fake_ami import FakeAmi, Scenario
from tests.support.ports import free_port

SCHEMA = json.loads((ROOT / "spec" / "load-status.schema.json").read_text())


def agent(*args, timeout=30):
    return subprocess.run(agent_command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_version():
    result = agent("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"sipstatus-agent {__version__}"


def test_check_config_ok(tmp_path, capsys):
    path = tmp_path / "a.toml"
    path.write_text("[agent]\nnode = \"ast-1\"\n")
    assert cli.main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out == "ok\n"


def test_check_config_names_the_key_and_exits_2(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('[collectors.asterisk]\nport = "abc"\n')
    result = agent("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f'{path}: collectors.asterisk.port: must be an integer 1..65535, got "abc"'


def test_no_command_is_a_usage_error():
    assert agent().returncode == 2


@pytest.fixture
def fake_ami_thread():
    """A fake AMI server in its own thread and loop (the CLI runs its own loop)."""
    ready = threading.Event()
    holder = {}

    def serve():
        async def main():
            scenario = Scenario(answers={"CoreShowChannels": "coreshowchannels_b2b"}, max_calls=40)
            async with FakeAmi(scenario) as server:
                holder["port"] = server.port
                holder["stop"] = asyncio.Event()
                holder["loop"] = asyncio.get_running_loop()
                ready.set()
                await holder["stop"].wait()

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield holder["port"]
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(10)


def write_config(tmp_path, ami_port):
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[agent]\nnode = "ast-9"\nsample_gap = 0.3\n'
        f'[collectors.asterisk]\nport = {ami_port}\nsecret = "secret"\nauth = "md5"\n'
        '[collectors.probe]\ntarget = "sip:127.0.0.1:9"\ninterval = 0.1\ntimeout = 0.1\n'
        # a name no process has, whatever else runs on a shared test host
        '[collectors.host]\nprocess_name = "no-such-proc"\n'
    )
    return path


def test_sample_json_is_the_exact_wire_body(tmp_path, fake_ami_thread):
    result = agent("sample", "--config", str(write_config(tmp_path, fake_ami_thread)), "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    jsonschema.validate(body, SCHEMA)
    assert body["node"] == "ast-9"
    assert body["asterisk"]["channels"] == 6 and body["asterisk"]["calls"] == 4 and body["asterisk"]["limit"] == 40
    assert "probe: SIP probe to sip:127.0.0.1:9" in result.stderr


def test_sample_text_says_unknown_and_why_when_no_asterisk_runs(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = agent("sample", "--config", str(write_config(tmp_path, port)))
    assert result.returncode == 0, result.stderr
    assert "asterisk  unknown" in result.stdout and "quality   unknown" in result.stdout
    assert f"asterisk: AMI 127.0.0.1:{port}: " in result.stderr
    assert "cpu       usage " in result.stdout and "memory    total " in result.stdout


def test_sample_with_a_bad_config_exits_2(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("[collectors.probe]\ntarget = \"tel:123\"\n")
    result = agent("sample", "--config", str(path))
    assert result.returncode == 2 and "collectors.probe.target" in result.stderr


# -- the operator's drain flag --------------------------------------------------------------


@pytest.fixture(scope="module")
def drained_while_down(tmp_path_factory):
    """An agent whose SIP probe goes unanswered (its node is down), drained;
    then the probe answers again. What `drain` and `status` printed on the
    way, the status after the recovery, and what `undrain` printed."""

    async def main(tmp):
        responder = await OptionsResponder().open()
        responder.answering = False
        config = agent_config(None, probe_port=responder.port)
        async with AgentProcess(tmp, config, "--listen", f"udp:127.0.0.1:{free_port()}") as proc:
            await until_state(proc, "down")
            drained = await proc.command("drain")
            status_down = await proc.command("status")
            responder.answering = True
            recovered = await until_state(proc, "draining")
            status_back = await proc.command("status")
            undrained = await proc.command("undrain")
        responder.close()
        return drained, status_down, recovered, status_back, undrained

    return asyncio.run(asyncio.wait_for(main(tmp_path_factory.mktemp("drain")), 120))


async def until_state(proc, state, timeout=30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (body := await proc.status())["state"] != state:
        assert loop.time() < deadline, f"the agent never reported {state}: {body}\n{proc.log()}"
        await asyncio.sleep(0.1)
    return body


def drain_line_of(printed):
    return next(x for x in printed.splitlines() if x.startswith("drain "))


def test_drain_on_a_down_node_says_it_stays_out_when_it_recovers(drained_while_down):
    drained, _, recovered, _, undrained = drained_while_down
    assert "state     down" in drained
    line = drain_line_of(drained)
    assert line.startswith("drain     on since ")
    assert line.endswith(": the node is down now and stays out (draining) when it recovers, "
                         "until `sipstatus-agent undrain`")
    # It did: once the probe is answered the node is draining, not active.
    assert recovered["state"] == "draining" and recovered["weight"] == 0
    assert drain_line_of(undrained) == "drain     off"


def test_status_shows_the_drain_flag_and_since_when_whatever_the_state(drained_while_down):
    drained, status_down, _, status_back, _ = drained_while_down
    since = drain_line_of(drained).split(" (")[0]  # "drain     on since <time>"
    assert "state     down" in status_down and drain_line_of(status_down).startswith(since + " (")
    assert "state     draining" in status_back and drain_line_of(status_back).startswith(since + " (")
    assert drain_line_of(status_back).endswith(": no new calls until `sipstatus-agent undrain`")


def test_the_drain_line_gives_the_time_and_age_of_the_flag():
    status = codec.from_wire(json.loads((ROOT / "spec/vectors/body/valid-typical.json").read_text()))
    since = 1_795_440_000.0
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(since))
    assert cli.drain_line(dataclasses.replace(status, state=State.DOWN), {"on": True, "since": since},
                          now=since + 150) == (
        f"drain     on since {stamp} (2 min ago): the node is down now and stays out (draining) "
        "when it recovers, until `sipstatus-agent undrain`")
    assert cli.drain_line(status, {"on": False, "since": None}) == "drain     off"
