"""One deadline per key in one heap, sans-I/O.

The transaction layer, the notifier, the compositor and the subscriber pool
each run many deadlines (one per transaction timer, subscription,
publication, subscriber) behind one ``next_timer()``.  A :class:`TimerHeap`
keeps them: setting a key's deadline again or cancelling it leaves the old
heap entry behind (lazy deletion, O(log n) per change); an entry counts only
while it is still its key's deadline.  When dead entries make up most of the
heap it is rebuilt without them, so a flood of cancelled timers does not
keep what they point to alive.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# Rebuild once more than this many entries are dead and they are at least
# half of the heap (a transaction answered at once leaves Timer F's entry for
# 32 s; without the rebuild it would hold the transaction that long).
_COMPACT_ABOVE = 64


class TimerHeap(Generic[K]):
    """The deadline of each key (``set``, ``cancel``), earliest first
    (``next_time``), handed out when due (``pop``).  Keys due at the same
    time come out in the order their deadlines were set."""

    def __init__(self) -> None:
        self._when: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._dead = 0  # heap entries no longer any key's deadline

    def set(self, key: K, when: float | None) -> None:
        """Make ``when`` the deadline of ``key`` (None: cancel it)."""
        if when is None:
            self.cancel(key)
            return
        old = self._when.get(key)
        if old == when:
            return
        if old is not None:
            self._dead += 1
        self._when[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))

    def cancel(self, key: K) -> None:
        """Remove the deadline of ``key``, if any."""
        if self._when.pop(key, None) is not None:
            self._dead += 1
            if self._dead > _COMPACT_ABOVE and 2 * self._dead > len(self._heap):
                self._heap = [entry for entry in self._heap if self._live(entry)]
                heapq.heapify(self._heap)
                self._dead = 0

    def _live(self, entry: tuple[float, int, K]) -> bool:
        when, _, key = entry
        return self._when.get(key) == when

    def next_time(self) -> float | None:
        """The earliest deadline (None: there is none)."""
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
            self._dead = max(0, self._dead - 1)
        return heap[0][0] if heap else None

    def pop(self, now: float) -> tuple[float, K] | None:
        """The earliest deadline due at ``now`` and its key, which then has
        none; None when nothing is due."""
        when = self.next_time()
        if when is None or when > now:
            return None
        _, _, key = heapq.heappop(self._heap)
        del self._when[key]
        return when, key
