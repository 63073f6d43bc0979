"""The packaging tier's fixtures: the packages built (`built`), installed
with apt-get and purged afterwards (`system`), and a systemd booted on them
(`container`). Each module gets its own (module scope), as before."""

from __future__ import annotations

import glob
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.debian import (
    APT_ENV,
    OUT,
    PACKAGES,
    Container,
    etc_files,
    install_tools,
    purge,
    run,
)


@pytest.fixture(scope="module")
def built() -> Path:
    if os.geteuid() != 0:
        pytest.skip("builds and installs Debian packages: needs root (CI runs as root)")
    # Once a skip while the agent was being written (branch agent-eyes); now
    # both are in the tree, so their absence is a regression, not a reason to skip.
    missing = [p for p in ("agent/cli.py", "packaging/agent.toml") if not (ROOT / p).exists()]
    assert not missing, f"{', '.join(missing)} missing: the agent package needs its command line and conffile"
    prebuilt = os.environ.get("SIPSTATUS_DEBS")
    if prebuilt:  # packages built elsewhere (./dev fresh-check: on Debian 12, installed on 13)
        assert glob.glob(f"{prebuilt}/*.deb"), f"SIPSTATUS_DEBS={prebuilt} holds no .deb"
        return Path(prebuilt)
    result = subprocess.run(["./dev", "deb"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return OUT


@pytest.fixture(scope="module")
def system(built):
    """The packages installed with apt-get; purged again afterwards. /etc is
    taken before, after every other package the module needs is installed."""
    install_tools()
    purge()  # a leftover from an interrupted run
    before = {"etc": etc_files()}
    debs = sorted(glob.glob(str(built / "*.deb")))
    assert {Path(d).name.split("_")[0] for d in debs} == set(PACKAGES)
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *debs]
    result = run(install, check=False, env=APT_ENV, timeout=600)
    if result.returncode != 0:  # stale or missing package lists on a fresh machine
        run(["apt-get", "update", "-q"], env=APT_ENV, timeout=600)
        run(install, env=APT_ENV, timeout=600)
    yield before
    purge()


@pytest.fixture(scope="module")
def container(system):
    box = Container(Path(tempfile.mkdtemp(prefix="sipstatus-nspawn-", dir="/var/tmp")))
    try:
        box.boot()
        # installed and enabled below the overlay: systemd started it at boot
        box.boot_state = sorted(box.sh("systemctl show -p ActiveState -p Result sipstatus-agent").stdout.split())
        box.sh("systemctl stop sipstatus-agent; systemctl reset-failed sipstatus-agent")
        # an `asterisk` process of another user, and Asterisk's manager.conf
        prepared = box.sh(
            "cp /bin/sleep /usr/local/bin/asterisk && "
            "systemd-run --unit=asterisk -p User=daemon /usr/local/bin/asterisk infinity && "
            "mkdir -p /etc/asterisk && echo '[general]' > /etc/asterisk/manager.conf && "
            "(getent group asterisk || addgroup --system asterisk) >/dev/null && "
            "adduser --quiet sipstatus asterisk && "
            "chown root:asterisk /etc/asterisk/manager.conf && chmod 0640 /etc/asterisk/manager.conf")
        assert prepared.returncode == 0, prepared.stdout + prepared.stderr
        yield box
    finally:
        box.shutdown()
