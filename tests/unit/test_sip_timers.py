"""The one timer heap of the SIP core (sipstatus.sip.timers.TimerHeap)."""

from __future__ import annotations

from sipstatus.sip.timers import TimerHeap


def due(heap: TimerHeap, now: float) -> list[tuple[float, str]]:
    out = []
    while (entry := heap.pop(now)) is not None:
        out.append(entry)
    return out


def test_deadlines_come_out_earliest_first_and_only_when_due():
    heap: TimerHeap[str] = TimerHeap()
    heap.set("b", 2.0)
    heap.set("a", 1.0)
    assert heap.next_time() == 1.0
    assert due(heap, 0.5) == []
    assert due(heap, 2.0) == [(1.0, "a"), (2.0, "b")]
    assert heap.next_time() is None


def test_setting_a_key_again_replaces_its_deadline():
    heap: TimerHeap[str] = TimerHeap()
    heap.set("a", 1.0)
    heap.set("a", 5.0)
    assert heap.next_time() == 5.0
    assert due(heap, 10.0) == [(5.0, "a")]


def test_a_cancelled_key_never_comes_out():
    heap: TimerHeap[str] = TimerHeap()
    heap.set("a", 1.0)
    heap.set("b", 2.0)
    heap.cancel("a")
    heap.set("b", None)
    assert heap.next_time() is None and due(heap, 10.0) == []


def test_keys_due_together_come_out_in_the_order_they_were_set():
    heap: TimerHeap[str] = TimerHeap()
    for key in ("c", "a", "b"):
        heap.set(key, 1.0)
    assert [key for _, key in due(heap, 1.0)] == ["c", "a", "b"]


def test_a_popped_key_has_no_deadline_until_set_again():
    heap: TimerHeap[str] = TimerHeap()
    heap.set("a", 1.0)
    assert due(heap, 1.0) == [(1.0, "a")]
    heap.set("a", 1.0)  # the same time again is a new deadline
    assert due(heap, 1.0) == [(1.0, "a")]


def test_many_cancelled_deadlines_are_dropped_from_the_heap():
    heap: TimerHeap[int] = TimerHeap()
    for key in range(1000):
        heap.set(key, float(key))
    for key in range(999):
        heap.cancel(key)
    assert len(heap._heap) < 200  # rebuilt, not 1000 entries holding their keys
    assert due(heap, 1e9) == [(999.0, 999)]
