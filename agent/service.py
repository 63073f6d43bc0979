"""The agent's service: sample, score, notify and publish; drain; stop cleanly.

One asyncio task owns the loop (`AgentService.run`):

- every `agent.interval` seconds a full sample (all collectors);
- at once, a partial sample when an event-driven collector reports a change
  (an AMI channel appearing or going, a probe failing or recovering): the
  collectors that did not change keep their last readings;
- each status goes to the notifier (`load-status` subscriptions, spec 4) and
  the publishers (spec 5). A *significant* change (spec 8.3: a state change,
  a weight change of `SIGNIFICANT_WEIGHT_STEP` or more, a changed affinity
  set) is sent as soon as each subscription's rate ceiling allows; anything
  else rides on the next heartbeat;
- every body sent is rendered afresh with a new `seq` (spec 7.1), so a
  heartbeat is never mistaken for an old, reordered body; the Sampler
  numbers it (`Sampler.numbered`), as it numbers every status it measures;
- `drain`/`undrain` on the control socket rescore at once;
- SIGTERM (or SIGINT): a final NOTIFY `terminated;reason=probation` with a
  `down` body to every subscriber, publications removed (Expires: 0), at
  most `STOP_WAIT` seconds for their answers, exit 0 (spec 4.7.4);
- SIGHUP: the configuration file is read again (the command line's
  --listen/--trust/--publish still override it); what can change at run time
  (scoring thresholds, trusted networks, digest users) is applied, other
  changed keys are named as needing a restart, subscriptions the new trust
  no longer admits end without a NOTIFY (spec 4.6.2); a broken file is
  logged and the running configuration kept.

Publishers send their own heartbeats (a fresh body every `heartbeat` s,
Publisher(produce=..., heartbeat=...)); `_take` publishes significant changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable

from sipstatus import affinity, codec
from sipstatus.affinity_feed import AffinityFeed, FeedReader
from sipstatus.net.endpoint import Endpoint
from sipstatus.net.service import SipService, StreamLimits, route_source
from sipstatus.sip.digest import DigestClient, DigestServer, FailedAttempts, WrongCredentials
from sipstatus.sip.errors import SipError
from sipstatus.sip.publication import PublicationFailed, Published, Publisher, Unpublished
from sipstatus.sip.subscription import (
    Notifier,
    NotifyFailed,
    SubscriptionCreated,
    SubscriptionRejected,
    SubscriptionTerminated,
)
from sipstatus.sip.transaction import Destination
from sipstatus.status import LoadStatus, State

from . import config as agent_config
from . import sdnotify
from .collectors.confbridge import RoomTable
from .collectors.registry import build_collectors
from .control import ControlServer
from .sampler import Sampler, new_instance
from .scoring import Scorer

log = logging.getLogger(__name__)

PACKAGE = "load-status"
#: Spec 8.3: a weight change of this much or more is significant.
SIGNIFICANT_WEIGHT_STEP = 5
#: What SIGHUP changes at once (spec 4.6.2: who may subscribe); the rest needs a restart.
RELOADABLE_NOTIFIER_KEYS = ("trust", "users", "realm")
#: Spec 4.7.4: how long a stopping agent waits for answers to its final requests.
STOP_WAIT = 2.0
#: How long the first status may wait for collectors that connect (AMI).
SETTLE_WAIT = 2.0
#: Seconds between two "alive" lines at info level (`status_line`): at
#: info a running agent otherwise logs only changes, and an operator could
#: not tell a quiet agent from a hung one.
STATUS_LOG_INTERVAL = 300.0
#: A documentation address (RFC 5737): connecting a UDP socket to it only
#: consults the routing table (no packet is sent) and tells which local
#: address the host would use, for the Via of a wildcard listener.
_ROUTE_PROBE = "192.0.2.1"


def is_significant(before: LoadStatus | None, after: LoadStatus) -> bool:
    """Spec 8.3: a state change, a weight change of 5 or more, or a changed affinity set."""
    if before is None:
        return True
    return (before.state is not after.state
            or abs(before.weight - after.weight) >= SIGNIFICANT_WEIGHT_STEP
            or set(before.affinity or ()) != set(after.affinity or ()))


class AgentService:
    """The running agent. `config_path` is re-read on SIGHUP (None: no file),
    through `reread` when given: the command line's overrides must survive a
    reload (`reread` applies them to the file's configuration again)."""

    def __init__(self, config: agent_config.Config, *, config_path: str | None = None,
                 control_path: str | None = None,
                 reread: Callable[[str], agent_config.Config] | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self._reread = reread or agent_config.load
        self.control_path = control_path
        self.instance = new_instance()
        self.draining = False
        self.draining_since: float | None = None  # Unix time the operator drained
        self.status: LoadStatus | None = None  # the latest scored status
        self._announced: LoadStatus | None = None  # the last significant one
        self._changed: set[str] = set()
        #: the publishers whose removal failed (one per package and target)
        self._unremoved: set[int] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.sampler: Sampler | None = None
        self.sip: SipService | None = None
        self.endpoint: Endpoint | None = None
        self.notifier: Notifier | None = None
        #: The load-affinity notifier (spec/load-affinity.md): the rooms of the node.
        self.affinity_notifier: Notifier | None = None
        self.feed = AffinityFeed(config.node, self.instance, config.collectors.asterisk.rooms_validity)
        self._readers: dict[tuple[str, str], tuple[FeedReader, int]] = {}
        self._room_readers: dict[int, FeedReader] = {}  # by id() of a room publisher
        self._rooms_known = False  # the rooms have been listed once
        self.room_publishers: list[Publisher] = []
        self._digests: dict[str, str] = {}
        self.publishers: list[Publisher] = []
        self.control: ControlServer | None = None
        self.addresses: list[tuple[str, str, int]] = []  # (transport, host, port) bound
        self.status_log_interval = STATUS_LOG_INTERVAL
        self._trust: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._users: dict[str, str] = {}
        self._digest: DigestServer | None = None
        self._failures = FailedAttempts()
        self._apply_notifier_auth(config)

    # -- bodies -----------------------------------------------------------------------

    def render(self) -> bytes:
        """The current status as a body with a fresh seq (spec 7.1)."""
        assert self.sampler is not None
        return codec.encode(self.sampler.numbered(self.status or self._placeholder("starting")))

    def _placeholder(self, reason: str) -> LoadStatus:
        """Before the first measurement, and when stopping: state down (spec 4.7.2, 4.7.4)."""
        return LoadStatus(node=self.config.node, instance=self.instance, seq=0,
                          validity=self.config.agent.validity, state=State.DOWN, capacity=0.0,
                          time=time.time(), reason=reason)

    @property
    def heartbeat(self) -> float:
        n = self.config.notifier
        return n.heartbeat or max(self.config.agent.validity / 3, 1 / n.max_rate)

    # -- running ------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
            sdnotify.ready(f"serving {self.config.node}: {self._describe_addresses()}")
            await self._loop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        await self.shutdown()
        return 0

    async def start(self) -> None:
        """Collectors, SIP, control socket, first status. Raises OSError or
        ValueError (e.g. a port in use, an unreadable certificate) with the
        reason; nothing is left running then."""
        cfg = self.config
        self.sampler = Sampler(cfg, build_collectors(cfg, on_change=self._on_change), instance=self.instance)
        try:
            await self._start_sip()
            self.control = ControlServer(self.control_path, self._control, self._drain_flag) \
                if self.control_path else None
            if self.control is not None:
                await self.control.start()
            await self.sampler.start()
            await self.sampler.wait_settled(SETTLE_WAIT)
            self.sampler.measure()  # the first reading opens the CPU and network windows
            await asyncio.sleep(min(cfg.agent.sample_gap, cfg.agent.interval))
            self._take(self.sampler.sample(self.draining))
        except BaseException:
            await self._close()
            raise

    async def _start_sip(self) -> None:
        cfg = self.config
        self.notifier = self._notifier(
            PACKAGE, codec.MEDIA_TYPE, affinity.PACKAGE, self.heartbeat, cfg.agent.validity,
            produce=lambda now: self.render())
        self.affinity_notifier = self._notifier(
            affinity.PACKAGE, affinity.MEDIA_TYPE, PACKAGE, self.feed.refresh, cfg.collectors.asterisk.rooms_validity,
            produce_for=self._affinity_body)
        p = cfg.publisher
        client = DigestClient(p.username, p.password) if p.username else None
        self.publishers = [
            Publisher(target, PACKAGE, codec.MEDIA_TYPE, f"sip:{cfg.node}@{cfg.node}",
                      authorize=client.authorize if client else None, expires=p.expires,
                      produce=lambda now: self.render(), heartbeat=self.heartbeat,
                      min_interval=1 / p.max_rate, key=target)
            for target in p.targets
        ]
        # The rooms (load-affinity) to the same targets: pages of a full set
        # one after another, deltas after, a full set every heartbeat and
        # after a 412 (spec/load-affinity.md 2 and 6).
        self.room_publishers = []
        for target in p.targets:
            reader = self.feed.reader()
            publisher = Publisher(target, affinity.PACKAGE, affinity.MEDIA_TYPE, f"sip:{cfg.node}@{cfg.node}",
                                  authorize=client.authorize if client else None, expires=p.expires,
                                  produce=None, heartbeat=None, min_interval=0.1, key=target)
            publisher.produce = self._room_producer(publisher, reader)
            publisher.heartbeat = self.feed.refresh
            self._room_readers[id(publisher)] = reader
            self.room_publishers.append(publisher)
        users = [self.notifier, self.affinity_notifier, *self.publishers, *self.room_publishers]
        self.endpoint = Endpoint(users, allow_events=[PACKAGE, affinity.PACKAGE])
        n = cfg.notifier
        self.sip = SipService(self.endpoint, on_event=self._on_sip_event, limits=StreamLimits(
            max_connections=n.max_connections, max_per_source=n.max_connections_per_source,
            idle_timeout=n.idle_timeout, message_timeout=n.message_timeout,
            handshake_timeout=n.tls_handshake_timeout), udp_receive_buffer=n.udp_receive_buffer)
        listens = [agent_config.parse_listen(a) for a in cfg.notifier.listen]
        if not listens and self.publishers:
            # Publishing only: a socket to send from and hear answers on.
            listens = [("UDP", "0.0.0.0", 0)]
        for transport, host, port in listens:
            context = self._tls_context() if transport == "TLS" else None
            advertise = _route_address(host) if ipaddress.ip_address(host).is_unspecified else None
            bound = await self.sip.listen(transport, host, port, ssl_context=context, advertise=advertise)
            self.addresses.append((transport, *bound))

    def _notifier(self, package: str, media_type: str, other_package: str,
                  heartbeat: float, validity: int, **produce: Callable) -> Notifier:
        """The notifier of one event package: both share the limits and who may subscribe."""
        n = self.config.notifier
        return Notifier(
            package, media_type, self._contact,
            authorize=self._authorize,
            default_expires=n.default_expires,
            max_expires=n.max_expires,
            max_subscriptions=n.max_subscriptions,
            max_per_source=n.max_per_source,
            busy_retry_after=60,
            heartbeat=heartbeat,
            max_rate=n.max_rate,
            lowest_max_rate=3 / validity,  # spec 8.2
            other_packages=[other_package],
            **produce,
        )

    def _tls_context(self) -> ssl.SSLContext:
        n = self.config.notifier
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(n.tls_certificate, n.tls_key)
        if n.tls_client_ca:
            context.load_verify_locations(n.tls_client_ca)
            context.verify_mode = ssl.CERT_OPTIONAL  # no certificate: digest or trust may still admit
        return context

    async def _loop(self) -> None:
        assert self.sampler is not None
        interval = self.config.agent.interval
        next_sample = asyncio.get_running_loop().time() + interval
        watchdog = sdnotify.watchdog_period()
        next_ping = 0.0
        next_status_log = asyncio.get_running_loop().time() + self.status_log_interval
        while not self._stop.is_set():
            loop_time = asyncio.get_running_loop().time()
            timeout = max(0.0, min(next_sample, next_status_log) - loop_time)
            if watchdog:
                timeout = min(timeout, max(0.0, next_ping - loop_time))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self._stop.is_set():
                break
            now = asyncio.get_running_loop().time()
            if now >= next_sample:
                self._changed.clear()
                self._take(self.sampler.sample(self.draining))
                next_sample = now + interval
            elif self._changed:
                only, self._changed = set(self._changed), set()
                self._take(self.sampler.sample(self.draining, only=only))
            if watchdog and now >= next_ping:
                sdnotify.watchdog()
                next_ping = now + watchdog / 2
            if now >= next_status_log:
                log.info("%s", self.status_line())
                next_status_log = now + self.status_log_interval

    def _take(self, status: LoadStatus) -> None:
        """A new status: to the notifier and the publishers (see module doc)."""
        assert self.sip is not None and self.notifier is not None
        significant = is_significant(self._announced, status)
        self.status = status
        if significant:
            if self._announced is not None and self._announced.state is not status.state:
                log.info("state %s -> %s (%s)", self._announced.state.value, status.state.value, status.reason or "")
            self._announced = status
        now = self.sip.now()
        self.sip.submit(self.notifier, self.notifier.state_changed(None, now, significant))
        self._announce_rooms(now)
        # Publishers send their heartbeats themselves (a fresh body every
        # `heartbeat` s, spec 5.2.2, on their own timer); a significant change goes at once.
        if significant:
            for publisher in self.publishers:
                self.sip.submit(publisher, publisher.publish(None, now))

    # -- rooms (load-affinity) -----------------------------------------------------------

    def rooms(self) -> RoomTable | None:
        """The ConfBridge rooms the Asterisk collector follows, if it does."""
        if self.sampler is None:
            return None
        return next((c.rooms for c in self.sampler.collectors
                     if isinstance(getattr(c, "rooms", None), RoomTable)), None)

    def _announce_rooms(self, now: float) -> None:
        """A new version of the key set when the rooms changed. Rooms not
        known (AMI down, not listed yet) change nothing: unknown is not "no
        rooms", and the node's status keeps calls away meanwhile."""
        rooms = self.rooms()
        if rooms is None or not rooms.synced or self.affinity_notifier is None or self.sip is None:
            return
        keys = set()
        for name in rooms.keys:
            digest = self._digests.get(name)
            if digest is None:
                digest = self._digests[name] = affinity.affinity_key(name)
            keys.add(digest)
        if len(self._digests) > 4 * len(keys) + 64:
            self._digests = {n: d for n, d in self._digests.items() if n in rooms.keys}
        first = not self._rooms_known
        self._rooms_known = True
        if first:
            for publisher in self.room_publishers:  # the first full set, even of no room
                self.sip.submit(publisher, publisher.publish(None, now))
        if self.feed.update(keys):
            log.debug("rooms: %d (version %d)", len(keys), self.feed.version)
            self.sip.submit(self.affinity_notifier, self.affinity_notifier.state_changed(None, now, True))
            for publisher in self.room_publishers:
                self.sip.submit(publisher, publisher.publish(None, now))

    @staticmethod
    def _room_producer(publisher: Publisher, reader: FeedReader) -> Callable[[float], bytes]:
        """The body of a room publisher's next PUBLISH: an initial publication
        (no entity tag: the first, or after a 412) starts a full set."""
        def produce(now: float) -> bytes:
            if publisher.etag is None and not reader.paging:
                reader.restart()
            return affinity.encode(reader.next_body(now))
        return produce

    def _affinity_body(self, sub: object, now: float) -> tuple[bytes, bool]:
        """The next load-affinity body for one subscription (spec/load-affinity.md 6):
        a full set after each SUBSCRIBE, deltas after, a full set as heartbeat."""
        assert self.affinity_notifier is not None
        key = (sub.id.call_id, sub.id.local_tag)  # type: ignore[attr-defined]
        reader, subscribes = self._readers.get(key, (None, 0))
        if reader is None:
            reader = self.feed.reader()
        if subscribes != sub.subscribes:  # type: ignore[attr-defined]
            reader.restart()  # every SUBSCRIBE, refresh included, gets a full set
        self._readers[key] = (reader, sub.subscribes)  # type: ignore[attr-defined]
        if len(self._readers) > len(self.affinity_notifier.subscriptions) + 16:
            live = self.affinity_notifier.subscriptions
            self._readers = {k: v for k, v in self._readers.items() if k in live or k == key}
        body = reader.next_body(now)
        return affinity.encode(body), reader.more

    def status_line(self) -> str:
        """One line on what the agent is doing, for the periodic log: the
        last status, the subscriptions and the publications."""
        status = self.status
        if status is None:
            what = "no status yet"
        else:
            what = f"{status.state.value}, weight {status.weight}, capacity {status.capacity:.2f}"
            if status.reason:
                what += f" ({status.reason})"
        subscriptions = len(self.notifier.subscriptions) if self.notifier is not None else 0
        line = f"alive: {what}; {subscriptions} subscription{'' if subscriptions == 1 else 's'}"
        if self.publishers:
            held = sum(1 for p in self.publishers if p.etag is not None)
            line += f"; publications held at {held} of {len(self.publishers)} targets"
        return line

    def _on_change(self, what: str) -> None:
        self._changed.add(what)
        self._wake.set()

    # -- draining and stopping -------------------------------------------------------------

    def set_draining(self, draining: bool) -> LoadStatus:
        """Drain (no new calls) or undrain; on the wire at once, within the rate ceiling."""
        assert self.sampler is not None
        if draining != self.draining:
            log.info("%s by the operator", "draining" if draining else "undrained")
            self.draining_since = time.time() if draining else None
        self.draining = draining
        self._take(self.sampler.sample(draining, only=()))
        assert self.status is not None
        return self.status

    async def _control(self, command: str) -> dict:
        if command == "drain":
            status = self.set_draining(True)
        elif command == "undrain":
            status = self.set_draining(False)
        else:
            status = self.status or self._placeholder("starting")
        return codec.to_wire(status)

    def _drain_flag(self) -> dict:
        return {"drain": {"on": self.draining, "since": self.draining_since}}

    def stop(self) -> None:
        """Ask `run` to stop (as SIGTERM does): at once, not at the next sample."""
        self._stop.set()
        self._wake.set()

    async def shutdown(self) -> None:
        """Final NOTIFYs and removed publications, answers awaited at most STOP_WAIT s."""
        sdnotify.stopping()
        # The control socket goes first: an agent started again at once (a
        # restart) must find it free, not "another agent is listening".
        if self.control is not None:
            await self.control.close()
            self.control = None
        if self.sip is not None and self.notifier is not None:
            self.status = self._placeholder("agent shutting down")
            now = self.sip.now()
            self.sip.submit(self.notifier, self.notifier.terminate_all(
                "probation", now, retry_after=self.config.notifier.restart_retry_after))
            if self.affinity_notifier is not None:
                self.sip.submit(self.affinity_notifier, self.affinity_notifier.terminate_all(
                    "probation", now, retry_after=self.config.notifier.restart_retry_after))
            for publisher in [*self.publishers, *self.room_publishers]:
                self.sip.submit(publisher, publisher.remove(now))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_WAIT
            # A final NOTIFY waits for the answer to one in flight (spec 4.7.2):
            # the notifier holds it (`closing`) until it is out.
            while self._unfinished() and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if self._unfinished():
                log.warning("stopping with %d requests unanswered and %d final NOTIFYs unsent",
                            self.endpoint.outstanding if self.endpoint else 0, self.notifier.closing)
        await self._close()

    def _unfinished(self) -> bool:
        """Requests unanswered, final NOTIFYs unsent, or removals not yet sent:
        a removal right after a PUBLISH waits for the 100 ms of spec 8.1."""
        return bool((self.endpoint is not None and self.endpoint.outstanding)
                    or any(n is not None and (n.closing or n.subscriptions)
                           for n in (self.notifier, self.affinity_notifier))
                    or any(p.removing and (p.etag is not None or p.pending is not None or p.queued is not None)
                           for p in [*self.publishers, *self.room_publishers]))

    async def _close(self) -> None:
        if self.control is not None:
            await self.control.close()
            self.control = None
        if self.sampler is not None:
            await self.sampler.stop()
        if self.sip is not None:
            await self.sip.close()
            self.sip = None

    # -- reloading --------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: read the file again; apply what can change while running."""
        if self.config_path is None:
            log.info("reload: no configuration file to read (started without --config)")
            return
        sdnotify.reloading()
        try:
            new = self._reread(self.config_path)
        except agent_config.ConfigError as exc:
            log.error("reload: %s; keeping the running configuration", exc)
            sdnotify.ready("reload refused: configuration invalid")
            return
        restart = _needs_restart(self.config, new)
        if restart:
            log.warning("reload: %s changed; that takes effect at the next restart", ", ".join(restart))
        old_trust = self._trust
        applied = dataclasses.replace(self.config, scoring=new.scoring, notifier=dataclasses.replace(
            self.config.notifier, **{key: getattr(new.notifier, key) for key in RELOADABLE_NOTIFIER_KEYS}))
        self.config = applied
        self._apply_notifier_auth(applied)
        self._withdraw(old_trust)
        if self.sampler is not None:
            self.sampler.config = applied
            self.sampler.scorer = Scorer(applied.scoring)
        log.info("reload: configuration %s applied", self.config_path)
        sdnotify.ready(f"serving {self.config.node}: {self._describe_addresses()}")

    # -- authorization (spec 4.6.2) -------------------------------------------------------------

    def _apply_notifier_auth(self, cfg: agent_config.Config) -> None:
        n = cfg.notifier
        self._trust = [ipaddress.ip_network(net, strict=False) for net in n.trust]
        self._users = dict(n.users)
        self._failures = FailedAttempts(n.auth_failure_limit, n.auth_failure_window, n.auth_lockout)
        if self._users:
            if self._digest is None or self._digest.realm != (n.realm or cfg.node) \
                    or self._digest.algorithms != list(n.digest_algorithms):
                self._digest = DigestServer(n.realm or cfg.node, os.urandom(32),
                                            algorithms=n.digest_algorithms)
        else:
            self._digest = None

    def _authorize(self, request: object, source: Destination, now: float) -> SipError | None:
        if _trusted(source, self._trust) or self._certified(source):
            return None
        if self._digest is not None:
            host = source.host.lower()
            if self._failures.blocked(host, now):
                # Spec 4.6.2: 403 rather than a new challenge after repeated failures.
                return SipError(403, "Forbidden (too many failed authentications, retry later)")
            try:
                self._digest.verify(request, now, self._users.get)  # type: ignore[arg-type]
            except WrongCredentials as refusal:
                self._failures.failed(host, now)
                return refusal
            except SipError as refusal:
                return refusal
            self._failures.succeeded(host)
            return None
        return SipError(403, "Forbidden (source not trusted)")

    def _certified(self, source: Destination) -> bool:
        """A TLS peer whose client certificate verified against tls_client_ca."""
        return bool(source.transport.upper() == "TLS" and self.config.notifier.tls_client_ca
                    and self.sip is not None and self.sip.peer_certificate(source))

    def _withdraw(self, old_trust: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        """Spec 4.6.2: a subscription its source's trust admitted, which the new
        trusted networks do not, ends without a NOTIFY. (One admitted by digest
        is challenged again at its next refresh.)"""
        if self.sip is None or self.notifier is None:
            return
        for notifier in (self.notifier, self.affinity_notifier):
            if notifier is None:
                continue
            for sub in list(notifier.subscriptions.values()):
                if _trusted(sub.source, old_trust) and not _trusted(sub.source, self._trust) \
                        and not self._certified(sub.source):
                    self.sip.submit(notifier, notifier.drop(sub.id, "unauthorized"))

    # -- SIP plumbing --------------------------------------------------------------------------

    def _contact(self, source: Destination) -> str:
        transport = source.transport.upper()
        host, port = self._local_for(transport, source.host)
        host = f"[{host}]" if ":" in host else host
        param = "" if transport == "UDP" else f";transport={transport.lower()}"
        return f"sip:{PACKAGE}@{host}:{port}{param}"

    def _local_for(self, transport: str, peer: str) -> tuple[str, int]:
        assert self.endpoint is not None and self.sip is not None
        host, port = self.endpoint.local.get(transport) or next(iter(self.endpoint.local.values()))
        return self.sip.local_host(transport, peer) or host, port

    def _on_sip_event(self, event: object) -> None:
        if isinstance(event, SubscriptionCreated):
            log.info("subscription from %s (%s:%s) for %d s", event.subscriber, event.source.host, event.source.port, event.expires)
        elif isinstance(event, SubscriptionTerminated):
            log.info("subscription %s ended: %s", event.id, event.reason)
        elif isinstance(event, SubscriptionRejected):
            log.info("SUBSCRIBE from %s:%s refused: %d %s", event.source.host, event.source.port, event.status, event.reason)
        elif isinstance(event, NotifyFailed):
            log.warning("NOTIFY on %s failed: %d %s", event.id, event.status, event.reason)
            held = self._readers.get((event.id.call_id, event.id.local_tag))
            if held is not None:
                held[0].restart()  # not received: a full set next (spec/load-affinity.md 6)
        elif isinstance(event, Published):
            log.debug("published to %s (etag %s, %d s)", event.publisher.target, event.etag, event.expires)
            reader = self._room_readers.get(id(event.publisher))
            if reader is not None and reader.more and self.sip is not None:
                # The next page of a full set (or a delta that waited): at once.
                self.sip.submit(event.publisher, event.publisher.publish(None, self.sip.now()))
        elif isinstance(event, PublicationFailed):
            if event.retry_at is not None:
                retry = f"will retry in {max(0.0, event.retry_at - self.sip.now()) if self.sip else 0:.0f} s"
            else:
                retry = "not retried" if event.publisher.removing else "will retry with the next heartbeat"
                if event.publisher.removing:
                    self._unremoved.add(id(event.publisher))
            log.warning("PUBLISH to %s failed: %d %s; %s", event.publisher.target, event.status, event.reason, retry)
        elif isinstance(event, Unpublished) and event.existed and id(event.publisher) not in self._unremoved:
            # (after a failed removal the failure line above said what happened;
            # a publication never made, say of rooms Asterisk never had, needs none)
            log.info("%s publication at %s removed", event.publisher.package, event.publisher.target)

    def _describe_addresses(self) -> str:
        listening = ", ".join(f"{t.lower()}:{h}:{p}" for t, h, p in self.addresses) or "no listener"
        targets = ", ".join(p.target for p in self.publishers)
        return listening + (f"; publishing to {targets}" if targets else "")


def _needs_restart(old: agent_config.Config, new: agent_config.Config) -> list[str]:
    """The keys that differ and that only a restart applies. SIGHUP applies the
    scoring thresholds and who may subscribe; not, say, the validity: the
    notifier's heartbeats were derived from it at start."""
    keys = []
    for section in ("agent", "collectors", "notifier", "publisher"):
        before, after = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(before):
            live = section == "notifier" and f.name in RELOADABLE_NOTIFIER_KEYS
            if not live and getattr(before, f.name) != getattr(after, f.name):
                keys.append(f"{section}.{f.name}")
    return keys


def _trusted(source: Destination, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(source.host.strip("[]"))
    except ValueError:
        return False
    return any(address in net for net in networks)


def _route_address(bound: str) -> str:
    """For a wildcard listener: the address the host would use towards the
    world, our Via's host when the route to a peer is unknown. Loopback when
    there is no route at all."""
    v6 = ":" in bound
    return route_source("2001:db8::1" if v6 else _ROUTE_PROBE) or ("::1" if v6 else "127.0.0.1")


def run(config: agent_config.Config, *, config_path: str | None, control_path: str | None,
        on_started: Callable[[AgentService], None] | None = None,
        reread: Callable[[str], agent_config.Config] | None = None) -> int:
    """Run the agent in a fresh event loop (the `run` command)."""
    async def main() -> int:
        service = AgentService(config, config_path=config_path, control_path=control_path, reread=reread)
        if on_started is not None:
            on_started(service)
        return await service.run()

    return asyncio.run(main())
