"""The `load-affinity` event package: which rooms (or other resources) a node hosts.

spec/load-affinity.md defines it; this module is its codec and its key
digest. A node announces the *keys* of the resources it hosts (conference
rooms) so that a proxy sends the next caller for a room to the node already
hosting it. A key is the first 16 hexadecimal digits of the SHA-256 of the
operator's key string (`affinity_key`): fixed size, so that the number of
keys per body is known in advance, and no tenant's room name on the wire.

A body is either one page of the node's full key set (`kind` "full") or a
delta from one version of the set to the next (`kind` "delta"). `decode()`
accepts any bytes whatsoever and either returns an `AffinityBody` or raises
`StatusError` naming the member and the rule broken (the same error type
and reason phrase form as the load-status codec, spec section 6.6).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .codec import (
    MAX_SAFE_INTEGER,
    NODE_NAME,
    StatusError,
    _check_pattern,
    _json_type,
    _Number,
    _short,
    check_envelope,
    parse_json_body,
)

#: The event package (spec/load-affinity.md section 2).
PACKAGE = "load-affinity"
#: The media type of its bodies.
MEDIA_TYPE = "application/load-affinity+json"
#: The body format version.
FORMAT_VERSION = 1

#: The largest body, octets (spec/load-affinity.md section 5). A NOTIFY or
#: PUBLISH of this package carries at most 480 octets of header fields in
#: the deployments this project tests (section 5 gives the measurements), so
#: a message with a body at this bound stays within the 1300 octets under
#: which RFC 3261 section 18.1.1 lets a request use UDP.
MAX_BODY_OCTETS = 800
#: Keys in one body: a full page's `keys`, or a delta's `add` and `del`
#: together. With the longest node name, instance and numbers the schema
#: allows, 30 keys make a body of 783 octets (a test builds it).
MAX_KEYS = 30
#: Hexadecimal digits of a key: 64 bits of SHA-256. With 5,000 rooms in a
#: pool the chance that two share a key is about 7e-13; two rooms that did
#: would only be placed on one node, as one room would.
KEY_DIGITS = 16
#: Pages of one full set: 65,535 x 30 keys is far beyond any media server.
MAX_PAGES = 65_535
#: How long a receiver trusts a node's set without a body, seconds.
MAX_VALIDITY = 86_400

_KEY = re.compile(r"[0-9a-f]{16}")
_INSTANCE = re.compile(r"[A-Za-z0-9._-]{1,16}")

SEQ = _Number(True, 0, MAX_SAFE_INTEGER)
VALIDITY = _Number(True, 1, MAX_VALIDITY)
PAGE = _Number(True, 1, MAX_PAGES)

REQUIRED = ("version", "node", "instance", "seq", "validity", "kind")


def affinity_key(name: str) -> str:
    """The key of a resource named `name` (the operator's key string, for
    example a ConfBridge name or "tenant/room"): the first 16 lower-case
    hexadecimal digits of SHA-256 over its UTF-8 octets. Kamailio computes
    the same with `$(var(name){s.sha256}{s.substr,0,16})`, OpenSIPS with
    `{s.sha256}` and `{s.substr,0,16}`."""
    if not name:
        raise ValueError("an affinity key string must not be empty")
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:KEY_DIGITS]


class Kind(StrEnum):
    """What a body carries (spec/load-affinity.md section 4)."""

    #: One page of the node's whole key set at version `seq`.
    FULL = "full"
    #: The changes from version `base` to version `seq`.
    DELTA = "delta"


@dataclass(frozen=True, slots=True)
class AffinityBody:
    """One `application/load-affinity+json` body."""

    node: str
    instance: str
    seq: int
    validity: int
    kind: Kind
    #: FULL: this page's keys.
    keys: tuple[str, ...] = ()
    page: int = 1
    pages: int = 1
    #: DELTA: the version the changes apply to, and the changes.
    base: int | None = None
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()  # "del" on the wire


# -- encode ------------------------------------------------------------------------


def encode(body: AffinityBody) -> bytes:
    """The compact JSON of `body`, members in spec order. Raises StatusError
    if `body` breaks a rule (a sender bug must not reach the wire)."""
    data = json.dumps(to_wire(body), separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if len(data) > MAX_BODY_OCTETS:
        raise StatusError("", "maxLength", f"is {len(data)} octets encoded, above the limit of {MAX_BODY_OCTETS}")
    return data


def to_wire(body: AffinityBody) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "node": _check_pattern("node", body.node, NODE_NAME, "a host name or token of 1 to 64 characters"),
        "instance": _check_pattern("instance", body.instance, _INSTANCE, "1 to 16 of A-Z a-z 0-9 . _ -"),
        "seq": SEQ.check("seq", body.seq),
        "validity": VALIDITY.check("validity", body.validity),
        "kind": Kind(body.kind).value,
    }
    if body.kind is Kind.FULL:
        out["page"] = PAGE.check("page", body.page)
        out["pages"] = PAGE.check("pages", body.pages)
        out["keys"] = list(body.keys)
    else:
        out["base"] = SEQ.check("base", body.base)
        out["add"] = list(body.add)
        out["del"] = list(body.remove)
    _check_kind_members(out)
    return out


# -- decode ------------------------------------------------------------------------


def decode(data: bytes | str) -> AffinityBody:
    """The body in `data`. Raises StatusError, and nothing else, for any
    input that is not a valid version 1 body."""
    return from_wire(parse_json_body(data, MAX_BODY_OCTETS))


def from_wire(obj: object) -> AffinityBody:
    obj = check_envelope(obj, REQUIRED, FORMAT_VERSION)
    node = _check_pattern("node", obj["node"], NODE_NAME, "a host name or token of 1 to 64 characters")
    instance = _check_pattern("instance", obj["instance"], _INSTANCE, "1 to 16 of A-Z a-z 0-9 . _ -")
    seq = int(SEQ.check("seq", obj["seq"]))
    validity = int(VALIDITY.check("validity", obj["validity"]))
    try:
        kind = Kind(obj["kind"])
    except (ValueError, TypeError):
        raise StatusError("kind", "enum", f"{_short(obj['kind'])} is not one of full, delta") from None
    _check_kind_members(obj)
    if kind is Kind.FULL:
        return AffinityBody(node, instance, seq, validity, kind, keys=tuple(obj["keys"]),
                            page=int(obj["page"]), pages=int(obj["pages"]))
    return AffinityBody(node, instance, seq, validity, kind, base=int(obj["base"]),
                        add=tuple(obj["add"]), remove=tuple(obj["del"]))


def _check_kind_members(obj: dict[str, Any]) -> None:
    """The members each kind requires, their ranges, and the rules JSON
    Schema cannot express (page <= pages, base < seq, add and del apart)."""
    kind = Kind(obj["kind"])
    if kind is Kind.FULL:
        for name in ("page", "pages", "keys"):
            if obj.get(name) is None:
                raise StatusError(name, "required", f"required member of a {kind.value} body is missing or null")
        page = PAGE.check("page", obj["page"])
        pages = PAGE.check("pages", obj["pages"])
        if page > pages:
            raise StatusError("page", "maximum", f"page {page} of {pages}: page must not exceed pages")
        _check_keys("keys", obj["keys"])
        if len(obj["keys"]) > MAX_KEYS:
            raise StatusError("keys", "maxItems", f"{len(obj['keys'])} keys, at most {MAX_KEYS} in one body")
        return
    for name in ("base", "add", "del"):
        if obj.get(name) is None:
            raise StatusError(name, "required", f"required member of a {kind.value} body is missing or null")
    base = SEQ.check("base", obj["base"])
    if base >= obj["seq"]:
        raise StatusError("base", "maximum", f"base {base} must be below seq {obj['seq']} (a delta moves the set forward)")
    _check_keys("add", obj["add"])
    _check_keys("del", obj["del"])
    if len(obj["add"]) + len(obj["del"]) > MAX_KEYS:
        raise StatusError("add", "maxItems", f"{len(obj['add'])} added and {len(obj['del'])} removed keys, "
                          f"at most {MAX_KEYS} together in one body")
    both = set(obj["add"]) & set(obj["del"])
    if both:
        raise StatusError("del", "disjoint", f"key {sorted(both)[0]} is both added and removed")


def _check_keys(member: str, keys: object) -> None:
    if not isinstance(keys, list):
        raise StatusError(member, "type", f"must be an array, got {_json_type(keys)}")
    for i, key in enumerate(keys):
        _check_pattern(f"{member}[{i}]", key, _KEY, "16 lower-case hexadecimal digits (spec/load-affinity.md 4.1)")
    if len(set(keys)) != len(keys):
        raise StatusError(member, "uniqueItems", "keys must be unique")


# -- building bodies (the sender's side) ------------------------------------------------------


def full_pages(node: str, instance: str, seq: int, validity: int, keys: Iterable[str],
               per_page: int = MAX_KEYS) -> list[AffinityBody]:
    """The pages of the full set `keys` at version `seq` (at least one page:
    an empty set is one page with no keys). Keys go in sorted order, so the
    same set always makes the same pages."""
    ordered = sorted(keys)
    if not 1 <= per_page <= MAX_KEYS:
        raise ValueError(f"per_page must be 1 to {MAX_KEYS}, got {per_page}")
    chunks = [tuple(ordered[i:i + per_page]) for i in range(0, len(ordered), per_page)] or [()]
    if len(chunks) > MAX_PAGES:
        raise ValueError(f"{len(ordered)} keys need {len(chunks)} pages, above {MAX_PAGES}")
    return [AffinityBody(node, instance, seq, validity, Kind.FULL, keys=chunk, page=i + 1, pages=len(chunks))
            for i, chunk in enumerate(chunks)]


__all__ = ["AffinityBody", "Kind", "MAX_BODY_OCTETS", "MAX_KEYS", "MEDIA_TYPE", "PACKAGE",
           "affinity_key", "decode", "encode", "from_wire", "full_pages", "to_wire"]
