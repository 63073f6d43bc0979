"""A fake Asterisk's ConfBridge rooms over AMI, for nodes that are SIPp
UASes: rooms appear and go as the UAS's calls join and leave.

Every byte it sends is a message of the real Asterisk 22.10.1 recording
tests/data/ami/22/confbridge_rooms.txt (record_rooms.py), with the room's
name, the channel and its Uniqueid put in: ConfbridgeStart and
ConfbridgeJoin when a room's first caller joins, ConfbridgeJoin for the
others, ConfbridgeLeave, and ConfbridgeEnd after the last; the answers to
ConfbridgeListRooms ("No active conferences." as an Error when there is
none, else one ConfbridgeListRooms event per room and the Complete event)
and ConfbridgeList. The agent's handling of the same messages from the real
Asterisk is proven by tests/real/test_confbridge_live.py.

The SIPp UAS (tests/sipp/affinity/room-node.xml) appends "join ROOM CALLID"
and "leave ROOM CALLID" lines to a file that `follow()` reads.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from tests.support.fake_ami import FakeAmi, Transcript, with_action_id

RECORDING = "22/confbridge_rooms"


def _put(raw: bytes, **fields: str) -> bytes:
    for name, value in fields.items():
        raw = re.sub(rb"(?m)^" + name.encode() + rb": [^\r\n]*", f"{name}: {value}".encode(), raw)
    return raw


class RoomsAmi:
    """ConfBridge rooms on top of a FakeAmi (`rooms.ami`)."""

    def __init__(self, ami: FakeAmi) -> None:
        self.ami = ami
        ami.extra_answer = self._answer
        t = Transcript.load(RECORDING)
        events = {m.get("Event"): m.raw for m in reversed(t.events())}
        self._start, self._join = events["ConfbridgeStart"], events["ConfbridgeJoin"]
        self._leave, self._end = events["ConfbridgeLeave"], events["ConfbridgeEnd"]
        by_id: dict[str, list[bytes]] = {}
        for m in t.messages:
            action_id = m.get("ActionID")
            if action_id:
                by_id.setdefault(action_id, []).append(m.raw)
        self._none = by_id["rooms-1"][0]
        self._rooms_head, self._rooms_item, self._rooms_done = by_id["rooms-2"][0], by_id["rooms-2"][1], by_id["rooms-2"][-1]
        self._list_head, self._list_item, self._list_done = by_id["list-1"][0], by_id["list-1"][1], by_id["list-1"][-1]
        #: room -> call ids in it
        self.rooms: dict[str, list[str]] = {}
        self._channels = 0

    async def join(self, room: str, call_id: str) -> None:
        fresh = room not in self.rooms
        members = self.rooms.setdefault(room, [])
        if call_id in members:
            return
        members.append(call_id)
        if fresh:
            await self.ami.emit(_put(self._start, Conference=room, BridgeName=room))
        await self.ami.emit(self._member(self._join, room, call_id))

    async def leave(self, room: str, call_id: str) -> None:
        members = self.rooms.get(room)
        if not members or call_id not in members:
            return
        members.remove(call_id)
        await self.ami.emit(self._member(self._leave, room, call_id))
        if not members:
            del self.rooms[room]
            await self.ami.emit(_put(self._end, Conference=room, BridgeName=room))

    def _member(self, raw: bytes, room: str, call_id: str) -> bytes:
        n = abs(hash(call_id)) % 10**8
        return _put(raw, Conference=room, BridgeName=room, Channel=f"PJSIP/callers-{n:08x}",
                    Uniqueid=f"1796200000.{n}", Linkedid=f"1796200000.{n}", Exten=f"room-{room}")

    def _answer(self, action: str, action_id: str, pairs: list[tuple[str, str]]) -> bytes | None:
        name = action.lower()
        if name == "confbridgelistrooms":
            if not self.rooms:
                return with_action_id(self._none, action_id)
            items = [_put(with_action_id(self._rooms_item, action_id), Conference=room, Parties=str(len(calls)))
                     for room, calls in self.rooms.items()]
            done = _put(with_action_id(self._rooms_done, action_id), ListItems=str(len(items)))
            return with_action_id(self._rooms_head, action_id) + b"".join(items) + done
        if name == "confbridgelist":
            room = next((v for k, v in pairs if k.lower() == "conference"), "")
            calls = self.rooms.get(room, [])
            items = [self._member(with_action_id(self._list_item, action_id), room, c) for c in calls]
            done = _put(with_action_id(self._list_done, action_id), ListItems=str(len(items)))
            return with_action_id(self._list_head, action_id) + b"".join(items) + done
        return None

    async def follow(self, path: Path, stop: asyncio.Event) -> None:
        """Apply the "join ROOM CALLID" / "leave ROOM CALLID" lines appended to `path`."""
        offset = 0
        while not stop.is_set():
            if path.exists():
                data = path.read_bytes()
                end = data.rfind(b"\n") + 1
                for line in data[offset:end].decode(errors="replace").splitlines():
                    parts = line.split()
                    if len(parts) == 3 and parts[0] == "join":
                        await self.join(parts[1], parts[2])
                    elif len(parts) == 3 and parts[0] == "leave":
                        await self.leave(parts[1], parts[2])
                offset = end
            await asyncio.sleep(0.02)
