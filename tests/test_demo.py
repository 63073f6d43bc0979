"""The README's main-job command (`./dev demo`) works on this machine."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_shows_notifies_a_drain_and_the_final_notify():
    result = subprocess.run([sys.executable, "-m", "agent.demo", "--seconds", "3"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "subscribed for 600 s" in out
    assert "NOTIFY [active] seq 1 " in out
    assert "sipstatus-agent drain" in out and "sipstatus-agent undrain" in out
    terminated = [line for line in out.splitlines() if "NOTIFY [terminated]" in line]
    assert len(terminated) == 1 and "(agent shutting down)" in terminated[0]
    assert "agent exited with status 0" in out
