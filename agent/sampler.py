"""The Sampler owns the collectors, takes a measurement, scores it and
returns the `LoadStatus`: the piece the service loop (issue 5) and the
`sample` command share.

Failures are contained here: a collector that raises is caught, its fields
are unknown for that sample, and each distinct failure is logged once (when
it first appears, and again when it clears), not every second.

Readiness: a node is not `active` (nor `overloaded` or `draining`) before
every enabled collector has reported once: until then its state is `down`
with the reason "starting: waiting for ...". A collector with a `reported`
attribute (the SIP probe: answered once; AMI: channels listed, or an
attempt failed) has reported when it says so; any other when it has
collected once. After the settle time (`settle_time`: long enough for the
probe to reach its own verdict) the missing ones are unknown, as the
scoring rules treat unknown figures. Once ready, the sampler stays ready.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Collection, Sequence

from sipstatus import codec
from sipstatus.status import SECTIONS, LoadStatus, State

from .collectors.interface import Collector, Reading, merge
from .config import Config
from .scoring import Score, Scorer, reason_text

log = logging.getLogger(__name__)


#: The shortest settle time, seconds (see `Sampler.settle_time`).
MIN_SETTLE = 2.0


def new_instance() -> str:
    """A fresh instance token (spec: 1..16 of A-Z a-z 0-9 . _ -)."""
    return secrets.token_hex(6)


class Sampler:
    def __init__(
        self,
        config: Config,
        collectors: Sequence[Collector],
        *,
        scorer: Scorer | None = None,
        instance: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.collectors = list(collectors)
        self.scorer = scorer or Scorer(config.scoring)
        self.node = config.node
        self.instance = instance or new_instance()
        self.seq = 0
        self.clock = clock
        self.wall = wall
        #: The current failure of each collector (None: working).
        self.errors: dict[str, str | None] = {c.name: None for c in self.collectors}
        self.last_reading: Reading | None = None
        self._readings: dict[str, Reading] = {}  # each collector's last reading
        self.last_score: Score | None = None
        #: Every collector has reported once, or the settle time has passed.
        self.ready = False
        self._started: float | None = None

    @property
    def settle_time(self) -> float:
        """Seconds after start() before collectors that have not reported
        are taken as unknown: long enough for the probe's own verdict (down
        after `probe_down_after` unanswered probes) and for an AMI login
        to be answered or to fail."""
        c = self.config.collectors
        names = {x.name for x in self.collectors}
        wait = [MIN_SETTLE]
        if "probe" in names:
            wait.append(c.probe.interval * self.config.scoring.probe_down_after + c.probe.timeout)
        if "asterisk" in names:
            wait.append(c.asterisk.connect_timeout + c.asterisk.action_timeout)
        return max(wait)

    def waiting_for(self, now: float) -> list[str]:
        """The collectors that keep the node `starting` (empty when ready)."""
        if self.ready:
            return []
        missing = [c.name for c in self.collectors if not self._has_reported(c)]
        if missing and (self._started is None or now - self._started < self.settle_time):
            return missing
        if missing:
            log.info("not reported within %.1f s of start: %s (unknown)", self.settle_time, ", ".join(missing))
        self.ready = True
        return []

    def _has_reported(self, c: Collector) -> bool:
        reported = getattr(c, "reported", None)
        if reported is not None:
            return bool(reported)
        return c.name in self._readings

    async def start(self) -> None:
        self._started = self.clock()
        for c in self.collectors:
            try:
                await c.start()
            except Exception as exc:
                self._note(c.name, f"start failed: {type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        for c in reversed(self.collectors):
            try:
                await c.stop()
            except Exception as exc:  # stopping must reach every collector
                log.warning("collector %s: stop failed: %s", c.name, exc)

    def measure(self, now: float | None = None, only: Collection[str] | None = None) -> Reading:
        """Collect and merge. With `only`, just those collectors collect; the
        others' last readings are reused (an AMI channel event need not cut
        the CPU window short). Never raises for a collector's failure."""
        now = self.clock() if now is None else now
        for c in self.collectors:
            if only is not None and c.name not in only:
                continue
            try:
                reading = c.collect(now)
            except Exception as exc:
                self._note(c.name, f"{type(exc).__name__}: {exc}")
                self._readings.pop(c.name, None)
                continue
            self._note(c.name, reading.error)
            self._readings[c.name] = reading
        merged = merge(self._readings[c.name] for c in self.collectors if c.name in self._readings)
        self.last_reading = merged
        return merged

    def sample(self, draining: bool = False, now: float | None = None,
               only: Collection[str] | None = None) -> LoadStatus:
        """One LoadStatus: measure (`only` some collectors, see `measure`), score, number it."""
        reading = self.measure(now, only)
        score = self.scorer.score(reading, draining)
        waiting = self.waiting_for(self.clock() if now is None else now)
        if waiting and score.state is not State.DOWN:
            score = Score(State.DOWN, 0.0, reason_text("starting: waiting for " + ", ".join(waiting)))
        self.last_score = score
        status = self.numbered(LoadStatus(
            node=self.node,
            instance=self.instance,
            seq=0,
            validity=self.config.agent.validity,
            state=score.state,
            capacity=score.capacity,
            time=self.wall(),
            reason=score.reason,
            **{name: getattr(reading, name) for name in SECTIONS},
        ))
        # A reading outside the spec's range is a measurement fault: unknown
        # is better than a body every receiver rejects. Logged once.
        status, dropped = codec.without_invalid_metrics(status)
        for error in dropped:
            self._note(f"value {error.member}", f"dropped: {error}")
        return status

    def numbered(self, status: LoadStatus) -> LoadStatus:
        """`status` as this run's next one: its instance and the next seq.
        The sampler is the one owner of both (spec 7.1: a new instance every
        run, seq +1 for every status produced); a body sent again, as a
        heartbeat, is numbered here afresh."""
        status = dataclasses.replace(status, instance=self.instance, seq=self.seq)
        self.seq += 1
        return status

    def _note(self, name: str, error: str | None) -> None:
        before = self.errors.get(name)
        if error == before:
            return
        self.errors[name] = error
        if error is not None:
            log.warning("collector %s: %s", name, error)
        elif before is not None:
            log.info("collector %s: working again", name)

    async def wait_settled(self, timeout: float) -> None:
        """Give collectors that connect somewhere (AMI, the SIP probe) up to
        `timeout` seconds to have either data or a reason for having none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if all(getattr(c, "reported", True) for c in self.collectors):
                return
            await asyncio.sleep(0.02)
