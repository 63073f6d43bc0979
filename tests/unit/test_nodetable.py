"""The proxy's node table: ordering, staleness and membership (spec section 7)."""

from sipstatus.proxy.nodetable import NodeTable, Outcome
from sipstatus.status import LoadStatus, State


def status(node="ast1", seq=1, instance="run1", validity=15, state=State.ACTIVE, capacity=0.5):
    return LoadStatus(node, instance, seq, validity, state, capacity)


def test_a_status_from_a_configured_node_is_accepted():
    table = NodeTable(["ast1"])
    assert table.update(status(), now=100.0) is Outcome.ACCEPTED
    assert table.view("ast1", 100.0).status == status()


def test_a_reordered_older_status_never_overwrites_a_newer_one():
    table = NodeTable(["ast1"])
    table.update(status(seq=5, capacity=0.2), now=100.0)
    assert table.update(status(seq=4, capacity=0.9), now=100.1) is Outcome.OUT_OF_ORDER
    assert table.view("ast1", 100.1).status.capacity == 0.2


def test_a_duplicate_seq_is_out_of_order():
    table = NodeTable(["ast1"])
    table.update(status(seq=5), now=100.0)
    assert table.update(status(seq=5), now=100.5) is Outcome.OUT_OF_ORDER


def test_a_new_instance_replaces_the_old_even_with_a_lower_seq():
    table = NodeTable(["ast1"])
    table.update(status(seq=900, instance="old"), now=100.0)
    assert table.update(status(seq=1, instance="new"), now=101.0) is Outcome.ACCEPTED
    assert table.view("ast1", 101.0).status.instance == "new"


def test_a_late_body_of_a_replaced_instance_is_ignored():
    # Spec 7.1 rule 3: the agent restarted; its previous run's NOTIFY arrives late.
    table = NodeTable(["ast1"])
    table.update(status(seq=900, instance="old"), now=100.0)
    table.update(status(seq=1, instance="new"), now=101.0)
    assert table.update(status(seq=901, instance="old"), now=102.0) is Outcome.OUT_OF_ORDER
    assert table.view("ast1", 102.0).status.instance == "new"


def test_a_replaced_instance_is_forgotten_after_60_seconds_or_its_validity():
    table = NodeTable(["ast1"])
    table.update(status(seq=5, instance="old", validity=90), now=0.0)
    table.update(status(seq=1, instance="new"), now=10.0)
    assert table.update(status(seq=6, instance="old"), now=99.9) is Outcome.OUT_OF_ORDER
    assert table.update(status(seq=6, instance="old"), now=100.0) is Outcome.ACCEPTED


def test_a_status_is_fresh_for_its_validity_after_receipt():
    table = NodeTable(["ast1"])
    table.update(status(validity=15), now=100.0)
    assert table.view("ast1", 114.9).fresh
    assert not table.view("ast1", 115.0).fresh
    assert not table.view("ast1", 115.0).accepts_calls


def test_next_expiry_is_when_the_freshest_status_goes_stale():
    table = NodeTable(["ast1", "ast2"])
    table.update(status("ast1", validity=15), now=100.0)
    table.update(status("ast2", validity=5), now=102.0)
    assert table.next_expiry(103.0) == 107.0
    assert table.next_expiry(108.0) == 115.0
    assert table.next_expiry(200.0) is None


def test_an_unknown_node_is_refused_without_auto_join():
    table = NodeTable(["ast1"])
    assert table.update(status("ast9"), now=1.0) is Outcome.UNKNOWN_NODE
    assert "ast9" not in table


def test_auto_join_adds_a_node_and_drops_it_when_it_expires():
    table = NodeTable(["ast1"], auto_join=True)
    assert table.update(status("ast9", validity=10), now=1.0) is Outcome.ACCEPTED
    assert "ast9" in table
    assert table.expire(now=11.0) == ["ast9"]
    assert "ast9" not in table


def test_a_configured_node_stays_in_the_table_when_stale():
    table = NodeTable(["ast1"])
    table.update(status(validity=10), now=1.0)
    assert table.expire(now=11.0) == ["ast1"]
    assert "ast1" in table
    assert not table.view("ast1", 11.0).accepts_calls


def test_forget_makes_a_configured_node_unknown():
    table = NodeTable(["ast1"])
    table.update(status(), now=1.0)
    table.forget("ast1")
    view = table.view("ast1", 1.0)
    assert view.status is None and not view.fresh


def test_a_node_never_heard_from_accepts_no_calls():
    assert not NodeTable(["ast1"]).view("ast1", 0.0).accepts_calls


def test_an_added_node_is_a_configured_member_that_stays_when_stale():
    table = NodeTable()
    table.add("ast1")
    assert table.update(status(validity=10), now=1.0) is Outcome.ACCEPTED
    assert table.expire(now=11.0) == ["ast1"] and "ast1" in table
