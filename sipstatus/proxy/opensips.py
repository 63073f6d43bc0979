"""Pushing node capacities and states into a running OpenSIPS 3.x over MI.

For the "sidecar" way of running with OpenSIPS: a `sipstatus` process on the
proxy host follows the agents and pushes what it learns into OpenSIPS through
its Management Interface, as JSON-RPC 2.0 over HTTP (the `mi_http` module,
POST to http://HOST:PORT/mi).

Where each behaviour comes from (OpenSIPS 3.x; read in the OpenSIPS/opensips
repository and on opensips.org):

- JSON-RPC request and reply over HTTP: modules/mi_http README "Examples"
  (POST /mi, `{"jsonrpc":"2.0","method":...,"params":...,"id":...}`, reply
  `{"jsonrpc":"2.0","result":...,"id":...}`); the request rules are the MI
  core's, mi/mi.c `parse_mi_request()`: `params` must be an array or an
  object, anything else (null included) makes the request invalid (-32600,
  "Invalid Request"; OpenSIPS 3.5.9 did so when tried); a command is run by
  the "recipe" whose parameter NAMES all match (`get_cmd_recipe()`), else
  -32602 "Invalid params" with `data` "Too few or too many parameters" or
  "Named parameters do not match"; an unknown method is -32601 "Method not
  found" (mi/mi.h JSONRPC_* codes, mi/mi.c `handle_mi_request()`).
  mi_http answers a JSON-RPC error with HTTP 200 (modules/mi_http/mi_http.c
  `mi_json_answer_to_connection()`: any printed response is 200), 405 to a
  method other than POST, 400 to an empty body.
- load_balancer MI (modules/load_balancer README, "Exported MI Functions"):
  `lb_list` lists destinations with the max and current load of each
  resource; `lb_resize` takes `destination_id`, `res_name`, `new_capacity`;
  `lb_status` takes `destination_id` and optional `new_status` (0 disable,
  1 enable). A destination disabled by MI is not re-enabled by probing
  ("Probing and Disabling destinations"), which is what draining wants.
  The JSON shape of `lb_list` is not in the README (its example is the old
  text output); it is taken from modules/load_balancer/load_balancer.c
  `mi_lb_list()`: `{"Destinations": [{"uri", "id", "group", "enabled":
  "yes"|"no", "auto-reenable": "on"|"off", "Resources": [{"name", "max",
  "load"}], "attrs"?}]}`; errors 404 "Destination ID not found" and 404
  "Destination has no such resource" (`mi_lb_resize()`).
- dispatcher MI (opensips.org dispatcher 3.x "Exported MI Functions" and
  modules/dispatcher/dispatcher.c `mi_cmds[]`): `ds_set_state` takes
  `state` ("a" active, "i" inactive, "p" probing), `group` ("[partition:]id")
  and `address`; `ds_list` takes no parameter or `full`. Shape from
  dispatcher.c `ds_mi_list()` and dispatch.c `ds_print_mi_list()`:
  `{"PARTITIONS": [{"name", "SETS": [{"id", "Destinations": [{"URI",
  "state": "Active"|"Inactive"|"Probing", "first_hit_counter", "socket"?,
  "attr"?, "script_attr"?, "weight"?, "priority"?, "description"?}]}]}]}`;
  error 404 "destination not found".

What is pushed (`OpenSipsSink`), given the pool's nodes and the weights of
the configured weight policy (`sipstatus.proxy.policy`, water-filling unless
configured otherwise; the sidecar gives the damped weights its Kamailio
sinks get):
- load_balancer: a node that takes calls gets `lb_resize` of its resource to
  the number of concurrent calls OpenSIPS may have on it, and is enabled with
  `lb_status`; a node that takes none (draining, overloaded, down, stale,
  never heard from, or weight 0 from the policy) is disabled with
  `lb_status ... 0` and left at its size;
- dispatcher: the same node is set active or inactive with `ds_set_state`.

Why the policy decides which nodes take calls but not the split. OpenSIPS's
load_balancer is itself a per-call chooser that counts the calls it placed:
each call goes to the destination with the most free slots, `max - load`,
and a call is refused (`lb_start` fails) when no destination has one. Two
rules fix the free slots it may be given: never more on a node than the
room that node reports, and never less in total than the pool's room (or
calls are refused while nodes have room, until the next push). Together
they leave exactly one size per node: its free slots. Within them, a
node's free slots are what water-filling fills: for nodes of one size,
the most free slots is the lowest utilisation, with OpenSIPS's own count
of the calls placed since the report, which is water-filling one call at a
time (`LeastUtilisedSelector`). Shaping the sizes by the weights instead
(shares of the pool's room) breaks one of the two rules: shares capped at
each node's room sum to less than the pool's room, and uncapped shares put
more calls on a node than it reports room for.

Capacity mapping. load_balancer sends a call to the destination with the
largest free slot, `max - load`, where `load` is the calls OpenSIPS itself
has on it (README "Overview"). The agent reports the node's own free
fraction `capacity` and its channel `limit`, so the slots it has free are
`capacity x limit` (`policy.free_slots`, counted as the configured weight
policy counts them: its `default_limit` stands in for an unknown limit). Those free slots already exclude the calls the node had
when it measured, OpenSIPS's among them, but not the calls OpenSIPS placed
since (they are in its load, not yet in the report). So the load added back
is the part of OpenSIPS's load the report has counted, which is at most the
node's own call count `asterisk.calls`:

    max = min(load, asterisk.calls) + floor(capacity x limit)

with `load` read from lb_list when the capacity is computed (`load` alone
when the report has no call count). OpenSIPS's free slot `max - load` is
then the reported free slots less the calls placed since the report.
Adding a load read earlier (a minute before, say) counts the calls placed in
between twice, once in the load and once in the smaller free slots: under a
steady stream of calls, each node was offered about half its free slots and
calls were refused while the pool was half empty (OpenSIPS 3.6.8, issue 13).
The sidecar reads lb_list before every push (`refresh_loads()`) and ds_list
every `refresh_interval`.

A destination is a sipstatus node by its attributes, `node=NAME` in the
`attrs` (load_balancer) or `attr` (dispatcher) string, a `;`-separated list
of `name=value` (an opaque string to OpenSIPS: dispatcher README `attrs_avp`),
else by its URI host. A node with no destination, or with more than one in
the sink's group, is never resized or switched: it is reported and logged.
Only what changed since the last applied state is pushed; `refresh()` takes
OpenSIPS's own view as the applied state, so sizes lost to an `lb_reload` or
a restart (seen on OpenSIPS 3.5.9) are put back on the next push. An MI error is
reported with the method and params that caused it and the applied state is
left as it was, so the next push tries again.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .nodetable import NodeView
from .policy import WeightPolicy, free_slots
from .sinks import RoomSink, SinkError, parse_attrs, uri_host

log = logging.getLogger("sipstatus.opensips")  # the name operators know

#: The attribute that names a destination's sipstatus node (our convention).
NODE_ATTR = "node"


class MiError(SinkError):
    """OpenSIPS answered an MI command with a JSON-RPC error object.

    Carries the method and params that caused it, for the operator's log."""

    def __init__(self, method: str, params: Mapping[str, Any] | None, message: str,
                 code: int | None = None, data: Any = None) -> None:
        self.method, self.params, self.code, self.data = method, dict(params or {}), code, data
        self.message = message
        where = f"{method}({json.dumps(self.params, sort_keys=True)})"
        detail = f": {data}" if data else ""
        suffix = f" (code {code})" if code is not None else ""
        super().__init__(f"{where}: {message}{detail}{suffix}")


class MiUnreachable(MiError):
    """OpenSIPS could not be reached, or answered something that is not MI JSON-RPC."""


class MiClient:
    """A JSON-RPC 2.0 client for OpenSIPS's mi_http module.

    `url` is the MI root, e.g. http://127.0.0.1:8888/mi (httpd's port, and
    mi_http's `root`, default "mi"). Parameters are always sent by name, as an
    object: MI matches a command's recipe by parameter names (mi/mi.c), and
    a `"params": null` is an invalid request.
    """

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self.url, self.timeout = url, timeout
        self._ids = itertools.count(1)

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Run `method` with named `params`; return its `result` or raise MiError."""
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params:
            # Never null, never positional: an object with the documented names.
            request["params"] = dict(params)
        body = json.dumps(request).encode()
        http = urllib.request.Request(self.url, data=body, method="POST",
                                      headers={"Content-Type": "application/json",
                                               "Accept": "application/json"})
        try:
            with urllib.request.urlopen(http, timeout=self.timeout) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as err:
            # mi_http answers JSON-RPC errors with 200; other statuses (400 empty
            # body, 405 not POST, 500 no response built) carry no MI reply.
            raise MiUnreachable(method, params, f"{self.url}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", None) or err
            raise MiUnreachable(method, params, f"cannot reach OpenSIPS MI at {self.url}: {reason}") from None
        try:
            reply = json.loads(raw)
        except ValueError:
            raise MiUnreachable(method, params, f"{self.url}: answer is not JSON: {raw[:80]!r}") from None
        if not isinstance(reply, dict):
            raise MiUnreachable(method, params, f"{self.url}: answer is not a JSON-RPC object")
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise MiError(method, params, str(error.get("message", "error")), error.get("code"), error.get("data"))
        if "result" not in reply:
            raise MiUnreachable(method, params, f"{self.url}: answer has neither result nor error")
        return reply["result"]


# -- destinations ------------------------------------------------------------


@dataclass(frozen=True)
class LbResource:
    name: str
    max: int
    load: int


@dataclass(frozen=True)
class LbDestination:
    """One load_balancer destination, as `lb_list` reports it."""

    id: int
    group: int
    uri: str
    enabled: bool
    auto_reenable: bool
    resources: Mapping[str, LbResource]
    attrs: str | None = None

    @property
    def node(self) -> str:
        return parse_attrs(self.attrs).get(NODE_ATTR) or uri_host(self.uri)


@dataclass(frozen=True)
class DsDestination:
    """One dispatcher destination, as `ds_list` reports it."""

    partition: str
    set_id: int
    uri: str
    state: str  # "Active", "Inactive" or "Probing"
    attrs: str | None = None

    @property
    def node(self) -> str:
        return parse_attrs(self.attrs).get(NODE_ATTR) or uri_host(self.uri)

    @property
    def active(self) -> bool:
        return self.state == "Active"


def parse_lb_list(result: Mapping[str, Any]) -> list[LbDestination]:
    """The destinations in an `lb_list` result (load_balancer.c `mi_lb_list()`)."""
    out = []
    for dst in result.get("Destinations") or []:
        resources = {r["name"]: LbResource(r["name"], int(r["max"]), int(r["load"]))
                     for r in dst.get("Resources") or []}
        out.append(LbDestination(
            id=int(dst["id"]), group=int(dst["group"]), uri=dst["uri"],
            enabled=dst.get("enabled") == "yes", auto_reenable=dst.get("auto-reenable") == "on",
            resources=resources, attrs=dst.get("attrs")))
    return out


def parse_ds_list(result: Mapping[str, Any]) -> list[DsDestination]:
    """The destinations in a `ds_list` result (dispatcher.c `ds_mi_list()`)."""
    out = []
    for part in result.get("PARTITIONS") or []:
        for ds_set in part.get("SETS") or []:
            for dst in ds_set.get("Destinations") or []:
                out.append(DsDestination(partition=part["name"], set_id=int(ds_set["id"]), uri=dst["URI"],
                                         state=dst.get("state", ""), attrs=dst.get("attr")))
    return out


def lb_capacity(view: NodeView, load: int, *, default_limit: int = 100,
                policy: WeightPolicy | None = None) -> int:
    """The load_balancer `max` for a node: the part of OpenSIPS's current
    `load` that the report already counts (at most the node's own call count,
    `asterisk.calls`; all of it when the report has none) plus the slots the
    node reports free, as the weight policy counts them (`policy.free_slots`:
    capacity x limit, the policy's `default_limit` for an unknown limit, else
    `default_limit`). 0 free slots for a node that takes no calls."""
    if not view.accepts_calls:
        return load
    asterisk = view.status.asterisk
    counted = load
    if asterisk is not None and asterisk.calls is not None:
        counted = min(load, asterisk.calls)
    return counted + math.floor(free_slots(view, policy, default_limit=default_limit))


# -- pushing --------------------------------------------------------------------


@dataclass
class PushResult:
    """What one `push()` did."""

    #: (method, params) of every MI command that succeeded.
    applied: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Every MI error, with the method and params that caused it.
    errors: list[MiError] = field(default_factory=list)
    #: Nodes that could not be matched to exactly one destination: nothing was sent for them.
    unknown: list[str] = field(default_factory=list)


@dataclass
class _LbApplied:
    capacity: int | None
    enabled: bool | None


class OpenSipsSink:
    """Pushes a pool's capacities and states into OpenSIPS over MI.

    `lb_group`/`resource`: the load_balancer group whose destinations are the
    pool and the resource to size (None: no load_balancer). `ds_set`/
    `ds_partition`: the dispatcher set whose destinations to switch on and off
    (None: no dispatcher).
    """

    def __init__(self, mi: MiClient, *, lb_group: int | None = 1, resource: str = "channels",
                 ds_set: int | None = None, ds_partition: str = "default", default_limit: int = 100,
                 policy: WeightPolicy | None = None) -> None:
        if lb_group is None and ds_set is None:
            raise ValueError("OpenSipsSink: give an lb_group, a ds_set, or both")
        self.mi, self.lb_group, self.resource = mi, lb_group, resource
        self.ds_set, self.ds_partition, self.default_limit = ds_set, ds_partition, default_limit
        #: The watcher's weight policy: it counts the free slots the sizes are made of.
        self.policy = policy
        self._lb: dict[str, LbDestination] = {}
        self._ds: dict[str, DsDestination] = {}
        self._ambiguous: set[str] = set()
        self._ds_ambiguous: set[str] = set()
        self._refreshed = False
        self._lb_applied: dict[str, _LbApplied] = {}
        self._ds_applied: dict[str, bool] = {}

    # discovery

    def refresh(self) -> None:
        """Read the destinations and their state from OpenSIPS (lb_list,
        ds_list) and take that as the applied state. Raises MiError."""
        lb = self._read_lb()
        ds: dict[str, list[DsDestination]] = {}
        if self.ds_set is not None:
            for dst in parse_ds_list(self.mi.call("ds_list")):
                if dst.partition == self.ds_partition and dst.set_id == self.ds_set:
                    ds.setdefault(dst.node, []).append(dst)
        self._ds_ambiguous = {n for n, d in ds.items() if len(d) > 1}
        self._ds = {n: d[0] for n, d in ds.items()}
        self._ds_applied = {node: dst.active for node, dst in self._ds.items()}
        self._take_lb(lb)

    def refresh_loads(self) -> None:
        """Read lb_list only: the current loads (for the capacities about to
        be pushed), sizes and states. Raises MiError. Before the first
        `refresh()` this is a full refresh."""
        if not self._refreshed:
            self.refresh()
            return
        self._take_lb(self._read_lb())

    def _read_lb(self) -> dict[str, list[LbDestination]]:
        lb: dict[str, list[LbDestination]] = {}
        if self.lb_group is not None:
            for dst in parse_lb_list(self.mi.call("lb_list")):
                if dst.group == self.lb_group:
                    lb.setdefault(dst.node, []).append(dst)
        return lb

    def _take_lb(self, lb: dict[str, list[LbDestination]]) -> None:
        ambiguous = {n for n, d in lb.items() if len(d) > 1} | self._ds_ambiguous
        for node in sorted(ambiguous - self._ambiguous):
            log.error("OpenSIPS has several destinations for node %s; it is left alone", node)
        self._ambiguous = ambiguous
        self._lb = {n: d[0] for n, d in lb.items() if n not in ambiguous}
        self._ds = {n: d for n, d in self._ds.items() if n not in ambiguous}
        self._lb_applied = {}
        for node, dst in self._lb.items():
            res = dst.resources.get(self.resource)
            self._lb_applied[node] = _LbApplied(res.max if res else None, dst.enabled)
        self._refreshed = True

    def lb_destination(self, node: str) -> LbDestination | None:
        return self._lb.get(node)

    def ds_destination(self, node: str) -> DsDestination | None:
        return self._ds.get(node)

    # pushing

    def push(self, views: Iterable[NodeView], weights: Mapping[str, int] | None = None) -> PushResult:
        """Apply what changed for each node. `weights`: the weight policy's
        (0 = no new calls; a node missing from them gets none); None: every
        node that accepts calls takes them. MI errors are collected in the
        result (and logged); MiUnreachable is raised at once."""
        result = PushResult()
        for view in views:
            if not self._known(view.node):
                result.unknown.append(view.node)
                log.error("node %s has no single destination in OpenSIPS: nothing sent for it", view.node)
                continue
            takes_calls = view.accepts_calls and (weights is None or weights.get(view.node, 0) > 0)
            if self.lb_group is not None:
                self._push_lb(view, takes_calls, result)
            if self.ds_set is not None:
                self._push_ds(view, takes_calls, result)
        return result

    def _known(self, node: str) -> bool:
        if node in self._ambiguous:
            return False
        if self.lb_group is not None and node not in self._lb:
            return False
        return not (self.ds_set is not None and node not in self._ds)

    def _push_lb(self, view: NodeView, takes_calls: bool, result: PushResult) -> None:
        dst = self._lb[view.node]
        applied = self._lb_applied[view.node]
        if not takes_calls:
            if applied.enabled is not False:
                # lb_status: destination_id, new_status 0 = disable (README "lb_status")
                if self._call(result, "lb_status", {"destination_id": dst.id, "new_status": 0}):
                    applied.enabled = False
            return
        res = dst.resources.get(self.resource)
        if res is None:
            result.errors.append(MiError("lb_resize", {"destination_id": dst.id, "res_name": self.resource},
                                         f"destination {dst.uri} has no resource {self.resource!r} in lb_list; not sent"))
            log.error("%s", result.errors[-1])
            return
        capacity = lb_capacity(view, res.load, default_limit=self.default_limit, policy=self.policy)
        if applied.capacity != capacity:
            # lb_resize: destination_id, res_name, new_capacity (README "lb_resize")
            params = {"destination_id": dst.id, "res_name": self.resource, "new_capacity": capacity}
            if not self._call(result, "lb_resize", params):
                return  # not enabled with a size it does not have
            applied.capacity = capacity
        if applied.enabled is not True:
            if self._call(result, "lb_status", {"destination_id": dst.id, "new_status": 1}):
                applied.enabled = True

    def _push_ds(self, view: NodeView, takes_calls: bool, result: PushResult) -> None:
        dst = self._ds[view.node]
        want = takes_calls
        if self._ds_applied.get(view.node) == want:
            return
        group = str(self.ds_set) if self.ds_partition == "default" else f"{self.ds_partition}:{self.ds_set}"
        # ds_set_state: state (a|i|p), group ([partition:]id), address
        params = {"state": "a" if want else "i", "group": group, "address": dst.uri}
        if self._call(result, "ds_set_state", params):
            self._ds_applied[view.node] = want

    def _call(self, result: PushResult, method: str, params: dict[str, Any]) -> bool:
        try:
            self.mi.call(method, params)
        except MiUnreachable:
            raise
        except MiError as err:
            result.errors.append(err)
            log.error("OpenSIPS MI: %s", err)
            return False
        result.applied.append((method, params))
        return True

    def forget(self, nodes: Iterable[str]) -> None:
        """Forget the applied state of `nodes`: the next push sends them in full."""
        for node in nodes:
            if node in self._lb_applied:
                self._lb_applied[node] = _LbApplied(None, None)
            self._ds_applied.pop(node, None)


class OpenSipsRoomSink(RoomSink):
    """Pushes room key -> node (spec/load-affinity.md 7.2) into OpenSIPS's
    cachedb_local over MI: `cache_store` of PREFIX<key> = node for a new or
    moved room, `cache_remove` for one that ended (or whose node no longer
    takes calls). The script reads it with `cache_fetch("local",
    "affinity_<key>", $var(node))` (packaging/examples/opensips/compositor).
    MI commands and parameter names as OpenSIPS 3.6.8 answered them."""

    def __init__(self, mi: MiClient, prefix: str = "affinity_", system: str = "local") -> None:
        super().__init__()
        self.mi, self.prefix, self.system = mi, prefix, system

    def store(self, key: str, node: str) -> None:
        self.mi.call("cache_store", {"system": self.system, "attr": self.prefix + key, "value": node})

    def remove(self, key: str) -> None:
        try:
            self.mi.call("cache_remove", {"system": self.system, "attr": self.prefix + key})
        except MiError as err:
            if "not found" not in str(err).lower():
                raise
