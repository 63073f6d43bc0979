"""What `sipstatus watch` prints: the pool as a table for people, or JSON for scripts.

One row per node, sorted by weight (descending; unknown nodes last). A node
that takes no new calls must be obvious at a glance: its state is written in
capitals (STALE, DRAINING, OVERLOADED, DOWN, UNKNOWN) behind a `!` marker,
and on a terminal it is coloured. Unknown metrics are `?`, never 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .rows import NodeRow

#: Clear the screen and go home (ANSI): each refresh replaces the last.
CLEAR = "\x1b[H\x1b[2J"
_RESET = "\x1b[0m"
_COLOURS = {
    "active": "\x1b[32m",  # green
    "draining": "\x1b[33m",  # yellow
    "stale": "\x1b[33m",
    "overloaded": "\x1b[31m",  # red
    "down": "\x1b[31m",
    "unknown": "\x1b[2m",  # dim
}
HEADER = ("", "NODE", "STATE", "CAP", "WEIGHT", "CPU", "CHANNELS", "CALLS/LIMIT", "MOS", "P95", "AGE",
          "LINK")


def sort_rows(rows: Iterable[NodeRow]) -> list[NodeRow]:
    """By weight, highest first; nodes without a weight (unknown) last; then by name."""
    return sorted(rows, key=lambda r: (r.weight is None, -(r.weight or 0), r.node))


def state_text(row: NodeRow) -> str:
    """`active` in lower case; every state that takes no new calls in capitals."""
    if row.state == "active" and row.weight:
        return "active"
    if row.state == "active":
        return "FULL"  # active, but weight 0: no room (spec 6.3)
    if row.state == "stale" and row.reported:
        return f"STALE({row.reported})"
    return row.state.upper()


def _num(value: float | None, fmt: str) -> str:
    return "?" if value is None else format(value, fmt)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 100:
        return f"{seconds:.1f}s"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def cells(row: NodeRow) -> tuple[str, ...]:
    # Asterisk's limit (maxcalls) counts calls; "-" when it has none.
    calls = "?" if row.calls is None and row.limit is None else \
        f"{_num(row.calls, 'd')}/{'-' if row.limit is None else row.limit}"
    return (
        " " if row.takes_calls else "!",
        row.node,
        state_text(row),
        _num(row.capacity, ".2f"),
        _num(row.weight, "d"),
        "?" if row.cpu is None else f"{row.cpu * 100:.0f}%",
        _num(row.channels, "d"),
        calls,
        _num(row.mos, ".2f"),
        "?" if row.p95 is None else f"{row.p95:.1f}ms",
        _age(row.age),
        row.link,
    )


def render_table(rows: Sequence[NodeRow], *, policy: str, colour: bool = False,
                 clock: float | None = None) -> str:
    """The table, with a title line; `colour` adds ANSI colours by state."""
    rows = sort_rows(rows)
    taking = sum(1 for r in rows if r.takes_calls)
    stamp = time.strftime("%H:%M:%S", time.localtime(clock if clock is not None else time.time()))
    title = (f"sipstatus watch  policy {policy}  {len(rows)} nodes, {taking} taking calls  {stamp}")
    table = [HEADER, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER) - 1)]
    out = [title]
    for index, line in enumerate(table):
        text = "  ".join(c.ljust(w) if i in (1, 2) or i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(line[:-1], widths, strict=True)))
        text = f"{text}  {line[-1]}".rstrip()
        if colour and index > 0:
            row = rows[index - 1]
            text = _COLOURS.get(row.state, "") + text + _RESET
        out.append(text)
    return "\n".join(out)


def snapshot(rows: Sequence[NodeRow], *, policy: str, clock: float | None = None) -> dict[str, Any]:
    """One refresh as a JSON object: the time, the policy and the sorted rows."""
    return {
        "time": round(clock if clock is not None else time.time(), 3),
        "policy": policy,
        "nodes": [_rounded(r.to_json()) for r in sort_rows(rows)],
    }


def render_json(rows: Sequence[NodeRow], *, policy: str, clock: float | None = None) -> str:
    return json.dumps(snapshot(rows, policy=policy, clock=clock), separators=(",", ":"))


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("age") is not None:
        row["age"] = round(row["age"], 3)
    return row
