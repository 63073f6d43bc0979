"""A fake AMI server that replays the real Asterisk transcripts in
tests/data/ami/ (Asterisk 20.20.1) and tests/data/ami/22/ (Asterisk 22.10.1)
over a real TCP socket.

It invents no AMI behaviour: every byte it sends comes from a transcript
(with the ActionID rewritten to the client's; in the CoreSettings answer of
22/login_ping_coresettings.txt, CoreMaxCalls and CoreMaxLoadAvg set to the
scenario's), except two answers that no transcript holds, which follow
Asterisk's documentation and source:
  - the MD5 Challenge answer, "Response: Success / ActionID / Challenge: <n>"
    (docs.asterisk.org Asterisk 20 AMI_Actions/Challenge; manager.c
    action_challenge appends "Challenge: %s" to the Success response);
  - the answer to an unknown action, manager.c process_message: "Response:
    Error / Message: Invalid/unknown command: X. Use Action: ListCommands to
    show available commands."
Ping is answered as Asterisk 22 did (22/login_ping_coresettings.txt), and
refused "Asterisk is shutting down" like every action while a scenario
says Asterisk is stopping (22/ping_during_graceful_shutdown.txt).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import DATA

#: The recorded transcripts, kept in the repository (README.txt there says how
#: they were recorded).
AMI_DIR = DATA / "ami"

CRLF = b"\r\n"


def ami_dir() -> Path:
    """The transcripts directory, or a clear error naming where it should be."""
    if (AMI_DIR / "README.txt").is_file():
        return AMI_DIR
    raise FileNotFoundError(f"AMI transcripts not found: expected them in {AMI_DIR} (part of the repository)")


def parse_block(raw: bytes) -> list[tuple[str, str]]:
    """The "Key: value" pairs of one raw message (test-side parser, kept
    independent of agent.collectors.ami)."""
    pairs = []
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        if not line:
            continue
        key, _, value = line.partition(": ")
        pairs.append((key, value))
    return pairs


def field_of(pairs: list[tuple[str, str]], key: str) -> str | None:
    for k, v in pairs:
        if k.lower() == key.lower():
            return v
    return None


@dataclass
class Message:
    raw: bytes  # the exact bytes, blank line included
    offset: int  # where it ends in the transcript (octets after the banner start)
    time: float  # when its last byte arrived, seconds after connect (meta/*.chunks.txt)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return parse_block(self.raw)

    def get(self, key: str) -> str | None:
        return field_of(self.pairs, key)


@dataclass
class Transcript:
    """One recorded connection: banner, messages, and what the client sent."""

    name: str
    banner: bytes
    messages: list[Message]
    sent: list[list[tuple[str, str]]]
    closed_by_server: bool

    @classmethod
    def load(cls, name: str) -> Transcript:
        """`name` is a file of tests/data/ami without ".txt", or of one of
        its folders ("22/login_ping_coresettings": Asterisk 22's), each
        folder with its own sent/ and meta/."""
        folder, _, name = name.rpartition("/")
        base = ami_dir() / folder
        data = (base / f"{name}.txt").read_bytes()
        banner_end = data.index(CRLF) + 2
        recv_times = _chunk_times(base / "meta" / f"{name}.chunks.txt")
        messages = []
        pos = banner_end
        while pos < len(data):
            end = data.find(CRLF + CRLF, pos)
            if end < 0:
                end = len(data) - 2  # an unterminated tail (a stream cut by the server)
            end += 4
            messages.append(Message(data[pos:end], end, _time_of(recv_times, end)))
            pos = end
        sent_raw = (base / "sent" / f"{name}.sent.txt").read_bytes()
        sent = [parse_block(b) for b in sent_raw.split(CRLF + CRLF) if b.strip()]
        meta = (base / "meta" / f"{name}.chunks.txt").read_text()
        # The server closed on its own (a shutdown), not in answer to Logoff.
        after_logoff = bool(messages) and messages[-1].get("Response") == "Goodbye"
        return cls(f"{folder}/{name}" if folder else name, data[:banner_end], messages, sent,
                   "EOF (peer closed)" in meta and not after_logoff)

    def action_id_of(self, action: str) -> str:
        """The ActionID the recording client used for `action`."""
        for pairs in self.sent:
            if (field_of(pairs, "Action") or "").lower() == action.lower():
                return field_of(pairs, "ActionID") or ""
        raise KeyError(f"{self.name}: the client sent no {action} action")

    def answer_to(self, action: str) -> list[Message]:
        """The response (and list items) the server sent to `action`."""
        action_id = self.action_id_of(action)
        return [m for m in self.messages if m.get("ActionID") == action_id]

    def events(self) -> list[Message]:
        """Unsolicited events (no ActionID) in order, as the server sent them."""
        return [m for m in self.messages if m.get("Event") is not None and m.get("ActionID") is None]

    def wallclock_start(self) -> str:
        folder, _, name = self.name.rpartition("/")
        head = (ami_dir() / folder / "meta" / f"{name}.chunks.txt").read_text().splitlines()[0]
        return head.split("=", 1)[1]


def _chunk_times(path: Path) -> list[tuple[int, float]]:
    """(cumulative octets received, time) after each recv() of the recording."""
    out = []
    total = 0
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        t, direction, count, *_ = line.split("\t")
        if direction == "recv" and int(count) > 0:
            total += int(count)
            out.append((total, float(t)))
    return out


def _time_of(times: list[tuple[int, float]], offset: int) -> float:
    for total, t in times:
        if total >= offset:
            return t
    return times[-1][1] if times else 0.0


def with_action_id(raw: bytes, action_id: str) -> bytes:
    """`raw` with its ActionID line's value replaced by `action_id`."""
    return re.sub(rb"(?m)^ActionID: [^\r\n]*", b"ActionID: " + action_id.encode(), raw, count=1)


@dataclass
class Scenario:
    """How the fake Asterisk behaves on one connection."""

    username: str = "agent"
    secret: str = "secret"
    #: Every action, Login included, answered "Asterisk is shutting down"
    #: (corestatus_during_graceful_shutdown.txt); the socket stays open.
    shutting_down: bool = False
    #: Seconds before a failed Login is answered (1.001 s in login_fail.chunks.txt).
    login_fail_delay: float = 1.0
    #: Action name -> transcript whose recorded answer to it is replayed.
    answers: dict[str, str] = field(default_factory=dict)
    #: The CoreSettings answer's CoreMaxCalls and CoreMaxLoadAvg (see module doc).
    max_calls: int = 0
    max_load: float = 0.0
    #: A transcript whose unsolicited events are streamed after the Login.
    stream: str | None = None
    #: Replay speed: None sends the events at once; 10.0 plays them ten times
    #: faster than recorded, following meta/*.chunks.txt.
    speed: float | None = None
    #: Start the stream only after answering this action (e.g.
    #: "CoreShowChannels": the client's snapshot then precedes the stream, as
    #: it did in the recording, where the session was open before any call).
    stream_after: str | None = None
    #: Play the stream this many times over (benchmarks: a long busy session).
    repeat: int = 1
    #: Only events that had arrived by this time (seconds after connect) in the recording.
    stream_until: float | None = None
    #: After the stream: "stay" (keep serving actions) or "close" (EOF). A
    #: transcript the server closed (shutdown_*.txt) always ends in "close".
    then: str = "stay"
    #: Bytes written after the Login answer, before the stream.
    garbage: bytes = b""
    #: Actions that get no answer at all (a wedged Asterisk).
    ignore: frozenset[str] = frozenset()
    #: Actions whose answer is cut in the middle and followed by EOF.
    drop_during: frozenset[str] = frozenset()
    #: Close the connection right after the banner.
    close_after_banner: bool = False
    #: From this many seconds after the Login on, every action is refused
    #: "Asterisk is shutting down" on the open session (a `core stop
    #: gracefully` while logged in: 22/ping_during_graceful_shutdown.txt).
    shutting_down_after: float | None = None
    #: Close the connection this many seconds after the Login (Asterisk exits).
    close_after: float | None = None


class FakeAmi:
    """`async with FakeAmi(Scenario(...)) as ami:` then connect to `ami.port`.

    `scenarios` may be a list: connection N gets scenarios[N] (the last one
    for every later connection), which is how reconnection is tested.
    """

    def __init__(self, scenarios: Scenario | list[Scenario] | None = None) -> None:
        if scenarios is None:
            scenarios = Scenario()
        self.scenarios = scenarios if isinstance(scenarios, list) else [scenarios]
        self.connections = 0
        self.received: list[list[list[tuple[str, str]]]] = []  # per connection, the actions
        self.streamed = asyncio.Event()  # set when a stream has been fully written
        self.events_sent = 0  # streamed events written, over all connections
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._sessions: set[_Session] = set()
        self.logged_in = asyncio.Event()  # set when a client has logged in
        self._login_ok = Transcript.load("login_ok")
        self._login_fail = Transcript.load("login_fail")
        self._draining = Transcript.load("corestatus_during_graceful_shutdown")
        self._idle22 = Transcript.load("22/login_ping_coresettings")
        self.host = "127.0.0.1"
        self.port = 0
        #: Answers for actions no Scenario replays: (action, ActionID) ->
        #: the bytes to send, or None for the unknown-action error
        #: (tests/support/fake_ami_rooms.py answers ConfBridge's actions this way).
        self.extra_answer: Callable[[str, str, list[tuple[str, str]]], bytes | None] | None = None

    async def __aenter__(self) -> FakeAmi:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def emit(self, raw: bytes) -> int:
        """Write one recorded event (its exact bytes, from a transcript) to
        every logged-in connection now; returns how many got it. Tests use
        it to make a channel appear or go at a moment of their choosing."""
        sessions = [s for s in self._sessions if s.logged_in]
        for session in sessions:
            await session.send(raw)
        return len(sessions)

    async def drop_all(self) -> None:
        """Close every open connection (EOF to the client), as a crash would."""
        for w in list(self._writers):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        index = self.connections
        self.connections += 1
        scenario = self.scenarios[min(index, len(self.scenarios) - 1)]
        actions: list[list[tuple[str, str]]] = []
        self.received.append(actions)
        session = _Session(self, scenario, reader, writer, actions)
        self._sessions.add(session)
        try:
            await session.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            session.cancel_stream()
            self._sessions.discard(session)
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)


class _Session:
    def __init__(self, server: FakeAmi, scenario: Scenario, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, actions: list) -> None:
        self.server = server
        self.s = scenario
        self.reader = reader
        self.writer = writer
        self.actions = actions
        self.logged_in = False
        self.logged_in_at: float | None = None
        self.challenge: str | None = None
        self.stream_task: asyncio.Task[None] | None = None
        self.close_task: asyncio.Task[None] | None = None

    def cancel_stream(self) -> None:
        for task in (self.stream_task, self.close_task):
            if task is not None:
                task.cancel()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def run(self) -> None:
        await self.send(self.server._login_ok.banner)
        if self.s.close_after_banner:
            return
        buffer = b""
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            buffer += data
            while CRLF + CRLF in buffer:
                raw, buffer = buffer.split(CRLF + CRLF, 1)
                pairs = parse_block(raw + CRLF)
                self.actions.append(pairs)
                if not await self.answer(pairs):
                    return

    async def answer(self, pairs: list[tuple[str, str]]) -> bool:
        """Answer one action; False when the connection must end."""
        action = field_of(pairs, "Action") or ""
        action_id = field_of(pairs, "ActionID") or ""
        if self.s.shutting_down or self._refusing():
            await self.send(with_action_id(self.server._draining.messages[0].raw, action_id))
            return True
        name = action.lower()
        if name == "challenge":
            self.challenge = "1" + str(abs(hash(action_id)) % 10**8)
            await self.send(f"Response: Success\r\nActionID: {action_id}\r\nChallenge: {self.challenge}\r\n\r\n".encode())
            return True
        if name == "login":
            return await self.login(pairs, action_id)
        if name == "logoff":
            goodbye = self.server._login_ok.answer_to("Logoff")[0]
            await self.send(with_action_id(goodbye.raw, action_id))
            return False
        if not self.logged_in:
            # manager.c process_message: actions before Login are refused.
            await self.send(f"Response: Error\r\nActionID: {action_id}\r\nMessage: Permission denied\r\n\r\n".encode())
            return True
        if name in {a.lower() for a in self.s.ignore}:
            return True
        if name == "coresettings":
            await self.send(self.core_settings(action_id))
            return True
        if name == "ping" and "ping" not in {a.lower() for a in self.s.answers}:
            pong = self.server._idle22.answer_to("Ping")[0]
            await self.send(with_action_id(pong.raw, action_id))
            return True
        transcript = next((t for a, t in self.s.answers.items() if a.lower() == name), None)
        extra = self.server.extra_answer(action, action_id, pairs) \
            if transcript is None and self.server.extra_answer is not None else None
        if extra is not None:
            await self.send(extra)
            return True
        if transcript is None:
            await self.send(
                f"Response: Error\r\nActionID: {action_id}\r\nMessage: Invalid/unknown command: {action}. "
                "Use Action: ListCommands to show available commands.\r\n\r\n".encode()
            )
            return True
        answer = b"".join(with_action_id(m.raw, action_id) for m in Transcript.load(transcript).answer_to(action))
        if action in self.s.drop_during or name in {a.lower() for a in self.s.drop_during}:
            await self.send(answer[: len(answer) // 2])
            return False
        await self.send(answer)
        if self.s.stream is not None and (self.s.stream_after or "").lower() == name:
            self.start_stream()
        return True

    def _refusing(self) -> bool:
        after = self.s.shutting_down_after
        return (after is not None and self.logged_in_at is not None
                and asyncio.get_running_loop().time() - self.logged_in_at >= after)

    async def _close_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.writer.close()

    async def login(self, pairs: list[tuple[str, str]], action_id: str) -> bool:
        user = field_of(pairs, "Username")
        if (field_of(pairs, "AuthType") or "plain").lower() == "md5":
            expected = hashlib.md5(((self.challenge or "") + self.s.secret).encode()).hexdigest()
            good = self.challenge is not None and field_of(pairs, "Key") == expected
        else:
            good = field_of(pairs, "Secret") == self.s.secret
        if not good or user != self.s.username:
            await asyncio.sleep(self.s.login_fail_delay)
            await self.send(with_action_id(self.server._login_fail.messages[0].raw, action_id))
            return False  # login_fail.txt: the server closes right after
        await self.send(with_action_id(self.server._login_ok.messages[0].raw, action_id))
        self.logged_in = True
        self.logged_in_at = asyncio.get_running_loop().time()
        self.server.logged_in.set()
        if self.s.close_after is not None:
            self.close_task = asyncio.get_running_loop().create_task(self._close_later(self.s.close_after))
        if self.s.garbage:
            await self.send(self.s.garbage)
        if self.s.stream is not None and self.s.stream_after is None:
            self.start_stream()
        return True

    def start_stream(self) -> None:
        if self.stream_task is None:
            self.stream_task = asyncio.get_running_loop().create_task(self.stream())

    async def stream(self) -> None:
        transcript = Transcript.load(self.s.stream)  # type: ignore[arg-type]
        events = transcript.events()
        if self.s.stream_until is not None:
            events = [e for e in events if e.time <= self.s.stream_until]
        loop = asyncio.get_running_loop()
        first = events[0].time if events else 0.0
        for _ in range(self.s.repeat):
            start = loop.time()
            for event in events:
                if self.s.speed is not None:
                    delay = (event.time - first) / self.s.speed - (loop.time() - start)
                    if delay > 0:
                        await asyncio.sleep(delay)
                await self.send(event.raw)
                self.server.events_sent += 1
        self.server.streamed.set()
        cut = self.s.stream_until is not None
        if (transcript.closed_by_server and not cut) or self.s.then == "close":
            self.writer.close()

    def core_settings(self, action_id: str) -> bytes:
        """Asterisk 22's recorded answer, with the scenario's limits."""
        raw = with_action_id(self.server._idle22.answer_to("CoreSettings")[0].raw, action_id)
        raw = re.sub(rb"(?m)^CoreMaxCalls: [^\r\n]*", f"CoreMaxCalls: {self.s.max_calls:d}".encode(), raw)
        return re.sub(rb"(?m)^CoreMaxLoadAvg: [^\r\n]*", f"CoreMaxLoadAvg: {self.s.max_load:f}".encode(), raw)


async def eventually(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait (polling the event loop) until `predicate()` is true; fail after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


# -- for agents that run as processes ------------------------------------------------------------------


class FakeAmis:
    """Fake Asterisk managers (tests/support/fake_ami.py, replaying real Asterisk 20
    transcripts) for agents that run as processes: the servers live in one
    background thread with its own event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-ami", daemon=True)
        self.thread.start()
        self.servers: list[FakeAmi] = []

    def serve(self, scenario: Scenario) -> int:
        """A new server playing `scenario`; returns its TCP port on 127.0.0.1."""
        async def open_server() -> FakeAmi:
            return await FakeAmi(scenario).__aenter__()

        server = asyncio.run_coroutine_threadsafe(open_server(), self.loop).result(10)
        self.servers.append(server)
        return server.port

    def close(self) -> None:
        for server in self.servers:
            asyncio.run_coroutine_threadsafe(server.close(), self.loop).result(10)
        self.servers.clear()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
