"""The Asterisk Manager Interface over TCP: a sans-I/O framer and a small
asyncio client with one connection, login, ActionID correlation, list
actions, unsolicited events and reconnection with capped exponential backoff.

Wire facts this follows, from the Asterisk 20.20.1 transcripts in
tests/data/ami/ (README.txt there) and Asterisk's AMI documentation:
  - The server speaks first with one banner line, "Asterisk Call
    Manager/9.0.0" + CRLF, and no blank line after it (login_ok.txt).
  - A message is "Key: value" lines ending in CRLF, closed by an empty line.
    A message with "Response:" answers an action and carries its ActionID;
    one with "Event:" is an event (list items carry the ActionID too).
  - List actions answer "Response: Success / EventList: start", then one
    event per item, then an event with "EventList: Complete"
    (coreshowchannels.txt, status.txt).
  - A failed Login is answered "Response: Error / Message: Authentication
    failed" after about 1 s and the server closes the socket
    (login_fail.txt, meta/login_fail.chunks.txt).
  - During a graceful shutdown every action, Login and Ping included, is
    answered "Response: Error / Message: Asterisk is shutting down" and the
    socket stays open (corestatus_during_graceful_shutdown.txt; 22/
    ping_during_graceful_shutdown.txt; manager.c process_message checks
    ast_shutting_down() before any action). No event announces it, so a
    periodic Ping is how a graceful stop is noticed, and how a connected but
    silent (stalled) session is found out.
  - "Action: Challenge / AuthType: MD5" returns "Challenge: <n>"; the MD5
    Login sends "AuthType: MD5" and "Key: md5hex(challenge + secret)"
    (docs.asterisk.org, Asterisk 20 AMI_Actions/Challenge and /Login; not in
    the transcripts).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)

#: The banner's fixed part (manager.c: "Asterisk Call Manager/%s\r\n").
BANNER_PREFIX = "Asterisk Call Manager/"

#: Longest line accepted, octets. The longest lines in the transcripts are
#: ~260 octets (RTPAUDIOQOSMES values); Asterisk's own reader buffer for one
#: line is 1025 octets (manager.c, `inbuf`), but events it sends can be
#: longer (Command output, long variables). 64 KiB leaves room for those and
#: still stops a peer that never sends a newline.
MAX_LINE_OCTETS = 64 * 1024
#: Largest message accepted, octets: an event with many long variables, or a
#: Command output, stays far below this.
MAX_MESSAGE_OCTETS = 1024 * 1024

#: The Message of the error Asterisk answers to every action while it stops
#: gracefully (corestatus_during_graceful_shutdown.txt).
SHUTTING_DOWN = "Asterisk is shutting down"


class Stopping(StrEnum):
    """What Asterisk has said about stopping, as far as this client knows."""

    #: Nothing: it runs (or is unreachable for an unknown reason).
    NO = "no"
    #: It answers actions "Asterisk is shutting down": a stop is under way
    #: (`core stop gracefully` waits for the calls to end; new calls are refused).
    REFUSING = "refusing"
    #: It has stopped: a Shutdown event, or the session ended while it was
    #: refusing. Until it is reachable again.
    STOPPED = "stopped"


#: Seconds after `AmiClient.retry_now()` during which failed attempts are
#: retried without the backoff doubling.
RETRY_WINDOW = 10.0
#: The same after Asterisk has stopped (a restart usually follows within
#: seconds: systemd, an operator's `core restart`); later the SIP probe's
#: recovery still cuts the backoff short.
STOPPED_WINDOW = 60.0


class AmiError(Exception):
    """Anything that went wrong talking to AMI; the text names what."""


class AmiProtocolError(AmiError):
    """The peer sent bytes that are not AMI (or exceed our limits)."""


class AmiDisconnected(AmiError):
    """The connection went away before the answer came."""


class AmiActionError(AmiError):
    """Asterisk answered an action with "Response: Error"."""

    def __init__(self, action: str, message: str) -> None:
        self.action = action
        self.message = message
        super().__init__(f"{action}: Asterisk answered Error: {message or '(no Message)'}")


class AmiLoginError(AmiActionError):
    """The Login (or its Challenge) was refused."""


# -- messages and framing (sans-I/O) ----------------------------------------


@dataclass(frozen=True, slots=True)
class AmiMessage:
    """One AMI message: its "Key: value" lines, in order, keys as sent."""

    fields: tuple[tuple[str, str], ...]

    def get(self, key: str, default: str | None = None) -> str | None:
        """The first value of `key` (case-insensitive, as Asterisk matches headers)."""
        key = key.lower()
        for k, v in self.fields:
            if k.lower() == key:
                return v
        return default

    def get_all(self, key: str) -> list[str]:
        """Every value of `key`, in order (e.g. the "Output" lines of a Command)."""
        key = key.lower()
        return [v for k, v in self.fields if k.lower() == key]

    @property
    def event(self) -> str | None:
        return self.get("Event")

    @property
    def response(self) -> str | None:
        return self.get("Response")

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")

    def as_dict(self) -> dict[str, str]:
        """Keys to first values; for code that reads many fields of one event."""
        out: dict[str, str] = {}
        for k, v in self.fields:
            out.setdefault(k, v)
        return out


class AmiFramer:
    """Cuts the byte stream from Asterisk into a banner and `AmiMessage`s.

    Lines end in CRLF (a bare LF is accepted too, as Asterisk itself accepts
    it on input). A line with no colon is not AMI: it is counted in
    `garbage_lines` and skipped, so stray bytes cost one message at most.
    """

    def __init__(self, max_line: int = MAX_LINE_OCTETS, max_message: int = MAX_MESSAGE_OCTETS) -> None:
        self.banner: str | None = None
        self.garbage_lines = 0
        self._max_line = max_line
        self._max_message = max_message
        self._buffer = bytearray()
        self._fields: list[tuple[str, str]] = []
        self._size = 0

    def feed(self, data: bytes) -> list[AmiMessage]:
        """The messages completed by `data`. Raises AmiProtocolError."""
        self._buffer += data
        out: list[AmiMessage] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(self._buffer[start:end])
            start = end + 1
            if len(line) > self._max_line:
                raise AmiProtocolError(f"line of {len(line)} octets, above the limit of {self._max_line}")
            message = self._line(line.removesuffix(b"\r").decode("utf-8", "replace"))
            if message is not None:
                out.append(message)
        del self._buffer[:start]
        if len(self._buffer) > self._max_line:
            raise AmiProtocolError(f"no end of line after {len(self._buffer)} octets (limit {self._max_line})")
        return out

    def _line(self, text: str) -> AmiMessage | None:
        if self.banner is None:
            if not text.startswith(BANNER_PREFIX):
                raise AmiProtocolError(f"not an AMI server: first line is {text[:60]!r}, expected {BANNER_PREFIX!r}...")
            self.banner = text
            return None
        if not text:
            if not self._fields:
                return None  # blank lines between messages
            message = AmiMessage(tuple(self._fields))
            self._fields = []
            self._size = 0
            return message
        key, colon, value = text.partition(":")
        if not colon or not key or " " in key:
            self.garbage_lines += 1
            return None
        self._size += len(text) + 2
        if self._size > self._max_message:
            raise AmiProtocolError(f"message above the limit of {self._max_message} octets")
        self._fields.append((key, value[1:] if value.startswith(" ") else value))
        return None


def format_action(action: str, action_id: str, fields: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> bytes:
    """The bytes of one action. Raises ValueError for a value that would
    break the framing (CR or LF inside)."""
    pairs = list(fields.items() if isinstance(fields, Mapping) else fields)
    lines = [("Action", action), ("ActionID", action_id), *pairs]
    out = []
    for key, value in lines:
        value = str(value)
        if "\r" in value or "\n" in value or "\r" in key or "\n" in key or ":" in key:
            raise ValueError(f"AMI action {action}: header {key!r} has a line break or colon")
        out.append(f"{key}: {value}\r\n")
    out.append("\r\n")
    return "".join(out).encode("utf-8")


def md5_key(challenge: str, secret: str) -> str:
    """The Key of an MD5 Login: md5(challenge + secret) as lower-case hex
    (docs.asterisk.org, AMI_Actions/Login, argument Key)."""
    return hashlib.md5((challenge + secret).encode("utf-8")).hexdigest()


@dataclass(slots=True)
class AmiResponse:
    """The answer to one action: the Response message and, for list
    actions, the item events and the closing "EventList: Complete" event."""

    response: AmiMessage
    items: list[AmiMessage] = field(default_factory=list)
    complete: AmiMessage | None = None


# -- the asyncio client -----------------------------------------------------


@dataclass(slots=True)
class _Pending:
    action: str
    future: asyncio.Future[AmiResponse]
    answer: AmiResponse | None = None


class AmiClient:
    """One AMI session to one Asterisk, kept up for the life of the agent.

    `start()` spawns a task that connects, logs in, reads until the
    connection ends, waits (exponential backoff, capped) and starts again.
    Callbacks, all run in the event loop:
      - `on_event(message)`: every unsolicited event;
      - `on_up()`: awaited after each successful Login (a good place for
        the actions that rebuild state);
      - `on_down(reason)`: each time the session ends or an attempt fails;
      - `on_shutdown()`: what Asterisk said about stopping changed
        (`stopping`: an action answered "Asterisk is shutting down", a
        Shutdown event, the end of a session of a stopping Asterisk, or the
        end of all that).

    While logged in, a Ping goes every `ping_interval` seconds (0: never):
    it notices a graceful stop (answered "Asterisk is shutting down") and a
    stalled session (no answer within `ping_timeout` s: the session is
    closed and opened again).
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        auth: str = "plain",
        events: str = "system,call,reporting,dialplan",
        on_event: Callable[[AmiMessage], None] | None = None,
        on_up: Callable[[], Awaitable[None]] | None = None,
        on_down: Callable[[str], None] | None = None,
        on_shutdown: Callable[[], None] | None = None,
        connect_timeout: float = 3.0,
        action_timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        ping_interval: float = 1.0,
        ping_timeout: float = 2.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if auth not in ("plain", "md5"):
            raise ValueError(f"AMI auth must be 'plain' or 'md5', got {auth!r}")
        self.host = host
        self.port = port
        self.username = username
        self._secret = secret
        self.auth = auth
        self.events = events
        self.on_event = on_event
        self.on_up = on_up
        self.on_down = on_down
        self.on_shutdown = on_shutdown
        self.connect_timeout = connect_timeout
        self.action_timeout = action_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._sleep = sleep
        self._retry = asyncio.Event()
        self._failures = 0
        self._fast_until = 0.0
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._logged_in = False
        self._closed_because: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._read_task: asyncio.Task[None] | None = None
        #: True while logged in.
        self.connected = False
        #: What Asterisk said about stopping (see `Stopping`).
        self.stopping = Stopping.NO
        #: Why the last attempt or session ended; None while connected and
        #: before the first attempt has ended.
        self.last_error: str | None = None
        #: The server's banner of the current or last session.
        self.banner: str | None = None
        #: Delays waited between attempts, for tests and logs.
        self.backoffs: list[float] = []
        #: Lines that were not AMI, over all sessions.
        self.garbage_lines = 0
        #: Events handed to on_event, over all sessions.
        self.events_received = 0
        #: Pings answered, over all sessions.
        self.pings = 0

    @property
    def shutting_down(self) -> bool:
        """Asterisk said it is stopping (refusing actions, or stopped)."""
        return self.stopping is not Stopping.NO

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"ami {self.address}")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if self._writer is not None and self.connected:
            with contextlib.suppress(Exception):
                self._writer.write(format_action("Logoff", f"logoff-{next(self._ids)}"))
        self._close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def retry_now(self, window: float = RETRY_WINDOW) -> None:
        """Asterisk is reachable again (its SIP stack answers after a silence):
        what it said about stopping is over, and the next attempt to connect
        goes now; for `window` seconds more, failed attempts are retried
        after `backoff_initial` without doubling (a booting Asterisk may
        answer SIP before its AMI listens)."""
        if self.stopping is Stopping.STOPPED:
            self._set_stopping(Stopping.NO)
        if not self.connected:
            self._failures = 0
            self._fast_until = asyncio.get_running_loop().time() + window
            self._retry.set()

    async def action(self, action: str, fields: Mapping[str, str] | None = None, timeout: float | None = None) -> AmiResponse:
        """Send `action` and wait for its answer (all items, for list actions).

        Raises AmiDisconnected (not connected, or the connection dropped),
        AmiActionError ("Response: Error"), AmiError (no answer in time; the
        session is then closed, since a wedged session must not linger).
        """
        if not self.connected:
            raise AmiDisconnected(f"AMI {self.address}: not connected ({self.last_error or 'connecting'})")
        return await self._action(action, fields or {}, timeout)

    async def _action(self, action: str, fields: Mapping[str, str], timeout: float | None) -> AmiResponse:
        writer = self._writer
        if writer is None:
            raise AmiDisconnected(f"AMI {self.address}: not connected")
        action_id = f"sipstatus-{next(self._ids)}"
        future: asyncio.Future[AmiResponse] = asyncio.get_running_loop().create_future()
        self._pending[action_id] = _Pending(action, future)
        try:
            writer.write(format_action(action, action_id, fields))
            await writer.drain()
            limit = self.action_timeout if timeout is None else timeout
            waits: set[asyncio.Future[Any]] = {future}
            if self._read_task is not None:
                waits.add(self._read_task)  # the connection ending ends the wait
            await asyncio.wait(waits, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
            if not future.done():
                if self._read_task is not None and self._read_task.done():
                    raise AmiDisconnected(f"AMI {self.address}: connection ended while waiting for the answer to {action}")
                reason = f"AMI {self.address}: no answer to {action} within {limit:g} s; closing the session"
                self._close(reason)
                raise AmiError(reason)
            answer = future.result()
        except (ConnectionError, OSError) as exc:
            raise AmiDisconnected(f"AMI {self.address}: {action} not sent: {exc}") from None
        finally:
            self._pending.pop(action_id, None)
        if (answer.response.response or "").lower() == "error":
            message = answer.response.get("Message") or ""
            if message == SHUTTING_DOWN:
                self._set_stopping(Stopping.REFUSING)
            raise AmiActionError(action, message)
        if self.stopping is Stopping.REFUSING:
            self._set_stopping(Stopping.NO)  # answered: the stop was called off
        return answer

    # -- the connection loop --

    async def _run(self) -> None:
        self._failures = 0
        while not self._stopping:
            self._logged_in = False
            self._closed_because = None
            try:
                await self._session()
                reason = self._closed_because or f"AMI {self.address}: connection closed by Asterisk"
            except asyncio.CancelledError:
                raise
            except AmiError as exc:
                reason = str(exc) if str(exc).startswith("AMI ") else f"AMI {self.address}: {exc}"
            except TimeoutError:
                reason = f"AMI {self.address}: no answer within {self.connect_timeout:g} s"
            except ConnectionRefusedError:
                reason = f"AMI {self.address}: connection refused (is Asterisk running, with AMI enabled in manager.conf?)"
            except OSError as exc:
                reason = f"AMI {self.address}: {exc.strerror or exc}"
            finally:
                self._close()
            self._went_down(reason)
            if self._stopping:
                break
            if self._logged_in or asyncio.get_running_loop().time() < self._fast_until:
                self._failures = 0  # a session that got as far as a Login resets the backoff
            delay = min(self.backoff_max, self.backoff_initial * (2**self._failures))
            self._failures += 1
            self.backoffs.append(delay)
            await self._wait_backoff(delay)

    async def _wait_backoff(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if `retry_now()` is called."""
        self._retry.clear()
        sleep = asyncio.ensure_future(self._sleep(delay))
        retry = asyncio.ensure_future(self._retry.wait())
        try:
            await asyncio.wait({sleep, retry}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleep, retry):
                task.cancel()
            await asyncio.gather(sleep, retry, return_exceptions=True)

    async def _session(self) -> None:
        """One connection: connect, read the banner, log in, read until EOF."""
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.connect_timeout)
        self._writer = writer
        framer = AmiFramer()
        banner_seen: asyncio.Future[None] = loop.create_future()
        read_task = loop.create_task(self._read(reader, framer, banner_seen))
        self._read_task = read_task
        try:
            await asyncio.wait({banner_seen, read_task}, timeout=self.connect_timeout, return_when=asyncio.FIRST_COMPLETED)
            if not banner_seen.done():
                if read_task.done():
                    read_task.result()  # a protocol error, if that is why it ended
                    raise AmiDisconnected(f"AMI {self.address}: closed before sending the banner")
                raise AmiError(f"AMI {self.address}: no banner within {self.connect_timeout:g} s")
            self.banner = framer.banner
            refusing = self.stopping is Stopping.REFUSING
            await self._login()
            if refusing and self.stopping is Stopping.REFUSING:
                self._set_stopping(Stopping.NO)  # it takes logins again: the stop was called off
            self._logged_in = True
            self.last_error = None
            log.debug("AMI %s: logged in as %s (%s)", self.address, self.username, self.banner)
            if self.on_up is not None:
                up = loop.create_task(self.on_up())
                self._tasks.add(up)  # a reference, or the task may be collected mid-flight
                up.add_done_callback(self._tasks.discard)
                up.add_done_callback(_log_task_failure)
            ping = loop.create_task(self._keepalive(), name=f"ami ping {self.address}")
            try:
                await read_task
            finally:
                ping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ping
        finally:
            if not read_task.done():
                read_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await read_task

    async def _keepalive(self) -> None:
        """A Ping every `ping_interval` s while logged in (see the class doc).
        No answer in `ping_timeout` s closes the session (in `_action`)."""
        if self.ping_interval <= 0:
            return
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self._action("Ping", {}, self.ping_timeout)
            except AmiActionError:
                pass  # answered (an error, e.g. "Asterisk is shutting down"): alive
            except AmiError:
                return  # no answer (the session is being closed) or disconnected
            self.pings += 1

    async def _login(self) -> None:
        fields: dict[str, str] = {"Username": self.username}
        try:
            if self.auth == "md5":
                challenge = await self._action("Challenge", {"AuthType": "MD5"}, self.connect_timeout)
                token = challenge.response.get("Challenge")
                if not token:
                    raise AmiLoginError("Challenge", "answer has no Challenge field")
                fields.update({"AuthType": "MD5", "Key": md5_key(token, self._secret)})
            else:
                fields["Secret"] = self._secret
            fields["Events"] = self.events
            # A failed Login is answered after ~1 s (login_fail.chunks.txt):
            # wait long enough for it.
            await self._action("Login", fields, max(self.connect_timeout, 2.0))
        except AmiActionError as exc:
            if exc.message == SHUTTING_DOWN:
                raise AmiLoginError("Login", SHUTTING_DOWN) from None
            raise AmiLoginError(exc.action, f"{exc.message} (user {self.username!r}, auth {self.auth})") from None

    async def _read(self, reader: asyncio.StreamReader, framer: AmiFramer, banner_seen: asyncio.Future[None]) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                before = framer.garbage_lines
                messages = framer.feed(data)
                if framer.garbage_lines != before:
                    self.garbage_lines += framer.garbage_lines - before
                if framer.banner is not None and not banner_seen.done():
                    banner_seen.set_result(None)
                for message in messages:
                    self._dispatch(message)
        finally:
            # Whoever waits for an answer learns now, not at its timeout.
            self._fail_pending(f"AMI {self.address}: connection ended")

    def _dispatch(self, message: AmiMessage) -> None:
        pending = self._pending.get(message.action_id or "")
        if pending is not None and not pending.future.done():
            if pending.answer is None and message.response is not None:
                pending.answer = AmiResponse(message)
                if pending.action == "Login" and (message.response or "").lower() == "success":
                    # Set here, before the events that came in the same read
                    # are dispatched (a Shutdown right after the Login counts).
                    self.connected = True
                    if self.stopping is Stopping.STOPPED:
                        self._set_stopping(Stopping.NO)
                if (message.get("EventList") or "").lower() != "start":
                    pending.future.set_result(pending.answer)
                return
            if pending.answer is not None and message.event is not None:
                if (message.get("EventList") or "").lower() == "complete":
                    pending.answer.complete = message
                    pending.future.set_result(pending.answer)
                else:
                    pending.answer.items.append(message)
                return
        if message.response is not None:
            if message.get("Message") == SHUTTING_DOWN:
                self._set_stopping(Stopping.REFUSING)
            return  # an answer to an action nobody waits for any more
        if message.event is None:
            return  # neither Response nor Event: not AMI (garbage joined a line)
        if message.event == "Shutdown":
            self._set_stopping(Stopping.STOPPED)
        elif message.event == "FullyBooted" and self.stopping is Stopping.STOPPED:
            self._set_stopping(Stopping.NO)
        self.events_received += 1
        if self.on_event is not None:
            try:
                self.on_event(message)
            except Exception:  # a consumer bug must not kill the session
                log.exception("AMI %s: handler of event %s failed", self.address, message.event)

    def _set_stopping(self, stopping: Stopping) -> None:
        if stopping is not self.stopping:
            log.debug("AMI %s: stopping %s -> %s", self.address, self.stopping.value, stopping.value)
            self.stopping = stopping
            if stopping is Stopping.STOPPED:
                self._fast_until = asyncio.get_running_loop().time() + STOPPED_WINDOW
            if self.on_shutdown is not None:
                self.on_shutdown()

    def _went_down(self, reason: str) -> None:
        was_connected = self.connected
        self.connected = False
        if self.stopping is Stopping.REFUSING and not reason.endswith(SHUTTING_DOWN):
            # The session of a stopping Asterisk ended, and not because it
            # refused our Login (then it still runs, refusing): it is gone.
            self._set_stopping(Stopping.STOPPED)
        self.last_error = reason
        self._fail_pending(reason)
        if self.on_down is not None:
            self.on_down(reason)
        log.debug("AMI %s: down (was connected: %s): %s", self.address, was_connected, reason)

    def _fail_pending(self, reason: str) -> None:
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(AmiDisconnected(f"{reason} (while waiting for the answer to {pending.action})"))
                pending.future.exception()  # marked retrieved; the waiter re-raises it

    def _close(self, because: str | None = None) -> None:
        """Close the connection; `because` becomes the reason of the end."""
        if because is not None and self._writer is not None:
            self._closed_because = because
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("AMI: after-login task failed: %s", task.exception())
