"""The ConfBridge room table (agent/collectors/confbridge.py), fed with what
Asterisk 22.10.1 sent (tests/data/ami/22/event_stream_confbridge.txt, and
the fields tests/real/test_confbridge_live.py sees live)."""

from agent.collectors.confbridge import RoomTable, channel_variables
from tests.support.fake_ami import Transcript


def confbridge_events():
    return [m for m in Transcript.load("22/event_stream_confbridge").events()
            if (m.get("Event") or "").startswith("Confbridge")]


def feed(table: RoomTable, events) -> list[frozenset[str]]:
    seen = []
    for m in events:
        event, conference = m.get("Event"), m.get("Conference")
        if event == "ConfbridgeStart":
            table.started(conference)
        elif event == "ConfbridgeJoin":
            table.joined(conference, channel_variables(m.pairs))
        elif event == "ConfbridgeEnd":
            table.ended(conference)
        seen.append(table.keys)
    return seen


def test_the_recorded_room_appears_at_its_start_and_goes_at_its_end():
    seen = feed(RoomTable(), confbridge_events())
    assert seen[0] == {"room1"} and seen[-1] == frozenset()
    assert all(keys == {"room1"} for keys in seen[:-1])


def test_a_tenant_variable_keys_the_room_from_its_first_join():
    table = RoomTable("TENANT")
    table.started("5001")
    assert table.keys == frozenset()  # ConfbridgeStart carries no channel
    assert table.joined("5001", channel_variables([("ChanVariable", "TENANT=acme")]))
    assert table.keys == {"acme/5001"}


def test_a_room_without_the_tenant_variable_is_not_announced():
    table = RoomTable("TENANT")
    table.joined("5001", {})
    assert table.keys == frozenset() and "5001" in table.rooms


def test_a_list_replaces_the_rooms_and_events_during_it_are_replayed():
    table = RoomTable()
    table.started("old")
    table.begin_sync()
    table.started("during")
    assert table.end_sync({"listed": "listed"})
    assert table.keys == {"listed", "during"} and table.synced


def test_a_room_ended_while_the_list_was_sent_stays_ended():
    table = RoomTable()
    table.begin_sync()
    table.ended("gone")
    table.end_sync({"gone": "gone"})
    assert table.keys == frozenset()


def test_channel_variables_reads_each_chanvariable_line():
    assert channel_variables([("ChanVariable", "TENANT=acme"), ("ChanVariable", "ROOM=x=y"), ("Channel", "PJSIP/a")]) \
        == {"TENANT": "acme", "ROOM": "x=y"}
