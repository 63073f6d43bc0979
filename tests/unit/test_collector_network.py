"""The network collector: rates from netlink link counters, over the window."""

import asyncio
import socket

import pytest

from agent.collectors.network import IFF_LOOPBACK, IFF_UP, LinkCounters, NetworkCollector, rates
from agent.config import NetworkConfig

KEYS = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped")


def link(name, up=True, loopback=False, **counters):
    return LinkCounters(name, up, loopback, {k: counters.get(k, 0) for k in KEYS})


def test_rates_are_per_second_and_bits_not_octets():
    before = {"eth0": link("eth0", rx_packets=100, tx_packets=50, rx_bytes=10_000, tx_bytes=5_000, rx_errors=1, tx_dropped=2)}
    after = {"eth0": link("eth0", rx_packets=300, tx_packets=150, rx_bytes=30_000, tx_bytes=15_000, rx_errors=3, tx_errors=1, tx_dropped=6)}
    n = rates(before, after, ["eth0"], 2.0)
    assert (n.rx_pps, n.tx_pps) == (100.0, 50.0)
    assert (n.rx_bps, n.tx_bps) == (80_000.0, 40_000.0)  # 10 000 octets/s = 80 000 bit/s
    assert (n.errors, n.dropped) == (1.5, 2.0)


def test_rates_sum_the_selected_interfaces():
    before = {"a": link("a", rx_packets=0), "b": link("b", rx_packets=0)}
    after = {"a": link("a", rx_packets=10), "b": link("b", rx_packets=30)}
    assert rates(before, after, ["a", "b"], 1.0).rx_pps == 40.0


def test_a_counter_going_backwards_makes_that_rate_unknown():
    before = {"a": link("a", rx_packets=1000, tx_packets=10)}
    after = {"a": link("a", rx_packets=5, tx_packets=20)}  # interface re-created
    n = rates(before, after, ["a"], 1.0)
    assert n.rx_pps is None and n.tx_pps == 10.0


class FakeIpr:
    def __init__(self, dumps):
        self.dumps = list(dumps)
        self.closed = False

    def get_links(self):
        return self.dumps.pop(0)

    def close(self):
        self.closed = True


def msg(name, flags, **counters):
    attrs = {"IFLA_IFNAME": name, "IFLA_STATS64": {k: counters.get(k, 0) for k in KEYS}}
    return _Msg(attrs, flags)


class _Msg(dict):
    """A pyroute2 ifinfmsg stand-in: msg["flags"] and msg.get_attr(name)."""

    def __init__(self, attrs, flags):
        super().__init__(flags=flags)
        self.attrs = attrs

    def get_attr(self, name):
        return self.attrs.get(name)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_default_selection_is_up_interfaces_without_loopback():
    first = [msg("lo", IFF_UP | IFF_LOOPBACK, rx_packets=0), msg("eth0", IFF_UP, rx_packets=0), msg("eth1", 0, rx_packets=0)]
    second = [msg("lo", IFF_UP | IFF_LOOPBACK, rx_packets=1000), msg("eth0", IFF_UP, rx_packets=10), msg("eth1", 0, rx_packets=500)]
    ipr = FakeIpr([first, second])
    collector = NetworkCollector(NetworkConfig(), ipr_factory=lambda: ipr)
    run(collector.start())
    assert collector.collect(0.0).network.rx_pps is None  # first reading: no window yet
    assert collector.collect(1.0).network.rx_pps == 10.0
    run(collector.stop())
    assert ipr.closed


def test_a_configured_interface_that_is_missing_is_an_error_naming_it():
    ipr = FakeIpr([[msg("eth0", IFF_UP)]])
    collector = NetworkCollector(NetworkConfig(interfaces=("eth0", "bond7")), ipr_factory=lambda: ipr)
    reading = collector.collect(0.0)
    assert reading.network is None
    assert reading.error == "network: interface bond7 not found (collectors.network.interfaces)"


def test_real_netlink_counters_see_loopback_traffic():
    async def main():
        collector = NetworkCollector(NetworkConfig(interfaces=("lo",)))
        await collector.start()
        collector.collect(0.0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            rx.bind(("127.0.0.1", 0))
            for _ in range(200):
                tx.sendto(b"x" * 1000, rx.getsockname())
        reading = collector.collect(2.0)
        await collector.stop()
        return reading

    n = run(main()).network
    # 200 datagrams of 1000 octets + headers over a 2 s window, on lo (rx == tx)
    assert n.rx_pps >= 100 and n.tx_pps >= 100
    assert n.rx_bps >= 200 * 1000 * 8 / 2.0
    assert n.errors is not None and n.dropped is not None


@pytest.mark.netns
def test_default_selection_over_real_netlink_in_network_namespaces():
    """Two namespaces joined by a veth pair: the collector in the first one
    sums its veth (up) and leaves out its loopback, and counts bits."""
    import os
    import secrets

    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    from pyroute2 import NetNS, netns

    ns1, ns2 = f"sipstatus-a-{secrets.token_hex(3)}", f"sipstatus-b-{secrets.token_hex(3)}"
    netns.create(ns1)
    netns.create(ns2)
    try:
        with NetNS(ns1) as a:
            a.link("add", ifname="va", kind="veth", peer="vb")
            vb = a.link_lookup(ifname="vb")[0]
            a.link("set", index=vb, net_ns_fd=ns2)
            va = a.link_lookup(ifname="va")[0]
            a.addr("add", index=va, address="10.213.0.1", prefixlen=24)
            a.link("set", index=va, state="up")
            a.link("set", index=a.link_lookup(ifname="lo")[0], state="up")
        with NetNS(ns2) as b:
            vb = b.link_lookup(ifname="vb")[0]
            b.addr("add", index=vb, address="10.213.0.2", prefixlen=24)
            b.link("set", index=vb, state="up")

        def socket_in(name):
            netns.pushns(name)
            try:
                return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            finally:
                netns.popns()

        async def main():
            collector = NetworkCollector(NetworkConfig(), ipr_factory=lambda: NetNS(ns1))
            await collector.start()
            assert sorted(collector._select(collector.links())) == ["va"]
            collector.collect(0.0)
            with socket_in(ns2) as rx, socket_in(ns1) as tx, socket_in(ns1) as local_rx:
                rx.bind(("10.213.0.2", 0))
                local_rx.bind(("127.0.0.1", 0))
                for _ in range(100):
                    tx.sendto(b"y" * 500, rx.getsockname())
                    tx.sendto(b"z" * 500, local_rx.getsockname())  # loopback: not counted
            reading = collector.collect(1.0)
            await collector.stop()
            return reading

        n = run(main()).network
        # 100 datagrams of 500 + 28 (UDP/IPv4) + 14 (Ethernet) octets out of va in 1 s
        # (plus a few ARP/IPv6 packets of the link coming up)
        assert 100 <= n.tx_pps <= 120
        assert n.tx_bps >= 100 * (500 + 28 + 14) * 8
        assert n.errors == 0.0
    finally:
        netns.remove(ns1)
        netns.remove(ns2)
