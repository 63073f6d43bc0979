"""agent.sdnotify against a real unix datagram socket standing in for systemd."""

import os
import socket
import time

import pytest

from agent import sdnotify


@pytest.fixture
def manager(tmp_path):
    """A bound datagram socket at a path, and the env that points at it."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, {"NOTIFY_SOCKET": str(path)}
    sock.close()


def received(sock) -> list[str]:
    data = sock.recv(4096)
    assert data.endswith(b"\n")
    return data.decode().splitlines()


def test_ready_with_status(manager):
    sock, env = manager
    assert sdnotify.ready("listening on udp 5070", env=env) is True
    assert received(sock) == ["READY=1", "STATUS=listening on udp 5070"]


def test_each_message(manager):
    sock, env = manager
    assert sdnotify.ready(env=env)
    assert received(sock) == ["READY=1"]
    assert sdnotify.watchdog(env=env)
    assert received(sock) == ["WATCHDOG=1"]
    assert sdnotify.status("3 subscriptions", env=env)
    assert received(sock) == ["STATUS=3 subscriptions"]
    assert sdnotify.stopping("removing publications", env=env)
    assert received(sock) == ["STOPPING=1", "STATUS=removing publications"]


def test_reloading_carries_monotonic_usec(manager):
    sock, env = manager
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading("reloading /etc/sipstatus/agent.toml", env=env)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = received(sock)
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after
    assert lines[2] == "STATUS=reloading /etc/sipstatus/agent.toml"


def test_abstract_namespace():
    name = f"sipstatus-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert sdnotify.watchdog(env={"NOTIFY_SOCKET": "@" + name})
        assert received(sock) == ["WATCHDOG=1"]


def test_newlines_cannot_inject_fields(manager):
    sock, env = manager
    assert sdnotify.status("bad\nREADY=1\r\nX", env=env)
    assert received(sock) == ["STATUS=bad READY=1  X"]


def test_utf8_status(manager):
    sock, env = manager
    assert sdnotify.status("µ-law ok", env=env)
    assert received(sock) == ["STATUS=µ-law ok"]


@pytest.mark.parametrize("value", [None, "", "relative/path", "@", "vsock:2:1234"])
def test_no_op_without_usable_socket(value):
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    assert sdnotify.ready(env=env) is False
    assert sdnotify.watchdog(env=env) is False


def test_reads_process_environment(manager, monkeypatch):
    sock, env = manager
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert sdnotify.watchdog() is True
    assert received(sock) == ["WATCHDOG=1"]
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.watchdog() is False


def test_send_failure_is_not_raised(tmp_path):
    # a path nobody listens on: ENOENT / ECONNREFUSED become False
    assert sdnotify.ready(env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    # a stream socket at the path: the datagram is refused
    path = tmp_path / "stream"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        assert sdnotify.ready(env={"NOTIFY_SOCKET": str(path)}) is False


def test_notify_without_fields_sends_nothing(manager):
    sock, env = manager
    assert sdnotify.notify(env=env) is False
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": "500000"}, 0.5),
    ],
)
def test_watchdog_period(env, expected):
    assert sdnotify.watchdog_period(env) == expected
