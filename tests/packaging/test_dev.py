"""`./dev` on a machine that lacks something: one line naming what is
missing and how to fix it, never a stack trace.

Each test runs a copy of ./dev in a temporary directory, with stand-ins for
the system tools (on PATH before the real ones) that make the machine look
the way the test needs: no root, no registry, a broken virtualenv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT


def checkout(tmp_path: Path) -> Path:
    """A copy of the files ./dev reads before it runs anything else."""
    where = tmp_path / "checkout"
    where.mkdir()
    for name in ("dev", "tests/peers/lib.sh", "setup.py", "requirements.txt", "requirements-test.txt", "README.md"):
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, where / name)
    return where


def stub(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


def run_dev(where: Path, *args: str, stubs: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    if stubs is not None:
        path = f"{stubs}:{path}"
    base = {"PATH": path, "HOME": str(where), "LC_ALL": "C.UTF-8", "TMPDIR": str(where)}
    return subprocess.run([str(where / "dev"), *args], cwd="/", env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=600)


def assert_one_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The failure's own message: the last line of stderr, starting `dev: `."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("dev: ")]
    assert len(lines) == 1 and result.stderr.splitlines()[-1] == lines[0], result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_check_with_a_broken_venv_says_to_run_dev_test(tmp_path):
    where = checkout(tmp_path)
    (where / ".venv" / "bin").mkdir(parents=True)
    (where / ".venv" / "bin" / "python").symlink_to("/usr/bin/python3.0-removed")  # Python upgraded away
    result = run_dev(where, "check")
    assert_one_line(result, ".venv is missing or broken", "run ./dev test")


def test_check_without_a_venv_says_to_run_dev_test(tmp_path):
    result = run_dev(checkout(tmp_path), "check")
    assert_one_line(result, ".venv is missing or broken", "run ./dev test")


def test_missing_debian_packages_without_root_name_them_and_root(tmp_path):
    where = checkout(tmp_path)
    stubs = tmp_path / "bin"
    stub(stubs, "dpkg-query", "exit 1")  # nothing installed
    stub(stubs, "id", 'echo 1000')  # not root
    stub(stubs, "sudo", 'echo "sudo: a password is required" >&2; exit 1')
    result = run_dev(where, "test", stubs=stubs)
    line = assert_one_line(result, "needs root", "run ./dev as root", "sudo")
    assert "sip-tester" in line and "kamailio" in line


def test_an_unreachable_debian_registry_is_one_line_naming_it(tmp_path):
    where = checkout(tmp_path)
    stubs = tmp_path / "bin"
    stub(stubs, "dpkg-query", "exit 1")
    stub(stubs, "id", "echo 0")
    stub(stubs, "apt-get", "echo \"E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease "
                           "Temporary failure resolving 'deb.debian.org'\" >&2; exit 100")
    result = run_dev(where, "test", stubs=stubs)
    assert_one_line(result, "apt-get update could not reach the Debian registry",
                    "Temporary failure resolving", "sipstatus-apt.log")


@pytest.mark.slow
def test_an_unreachable_pypi_is_one_line_naming_it(tmp_path):
    where = checkout(tmp_path)
    stubs = tmp_path / "bin"
    stub(stubs, "dpkg-query", "echo 'install ok installed'")  # every Debian package there
    pip = {  # no configuration file, no local wheels: an index on a closed port
        "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_RETRIES": "0", "PIP_TIMEOUT": "5", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    result = run_dev(where, "test", stubs=stubs, env=pip)
    assert_one_line(result, "pip could not install the pinned test requirements into .venv",
                    "network to PyPI", ".venv/pip.log")


def test_peers_builds_each_peer_script_and_not_their_shared_library(tmp_path):
    # tests/peers/ holds lib.sh beside the peer scripts; a loop over *.sh
    # once ran the library as a peer (CI: "lib.sh: Permission denied").
    where = checkout(tmp_path)
    record = tmp_path / "built"
    for peer in ("asterisk", "opensips"):
        script = where / "tests" / "peers" / f"{peer}.sh"
        script.write_text(f"#!/bin/sh\necho \"{peer} $*\" >> {record}\n")
        script.chmod(0o755)
    result = run_dev(where, "peers")
    assert result.returncode == 0, result.stdout + result.stderr
    assert record.read_text().splitlines() == ["asterisk build", "opensips build"]
