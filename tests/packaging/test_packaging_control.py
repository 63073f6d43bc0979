"""The control socket through the packaged unit under a real systemd (issue 17
items 3 and 4): the agent running as `sipstatus` and the operator's commands
meet at /run/sipstatus-agent/control; root and members of the group
`sipstatus` may drain, undrain and read the status; other users may not.

Same machinery as test_packaging.py (needs root): the packages built and
installed, a systemd booted with systemd-nspawn on an overlay of this root.
"""

from __future__ import annotations

import json
import shlex

import pytest

from tests.support.debian import UNIT, Container, unit_values

pytestmark = pytest.mark.slow


def test_the_units_descriptor_limit_leaves_room_beyond_the_connection_cap():
    from agent.config import NotifierConfig
    from sipstatus.net.service import FD_RESERVE

    (limit,) = unit_values(UNIT.read_text(), "LimitNOFILE")
    assert int(limit) >= NotifierConfig().max_connections + FD_RESERVE


def as_user(box: Container, user: str | None, command: str):
    """Run `command` in the container as `user` (None: root), with its groups."""
    if user is not None:
        command = f"setpriv --reuid={user} --regid={user} --init-groups -- {command}"
    return box.sh(f"cd / && {command}")


def state(box: Container, user: str | None) -> str:
    result = as_user(box, user, "sipstatus-agent status --json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)["state"]


@pytest.fixture(scope="module")
def agent(container):
    box = container
    made = box.sh("id alice >/dev/null 2>&1 || adduser --disabled-password --gecos '' --quiet alice; "
                  "adduser --quiet alice sipstatus; "
                  "id mallory >/dev/null 2>&1 || adduser --disabled-password --gecos '' --quiet mallory")
    assert made.returncode == 0, made.stdout + made.stderr
    started = box.sh("systemctl reset-failed sipstatus-agent; systemctl start sipstatus-agent")
    journal = box.sh("journalctl -u sipstatus-agent -n 40 --no-pager -o cat").stdout
    assert started.returncode == 0, started.stderr + journal
    yield box
    box.sh("systemctl stop sipstatus-agent")


def test_the_unit_gives_the_socket_to_the_service_user_and_its_group(agent):
    listing = agent.sh("stat -c '%U %G %a %F' /run/sipstatus-agent /run/sipstatus-agent/control")
    assert listing.stdout.splitlines() == [
        "sipstatus sipstatus 750 directory", "sipstatus sipstatus 660 socket"], listing.stderr


def test_the_agent_under_the_unit_listens_where_the_commands_look(agent):
    # Before issue 17 it bound /tmp/sipstatus-agent-<uid>/ in its private /tmp.
    assert state(agent, None) in ("active", "overloaded", "down")
    journal = agent.sh("journalctl -u sipstatus-agent --no-pager -o cat").stdout
    assert "/tmp/sipstatus-agent" not in journal


def test_root_drains_and_undrains(agent):
    drained = as_user(agent, None, "sipstatus-agent drain")
    assert drained.returncode == 0, drained.stderr
    assert state(agent, None) == "draining"
    undrained = as_user(agent, None, "sipstatus-agent undrain")
    assert undrained.returncode == 0, undrained.stderr
    assert state(agent, None) != "draining"


def test_a_member_of_the_group_drains_undrains_and_reads_the_status(agent):
    drained = as_user(agent, "alice", "sipstatus-agent drain")
    assert drained.returncode == 0, drained.stderr
    assert state(agent, "alice") == "draining"
    assert state(agent, None) == "draining"  # the same agent
    undrained = as_user(agent, "alice", "sipstatus-agent undrain")
    assert undrained.returncode == 0, undrained.stderr
    assert state(agent, "alice") != "draining"


@pytest.mark.parametrize("command", ["status", "drain", "undrain"])
def test_another_user_is_refused(agent, command):
    refused = as_user(agent, "mallory", f"sipstatus-agent {shlex.quote(command)}")
    assert refused.returncode != 0
    assert "permission denied" in refused.stderr, refused.stderr
    assert state(agent, None) != "draining"


def test_another_user_cannot_take_the_service_directory_while_the_agent_is_stopped(agent):
    agent.sh("systemctl stop sipstatus-agent")
    try:
        squat = as_user(agent, "mallory", "mkdir /run/sipstatus-agent")
        assert squat.returncode != 0  # /run is root's
        refused = as_user(agent, "alice", "sipstatus-agent status")
        assert refused.returncode != 0 and "is sipstatus-agent running?" in refused.stderr
    finally:
        assert agent.sh("systemctl start sipstatus-agent").returncode == 0
    assert state(agent, "alice") != "draining"
