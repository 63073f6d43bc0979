"""Asterisk's channels, calls, limit and call quality, over AMI.

Counting, from the event stream so that a change is seen at once:
  - a channel lives from its Newchannel to its Hangup, keyed by Uniqueid;
  - a call is a group of live channels sharing a Linkedid. In the B2BUA
    capture (event_stream_b2b.txt) each caller makes three channels: the
    inbound SIP/127.0.0.1-N and its Dial() leg SIP/127.0.0.1:5261-N share the
    inbound channel's Linkedid (the Dial leg's Newchannel carries it), while
    the looped-back PJSIP/anonymous-N starts its own Linkedid. Two callers:
    6 channels, 4 Linkedids; "core show channels count" in the same capture
    says "6 active channels / 4 active calls"
    (command_core_show_channels_count_b2b.txt), and the plain capture 5 / 5.
    Grouping by BridgeId would also give 4 here, but only after
    BridgeEnter, while the Linkedid is known at Newchannel;
  - never CoreCurrentCalls: it counts channels (corestatus_b2b.txt: 6).
  - a new call (for calls per second) is a Newchannel whose Linkedid has no
    live channel yet.
The counts are checked against CoreShowChannels after every Login (until
then they are unknown: channels that existed before the connection are not
in the event stream) and every `reconcile_interval` seconds.

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
from .ami import AmiClient, AmiError, AmiMessage
from .interface import AsteriskLink, OnChange, Reading
from .rtcp import RtcpTracker

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CallTable:
    """Live channels (Uniqueid -> Linkedid) and the calls they make up."""

    cps_window: float = 10.0
    #: False until a CoreShowChannels list has been applied since the Login.
    synced: bool = False
    _channels: dict[str, str] = field(default_factory=dict)
    _calls: dict[str, int] = field(default_factory=dict)  # Linkedid -> live channels
    _new_calls: deque[float] = field(default_factory=deque)
    _since: float | None = None
    _during_sync: list[tuple[str, str, str]] | None = None

    @property
    def channels(self) -> int:
        return len(self._channels)

    @property
    def calls(self) -> int:
        return len(self._calls)

    def reset(self, now: float) -> None:
        """Forget everything (a new session starts at `now`)."""
        self._channels.clear()
        self._calls.clear()
        self._new_calls.clear()
        self._since = now
        self.synced = False
        self._during_sync = None

    def add(self, uniqueid: str, linkedid: str, now: float) -> bool:
        """A Newchannel. Returns whether the counts changed."""
        if self._during_sync is not None:
            self._during_sync.append(("add", uniqueid, linkedid))
        if uniqueid in self._channels:
            return False
        self._channels[uniqueid] = linkedid
        if linkedid not in self._calls:
            self._calls[linkedid] = 0
            self._new_calls.append(now)
        self._calls[linkedid] += 1
        return True

    def remove(self, uniqueid: str) -> bool:
        """A Hangup. Returns whether the counts changed."""
        if self._during_sync is not None:
            self._during_sync.append(("remove", uniqueid, ""))
        linkedid = self._channels.pop(uniqueid, None)
        if linkedid is None:
            return False
        self._calls[linkedid] -= 1
        if self._calls[linkedid] <= 0:
            del self._calls[linkedid]
        return True

    def begin_sync(self) -> None:
        """A CoreShowChannels was sent: remember the events until it ends."""
        self._during_sync = []

    def end_sync(self, listed: Iterable[tuple[str, str]]) -> bool:
        """Replace the table with the listed (Uniqueid, Linkedid) pairs, then
        replay the events that arrived while the list was being sent (adding
        and removing by Uniqueid is idempotent, so an event already reflected
        in the list changes nothing). Returns whether the counts changed."""
        before = (self.channels, self.calls)
        replay = self._during_sync or []
        self._during_sync = None
        self._channels = dict(listed)
        self._calls = {}
        for linkedid in self._channels.values():
            self._calls[linkedid] = self._calls.get(linkedid, 0) + 1
        for op, uniqueid, linkedid in replay:
            if op == "add" and uniqueid not in self._channels:
                self._channels[uniqueid] = linkedid
                self._calls[linkedid] = self._calls.get(linkedid, 0) + 1
            elif op == "remove":
                self.remove(uniqueid)
        self.synced = True
        return before != (self.channels, self.calls)

    def abort_sync(self) -> None:
        self._during_sync = None

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
        )
        self.max_calls: int | None = None  # CoreMaxCalls, when > 0
        self.max_load: float | None = None  # CoreMaxLoadAvg, when > 0
        self.settings_error: str | None = None
        self._reconcile_task: asyncio.Task[None] | None = None
        self._reconciling = asyncio.Lock()
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
        if not client.connected:
            link = AsteriskLink.SHUTTING_DOWN if client.shutting_down else AsteriskLink.UNREACHABLE
            return Reading(link=link, error=client.last_error)
        link = AsteriskLink.SHUTTING_DOWN if client.shutting_down else AsteriskLink.UP
        limit = self.max_calls or self.config.max_calls or None
        if not self.table.synced:
            section = Asterisk(limit=limit)
        else:
            section = Asterisk(channels=self.table.channels, calls=self.table.calls, limit=limit, cps=self.table.cps(now))
        return Reading(asterisk=section, quality=self.rtcp.quality(now), link=link, max_load=self.max_load)

    # -- AMI callbacks --

    def _on_event(self, message: AmiMessage) -> None:
        event = message.event
        if event == "Newchannel":
            uniqueid, linkedid = message.get("Uniqueid"), message.get("Linkedid")
            if uniqueid and linkedid and self.table.add(uniqueid, linkedid, self.clock()):
                self._changed(f"channel {message.get('Channel')} appeared")
        elif event == "Hangup":
            uniqueid = message.get("Uniqueid")
            if uniqueid:
                self.rtcp.hangup(uniqueid)
                if self.table.remove(uniqueid):
                    self._changed(f"channel {message.get('Channel')} hung up")
        elif event in ("RTCPSent", "RTCPReceived"):
            self.rtcp.report(message.as_dict(), self.clock())

    async def _on_up(self) -> None:
        self.table.reset(self.clock())
        self.rtcp.clear()
        await self._read_settings()
        await self.reconcile()

    async def settled(self) -> None:
        """Returns once the counts are known or an attempt has failed (for a
        one-shot measurement that should not race the login)."""
        await self._settled.wait()

    def _on_down(self, reason: str) -> None:
        self._settled.set()
        was_known = self.table.synced
        self.table.reset(self.clock())
        self.rtcp.clear()
        if was_known:
            self._changed(f"AMI session lost: {reason}")

    def _on_shutdown(self) -> None:
        self._changed("Asterisk is shutting down")

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
            listed = [(m.get("Uniqueid") or "", m.get("Linkedid") or "") for m in answer.items if m.event == "CoreShowChannel"]
            if self.table.end_sync((u, linked) for u, linked in listed if u and linked):
                self._changed("counts corrected by CoreShowChannels")
            self._settled.set()
            return True

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval)
            if self.client.connected:
                try:
                    await self.reconcile()
                except Exception:  # a bug must not end the periodic checks
                    log.exception("AMI: reconciling the channel counts failed")


def _positive(text: str | None, kind: type) -> int | float | None:
    try:
        value = kind(float(text)) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None
