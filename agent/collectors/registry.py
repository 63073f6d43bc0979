"""Turns the configured collectors on: `collectors.enabled` in the config."""

from __future__ import annotations

from ..config import Config
from .interface import Collector, OnChange


def build_collectors(config: Config, on_change: OnChange | None = None) -> list[Collector]:
    """The enabled collectors, in the configured order. `on_change` goes to
    the event-driven ones (asterisk: channels; probe: failures). Raises ConfigError (e.g. an unreadable
    manager.conf)."""
    c = config.collectors
    out: list[Collector] = []
    for name in c.enabled:
        if name == "host":
            from .host import HostCollector

            out.append(HostCollector(c.host))
        elif name == "asterisk":
            from .asterisk import AsteriskCollector

            out.append(AsteriskCollector(c.asterisk, on_change=on_change))
        elif name == "probe":
            from .probe import ProbeCollector

            out.append(ProbeCollector(c.probe, on_change=on_change))
        elif name == "network":
            from .network import NetworkCollector

            out.append(NetworkCollector(c.network))
        else:  # config validation lists the names; this is a bug if reached
            raise ValueError(f"collectors.enabled: no collector named {name!r}")
    return out
