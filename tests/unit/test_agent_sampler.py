"""The Sampler: merging readings, containing failures (logged once), keeping
the body valid, and the whole agent against the fake AMI server."""

import asyncio
import json
import logging

import jsonschema
import pytest

from agent.collectors.interface import AsteriskLink, Reading
from agent.collectors.registry import build_collectors
from agent.config import Config, from_dict
from agent.sampler import Sampler
from sipstatus import codec
from sipstatus.status import Asterisk, Cpu, Probe, Quality, State
from tests.support import ROOT
from tests.support.fake_ami import FakeAmi, Scenario, eventually

SCHEMA = json.loads((ROOT / "spec" / "load-status.schema.json").read_text())


class Fixed:
    def __init__(self, name, reading):
        self.name = name
        self.reading = reading

    async def start(self):
        pass

    async def stop(self):
        pass

    def collect(self, now):
        return self.reading


class Raising(Fixed):
    def collect(self, now):
        raise self.reading


def test_sections_from_several_collectors_are_merged_member_by_member():
    host = Fixed("host", Reading(cpu=Cpu(usage=0.1, cores=2), asterisk=Asterisk(cpu=0.25, rss=1000), asterisk_process=True))
    ami = Fixed("asterisk", Reading(asterisk=Asterisk(channels=6, calls=4, limit=100, cps=0.5), link=AsteriskLink.UP))
    status = Sampler(Config(), [host, ami]).sample()
    assert status.asterisk == Asterisk(channels=6, calls=4, limit=100, cps=0.5, cpu=0.25, rss=1000)
    assert status.state is State.ACTIVE


class Counting(Fixed):
    def __init__(self, name, readings):
        super().__init__(name, None)
        self.readings = iter(readings)
        self.calls = 0

    def collect(self, now):
        self.calls += 1
        return next(self.readings)


def test_a_partial_sample_collects_only_the_named_collectors_and_reuses_the_others():
    host = Counting("host", [Reading(cpu=Cpu(usage=0.3)), Reading(cpu=Cpu(usage=0.9))])
    ami = Counting("asterisk", [Reading(asterisk=Asterisk(channels=1, calls=1), link=AsteriskLink.UP),
                                Reading(asterisk=Asterisk(channels=2, calls=2), link=AsteriskLink.UP)])
    sampler = Sampler(Config(), [host, ami])
    sampler.sample()
    status = sampler.sample(only=("asterisk",))
    assert (host.calls, ami.calls) == (1, 2)
    assert status.cpu.usage == 0.3 and status.asterisk.channels == 2


def test_a_sample_of_no_collector_rescores_the_last_readings():
    host = Counting("host", [Reading(cpu=Cpu(usage=0.3))])
    sampler = Sampler(Config(), [host])
    sampler.sample()
    status = sampler.sample(draining=True, only=())
    assert host.calls == 1 and status.state is State.DRAINING and status.cpu.usage == 0.3


def test_a_raising_collector_is_logged_once_and_the_others_go_on(caplog):
    broken = Raising("probe", RuntimeError("socket exploded"))
    host = Fixed("host", Reading(cpu=Cpu(usage=0.2)))
    sampler = Sampler(Config(), [broken, host])
    with caplog.at_level(logging.WARNING, logger="agent.sampler"):
        statuses = [sampler.sample() for _ in range(5)]
    assert [r.message for r in caplog.records] == ["collector probe: RuntimeError: socket exploded"]
    assert all(s.cpu.usage == 0.2 and s.probe is None for s in statuses)
    assert [s.seq for s in statuses] == [0, 1, 2, 3, 4]


def test_a_new_failure_is_logged_again_and_recovery_once(caplog):
    source = Fixed("asterisk", Reading(error="AMI 127.0.0.1:5038: connection refused", link=AsteriskLink.UNREACHABLE))
    sampler = Sampler(Config(), [source])
    with caplog.at_level(logging.INFO, logger="agent.sampler"):
        sampler.sample()
        sampler.sample()
        source.reading = Reading(error="AMI 127.0.0.1:5038: Login: Asterisk answered Error: Authentication failed")
        sampler.sample()
        source.reading = Reading(link=AsteriskLink.UP)
        sampler.sample()
        sampler.sample()
    assert [r.message for r in caplog.records] == [
        "collector asterisk: AMI 127.0.0.1:5038: connection refused",
        "collector asterisk: AMI 127.0.0.1:5038: Login: Asterisk answered Error: Authentication failed",
        "collector asterisk: working again",
    ]


def test_a_value_outside_the_spec_becomes_unknown_not_a_broken_body(caplog):
    weird = Fixed("asterisk", Reading(quality=Quality(mos=4.2, jitter=1e9, streams=2), link=AsteriskLink.UP))
    status = Sampler(Config(), [weird]).sample()
    assert status.quality == Quality(mos=4.2, jitter=None, streams=2)
    codec.encode(status)
    assert any("quality.jitter" in r.message for r in caplog.records)


def test_status_carries_node_instance_and_validity():
    cfg = from_dict({"agent": {"node": "ast-7", "validity": 9}})
    sampler = Sampler(cfg, [], instance="abc")
    s = sampler.sample()
    assert (s.node, s.instance, s.validity) == ("ast-7", "abc", 9)
    assert Sampler(Config(), []).instance != Sampler(Config(), []).instance


def run(coro, timeout=30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def agent_config(ami_port, **asterisk):
    return from_dict({
        "collectors": {
            "asterisk": {"port": ami_port, "secret": "secret", "auth": "plain", "backoff_initial": 0.01, "backoff_max": 0.05, **asterisk},
            "probe": {"target": "sip:127.0.0.1:9", "interval": 0.1, "timeout": 0.2},
        }
    })


def test_the_whole_agent_against_a_streaming_fake_asterisk():
    async def main():
        scenario = Scenario(answers={"CoreShowChannels": "coreshowchannels"}, stream="rtcp_events",
                            stream_after="CoreShowChannels", max_calls=50)
        async with FakeAmi(scenario) as server:
            changes = []
            cfg = agent_config(server.port, quality_window=600.0)
            sampler = Sampler(cfg, build_collectors(cfg, on_change=changes.append))
            await sampler.start()
            sampler.measure()
            ami = sampler.collectors[1]
            await server.streamed.wait()
            await eventually(lambda: ami.table.synced, what="sync")
            await eventually(lambda: ami.client.events_received == server.events_sent, what="every event read")
            status = sampler.sample()
            await sampler.stop()
            return status

    status = run(main())
    body = json.loads(codec.encode(status))
    jsonschema.validate(body, SCHEMA)
    assert (status.asterisk.channels, status.asterisk.calls, status.asterisk.limit) == (5, 5, 50)
    assert status.quality.streams == 5 and status.cpu.usage is not None and status.memory.total > 0
    assert status.network is not None and status.probe.timeouts >= 1


def test_other_collectors_keep_working_when_ami_fails():
    async def main():
        async with FakeAmi(Scenario(login_fail_delay=0.01, secret="other")) as server:
            cfg = agent_config(server.port)
            sampler = Sampler(cfg, build_collectors(cfg))
            await sampler.start()
            sampler.measure()
            await eventually(lambda: sampler.collectors[1].client.last_error, what="the failed login")
            status = sampler.sample()
            errors = dict(sampler.errors)
            await sampler.stop()
            return status, errors

    status, errors = run(main())
    assert status.asterisk is None or status.asterisk.channels is None  # unknown, never 0
    assert status.quality is None
    assert status.cpu.usage is not None and status.memory is not None and status.network is not None
    assert "Authentication failed" in errors["asterisk"]
    jsonschema.validate(json.loads(codec.encode(status)), SCHEMA)


@pytest.mark.parametrize("enabled", [["host"], ["network"], ["probe"], ["asterisk"], []])
def test_any_subset_of_collectors_gives_a_valid_body(enabled):
    async def main():
        cfg = from_dict({"collectors": {"enabled": enabled, "asterisk": {"port": 9, "backoff_initial": 0.01},
                                        "probe": {"target": "sip:127.0.0.1:9", "interval": 0.1}}})
        sampler = Sampler(cfg, build_collectors(cfg))
        await sampler.start()
        sampler.measure()
        await asyncio.sleep(0.15)
        status = sampler.sample()
        await sampler.stop()
        return status

    jsonschema.validate(json.loads(codec.encode(run(main()))), SCHEMA)


def test_event_driven_collectors_report_changes_by_their_collector_name():
    # The service re-reads only the collectors named in a change report
    # (Sampler.sample(only=...)); a description instead of the name made
    # every AMI channel event re-read nothing.
    async def main():
        async with FakeAmi(Scenario(answers={"CoreShowChannels": "coreshowchannels_idle"},
                                    stream="event_stream", stream_after="CoreShowChannels")) as server:
            changes = []
            cfg = from_dict({"collectors": {"enabled": ["asterisk"], "asterisk": {
                "port": server.port, "secret": "secret", "auth": "plain"}}})
            sampler = Sampler(cfg, build_collectors(cfg, on_change=changes.append))
            await sampler.start()
            await server.streamed.wait()
            ami = sampler.collectors[0]
            await eventually(lambda: ami.client.events_received == server.events_sent, what="every event read")
            await sampler.stop()
            return changes

    changes = run(main())
    assert changes and set(changes) == {"asterisk"}


# -- readiness: no active before every collector has reported once ------------------


class Reporting(Fixed):
    """A collector that says when it has reported (as the probe and AMI do)."""

    reported = False


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def ready_sampler(*collectors, cfg=None):
    clock = Clock()
    sampler = Sampler(cfg or Config(), list(collectors), clock=clock)
    run(sampler.start())
    return sampler, clock


def test_a_node_whose_probe_has_not_reported_is_down_starting_not_active():
    probe = Reporting("probe", Reading(probe=Probe(samples=0, timeouts=0), probe_failures_in_row=0))
    ami = Fixed("asterisk", Reading(asterisk=Asterisk(channels=0, calls=0), link=AsteriskLink.UP))
    sampler, _ = ready_sampler(probe, ami)
    status = sampler.sample()
    assert status.state is State.DOWN and status.reason == "starting: waiting for probe" and status.weight == 0
    assert status.asterisk.channels == 0  # what is known is still in the body
    probe.reported = True
    assert sampler.sample().state is State.ACTIVE


def test_once_ready_the_sampler_stays_ready():
    probe = Reporting("probe", Reading(probe=Probe(samples=1, timeouts=0, p50=1.0, p95=1.0, max=1.0)))
    sampler, _ = ready_sampler(probe)
    probe.reported = True
    sampler.sample()
    probe.reported = False  # a collector that "forgets" does not make the node start again
    assert sampler.sample().state is State.ACTIVE


def test_after_the_settle_time_the_missing_collectors_are_unknown():
    ami = Reporting("asterisk", Reading(link=AsteriskLink.UNREACHABLE))
    probe = Reporting("probe", Reading(probe=Probe(samples=3, timeouts=0, p50=1.0, p95=1.0, max=1.0)))
    probe.reported = True
    sampler, clock = ready_sampler(probe, ami)
    assert sampler.sample().state is State.DOWN
    clock.now += sampler.settle_time
    status = sampler.sample()
    assert status.state is State.ACTIVE and status.capacity <= 0.5 and "asterisk" in status.reason


def test_a_probe_verdict_within_the_settle_time_is_reported_as_it_is():
    probe = Reporting("probe", Reading(probe=Probe(samples=0, timeouts=3), probe_failures_in_row=3))
    sampler, _ = ready_sampler(probe)
    assert sampler.sample().reason == "sip probe: 3 unanswered in a row"


def test_the_settle_time_covers_the_probe_verdict_and_an_ami_login():
    cfg = from_dict({"collectors": {"probe": {"interval": 2.0, "timeout": 1.5},
                                    "asterisk": {"connect_timeout": 3.0, "action_timeout": 5.0}},
                     "scoring": {"probe_down_after": 4}})
    probe = Reporting("probe", Reading())
    ami = Reporting("asterisk", Reading())
    assert Sampler(cfg, [probe]).settle_time == pytest.approx(2.0 * 4 + 1.5)
    assert Sampler(cfg, [ami]).settle_time == pytest.approx(8.0)
    assert Sampler(cfg, [Fixed("host", Reading())]).settle_time == pytest.approx(2.0)


def test_the_probe_answering_again_wakes_the_ami_collector():
    cfg = from_dict({"collectors": {"enabled": ["asterisk", "probe"]}})
    ami, probe = build_collectors(cfg)
    assert probe.on_recovered == ami.reachable_again
