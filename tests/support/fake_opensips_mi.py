"""A fake OpenSIPS 3.x Management Interface over HTTP (mi_http), for tests.

OpenSIPS is not in Debian 12, so the adapter is tested against this small
server. It speaks MI JSON-RPC as OpenSIPS 3.x does and nothing more; every
shape and error below is cited from what was read (OpenSIPS/opensips
repository, 3.x sources and module READMEs):

- transport: modules/mi_http README "Examples" (POST /mi, JSON-RPC body,
  200 with a JSON-RPC reply) and mi_http.c `mi_json_answer_to_connection()`:
  405 if not POST, 400 if the body is empty, 200 for any JSON-RPC reply,
  errors included. A notification (no "id") gets 202 and a chunked body
  that never ends: what a real OpenSIPS 3.6.8 did (the client waits until
  its timeout; FIELD-NOTES), so the fake holds the connection open;
- request parsing and errors: mi/mi.c `parse_mi_request()` and
  `handle_mi_request()`, codes and messages from mi/mi.h: -32700 "Parse
  error", -32600 "Invalid Request" (jsonrpc not "2.0", method not a string,
  id not null/number/string, params not an array or object: `"params": null`
  is invalid, as FIELD-NOTES saw on 3.5.9), -32601 "Method not found",
  -32602 "Invalid params" with data "Too few or too many parameters",
  "Ambiguous call, use named parameters instead" or "Named parameters do not
  match" (`get_cmd_recipe()`); an empty params object or array counts as no
  params; parameter types from mi/item.c `get_mi_int_param()` /
  `get_mi_string_param()` and `init_mi_param_error()` ("Bad type for
  parameter 'NAME'"); "OK" results are `init_mi_result_ok()` (mi/item.h);
  command errors are `init_mi_error(code, msg)`: {"code", "message"};
- load_balancer (README "Exported MI Functions"; recipes and shapes from
  load_balancer.c `mi_cmds[]`, `mi_lb_list()`, `mi_lb_resize()`,
  `mi_lb_status()`, `mi_lb_status_1()`);
- dispatcher (opensips.org dispatcher 3.x "Exported MI Functions"; recipes
  and shapes from dispatcher.c `mi_cmds[]`, `ds_mi_set()`, `ds_mi_list()`
  and dispatch.c `ds_print_mi_list()`); each destination also carries
  `resolved_addresses`, ["host:port"], as a real OpenSIPS 3.6.8 answered.

tests/real/test_opensips_real.py compares this fake's answers with a real
OpenSIPS 3.6.8's for the same destinations (lb_list, ds_list with and
without "full", wrong parameter names, an unknown method); an empty body
(400) and a GET (405) were checked by hand against it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# mi/mi.h
PARSE_ERR = (-32700, "Parse error")
INVAL_REQ = (-32600, "Invalid Request")
NOT_FOUND = (-32601, "Method not found")
INVAL_PARAMS = (-32602, "Invalid params")
SERVER_ERR = (-32000, "Server error")
ERR_DET_AMBIG_CALL = "Ambiguous call, use named parameters instead"
ERR_DET_NO_PARAMS = "Too few or too many parameters"
ERR_DET_MATCH_PARAMS = "Named parameters do not match"

# Each command's recipes: the parameter names of each way to call it
# (load_balancer.c and dispatcher.c `mi_cmds[]`).
RECIPES: dict[str, list[tuple[str, ...]]] = {
    "lb_reload": [()],
    "lb_resize": [("destination_id", "res_name", "new_capacity")],
    "lb_list": [()],
    "lb_status": [("destination_id",), ("destination_id", "new_status")],
    "ds_set_state": [("state", "group", "address")],
    "ds_list": [(), ("full",)],
}


class _MiFault(Exception):
    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


@dataclass
class LbDst:
    id: int
    group: int
    uri: str
    resources: dict[str, list[int]]  # name -> [max, load]
    attrs: str | None = None
    disabled: bool = False  # LB_DST_STAT_DSBL_FLAG
    no_reenable: bool = False  # LB_DST_STAT_NOEN_FLAG


@dataclass
class DsDst:
    uri: str
    state: str = "Active"  # "Active" | "Inactive" | "Probing"
    attrs: str | None = None
    weight: int = 1
    priority: int = 0
    description: str = ""


@dataclass
class FakeOpenSips:
    """The state the MI commands read and change."""

    lb: list[LbDst] = field(default_factory=list)
    #: partition name -> set id -> destinations
    ds: dict[str, dict[int, list[DsDst]]] = field(default_factory=dict)
    #: (method, params) of every request that reached a command, in order.
    calls: list[tuple[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mutating_calls(self) -> list[tuple[str, Any]]:
        return [c for c in self.calls if c[0] in ("lb_resize", "lb_status", "ds_set_state")
                and not (c[0] == "lb_status" and "new_status" not in (c[1] or {}))]

    # -- the commands ---------------------------------------------------------

    def run(self, method: str, params: Any) -> Any:
        handler = getattr(self, "_mi_" + method)
        return handler(params or {})

    def _mi_lb_reload(self, params: dict) -> Any:
        return "OK"

    def _mi_lb_list(self, params: dict) -> Any:
        # load_balancer.c mi_lb_list()
        dests = []
        for d in self.lb:
            item: dict[str, Any] = {
                "uri": d.uri, "id": d.id, "group": d.group,
                "enabled": "no" if d.disabled else "yes",
                "auto-reenable": "off" if d.no_reenable else "on",
                "Resources": [{"name": n, "max": m, "load": load} for n, (m, load) in d.resources.items()],
            }
            if d.attrs:
                item["attrs"] = d.attrs
            dests.append(item)
        return {"Destinations": dests}

    def _lb_find(self, dst_id: int) -> LbDst:
        for d in self.lb:
            if d.id == dst_id:
                return d
        raise _MiFault(404, "Destination ID not found")

    def _mi_lb_resize(self, params: dict) -> Any:
        # load_balancer.c mi_lb_resize(): params read in this order
        dst_id = _int_param(params, "destination_id")
        name = _str_param(params, "res_name")
        size = _int_param(params, "new_capacity")
        d = self._lb_find(dst_id)
        if name not in d.resources:
            raise _MiFault(404, "Destination has no such resource")
        d.resources[name][0] = size
        return "OK"

    def _mi_lb_status(self, params: dict) -> Any:
        dst_id = _int_param(params, "destination_id")
        if "new_status" not in params:
            # mi_lb_status(): {"enable": "yes"|"no", "attrs"?}
            d = self._lb_find(dst_id)
            out = {"enable": "no" if d.disabled else "yes"}
            if d.attrs:
                out["attrs"] = d.attrs
            return out
        # mi_lb_status_1(): 0 disables (and stops re-enabling by probing), else enables
        stat = _int_param(params, "new_status")
        d = self._lb_find(dst_id)
        d.disabled = d.no_reenable = not stat
        return "OK"

    def _mi_ds_list(self, params: dict) -> Any:
        # dispatcher.c ds_mi_list(), dispatch.c ds_print_mi_list()
        full = _int_param(params, "full") if "full" in params else 0
        parts = []
        for name, sets in self.ds.items():
            part: dict[str, Any] = {"name": name}
            if sets:
                part["SETS"] = []
                for set_id, dests in sets.items():
                    items = []
                    for d in dests:
                        item: dict[str, Any] = {"URI": d.uri, "state": d.state, "first_hit_counter": 0}
                        if d.attrs is not None:
                            item["attr"] = d.attrs
                        if full:
                            item["weight"] = d.weight
                            item["priority"] = d.priority
                            if d.description:
                                item["description"] = d.description
                        item["resolved_addresses"] = [_host_port(d.uri)]
                        items.append(item)
                    part["SETS"].append({"id": set_id, "Destinations": items})
            parts.append(part)
        return {"PARTITIONS": parts}

    def _mi_ds_set_state(self, params: dict) -> Any:
        # dispatcher.c ds_mi_set()
        state = _str_param(params, "state")
        if not state:
            raise _MiFault(500, "Bad state value")
        if state[0] in "0Ii":
            new = "Inactive"
        elif state[0] in "pP2":
            new = "Probing"
        elif state[0] in "aA1":
            new = "Active"
        else:
            raise _MiFault(500, "Bad state value")
        group = _str_param(params, "group")
        partition, sep, set_text = group.rpartition(":")
        partition = partition.strip() if sep else "default"
        if partition not in self.ds:
            raise _MiFault(404, "ERROR Unknown partition")
        try:
            set_id = int(set_text.strip())
        except ValueError:
            raise _MiFault(500, "bad group value") from None
        address = _str_param(params, "address")
        for d in self.ds[partition].get(set_id, []):
            if d.uri == address:
                d.state = new
                return "OK"
        raise _MiFault(404, "destination not found")


def _host_port(uri: str) -> str:
    """"sip:10.0.0.1:5060" -> "10.0.0.1:5060" (5060 when the URI has no port).
    Only IP literals were seen resolved on the real OpenSIPS; a host name is
    left as it is here (OpenSIPS would list the addresses DNS gives it)."""
    hostport = uri.split(":", 1)[1].split(";", 1)[0].rsplit("@", 1)[-1]
    return hostport if ":" in hostport else f"{hostport}:5060"


def _int_param(params: dict, name: str) -> int:
    # mi/item.c try_get_mi_int_param(): a number, or a string that parses as one
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _MiFault(*INVAL_PARAMS, f"Bad type for parameter '{name}'")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise _MiFault(*INVAL_PARAMS, f"Bad type for parameter '{name}'") from None
    return int(value)


def _str_param(params: dict, name: str) -> str:
    # mi/item.c try_get_mi_string_param(): a string, or a number printed as one
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _MiFault(*INVAL_PARAMS, f"Bad type for parameter '{name}'")
    return value if isinstance(value, str) else str(int(value))


def _recipe(method: str, params: Any) -> tuple[str, ...]:
    """mi/mi.c get_cmd_recipe(), for named and positional parameters."""
    recipes = RECIPES[method]
    if params is None:
        for recipe in recipes:
            if not recipe:
                return recipe
        raise _MiFault(*INVAL_PARAMS, ERR_DET_NO_PARAMS)
    positional = isinstance(params, list)
    params_err = ERR_DET_NO_PARAMS
    match = None
    for recipe in recipes:
        if not recipe:
            continue
        if len(recipe) != len(params):
            continue
        if positional:
            if match is not None:
                raise _MiFault(*INVAL_PARAMS, ERR_DET_AMBIG_CALL)
            match = recipe
        else:
            params_err = ERR_DET_MATCH_PARAMS
            if all(name in params for name in recipe):
                return recipe
    if match is None:
        raise _MiFault(*INVAL_PARAMS, params_err)
    return match


def handle(state: FakeOpenSips, body: bytes) -> tuple[int, dict | None]:
    """One mi_http request: (HTTP status, JSON-RPC reply or None)."""
    try:
        request = json.loads(body)
    except ValueError:
        return 200, _error(None, *PARSE_ERR)
    if not isinstance(request, dict):
        return 200, _error(None, *INVAL_REQ)
    has_id = "id" in request
    req_id = request.get("id")
    invalid = (has_id and not (req_id is None or isinstance(req_id, (int, float, str)))) \
        or request.get("jsonrpc") != "2.0" \
        or not isinstance(request.get("method"), str)
    params = request.get("params", None) if "params" in request else None
    if "params" in request and not isinstance(request["params"], (list, dict)):
        invalid = True  # "params": null included
    if invalid:
        return 200, _error(req_id, *INVAL_REQ)
    if params is not None and len(params) == 0:
        params = None  # an empty object or array is no params
    method = request["method"]
    try:
        if method not in RECIPES:
            raise _MiFault(*NOT_FOUND)
        recipe = _recipe(method, params)
        if isinstance(params, list):
            params = dict(zip(recipe, params, strict=True))
        with state.lock:
            state.calls.append((method, params))
            result = state.run(method, params)
    except _MiFault as fault:
        if not has_id:
            return 202, None
        return 200, _error(req_id, fault.code, fault.message, fault.data)
    if not has_id:
        return 202, None  # a notification gets no reply (mi.c prepare_mi_response)
    return 200, {"jsonrpc": "2.0", "result": result, "id": req_id}


def _error(req_id: Any, code: int, message: str, data: str | None = None) -> dict:
    # mi/item.c init_mi_error_extra(): {"code", "message", "data"?}
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return {"jsonrpc": "2.0", "error": error, "id": req_id}


class FakeMiServer:
    """mi_http on 127.0.0.1, a random port, in a thread. Use as a context manager."""

    def __init__(self, state: FakeOpenSips | None = None, *, root: str = "mi") -> None:
        self.state = state or FakeOpenSips()
        self.root = root
        self.closing = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.rstrip("/") != "/" + fake.root:
                    self._send(404, None)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if not body:
                    self._send(400, None)
                    return
                status, reply = handle(fake.state, body)
                if status == 202:
                    # OpenSIPS 3.6.8: 202, chunked, and the body never ends.
                    self.send_response(202)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.flush()
                    fake.closing.wait()
                    return
                self._send(status, reply)

            def do_GET(self) -> None:  # noqa: N802
                self._send(405, None)

            def _send(self, status: int, reply: dict | None) -> None:
                data = json.dumps(reply).encode() if reply is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{self.root}"

    def __enter__(self) -> FakeMiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
