"""The sipstatus-agent command line."""

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema
import pytest

from agent import cli
from sipstatus import __version__
from tests.fakeami import FakeAmi, Scenario

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "spec" / "load-status.schema.json").read_text())


def agent(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


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
