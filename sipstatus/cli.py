"""The `sipstatus` command: the proxy side's tools.

    sipstatus decode [FILE]     validate a load-status body (a file, or - for stdin)
                                and print it readably; exit 1 naming the member
                                and the rule when it is invalid
    sipstatus watch ...         a live view of the pool: subscribe to agents
                                (--agent [NODE=]URI, --config FILE) and/or take
                                PUBLISH (--listen); --json, --once
    sipstatus sidecar ...       follow the agents and push weights into Kamailio
                                (--kamailio-rpc, --kamailio-list-file); see
                                packaging/examples/sidecar.toml
    sipstatus --version

Exit status: 0 on success, 1 on invalid input or a runtime error, 2 on a
usage or configuration error (the message names the flag or key).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import sys
from collections.abc import Sequence

from . import __version__
from .codec import StatusError, decode
from .proxy import sidecar, watchview
from .proxy.agents import parse_agent_uri
from .proxy.policy import DEFAULT_POLICY, POLICIES
from .proxy.watcher import Watcher
from .sidecar_config import ConfigError, SidecarConfig, load, with_flags
from .status import SECTIONS, LoadStatus


def describe(status: LoadStatus) -> str:
    """A readable, multi-line rendering of a status, unknown metrics shown as '?'."""
    lines = [
        f"node       {status.node}  (instance {status.instance}, seq {status.seq})",
        f"state      {status.state.value}" + (f"  ({status.reason})" if status.reason else ""),
        f"capacity   {status.capacity:.4g}  weight {status.weight}  valid {status.validity} s",
    ]
    for name in SECTIONS:
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


# -- watch and sidecar ------------------------------------------------------------------------


def _config(args: argparse.Namespace, **extra: object) -> SidecarConfig:
    config = load(args.config) if args.config else SidecarConfig()
    return with_flags(config, agents=args.agent, listen=args.listen, policy=args.policy, **extra)


def _local_address_towards(uri: str) -> str:
    """The address this host uses to reach an agent (no packet is sent)."""
    host = parse_agent_uri(uri).host.strip("[]")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def _watch_settings(args: argparse.Namespace, config: SidecarConfig) -> SidecarConfig:
    if args.listen:
        # Listening where agents publish: show every node that does.
        return dataclasses.replace(config, compositor=dataclasses.replace(
            config.compositor, enabled=True, auto_join=True))
    # No --listen: NOTIFYs come to a port of our own (a running sidecar may
    # hold the configured one), on the address that reaches the agents.
    host = _local_address_towards(config.agents[0].uri) if config.agents else "127.0.0.1"
    listen = f"udp:[{host}]:0" if ":" in host else f"udp:{host}:0"
    return dataclasses.replace(config, sip=dataclasses.replace(config.sip, listen=(listen,)),
                               compositor=dataclasses.replace(config.compositor, enabled=False,
                                                              auto_join=False))


def _watch(args: argparse.Namespace) -> int:
    config = _watch_settings(args, _config(args))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="sipstatus watch: %(message)s")
    if not config.agents and not config.compositor.enabled:
        raise ConfigError("--agent", "nothing to watch: give --agent SIP-URI, a --config with "
                          "[agents], or --listen to take PUBLISH")
    return asyncio.run(_watch_main(args, config))


async def _watch_main(args: argparse.Namespace, config: SidecarConfig) -> int:
    watcher = Watcher(config.agents, config=config.watcher_config(),
                      policy=sidecar.build_policy(config.policy), nodes=config.compositor.nodes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    tty = sys.stdout.isatty()
    colour = tty and not args.no_colour

    def emit() -> None:
        rows = watcher.rows()
        if args.json:
            print(watchview.render_json(rows, policy=watcher.policy.name), flush=True)
        elif tty and not args.once:
            sys.stdout.write(watchview.CLEAR + watchview.render_table(
                rows, policy=watcher.policy.name, colour=colour) + "\n")
            sys.stdout.flush()
        else:
            print(watchview.render_table(rows, policy=watcher.policy.name, colour=colour) + "\n",
                  flush=True)

    await watcher.start()
    try:
        if args.once:
            if config.agents:
                await watcher.wait_for(lambda w: w.settled() or stop.is_set(), args.timeout)
            else:  # publishers only: give them the time they asked for
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.timeout)
            emit()
            return 0
        while not stop.is_set():
            emit()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)
        return 0
    finally:
        await watcher.close()


def _sidecar(args: argparse.Namespace) -> int:
    config = _config(args, kamailio_rpc=args.kamailio_rpc, kamailio_list_file=args.kamailio_list_file,
                     discover_group=args.discover_from_dispatcher, compositor=args.compositor,
                     auto_join=args.auto_join, opensips_mi=args.opensips_mi)
    if args.check_config:
        print(f"configuration OK: {len(config.agents)} agents, policy {config.policy.name}, "
              f"listen {' '.join(config.sip.listen)}, kamailio {config.kamailio.rpc or 'none'}, "
              f"opensips {config.opensips.mi_url or 'none'}")
        return 0
    logging.basicConfig(level=(args.log_level or config.sidecar.log_level).upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(sidecar.run(config))


def _conform(args: argparse.Namespace) -> int:
    from . import conform

    report = conform.run(args.role, args.target, node=args.node, resource=args.resource,
                         local=args.local, wait=args.wait, echo=lambda line: print(line, flush=True))
    print(report.summary())
    return 0 if report.ok else 1


def _add_watcher_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="sidecar TOML file (packaging/examples/sidecar.toml)")
    p.add_argument("--agent", action="append", metavar="[NODE=]SIP-URI",
                   help="an agent to subscribe to, e.g. sip:192.0.2.21:5070 (named by what it reports) "
                        "or ast1=sip:192.0.2.21:5070 (its reports must name node ast1); repeatable")
    p.add_argument("--listen", action="append", metavar="URI",
                   help="where NOTIFY and PUBLISH come in, e.g. udp:127.0.0.1:5080 (repeatable)")
    p.add_argument("--policy", choices=sorted(POLICIES), help=f"weight policy (default {DEFAULT_POLICY})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipstatus", description="Tools for the proxy side of sipstatus.")
    parser.add_argument("--version", action="version", version=f"sipstatus {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("decode", help="validate and print a load-status body")
    p.add_argument("file", nargs="?", default="-", help="body file, or - for standard input (default)")
    p.set_defaults(run=_decode)

    p = sub.add_parser("watch", help="live view of the pool's nodes")
    _add_watcher_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object per refresh, for scripts")
    p.add_argument("--once", action="store_true", help="print one snapshot after the first reports and exit")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="--once: wait at most this long for the agents (default 5)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes (default 1)")
    p.add_argument("--no-colour", action="store_true", help="no colours, even on a terminal")
    p.set_defaults(run=_watch)

    p = sub.add_parser("sidecar", help="follow the agents and push weights into Kamailio or OpenSIPS")
    _add_watcher_flags(p)
    p.add_argument("--kamailio-rpc", metavar="ADDRESS",
                   help="Kamailio jsonrpcs: unix:/run/kamailio/kamailio_rpc.sock or fifo:PATH")
    p.add_argument("--kamailio-list-file", metavar="PATH",
                   help="dispatcher list file to rewrite with rweight and states (reloads rate-limited)")
    p.add_argument("--opensips-mi", metavar="URL",
                   help="OpenSIPS mi_http, e.g. http://127.0.0.1:8888/mi (lb_resize, lb_status, ds_set_state)")
    p.add_argument("--discover-from-dispatcher", type=int, metavar="GROUP",
                   help="the agents are the destinations of this dispatcher group (node = duid)")
    p.add_argument("--compositor", action="store_true", help="accept PUBLISH for the pool's nodes")
    p.add_argument("--auto-join", action="store_true", help="accept PUBLISH from any node (adds it to the pool)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--check-config", action="store_true", help="check the configuration and exit")
    p.set_defaults(run=_sidecar)

    p = sub.add_parser("conform", help="check an implementation of load-status against the spec, "
                                       "playing the other side (PASS/FAIL per rule)")
    p.add_argument("role", choices=["notifier", "compositor", "subscriber"],
                   help="the role of the implementation under test")
    p.add_argument("target", metavar="sip:HOST:PORT",
                   help="notifier, compositor: its address; subscriber: where the kit listens")
    p.add_argument("--node", default="ast1.example.com",
                   help="node name in the bodies the kit sends (compositor: one of its pool)")
    p.add_argument("--resource", metavar="URI",
                   help="compositor: the Request-URI of PUBLISH (default sip:load-status@HOST:PORT)")
    p.add_argument("--local", metavar="HOST", help="the kit's own address (default 127.0.0.1)")
    p.add_argument("--wait", type=float, default=60.0, metavar="S",
                   help="subscriber: how long to wait for its first SUBSCRIBE (default 60)")
    p.set_defaults(run=_conform)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as err:
        print(f"sipstatus {args.command}: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"sipstatus {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
