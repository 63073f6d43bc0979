"""Who may serve and who may answer on the control socket (issue 17 items 3, 4).

One path for the agent under the unit and for the operator's commands; the
agent refuses a directory or socket another user controls; a client believes
only an answer from root, itself or the service user (SO_PEERCRED).  The
packaged unit under a real systemd is tested in test_packaging_control.py.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent import control
from agent.control import ControlError, ControlServer, default_socket_path, request

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changes file owners: needs root (CI runs as root)")
NOBODY = pwd.getpwnam("nobody").pw_uid


async def status(command: str) -> dict:
    return {"state": "active", "command": command}


# -- one path -----------------------------------------------------------------------------------


def test_under_the_unit_the_agent_uses_systemds_runtime_directory():
    assert default_socket_path({"RUNTIME_DIRECTORY": "/run/sipstatus-agent"}) == \
        "/run/sipstatus-agent/control"


def test_an_operator_who_is_not_root_finds_the_service_socket(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os.path, "isdir", lambda path: path == control.SERVICE_DIRECTORY)
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/1000"}) == "/run/sipstatus-agent/control"


def test_root_uses_the_service_socket(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os.path, "isdir", lambda path: False)
    assert default_socket_path({}) == "/run/sipstatus-agent/control"


def test_without_the_service_a_user_gets_a_socket_in_their_runtime_directory(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os.path, "isdir", lambda path: False)
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/1000"}) == \
        "/run/user/1000/sipstatus-agent/control"


# -- the agent refuses what another user controls --------------------------------------------


@needs_root
def test_the_agent_refuses_a_directory_another_user_created(tmp_path):
    directory = tmp_path / "sipstatus-agent"
    directory.mkdir(mode=0o755)
    os.chown(directory, NOBODY, -1)
    server = ControlServer(str(directory / "control"), status)
    with pytest.raises(ControlError, match=r"owned by nobody \(uid \d+\).*another user controls"):
        asyncio.run(server.start())
    assert not (directory / "control").exists()


@needs_root
def test_the_agent_refuses_a_socket_another_user_put_in_its_directory(tmp_path):
    directory = tmp_path / "sipstatus-agent"
    directory.mkdir(mode=0o750)
    planted = directory / "control"
    planted.write_text("")
    os.chown(planted, NOBODY, -1)
    with pytest.raises(ControlError, match=r"control: owned by nobody.*refusing to replace it"):
        asyncio.run(ControlServer(str(planted), status).start())
    assert planted.exists()


def test_the_agent_refuses_a_directory_under_one_others_may_write_to(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: anyone could rename our directory away
    with pytest.raises(ControlError, match=r"shared: writable by other users \(mode 0777\)"):
        asyncio.run(ControlServer(str(shared / "sipstatus-agent" / "control"), status).start())


def test_the_agent_accepts_its_own_directory_under_a_sticky_one(tmp_path):
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp
    path = sticky / "sipstatus-agent" / "control"

    async def serve():
        server = ControlServer(str(path), status)
        await server.start()
        try:
            return await asyncio.to_thread(request, str(path), "status")
        finally:
            await server.close()

    assert asyncio.run(serve())["command"] == "status"


# -- the client believes only root, itself or the service user ---------------------------------


def test_a_client_refuses_an_answer_from_an_untrusted_user(tmp_path):
    path = tmp_path / "control"
    served = []

    async def handler(command):
        served.append(command)
        return {}

    async def serve():
        server = ControlServer(str(path), handler)
        await server.start()
        try:
            return await asyncio.to_thread(request, str(path), "drain", 5.0, {os.geteuid() + 4242})
        finally:
            await server.close()

    with pytest.raises(ControlError, match=r"answered by a process of .*not trusting it"):
        asyncio.run(serve())
    assert served == []  # refused before the command was sent


FAKE_AGENT = """
import json, os, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.bind(sys.argv[1])
sock.listen(1)
print("listening", flush=True)
conn, _ = sock.accept()
line = conn.makefile().readline()
print("got " + line.strip(), flush=True)
conn.sendall(json.dumps({"ok": True, "status": {"state": "draining"}}).encode() + b"\\n")
"""


@needs_root
def test_a_client_refuses_a_faked_agent_of_another_user():
    # Issue 17: another user created the directory, served a socket there and
    # `drain` exited 0 with a faked status.
    base = Path(tempfile.mkdtemp(prefix="sipstatus-control-"))  # under /tmp: nobody may enter
    base.chmod(0o755)
    directory = base / "sipstatus-agent"
    directory.mkdir()
    os.chown(directory, NOBODY, -1)
    path = directory / "control"
    fake = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={pwd.getpwnam('nobody').pw_gid}", "--clear-groups",
         "/usr/bin/python3", "-c", FAKE_AGENT, str(path)],
        stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert fake.stdout is not None and fake.stdout.readline().strip() == "listening"
        with pytest.raises(ControlError, match=r"answered by a process of nobody"):
            request(str(path), "drain")
    finally:
        fake.kill()
        out, _ = fake.communicate(timeout=10)
        shutil.rmtree(base, ignore_errors=True)
    # The command never reached it: the client hung up before it wrote (the fake
    # may still have read the hang-up as an empty line).
    assert "drain" not in out


def test_the_command_line_exits_nonzero_on_an_untrusted_answer(tmp_path, monkeypatch, capsys):
    from agent.cli import EXIT_OK, control_command

    monkeypatch.setattr(control, "trusted_uids", lambda: {os.geteuid() + 4242})
    path = tmp_path / "control"

    async def serve():
        server = ControlServer(str(path), status)
        await server.start()
        try:
            return await asyncio.to_thread(control_command, "drain", str(path), False)
        finally:
            await server.close()

    code = asyncio.run(serve())
    assert code != EXIT_OK
    assert "not trusting it" in capsys.readouterr().err

