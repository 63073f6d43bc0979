"""The `sipstatus` command: the proxy side's tools.

    sipstatus decode [FILE]     validate a load-status body (a file, or - for stdin)
                                and print it readably; exit 1 naming the member
                                and the rule when it is invalid
    sipstatus --version
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .codec import StatusError, decode
from .status import LoadStatus


def describe(status: LoadStatus) -> str:
    """A readable, multi-line rendering of a status, unknown metrics shown as '?'."""
    lines = [
        f"node       {status.node}  (instance {status.instance}, seq {status.seq})",
        f"state      {status.state.value}" + (f"  ({status.reason})" if status.reason else ""),
        f"capacity   {status.capacity:.4g}  weight {status.weight}  valid {status.validity} s",
    ]
    for name in ("cpu", "memory", "asterisk", "quality", "probe", "network"):
        section = getattr(status, name)
        if section is None:
            lines.append(f"{name:10s} unknown")
            continue
        values = "  ".join(f"{k}={_show(getattr(section, k))}" for k in section.__slots__)
        lines.append(f"{name:10s} {values}")
    if status.affinity:
        lines.append(f"affinity   {' '.join(status.affinity)}")
    if status.ignored:
        lines.append(f"ignored    {' '.join(status.ignored)} (unknown to this version)")
    return "\n".join(lines)


def _show(value: object) -> str:
    if value is None:
        return "?"
    if isinstance(value, tuple):
        return "/".join(_show(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _decode(args: argparse.Namespace) -> int:
    source = args.file
    data = sys.stdin.buffer.read() if source == "-" else open(source, "rb").read()
    try:
        status = decode(data)
    except StatusError as err:
        print(f"sipstatus: {source}: invalid load-status body: {err}", file=sys.stderr)
        return 1
    print(describe(status))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipstatus", description="Tools for the proxy side of sipstatus.")
    parser.add_argument("--version", action="version", version=f"sipstatus {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("decode", help="validate and print a load-status body")
    p.add_argument("file", nargs="?", default="-", help="body file, or - for standard input (default)")
    p.set_defaults(run=_decode)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except OSError as err:
        print(f"sipstatus: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
