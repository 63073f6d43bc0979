"""Conference rooms end to end through the real Kamailio (issue 15): every
caller of a room reaches the node hosting it.

The pool, behind packaging/examples/kamailio/sidecar/kamailio.cfg (Debian's
Kamailio) and a real `sipstatus sidecar` with `[affinity] enabled`:

- `ast-live`: a real Asterisk 22 (tests/support/asterisk.py; extension
  `room` puts the caller in the ConfBridge named by its X-Exec-App-Data
  header) with the real agent reading its AMI;
- `fake1`, `fake2`: SIPp UASes (tests/sipp/affinity/room-node.xml) whose
  agents read a fake AMI that says what ConfBridge would about their calls
  (tests/support/fake_ami_rooms.py, built from a real Asterisk recording);
- `refuser`: a SIPp UAS answering every INVITE 503 (tests/sipp/kamailio/
  refuse.xml), whose fake Asterisk hosts the room `moving`.

The fakes' call limit (20) is a fifth of what the sidecar assumes for the
real Asterisk (no maxcalls: 100), so that most rooms start on the real one.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import pytest

from sipstatus.affinity import affinity_key
from sipstatus.proxy.kamailio import JsonRpcClient, RpcError
from sipstatus.proxy.opensips import MiClient, MiError
from tests.support import HOST, ROOT, SIPP_SCENARIOS
from tests.support.agents import Agent, Sidecar
from tests.support.asterisk import Asterisk, AsteriskConfig
from tests.support.asterisk_live import PREFIX
from tests.support.fake_ami import FakeAmi, Scenario
from tests.support.fake_ami_rooms import RoomsAmi
from tests.support.kamailio import EXAMPLES, Destinationless, needs_kamailio, start_example
from tests.support.opensips import EXAMPLES as OPENSIPS_EXAMPLES
from tests.support.opensips import (
    OpenSips,
    OpenSipsSidecar,
    PoolEntry,
    add_mi_http,
    customize,
    dbtext_tables,
    opensips_build,
)
from tests.support.ports import free_port
from tests.support.sipp import SippNode

pytestmark = [
    *needs_kamailio("jansson"),
    pytest.mark.asterisk,
    # (a missing Asterisk or OpenSIPS skips the tier: tests/conftest.py)
]

CONFIG = EXAMPLES / "sidecar" / "kamailio.cfg"
KEMI_CONFIG = EXAMPLES / "kemi" / "kamailio.cfg"
NATIVE_CONFIG = EXAMPLES / "native" / "kamailio.cfg"
KEMI_SCRIPT = EXAMPLES / "kemi" / "sipstatus_kemi.py"
SIPP = SIPP_SCENARIOS
ROOM_DIALPLAN = """exten => room,1,Answer()
 same => n,ConfBridge(${PJSIP_HEADER(read,X-Exec-App-Data)})
 same => n,Hangup()
"""
ROOMS = [f"c{i}" for i in range(10)]


class Pool:
    """Everything above, started; `close()` stops it all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.amis: list[FakeAmi] = []
        self.rooms: dict[str, RoomsAmi] = {}
        self.sipp: dict[str, SippNode] = {}
        self.agents: dict[str, Agent] = {}
        self.asterisk: Asterisk | None = None
        self.kam = None
        self.opensips: OpenSips | None = None
        self.sidecar: Sidecar | OpenSipsSidecar | None = None

    async def start(self, *, real_asterisk: bool = True, example: str = "sidecar") -> Pool:
        """`example` "kemi" or "native": Kamailio runs that example instead;
        the agents PUBLISH their status to it, and the sidecar pushes rooms only."""
        kemi = example in ("kemi", "native")
        members: list = []
        if real_asterisk:
            assert PREFIX is not None
            asterisk = self.asterisk = Asterisk(PREFIX, self.workdir / "asterisk",
                                                AsteriskConfig(dialplan=ROOM_DIALPLAN))
            asterisk.agent_secret = "secret"  # what tests.support.agents.Agent logs in with
            asterisk._write_config()
            await asyncio.to_thread(asterisk.start)
            members.append(Destinationless("ast-live", asterisk.sip_port))
        for name in ("fake1", "fake2", "refuser"):
            ami = await FakeAmi(Scenario(secret="secret")).__aenter__()
            self.amis.append(ami)
            self.rooms[name] = RoomsAmi(ami)
            events = self.workdir / f"rooms-{name}.txt"
            scenario = SIPP / ("kamailio/refuse.xml" if name == "refuser" else "affinity/room-node.xml")
            node = SippNode(name, self.workdir, scenario=scenario, log=True, extra=["-key", "events", str(events)])
            await asyncio.to_thread(node.start)
            self.sipp[name] = node
            members.append(node)
            self.tasks.append(asyncio.get_running_loop().create_task(self.rooms[name].follow(events, self.stop)))
        # The refusing node's Asterisk hosts a room before anything starts.
        self.rooms["refuser"].rooms["moving"] = ["1-0@127.0.0.1"]
        if example == "kemi":
            self.kam = await asyncio.to_thread(
                start_example, KEMI_CONFIG, self.workdir, members,
                {"KEMI_SCRIPT": f'"{KEMI_SCRIPT}"', "DS_PING_INTERVAL": 0}, {"SIPSTATUS_PATH": str(ROOT)})
        elif example == "native":
            self.kam = await asyncio.to_thread(start_example, NATIVE_CONFIG, self.workdir, members,
                                               {"DS_PING_INTERVAL": 0})
        elif example == "opensips":
            await asyncio.to_thread(self._start_opensips, members)
        else:
            self.kam = await asyncio.to_thread(start_example, CONFIG, self.workdir, members, {"DS_PING_INTERVAL": 0})
        publish = [f"sip:load-status@{HOST}:{self.proxy_port}"] if kemi else []
        if self.asterisk is not None:
            self.agents["ast-live"] = Agent("ast-live", self.workdir, ami_port=self.asterisk.ami_port,
                                            probe=f"sip:{HOST}:{self.asterisk.sip_port}", publish=publish)
        for i, name in enumerate(self.sipp):
            self.agents[name] = Agent(name, self.workdir, ami_port=self.amis[i].port, probe=self.sipp[name].uri,
                                      max_calls=20, publish=publish)
        for agent in self.agents.values():
            await asyncio.to_thread(agent.start)
        uris = {n: a.uri for n, a in self.agents.items()}
        if self.opensips is not None:
            sidecar = self.sidecar = OpenSipsSidecar(self.opensips.mi_url, uris, self.workdir)
        else:
            sidecar = self.sidecar = Sidecar(self.kam, uris, self.workdir, htable="" if kemi else "sipstatus")
        sidecar.config_path.write_text(sidecar.config_path.read_text() + "[affinity]\nenabled = true\n")
        await asyncio.to_thread(sidecar.start)
        return self

    def _start_opensips(self, members: list) -> None:
        prefix, why = opensips_build()
        assert prefix is not None, why
        run = self.workdir / "opensips"
        run.mkdir()
        pool = [PoolEntry(m.name, i + 1, m.port) for i, m in enumerate(members)]
        port, mi_port = free_port(), free_port()
        text = customize((OPENSIPS_EXAMPLES / "compositor" / "opensips.cfg").read_text(), port=port,
                         dbtext=run / "dbtext", pool=pool, modules=prefix / "lib64" / "opensips" / "modules")
        dbtext_tables(run / "dbtext", pool)
        self.opensips = OpenSips(prefix, run, add_mi_http(text, mi_port), port, mi_port=mi_port)
        self.opensips.start()

    @property
    def proxy_port(self) -> int:
        if self.opensips is not None:
            return self.opensips.port
        assert self.kam is not None
        return self.kam.port

    def cached(self, key: str) -> str | None:
        """OpenSIPS's cachedb_local value of `key` (MI cache_fetch), None when absent."""
        assert self.opensips is not None
        try:
            return MiClient(self.opensips.mi_url).call("cache_fetch", {"system": "local", "attr": key})["value"]
        except MiError:
            return None

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            await task
        for thing in (self.sidecar, *self.agents.values(), *self.sipp.values()):
            if thing is not None:
                await asyncio.to_thread(thing.stop)
        if self.kam is not None:
            await asyncio.to_thread(self.kam.stop)
        if self.opensips is not None:
            await asyncio.to_thread(self.opensips.stop)
        for ami in self.amis:
            await ami.close()
        if self.asterisk is not None:
            await asyncio.to_thread(self.asterisk.kill)

    # -- what Kamailio holds --

    def rpc(self) -> JsonRpcClient:
        assert self.kam is not None
        return JsonRpcClient(f"unix:{self.kam.workdir}/kamailio_rpc.sock")

    def htable(self, table: str, key: str) -> str | int | None:
        try:
            return self.rpc().call("htable.get", table, key)["item"]["value"]
        except RpcError:
            return None

    async def until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(predicate):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.logs()}")
            await asyncio.sleep(0.2)

    def logs(self) -> str:
        parts = [f"--- sidecar\n{self.sidecar.log_tail(40) if self.sidecar else ''}"]
        if self.kam is not None:
            parts.append(f"--- kamailio\n{self.kam.log_tail()}")
        if self.opensips is not None:
            parts.append(f"--- opensips\n{self.opensips.log_tail()}")
        return "\n".join(parts)

    def node_of_port(self) -> dict[int, str]:
        ports = {n.port: name for name, n in self.sipp.items()}
        if self.asterisk is not None:
            ports[self.asterisk.sip_port] = "ast-live"
        return ports


async def call_rooms(pool: Pool, rooms: list[str], *, rate: float, hold_ms: int) -> tuple[dict[str, list[str]], int]:
    """One SIPp caller per entry of `rooms`, in that order; returns room ->
    the nodes that answered its callers, and how many calls were refused."""
    tag = f"{free_port()}"
    inf = pool.workdir / f"rooms-{tag}.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(f"{room};\n" for room in rooms))
    log = pool.workdir / f"caller-{tag}.log"
    cmd = ["sipp", "-sf", str(SIPP / "affinity" / "caller.xml"), "-inf", str(inf),
           "-i", HOST, "-p", str(free_port()), "-cp", str(free_port()), "-ci", HOST,
           "-mp", str(free_port(4)), "-m", str(len(rooms)), "-r", f"{rate:g}", "-l", str(len(rooms)),
           "-d", str(hold_ms), "-timeout", "120s", "-recv_timeout", "20s",
           "-trace_logs", "-log_file", str(log), "-trace_err", "-error_file", str(log.with_suffix(".err")),
           "-nostdin", f"{HOST}:{pool.proxy_port}"]
    process = await asyncio.create_subprocess_exec(*cmd, cwd=pool.workdir, stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.wait_for(process.wait(), 150)
    ports = pool.node_of_port()
    placed: dict[str, list[str]] = defaultdict(list)
    refused = 0
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "refused":
            refused += 1
        elif len(parts) == 2 and parts[1].isdigit():
            placed[parts[0]].append(ports.get(int(parts[1]), f"port {parts[1]}"))
    return dict(placed), refused


def test_fifty_callers_in_ten_rooms_each_room_on_one_node_ended_rooms_released_refusals_move_rooms(tmp_path):
    async def main() -> None:
        pool = Pool(tmp_path)
        try:
            await pool.start()
            await pool.until(lambda: all((pool.htable("sipstatus", n) or 0) > 0 for n in pool.agents), 30.0,
                             "every node's weight in Kamailio")
            await pool.until(lambda: pool.htable("affinity", affinity_key("moving")) == "refuser", 30.0,
                             "the refusing node's room in Kamailio's affinity table")

            # 50 callers, 5 per room, the rooms interleaved: a room's callers
            # arrive 2 s apart, each stays 15 s.
            callers = [ROOMS[i % 10] for i in range(50)]
            confbridge: dict[str, int] = {}

            async def watch_asterisk() -> None:
                await asyncio.sleep(12.0)  # every caller placed, none gone yet
                assert pool.asterisk is not None
                text = await pool.asterisk.acli("confbridge list")
                for line in text.splitlines():
                    fields = line.split()
                    if fields and fields[0] in ROOMS and len(fields) > 1 and fields[1].isdigit():
                        confbridge[fields[0]] = int(fields[1])

            placed, refused = (await asyncio.gather(call_rooms(pool, callers, rate=5, hold_ms=15000),
                                                    watch_asterisk()))[0]
            print(f"\n[affinity] rooms: {placed}\n[affinity] Asterisk's confbridge list: {confbridge}")
            assert refused == 0, f"{refused} callers found no node\n{pool.logs()}"
            assert sum(len(nodes) for nodes in placed.values()) == 50, placed
            split = {room: sorted(set(nodes)) for room, nodes in placed.items() if len(set(nodes)) != 1}
            assert not split, f"rooms split over nodes: {split}\n{pool.logs()}"
            on_asterisk = {room for room, nodes in placed.items() if nodes[0] == "ast-live"}
            assert on_asterisk, f"no room on the real Asterisk: {placed}"
            # The real ConfBridge held each of its rooms' callers together.
            assert confbridge == {room: 5 for room in on_asterisk}, (confbridge, placed)
            assert "refuser" not in {nodes[0] for nodes in placed.values()}

            # Every room ended with its last caller: none attracts calls any more.
            await pool.until(lambda: all(pool.htable("affinity", affinity_key(r)) is None for r in ROOMS), 30.0,
                             "the ended rooms to leave Kamailio's affinity table")

            # The refusing node hosts `moving`: its first caller is refused
            # there and retried elsewhere, and the room follows the retry.
            refused_before = len(pool.sipp["refuser"].invite_times())
            moved, refused = await call_rooms(pool, ["moving"] * 5, rate=1, hold_ms=8000)
            print(f"[affinity] room hosted by the refusing node: {moved}, "
                  f"INVITEs it refused: {len(pool.sipp['refuser'].invite_times()) - refused_before}")
            assert refused == 0 and len(moved["moving"]) == 5, (moved, refused)
            assert len(set(moved["moving"])) == 1 and moved["moving"][0] != "refuser", moved
            assert len(pool.sipp["refuser"].invite_times()) > refused_before
        finally:
            await pool.close()

    asyncio.run(asyncio.wait_for(main(), 420))


@pytest.mark.parametrize("example", ["kemi", "native"])
def test_kemi_and_native_examples_keep_each_rooms_callers_on_one_node_and_move_a_refused_room(tmp_path, example):
    # The KEMI and native examples (packaging/examples/kamailio/kemi/,
    # native/) learn the nodes' loads from their PUBLISHes themselves; the
    # sidecar pushes only the rooms.
    async def main() -> None:
        pool = Pool(tmp_path)
        try:
            await pool.start(real_asterisk=False, example=example)
            await pool.until(lambda: all(pool.htable("ns", n) is not None for n in pool.agents), 30.0,
                             f"every node's report in the {example} example's htable")
            await pool.until(lambda: pool.htable("affinity", affinity_key("moving")) == "refuser", 30.0,
                             "the refusing node's room in Kamailio's affinity table")
            rooms = [f"k{i}" for i in range(4)]
            placed, refused = await call_rooms(pool, [rooms[i % 4] for i in range(20)], rate=4, hold_ms=10000)
            print(f"\n[affinity, {example}] rooms: {placed}")
            assert refused == 0 and sum(len(n) for n in placed.values()) == 20, (placed, refused)
            split = {room: sorted(set(nodes)) for room, nodes in placed.items() if len(set(nodes)) != 1}
            assert not split, f"rooms split over nodes: {split}\n{pool.logs()}"
            moved, refused = await call_rooms(pool, ["moving"] * 3, rate=1, hold_ms=6000)
            print(f"[affinity, {example}] room hosted by the refusing node: {moved}")
            assert refused == 0 and len(set(moved["moving"])) == 1 and moved["moving"][0] != "refuser", moved
        finally:
            await pool.close()

    asyncio.run(asyncio.wait_for(main(), 300))


@pytest.mark.opensips
def test_opensips_fifty_callers_in_ten_rooms_each_room_on_one_node_and_a_refused_room_moves(tmp_path):
    # packaging/examples/opensips/compositor/opensips.cfg (the sidecar way:
    # plus the README's mi_http lines; `sipstatus sidecar --opensips-mi`
    # sizes load_balancer and, with [affinity], stores the rooms in
    # cachedb_local), the real Asterisk and the SIPp nodes as above.
    async def main() -> None:
        pool = Pool(tmp_path)
        try:
            await pool.start(example="opensips")
            await pool.until(lambda: pool.cached("affinity_" + affinity_key("moving")) == "refuser", 30.0,
                             "the refusing node's room in OpenSIPS's cache")
            callers = [ROOMS[i % 10] for i in range(50)]
            placed, refused = await call_rooms(pool, callers, rate=5, hold_ms=15000)
            print(f"\n[affinity, opensips] rooms: {placed}")
            assert refused == 0 and sum(len(n) for n in placed.values()) == 50, (placed, refused, pool.logs())
            split = {room: sorted(set(nodes)) for room, nodes in placed.items() if len(set(nodes)) != 1}
            assert not split, f"rooms split over nodes: {split}\n{pool.logs()}"
            assert "refuser" not in {nodes[0] for nodes in placed.values()}
            await pool.until(lambda: all(pool.cached("affinity_" + affinity_key(r)) is None for r in ROOMS), 30.0,
                             "the ended rooms to leave OpenSIPS's cache")
            moved, refused = await call_rooms(pool, ["moving"] * 5, rate=1, hold_ms=8000)
            print(f"[affinity, opensips] room hosted by the refusing node: {moved}")
            assert refused == 0 and len(set(moved["moving"])) == 1 and moved["moving"][0] != "refuser", moved
            assert pool.opensips is not None and not pool.opensips.problems(), pool.opensips.problems()
        finally:
            await pool.close()

    asyncio.run(asyncio.wait_for(main(), 420))
