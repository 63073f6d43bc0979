"""Run the real Kamailio (Debian's) for the example-configuration tests.

`Kamailio` starts `kamailio -DD -E` with one of the example configurations
in packaging/examples/kamailio/, on 127.0.0.1 and a free port given with
`-A` defines (so the file that runs is exactly the example), waits until it
answers an OPTIONS, and stops its whole process group afterwards.
`start_example` does that with a dispatcher list of pool nodes (SIPp UASs,
tests/support/sipp.py, or bare names and ports); `needs_kamailio` gives a
test module its marks.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil
import pytest

from tests.support import HOST, ROOT
from tests.support.ports import free_port
from tests.support.processes import stop_group
from tests.support.sip import SipClient
from tests.support.sipp import place_calls, split_within

EXAMPLES = ROOT / "packaging" / "examples" / "kamailio"
#: Seconds between dispatcher's OPTIONS probes in the tests' Kamailios.
PING_INTERVAL = 2


def have_tools(*modules: str) -> bool:
    """kamailio, kamcmd, sipp and ss are installed, and these Kamailio modules."""
    if not all(shutil.which(tool) for tool in ("kamailio", "sipp", "kamcmd", "ss")):
        return False
    return all(any(Path("/usr/lib").glob(f"*/kamailio/modules/{m}.so")) for m in modules)


#: The Debian package of each Kamailio module the examples load beyond the core.
MODULE_PACKAGES = {"jansson": "kamailio-extra-modules", "app_python3": "kamailio-python3-modules"}


def needs_kamailio(*modules: str) -> list[pytest.MarkDecorator]:
    """The marks of a test module that runs a real Kamailio loading `modules`:
    `interop`, and a skip naming the Debian packages when one is missing."""
    packages = ["kamailio", *(MODULE_PACKAGES[m] for m in modules), "sip-tester", "iproute2"]
    return [pytest.mark.interop,
            pytest.mark.skipif(not have_tools(*modules), reason=f"needs Debian packages {', '.join(packages)}")]


# -- Kamailio ----------------------------------------------------------------


class Kamailio:
    """A Kamailio started from an example configuration with -A defines."""

    def __init__(
        self,
        config: Path,
        workdir: Path,
        defines: Mapping[str, str | int | None] = {},
        env: Mapping[str, str] = {},
    ) -> None:
        self.config = config
        self.env = {**os.environ, **env}
        self.workdir = workdir
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "kamailio.log"
        self.ctl = f"unix:{workdir}/kamailio_ctl"
        self.defines: dict[str, str | int | None] = {
            "LISTEN": f"udp:{HOST}:{self.port}",
            "RUN_DIR": f'"{workdir}"',
            "CHILDREN": 4,
            # Probing on, as in production: every node must answer OPTIONS
            # (a pool of `Destinationless` members turns it off).
            "DS_PING_INTERVAL": PING_INTERVAL,
            # "{port}" in a value stands for the SIP port chosen here.
            **{name: value.replace("{port}", str(self.port)) if isinstance(value, str) else value
               for name, value in defines.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = ["kamailio", "-DD", "-E", "-w", str(self.workdir), "-m", "256", "-f", str(self.config)]
        for name, value in self.defines.items():
            cmd += ["-A", name if value is None else f"{name}={value}"]
        return cmd

    def start(self, timeout: float = 10.0) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, env=self.env, start_new_session=True,
            )
        client = SipClient(self.port)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"kamailio exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.options().status == 200:
                        return
                except (TimeoutError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kamailio did not answer OPTIONS within {timeout} s:\n{self.log_tail()}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def rpc(self, *args: str) -> str:
        """A kamcmd command against this Kamailio's ctl socket."""
        done = subprocess.run(["kamcmd", "-s", self.ctl, *args], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"kamcmd {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def htable(self, table: str) -> dict[str, str]:
        """The items of an htable (`kamcmd htable.dump`), name -> value as text."""
        return parse_htable_dump(self.rpc("htable.dump", table))

    def processes(self) -> list[psutil.Process]:
        """Kamailio's main process and every process it forked."""
        assert self.proc is not None
        main = psutil.Process(self.proc.pid)
        return [main, *main.children(recursive=True)]

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by all of Kamailio's processes."""
        total = 0.0
        for process in self.processes():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def alive(self) -> bool:
        """Running, and answering an OPTIONS."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        client = SipClient(self.port)
        try:
            return client.options(2.0).status == 200
        except (TimeoutError, OSError):
            return False
        finally:
            client.close()


def parse_htable_dump(text: str) -> dict[str, str]:
    """name -> value from kamcmd's rendering of `htable.dump` (each item is a
    block with `name: ...` and `value: ...` lines)."""
    items: dict[str, str] = {}
    name: str | None = None
    for line in text.splitlines():
        key, sep, value = line.strip().partition(": ")
        if not sep:
            continue
        if key == "name":
            name = value
        elif key == "value" and name is not None:
            items[name] = value
            name = None
    return items


class PoolNode(Protocol):
    """A destination of the dispatcher list: a SippNode, or any name and port."""

    name: str
    port: int
    rweight: int


@dataclass
class Destinationless:
    """A pool member with nothing behind its port (tests that route no calls)."""

    name: str
    port: int
    rweight: int = 1


def start_example(
    config: Path,
    workdir: Path,
    nodes: Iterable[PoolNode],
    defines: Mapping[str, str | int | None] = {},
    env: Mapping[str, str] = {},
    attrs: Mapping[str, str] = {},
) -> Kamailio:
    """A started Kamailio running `config` in a new folder under `workdir`,
    with a dispatcher list of `nodes` (`attrs`: more attributes by node)."""
    run = workdir / f"kam-{secrets.token_hex(3)}"
    run.mkdir()
    ds = dispatcher_list(run / "dispatcher.list", nodes, attrs=attrs)
    kam = Kamailio(config, run, {"DS_LIST": f'"{ds}"', **defines}, env)
    try:
        kam.start()
    except BaseException:
        kam.stop()
        raise
    return kam


#: Debian's own configuration, from the kamailio package.
STOCK_CONFIG = Path("/etc/kamailio/kamailio.cfg")
#: What an operator adds to it to use packaging/examples/kamailio/native/
#: sipstatus.cfg (the snippet's "Use" section), as (anchor, text, where):
#: the text goes before or after the first line matching the anchor, which
#: in request_route is searched after `request_route {`.
STOCK_EDITS = (
    (r'^modparam\(', 'include_file "{snippet}"\n', "before"),
    (r'^\s*route\(REQINIT\);', '\troute(SIPSTATUS_REPORTS);\n', "after"),
    (r'^\s*route\(SIPOUT\);', '\tif (is_method("INVITE")) {\n\t\troute(SIPSTATUS_DISPATCH);\n'
                               '\t\troute(RELAY);\n\t}\n', "before"),
)


def stock_config(folder: Path, stock: Path = STOCK_CONFIG) -> Path:
    """Debian's stock kamailio.cfg with the native snippet dropped in (three
    edits, STOCK_EDITS), written to `folder`, with the kamailio-local.cfg the
    stock file imports: `listen=LISTEN` and `run_dir=RUN_DIR` (the -A
    defines `Kamailio` passes). Raises when a line to edit is not there."""
    import re

    folder.mkdir(parents=True, exist_ok=True)
    lines = stock.read_text().splitlines(keepends=True)
    body_from = next(i for i, line in enumerate(lines) if line.startswith("request_route"))
    for pattern, text, where in STOCK_EDITS:
        start = body_from if "route(" in pattern else 0
        at = next((i for i in range(start, len(lines)) if re.match(pattern, lines[i])), None)
        if at is None:
            raise ValueError(f"{stock}: no line matching {pattern!r} to add {text.strip()!r} to")
        lines.insert(at if where == "before" else at + 1, text.replace("{snippet}", str(EXAMPLES / "native" / "sipstatus.cfg")))
        if at < body_from:
            body_from += 1
    path = folder / "kamailio.cfg"
    path.write_text("".join(lines))
    (folder / "kamailio-local.cfg").write_text("listen=LISTEN\nrun_dir=RUN_DIR\n")
    return path


def dispatcher_list(path: Path, nodes: Iterable[PoolNode], set_id: int = 1, attrs: Mapping[str, str] = {}) -> Path:
    """A dispatcher list with one destination per node (duid = its name),
    with `attrs[node]` ("name=value;...") added to its attributes."""
    lines = [f"{set_id} sip:{HOST}:{n.port} 0 0 duid={n.name};rweight={n.rweight}"
             + (f";{attrs[n.name]}" if n.name in attrs else "") for n in nodes]
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_split(kam: Kamailio, weights: Mapping[str, int], calls: int = 600) -> None:
    """`calls` calls through `kam` split by `weights` (split_within), or an
    assertion error quoting the split and Kamailio's log."""
    counts = place_calls(kam.port, calls, kam.workdir)
    print(f"weights {weights}: {calls} calls split {dict(sorted(counts.items()))}")
    problems = split_within(counts, weights, calls)
    assert not problems, f"split {dict(counts)} for weights {weights}: {problems}\n{kam.log_tail()}"
