"""The SIP OPTIONS probe: its tiny SIP adapter, its window statistics, and
real round trips to SIPp (Debian sip-tester) and to UDP ports that never
answer."""

import asyncio
import shutil
import signal
import socket
import subprocess
import time

import pytest

from agent.collectors.probe import (
    ProbeCollector,
    ProbeStats,
    SipOptionsCodec,
    Target,
    nearest_rank,
)
from agent.config import ProbeConfig
from tests.support import SIPP_SCENARIOS
from tests.support.ports import free_port

SCENARIO = SIPP_SCENARIOS / "options_uas.xml"


def run(coro, timeout=20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- adapter ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "host", "port"),
    [("sip:127.0.0.1:5060", "127.0.0.1", 5060), ("sip:pbx.example.net", "pbx.example.net", 5060),
     ("sip:[::1]:5070", "::1", 5070), ("sip:ping@10.0.0.1:5080", "10.0.0.1", 5080)],
)
def test_target_parses_sip_uris(uri, host, port):
    assert Target.parse(uri) == Target(host, port)


@pytest.mark.parametrize("uri", ["http://x", "sip:", "sip:host:0", "sip:host:70000", "sip:host:port"])
def test_bad_targets_are_refused_with_the_uri(uri):
    with pytest.raises(ValueError, match="probe target"):
        Target.parse(uri)


def test_options_request_has_the_rfc_3261_mandatory_headers():
    request = SipOptionsCodec().request(Target("127.0.0.1", 5062), ("127.0.0.1", 40000), 7)
    text = request.data.decode()
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    assert lines[0] == "OPTIONS sip:127.0.0.1:5062 SIP/2.0"
    names = [line.split(":", 1)[0] for line in lines[1:]]
    for name in ("Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Content-Length"):
        assert name in names
    assert f"branch={request.branch};" in text and request.branch.startswith("z9hG4bK")
    assert "CSeq: 7 OPTIONS" in lines and body == ""


def test_responses_are_read_in_long_and_compact_form():
    codec = SipOptionsCodec()
    long_form = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:4000;branch=z9hG4bKabc;rport=4000\r\nCall-ID: x@y\r\nCSeq: 1 OPTIONS\r\n\r\n"
    compact = b"SIP/2.0 404 Not Found\r\nv: SIP/2.0/UDP 127.0.0.1:4000 ; branch=z9hG4bKdef\r\ni: q@r\r\n\r\n"
    a, b = codec.response(long_form), codec.response(compact)
    assert (a.status, a.branch, a.call_id) == (200, "z9hG4bKabc", "x@y")
    assert (b.status, b.branch, b.call_id) == (404, "z9hG4bKdef", "q@r")
    assert codec.response(b"OPTIONS sip:x SIP/2.0\r\n\r\n") is None
    assert codec.response(b"\x00\xff garbage") is None


# -- statistics -----------------------------------------------------------------


def test_nearest_rank_percentiles():
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert nearest_rank(values, 50) == 10.0
    assert nearest_rank(values, 95) == 19.0
    assert nearest_rank([3.0], 95) == 3.0


def test_stats_over_the_window_count_answers_and_timeouts():
    stats = ProbeStats(window=10.0)
    for i in range(10):
        stats.answered(float(i), float(i + 1))  # 1..10 ms at t=0..9
    stats.failed(9.5)
    stats.failed(9.8)
    probe = stats.summary(10.0)
    assert (probe.p50, probe.p95, probe.max, probe.samples, probe.timeouts) == (5.0, 10.0, 10.0, 10, 2)
    assert stats.failures_in_row == 2
    later = stats.summary(15.0)  # t < 5 dropped
    assert (later.samples, later.timeouts, later.p50) == (5, 2, 8.0)
    stats.answered(15.0, 1.0)
    assert stats.failures_in_row == 0


def test_no_answers_is_unknown_latency_not_zero():
    stats = ProbeStats()
    stats.failed(1.0)
    probe = stats.summary(1.0)
    assert probe.p50 is None and probe.max is None and probe.samples == 0 and probe.timeouts == 1


# -- real round trips -------------------------------------------------------------


@pytest.fixture
def sipp_uas():
    """SIPp answering OPTIONS on a free UDP port; stopped with USR1 by PID."""
    if shutil.which("sipp") is None:
        pytest.skip("sipp not installed (Debian package sip-tester)")
    port, control = free_port(), free_port()
    proc = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIO), "-i", "127.0.0.1", "-p", str(port), "-cp", str(control),
         "-ci", "127.0.0.1", "-nostdin", "-m", "100000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # wait until SIPp has bound the port
        if f"127.0.0.1:{port} " in subprocess.run(["ss", "-lun"], capture_output=True, text=True).stdout:
            break
        if proc.poll() is not None:
            pytest.fail(f"sipp exited: {proc.stderr.read().decode()[-500:]}")
        time.sleep(0.02)
    yield port
    proc.send_signal(signal.SIGUSR1)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def probe_for(target, seconds, **kw):
    probe = ProbeCollector(ProbeConfig(target=target, interval=kw.get("interval", 0.05), timeout=kw.get("timeout", 0.3)))
    await probe.start()
    await asyncio.sleep(seconds)
    reading = probe.collect(probe.clock())
    await probe.stop()
    return reading, probe


@pytest.mark.interop
def test_round_trips_to_sipp(sipp_uas):
    reading, probe = run(probe_for(f"sip:127.0.0.1:{sipp_uas}", 1.0))
    p = reading.probe
    assert p.samples >= 10 and p.timeouts == 0
    assert 0 < p.p50 <= p.p95 <= p.max < 300
    assert reading.probe_failures_in_row == 0 and reading.error is None and probe.unmatched == 0


def test_a_port_that_never_answers_gives_timeouts():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, so no ICMP: the datagrams just vanish
        reading, _ = run(probe_for(f"sip:127.0.0.1:{silent.getsockname()[1]}", 0.8, interval=0.1, timeout=0.2))
    p = reading.probe
    assert p.samples == 0 and p.timeouts >= 4 and p.p50 is None
    assert reading.probe_failures_in_row == p.timeouts
    assert "no answer within 0.2 s" in reading.error


def test_a_closed_port_fails_at_once_with_the_reason():
    port = free_port()  # nothing bound: the kernel answers ICMP port unreachable
    reading, _ = run(probe_for(f"sip:127.0.0.1:{port}", 0.5, interval=0.1, timeout=5.0))
    assert reading.probe.timeouts >= 3  # failed long before the 5 s timeout
    assert "ICMP port unreachable" in reading.error


def test_an_unresolvable_target_fails_each_probe():
    reading, _ = run(probe_for("sip:no-such-host.invalid:5060", 0.35, interval=0.1, timeout=0.2))
    assert reading.probe.timeouts >= 1 and reading.probe.samples == 0
    assert reading.error.startswith("SIP probe to sip:no-such-host.invalid:5060: ")
