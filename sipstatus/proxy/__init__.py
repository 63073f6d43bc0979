"""The proxy side: follow the agents, keep the pool, push weights to a proxy.

- `pool`: the pool's decisions, sans-I/O (start-up grace, departures,
  staleness and re-subscription, coalescing, damping, sink retry and
  resync timing), driven by events and `now` like `sipstatus.sip`;
- `watcher`: the asyncio driver that feeds it (SIP service, timers, sinks
  in worker threads);
- `nodetable` (ordering and staleness), `policy` (weights), `agents` (what
  is followed), `rows` (what a UI shows), `watchview` (the `watch` screen);
- sinks, one error base (`sinks.SinkError`): `kamailio` (JSON-RPC),
  `opensips` (MI); `sidecar` runs a watcher with them.
"""
