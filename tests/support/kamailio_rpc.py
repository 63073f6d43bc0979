"""A real Kamailio 5.6 with jsonrpcs, htable and dispatcher, started per test.

Shared by the RPC adapter's tests (tests/interop/test_kamailio_rpc.py) and the
sidecar's (tests/interop/test_sidecar_kamailio.py); the `kamailio` fixture in
tests/conftest.py starts one with DISPATCHER_LIST.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipstatus.proxy.kamailio import JsonRpcClient, RpcError
from tests.support.ports import free_port

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
listen=udp:127.0.0.1:{port}
run_dir="{run}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "kex.so"
loadmodule "htable.so"
loadmodule "dispatcher.so"
loadmodule "jsonrpcs.so"
modparam("htable", "htable", "sipstatus=>size=8;")
modparam("dispatcher", "list_file", "{run}/dispatcher.list")
modparam("dispatcher", "reload_delta", 1)
modparam("jsonrpcs", "transport", 6)
modparam("jsonrpcs", "dgram_socket", "{run}/rpc.sock")
modparam("jsonrpcs", "fifo_name", "{run}/rpc.fifo")
modparam("jsonrpcs", "fifo_reply_dir", "{run}/")
modparam("jsonrpcs", "pretty_format", 0)
request_route {{ sl_send_reply("404", "Not here"); }}
"""

DISPATCHER_LIST = """# pool 1: three Asterisk nodes; duid names the sipstatus node
1 sip:127.0.0.1:5081 0 0 duid=ast1;rweight=50
1 sip:127.0.0.1:5082 0 0 duid=ast2;rweight=50
1 sip:127.0.0.1:5083 0 0 duid=ast3
"""


@contextlib.contextmanager
def running_kamailio(run: Path, dispatcher_list: str = DISPATCHER_LIST,
                     memory_mb: int = 64) -> Iterator[Path]:
    """Kamailio running in `run` (its config, list file, RPC socket and log
    are there) until the block ends; it answers `core.version` on entry."""
    if not shutil.which("kamailio") and not os.path.exists(KAMAILIO):
        pytest.fail("kamailio is not installed: ./dev test installs it from Debian")
    (run / "dispatcher.list").write_text(dispatcher_list)
    cfg = run / "kamailio.cfg"
    cfg.write_text(CONFIG.format(port=free_port(), run=run))
    log = open(run / "kamailio.log", "w")
    proc = subprocess.Popen([KAMAILIO, "-DD", "-E", "-w", str(run), "-m", str(memory_mb), "-f", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rpc = JsonRpcClient(f"unix:{run}/rpc.sock", timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                rpc.call("core.version")
                break
            except RpcError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"kamailio did not answer RPC: {(run / 'kamailio.log').read_text()[-2000:]}")
                time.sleep(0.05)
        yield run
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
