"""The `sipstatus-agent` command line.

    sipstatus-agent --version
    sipstatus-agent check-config FILE
    sipstatus-agent sample [--config FILE] [--json]

`run`, `status`, `drain` and `undrain` (the service and its control) are
issue 5; they will reuse `Sampler` from agent.sampler.

Exit status: 0 done; 1 runtime failure; 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from sipstatus import codec
from sipstatus.status import LoadStatus

from . import __version__
from .collectors.registry import build_collectors
from .config import Config, ConfigError, load
from .sampler import Sampler

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipstatus-agent", description="Asterisk load status over SIP: the agent.")
    parser.add_argument("--version", action="version", version=f"sipstatus-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    sample = sub.add_parser("sample", help="take one measurement now and print it")
    sample.add_argument("--config", metavar="FILE", help="configuration file (default: built-in defaults)")
    sample.add_argument("--json", action="store_true", help="print the exact load-status body")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        return check_config(args.file)
    return sample_command(args.config, args.json)


def check_config(path: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        load(path)
    except ConfigError as exc:
        print(f"{path}: {exc}", file=err)
        return EXIT_CONFIG
    print("ok", file=out)
    return EXIT_OK


def sample_command(path: str | None, as_json: bool, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        config = load(path)
    except ConfigError as exc:
        print(f"{path}: {exc}", file=err)
        return EXIT_CONFIG
    logging.basicConfig(level=logging.ERROR, stream=err)  # failures are listed below instead
    try:
        status, errors = asyncio.run(take_sample(config))
    except ConfigError as exc:
        print(f"{path or 'defaults'}: {exc}", file=err)
        return EXIT_CONFIG
    for name, error in errors.items():
        if error:
            print(f"{name}: {error}", file=err)
    try:
        print(codec.encode(status).decode("ascii") if as_json else render(status), file=out)
    except codec.StatusError as exc:
        print(f"the measured status breaks the spec: {exc}", file=err)
        return EXIT_FAILURE
    return EXIT_OK


async def take_sample(config: Config) -> tuple[LoadStatus, dict[str, str | None]]:
    """Two readings `agent.sample_gap` apart (CPU and network rates need a
    window); the second, scored, is the sample."""
    sampler = Sampler(config, build_collectors(config))
    await sampler.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        sampler.measure()
        await sampler.wait_settled(config.collectors.asterisk.connect_timeout + 1.0)
        await asyncio.sleep(max(0.0, config.agent.sample_gap - (loop.time() - started)))
        status = sampler.sample()
    finally:
        await sampler.stop()
    return status, dict(sampler.errors)


# -- the readable form ---------------------------------------------------------


def _v(value: object, fmt: str = "{}", unit: str = "") -> str:
    if value is None:
        return "unknown"
    return fmt.format(value) + unit


def _bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _rate(bps: float | None) -> str:
    if bps is None:
        return "unknown"
    for unit, size in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= size:
            return f"{bps / size:.2f} {unit}"
    return f"{bps:.0f} bit/s"


def render(s: LoadStatus) -> str:
    """A status as aligned text, "unknown" for what could not be measured."""
    lines = [
        f"node      {s.node}  instance {s.instance}  seq {s.seq}  validity {s.validity} s",
        f"state     {s.state.value}  capacity {s.capacity:.2f}  weight {s.weight}  reason {s.reason or '-'}",
    ]
    c = s.cpu
    lines.append("cpu       " + ("unknown" if c is None else
                 f"usage {_v(None if c.usage is None else 100 * c.usage, '{:.1f}', ' %')}  "
                 f"cores {_v(c.cores)}  steal {_v(None if c.steal is None else 100 * c.steal, '{:.1f}', ' %')}  "
                 f"load {_v(None if c.load is None else ' '.join(f'{x:.2f}' for x in c.load))}"))
    m = s.memory
    lines.append("memory    " + ("unknown" if m is None else
                 f"total {_bytes(m.total)}  available {_bytes(m.available)}  used {_bytes(m.used)}"))
    a = s.asterisk
    lines.append("asterisk  " + ("unknown" if a is None else
                 f"channels {_v(a.channels)}  calls {_v(a.calls)}  limit {_v(a.limit) if a.limit is not None else 'none or unknown'}  "
                 f"cps {_v(a.cps, '{:.2f}')}  cpu {_v(a.cpu, '{:.2f}', ' cores')}  rss {_bytes(a.rss)}"))
    q = s.quality
    lines.append("quality   " + ("unknown" if q is None else
                 f"mos {_v(q.mos, '{:.2f}')}  loss {_v(None if q.loss is None else 100 * q.loss, '{:.1f}', ' %')}  "
                 f"jitter {_v(q.jitter, '{:.1f}', ' ms')}  rtt {_v(q.rtt, '{:.1f}', ' ms')}  "
                 f"streams {_v(q.streams)}  mes {_v(q.mes, '{:.1f}')}"))
    p = s.probe
    lines.append("probe     " + ("unknown" if p is None else
                 f"p50 {_v(p.p50, '{:.2f}', ' ms')}  p95 {_v(p.p95, '{:.2f}', ' ms')}  max {_v(p.max, '{:.2f}', ' ms')}  "
                 f"samples {_v(p.samples)}  timeouts {_v(p.timeouts)}"))
    n = s.network
    lines.append("network   " + ("unknown" if n is None else
                 f"rx {_v(n.rx_pps, '{:.0f}', ' pkt/s')} {_rate(n.rx_bps)}  tx {_v(n.tx_pps, '{:.0f}', ' pkt/s')} {_rate(n.tx_bps)}  "
                 f"errors {_v(n.errors, '{:.2f}', '/s')}  dropped {_v(n.dropped, '{:.2f}', '/s')}"))
    return "\n".join(lines)
