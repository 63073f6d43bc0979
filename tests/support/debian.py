"""The Debian packages under test: where they are built, how the tests run
the installed commands (from / with a clean environment), and a systemd
booted with systemd-nspawn on an overlay of this root (`Container`).
Shared by tests/packaging/ (its fixtures are in tests/packaging/conftest.py)."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT

DEBIAN = ROOT / "packaging" / "debian"
UNIT = DEBIAN / "sipstatus-agent.service"
OUT = ROOT / "build" / "deb"
PACKAGES = ("python3-sipstatus", "sipstatus-agent")
CONF = Path("/etc/sipstatus/agent.toml")
#: A clean environment for everything run from the installed packages.
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}
APT_ENV = {**CLEAN_ENV, "DEBIAN_FRONTEND": "noninteractive"}


def control_depends() -> dict[str, set[str]]:
    """Binary package -> the package names in its Depends (substvars left out)."""
    depends: dict[str, set[str]] = {}
    for stanza in (DEBIAN / "control").read_text().split("\n\n"):
        fields = dict(re.findall(r"^(\S+):((?:.*\n?)(?:^ .*\n?)*)", stanza, re.M))
        if "Package" in fields:
            names = {
                re.split(r"[\s(]", item.strip())[0]
                for item in fields.get("Depends", "").split(",")
                if item.strip() and not item.strip().startswith("$")
            }
            depends[fields["Package"].strip()] = names
    return depends


def third_party_imports(package: str) -> dict[str, str]:
    """Top-level modules imported by a package's code that are neither the
    standard library nor the package itself -> one file importing each."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != package and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def unit_values(text: str, key: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{key}=(.*)$", text, re.M)]



# -- the built and installed packages (root) ---------------------------------


def run(argv: list[str], *, check: bool = True, user: str | None = None, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run from / with a clean environment, optionally as a system user."""
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]
    result = subprocess.run(argv, cwd="/", env=env or CLEAN_ENV, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def installed(package: str) -> bool:
    result = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], check=False)
    return result.returncode == 0 and result.stdout.startswith(("ii", "iU", "iF", "rc"))


def purge() -> None:
    present = [p for p in PACKAGES if installed(p)]
    if present:
        run(["apt-get", "purge", "-y", "-q", *present], env=APT_ENV, timeout=300)


def etc_files() -> set[str]:
    return {str(p) for p in Path("/etc").rglob("*")}


def unowned(paths: set[str]) -> set[str]:
    """Those of the paths that no installed package owns."""
    return {p for p in paths if run(["dpkg-query", "-S", p], check=False).returncode != 0}


#: What this module itself runs besides the packages under test (./dev test
#: installs them up front; this is for a run of this file alone).
TOOLS = {"systemd-nspawn": "systemd-container", "systemd-analyze": "systemd", "man": "man-db"}


def install_tools() -> None:
    """Installing a tool changes /etc too (systemd-container enables
    machines.target), so every one is in place before the snapshot."""
    missing = sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=APT_ENV, timeout=600)


def in_chroot() -> bool:
    """Whether this process's / differs from init's (./dev fresh-check runs
    the suite in a chroot)."""
    try:
        ours, init = os.stat("/"), os.stat("/proc/1/root/")
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) != (init.st_dev, init.st_ino)


class Container:
    """A systemd booted in a container whose root is an overlay of /."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.init_pid = 0
        self.boot_state: list[str] = []  # sorted "Property=value" lines

    def boot(self) -> None:
        for d in ("upper", "work", "root"):
            (self.base / d).mkdir(parents=True)
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir=/,upperdir={self.base}/upper,workdir={self.base}/work", str(self.root)])
        log = open(self.base / "nspawn.log", "wb")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "--keep-unit", "--register=no",
             "--machine=sipstatus-test", "--console=passive", "-b"],
            stdout=log, stderr=subprocess.STDOUT, env=CLEAN_ENV, cwd="/")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.nspawn.poll() is None:
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text().split()
            if children and self.sh("systemctl is-system-running", pid=int(children[0])).stdout.strip() in (
                    "running", "degraded"):
                self.init_pid = int(children[0])
                return
            time.sleep(0.5)
        where = " (this runs in a chroot: / is not PID 1's root)" if in_chroot() else ""
        pytest.skip(f"systemd-nspawn could not boot a container here{where}: "
                    + (self.base / "nspawn.log").read_text(errors="replace")[-600:])

    def sh(self, script: str, pid: int = 0) -> subprocess.CompletedProcess[str]:
        return run(["nsenter", "-t", str(pid or self.init_pid), "-a", "sh", "-c", script],
                   check=False, timeout=120)

    def shutdown(self) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.terminate()  # nspawn halts the container's systemd cleanly
            try:
                self.nspawn.wait(30)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(10)
        run(["umount", "-l", str(self.root)], check=False)
        shutil.rmtree(self.base, ignore_errors=True)
