"""The README's main-job command, `./dev demo`, works on this machine, and
its summary says what it should; `./dev demo --single` (the one-agent demo)
too. The summary's arithmetic (demo/report.py) is checked on its own."""

import json
import subprocess

import pytest

from demo import report
from demo.report import Phase, Recording
from tests.support import ROOT
from tests.support.kamailio import have_tools


def test_the_single_demo_shows_notifies_a_drain_and_the_final_notify():
    result = subprocess.run([str(ROOT / "dev"), "demo", "--single", "--seconds", "3"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "subscribed for 600 s" in out
    assert "NOTIFY [active] seq 1 " in out
    assert "sipstatus-agent drain" in out and "sipstatus-agent undrain" in out
    terminated = [line for line in out.splitlines() if "NOTIFY [terminated]" in line]
    assert len(terminated) == 1 and "(agent shutting down)" in terminated[0]
    assert "agent exited with status 0" in out


# -- ./dev demo: the whole loop -------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`./dev demo --ci` once, with 10 s phases: its output and its figures."""
    tmp = tmp_path_factory.mktemp("demo")
    plot, figures = tmp / "loop.png", tmp / "summary.json"
    result = subprocess.run([str(ROOT / "dev"), "demo", "--ci", "--phase", "10", "--plot", str(plot),
                             "--json", str(figures)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    summary = json.loads(figures.read_text()) if figures.exists() else None
    return result, summary, plot


needs_peers = pytest.mark.skipif(not have_tools("jansson"), reason="needs Debian packages kamailio, "
                                 "kamailio-extra-modules, sip-tester, iproute2 (./dev test installs them)")


@pytest.mark.interop
@pytest.mark.slow
@needs_peers
def test_the_demo_splits_calls_by_the_weights_kamailio_held(demo_run):
    result, summary, _ = demo_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert [p["name"] for p in summary["phases"]] == ["steady", "hog", "drain", "kill"]
    for phase in summary["phases"]:
        assert phase["ok"] and phase["counted"] > 0, phase
        for node, split in phase["nodes"].items():
            assert abs(split["calls"] - split["expected"]) <= split["bound"], (phase["name"], node, split)
            assert split["at_zero"] == 0, (phase["name"], node, split)
    # Calls reached more than one node while they all took calls.
    steady = summary["phases"][0]["nodes"]
    assert sum(1 for s in steady.values() if s["calls"]) >= 2, steady


@pytest.mark.interop
@pytest.mark.slow
@needs_peers
def test_the_drained_node_gets_no_call_once_kamailio_has_the_drain(demo_run):
    _, summary, _ = demo_run
    drain = summary["drain"]
    assert drain["node"] == "ast3" and drain["seen_after"] is not None and drain["late"] == 0, drain
    assert summary["phases"][2]["nodes"]["ast3"]["calls"] <= summary["phases"][0]["nodes"]["ast3"]["calls"]


@pytest.mark.interop
@pytest.mark.slow
@needs_peers
def test_the_killed_node_is_out_within_its_validity(demo_run):
    _, summary, _ = demo_run
    kill = summary["kill"]
    allowance = summary["tolerance"]["push_allowance"]
    assert kill["node"] == "ast1" and kill["late"] == 0, kill
    assert kill["out_after"] is not None and kill["out_after"] <= kill["validity"] + allowance, kill


@pytest.mark.interop
@pytest.mark.slow
@needs_peers
def test_the_demo_prints_a_summary_and_writes_its_plot(demo_run):
    result, summary, plot = demo_run
    out = result.stdout
    assert "sipstatus demo: summary" in out and f"plot   {plot}" in out
    assert "drain  ast3:" in out and "kill   ast1:" in out
    assert summary["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


# -- the summary's arithmetic ----------------------------------------------------------------


def recording(polls, calls, nodes=("a", "b")):
    return Recording(nodes=list(nodes), polls=polls, calls=calls)


PHASE = Phase("steady", "steady load", 0.0, 100.0)


def test_a_split_that_follows_the_weights_holds():
    polls = [(float(t), {"a": 75, "b": 25}) for t in range(0, 101)]
    calls = {"a": [0.5 + i * 0.1 for i in range(300)], "b": [0.55 + i * 0.1 for i in range(100)]}
    split = report.split(recording(polls, calls), PHASE)
    assert split.ok and split.counted == 400 and split.left_out == 0
    a, b = split.nodes
    assert (a.calls, a.expected) == (300, 300.0) and (b.calls, b.expected) == (100, 100.0)


def test_a_split_far_from_the_weights_fails():
    polls = [(float(t), {"a": 50, "b": 50}) for t in range(0, 101)]
    calls = {"a": [0.5 + i * 0.1 for i in range(350)], "b": [0.55 + i * 0.1 for i in range(50)]}
    split = report.split(recording(polls, calls), PHASE)
    assert not split.ok and split.nodes[0].expected == 200.0


def test_a_call_to_a_node_at_weight_0_fails_the_split():
    polls = [(float(t), {"a": 100, "b": 0}) for t in range(0, 101)]
    split = report.split(recording(polls, {"a": [1.5, 2.5], "b": [3.5]}), PHASE)
    assert not split.ok and split.nodes[1].at_zero == 1


def test_calls_while_the_weights_changed_between_two_readings_are_left_out():
    polls = [(1.0, {"a": 100, "b": 0}), (2.0, {"a": 0, "b": 100}), (3.0, {"a": 0, "b": 100})]
    split = report.split(recording(polls, {"a": [1.5], "b": [2.5], "x": []}), PHASE)
    assert split.counted == 1 and split.left_out == 1 and split.ok


def test_the_drain_counts_calls_after_the_proxy_had_weight_0_allowing_for_one_in_flight():
    polls = [(9.0, {"a": 50}), (10.1, {"a": 0})]
    rec = Recording(nodes=["a"], polls=polls, drained="a", drain_started=9.8, drain_at=10.0,
                    calls={"a": [9.5, 10.2, 10.3, 11.0]})
    result = report.drain_result(rec)
    assert result.seen_after == pytest.approx(0.1) and result.late == 1 and not result.ok


def test_the_kill_must_show_in_kamailio_within_the_validity_and_the_allowance():
    polls = [(20.0, {"a": 50}), (25.5, {"a": 50}), (26.5, {"a": 0})]
    rec = Recording(nodes=["a"], polls=polls, killed="a", kill_at=20.0, validity=5,
                    calls={"a": [19.0, 26.4]})
    result = report.kill_result(rec)
    assert result.out_after == pytest.approx(6.5) and result.late == 0 and not result.ok
    rec.validity = 6
    assert report.kill_result(rec).ok
