"""The agent learns a real Asterisk 22's ConfBridge rooms and announces them
in the load-affinity package (spec/load-affinity.md), as a proxy reads them.

Each test starts its own Asterisk (tests/support/asterisk.py: extension
`room-NNNN` puts the caller in ConfBridge room NNNN, with the channel
variable TENANT=acme), the agent daemon and a subscriber to load-affinity
whose NOTIFYs go through the library's AffinityTable, as a proxy's would."""

import asyncio

import pytest

from sipstatus.affinity import MEDIA_TYPE, PACKAGE, affinity_key, decode
from sipstatus.affinity_table import AffinityTable
from tests.support.asterisk import AsteriskConfig, Calls
from tests.support.asterisk_live import LiveNode, settle
from tests.support.ports import free_port

# (a missing peer skips the whole tier: tests/conftest.py)
pytestmark = [pytest.mark.asterisk]

ROOMS = """exten => _room-.,1,Answer()
 same => n,Set(TENANT=acme)
 same => n,ConfBridge(${EXTEN:5})
 same => n,Hangup()
"""


def run(coro, timeout: float = 240.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Rooms:
    """A load-affinity subscription to the node's agent, read as a proxy reads it."""

    def __init__(self, node: LiveNode) -> None:
        self.node = node
        self.call_id = ""

    async def subscribe(self) -> "Rooms":
        watcher = self.node.watcher
        assert watcher is not None
        request = watcher.subscribe(event=PACKAGE, accept=MEDIA_TYPE)
        response = await watcher.response(request.call_id)
        assert response.status == 200, response.start_line()
        self.call_id = request.call_id
        return self

    def keys(self) -> frozenset[str]:
        table = AffinityTable()
        for received in self.node.watcher.notifies(self.call_id):
            if received.message.body:
                table.update(decode(received.message.body), 0.0)
        return table.keys_of("ast-live")

    async def until(self, keys: set[str], timeout: float = 30.0) -> None:
        try:
            await settle(lambda: self.keys() == keys, timeout, f"the announced rooms to be {sorted(keys)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; announced {sorted(self.keys())}\nagent log:\n"
                                 f"{self.node.agent.log()[-3000:]}") from None


def config(**kw) -> AsteriskConfig:
    return AsteriskConfig(dialplan=ROOMS, manager_general="channelvars = TENANT", **kw)


def test_rooms_created_by_real_calls_are_announced_and_a_room_whose_last_caller_leaves_is_withdrawn(tmp_path):
    async def main():
        async with LiveNode(tmp_path, config()) as node:
            rooms = await Rooms(node).subscribe()
            await rooms.until(set())
            long = await Calls(node.asterisk, "room-5001", 2, hold=30, tmp=node.tmp).start()
            short = await Calls(node.asterisk, "room-5002", 1, hold=4, tmp=node.tmp).start()
            node.calls += [long, short]
            await rooms.until({affinity_key("5001"), affinity_key("5002")})
            await short.finish()
            await rooms.until({affinity_key("5001")})

    run(main())


def test_an_asterisk_restart_resyncs_the_rooms(tmp_path):
    async def main():
        async with LiveNode(tmp_path, config()) as node:
            rooms = await Rooms(node).subscribe()
            calls = await Calls(node.asterisk, "room-6001", 1, hold=60, tmp=node.tmp).start()
            node.calls.append(calls)
            await rooms.until({affinity_key("6001")})
            await asyncio.to_thread(node.asterisk.kill)
            calls.kill()
            await asyncio.to_thread(node.asterisk.start)
            # Its rooms died with it: the agent lists none after its new Login.
            await rooms.until(set(), timeout=60.0)
            again = await Calls(node.asterisk, "room-6002", 1, hold=30, tmp=node.tmp).start()
            node.calls.append(again)
            await rooms.until({affinity_key("6002")})

    run(main())


def test_a_tenant_variable_prefixes_the_key_and_rooms_present_at_login_are_listed_with_it(tmp_path):
    async def main():
        node = LiveNode(tmp_path, config(), agent={"collectors.asterisk": {"room_key_variable": "TENANT"}})
        await asyncio.to_thread(node.asterisk.start)
        node.start_asterisk = False
        # A room that exists before the agent logs in: only ConfbridgeListRooms
        # and ConfbridgeList (for the caller's TENANT) can tell the agent.
        calls = await Calls(node.asterisk, "room-7001", 1, hold=60, tmp=node.tmp).start()
        node.calls.append(calls)
        await settle(lambda: "7001" in node.asterisk.cli("confbridge list"), 20.0, "room 7001 in Asterisk")
        async with node:
            rooms = await Rooms(node).subscribe()
            await rooms.until({affinity_key("acme/7001")})
            more = await Calls(node.asterisk, "room-7002", 1, hold=30, tmp=node.tmp).start()
            node.calls.append(more)
            await rooms.until({affinity_key("acme/7001"), affinity_key("acme/7002")})

    run(main())


def test_the_watcher_routes_a_room_to_the_node_hosting_it_and_forgets_it_when_it_ends(tmp_path):
    from sipstatus.proxy.agents import Agent
    from sipstatus.proxy.watcher import Watcher, WatcherConfig

    async def main():
        async with LiveNode(tmp_path, config()) as node:
            watcher = Watcher([Agent("ast-live", f"sip:127.0.0.1:{node.port}")],
                              config=WatcherConfig(affinity=True))
            await watcher.start()
            try:
                key = affinity_key("8001")
                assert watcher.lookup(key) is None  # no such room yet: choose by weight
                calls = await Calls(node.asterisk, "room-8001", 1, hold=5, tmp=node.tmp).start()
                node.calls.append(calls)
                assert await watcher.wait_for(lambda w: w.lookup(key) == "ast-live", 30.0), \
                    f"room 8001 not routed to ast-live; rooms {sorted(watcher.affinity.keys_of('ast-live'))}"
                await calls.finish()
                assert await watcher.wait_for(lambda w: w.lookup(key) is None, 30.0), "room 8001 still routed"
            finally:
                await watcher.close()

    run(main())


def test_rooms_published_to_a_compositor_route_the_room_to_its_node(tmp_path):
    from sipstatus.proxy.watcher import Watcher, WatcherConfig

    async def main():
        port = free_port()
        watcher = Watcher(config=WatcherConfig(listen=(f"udp:127.0.0.1:{port}",), compositor=True,
                                               auto_join=True, affinity=True))
        await watcher.start()
        try:
            target = f"sip:load-status@127.0.0.1:{port}"
            async with LiveNode(tmp_path, config(), agent={"publisher": {"targets": [target]}}) as node:
                key = affinity_key("9001")
                calls = await Calls(node.asterisk, "room-9001", 1, hold=5, tmp=node.tmp).start()
                node.calls.append(calls)
                assert await watcher.wait_for(lambda w: w.lookup(key) == "ast-live", 30.0), \
                    f"room 9001 not routed to ast-live; rooms {sorted(watcher.affinity.keys_of('ast-live'))}"
                await calls.finish()
                assert await watcher.wait_for(lambda w: w.lookup(key) is None, 30.0), "room 9001 still routed"
        finally:
            await watcher.close()

    run(main())
