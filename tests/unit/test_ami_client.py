"""The AMI framer and client against the fake server replaying real transcripts."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.collectors import ami
from tests.support.fake_ami import FakeAmi, Scenario, Transcript, ami_dir, eventually


def run(coro, timeout=20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def client_for(server, **kw):
    kw.setdefault("backoff_initial", 0.01)
    kw.setdefault("backoff_max", 0.05)
    kw.setdefault("connect_timeout", 1.0)
    return ami.AmiClient(server.host, server.port, kw.pop("username", "agent"), kw.pop("secret", "secret"), **kw)


# -- framer -----------------------------------------------------------------


def test_framer_reads_banner_then_messages_of_a_real_session():
    data = (ami_dir() / "login_ok.txt").read_bytes()
    framer = ami.AmiFramer()
    messages = framer.feed(data)
    assert framer.banner == "Asterisk Call Manager/9.0.0"
    assert [m.response or m.event for m in messages] == ["Success", "FullyBooted", "Goodbye"]
    assert messages[0].action_id == "login-1"
    assert messages[1].get("status") == "Fully Booted"  # keys are case-insensitive


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=60))
def test_framer_gives_the_same_messages_whatever_the_chunking(cuts):
    data = (ami_dir() / "coreshowchannels_b2b.txt").read_bytes()
    whole = ami.AmiFramer().feed(data)
    framer = ami.AmiFramer()
    pieces = []
    pos = 0
    for cut in cuts:
        pieces.extend(framer.feed(data[pos : pos + cut]))
        pos += cut
    pieces.extend(framer.feed(data[pos:]))
    assert pieces == whole
    assert len([m for m in whole if m.event == "CoreShowChannel"]) == 6


def test_framer_keeps_repeated_keys_and_values_with_leading_spaces():
    data = (ami_dir() / "command_core_show_channels_count_b2b.txt").read_bytes()
    answer = ami.AmiFramer().feed(data)[1]
    assert answer.get_all("Output") == ["6 active channels", "4 active calls", "9 calls processed"]
    events = ami.AmiFramer().feed((ami_dir() / "event_stream.txt").read_bytes())
    loss = next(m for m in events if m.get("Variable") == "RTPAUDIOQOSLOSS")
    assert loss.get("Value").startswith("  minrxlost=")


def test_framer_refuses_a_peer_that_is_not_ami():
    with pytest.raises(ami.AmiProtocolError, match="not an AMI server: first line is 'SSH-2.0"):
        ami.AmiFramer().feed(b"SSH-2.0-OpenSSH_9.2\r\n")


def test_framer_skips_garbage_lines_and_counts_them():
    framer = ami.AmiFramer()
    messages = framer.feed(b"Asterisk Call Manager/9.0.0\r\n\x00\xff\xfe garbage\r\nEvent: FullyBooted\r\n\r\n")
    assert [m.event for m in messages] == ["FullyBooted"]
    assert framer.garbage_lines == 1


def test_framer_refuses_a_line_without_end():
    framer = ami.AmiFramer(max_line=100)
    framer.feed(b"Asterisk Call Manager/9.0.0\r\n")
    with pytest.raises(ami.AmiProtocolError, match="no end of line after 101 octets"):
        framer.feed(b"x" * 101)


def test_action_with_a_line_break_in_a_value_is_refused():
    with pytest.raises(ValueError, match="header 'Command' has a line break"):
        ami.format_action("Command", "1", {"Command": "core show channels\r\nAction: Logoff"})


def test_md5_key_is_md5_of_challenge_then_secret():
    # docs.asterisk.org AMI_Actions/Login: update(challenge), update(secret), hexdigest
    import hashlib

    assert ami.md5_key("123456789", "secret") == hashlib.md5(b"123456789secret").hexdigest()


# -- client -----------------------------------------------------------------


def test_plain_login_succeeds_and_asks_only_for_the_event_classes_needed():
    async def main():
        async with FakeAmi() as server:
            client = client_for(server)
            await client.start()
            await eventually(lambda: client.connected, what="login")
            await client.stop()
            login = dict(server.received[0][0])
            return client, login

    client, login = run(main())
    assert client.banner == "Asterisk Call Manager/9.0.0"
    assert login["Action"] == "Login" and login["Username"] == "agent" and login["Secret"] == "secret"
    assert login["Events"] == "system,call,reporting,dialplan"  # dialplan: Newexten (who runs the dialplan)


def test_failed_login_is_reported_with_asterisks_message_and_retried():
    async def main():
        # The recorded 1 s wait before the answer (meta/login_fail.chunks.txt).
        async with FakeAmi(Scenario(login_fail_delay=1.0)) as server:
            downs = []
            client = client_for(server, secret="wrong", on_down=downs.append, connect_timeout=0.5)
            await client.start()
            await eventually(lambda: server.connections >= 2, what="a second attempt")
            await client.stop()
            return client, downs

    client, downs = run(main())
    assert not client.connected
    assert "Login: Asterisk answered Error: Authentication failed (user 'agent', auth plain)" in downs[0]
    assert client.backoffs[0] == pytest.approx(0.01)


def test_md5_login_uses_the_challenge():
    async def main():
        async with FakeAmi() as server:
            client = client_for(server, auth="md5")
            await client.start()
            await eventually(lambda: client.connected, what="md5 login")
            await client.stop()
            return server.received[0]

    actions = run(main())
    challenge, login = dict(actions[0]), dict(actions[1])
    assert challenge == {"Action": "Challenge", "ActionID": challenge["ActionID"], "AuthType": "MD5"}
    assert login["AuthType"] == "MD5" and "Secret" not in login and len(login["Key"]) == 32


def test_md5_login_with_a_wrong_secret_fails():
    async def main():
        async with FakeAmi(Scenario(login_fail_delay=0.01)) as server:
            downs = []
            client = client_for(server, auth="md5", secret="nope", on_down=downs.append)
            await client.start()
            await eventually(lambda: downs, what="a failure")
            await client.stop()
            return downs

    assert "Authentication failed (user 'agent', auth md5)" in run(main())[0]


def test_answers_are_matched_to_their_actions_by_action_id():
    async def main():
        scenario = Scenario(answers={"CoreStatus": "corestatus", "CoreShowChannels": "coreshowchannels_b2b"})
        async with FakeAmi(scenario) as server:
            client = client_for(server)
            await client.start()
            await eventually(lambda: client.connected, what="login")
            status, channels = await asyncio.gather(client.action("CoreStatus"), client.action("CoreShowChannels"))
            await client.stop()
            return status, channels

    status, channels = run(main())
    assert status.response.get("CoreCurrentCalls") == "5"
    assert status.items == []
    assert len(channels.items) == 6 and channels.complete.get("ListItems") == "6"
    assert {m.get("Linkedid") for m in channels.items} == {"1795395797.8", "1795395798.11", "1795395798.9", "1795395797.6"}


def test_an_error_answer_raises_with_asterisks_message():
    async def main():
        async with FakeAmi(Scenario(answers={"Command": "command_permission_denied"})) as server:
            client = client_for(server)
            await client.start()
            await eventually(lambda: client.connected, what="login")
            with pytest.raises(ami.AmiActionError, match="Command: Asterisk answered Error: Permission denied"):
                await client.action("Command", {"Command": "core show channels count"})
            assert client.connected  # an error answer is not a broken session
            await client.stop()

    run(main())


def test_unknown_actions_get_the_manager_c_error():
    async def main():
        async with FakeAmi() as server:
            client = client_for(server)
            await client.start()
            await eventually(lambda: client.connected, what="login")
            with pytest.raises(ami.AmiActionError, match="Invalid/unknown command: Frobnicate"):
                await client.action("Frobnicate")
            await client.stop()

    run(main())


def test_graceful_shutdown_errors_mark_asterisk_as_shutting_down():
    async def main():
        async with FakeAmi(Scenario(shutting_down=True)) as server:
            seen = []
            client = client_for(server, on_shutdown=lambda: seen.append(True))
            await client.start()
            await eventually(lambda: seen and client.last_error and server.connections >= 2, what="shutdown noticed")
            await client.stop()
            return client, seen

    client, seen = run(main())
    assert client.shutting_down and not client.connected
    assert "Asterisk is shutting down" in client.last_error


def test_shutdown_event_then_eof():
    async def main():
        async with FakeAmi(Scenario(stream="shutdown_core_stop_now")) as server:
            events, downs = [], []
            client = client_for(server, on_event=lambda m: events.append(m.event),
                                on_down=lambda reason: downs.append((reason, client.shutting_down)),
                                on_shutdown=lambda: events.append("<shutdown noticed>"))
            await client.start()
            await eventually(lambda: downs, what="the end of the session")
            await client.stop()
            return client, events, downs

    client, events, downs = run(main())
    assert events[-2:] == ["<shutdown noticed>", "Shutdown"]
    reason, shutting_down = downs[0]
    assert reason.endswith("connection closed by Asterisk")
    assert shutting_down  # still known when the session ends; cleared by the next Login


def test_reconnects_with_exponential_backoff_capped_and_reset_after_a_login():
    async def main():
        broken = Scenario(close_after_banner=True)
        async with FakeAmi([broken, broken, broken, broken, Scenario(then="close", stream="shutdown_sigkill"), broken, Scenario()]) as server:
            client = client_for(server, backoff_initial=0.01, backoff_max=0.04)
            await client.start()
            await eventually(lambda: server.connections >= 7 and client.connected, what="the 7th connection")
            await client.stop()
            return client

    client = run(main())
    # four failures: 0.01, 0.02, 0.04, 0.04 (cap); a session that logged in: 0.01; a failure: 0.02
    assert client.backoffs[:6] == pytest.approx([0.01, 0.02, 0.04, 0.04, 0.01, 0.02])


def test_backoff_waits_use_the_injected_sleep():
    async def main():
        waits = []

        async def fake_sleep(delay):
            waits.append(delay)
            await asyncio.sleep(0)

        client = ami.AmiClient("127.0.0.1", 9, "agent", "x", backoff_initial=1.0, backoff_max=8.0, sleep=fake_sleep, connect_timeout=0.5)
        await client.start()
        await eventually(lambda: len(waits) >= 6, what="six attempts")
        await client.stop()
        return waits, client

    waits, client = run(main())
    assert waits[:6] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert client.last_error.startswith("AMI 127.0.0.1:9: ")


def test_garbage_in_the_stream_costs_nothing_but_the_garbage():
    async def main():
        scenario = Scenario(stream="event_stream", garbage=b"\x00\x01\xff\xfe binary junk\r\nno colon here\r\n\r\n")
        async with FakeAmi(scenario) as server:
            events = []
            client = client_for(server, on_event=lambda m: events.append(m.event))
            await client.start()
            await server.streamed.wait()
            await eventually(lambda: events.count("Hangup") == 5, what="all hangups")
            await client.stop()
            return client, events

    client, events = run(main())
    assert client.garbage_lines == 2
    assert events.count("Newchannel") == 5 and events.count("RTCPReceived") == 47


def test_a_huge_line_closes_the_session_with_the_reason():
    async def main():
        async with FakeAmi([Scenario(garbage=b"A" * (ami.MAX_LINE_OCTETS + 10)), Scenario()]) as server:
            downs = []
            client = client_for(server, on_down=downs.append)
            await client.start()
            await eventually(lambda: downs and client.connected, what="reconnection")
            await client.stop()
            return downs

    assert "no end of line after" in run(main())[0]


def test_a_drop_in_the_middle_of_a_list_fails_the_action_and_reconnects():
    async def main():
        first = Scenario(answers={"CoreShowChannels": "coreshowchannels"}, drop_during=frozenset({"CoreShowChannels"}))
        second = Scenario(answers={"CoreShowChannels": "coreshowchannels"})
        async with FakeAmi([first, second]) as server:
            client = client_for(server)
            await client.start()
            await eventually(lambda: client.connected, what="login")
            with pytest.raises(ami.AmiDisconnected, match="while waiting for the answer to CoreShowChannels"):
                await client.action("CoreShowChannels")
            await eventually(lambda: client.connected and server.connections == 2, what="reconnection")
            answer = await client.action("CoreShowChannels")
            await client.stop()
            return answer

    assert len(run(main()).items) == 5


def test_action_while_disconnected_says_why():
    async def main():
        client = ami.AmiClient("127.0.0.1", 9, "agent", "x", connect_timeout=0.2)
        with pytest.raises(ami.AmiDisconnected, match="not connected"):
            await client.action("CoreStatus")

    run(main())


def test_transcripts_are_where_the_fake_expects_them():
    t = Transcript.load("event_stream")
    assert t.banner == b"Asterisk Call Manager/9.0.0\r\n"
    assert len(t.events()) == 1 + 5 + 36 + 15 + 8 + 47 + 35 + 5 + 5 + 5  # as counted by grep


# -- the periodic Ping (a graceful stop, a stalled session) ------------------------


def test_a_stalled_session_is_found_out_by_the_ping_and_reopened():
    # Connected, logged in, then silent: Asterisk answers nothing any more
    # (no Ping answer). The Ping's timeout closes the session and a new
    # one is opened, within ping_interval + ping_timeout.
    async def main():
        stalled = Scenario(ignore=frozenset({"Ping"}))
        async with FakeAmi([stalled, Scenario()]) as server:
            downs = []
            client = client_for(server, ping_interval=0.1, ping_timeout=0.3, on_down=downs.append)
            await client.start()
            await eventually(lambda: server.connections == 2 and client.connected, timeout=10.0,
                             what="a second session")
            await eventually(lambda: client.pings >= 2, what="pings answered on the second session")
            await client.stop()
            return downs, server.received[0]

    downs, first_actions = run(main())
    assert "no answer to Ping within 0.3 s; closing the session" in downs[0]
    assert [dict(a).get("Action") for a in first_actions][:2] == ["Login", "Ping"]


def test_pings_answered_refusing_mean_asterisk_is_stopping_and_an_answer_ends_it():
    # 22/ping_during_graceful_shutdown.txt: logged in before "core stop
    # gracefully", the session stays open and every Ping is refused.
    async def main():
        async with FakeAmi(Scenario(shutting_down_after=0.3)) as server:
            changes = []
            client = client_for(server, ping_interval=0.1, on_shutdown=lambda: changes.append(client.stopping))
            await client.start()
            await eventually(lambda: client.stopping is ami.Stopping.REFUSING, what="refusing")
            connected = client.connected
            await client.stop()
            return connected, changes

    connected, changes = run(main())
    assert connected  # still logged in: Asterisk runs, it takes no new work
    assert changes == [ami.Stopping.REFUSING]


def test_the_session_of_a_stopping_asterisk_ending_means_it_stopped():
    async def main():
        async with FakeAmi([Scenario(shutting_down_after=0.2, close_after=0.6), Scenario(shutting_down=True)]) as server:
            client = client_for(server, ping_interval=0.1, backoff_initial=5.0, backoff_max=5.0)
            await client.start()
            await eventually(lambda: client.stopping is ami.Stopping.STOPPED, what="stopped")
            await client.stop()
            return client

    assert run(main()).stopping is ami.Stopping.STOPPED


def test_retry_now_ends_the_backoff_and_what_a_stopped_asterisk_said():
    async def main():
        async with FakeAmi([Scenario(stream="shutdown_core_stop_now"), Scenario()]) as server:
            client = client_for(server, backoff_initial=60.0, backoff_max=60.0)
            await client.start()
            await eventually(lambda: client.backoffs, what="the first backoff")
            stopped = client.stopping
            client.retry_now()
            await eventually(lambda: client.connected, what="a login without waiting 60 s")
            await client.stop()
            return stopped, client

    stopped, client = run(main())
    assert stopped is ami.Stopping.STOPPED
    assert client.stopping is ami.Stopping.NO
