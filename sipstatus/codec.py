"""The `load-status` body codec: `encode()` a `LoadStatus`, `decode()` a body.

The rules here are those of spec/load-status.md section 6 and of
spec/load-status.schema.json; a test checks every vector in spec/vectors/
against both. `decode()` accepts any bytes whatsoever and either returns a
`LoadStatus` or raises `StatusError`, which names the member and the rule it
broke, in words a proxy operator can act on when reading a log.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .status import (
    FORMAT_VERSION,
    Asterisk,
    Cpu,
    LoadStatus,
    Memory,
    Network,
    Probe,
    Quality,
    State,
)
from .status import SECTIONS as SECTION_TYPES

#: The media type of the body (spec section 6).
MEDIA_TYPE = "application/load-status+json"

#: The largest body a sender may send and a receiver must accept, in octets
#: (spec section 6.5). With the headers of a NOTIFY or PUBLISH (about 400
#: to 600 octets, more with a long route set) the message stays under the
#: 1,472 octets of one IPv4 UDP datagram on a 1,500-octet Ethernet MTU; a
#: maximal body under the schema's limits is shorter than this (a test checks).
MAX_BODY_OCTETS = 1024

#: The largest integer a JSON number carries exactly in every implementation
#: (RFC 8259 section 6: IEEE 754 binary64).
MAX_SAFE_INTEGER = 2**53 - 1

#: A node name (spec section 6.4, node): a host name or token of 1 to 64
#: characters, alphanumeric at both ends. Configurations check names with it.
NODE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._:-]{0,62}[A-Za-z0-9])?")
_INSTANCE = re.compile(r"[A-Za-z0-9._-]{1,16}")
_REASON = re.compile(r'[ !#-\[\]-~]{0,48}')
_AFFINITY_KEY = re.compile(r'[!#-\[\]-~]{1,24}')
MAX_AFFINITY_KEYS = 4


class StatusError(ValueError):
    """A body or a status that breaks the spec.

    `member` is the JSON path of the offending member ("cpu.usage", "" for
    the whole body) and `rule` the schema keyword or spec rule it broke.
    """

    def __init__(self, member: str, rule: str, detail: str) -> None:
        self.member = member
        self.rule = rule
        self.detail = detail
        where = member or "body"
        super().__init__(f"{where}: {detail} (rule: {rule})")

    @property
    def reason_phrase(self) -> str:
        """The reason phrase of the 400 a receiver answers (spec section 6.6)."""
        return f"Invalid load-status body: {self.member or 'body'} ({self.rule})"


# -- members ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Number:
    """A numeric member: its JSON type, range, and the decimals it is sent with."""

    integer: bool
    minimum: float
    maximum: float
    places: int = 0

    def check(self, member: str, value: object) -> float | int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "an integer" if self.integer else "a number"
            raise StatusError(member, "type", f"must be {kind}, got {_json_type(value)}")
        if self.integer and not isinstance(value, int):
            if not (math.isfinite(value) and value == int(value)):
                raise StatusError(member, "type", f"must be an integer, got {value!r}")
            value = int(value)
        if not math.isfinite(value):
            raise StatusError(member, "type", f"must be a finite number, got {value!r}")
        if value < self.minimum:
            raise StatusError(member, "minimum", f"{value!r} is below the minimum {_num(self.minimum)}")
        if value > self.maximum:
            raise StatusError(member, "maximum", f"{value!r} is above the maximum {_num(self.maximum)}")
        return value

    def wire(self, value: float | int) -> float | int:
        if self.integer:
            return int(value)
        if self.places == 0:
            return int(round(value))
        return round(float(value), self.places)


FRACTION = _Number(False, 0, 1, 4)
#: Ranges are physical bounds with a wide margin, kept tight so that a
#: maximal body stays under MAX_BODY_OCTETS (a test builds one).
COUNT = _Number(True, 0, 999_999)  # channels, calls, streams, probes
BYTES = _Number(True, 0, 2**48 - 1)  # 256 TiB
MILLISECONDS = _Number(False, 0, 60_000, 1)  # one minute
LOAD = _Number(False, 0, 9_999.99, 2)


class _LoadAverage:
    """cpu.load: exactly three load averages (1, 5, 15 minutes)."""

    def check(self, member: str, value: object) -> tuple[float, float, float]:
        if not isinstance(value, list | tuple) or len(value) != 3:
            got = f"an array of {len(value)}" if isinstance(value, list | tuple) else _json_type(value)
            raise StatusError(member, "prefixItems", f"must be an array of 3 load averages (1, 5, 15 minutes), got {got}")
        one, five, fifteen = (LOAD.check(f"{member}[{i}]", v) for i, v in enumerate(value))
        return (float(one), float(five), float(fifteen))

    def wire(self, value: tuple[float, float, float]) -> list[float]:
        return [LOAD.wire(v) for v in value]


_Member = _Number | _LoadAverage

#: The rule of each member of each metric section's type, in wire order.
_MEMBERS: dict[type, dict[str, _Member]] = {
    Cpu: {
        "usage": FRACTION,
        "cores": _Number(True, 1, 4_096),
        "steal": FRACTION,
        "load": _LoadAverage(),
    },
    Memory: {"total": BYTES, "available": BYTES, "used": BYTES},
    Asterisk: {
        "channels": COUNT,
        "calls": COUNT,
        "limit": _Number(True, 1, 999_999),
        "cps": _Number(False, 0, 99_999.99, 2),
        "cpu": _Number(False, 0, 4_096, 2),
        "rss": BYTES,
    },
    Quality: {
        "mos": _Number(False, 1, 4.5, 2),
        "loss": FRACTION,
        "jitter": MILLISECONDS,
        "rtt": MILLISECONDS,
        "streams": COUNT,
        "mes": _Number(False, 0, 100, 1),
    },
    Probe: {
        "p50": MILLISECONDS,
        "p95": MILLISECONDS,
        "max": MILLISECONDS,
        "samples": COUNT,
        "timeouts": COUNT,
    },
    # Packet and bit rates are sent as whole numbers; error and drop rates
    # keep two decimals, since one error a minute (0.02/s) already matters.
    Network: {
        "rx_pps": _Number(False, 0, 1e9, 0),
        "tx_pps": _Number(False, 0, 1e9, 0),
        "rx_bps": _Number(False, 0, 1e12, 0),
        "tx_bps": _Number(False, 0, 1e12, 0),
        "errors": _Number(False, 0, 999_999.99, 2),
        "dropped": _Number(False, 0, 999_999.99, 2),
    },
}
#: Each metric section (status.SECTIONS, in wire order): its model type and the rule of each member.
SECTIONS: dict[str, tuple[type, dict[str, _Member]]] = {
    name: (section, _MEMBERS[section]) for name, section in SECTION_TYPES.items()
}
VERSION = _Number(True, 0, MAX_SAFE_INTEGER)  # any integer; only 1 is read (section 6.1)
SEQ = _Number(True, 0, MAX_SAFE_INTEGER)
VALIDITY = _Number(True, 1, 3600)
CAPACITY = _Number(False, 0, 1, 4)
WEIGHT = _Number(True, 0, 100)
TIME = _Number(False, 0, 253402300799, 3)  # up to 9999-12-31T23:59:59Z

REQUIRED = ("version", "node", "instance", "seq", "validity", "state", "capacity", "weight")


# -- encode ----------------------------------------------------------------


def encode(status: LoadStatus) -> bytes:
    """The body for `status`: compact JSON, members in spec order, unknown
    metrics omitted, numbers rounded to the decimals the spec gives.

    Raises StatusError if `status` itself breaks a rule (a collector bug must
    not put a body on the wire that every receiver rejects).
    """
    body = json.dumps(to_wire(status), separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    data = body.encode("ascii")
    if len(data) > MAX_BODY_OCTETS:
        raise StatusError("", "maxLength", f"is {len(data)} octets encoded, above the limit of {MAX_BODY_OCTETS}")
    return data


def to_wire(status: LoadStatus) -> dict[str, Any]:
    """The JSON object for `status`, validated and rounded (see `encode`)."""
    out = _envelope(status)
    for name, (_, members) in SECTIONS.items():
        section = getattr(status, name)
        if section is None:
            continue
        encoded = {member: rule.wire(rule.check(f"{name}.{member}", value))
                   for member, rule in members.items() if (value := getattr(section, member)) is not None}
        if encoded:
            out[name] = encoded
    if status.affinity:
        out["affinity"] = _check_affinity(list(status.affinity))
    return out


def without_invalid_metrics(status: LoadStatus) -> tuple[LoadStatus, list[StatusError]]:
    """`status` with every metric member that breaks its rule made unknown,
    and the error of each, in wire order: a reading outside the spec's range
    is a measurement fault, and unknown is better than a body every receiver
    rejects. Any other member that breaks a rule (node, capacity, affinity
    ...) raises StatusError: that is a bug, not a measurement."""
    _envelope(status)
    if status.affinity:
        _check_affinity(list(status.affinity))
    errors: list[StatusError] = []
    changes: dict[str, Any] = {}
    for name, (_, members) in SECTIONS.items():
        section = getattr(status, name)
        if section is None:
            continue
        unknown: dict[str, None] = {}
        for member, rule in members.items():
            value = getattr(section, member)
            if value is None:
                continue
            try:
                rule.check(f"{name}.{member}", value)
            except StatusError as exc:
                errors.append(exc)
                unknown[member] = None
        if unknown:
            changes[name] = replace(section, **unknown)
    return (replace(status, **changes) if changes else status), errors


def _envelope(status: LoadStatus) -> dict[str, Any]:
    """The members before the metric sections, checked and rounded."""
    capacity = CAPACITY.wire(CAPACITY.check("capacity", status.capacity))
    state = State(status.state)
    out: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "node": _check_pattern("node", status.node, NODE_NAME, "a host name or token of 1 to 64 characters"),
        "instance": _check_pattern("instance", status.instance, _INSTANCE, "1 to 16 of A-Z a-z 0-9 . _ -"),
        "seq": SEQ.check("seq", status.seq),
    }
    if status.time is not None:
        out["time"] = TIME.wire(TIME.check("time", status.time))
    out["validity"] = VALIDITY.check("validity", status.validity)
    out["state"] = state.value
    out["capacity"] = capacity
    out["weight"] = LoadStatus(status.node, status.instance, 0, 1, state, capacity).weight
    if status.reason is not None:
        out["reason"] = _check_pattern("reason", status.reason, _REASON, "printable ASCII without quote or backslash, at most 48 characters")
    return out


# -- decode ----------------------------------------------------------------


def decode(body: bytes | str) -> LoadStatus:
    """The `LoadStatus` in a body. Raises StatusError, and nothing else, for
    any input that is not a valid version 1 body."""
    return from_wire(parse_json_body(body, MAX_BODY_OCTETS))


def parse_json_body(body: bytes | str, limit: int) -> object:
    """The JSON value in a body of at most `limit` octets of UTF-8, with no
    member twice in one object and no NaN or Infinity.
    Raises StatusError, and nothing else, for anything else."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if len(body) > limit:
        raise StatusError("", "maxLength", f"is {len(body)} octets, above the limit of {limit}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StatusError("", "encoding", f"is not UTF-8 (bad octet at offset {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateMember as exc:
        raise StatusError(str(exc), "unique", "member appears more than once in one object") from None
    except (ValueError, RecursionError) as exc:
        raise StatusError("", "json", f"is not JSON: {_json_error(exc)}") from None


def check_envelope(obj: object, required: tuple[str, ...], format_version: int) -> dict[str, Any]:
    """`obj` as a JSON object that has every member of `required` (not null)
    and is version `format_version`; StatusError otherwise. Shared by the status body and
    the load-affinity body, whose envelopes follow the same rules."""
    if not isinstance(obj, dict):
        raise StatusError("", "type", f"must be a JSON object, got {_json_type(obj)}")
    for name in required:
        if obj.get(name) is None:
            raise StatusError(name, "required", "required member is missing or null")
    if isinstance(obj["version"], float):
        # Spec 6.1: version is the JSON integer 1, written without fraction
        # or exponent; 1.0 is not version 1 (unlike other integer members).
        raise StatusError("version", "type", f"must be the JSON integer {format_version}, "
                          f"written without fraction or exponent, got {obj['version']!r}")
    version = VERSION.check("version", obj["version"])
    if version != format_version:
        raise StatusError("version", "const", f"version {version} is not supported (this receiver reads version {format_version})")
    return obj


def from_wire(obj: object) -> LoadStatus:
    """The `LoadStatus` in an already parsed JSON value (see `decode`)."""
    obj = check_envelope(obj, REQUIRED, FORMAT_VERSION)
    ignored = [k for k in obj if k not in _TOP_LEVEL]
    node = _check_pattern("node", obj["node"], NODE_NAME, "a host name or token of 1 to 64 characters")
    instance = _check_pattern("instance", obj["instance"], _INSTANCE, "1 to 16 of A-Z a-z 0-9 . _ -")
    state_text = obj["state"]
    try:
        state = State(state_text)
    except ValueError:
        raise StatusError("state", "enum", f"{_short(state_text)} is not one of active, draining, overloaded, down") from None
    capacity = CAPACITY.check("capacity", obj["capacity"])
    weight = WEIGHT.check("weight", obj["weight"])
    expected = 0 if state is not State.ACTIVE else 100 * capacity
    if abs(weight - expected) > 0.5 + 1e-9:
        raise StatusError("weight", "weight-hint", f"{weight} does not match state {state.value} and capacity {capacity!r} (spec section 6.3)")
    time = obj.get("time")
    reason = obj.get("reason")
    sections = {}
    for name, (model, members) in SECTIONS.items():
        sections[name] = _decode_section(name, obj.get(name), model, members, ignored)
    return LoadStatus(
        node=node,
        instance=instance,
        seq=int(SEQ.check("seq", obj["seq"])),
        validity=int(VALIDITY.check("validity", obj["validity"])),
        state=state,
        capacity=float(capacity),
        time=None if time is None else float(TIME.check("time", time)),
        reason=None if reason is None else _check_pattern("reason", reason, _REASON, "printable ASCII without quote or backslash, at most 48 characters"),
        affinity=_decode_affinity(obj.get("affinity")),
        ignored=tuple(ignored),
        **sections,
    )


_TOP_LEVEL = frozenset(REQUIRED) | {"time", "reason", "affinity"} | SECTIONS.keys()


def _decode_section(path: str, value: object, model: type, members: Mapping[str, _Member], ignored: list[str]) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StatusError(path, "type", f"must be an object or null, got {_json_type(value)}")
    ignored.extend(f"{path}.{k}" for k in value if k not in members)
    kwargs = {}
    for member, rule in members.items():
        v = value.get(member)
        if v is not None:
            kwargs[member] = rule.check(f"{path}.{member}", v)
    return model(**kwargs)


def _decode_affinity(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise StatusError("affinity", "type", f"must be an array or null, got {_json_type(value)}")
    return tuple(_check_affinity(value))


def _check_affinity(keys: list[object]) -> list[str]:
    _check_count("affinity", len(keys), MAX_AFFINITY_KEYS, "keys")
    for i, key in enumerate(keys):
        _check_pattern(f"affinity[{i}]", key, _AFFINITY_KEY, "1 to 24 printable ASCII characters without space, quote or backslash")
    if len(set(keys)) != len(keys):
        raise StatusError("affinity", "uniqueItems", "keys must be unique")
    return list(keys)  # type: ignore[arg-type]


# -- helpers for precise errors --------------------------------------------


def _check_pattern(member: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str):
        raise StatusError(member, "type", f"must be a string, got {_json_type(value)}")
    if not pattern.fullmatch(value):
        raise StatusError(member, "pattern", f"{_short(value)} is not {what}")
    return value


def _check_count(member: str, count: int, limit: int, what: str) -> None:
    if count > limit:
        raise StatusError(member, "maxItems", f"{count} {what}, at most {limit} allowed")


class _DuplicateMember(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateMember(key)
        obj[key] = value
    return obj


def _no_constants(name: str) -> None:
    # json.loads accepts NaN, Infinity and -Infinity, which are not JSON (RFC 8259 section 6).
    raise ValueError(f"{name} is not a JSON number")


def _json_error(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def _json_type(value: object) -> str:
    names: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", tuple: "array", dict: "object"}
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"string {_short(value)}"
    return names.get(type(value), type(value).__name__)


def _short(value: object, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=True) if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


__all__ = ["MEDIA_TYPE", "MAX_BODY_OCTETS", "NODE_NAME", "SECTIONS", "StatusError", "decode", "encode", "from_wire",
           "to_wire", "without_invalid_metrics"]
