"""The Debian packages, built, linted, installed, used, removed and purged.

The static checks (imports against Depends, the unit's sandbox score) run
anywhere. The rest needs root: it builds with `./dev deb` (reusing a build of
the same source tree), installs build/deb/*.deb with apt-get on this machine,
runs the installed commands from /usr/bin with a clean environment and cwd=/
(so this checkout is not on sys.path), and purges them again at the end.
"""

from __future__ import annotations

import ast
import copy
import glob
import grp
import pwd
import re
import shlex
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.debian import (
    APT_ENV,
    CLEAN_ENV,
    CONF,
    PACKAGES,
    UNIT,
    Container,
    control_depends,
    etc_files,
    installed,
    run,
    third_party_imports,
    unit_values,
    unowned,
)

#: Third-party top-level imports -> the Debian package that provides them.
DEBIAN_PACKAGE_OF = {
    "dns": "python3-dnspython",
    "psutil": "python3-psutil",
    "pyroute2": "python3-pyroute2",
    "sipstatus": "python3-sipstatus",
}


# -- static checks -----------------------------------------------------------


@pytest.mark.parametrize(("package", "binary"), [("sipstatus", "python3-sipstatus"), ("agent", "sipstatus-agent")])
def test_every_import_is_a_declared_debian_dependency(package, binary):
    depends = control_depends()[binary]
    for module, where in third_party_imports(package).items():
        assert module in DEBIAN_PACKAGE_OF, (
            f"{where} imports {module!r}: find its Debian 12 package, add it to "
            f"{binary}'s Depends in packaging/debian/control and to DEBIAN_PACKAGE_OF"
        )
        assert DEBIAN_PACKAGE_OF[module] in depends, (
            f"{where} imports {module!r} but {binary} does not depend on {DEBIAN_PACKAGE_OF[module]}"
        )


def test_agent_declares_its_runtime_libraries():
    # the agent's collectors use these even where no module imports them yet
    assert {"python3-psutil", "python3-pyroute2", "python3-dnspython"} <= control_depends()["sipstatus-agent"]


def test_unit_validates_before_start_and_before_reload():
    text = UNIT.read_text()
    check = "/usr/bin/sipstatus-agent check-config /etc/sipstatus/agent.toml"
    assert unit_values(text, "ExecStartPre") == [check]
    assert unit_values(text, "ExecReload") == [check, "/bin/kill -HUP $MAINPID"]
    assert unit_values(text, "ExecStart") == ["/usr/bin/sipstatus-agent run --config /etc/sipstatus/agent.toml"]
    assert unit_values(text, "Type") == ["notify"]
    assert unit_values(text, "NotifyAccess") == ["main"]
    assert unit_values(text, "WatchdogSec") == ["30"]
    assert unit_values(text, "RuntimeDirectory") == ["sipstatus-agent"]
    assert unit_values(text, "CapabilityBoundingSet") == [""]


def test_unit_sandbox_exposure_is_ok():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True, text=True, env=CLEAN_ENV, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


# -- the built and installed packages (root) ---------------------------------


def test_lintian_reports_no_error_and_no_warning(built):
    changes = glob.glob(str(built / "*.changes"))
    assert len(changes) == 1, changes
    result = run(["lintian", "--info", "--display-experimental", "--pedantic", changes[0]], check=False)
    flagged = [line for line in result.stdout.splitlines() if line.startswith(("E:", "W:"))]
    assert not flagged, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependencies_come_from_debian(system):
    code = "import dns, psutil, pyroute2; print(dns.__file__, psutil.__file__, pyroute2.__file__)"
    for path in run(["/usr/bin/python3", "-c", code]).stdout.split():
        assert path.startswith("/usr/lib/python3/dist-packages/"), path


def test_agent_runs_from_the_installed_files(system):
    version = re.search(r'^__version__ = "([^"]+)"', (ROOT / "sipstatus/__init__.py").read_text(), re.M)[1]
    assert version in run(["/usr/bin/sipstatus-agent", "--version"]).stdout
    # python3 -v names every file it loads: the agent from /usr/share, the
    # library from dist-packages, nothing from this checkout
    loaded = run(["/usr/bin/python3", "-v", "/usr/bin/sipstatus-agent", "--version"]).stderr
    assert "/usr/share/sipstatus-agent/agent/cli.py" in loaded
    assert "/usr/lib/python3/dist-packages/sipstatus/__init__.py" in loaded
    assert str(ROOT) not in loaded


def test_shipped_conffile_passes_check_config_as_the_service_user(system):
    assert run(["dpkg-query", "-W", "-f=${Conffiles}", "sipstatus-agent"]).stdout.split()[0] == str(CONF)
    run(["/usr/bin/sipstatus-agent", "check-config", str(CONF)])
    run(["/usr/bin/sipstatus-agent", "check-config", str(CONF)], user="sipstatus")


def test_agent_modules_are_private(system):
    result = run(["/usr/bin/python3", "-c", "import agent"], check=False)
    assert result.returncode != 0 and "No module named 'agent'" in result.stderr
    assert Path("/usr/share/sipstatus-agent/agent/__init__.py").is_file()
    assert not glob.glob("/usr/lib/python3*/dist-packages/agent")


def test_library_is_importable_with_the_system_python(system):
    out = run(["/usr/bin/python3", "-c", "import sipstatus, sys; print(sipstatus.__file__)"]).stdout
    assert out.strip() == "/usr/lib/python3/dist-packages/sipstatus/__init__.py"
    run(["/usr/bin/sipstatus", "--version"])
    body = (ROOT / "spec/vectors/body/valid-typical.json").read_bytes()
    shown = subprocess.run(["/usr/bin/sipstatus", "decode"], input=body, capture_output=True, cwd="/",
                           env=CLEAN_ENV, timeout=60)
    assert shown.returncode == 0, shown.stderr


def test_library_metadata_does_not_claim_the_agent(system):
    code = ("import importlib.metadata as m; d = m.distribution('sipstatus');"
            "print(d.read_text('top_level.txt')); print([e.name for e in d.entry_points])")
    out = run(["/usr/bin/python3", "-c", code]).stdout
    assert "agent" not in out.split("[")[0]
    assert "'sipstatus'" in out and "sipstatus-agent" not in out


def test_service_user_and_conffile_permissions(system):
    user = pwd.getpwnam("sipstatus")
    assert user.pw_uid < 1000 and user.pw_dir == "/nonexistent" and user.pw_shell.endswith("nologin")
    assert grp.getgrgid(user.pw_gid).gr_name == "sipstatus"
    st = CONF.stat()
    assert (st.st_uid, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o777) == (0, "sipstatus", 0o640)


def test_installed_unit_verifies(system):
    unit = "/lib/systemd/system/sipstatus-agent.service"
    result = run(["systemd-analyze", "verify", unit], check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_man_pages_document_every_subcommand(system):
    for command in ("sipstatus", "sipstatus-agent"):
        helptext = run([f"/usr/bin/{command}", "--help"]).stdout
        subcommands = re.search(r"\{([\w,-]+)\}", helptext)
        assert subcommands, helptext
        page = run(["man", "-P", "cat", command], env={**CLEAN_ENV, "MANWIDTH": "200"}).stdout
        for sub in subcommands.group(1).split(","):
            assert re.search(rf"^\s+{re.escape(sub)}\b", page, re.M), f"man {command} lacks {sub!r}"


def break_one_key(text: str) -> tuple[str, str]:
    """A copy of the config with one documented key set to a value of the
    wrong type, and that key's name. Keys may be active or commented out
    ("# key = value" under a "[table]" or "# [table]" header)."""
    config = tomllib.loads(text)
    table: list[str] = []
    for line in text.splitlines():
        header = re.match(r"^#?\s*\[([A-Za-z0-9_.-]+)\]\s*$", line)
        if header:
            table = header.group(1).split(".")
            continue
        assignment = re.match(r"^#?\s*([A-Za-z0-9_-]+)\s*=\s*(.+)$", line)
        if not assignment:
            continue
        try:
            value = tomllib.loads(f"v = {assignment.group(2)}")["v"]
        except tomllib.TOMLDecodeError:
            continue  # prose in a comment
        wrong: object
        if isinstance(value, bool):
            wrong = "maybe"
        elif isinstance(value, int | float):
            wrong = "not-a-number"
        elif isinstance(value, str):
            wrong = 12345
        else:
            continue
        broken = copy.deepcopy(config)
        node = broken
        for part in table:
            node = node.setdefault(part, {})
        node[assignment.group(1)] = wrong
        return to_toml(broken), assignment.group(1)
    raise AssertionError("no key with a scalar value found in the shipped agent.toml")


def to_toml(config: dict, prefix: str = "") -> str:
    scalars = [f"{k} = {toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for key, value in config.items():
        if isinstance(value, dict):
            out.append(to_toml(value, f"{prefix}.{key}" if prefix else key))
    return "\n".join(out) + "\n"


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def test_broken_conffile_fails_the_start_check_naming_the_key(system):
    original = CONF.read_bytes()
    broken, key = break_one_key(original.decode())
    pre = unit_values(Path("/lib/systemd/system/sipstatus-agent.service").read_text(), "ExecStartPre")
    argv = shlex.split(pre[0].lstrip("-@+!"))
    try:
        CONF.write_text(broken)
        result = run(argv, check=False, user="sipstatus")
    finally:
        CONF.write_bytes(original)
    assert result.returncode != 0, f"check-config accepted {key} broken:\n{broken}"
    assert key in result.stdout + result.stderr, result.stdout + result.stderr


# -- the unit under a real systemd (root) -------------------------------------
# PID 1 is not systemd on the development and CI machines, so the unit is run
# by a systemd booted with systemd-nspawn on an overlay of this machine's root
# (the packages and their dependencies are installed below it by `system`).

PROBE = """
import os, signal, sys, time
sys.path.insert(0, "/usr/share/sipstatus-agent")
from agent import sdnotify
import psutil, socket
from pyroute2 import IPRoute
asterisk = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "asterisk"]
report = {
    "uid": os.getuid(),
    "watchdog": sdnotify.watchdog_period(),
    "cpu": psutil.cpu_percent(0.05) >= 0 and psutil.virtual_memory().total > 0,
    "asterisk": [p.memory_info().rss > 0 and p.cpu_times().user >= 0 for p in asterisk],
    "links": len(IPRoute().get_links()),
    "manager_conf": open("/etc/asterisk/manager.conf").read().strip(),
}
for path in ("/etc/sipstatus/x", "/usr/x", "/root/x"):
    try:
        open(path, "w")
        report[path] = "written"
    except OSError as err:
        report[path] = err.strerror
sock = socket.socket(socket.AF_UNIX)
sock.bind("/run/sipstatus-agent/control")
print(report, flush=True)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
sdnotify.ready("probe ready")
while not stop:
    sdnotify.watchdog()
    time.sleep(0.2)
sdnotify.stopping()
print("probe stopped", flush=True)
"""


def test_sandbox_lets_the_agent_see_what_it_needs(container):
    """A probe stands in for ExecStart under the unit's whole sandbox."""
    (container.root / "usr/local/lib/sipstatus-probe.py").write_text(PROBE)
    dropin = container.root / "etc/systemd/system/sipstatus-agent.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "probe.conf").write_text(
        "[Service]\nExecStart=\nExecStart=/usr/bin/python3 /usr/local/lib/sipstatus-probe.py\n")
    try:
        started = container.sh("systemctl daemon-reload && systemctl start sipstatus-agent && "
                               "systemctl show -p StatusText -p ActiveState -p User sipstatus-agent")
        assert started.returncode == 0, started.stdout + started.stderr + container.sh(
            "journalctl -u sipstatus-agent -n 30 --no-pager -o cat").stdout
        assert "StatusText=probe ready" in started.stdout and "ActiveState=active" in started.stdout
        stopped = container.sh("systemctl stop sipstatus-agent; systemctl is-active sipstatus-agent; "
                               "test -e /run/sipstatus-agent && echo runtime-dir-left")
        assert stopped.stdout.split() == ["inactive"], stopped.stdout + stopped.stderr
        journal = container.sh("journalctl -u sipstatus-agent --no-pager -o cat").stdout
        report = ast.literal_eval(next(line for line in journal.splitlines() if line.startswith("{'uid'")))
        assert report["uid"] == container_uid(container, "sipstatus")
        assert report["watchdog"] == 30.0
        assert report["cpu"] and report["links"] >= 1
        assert report["asterisk"] == [True], "the asterisk process (another user's) must stay visible"
        assert report["manager_conf"] == "[general]", "sipstatus reads manager.conf through group asterisk"
        assert report["/etc/sipstatus/x"] == report["/usr/x"] == "Read-only file system"
        assert report["/root/x"] in ("Read-only file system", "Permission denied", "No such file or directory")
        assert "probe stopped" in journal
    finally:
        shutil.rmtree(dropin)
        container.sh("systemctl daemon-reload")


def eventually(container: Container, command: str, text: str, within: float = 10) -> bool:
    """Whether the command's output shows the text within a few seconds
    (journald takes a moment to store what a service wrote to stderr)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if text in container.sh(command).stdout:
            return True
        time.sleep(0.3)
    return False


def container_uid(container: Container, user: str) -> int:
    return int(container.sh(f"id -u {user}").stdout)


def test_service_starts_reloads_and_refuses_a_broken_config(container):
    helptext = container.sh("sipstatus-agent --help").stdout
    # Once a skip while `run` did not exist (issue 5); an installed agent
    # without it is now a regression.
    assert re.search(r"\{[\w,-]*\brun\b", helptext), f"the installed sipstatus-agent has no `run` command:\n{helptext}"
    assert container.boot_state == ["ActiveState=active", "Result=success"], (
        "the enabled service did not come up at boot")
    conf = container.root / "etc/sipstatus/agent.toml"
    good = conf.read_text()
    broken, key = break_one_key(good)
    started = container.sh("systemctl start sipstatus-agent && systemctl show -p MainPID --value sipstatus-agent")
    logs = container.sh("journalctl -u sipstatus-agent -n 40 --no-pager -o cat").stdout
    assert started.returncode == 0, started.stderr + logs
    pid = started.stdout.strip()
    assert container.sh("systemctl reload sipstatus-agent").returncode == 0, logs
    conf.write_text(broken)
    failed = container.sh("systemctl reload sipstatus-agent")
    after = container.sh("systemctl show -p MainPID --value -p ActiveState sipstatus-agent").stdout.split()
    assert failed.returncode != 0 and after == [pid, "active"], "a broken reload must keep the agent running"
    assert eventually(container, "systemctl status sipstatus-agent --no-pager -n 10", key)
    restarted = container.sh("systemctl restart sipstatus-agent")
    assert restarted.returncode != 0
    # (while Restart= retries, `systemctl status` shows only the log since the
    # last retry; the journal keeps each attempt's message)
    assert eventually(container, "journalctl -u sipstatus-agent -n 10 --no-pager -o cat", key)
    conf.write_text(good)
    container.sh("systemctl reset-failed sipstatus-agent")
    assert container.sh("systemctl start sipstatus-agent").returncode == 0
    stopped = container.sh("systemctl stop sipstatus-agent; systemctl show -p Result --value sipstatus-agent")
    assert stopped.stdout.strip() == "success", container.sh(
        "journalctl -u sipstatus-agent -n 40 --no-pager -o cat").stdout
    assert "Traceback" not in container.sh("journalctl -u sipstatus-agent --no-pager -o cat").stdout


def test_remove_keeps_the_config_and_purge_removes_it_and_the_user(system):
    run(["apt-get", "remove", "-y", "-q", *PACKAGES], env=APT_ENV, timeout=300)
    assert not Path("/usr/bin/sipstatus-agent").exists()
    assert not Path("/usr/share/sipstatus-agent").exists()
    assert not glob.glob("/usr/lib/python3/dist-packages/sipstatus*")
    assert CONF.exists()  # a conffile stays until purge
    pwd.getpwnam("sipstatus")

    run(["apt-get", "purge", "-y", "-q", *PACKAGES], env=APT_ENV, timeout=300)
    assert not any(installed(p) for p in PACKAGES)
    assert not Path("/etc/sipstatus").exists()
    with pytest.raises(KeyError):
        pwd.getpwnam("sipstatus")
    with pytest.raises(KeyError):
        grp.getgrnam("sipstatus")
    left = unowned(etc_files() - system["etc"])
    assert not left, f"purge left files in /etc: {sorted(left)}"
