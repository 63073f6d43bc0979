"""The agent's control socket: one JSON request per line, one JSON answer."""

import asyncio
import json
import os
import socket

import pytest

from agent.control import ControlError, ControlServer, request


def run(coro):
    return asyncio.run(coro)


async def serving(path, handler, client):
    server = ControlServer(str(path), handler)
    await server.start()
    try:
        return await asyncio.to_thread(client)
    finally:
        await server.close()


def test_a_command_is_carried_out_and_the_status_comes_back(tmp_path):
    seen = []

    async def handler(command):
        seen.append(command)
        return {"state": "draining"}

    path = tmp_path / "control"
    assert run(serving(path, handler, lambda: request(str(path), "drain"))) == {"state": "draining"}
    assert seen == ["drain"]


def test_an_unknown_command_is_refused_naming_it(tmp_path):
    async def handler(command):
        raise AssertionError("not called")

    path = tmp_path / "control"
    with pytest.raises(ControlError, match="unknown command 'reboot'"):
        run(serving(path, handler, lambda: request(str(path), "reboot")))


def test_a_handler_failure_is_reported_and_the_server_goes_on(tmp_path):
    calls = []

    async def handler(command):
        calls.append(command)
        if len(calls) == 1:
            raise RuntimeError("no status yet")
        return {"state": "active"}

    path = tmp_path / "control"

    def client():
        with pytest.raises(ControlError, match="status failed: no status yet"):
            request(str(path), "status")
        return request(str(path), "status")

    assert run(serving(path, handler, client)) == {"state": "active"}


def test_garbage_gets_an_error_line(tmp_path):
    async def handler(command):
        return {}

    path = tmp_path / "control"

    def client():
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"\xff\xfe not json\n")
            return json.loads(s.makefile().readline())

    assert run(serving(path, handler, client)) == {"ok": False, "error": "request is not a JSON object on one line"}


def test_the_socket_is_not_world_accessible(tmp_path):
    async def handler(command):
        return {}

    path = tmp_path / "control"
    mode = run(serving(path, handler, lambda: os.stat(path).st_mode & 0o777))
    assert mode == 0o660


def test_a_missing_agent_is_named_in_the_error(tmp_path):
    with pytest.raises(ControlError, match="is sipstatus-agent running"):
        request(str(tmp_path / "nothing"), "status")


def test_a_second_agent_on_the_same_socket_is_refused(tmp_path):
    async def handler(command):
        return {}

    async def main():
        path = str(tmp_path / "control")
        first = ControlServer(path, handler)
        await first.start()
        try:
            with pytest.raises(ControlError, match="already listening"):
                await ControlServer(path, handler).start()
        finally:
            await first.close()

    run(main())


def test_a_stale_socket_file_is_replaced(tmp_path):
    path = tmp_path / "control"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens

    async def handler(command):
        return {"state": "active"}

    assert run(serving(path, handler, lambda: request(str(path), "status"))) == {"state": "active"}
