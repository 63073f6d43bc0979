"""The sender's side of load-affinity: versions of a key set, and what each
subscription (or publication) is sent next (spec/load-affinity.md section 6).

Sans-I/O. An `AffinityFeed` holds the node's current key set and numbers
its versions; it remembers the recent versions so that a delta can be made
from any of them to the current one. Each reader (one per subscription or
publication) has a `FeedReader` that says which body goes next:

- the pages of a full set, one after another (a snapshot: they describe the
  version they started with), after a SUBSCRIBE, when asked (`restart`), at
  least every `refresh` seconds, and when a delta would not fit one body;
- otherwise a delta from the version the reader last got to the current one;
- otherwise (nothing new, yet a body is due: the heartbeat) a full set.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from .affinity import MAX_KEYS, AffinityBody, Kind, full_pages

#: Versions remembered for deltas. A reader further behind gets a full set.
HISTORY = 64


class AffinityFeed:
    """The node's key set and its versions."""

    def __init__(self, node: str, instance: str, validity: int, *, history: int = HISTORY) -> None:
        self.node = node
        self.instance = instance
        self.validity = validity
        self.version = 0
        self.keys: frozenset[str] = frozenset()
        self._history: OrderedDict[int, frozenset[str]] = OrderedDict({0: self.keys})
        self._limit = history

    @property
    def refresh(self) -> float:
        """Seconds between two full sets to one reader (the heartbeat): validity/3."""
        return self.validity / 3

    def update(self, keys: Iterable[str]) -> bool:
        """The set is now `keys`. Returns True (and makes a new version) if it changed."""
        keys = frozenset(keys)
        if keys == self.keys:
            return False
        self.version += 1
        self.keys = keys
        self._history[self.version] = keys
        while len(self._history) > self._limit:
            self._history.popitem(last=False)
        return True

    def at(self, version: int) -> frozenset[str] | None:
        """The set at `version`, if still remembered."""
        return self._history.get(version)

    def reader(self) -> FeedReader:
        return FeedReader(self)


class FeedReader:
    """What one subscription or publication has been sent, and what goes next."""

    def __init__(self, feed: AffinityFeed) -> None:
        self.feed = feed
        #: The version the reader has (after the last body sent); None: none yet.
        self.version: int | None = None
        self._pages: list[AffinityBody] = []
        self._full_due = float("-inf")

    @property
    def more(self) -> bool:
        """Pages of a full set remain to be sent, or the set has moved on."""
        return bool(self._pages) or self.version != self.feed.version

    @property
    def paging(self) -> bool:
        return bool(self._pages)

    def restart(self) -> None:
        """Send a full set next (a new SUBSCRIBE, a 412, a body the receiver
        did not get); pages of an older full set still unsent are dropped."""
        self._pages = []
        self.version = None

    def next_body(self, now: float) -> AffinityBody:
        feed = self.feed
        if not self._pages:
            base = None if self.version is None else feed.at(self.version)
            if base is not None and now < self._full_due and self.version != feed.version:
                add = tuple(sorted(feed.keys - base))
                remove = tuple(sorted(base - feed.keys))
                if len(add) + len(remove) <= MAX_KEYS:
                    body = AffinityBody(feed.node, feed.instance, feed.version, feed.validity, Kind.DELTA,
                                        base=self.version, add=add, remove=remove)
                    self.version = feed.version
                    return body
            self._pages = full_pages(feed.node, feed.instance, feed.version, feed.validity, feed.keys)
            self._full_due = now + feed.refresh
        body = self._pages.pop(0)
        if not self._pages:
            self.version = body.seq
        return body
