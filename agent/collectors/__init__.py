"""Collectors: one file per source of measurements, one small interface for all.

Every collector implements `Collector` (see `interface.py`): `start()` and
`stop()` bracket its life (a collector that keeps a connection or a task opens
it in `start()`), and `collect(now)` returns a `Reading` with the `LoadStatus`
sections it fills. `registry.build_collectors()` turns the configured ones on.

A collector that raises, or returns a Reading with `error` set, has its fields
unknown for that sample; the caller (`agent.sampler.Sampler`) logs each
distinct failure once and the other collectors go on.
"""

from .interface import AsteriskLink, Collector, OnChange, Reading

__all__ = ["AsteriskLink", "Collector", "OnChange", "Reading"]
