"""SIP OPTIONS round trips to the local Asterisk, over UDP.

Every `interval` seconds one OPTIONS goes to `target`; a final response of
any status (200, or 404/401 from a stack that answers but does not like us)
is an answer: the SIP stack is alive, and the time to it is the round trip.
No answer within `timeout` is a timeout. There are no retransmissions: one
probe is one datagram, so a lost datagram counts as a timeout and never
inflates a round trip by a retransmission timer. An ICMP port unreachable
(nothing listens) fails the oldest outstanding probe at once.

`collect(now)` reports, over the last `window` seconds: p50, p95 and max of
the round trips (nearest-rank percentiles), the number answered
(`samples`) and unanswered (`timeouts`); and, for the scorer, the probes
unanswered since the last answered one.

The SIP part is two functions behind `OptionsCodec`; `SipOptionsCodec`
builds and reads the messages with the project's SIP core (sipstatus.sip).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sipstatus.sip import Request, Response, SipError, parse_message
from sipstatus.sip.identifiers import IdGenerator
from sipstatus.status import Probe

from ..config import ProbeConfig
from .interface import OnChange, Reading

# -- the SIP adapter ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int

    @classmethod
    def parse(cls, uri: str) -> Target:
        """sip:HOST[:PORT] (HOST may be [IPv6]). Raises ValueError."""
        m = re.fullmatch(r"sip:(?:[^@;?]*@)?(\[[0-9A-Fa-f:.]+\]|[^:;?\[\]]+)(?::(\d{1,5}))?", uri)
        if not m or (m.group(2) and not 0 < int(m.group(2)) < 65536):
            raise ValueError(f"probe target {uri!r} is not sip:host[:port]")
        return cls(m.group(1).strip("[]"), int(m.group(2) or 5060))

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 5060 else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    branch: str
    call_id: str
    cseq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    status: int
    branch: str | None
    call_id: str | None


class OptionsCodec(Protocol):
    """The SIP the probe needs: build one OPTIONS, read one response."""

    def request(self, target: Target, local: tuple[str, int], cseq: int) -> ProbeRequest: ...

    def response(self, data: bytes) -> ProbeAnswer | None:
        """The status and identifiers of a response; None if `data` is not one."""
        ...


class SipOptionsCodec:
    """Builds the OPTIONS with the project's SIP core (RFC 3261 section 11:
    Via with a z9hG4bK branch and rport, Max-Forwards, From with tag, To,
    Call-ID, CSeq) and reads a response through its parser. A datagram that
    is not a SIP response is no answer."""

    def __init__(self, ids: IdGenerator | None = None) -> None:
        self._ids = ids or IdGenerator()
        self._tag = self._ids.tag()

    def request(self, target: Target, local: tuple[str, int], cseq: int) -> ProbeRequest:
        branch = self._ids.branch()
        call_id = self._ids.call_id()
        host = f"[{local[0]}]" if ":" in local[0] else local[0]
        request = Request("OPTIONS", f"sip:{target.hostport}", [
            ("Via", f"SIP/2.0/UDP {host}:{local[1]};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:sipstatus-probe@{host}>;tag={self._tag}"),
            ("To", f"<sip:{target.hostport}>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} OPTIONS"),
            ("Accept", "application/sdp"),
            ("User-Agent", "sipstatus-agent probe"),
        ])
        return ProbeRequest(branch, call_id, cseq, request.to_bytes())

    def response(self, data: bytes) -> ProbeAnswer | None:
        try:
            message = parse_message(data)
        except SipError:
            return None
        if not isinstance(message, Response):
            return None
        via = message.top_via
        return ProbeAnswer(message.status, via.branch if via else None, message.call_id)


# -- statistics over the window (pure) -------------------------------------------


def nearest_rank(ordered: list[float], p: float) -> float:
    """The p-th percentile (0 < p <= 100) of sorted values, nearest rank."""
    return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]


@dataclass
class ProbeStats:
    window: float = 10.0
    #: (time, round trip in ms) for answers, (time, None) for failures.
    _results: deque[tuple[float, float | None]] = field(default_factory=deque)
    failures_in_row: int = 0

    def answered(self, now: float, rtt_ms: float) -> None:
        self._results.append((now, rtt_ms))
        self.failures_in_row = 0

    def failed(self, now: float) -> None:
        self._results.append((now, None))
        self.failures_in_row += 1

    def summary(self, now: float) -> Probe:
        horizon = now - self.window
        while self._results and self._results[0][0] < horizon:
            self._results.popleft()
        rtts = sorted(r for _, r in self._results if r is not None)
        timeouts = sum(1 for _, r in self._results if r is None)
        if not rtts:
            return Probe(samples=0, timeouts=timeouts)
        return Probe(p50=nearest_rank(rtts, 50), p95=nearest_rank(rtts, 95), max=rtts[-1], samples=len(rtts), timeouts=timeouts)


# -- the collector ----------------------------------------------------------------


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, probe: ProbeCollector) -> None:
        self.probe = probe

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.probe._received(data)

    def error_received(self, exc: Exception) -> None:
        self.probe._refused(exc)


@dataclass
class _Outstanding:
    sent: float
    request: ProbeRequest
    timer: asyncio.TimerHandle | None = None


class ProbeCollector:
    name = "probe"

    def __init__(self, config: ProbeConfig, codec: OptionsCodec | None = None, clock: Callable[[], float] = time.monotonic,
                 on_change: OnChange | None = None, on_recovered: Callable[[], None] | None = None) -> None:
        self.config = config
        #: Called with "probe" when a probe fails, and when an answer ends a
        #: run of failures: a hung Asterisk reaches the proxies at once.
        self.on_change = on_change
        #: Called when an answer ends a run of failures (Asterisk answers
        #: again: the AMI collector need not wait out its backoff).
        self.on_recovered = on_recovered
        self.target = Target.parse(config.target)
        self.codec: OptionsCodec = codec or SipOptionsCodec()
        self.clock = clock
        self.stats = ProbeStats(window=config.window)
        self.last_error: str | None = None
        #: An OPTIONS has been answered since start (the sampler's readiness).
        self.reported = False
        self.unmatched = 0  # responses that answered no outstanding probe
        self._outstanding: dict[str, _Outstanding] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._cseq = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sip probe")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for o in self._outstanding.values():
            if o.timer is not None:
                o.timer.cancel()
        self._outstanding.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def collect(self, now: float) -> Reading:
        return Reading(probe=self.stats.summary(now), probe_failures_in_row=self.stats.failures_in_row, error=self.last_error)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.target.host else 0
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self), remote_addr=(self.target.host, self.target.port), family=family
        )
        self._transport = transport

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._transport is None:
                    await self._open()
                self._send(loop)
            except OSError as exc:
                # Name resolution or socket failure: this probe fails.
                self._fail_probe(None, f"SIP probe to {self.config.target}: {exc.strerror or exc}")
                if self._transport is not None:
                    self._transport.close()
                    self._transport = None
            await asyncio.sleep(self.config.interval)

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._transport is not None
        self._cseq += 1
        local = self._transport.get_extra_info("sockname")[:2]
        request = self.codec.request(self.target, local, self._cseq)
        outstanding = _Outstanding(self.clock(), request)
        self._outstanding[request.branch] = outstanding
        outstanding.timer = loop.call_later(self.config.timeout, self._timed_out, request.branch)
        self._transport.sendto(request.data)

    def _received(self, data: bytes) -> None:
        answer = self.codec.response(data)
        if answer is None or answer.status < 200:
            return  # not a response, or provisional: wait for the final one
        outstanding = self._outstanding.get(answer.branch or "")
        if outstanding is None or outstanding.request.call_id != answer.call_id:
            self.unmatched += 1  # late (after its timeout) or not ours
            return
        del self._outstanding[answer.branch]  # type: ignore[arg-type]
        if outstanding.timer is not None:
            outstanding.timer.cancel()
        now = self.clock()
        recovered = self.stats.failures_in_row > 0
        first = not self.reported
        self.reported = True
        self.stats.answered(now, (now - outstanding.sent) * 1000.0)
        self.last_error = None
        if recovered and self.on_recovered is not None:
            self.on_recovered()
        if (recovered or first) and self.on_change is not None:
            self.on_change("probe")

    def _timed_out(self, branch: str) -> None:
        if branch in self._outstanding:
            self._fail_probe(branch, f"SIP probe to {self.config.target}: no answer within {self.config.timeout:g} s")

    def _refused(self, exc: Exception) -> None:
        oldest = min(self._outstanding.items(), key=lambda kv: kv[1].sent, default=None)
        reason = "nothing listens there (ICMP port unreachable)" if isinstance(exc, ConnectionRefusedError) else str(exc)
        if oldest is None:
            self.last_error = f"SIP probe to {self.config.target}: {reason}"
            return  # that probe has already timed out
        self._fail_probe(oldest[0], f"SIP probe to {self.config.target}: {reason}")

    def _fail_probe(self, branch: str | None, reason: str) -> None:
        if branch is not None:
            outstanding = self._outstanding.pop(branch, None)
            if outstanding is None:
                return
            if outstanding.timer is not None:
                outstanding.timer.cancel()
        self.stats.failed(self.clock())
        self.last_error = reason
        if self.on_change is not None:
            self.on_change("probe")
