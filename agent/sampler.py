"""The Sampler owns the collectors, takes a measurement, scores it and
returns the `LoadStatus`: the piece the service loop (issue 5) and the
`sample` command share.

Failures are contained here: a collector that raises is caught, its fields
are unknown for that sample, and each distinct failure is logged once (when
it first appears, and again when it clears), not every second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Collection, Sequence

from sipstatus import codec
from sipstatus.status import LoadStatus

from .collectors.interface import Collector, Reading, merge
from .config import Config
from .scoring import Score, Scorer

log = logging.getLogger(__name__)


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

    async def start(self) -> None:
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
        self.last_score = score
        status = LoadStatus(
            node=self.node,
            instance=self.instance,
            seq=self.seq,
            validity=self.config.agent.validity,
            state=score.state,
            capacity=score.capacity,
            time=self.wall(),
            reason=score.reason,
            cpu=reading.cpu,
            memory=reading.memory,
            asterisk=reading.asterisk,
            quality=reading.quality,
            probe=reading.probe,
            network=reading.network,
        )
        self.seq += 1
        return self._valid(status)

    def _valid(self, status: LoadStatus) -> LoadStatus:
        """`status` with every member the codec refuses made unknown (a
        reading outside the spec's range is a measurement fault, and unknown
        is better than a body every receiver rejects). Logged once."""
        for _ in range(64):
            try:
                codec.to_wire(status)
                return status
            except codec.StatusError as exc:
                section, _, member = exc.member.partition(".")
                member = member.split("[", 1)[0]
                value = getattr(status, section, None)
                if not member or value is None or not hasattr(value, member):
                    raise  # a top-level member: a bug, not a measurement
                self._note(f"value {exc.member}", f"dropped: {exc}")
                status = dataclasses.replace(status, **{section: dataclasses.replace(value, **{member: None})})
        raise RuntimeError("could not make the status valid")  # pragma: no cover

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
        """Give collectors that connect somewhere (AMI) up to `timeout`
        seconds to have either data or a reason for having none."""
        tasks = [asyncio.ensure_future(c.settled()) for c in self.collectors if hasattr(c, "settled")]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
