"""What the agent's and the sidecar's configurations share: one `ConfigError`,
the checkers their dataclass fields carry, the node-name rule and the
listen-address grammar.

A checker takes a value parsed from TOML and returns it cleaned, or raises
ValueError whose message says what was wrong (`must be an integer 1..65535,
got "abc"`); the loader puts the dotted key in front and raises ConfigError.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Collection
from dataclasses import field
from typing import Any

from .codec import NODE_NAME

#: A node name (spec section 6.4), as a pattern for `text()`.
NODE = NODE_NAME.pattern

#: The transports a listen address may name, as written (lower case).
TRANSPORTS = ("udp", "tcp", "tls")


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


def show(value: object) -> str:
    """`value` as the TOML file spells it, for an error message."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def option(default: Any, check: Callable[[object], Any]) -> Any:
    """A dataclass field with its default and the checker of its value."""
    return field(default=default, metadata={"check": check})


# -- checkers: each returns the cleaned value or raises ValueError(problem) ----


def integer(lo: int, hi: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"must be an integer {lo}..{hi}, got {show(value)}")
        return value

    return check


def number(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[object], float]:
    """A finite number in lo..hi (above lo with `lo_open`); an integer is taken as a number."""
    def check(value: object) -> float:
        ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
        if ok:
            ok = (value > lo if lo_open else value >= lo) and value <= hi  # type: ignore[operator]
        if not ok:
            what = f"above {lo:g} and at most {hi:g}" if lo_open else f"{lo:g}..{hi:g}"
            raise ValueError(f"must be a number {what}, got {show(value)}")
        return float(value)  # type: ignore[arg-type]

    return check


def text(pattern: str | None = None, what: str = "a string") -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or (pattern is not None and not re.fullmatch(pattern, value)):
            raise ValueError(f"must be {what}, got {show(value)}")
        return value

    return check


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {show(value)}")
    return value


def choice(*options: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(show(o) for o in options)}, got {show(value)}")
        return value  # type: ignore[return-value]

    return check


def names(allowed: tuple[str, ...] | None = None, what: str = "names") -> Callable[[object], tuple[str, ...]]:
    """An array of distinct non-empty strings, each one of `allowed` if given."""
    def check(value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"must be an array of {what}, got {show(value)}")
        if allowed is not None:
            for v in value:
                if v not in allowed:
                    raise ValueError(f"{show(v)} is not one of {', '.join(allowed)}")
        if len(set(value)) != len(value):
            raise ValueError(f"lists a name twice: {show(value)}")
        return tuple(value)

    return check


def strings(item: Callable[[object], Any], what: str) -> Callable[[object], tuple]:
    """An array of distinct values, each checked by `item` (its error names the item's place)."""
    def check(value: object) -> tuple:
        if not isinstance(value, list):
            raise ValueError(f"must be an array of {what}, got {show(value)}")
        items = []
        for i, v in enumerate(value):
            try:
                items.append(item(v))
            except ValueError as err:
                raise ValueError(f"item {i + 1}: {err}") from None
        if len(set(items)) != len(items):
            raise ValueError(f"lists the same value twice: {show(value)}")
        return tuple(items)

    return check


# -- listen addresses ----------------------------------------------------------


class ListenError(ValueError):
    """A listen address that is not TRANSPORT:HOST:PORT; `address` is the text
    given, `problem` what is wrong with it."""

    def __init__(self, address: str, problem: str) -> None:
        self.address = address
        self.problem = problem
        super().__init__(f"listen address {address!r}: {problem}")


def parse_listen(address: str, transports: Collection[str] = TRANSPORTS, *,
                 port_zero: bool = False) -> tuple[str, str, int]:
    """(TRANSPORT, host, port) from `udp:HOST:PORT`: the transport one of
    `transports` (any case; returned in upper case), the host an IP address
    (IPv6 in brackets, `tcp:[::1]:5070`; unbracketed, the last colon ends the
    address), the port 1..65535, or 0 (any free port) with `port_zero`.
    Surrounding white space is ignored. Raises ListenError naming the problem."""
    kind, sep, rest = address.strip().partition(":")
    expected = ", ".join(f"{t}:HOST:PORT" for t in transports)
    expected = " or ".join(expected.rsplit(", ", 1))
    if not sep or kind.lower() not in transports:
        raise ListenError(address, f"expected {expected} (IPv6 in brackets: tcp:[::1]:5070)")
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
    else:
        host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not re.fullmatch(r"[0-9]+", port_text):
        raise ListenError(address, f"expected {expected} (IPv6 in brackets: tcp:[::1]:5070)")
    port = int(port_text)
    lowest = 0 if port_zero else 1
    if not lowest <= port <= 65535:
        raise ListenError(address, f"port {port} is not {lowest}..65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ListenError(address, f"{host!r} is not an IP address (listen on an address, not a name)") from None
    return kind.upper(), host, port
