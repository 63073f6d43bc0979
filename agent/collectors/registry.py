"""Turns the configured collectors on: `collectors.enabled` in the config."""

from __future__ import annotations

import logging

from ..config import Config
from .interface import Collector, OnChange

log = logging.getLogger(__name__)


def build_collectors(config: Config, on_change: OnChange | None = None) -> list[Collector]:
    """The enabled collectors, in the configured order. The event-driven ones
    (asterisk: channels; probe: failures; host: a CPU jump) call `on_change(name)` with their
    collector name when they see a change, so that the caller can re-read
    just that collector (`Sampler.sample(only=...)`). Raises ConfigError
    (e.g. an unreadable manager.conf)."""
    c = config.collectors
    out: list[Collector] = []
    for name in c.enabled:
        if name == "host":
            from .host import HostCollector

            out.append(HostCollector(c.host, on_change=_reporting(on_change, name)))
        elif name == "asterisk":
            from .asterisk import AsteriskCollector

            out.append(AsteriskCollector(c.asterisk, on_change=_reporting(on_change, name)))
        elif name == "probe":
            from .probe import ProbeCollector

            out.append(ProbeCollector(c.probe, on_change=_reporting(on_change, name)))
        elif name == "network":
            from .network import NetworkCollector

            out.append(NetworkCollector(c.network))
        else:  # config validation lists the names; this is a bug if reached
            raise ValueError(f"collectors.enabled: no collector named {name!r}")
    ami = next((x for x in out if x.name == "asterisk"), None)
    for probe in (x for x in out if x.name == "probe"):
        if ami is not None:
            # The probe answered again after a silence: Asterisk is back, so
            # AMI is tried now rather than at the end of its backoff.
            probe.on_recovered = ami.reachable_again  # type: ignore[attr-defined]
    return out


def _reporting(on_change: OnChange | None, name: str) -> OnChange | None:
    """A collector describes its change ("channel SIP/... appeared"); the
    caller needs to know which collector changed: its name."""
    if on_change is None:
        return None

    def changed(what: str) -> None:
        log.debug("%s: %s", name, what)
        on_change(name)

    return changed
