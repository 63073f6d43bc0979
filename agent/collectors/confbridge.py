"""The ConfBridge rooms an Asterisk hosts, from AMI, as affinity key strings.

Sans-I/O: the Asterisk collector feeds it AMI events and list answers.
What Asterisk 22.10.1 sends (recorded live: tests/real/test_confbridge_live.py
runs it again; tests/data/ami/22/event_stream_confbridge.txt has a stream):

- `ConfbridgeStart` (Conference) when a room's first caller enters, and
  `ConfbridgeEnd` when its last one leaves. Neither carries a channel.
- `ConfbridgeJoin` / `ConfbridgeLeave` (Conference, a channel snapshot)
  for each caller; the snapshot has one `ChanVariable: NAME=value` line per
  variable named in manager.conf's `channelvars`.
- The action `ConfbridgeListRooms` lists the rooms (one `ConfbridgeListRooms`
  event each, Conference and Parties); with no room at all Asterisk answers
  `Response: Error`, `Message: No active conferences.` rather than an empty
  list. `ConfbridgeList` with `Conference: NAME` lists a room's callers,
  each with its `ChanVariable` lines.
- All are class "call" events and "reporting" actions: the AMI user needs
  read `call` and write `reporting` (packaging/agent.toml).

A room's key string is its conference name, or, with `key_variable` set
(for tenants that reuse room names), "<value>/<conference>" where value is
that channel variable of the room's callers. A room whose key string is not
known yet (no caller seen with the variable) is not announced: a bare name
would mix tenants.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: Asterisk's answer to ConfbridgeListRooms when no room exists (app_confbridge.c).
NO_CONFERENCES = "No active conferences."
#: Between a tenant prefix and the conference name in a key string.
SEPARATOR = "/"


def channel_variables(fields: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The `ChanVariable: NAME=value` lines of an event, as a dict."""
    out: dict[str, str] = {}
    for key, value in fields:
        if key.lower() == "chanvariable":
            name, sep, val = value.partition("=")
            if sep and name:
                out.setdefault(name, val)
    return out


@dataclass(slots=True)
class RoomTable:
    """The rooms of one Asterisk and their key strings."""

    #: Channel variable whose value prefixes the key string; None: the
    #: conference name alone.
    key_variable: str | None = None
    #: False until a ConfbridgeListRooms answer has been applied since the Login.
    synced: bool = False
    #: Conference name -> key string (None while unknown, see the module doc).
    rooms: dict[str, str | None] = field(default_factory=dict)
    _during_sync: list[tuple[str, str, str | None]] | None = None

    def key_string(self, conference: str, variables: Mapping[str, str]) -> str | None:
        if self.key_variable is None:
            return conference
        value = variables.get(self.key_variable)
        return f"{value}{SEPARATOR}{conference}" if value else None

    @property
    def keys(self) -> frozenset[str]:
        """The key strings of the rooms whose key string is known."""
        return frozenset(k for k in self.rooms.values() if k is not None)

    def reset(self) -> None:
        """Forget everything (the AMI session ended: unknown until listed again)."""
        self.rooms.clear()
        self.synced = False
        self._during_sync = None

    def started(self, conference: str) -> bool:
        """ConfbridgeStart. Returns whether the key strings changed."""
        return self._op("start", conference, None)

    def joined(self, conference: str, variables: Mapping[str, str]) -> bool:
        """ConfbridgeJoin (also what a ConfbridgeList item says)."""
        return self._op("join", conference, self.key_string(conference, variables))

    def ended(self, conference: str) -> bool:
        """ConfbridgeEnd."""
        return self._op("end", conference, None)

    def _op(self, op: str, conference: str, key: str | None) -> bool:
        if self._during_sync is not None:
            self._during_sync.append((op, conference, key))
        before = self.rooms.get(conference)
        if op == "end":
            self.rooms.pop(conference, None)
        elif op == "start":
            self.rooms.setdefault(conference, self.key_string(conference, {}))
        elif self.rooms.get(conference) is None:
            self.rooms[conference] = key
        # Conference names are unique in one Asterisk, so are key strings.
        return self.rooms.get(conference) != before

    def begin_sync(self) -> None:
        """ConfbridgeListRooms was sent: remember the events until it is applied."""
        self._during_sync = []

    def end_sync(self, listed: Mapping[str, str | None]) -> bool:
        """Replace the rooms by the listed ones (conference -> key string,
        None when unknown), then replay the events that arrived meanwhile
        (each is idempotent). Returns whether the key strings changed."""
        before = self.keys
        replay, self._during_sync = self._during_sync or [], None
        old = self.rooms
        self.rooms = {c: (k if k is not None else old.get(c)) for c, k in listed.items()}
        for op, conference, key in replay:
            self._op(op, conference, key)
        self.synced = True
        return self.keys != before

    def abort_sync(self) -> None:
        self._during_sync = None
