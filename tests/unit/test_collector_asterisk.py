"""The asterisk collector: channel and call counts, limit, shutdown and
unreachable AMI, against the fake server replaying the real transcripts."""

import asyncio
import contextlib
import re
from datetime import datetime

import pytest

from agent.collectors import AsteriskLink
from agent.collectors.asterisk import AsteriskCollector, CallTable
from agent.config import AsteriskConfig
from tests.support.fake_ami import FakeAmi, Scenario, Transcript, eventually
from tests.support.ports import free_port


def run(coro, timeout=20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def config_for(server, **kw):
    kw.setdefault("auth", "plain")
    return AsteriskConfig(host=server.host, port=server.port, username="agent", secret="secret",
                          backoff_initial=0.01, backoff_max=0.05, connect_timeout=1.0, **kw)


@contextlib.asynccontextmanager
async def collecting(config, **kw):
    """An AsteriskCollector on `config`, started; stopped on leaving."""
    collector = AsteriskCollector(config, **kw)
    await collector.start()
    try:
        yield collector
    finally:
        await collector.stop()


async def after_asterisk_went_away(stream, gone, what):
    """The reading and the changes once the server has streamed `stream` and
    closed (reconnections refused), and the collector has seen it: `gone(collector)`."""
    scenario = Scenario(answers={"CoreShowChannels": "coreshowchannels_idle"}, stream=stream,
                        stream_after="CoreShowChannels")
    server = FakeAmi(scenario)
    await server.__aenter__()
    changes = []
    async with collecting(config_for(server), on_change=changes.append) as collector:
        await server.streamed.wait()
        await server.close()
        await eventually(lambda: gone(collector), what=what)
        return collector.collect(collector.clock()), changes


def command_counts(name):
    """(channels, calls) as "core show channels count" printed them in a transcript."""
    outputs = Transcript.load(name).answer_to("Command")[0].pairs
    text = " / ".join(v for k, v in outputs if k == "Output")
    channels = int(re.search(r"(\d+) active channels", text).group(1))
    calls = int(re.search(r"(\d+)(?: of \d+ max)? active calls", text).group(1))  # "5 of 10 max" with maxcalls
    return channels, calls


def seconds_between(earlier, later):
    """Seconds from one capture's start to another's (meta wallclock_start)."""
    def parse(t):
        return datetime.strptime(Transcript.load(t).wallclock_start(), "%Y-%m-%dT%H:%M:%S%z")
    return (parse(later) - parse(earlier)).total_seconds()


async def counts_after_stream(stream, until=None):
    scenario = Scenario(answers={"CoreShowChannels": "coreshowchannels_idle"}, stream=stream,
                        stream_after="CoreShowChannels", stream_until=until)
    async with FakeAmi(scenario) as server:
        changes = []
        async with collecting(config_for(server), on_change=changes.append) as collector:
            await server.streamed.wait()
            await eventually(lambda: collector.table.synced, what="the first CoreShowChannels")
            await eventually(lambda: collector.client.events_received == server.events_sent, what="every event read")
            reading = collector.collect(collector.clock())
            return reading, changes


@pytest.mark.parametrize(
    ("stream", "command"),
    [
        ("event_stream", "command_core_show_channels_count"),
        ("event_stream_b2b", "command_core_show_channels_count_b2b"),
    ],
)
def test_counts_from_events_match_core_show_channels_count_at_the_same_moment(stream, command):
    # Replay the event stream up to the moment the command was captured
    # (both captures' wallclock starts, meta/*.chunks.txt), then compare
    # with what Asterisk itself printed.
    until = seconds_between(stream, command)
    reading, changes = run(counts_after_stream(stream, until))
    assert (reading.asterisk.channels, reading.asterisk.calls) == command_counts(command)
    assert reading.link is AsteriskLink.UP and reading.error is None


def test_local_channels_are_counted_as_asterisk_22_counted_them():
    # 22/: 1 Echo call and 2 Dial(Local/echo@test) calls; Asterisk said
    # "7 active channels / 5 of 10 max active calls" (each Local ;2 half
    # runs the dialplan and shares its caller's Linkedid).
    until = seconds_between("22/event_stream_local", "22/command_core_show_channels_count_local")
    reading, _ = run(counts_after_stream("22/event_stream_local", until))
    assert (reading.asterisk.channels, reading.asterisk.calls) == (7, 5)
    assert command_counts("22/command_core_show_channels_count_local") == (7, 5)


def test_confbridge_announcers_are_not_seen_and_are_not_calls():
    # 22/: 3 callers in a ConfBridge; Asterisk said "5 active channels / 3 of
    # 10 max active calls": the announcer pair CBAnn/room1-N;1/;2 is internal,
    # never in AMI's events or lists.
    until = seconds_between("22/event_stream_confbridge", "22/command_core_show_channels_confbridge")
    reading, _ = run(counts_after_stream("22/event_stream_confbridge", until))
    assert command_counts("22/command_core_show_channels_confbridge") == (5, 3)
    assert (reading.asterisk.channels, reading.asterisk.calls) == (3, 3)


def test_b2b_is_six_channels_but_four_calls():
    reading, _ = run(counts_after_stream("event_stream_b2b", seconds_between("event_stream_b2b", "command_core_show_channels_count_b2b")))
    assert (reading.asterisk.channels, reading.asterisk.calls) == (6, 4)
    # CoreCurrentCalls in the same capture says 6: it counts channels.
    assert Transcript.load("corestatus_b2b").answer_to("CoreStatus")[0].get("CoreCurrentCalls") == "6"


@pytest.mark.parametrize("stream", ["event_stream", "event_stream_b2b"])
def test_every_channel_and_call_is_gone_after_the_last_hangup(stream):
    reading, changes = run(counts_after_stream(stream))
    assert (reading.asterisk.channels, reading.asterisk.calls) == (0, 0)
    newchannels = sum(1 for e in Transcript.load(stream).events() if e.get("Event") == "Newchannel")
    # each Newchannel and each Hangup reached on_change at once
    assert sum("appeared" in c for c in changes) == newchannels
    assert sum("hung up" in c for c in changes) == newchannels


def test_counts_come_from_core_show_channels_after_login():
    async def main():
        async with FakeAmi(Scenario(answers={"CoreShowChannels": "coreshowchannels_b2b"})) as server:
            async with collecting(config_for(server)) as collector:
                before = collector.collect(collector.clock())
                await eventually(lambda: collector.table.synced, what="sync")
                after = collector.collect(collector.clock())
                return before, after

    before, after = run(main())
    assert before.asterisk is None or before.asterisk.channels is None  # unknown until listed
    assert (after.asterisk.channels, after.asterisk.calls) == command_counts("command_core_show_channels_count_b2b")


@pytest.mark.parametrize(
    ("core_max_calls", "config_max_calls", "expected"),
    [(120, 0, 120), (120, 50, 120), (0, 50, 50), (0, 0, None)],
)
def test_limit_is_coremaxcalls_else_the_configured_one_else_unknown(core_max_calls, config_max_calls, expected):
    async def main():
        scenario = Scenario(answers={"CoreShowChannels": "coreshowchannels_idle"}, max_calls=core_max_calls, max_load=2.5)
        async with FakeAmi(scenario) as server:
            async with collecting(config_for(server, max_calls=config_max_calls)) as collector:
                await eventually(lambda: collector.table.synced, what="sync")
                reading = collector.collect(collector.clock())
                return reading

    reading = run(main())
    assert reading.asterisk.limit == expected
    assert reading.max_load == 2.5


def test_unreachable_ami_makes_asterisk_and_quality_unknown_with_the_reason():
    port = free_port()

    async def main():
        config = AsteriskConfig(port=port, secret="x", backoff_initial=0.01, backoff_max=0.02)
        async with collecting(config) as collector:
            await eventually(lambda: len(collector.client.backoffs) >= 2, what="two attempts")
            reading = collector.collect(collector.clock())
            return reading

    reading = run(main())
    assert reading.asterisk is None and reading.quality is None
    assert reading.link is AsteriskLink.UNREACHABLE
    assert reading.error.startswith(f"AMI 127.0.0.1:{port}: connection refused")


def test_shutdown_event_is_reported_at_once_and_stays_until_asterisk_is_back():
    reading, changes = run(after_asterisk_went_away(
        "shutdown_core_stop_now", lambda collector: not collector.client.connected, "EOF"))
    assert "Asterisk stopping: stopped" in changes
    assert reading.link is AsteriskLink.SHUTTING_DOWN
    assert reading.asterisk is None


def test_graceful_shutdown_answers_mean_asterisk_is_stopping_not_stopped():
    # A Login refused "Asterisk is shutting down": it still runs, refusing
    # new work (core stop gracefully), so the node drains; it is not down.
    async def main():
        async with FakeAmi(Scenario(shutting_down=True)) as server:
            async with collecting(config_for(server)) as collector:
                await eventually(lambda: collector.client.shutting_down, what="the error answer")
                reading = collector.collect(collector.clock())
                return reading

    reading = run(main())
    assert reading.link is AsteriskLink.STOPPING
    assert "Asterisk is shutting down" in reading.error


def test_a_graceful_stop_on_an_open_session_is_stopping_and_its_end_is_stopped():
    # 22/ping_during_graceful_shutdown.txt: logged in before "core stop
    # gracefully", the session stays open and every Ping is refused; when
    # the calls have ended Asterisk exits and the session ends.
    async def main():
        scenario = Scenario(answers={"CoreShowChannels": "coreshowchannels_idle"}, shutting_down_after=0.3,
                            close_after=1.0)
        server = FakeAmi(scenario)
        await server.__aenter__()
        async with collecting(config_for(server, ping_interval=0.1)) as collector:
            await eventually(lambda: collector.client.stopping.value == "refusing", what="refusals")
            stopping = collector.collect(collector.clock())
            await server.close()  # Asterisk exited: reconnections are refused
            await eventually(lambda: collector.client.stopping.value == "stopped", what="the end of the session")
            stopped = collector.collect(collector.clock())
            return stopping, stopped

    stopping, stopped = run(main())
    assert stopping.link is AsteriskLink.STOPPING and stopping.asterisk.channels == 0
    assert "Asterisk is shutting down" in stopping.error
    assert stopped.link is AsteriskLink.SHUTTING_DOWN and stopped.asterisk is None


def test_the_probe_answering_again_ends_stopped_and_the_backoff():
    async def main():
        scenario = Scenario(answers={"CoreShowChannels": "coreshowchannels_idle"}, stream="shutdown_core_stop_now",
                            stream_after="CoreShowChannels")
        async with FakeAmi([scenario, Scenario(answers={"CoreShowChannels": "coreshowchannels_idle"})]) as server:
            collector = AsteriskCollector(AsteriskConfig(host=server.host, port=server.port, username="agent",
                                                         secret="secret", auth="plain", backoff_initial=60.0,
                                                         backoff_max=60.0, connect_timeout=1.0))
            await collector.start()
            await eventually(lambda: collector.client.backoffs, what="the backoff after the Shutdown")
            stopped = collector.collect(collector.clock())
            collector.reachable_again()
            await eventually(lambda: collector.table.synced and server.connections == 2, what="a new session at once")
            back = collector.collect(collector.clock())
            await collector.stop()
            return stopped, back

    stopped, back = run(main())
    assert stopped.link is AsteriskLink.SHUTTING_DOWN
    assert back.link is AsteriskLink.UP and (back.asterisk.channels, back.asterisk.calls) == (0, 0)


def test_rtcp_events_fill_quality_over_the_session():
    async def main():
        scenario = Scenario(answers={"CoreShowChannels": "coreshowchannels_idle"}, stream="rtcp_events", stream_after="CoreShowChannels")
        async with FakeAmi(scenario) as server:
            async with collecting(config_for(server, quality_window=600.0)) as collector:
                await server.streamed.wait()
                await eventually(lambda: collector.client.events_received == server.events_sent, what="every event read")
                reading = collector.collect(collector.clock())
                return reading

    quality = run(main()).quality
    # rtcp_events.txt is an "Events: reporting" session: no Hangups, so all
    # five calls are still there at the end.
    assert quality.streams == 5
    assert 1 <= quality.mos <= 4.5 and 0 < quality.loss < 0.2 and quality.mes is not None


# -- CallTable, pure -------------------------------------------------------


def test_call_table_counts_the_channels_that_run_the_dialplan():
    table = CallTable()
    table.reset(0.0)
    assert table.add("1.6", "1.6", 1.0) and table.add("1.7", "1.6", 1.0) and table.add("1.8", "1.8", 1.0)
    assert (table.channels, table.calls) == (3, 0)  # no application yet: not in the PBX yet
    assert table.application("1.6", "Dial", 1.1)
    assert not table.application("1.7", "AppDial", 1.1)  # Dial()'s outbound leg runs no dialplan
    assert table.application("1.8", "Echo", 1.2)
    assert (table.channels, table.calls) == (3, 2)
    assert not table.application("1.6", "Dial", 1.3)  # a later priority changes nothing
    assert not table.add("1.7", "1.6", 1.5)  # a repeated Newchannel changes nothing
    assert table.remove("1.6") and (table.channels, table.calls) == (2, 1)
    assert table.remove("1.7") and (table.channels, table.calls) == (1, 1)
    assert not table.remove("9.9")


def test_both_halves_of_a_local_channel_share_the_linkedid_but_only_the_second_is_a_call():
    table = CallTable()
    table.reset(0.0)
    table.add("caller", "caller", 1.0)
    table.application("caller", "Dial", 1.0)
    table.add("local1", "caller", 1.0)  # Local/echo@test-0001;1: Dial()'s leg
    table.add("local2", "caller", 1.0)  # Local/echo@test-0001;2: runs the dialplan
    table.application("local1", "AppDial", 1.0)
    table.application("local2", "Echo", 1.0)
    assert (table.channels, table.calls) == (3, 2)


def test_new_calls_per_second_counts_channels_entering_the_dialplan_in_the_window():
    table = CallTable(cps_window=10.0)
    table.reset(0.0)
    for i in range(20):
        t = 10.25 + i * 0.5  # 20 calls in (10, 20]
        table.add(f"{i}.0", f"{i}.0", t)
        table.application(f"{i}.0", "Dial", t)
        table.add(f"{i}.1", f"{i}.0", t)
        table.application(f"{i}.1", "AppDial", t)  # their second legs are not new calls
        table.application(f"{i}.0", "Echo", t)  # nor is a later application
    assert table.cps(20.0) == pytest.approx(2.0)
    assert table.cps(25.0) == pytest.approx(10 / 10.0)  # calls started after t=15
    assert table.cps(40.0) == 0.0


def test_new_calls_per_second_right_after_login_uses_the_time_since():
    table = CallTable(cps_window=10.0)
    table.reset(100.0)
    for uid, t in (("a", 101.0), ("b", 101.5)):
        table.add(uid, uid, t)
        table.application(uid, "Echo", t)
    assert table.cps(102.0) == pytest.approx(2 / 2.0)
    assert table.cps(100.2) == pytest.approx(2 / 1.0)  # never divides by less than 1 s


def test_sync_replays_events_that_crossed_the_list():
    table = CallTable()
    table.reset(0.0)
    table.add("stale", "stale", 0.5)  # their Hangups were missed
    table.add("stale-2", "stale-2", 0.5)
    table.begin_sync()
    table.add("new", "new", 1.0)  # created after the list was generated
    table.application("new", "Echo", 1.0)
    table.remove("listed-2")  # hung up after the list was generated
    assert table.end_sync([("listed-1", "L", "Echo"), ("listed-2", "L", "AppDial")])
    assert (table.channels, table.calls) == (2, 2)  # listed-1 and new
    assert table.synced


def test_the_list_of_asterisk_22_says_which_channels_run_the_dialplan():
    table = CallTable()
    table.reset(0.0)
    listed = [(m.get("Uniqueid"), m.get("Linkedid"), m.get("Application"))
              for m in Transcript.load("22/coreshowchannels_local").answer_to("CoreShowChannels")
              if m.get("Event") == "CoreShowChannel"]
    table.begin_sync()
    table.end_sync(listed)
    assert (table.channels, table.calls) == command_counts("22/command_core_show_channels_count_local") == (7, 5)


def test_the_list_says_which_channels_run_the_dialplan_by_their_application():
    table = CallTable()
    table.reset(0.0)
    listed = [(m.get("Uniqueid"), m.get("Linkedid"), m.get("Application"))
              for m in Transcript.load("coreshowchannels_b2b").answer_to("CoreShowChannels")
              if m.get("Event") == "CoreShowChannel"]
    table.begin_sync()
    table.end_sync(listed)
    assert (table.channels, table.calls) == command_counts("command_core_show_channels_count_b2b")


def test_channels_running_an_application_without_newexten_events_are_named():
    table = CallTable()
    table.reset(0.0)
    table.add("quiet", "quiet", 1.0)
    table.add("young", "young", 9.0)
    table.add("heard", "heard", 1.0)
    table.application("heard", "Echo", 1.0)
    listed = [("quiet", "quiet", "Echo"), ("young", "young", "Echo"), ("heard", "heard", "Echo"), ("old", "old", "Echo")]
    # "young" may still have its Newexten on the way; "old" predates the session.
    assert table.silent_channels(listed, now=10.0) == ["quiet"]


def test_a_killed_asterisk_is_unreachable_not_shutting_down():
    # shutdown_sigkill.txt: no Shutdown event, the stream just stops.
    reading, changes = run(after_asterisk_went_away(
        "shutdown_sigkill", lambda collector: collector.client.last_error, "the session to end"))
    assert reading.link is AsteriskLink.UNREACHABLE and reading.asterisk is None
    assert "channel SIP/127.0.0.1-00000000 appeared" in changes
    assert any(c.startswith("AMI session lost") for c in changes)


def test_after_a_reconnection_counts_are_rebuilt_from_the_list():
    async def main():
        b2b_at_capture = seconds_between("event_stream_b2b", "command_core_show_channels_count_b2b")
        first = Scenario(answers={"CoreShowChannels": "coreshowchannels_idle"}, stream="event_stream_b2b",
                         stream_after="CoreShowChannels", stream_until=b2b_at_capture / 2, then="close")
        second = Scenario(answers={"CoreShowChannels": "coreshowchannels_b2b"})
        async with FakeAmi([first, second]) as server:
            seen = []
            collector = AsteriskCollector(config_for(server))
            collector.on_change = lambda what: seen.append((what, collector.table.channels, collector.table.calls))
            await collector.start()
            await eventually(lambda: server.connections == 2 and collector.table.synced, what="second session synced")
            reading = collector.collect(collector.clock())
            await collector.stop()
            return reading, seen, collector.client.backoffs

    reading, seen, backoffs = run(main())
    assert (reading.asterisk.channels, reading.asterisk.calls) == (6, 4)
    assert backoffs[0] == pytest.approx(0.01)
    assert any(what.startswith("AMI session lost") for what, _, _ in seen)


def test_a_wedged_session_is_closed_after_the_action_timeout_and_reopened():
    async def main():
        wedged = Scenario(ignore=frozenset({"CoreShowChannels"}))
        healthy = Scenario(answers={"CoreShowChannels": "coreshowchannels"})
        async with FakeAmi([wedged, healthy]) as server:
            downs = []
            collector = AsteriskCollector(config_for(server, action_timeout=0.2))
            collector.client.on_down = lambda reason: (downs.append(reason), collector._on_down(reason))
            await collector.start()
            await eventually(lambda: collector.table.synced, what="sync on the second session")
            reading = collector.collect(collector.clock())
            await collector.stop()
            return reading, downs

    reading, downs = run(main())
    assert "no answer to CoreShowChannels within 0.2 s; closing the session" in downs[0]
    assert reading.asterisk.channels == 5
