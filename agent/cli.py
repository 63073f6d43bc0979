"""The `sipstatus-agent` command line.

    sipstatus-agent --version
    sipstatus-agent run [--config FILE] [--listen URI]... [--trust CIDR]... [--publish SIP-URI]...
    sipstatus-agent check-config FILE
    sipstatus-agent sample [--config FILE] [--json]
    sipstatus-agent status [--json]
    sipstatus-agent drain | undrain

`status`, `drain` and `undrain` talk to the running agent over its control
socket (agent.control).

Exit status: 0 done; 1 runtime failure; 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import logging
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from sipstatus import codec
from sipstatus.status import SECTIONS, LoadStatus

from . import __version__
from .collectors.registry import build_collectors
from .config import Config, ConfigError, listen_addresses, load, networks, sip_uris
from .control import ControlError, answer, default_socket_path
from .sampler import Sampler

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

#: What the measuring commands import beyond the library (setup.py's extra
#: "agent"; the Debian package sipstatus-agent depends on both).
AGENT_DEPENDENCIES = ("psutil", "pyroute2")


def missing_agent_dependencies() -> list[str]:
    """Those of the agent's own dependencies that do not import here."""
    missing = []
    for module in AGENT_DEPENDENCIES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipstatus-agent", description="Asterisk load status over SIP: the agent.")
    parser.add_argument("--version", action="version", version=f"sipstatus-agent {__version__}")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the agent (notifier and publisher) until SIGTERM")
    run.add_argument("--config", metavar="FILE", help="configuration file (default: built-in defaults)")
    run.add_argument("--listen", metavar="URI", action="append", default=None,
                     help="listen for SUBSCRIBE on udp:|tcp:|tls:HOST:PORT (repeatable; replaces notifier.listen)")
    run.add_argument("--trust", metavar="CIDR", action="append", default=None,
                     help="let this network subscribe (repeatable; replaces notifier.trust)")
    run.add_argument("--publish", metavar="SIP-URI", action="append", default=None,
                     help="PUBLISH to this compositor (repeatable; replaces publisher.targets)")
    run.add_argument("--control", metavar="PATH", help=f"control socket (default: {default_socket_path()})")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    sample = sub.add_parser("sample", help="take one measurement now and print it")
    sample.add_argument("--config", metavar="FILE", help="configuration file (default: built-in defaults)")
    sample.add_argument("--json", action="store_true", help="print the exact load-status body")
    for name, text in (("status", "print the running agent's current status"),
                       ("drain", "take this node out of rotation (state draining) at once"),
                       ("undrain", "put this node back into rotation")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--control", metavar="PATH", help=f"control socket (default: {default_socket_path()})")
        if name == "status":
            command.add_argument("--json", action="store_true", help="print the status as its wire JSON")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        return check_config(args.file)
    missing = missing_agent_dependencies() if args.command in ("run", "sample") else []
    if missing:
        print(f"sipstatus-agent {args.command}: {' and '.join(missing)} not installed: the agent needs the "
              "extra 'agent' (pip install 'sipstatus[agent]'; Debian: the sipstatus-agent package)",
              file=sys.stderr)
        return EXIT_FAILURE
    if args.command == "run":
        return run_command(args)
    if args.command in ("status", "drain", "undrain"):
        return control_command(args.command, args.control or default_socket_path(), getattr(args, "json", False))
    return sample_command(args.config, args.json)


def run_command(args: argparse.Namespace) -> int:
    """`run`: the configuration (file, then command-line overrides), then the service."""
    def reread(path: str) -> Config:
        # SIGHUP reads the file again; the command line still overrides it.
        return apply_overrides(load(path), listen=args.listen, trust=args.trust, publish=args.publish)

    try:
        config = reread(args.config) if args.config else apply_overrides(
            Config(), listen=args.listen, trust=args.trust, publish=args.publish)
    except ConfigError as exc:
        print(f"sipstatus-agent: {args.config + ': ' if args.config else ''}{exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=config.agent.log_level.upper(), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    from .service import run

    try:
        return run(config, config_path=args.config, control_path=args.control or default_socket_path(),
                   reread=reread)
    except (OSError, ValueError, ControlError, ssl.SSLError) as exc:
        print(f"sipstatus-agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def apply_overrides(config: Config, *, listen: Sequence[str] | None = None, trust: Sequence[str] | None = None,
                    publish: Sequence[str] | None = None) -> Config:
    """`config` with the command line's --listen, --trust and --publish in
    place of the file's lists; raises ConfigError naming the option."""
    notifier, publisher = config.notifier, config.publisher
    for option, values, check, field in (("--listen", listen, listen_addresses, "listen"),
                                         ("--trust", trust, networks, "trust")):
        if values is not None:
            try:
                notifier = dataclasses.replace(notifier, **{field: check(list(values))})
            except ValueError as exc:
                raise ConfigError(option, str(exc)) from None
    if publish is not None:
        try:
            publisher = dataclasses.replace(publisher, targets=sip_uris(list(publish)))
        except ValueError as exc:
            raise ConfigError("--publish", str(exc)) from None
    return dataclasses.replace(config, notifier=notifier, publisher=publisher)


def control_command(command: str, path: str, as_json: bool, out: TextIO | None = None,
                    err: TextIO | None = None) -> int:
    """`status`, `drain`, `undrain`: ask the running agent, print its status
    and the operator's drain flag (--json: the status body alone)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        reply = answer(path, command)
    except ControlError as exc:
        print(f"sipstatus-agent {command}: {exc}", file=err)
        return EXIT_FAILURE
    body = reply["status"]
    if as_json:
        print(json.dumps(body, separators=(",", ":")), file=out)
        return EXIT_OK
    status = codec.from_wire(body)
    print(render(status), file=out)
    drain = reply.get("drain")
    if isinstance(drain, dict):
        print(drain_line(status, drain), file=out)
    return EXIT_OK


def drain_line(status: LoadStatus, drain: dict, now: float | None = None) -> str:
    """The operator's drain flag as `status` shows it, whatever the state:
    a node drained while down stays out when it recovers."""
    if not drain.get("on"):
        return "drain     off"
    since = drain.get("since")
    when = ""
    if isinstance(since, int | float):
        age = max(0.0, (time.time() if now is None else now) - since)
        when = f" since {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(since))} ({_duration(age)} ago)"
    if status.state.value == "down":  # rule 1 of agent/scoring.py comes before draining
        effect = "the node is down now and stays out (draining) when it recovers, until `sipstatus-agent undrain`"
    else:
        effect = "no new calls until `sipstatus-agent undrain`"
    return f"drain     on{when}: {effect}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


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
    for name in SECTIONS:
        section = getattr(s, name)
        lines.append(f"{name:10s}" + ("unknown" if section is None else _RENDER[name](section)))
    return "\n".join(lines)


#: How `render` shows each metric section (status.SECTIONS): units, percentages, "unknown".
_RENDER: dict[str, Callable[[Any], str]] = {
    "cpu": lambda c: (
        f"usage {_v(None if c.usage is None else 100 * c.usage, '{:.1f}', ' %')}  "
        f"cores {_v(c.cores)}  steal {_v(None if c.steal is None else 100 * c.steal, '{:.1f}', ' %')}  "
        f"load {_v(None if c.load is None else ' '.join(f'{x:.2f}' for x in c.load))}"),
    "memory": lambda m: f"total {_bytes(m.total)}  available {_bytes(m.available)}  used {_bytes(m.used)}",
    "asterisk": lambda a: (
        f"channels {_v(a.channels)}  calls {_v(a.calls)}  limit {_v(a.limit) if a.limit is not None else 'none or unknown'}  "
        f"cps {_v(a.cps, '{:.2f}')}  cpu {_v(a.cpu, '{:.2f}', ' cores')}  rss {_bytes(a.rss)}"),
    "quality": lambda q: (
        f"mos {_v(q.mos, '{:.2f}')}  loss {_v(None if q.loss is None else 100 * q.loss, '{:.1f}', ' %')}  "
        f"jitter {_v(q.jitter, '{:.1f}', ' ms')}  rtt {_v(q.rtt, '{:.1f}', ' ms')}  "
        f"streams {_v(q.streams)}  mes {_v(q.mes, '{:.1f}')}"),
    "probe": lambda p: (
        f"p50 {_v(p.p50, '{:.2f}', ' ms')}  p95 {_v(p.p95, '{:.2f}', ' ms')}  max {_v(p.max, '{:.2f}', ' ms')}  "
        f"samples {_v(p.samples)}  timeouts {_v(p.timeouts)}"),
    "network": lambda n: (
        f"rx {_v(n.rx_pps, '{:.0f}', ' pkt/s')} {_rate(n.rx_bps)}  tx {_v(n.tx_pps, '{:.0f}', ' pkt/s')} {_rate(n.tx_bps)}  "
        f"errors {_v(n.errors, '{:.2f}', '/s')}  dropped {_v(n.dropped, '{:.2f}', '/s')}"),
}
