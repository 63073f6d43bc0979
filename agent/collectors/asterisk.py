"""Asterisk's channels, calls, limit and call quality, over AMI.

Counting, from the event stream so that a change is seen at once:
  - a channel lives from its Newchannel to its Hangup, keyed by Uniqueid;
  - a call is what Asterisk counts against `maxcalls`: a channel that runs
    the dialplan. main/pbx.c increase_call_count() is called by
    ast_pbx_start() and ast_pbx_run_args(), i.e. for every channel a PBX
    thread runs (inbound channels, the `;2` half of a Local channel,
    originated channels sent to an extension), and the count drops when
    that thread ends; "core show channels count" prints it as "active
    calls" (ast_active_calls()). A channel that Dial() (or Queue, or an
    Originate) creates runs no dialplan: Asterisk gives it the placeholder
    application AppDial (AppQueue, AppDial2). So a channel counts as a call
    while the application of its latest Newexten event (class "dialplan";
    Asterisk sends one whenever the application is first set) is not a
    placeholder. In the B2BUA capture (event_stream_b2b.txt) each caller
    makes three channels: the inbound SIP/127.0.0.1-N (Dial), its Dial()
    leg SIP/127.0.0.1:5261-N (AppDial) and the looped-back
    PJSIP/anonymous-N (Echo): 6 channels, 4 calls, as "core show channels
    count" said (command_core_show_channels_count_b2b.txt). A Dial(Local/..)
    call is two calls: the caller and the Local `;2` half both run the
    dialplan (22/README.txt), and Asterisk refuses the next channel at
    maxcalls counting both. A channel refused at the limit never runs the
    dialplan, so it is never counted;
  - never CoreCurrentCalls: it counts channels (corestatus_b2b.txt: 6);
  - a new call (for calls per second) is a channel that starts running the
    dialplan, as Asterisk's own "calls processed" counts them;
  - ConfBridge's announcer channels (CBAnn/...) are internal: AMI shows them
    neither as events nor in CoreShowChannels, so `channels` is lower than
    "core show channels" by one per conference with announcements (they run
    no dialplan: `calls` is not affected).
The counts are checked against CoreShowChannels (whose items carry each
channel's current Application) after every Login (until then they are
unknown: channels that existed before the connection are not in the event
stream) and every `reconcile_interval` seconds. The AMI user needs read
"dialplan" for the Newexten events; a reconciliation that finds a channel
announced on this session running an application with no Newexten ever
received says it lacks that, and the calls are then unknown, not zero.

The limit: CoreSettings' CoreMaxCalls (asterisk.conf maxcalls; 0 = none,
then the config's max_calls, then unknown) and CoreMaxLoadAvg (maxload; 0 =
none). CoreSettings is not in the transcripts; its fields are those of
manager.c action_coresettings (github.com/asterisk/asterisk main/manager.c;
docs.asterisk.org Asterisk 20 AMI_Actions/CoreSettings documents the action).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sipstatus.status import Asterisk

from ..config import AsteriskConfig, ami_secret
from .ami import SHUTTING_DOWN, AmiActionError, AmiClient, AmiError, AmiMessage, Stopping
from .confbridge import NO_CONFERENCES, RoomTable, channel_variables
from .interface import AsteriskLink, OnChange, Reading
from .rtcp import RtcpTracker

log = logging.getLogger(__name__)


#: The applications Asterisk gives channels that run no dialplan: the
#: outbound legs of Dial() and Queue() (apps/app_dial.c, apps/app_queue.c
#: ast_channel_appl_set) and of main/dial.c (Originate, Page).
OUTBOUND_LEG_APPLICATIONS = frozenset({"AppDial", "AppDial2", "AppQueue"})


def runs_dialplan(application: str | None) -> bool:
    """Whether a channel whose current application is this is in the PBX
    (counted by Asterisk against maxcalls)."""
    return bool(application) and application not in OUTBOUND_LEG_APPLICATIONS


@dataclass(slots=True)
class _Channel:
    linkedid: str
    #: When its Newchannel came (monotonic s); None when known from a list.
    added: float | None = None
    #: Its latest application runs the dialplan (see the module doc).
    call: bool = False
    #: Counted once as a new call (calls per second) already.
    started: bool = False
    #: A Newexten was received for it.
    exten_seen: bool = False


@dataclass(slots=True)
class CallTable:
    """Live channels (by Uniqueid) and which of them are calls."""

    cps_window: float = 10.0
    #: False until a CoreShowChannels list has been applied since the Login.
    synced: bool = False
    _channels: dict[str, _Channel] = field(default_factory=dict)
    _calls: int = 0
    _new_calls: deque[float] = field(default_factory=deque)
    _since: float | None = None
    _during_sync: list[tuple[str, str, str, float]] | None = None

    @property
    def channels(self) -> int:
        return len(self._channels)

    @property
    def calls(self) -> int:
        return self._calls

    def reset(self, now: float) -> None:
        """Forget everything (a new session starts at `now`)."""
        self._channels.clear()
        self._calls = 0
        self._new_calls.clear()
        self._since = now
        self.synced = False
        self._during_sync = None

    def add(self, uniqueid: str, linkedid: str, now: float) -> bool:
        """A Newchannel. Returns whether the counts changed."""
        if self._during_sync is not None:
            self._during_sync.append(("add", uniqueid, linkedid, now))
        if uniqueid in self._channels:
            return False
        self._channels[uniqueid] = _Channel(linkedid, added=now)
        return True

    def application(self, uniqueid: str, application: str, now: float) -> bool:
        """A Newexten: the channel's application is now `application`.
        Returns whether the counts changed."""
        if self._during_sync is not None:
            self._during_sync.append(("app", uniqueid, application, now))
        channel = self._channels.get(uniqueid)
        if channel is None:
            return False
        channel.exten_seen = True
        return self._set_call(channel, runs_dialplan(application), now)

    def _set_call(self, channel: _Channel, call: bool, now: float | None) -> bool:
        if call == channel.call:
            return False
        channel.call = call
        self._calls += 1 if call else -1
        if call and not channel.started:
            channel.started = True
            if now is not None:
                self._new_calls.append(now)
        return True

    def remove(self, uniqueid: str) -> bool:
        """A Hangup. Returns whether the counts changed."""
        if self._during_sync is not None:
            self._during_sync.append(("remove", uniqueid, "", 0.0))
        channel = self._channels.pop(uniqueid, None)
        if channel is None:
            return False
        if channel.call:
            self._calls -= 1
        return True

    def begin_sync(self) -> None:
        """A CoreShowChannels was sent: remember the events until it ends."""
        self._during_sync = []

    def end_sync(self, listed: Iterable[tuple[str, str, str]]) -> bool:
        """Replace the table with the listed (Uniqueid, Linkedid, Application)
        triples, then replay the events that arrived while the list was being
        sent (each is idempotent, so an event already reflected in the list
        changes nothing). A listed channel already known keeps what the
        events said about it when the list shows no application. Returns
        whether the counts changed."""
        before = (self.channels, self.calls)
        replay = self._during_sync or []
        self._during_sync = None
        old = self._channels
        self._channels = {}
        self._calls = 0
        for uniqueid, linkedid, application in listed:
            known = old.get(uniqueid)
            channel = _Channel(linkedid, added=known.added if known else None,
                               started=known.started if known else True,
                               exten_seen=known.exten_seen if known else False)
            call = runs_dialplan(application) if application or known is None else known.call
            self._channels[uniqueid] = channel
            self._set_call(channel, call, None)
        for op, uniqueid, value, now in replay:
            if op == "add":
                self.add(uniqueid, value, now)
            elif op == "app":
                self.application(uniqueid, value, now)
            else:
                self.remove(uniqueid)
        self.synced = True
        return before != (self.channels, self.calls)

    def abort_sync(self) -> None:
        self._during_sync = None

    def silent_channels(self, listed: Iterable[tuple[str, str, str]], now: float, age: float = 5.0) -> list[str]:
        """Of the listed channels, those announced by a Newchannel on this
        session at least `age` s ago that run an application although no
        Newexten came for them (call before `end_sync`)."""
        out = []
        for uniqueid, _, application in listed:
            known = self._channels.get(uniqueid)
            if (known is not None and not known.exten_seen and application and known.added is not None
                    and now - known.added >= age):
                out.append(uniqueid)
        return out

    def cps(self, now: float) -> float | None:
        """New calls per second over the last `cps_window` seconds (or since
        the session started, if that is shorter, but at least 1 s)."""
        if self._since is None:
            return None
        horizon = now - self.cps_window
        while self._new_calls and self._new_calls[0] <= horizon:
            self._new_calls.popleft()
        span = max(1.0, min(self.cps_window, now - self._since))
        return len(self._new_calls) / span


class AsteriskCollector:
    """The "asterisk" collector: AMI session, call table, RTCP quality."""

    name = "asterisk"

    def __init__(self, config: AsteriskConfig, on_change: OnChange | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.on_change = on_change
        self.clock = clock
        self.table = CallTable(cps_window=config.cps_window)
        self.rtcp = RtcpTracker(window=config.quality_window, clock_rate=config.clock_rate)
        self.client = AmiClient(
            config.host,
            config.port,
            config.username,
            ami_secret(config),
            auth=config.auth,
            on_event=self._on_event,
            on_up=self._on_up,
            on_down=self._on_down,
            on_shutdown=self._on_shutdown,
            connect_timeout=config.connect_timeout,
            action_timeout=config.action_timeout,
            backoff_initial=config.backoff_initial,
            backoff_max=config.backoff_max,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
        )
        #: Why the calls are unknown although the channels are known (the
        #: AMI user sends no Newexten events); None when they are counted.
        self.calls_error: str | None = None
        self.max_calls: int | None = None  # CoreMaxCalls, when > 0
        self.max_load: float | None = None  # CoreMaxLoadAvg, when > 0
        self.settings_error: str | None = None
        #: The ConfBridge rooms (agent/collectors/confbridge.py), for the
        #: load-affinity package; None when `rooms` is off.
        self.rooms: RoomTable | None = RoomTable(config.room_key_variable or None) if config.rooms else None
        #: Why the rooms could not be listed (None when they were).
        self.rooms_error: str | None = None
        self._reconcile_task: asyncio.Task[None] | None = None
        self._reconciling = asyncio.Lock()
        self._listing_rooms = asyncio.Lock()
        self._settled = asyncio.Event()

    async def start(self) -> None:
        self.table.reset(self.clock())
        await self.client.start()
        if self._reconcile_task is None:
            self._reconcile_task = asyncio.get_running_loop().create_task(self._reconcile_loop(), name="ami reconcile")

    async def stop(self) -> None:
        task, self._reconcile_task = self._reconcile_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.stop()

    def collect(self, now: float) -> Reading:
        client = self.client
        if client.stopping is Stopping.STOPPED:
            return Reading(link=AsteriskLink.SHUTTING_DOWN, error=client.last_error)
        stopping = client.stopping is Stopping.REFUSING
        if not client.connected:
            if stopping:
                return Reading(link=AsteriskLink.STOPPING, error=client.last_error or f"AMI {client.address}: {SHUTTING_DOWN}")
            return Reading(link=AsteriskLink.UNREACHABLE, error=client.last_error)
        link = AsteriskLink.STOPPING if stopping else AsteriskLink.UP
        limit = self.max_calls or self.config.max_calls or None
        if not self.table.synced:
            section = Asterisk(limit=limit)
        elif self.calls_error is not None:
            section = Asterisk(channels=self.table.channels, limit=limit)
        else:
            section = Asterisk(channels=self.table.channels, calls=self.table.calls, limit=limit, cps=self.table.cps(now))
        error = self.calls_error or (f"AMI {client.address}: {SHUTTING_DOWN}" if stopping else None)
        return Reading(asterisk=section, quality=self.rtcp.quality(now), link=link, max_load=self.max_load, error=error)

    def reachable_again(self) -> None:
        """Asterisk answers again (the SIP probe's first answer after a
        silence): what it said about stopping is over, and AMI is tried at
        once instead of at the end of the reconnection backoff."""
        self.client.retry_now()

    # -- AMI callbacks --

    def _on_event(self, message: AmiMessage) -> None:
        event = message.event
        if event == "Newchannel":
            uniqueid, linkedid = message.get("Uniqueid"), message.get("Linkedid")
            if uniqueid and linkedid and self.table.add(uniqueid, linkedid, self.clock()):
                self._changed(f"channel {message.get('Channel')} appeared")
        elif event == "Newexten":
            uniqueid = message.get("Uniqueid")
            if uniqueid and self.table.application(uniqueid, message.get("Application") or "", self.clock()):
                self._changed(f"channel {message.get('Channel')} runs {message.get('Application')}")
        elif event == "Hangup":
            uniqueid = message.get("Uniqueid")
            if uniqueid:
                self.rtcp.hangup(uniqueid)
                if self.table.remove(uniqueid):
                    self._changed(f"channel {message.get('Channel')} hung up")
        elif event in ("RTCPSent", "RTCPReceived"):
            self.rtcp.report(message.as_dict(), self.clock())
        elif event is not None and event.startswith("Confbridge") and self.rooms is not None:
            self._on_room_event(event, message)

    def _on_room_event(self, event: str, message: AmiMessage) -> None:
        rooms = self.rooms
        assert rooms is not None
        conference = message.get("Conference")
        if not conference:
            return
        if event == "ConfbridgeStart":
            changed = rooms.started(conference)
        elif event == "ConfbridgeJoin":
            changed = rooms.joined(conference, channel_variables(message.fields))
        elif event == "ConfbridgeEnd":
            changed = rooms.ended(conference)
        else:
            return
        if changed:
            self._changed(f"room {conference} {event.removeprefix('Confbridge').lower()}")

    async def _on_up(self) -> None:
        self.calls_error = None
        self.table.reset(self.clock())
        self.rtcp.clear()
        await self._read_settings()
        await self.reconcile()
        await self.list_rooms()

    @property
    def reported(self) -> bool:
        """The counts are known, or an attempt has failed (the sampler's readiness)."""
        return self._settled.is_set()

    async def settled(self) -> None:
        """Returns once the counts are known or an attempt has failed (for a
        one-shot measurement that should not race the login)."""
        await self._settled.wait()

    def _on_down(self, reason: str) -> None:
        self._settled.set()
        was_known = self.table.synced
        if self.rooms is not None:
            # Unknown until listed again; the announced set stays as it was
            # meanwhile (unknown is not "no rooms"), see AgentService.
            self.rooms.reset()
        self.table.reset(self.clock())
        self.rtcp.clear()
        if was_known:
            self._changed(f"AMI session lost: {reason}")

    def _on_shutdown(self) -> None:
        self._changed(f"Asterisk stopping: {self.client.stopping.value}")

    def _changed(self, what: str) -> None:
        if self.on_change is not None:
            self.on_change(what)

    # -- actions --

    async def _read_settings(self) -> None:
        try:
            answer = await self.client.action("CoreSettings")
        except AmiError as exc:
            self.max_calls = self.max_load = None
            if str(exc) != self.settings_error:
                log.warning("AMI: CoreSettings failed, the call limit comes from the config: %s", exc)
            self.settings_error = str(exc)
            return
        self.settings_error = None
        self.max_calls = _positive(answer.response.get("CoreMaxCalls"), int)
        self.max_load = _positive(answer.response.get("CoreMaxLoadAvg"), float)

    async def reconcile(self) -> bool:
        """Replace the event-built counts by CoreShowChannels' list. Returns
        False when the list could not be read (the counts stay as they were)."""
        async with self._reconciling:
            self.table.begin_sync()
            try:
                answer = await self.client.action("CoreShowChannels")
            except AmiError as exc:
                self.table.abort_sync()
                self._settled.set()
                log.debug("AMI: CoreShowChannels failed: %s", exc)
                return False
            listed = [(m.get("Uniqueid") or "", m.get("Linkedid") or "", m.get("Application") or "")
                      for m in answer.items if m.event == "CoreShowChannel"]
            listed = [item for item in listed if item[0] and item[1]]
            silent = self.table.silent_channels(listed, self.clock())
            if silent and self.calls_error is None:
                self.calls_error = (f"AMI {self.client.address}: no Newexten events for channels that run the dialplan "
                                    f"({len(silent)}, e.g. {silent[0]}): the AMI user {self.config.username!r} needs "
                                    "read = dialplan in manager.conf; calls unknown")
                log.warning("%s", self.calls_error)
                self._changed("calls unknown")
            if self.table.end_sync(listed):
                self._changed("counts corrected by CoreShowChannels")
            self._settled.set()
            return True

    async def list_rooms(self) -> bool:
        """Replace the event-built rooms by ConfbridgeListRooms (and, when
        the key needs a channel variable, ConfbridgeList of each room whose
        key string is not known). Returns False when they could not be read."""
        rooms = self.rooms
        if rooms is None:
            return False
        async with self._listing_rooms:
            rooms.begin_sync()
            try:
                answer = await self.client.action("ConfbridgeListRooms")
                names = [m.get("Conference") or "" for m in answer.items if m.event == "ConfbridgeListRooms"]
            except AmiActionError as exc:
                if exc.message != NO_CONFERENCES:
                    return self._rooms_failed(rooms, exc)
                names = []  # Asterisk's way of saying "none"
            except AmiError as exc:
                return self._rooms_failed(rooms, exc)
            listed: dict[str, str | None] = {name: rooms.key_string(name, {}) for name in names if name}
            for name in [n for n, k in listed.items() if k is None and rooms.rooms.get(n) is None]:
                try:
                    members = await self.client.action("ConfbridgeList", {"Conference": name})
                except AmiError:
                    continue  # ended meanwhile, or unreadable: its next join names it
                for item in members.items:
                    key = rooms.key_string(name, channel_variables(item.fields))
                    if key is not None:
                        listed[name] = key
                        break
            self.rooms_error = None
            if rooms.end_sync(listed):
                self._changed("rooms corrected by ConfbridgeListRooms")
            return True

    def _rooms_failed(self, rooms: RoomTable, exc: AmiError) -> bool:
        rooms.abort_sync()
        text = (f"AMI {self.client.address}: ConfbridgeListRooms failed ({exc}); the AMI user "
                f"{self.config.username!r} needs write = reporting and read = call in manager.conf, "
                "and app_confbridge loaded; rooms unknown")
        if text != self.rooms_error:
            log.warning("%s", text)
        self.rooms_error = text
        return False

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval)
            if self.client.connected:
                try:
                    await self.reconcile()
                    await self.list_rooms()
                except Exception:  # a bug must not end the periodic checks
                    log.exception("AMI: reconciling the channel counts failed")


def _positive(text: str | None, kind: type) -> int | float | None:
    try:
        value = kind(float(text)) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None
