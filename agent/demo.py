"""The one-agent demo, on any machine: `./dev demo --single` (`./dev demo`
runs the whole loop: demo/loop.py).

Starts a real `sipstatus-agent run` (default configuration, listening on a
free loopback port), subscribes to it with the library's subscriber the way
a proxy does, and prints every NOTIFY's status as it arrives. Half-way it
drains the node through the agent's control socket and undrains it again;
at the end it stops the agent with SIGTERM and prints the final NOTIFY.

Without Asterisk on this machine the agent says so: AMI is unknown and the
SIP probe is unanswered, so the node is reported `down` (a proxy sends it no
calls), with this host's real CPU, memory and network figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence

from sipstatus import codec
from sipstatus.net.service import SipService
from sipstatus.sip.endpoint import Endpoint
from sipstatus.sip.subscriber import (
    NotificationReceived,
    NotificationRejected,
    Subscribed,
    Subscriber,
    SubscriberConfig,
    SubscriberPool,
    SubscriptionEnded,
)
from sipstatus.status import LoadStatus

from .control import ControlError, request


def line(status: LoadStatus, state: str) -> str:
    cpu = "?" if status.cpu is None or status.cpu.usage is None else f"{status.cpu.usage * 100:.0f}%"
    mem = "?"
    if status.memory is not None and status.memory.available is not None and status.memory.total:
        mem = f"{(status.memory.total - status.memory.available) / 2**30:.1f}/{status.memory.total / 2**30:.1f} GiB"
    channels = "?" if status.asterisk is None or status.asterisk.channels is None else str(status.asterisk.channels)
    reason = f"  ({status.reason})" if status.reason else ""
    return (f"{time.strftime('%H:%M:%S')}  NOTIFY [{state}] seq {status.seq:<4} {status.state.value:<10} "
            f"capacity {status.capacity:.2f}  weight {status.weight:<3} cpu {cpu:>4}  memory {mem}  "
            f"channels {channels}{reason}")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def demo(seconds: float, out=sys.stdout) -> int:  # noqa: ANN001 - a text stream
    port = free_udp_port()
    with tempfile.TemporaryDirectory(prefix="sipstatus-demo-") as tmp:
        control = os.path.join(tmp, "control")
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "run", "--listen", f"udp:127.0.0.1:{port}", "--control", control,
            stderr=asyncio.subprocess.PIPE)
        print(f"started sipstatus-agent (pid {agent.pid}) listening on udp:127.0.0.1:{port}", file=out)
        print("subscribing to it as a proxy would; each line is one NOTIFY's load-status body", file=out)
        print("(no Asterisk here? then the agent reports the node down, with this host's real figures)", file=out)
        logs = asyncio.ensure_future(_relay(agent.stderr, out))
        done = asyncio.Event()
        finals: list[str] = []

        def on_event(event: object) -> None:
            if isinstance(event, Subscribed):
                print(f"{time.strftime('%H:%M:%S')}  subscribed for {event.expires} s", file=out)
            elif isinstance(event, NotificationReceived) and isinstance(event.value, LoadStatus):
                print(line(event.value, event.state), file=out)
                if event.state == "terminated":
                    finals.append(event.state)
                    done.set()
            elif isinstance(event, NotificationRejected):
                print(f"NOTIFY rejected: {event.reason}", file=out)
            elif isinstance(event, SubscriptionEnded):
                print(f"{time.strftime('%H:%M:%S')}  subscription ended: {event.reason}", file=out)
                done.set()

        pool = SubscriberPool()
        endpoint = Endpoint([pool])
        sip = SipService(endpoint, on_event=on_event)
        _, local_port = await sip.listen("UDP", "127.0.0.1", 0)
        config = SubscriberConfig(package="load-status", accept=codec.MEDIA_TYPE,
                                  local_uri="sip:demo-proxy@127.0.0.1",
                                  contact=f"sip:demo-proxy@127.0.0.1:{local_port}", decode=codec.decode)
        try:
            if not await _wait_for_control(control, agent, timeout=15.0):
                print("the agent did not start; its log is above", file=out)
                return 1
            subscriber = Subscriber(f"sip:load-status@127.0.0.1:{port}", config)
            sip.submit(pool, pool.add(subscriber, sip.now()))
            third = seconds / 3
            await asyncio.sleep(third)
            for command in ("drain", "undrain"):
                try:
                    request(control, command)
                    print(f"{time.strftime('%H:%M:%S')}  sipstatus-agent {command}", file=out)
                except ControlError as err:
                    print(f"{command} failed: {err}", file=out)
                await asyncio.sleep(third)
            print(f"{time.strftime('%H:%M:%S')}  stopping the agent (SIGTERM)", file=out)
            agent.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(done.wait(), 5.0)
            except TimeoutError:
                print("no final NOTIFY within 5 s", file=out)
            code = await asyncio.wait_for(agent.wait(), 10.0)
            print(f"agent exited with status {code}", file=out)
            return 0 if code == 0 and finals else 1
        finally:
            if agent.returncode is None:
                agent.kill()
                await agent.wait()
            logs.cancel()
            await sip.close()


async def _wait_for_control(path: str, agent: asyncio.subprocess.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and agent.returncode is None:
        try:
            request(path, "status")
            return True
        except ControlError:
            await asyncio.sleep(0.1)
    return False


async def _relay(stream: asyncio.StreamReader | None, out) -> None:  # noqa: ANN001
    if stream is None:
        return
    while line_ := await stream.readline():
        print("  agent: " + line_.decode(errors="replace").rstrip(), file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev demo --single", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="how long to watch (default 15)")
    args = parser.parse_args(argv)
    return asyncio.run(demo(args.seconds))


if __name__ == "__main__":
    sys.exit(main())
