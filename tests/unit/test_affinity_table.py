"""The proxy's affinity table (spec/load-affinity.md sections 5 and 7.2), on a fake clock."""

from sipstatus.affinity import AffinityBody, Kind, affinity_key, full_pages
from sipstatus.affinity_feed import AffinityFeed
from sipstatus.affinity_table import AffinityTable, Applied

A, B = affinity_key("1000"), affinity_key("2000")
ROOMS = [affinity_key(str(r)) for r in range(45)]
UP = {"ast1": 50, "ast2": 50}


def full(node, keys, seq=1, instance="i1"):
    return full_pages(node, instance, seq, 900, keys)


def delta(node, base, seq, add=(), remove=(), instance="i1"):
    return AffinityBody(node, instance, seq, 900, Kind.DELTA, base=base, add=tuple(add), remove=tuple(remove))


def test_a_full_set_counts_only_once_every_page_is_in():
    table = AffinityTable()
    first, second = full("ast1", ROOMS)
    assert table.update(first, 0.0) is Applied.PAGE
    assert table.lookup(ROOMS[0], UP, 0.0) is None
    assert table.update(second, 0.1) is Applied.APPLIED
    assert table.keys_of("ast1") == frozenset(ROOMS)


def test_a_delta_that_follows_the_applied_version_adds_and_removes():
    table = AffinityTable()
    table.update(full("ast1", [A])[0], 0.0)
    assert table.update(delta("ast1", 1, 2, add=[B], remove=[A]), 1.0) is Applied.APPLIED
    assert table.keys_of("ast1") == {B}


def test_a_delta_from_another_version_is_a_gap_and_keeps_the_set():
    table = AffinityTable()
    table.update(full("ast1", [A])[0], 0.0)
    assert table.update(delta("ast1", 2, 3, add=[B]), 1.0) is Applied.GAP
    assert table.keys_of("ast1") == {A}


def test_a_duplicate_delta_is_old():
    table = AffinityTable()
    table.update(full("ast1", [A])[0], 0.0)
    table.update(delta("ast1", 1, 2, add=[B]), 1.0)
    assert table.update(delta("ast1", 1, 2, add=[B]), 1.1) is Applied.OLD


def test_a_full_set_of_a_new_instance_replaces_the_old_rooms():
    table = AffinityTable()
    table.update(full("ast1", [A, B])[0], 0.0)
    table.update(full("ast1", [], seq=0, instance="i2")[0], 5.0)
    assert table.keys_of("ast1") == frozenset() and table.nodes_of(A) == frozenset()


def test_a_caller_for_an_announced_room_goes_to_its_node():
    table = AffinityTable()
    table.update(full("ast2", [A])[0], 0.0)
    assert table.lookup(A, UP, 1.0) == "ast2"


def test_an_announced_node_that_takes_no_calls_is_passed_over():
    table = AffinityTable()
    table.update(full("ast2", [A])[0], 0.0)
    assert table.lookup(A, {"ast1": 50, "ast2": 0}, 1.0) is None


def test_a_placement_draws_the_second_caller_before_the_announcement():
    table = AffinityTable(hold=10.0)
    assert table.lookup(A, UP, 0.0) is None
    table.place(A, "ast1", 0.0)
    assert table.lookup(A, UP, 1.0) == "ast1"


def test_a_placement_expires_after_the_hold_time():
    table = AffinityTable(hold=10.0)
    table.place(A, "ast1", 0.0)
    assert table.lookup(A, UP, 10.0) is None


def test_the_announcement_confirms_a_placement_and_then_rules():
    table = AffinityTable(hold=10.0)
    table.place(A, "ast1", 0.0)
    table.update(full("ast1", [A])[0], 2.0)
    assert table.placements(2.0) == {}
    assert table.lookup(A, UP, 50.0) == "ast1"


def test_a_refusing_node_loses_the_placement_and_the_room_follows_the_retry():
    table = AffinityTable()
    table.place(A, "ast1", 0.0)
    table.refused(A, "ast1")
    assert table.lookup(A, UP, 0.5) is None
    table.place(A, "ast2", 0.5)
    assert table.lookup(A, UP, 1.0) == "ast2"


def test_a_room_that_ends_stops_attracting_calls():
    table = AffinityTable()
    table.update(full("ast1", [A])[0], 0.0)
    table.update(delta("ast1", 1, 2, remove=[A]), 5.0)
    assert table.lookup(A, UP, 6.0) is None


def test_a_set_not_renewed_within_its_validity_is_forgotten():
    table = AffinityTable()
    table.update(full("ast1", [A])[0], 0.0)
    assert table.expire(899.0) == []
    assert table.expire(900.0) == ["ast1"]
    assert table.lookup(A, UP, 900.0) is None


def test_a_feed_and_a_table_agree_through_pages_deltas_and_heartbeats():
    feed = AffinityFeed("ast1", "i1", 900)
    table = AffinityTable()
    reader = feed.reader()
    now = 0.0

    def drain():
        nonlocal now
        while True:
            body = reader.next_body(now)
            assert table.update(body, now) in (Applied.APPLIED, Applied.PAGE)
            now += 0.1
            if not reader.more:
                return

    feed.update(ROOMS)
    drain()
    assert table.keys_of("ast1") == frozenset(ROOMS)
    feed.update(ROOMS[5:] + [A])
    body = reader.next_body(now)
    assert body.kind is Kind.DELTA and set(body.add) == {A} and len(body.remove) == 5
    table.update(body, now)
    assert table.keys_of("ast1") == frozenset(ROOMS[5:] + [A])
    heartbeat = reader.next_body(now + 300.0)
    assert heartbeat.kind is Kind.FULL and heartbeat.page == 1


def test_a_feed_sends_a_full_set_when_a_delta_would_not_fit_one_body():
    feed = AffinityFeed("ast1", "i1", 900)
    reader = feed.reader()
    reader.next_body(0.0)
    feed.update(ROOMS)  # 45 keys added: more than one body holds
    assert reader.next_body(1.0).kind is Kind.FULL


def test_a_restarted_reader_gets_a_full_set_next():
    feed = AffinityFeed("ast1", "i1", 900)
    reader = feed.reader()
    feed.update([A])
    reader.next_body(0.0)
    feed.update([A, B])
    reader.restart()
    assert reader.next_body(1.0).kind is Kind.FULL


def test_a_compositor_sees_a_gap_before_applying_a_delta_and_never_for_a_full_page():
    table = AffinityTable()
    assert table.would_gap(delta("ast1", 0, 1, add=[A]))  # nothing known of ast1 yet
    assert not table.would_gap(full("ast1", [A])[0])
    table.update(full("ast1", [A])[0], 0.0)
    assert not table.would_gap(delta("ast1", 1, 2, add=[B]))
    assert table.would_gap(delta("ast1", 2, 3, add=[B]))
