"""sipstatus inside your own Kamailio KEMI script (app_python3).

`SipStatus` gives a KEMI script what the native drop-in
(packaging/examples/kamailio/native/sipstatus.cfg) gives a native one, with
the library doing the work: Kamailio becomes the Event State Compositor of
the nodes' `load-status` reports, and each new call goes to a node drawn at
random in proportion to the weights the library's policy gives the pool,
with failover. Add it to your script with three calls:

    import KSR
    from sipstatus.kemi import SipStatus

    def mod_init():
        return kamailio()

    class kamailio:
        def __init__(self):
            self.sipstatus = SipStatus(self)        # 1: attaches its routes

        def ksr_request_route(self, msg):
            ...                                     # your initial checks
            if self.sipstatus.reports():            # 2: load-status PUBLISH
                return 1                            #    and NOTIFY, answered
            ...                                     # your in-dialog handling
            if KSR.is_INVITE():                     # a new call for the pool
                KSR.rr.record_route()
                if not self.sipstatus.dispatch():   # 3: sets $du + failover,
                    return 1                        #    or answered 503
                KSR.tm.t_relay()
            ...

and, in kamailio.cfg, `include_file "sipstatus.cfg"` (the KEMI one,
packaging/examples/kamailio/kemi/sipstatus.cfg) after your `loadmodule`
lines: it loads the modules this needs that you have not loaded, declares
the htables and sets up dispatcher (the pool), and rtimer with
WITH_SUBSCRIBE.

What the calls do:

- `reports()`: a PUBLISH or NOTIFY with `Event: load-status` is answered
  (and True returned): PUBLISH per RFC 3903 with Kamailio as the Event State
  Compositor (entity tags in the htable `etag`; 412, 423 + Min-Expires,
  Expires: 0 removes; the 200 carries SIP-ETag and Expires); a NOTIFY in a
  subscription whose Call-ID is in the htable `subs`, else 481. Every body
  goes through `sipstatus.codec.decode` (spec section 6): a bad body gets
  400 with spec 6.6's reason phrase and a Warning, and changes nothing.
  Ordering (instance, seq) and staleness (validity) follow
  `sipstatus.proxy.nodetable.NodeTable`. Anything else: False, untouched.
- `dispatch()`: sets `$du` to a node chosen at random in proportion to the
  policy's weights among the nodes that take calls and whose destination
  dispatcher holds active; with no fresh report at all (cold start) by the
  `rweight`s of the dispatcher list. It arms the failover
  (`t_on_failure("ksr_sipstatus_failure")`, FAILOVER_TIMEOUT) and returns
  True; or answers 503 and returns False. Call it where the INVITE is
  routed, then relay as you do (a relay wrapper that sets a failure route
  of its own must keep one that is set already).
- failover (`ksr_sipstatus_failure`): a node that answers one of
  FAILOVER_CODES or nothing within FAILOVER_TIMEOUT ms loses the call to
  another node drawn the same way, never one this call tried, at most
  MAX_ATTEMPTS nodes per call; a node that did not answer at all is marked
  inactive in dispatcher until it answers OPTIONS again. When no node is
  left, the caller gets the last answer, or `503 No node accepts calls`.
- with WITH_SUBSCRIBE, Kamailio subscribes to every node's agent itself
  (`ksr_sipstatus_subscribe`, every second from rtimer), as the native
  drop-in does: the agent is the destination's `agent` attribute, else
  sip:<destination host>:AGENT_PORT; refreshes in the dialog; a new
  subscription when a node's reports stop, after an agent's
  `retry-after`, and after Kamailio's own restart.

`SipStatus(handler)` attaches to your `kamailio` object, under names that
start with `ksr_sipstatus_`, the functions Kamailio calls by name:
`ksr_sipstatus_failure` (failure route), `ksr_sipstatus_subscribe`
(rtimer) and `ksr_sipstatus_htable_event` (htable's event_callback, which
sipstatus.cfg sets unless SIPSTATUS_NO_HTABLE_CALLBACK is defined; then
call `self.sipstatus.htable_event(msg, evname)` from your own callback).
It also gives your object `ksr_reply_route` and `ksr_onsend_route` when it
has none: app_python3 5.6.3 looks them up for every message, and a missing
one leaves an AttributeError behind that fails the next KSR call.

Parameters (`Settings`): each is read from the define of the same name in
kamailio.cfg (`#!trydef` in sipstatus.cfg, or `-A NAME=VALUE`), and a
keyword argument of `SipStatus()` overrides it: `SipStatus(self,
policy="free-slots", max_attempts=2)`.

Names it takes: the htables ns, joined, etag, pub, subs, lssub, lsdlg and
lsretry, the AVP `ls_tried`, the iterator `ns`, and the log prefix
`load-status:`.

Python state is per Kamailio worker process; nothing shared is kept in
Python: each node's last accepted body and its time of receipt are in the
htable `ns`, and each process rebuilds a NodeTable from it. The pool
(node -> URI) is read by each process from the dispatcher list file
itself (DS_LIST), again when the file changes.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import random
import re
import secrets
import time
from pathlib import Path
from typing import Any

from .affinity import affinity_key
from .codec import MAX_BODY_OCTETS, MEDIA_TYPE, StatusError, decode
from .proxy.nodetable import NodeTable, Outcome
from .proxy.policy import DEFAULT_POLICY, WeightPolicy, make_policy
from .status import LoadStatus

EVENT = "load-status"
#: Decoded bodies kept per process, by body text (a node's body changes with
#: each report; old ones are dropped when the cache is full).
CACHE_SIZE = 1024
#: The names SipStatus.attach() gives Kamailio's callbacks on your object.
FAILURE_ROUTE = "ksr_sipstatus_failure"
SUBSCRIBE_ROUTE = "ksr_sipstatus_subscribe"
HTABLE_EVENT_ROUTE = "ksr_sipstatus_htable_event"

#: Kamailio's KEMI module. It exists only inside Kamailio (app_python3
#: provides it; no package installs it), so it is looked up when a
#: SipStatus is made, not when this module is imported.
KSR: Any = None


class ConfigurationError(ValueError):
    """A parameter of sipstatus.kemi has a value it cannot use (the message
    names the parameter or the value)."""


def _ksr() -> Any:
    global KSR
    if KSR is None:
        try:
            KSR = importlib.import_module("KSR")
        except ImportError as exc:
            raise RuntimeError("sipstatus.kemi runs inside Kamailio's app_python3 (KEMI): no module KSR here") from exc
    return KSR


@dataclasses.dataclass
class Settings:
    """The parameters, with their defaults; each is read from the define
    named in its metadata (see sipstatus.cfg for each)."""

    #: The dispatcher list file (the pool) and the set in it.
    ds_list: str = dataclasses.field(default="/etc/kamailio/dispatcher.list", metadata={"define": "DS_LIST"})
    ds_set: int = dataclasses.field(default=1, metadata={"define": "DS_SET"})
    #: Seconds between dispatcher's OPTIONS probes; 0 (no probing): a silent
    #: node is not marked inactive (it would never come back).
    ping_interval: int = dataclasses.field(default=5, metadata={"define": "DS_PING_INTERVAL"})
    #: A node's final answers after which the call goes to another node (a
    #: regular expression on the status code).
    failover_codes: str = dataclasses.field(default="^(408|480|486|500|502|503|504)$",
                                            metadata={"define": "FAILOVER_CODES"})
    #: Nodes tried per call at most, the first one included.
    max_attempts: int = dataclasses.field(default=3, metadata={"define": "MAX_ATTEMPTS"})
    #: Milliseconds to wait for any answer from a node before the next one.
    failover_timeout: int = dataclasses.field(default=2000, metadata={"define": "FAILOVER_TIMEOUT"})
    #: The weight policy: a name in sipstatus.proxy.policy.POLICIES, "water-fill"
    #: (the library's default), "free-slots" or "headroom".
    policy: str = dataclasses.field(default=DEFAULT_POLICY, metadata={"define": "POLICY"})
    #: The call limit the policy assumes for a node that reports none.
    default_limit: int = dataclasses.field(default=100, metadata={"define": "DEFAULT_LIMIT"})
    #: A publication's lifetime without Expires; the least accepted
    #: (shorter: 423 with Min-Expires); the most granted.
    publish_default_expires: int = dataclasses.field(default=600, metadata={"define": "PUBLISH_DEFAULT_EXPIRES"})
    publish_min_expires: int = dataclasses.field(default=60, metadata={"define": "PUBLISH_MIN_EXPIRES"})
    publish_max_expires: int = dataclasses.field(default=3600, metadata={"define": "PUBLISH_MAX_EXPIRES"})
    #: Accept reports from nodes outside the dispatcher set (defined:
    #: WITH_AUTOJOIN); such a node gets calls at sip:<its address>:AUTOJOIN_PORT.
    auto_join: bool = dataclasses.field(default=False, metadata={"define": "WITH_AUTOJOIN"})
    auto_join_port: int = dataclasses.field(default=5060, metadata={"define": "AUTOJOIN_PORT"})
    #: Subscribe to every node's agent (defined: WITH_SUBSCRIBE; needs the
    #: rtimer that sipstatus.cfg sets up with the same define).
    subscribe: bool = dataclasses.field(default=False, metadata={"define": "WITH_SUBSCRIBE"})
    agent_port: int = dataclasses.field(default=5070, metadata={"define": "AGENT_PORT"})
    #: This proxy's URI as the agents reach it: their NOTIFYs go there.
    subscribe_contact: str = dataclasses.field(default="sip:load-status@127.0.0.1:5060",
                                               metadata={"define": "SUBSCRIBE_CONTACT"})
    subscribe_expires: int = dataclasses.field(default=600, metadata={"define": "SUBSCRIBE_EXPIRES"})
    subscribe_retry: int = dataclasses.field(default=10, metadata={"define": "SUBSCRIBE_RETRY"})
    #: 1: a call without `X-Exec-App: Conference` takes its conference room
    #: from the Request-URI user; 0: only that header's room.
    affinity_ruri: int = dataclasses.field(default=0, metadata={"define": "AFFINITY_RURI"})

    @classmethod
    def from_defines(cls, **overrides: Any) -> Settings:
        """The defines of kamailio.cfg ($def), then `overrides` (by field name)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(overrides) - set(known)
        if unknown:
            raise ConfigurationError(f"no parameter named {', '.join(sorted(unknown))}; known: {', '.join(known)}")
        values: dict[str, Any] = {}
        for name, f in known.items():
            define = f.metadata["define"]
            if f.type == "bool":
                values[name] = _ksr().pv.get(f"$def({define})") is not None
                continue
            raw = _ksr().pv.get(f"$def({define})")
            if raw in (None, ""):
                continue
            text = str(raw).strip().strip('"')
            if f.type == "int":
                try:
                    values[name] = int(text)
                except ValueError:
                    raise ConfigurationError(f"define {define} is {raw!r}, not an integer") from None
            else:
                values[name] = text
        values.update(overrides)
        return cls(**values)

    def make_policy(self) -> WeightPolicy:
        return make_policy(self.policy, self.default_limit)

    def failover_code_set(self) -> frozenset[int]:
        pattern = re.compile(self.failover_codes)
        return frozenset(code for code in range(100, 700) if pattern.search(str(code)))


class Pool:
    """Node name -> dispatcher URI, from the dispatcher list file (set
    DS_SET): the `duid` attribute names the node, else the URI's host."""

    def __init__(self, path: str, set_id: int) -> None:
        self.path = path
        self.set_id = set_id
        self.nodes: dict[str, str] = {}
        #: node -> its `rweight` (1 when absent or not a positive integer):
        #: the cold-start weights.
        self.rweights: dict[str, int] = {}
        #: node -> its agent's URI: the `agent` attribute, else None (then
        #: sip:<destination host>:AGENT_PORT).
        self.agents: dict[str, str | None] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = -1e9

    def current(self, now: float) -> dict[str, str]:
        if now - self._checked >= 1.0:
            self._checked = now
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._stamp = stamp
                self._read()
        return self.nodes

    def _read(self) -> None:
        nodes, rweights, agents = {}, {}, {}
        for line in Path(self.path).read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2 or fields[0] != str(self.set_id):
                continue
            uri = fields[1]
            attrs = dict(a.split("=", 1) for a in (fields[4] if len(fields) > 4 else "").split(";") if "=" in a)
            node = attrs.get("duid") or uri_host(uri)
            nodes[node] = uri
            rweight = attrs.get("rweight", "")
            rweights[node] = int(rweight) if rweight.isdigit() and int(rweight) > 0 else 1
            agents[node] = attrs.get("agent")
        self.nodes, self.rweights, self.agents = nodes, rweights, agents


def uri_host(uri: str) -> str:
    """The host of a SIP URI (an IPv6 reference without its brackets)."""
    rest = uri.split(":", 1)[1].split(";", 1)[0].rsplit("@", 1)[-1]
    if rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.split(":", 1)[0]


class SipStatus:
    """load-status reports and weighted dispatch with failover, for a KEMI
    script. See the module's documentation for the three calls."""

    def __init__(self, handler: object | None = None, **params: Any) -> None:
        _ksr()
        # Settings are read on first use in each process: the defines are
        # read through KSR.pv, which needs a message (mod_init has none).
        self._params = params
        self._settings: Settings | None = None
        self._policy: WeightPolicy | None = None
        self._codes: frozenset[int] = frozenset()
        self._pool: Pool | None = None
        self._rng = random.Random()
        self._rng_pid = -1
        self._decoded: dict[str, LoadStatus] = {}
        if handler is not None:
            self.attach(handler)

    def attach(self, handler: object) -> None:
        """Gives `handler` (your `kamailio` object) the functions Kamailio
        calls by name, and the reply/onsend routes app_python3 needs when
        it has none."""
        setattr(handler, FAILURE_ROUTE, self.failure)
        setattr(handler, SUBSCRIBE_ROUTE, self.subscribe_timer)
        setattr(handler, HTABLE_EVENT_ROUTE, self.htable_event)
        for name in ("ksr_reply_route", "ksr_onsend_route"):
            if not hasattr(handler, name):
                setattr(handler, name, _accept)

    @property
    def settings(self) -> Settings:
        return self._setup()[0]

    @property
    def policy(self) -> WeightPolicy:
        return self._setup()[1]

    @property
    def pool(self) -> Pool:
        return self._setup()[2]

    def _setup(self) -> tuple[Settings, WeightPolicy, Pool]:
        """The settings, policy and pool of this process, read on first use
        (the defines are read through KSR.pv, which needs a message)."""
        if self._settings is None or self._policy is None or self._pool is None:
            settings = Settings.from_defines(**self._params)
            try:
                self._policy = settings.make_policy()
                self._codes = settings.failover_code_set()
            except (ValueError, re.error) as exc:
                raise ConfigurationError(str(exc)) from exc
            self._pool = Pool(settings.ds_list, settings.ds_set)
            self._settings = settings
        return self._settings, self._policy, self._pool

    def _ready(self) -> bool:
        """Reads the settings; on a parameter it cannot use, logs it and
        answers 500 naming it, and returns False."""
        try:
            self._setup()
        except ConfigurationError as exc:
            KSR.err(f"load-status: sipstatus.kemi cannot run: {exc}\n")
            KSR.sl.sl_send_reply(500, _reason_phrase(f"sipstatus configuration: {exc}"))
            return False
        return True

    @property
    def rng(self) -> random.Random:
        # The script is loaded before Kamailio forks its workers: without a
        # fresh seed in each, every worker would draw the same sequence.
        if self._rng_pid != os.getpid():
            self._rng_pid = os.getpid()
            self._rng.seed()
        return self._rng

    # -- call 2: reports ----------------------------------------------------

    def reports(self) -> bool:
        """Answers a PUBLISH or NOTIFY with `Event: load-status` and returns
        True (your route then ends); returns False for anything else."""
        if not KSR.is_method_in("PN") or _event() != EVENT:
            return False
        if not self._ready():
            return True
        # A transaction first: a retransmission gets the same reply again
        # instead of being processed twice (a retransmitted refresh would
        # meet its own consumed entity tag and get 412).
        if KSR.tm.t_newtran() < 0:
            KSR.sl.sl_reply_error()
            return True
        if KSR.is_PUBLISH():
            self._publish()
        else:
            self._notify()
        return True

    # PUBLISH (RFC 3903 section 6)

    def _publish(self) -> None:
        cfg = self.settings
        expires = cfg.publish_default_expires
        header = KSR.hdr.get("Expires")
        if header is not None:
            if not header.strip().isdigit():
                KSR.tm.t_reply(400, "Bad Expires")
                return
            expires = min(int(header), cfg.publish_max_expires)
        # Spec 5.5 (RFC 3903 section 6): the entity tag (412, step 5) before
        # the expiration (423, step 6), before the body (steps 7 to 9).
        old = KSR.hdr.get("SIP-If-Match")
        node = None
        if old is not None:
            old = old.strip()
            node = KSR.htable.sht_get("etag", old)
            if node is None:
                KSR.tm.t_reply(412, "Conditional Request Failed")
                return
        if 0 < expires < cfg.publish_min_expires:
            KSR.hdr.append_to_reply(f"Min-Expires: {cfg.publish_min_expires}\r\n")
            KSR.tm.t_reply(423, "Interval Too Brief")
            return
        if old is None and not _has_body():
            KSR.tm.t_reply(400, "body: missing in an initial PUBLISH")
            return

        if expires == 0:
            assert old is not None and node is not None
            KSR.htable.sht_rm("etag", old)
            if KSR.htable.sht_get("pub", node) == old:
                self._forget(node)
            KSR.hdr.append_to_reply(f"SIP-ETag: {old}\r\nExpires: 0\r\n")
            KSR.tm.t_reply(200, "OK")
            return

        if _has_body():
            taken = self._take_body()
            if taken is None:
                return
            status, text = taken
            if node is not None and status.node != node:
                # Spec 5.5 step 10, reason phrase of 6.6.
                KSR.tm.t_reply(400, "Invalid load-status body: node (publication)")
                return
            if not self._store(status, text):
                return
            node = status.node
        assert node is not None
        etag = KSR.pv.get("$sruid")
        if old is not None:
            KSR.htable.sht_rm("etag", old)
        KSR.htable.sht_sets("etag", etag, node)
        KSR.htable.sht_setex("etag", etag, expires)
        KSR.htable.sht_sets("pub", node, etag)
        KSR.hdr.append_to_reply(f"SIP-ETag: {etag}\r\nExpires: {expires}\r\n")
        KSR.tm.t_reply(200, "OK")

    # NOTIFY

    def _notify(self) -> None:
        call_id = KSR.pv.get("$ci")
        node = KSR.htable.sht_get("subs", call_id)
        if KSR.siputils.has_totag() < 0 or node is None:
            KSR.tm.t_reply(481, "Subscription Does Not Exist")
            return
        current = (KSR.htable.sht_get("lssub", node) or "").split(";", 1)[0] == call_id
        if current:
            # This proxy's own subscription (WITH_SUBSCRIBE): the dialog a
            # refresh goes in.
            contact = KSR.pv.get("$(ct{nameaddr.uri})") or ""
            KSR.htable.sht_sets("lsdlg", call_id, f"{KSR.pv.get('$ft')};{contact}")
        header = KSR.hdr.get("Subscription-State") or ""
        state = header.split(";", 1)[0].strip()
        if state == "terminated":
            KSR.htable.sht_rm("subs", call_id)
            KSR.htable.sht_rm("lsdlg", call_id)
            if current:
                # Ended by the agent (a restart: probation;retry-after):
                # subscribe again after retry-after.
                KSR.htable.sht_rm("lssub", node)
                params = dict(p.strip().split("=", 1) for p in header.split(";")[1:] if "=" in p)
                retry = params.get("retry-after", "0")
                KSR.htable.sht_sets("lsretry", node, str(int(time.time()) + (int(retry) if retry.isdigit() else 0)))
            self._forget(node)
            KSR.tm.t_reply(200, "OK")
            return
        if _has_body():
            taken = self._take_body()
            if taken is None or not self._store(*taken):
                return
        KSR.tm.t_reply(200, "OK")

    # bodies

    def _take_body(self) -> tuple[LoadStatus, str] | None:
        """The decoded body and its text, or None after answering 415/400."""
        ctype = (KSR.pv.get("$cT") or "").split(";", 1)[0].strip().lower()
        if ctype != MEDIA_TYPE:
            KSR.hdr.append_to_reply(f"Accept: {MEDIA_TYPE}\r\n")
            KSR.tm.t_reply(415, "Unsupported Media Type")
            return None
        # $rb as hexadecimal: the exact octets, even when they are not UTF-8
        # (app_python3 would fail to turn those into a str).
        if KSR.pv.get("$cl") > MAX_BODY_OCTETS:
            data = b"\0" * KSR.pv.get("$cl")  # decode() reports the size
        else:
            data = bytes.fromhex(KSR.pv.get("$(rb{s.encode.hexa})") or "")
        try:
            status = decode(data)
        except StatusError as exc:
            # Spec 6.6: the reason phrase names member and rule; the codec's
            # longer explanation goes into a Warning and the log.
            detail = _reason_phrase(str(exc)).replace("\\", "\\\\").replace('"', '\\"')
            KSR.notice(f"load-status: rejected a report from {KSR.pv.get('$si')}: {detail}\n")
            KSR.hdr.append_to_reply(f'Warning: 399 {KSR.pv.get("$Ri")} "{detail}"\r\n')
            KSR.tm.t_reply(400, exc.reason_phrase)
            return None
        return status, data.decode("utf-8")

    def _store(self, status: LoadStatus, text: str) -> bool:
        """Takes a decoded status under the NodeTable rules (spec section 7).
        Answers 403 and returns False for a node outside the pool."""
        cfg = self.settings
        now = time.time()
        members = self.pool.current(now)
        node = status.node
        KSR.htable.sht_lock("ns", node)
        try:
            table = NodeTable([node] if node in members else [], auto_join=cfg.auto_join)
            stored = KSR.htable.sht_get("ns", node)
            if stored is not None:
                previous, received = self._load(stored)
                table.update(previous, received)
            outcome = table.update(status, now)
            if outcome is Outcome.ACCEPTED:
                KSR.htable.sht_sets("ns", node, json.dumps({"received": now, "body": text}))
        finally:
            KSR.htable.sht_unlock("ns", node)
        if outcome is Outcome.UNKNOWN_NODE:
            KSR.notice(f"load-status: node {node} ({KSR.pv.get('$si')}) is not in the pool\n")
            KSR.tm.t_reply(403, "node: not in the pool")
            return False
        if outcome is Outcome.OUT_OF_ORDER:
            KSR.info(f"load-status: {node} seq {status.seq} of {status.instance} is not newer: ignored\n")
            return True
        if node not in members:
            source = KSR.pv.get("$si")
            host = f"[{source}]" if ":" in source else source
            KSR.htable.sht_sets("joined", node, f"sip:{host}:{cfg.auto_join_port}")
            KSR.htable.sht_setex("joined", node, status.validity)
        KSR.notice(f"load-status: {node} {status.state.value} weight {status.weight} for {status.validity}s "
                   f"(instance {status.instance} seq {status.seq})\n")
        return True

    def _load(self, stored: str) -> tuple[LoadStatus, float]:
        """A status from the htable `ns`, decoded once per process."""
        entry = json.loads(stored)
        text = entry["body"]
        status = self._decoded.get(text)
        if status is None:
            if len(self._decoded) >= CACHE_SIZE:
                self._decoded.clear()
            status = self._decoded[text] = decode(text)
        return status, float(entry["received"])

    def _forget(self, node: str, *, joined: bool = True) -> None:
        KSR.htable.sht_rm("ns", node)
        KSR.htable.sht_rm("pub", node)
        if joined:
            KSR.htable.sht_rm("joined", node)
        KSR.notice(f"load-status: {node} forgotten\n")

    # -- call 3: dispatch -----------------------------------------------------

    def dispatch(self) -> bool:
        """Sets $du for a new call and arms the failover, and returns True;
        or answers 503 (500 naming a parameter it cannot use) and returns
        False."""
        if not self._ready():
            return False
        self._room_key()
        fresh, node = self._pick(())
        if node is None:
            KSR.sl.sl_send_reply(503, "No node accepts calls" if fresh else "No destination")
            return False
        return True

    def weights(self) -> dict[str, int]:
        """The weights the policy gives the pool now (0 for a node that takes
        no calls), or {} when no node has a fresh report."""
        fresh, weights, _ = self._weights(time.time())
        return weights if fresh else {}

    def _weights(self, now: float) -> tuple[bool, dict[str, int], dict[str, str]]:
        members = self.pool.current(now)
        table = NodeTable(members, auto_join=True)
        uris = dict(members)
        for node, stored in _stored():
            if node not in members:
                uri = KSR.htable.sht_get("joined", node)
                if uri is None:
                    continue
                uris[node] = uri
            status, received = self._load(stored)
            table.update(status, received)
        views = list(table.views(now))
        fresh = any(v.fresh for v in views)
        # Cold start: nobody has reported. The static relative weights (not
        # dispatcher's algorithm 11: with more than about 25 destinations it
        # sends a quarter of all calls to the first, kamailio issue 2698).
        return fresh, (self.policy.weights(views) if fresh else dict(self.pool.rweights)), uris

    def _pick(self, tried: tuple[str, ...]) -> tuple[bool, str | None]:
        """Chooses a node at random in proportion to the weights, among the
        nodes with a weight above 0 whose destination dispatcher holds active
        (ds_is_active_uri) and that are not in `tried`. Sets $du to its URI,
        records it in $avp(ls_tried) and arms the failover. Returns (any
        node has a fresh report, the node or None)."""
        cfg = self.settings
        now = time.time()
        members = self.pool.current(now)
        fresh, weights, uris = self._weights(now)
        candidates = [
            (node, weight) for node, weight in weights.items()
            if weight > 0 and node not in tried
            and (node not in members or KSR.dispatcher.ds_is_active_uri(cfg.ds_set, uris[node]) > 0)
        ]
        if not candidates:
            return fresh, None
        room_node, announced = self._room_node(dict(candidates))
        node = room_node or self.rng.choices([n for n, _ in candidates], [w for _, w in candidates])[0]
        self._place_room(node, announced)
        # $du through the pv (not KSR.setdsturi): assigning $du marks the
        # Request-URI as new, without which tm has no branch to add in a
        # failure route ("no branches for forwarding", 5.6.3).
        KSR.pv.sets("$du", uris[node])
        KSR.pv.sets("$avp(ls_tried)", node)
        KSR.tm.t_on_failure(FAILURE_ROUTE)
        # No answer at all (not even 100 Trying) within this: try the next.
        KSR.tm.t_set_fr(0, cfg.failover_timeout)
        if fresh:
            KSR.dbg(f"load-status: call to {node} ({uris[node]}), weights {dict(candidates)}\n")
        else:
            KSR.info(f"load-status: no fresh report, rweight chose {node} ({uris[node]})\n")
        return fresh, node

    # -- conference rooms (spec/load-affinity.md 7.2) ---------------------------

    def _room_key(self) -> None:
        """$avp(ls_room) = the affinity key of the conference room this call
        names: `X-Exec-App-Data` when `X-Exec-App` is `Conference`, else,
        with AFFINITY_RURI 1, the Request-URI user; unset otherwise."""
        room = None
        if (KSR.hdr.get("X-Exec-App") or "").strip() == "Conference":
            room = (KSR.hdr.get("X-Exec-App-Data") or "").strip() or None
        if room is None and self.settings.affinity_ruri == 1:
            room = KSR.pv.get("$rU")
        if room:
            KSR.pv.sets("$avp(ls_room)", affinity_key(room))

    @staticmethod
    def _room_node(candidates: dict[str, int]) -> tuple[str | None, bool]:
        """The node for this call's room among `candidates` (nodes that take
        calls and that the call has not tried): the one hosting the room
        (htable `affinity`), else the one this proxy placed it on (htable
        `placed`); and whether it was the hosting one."""
        key = KSR.pv.get("$avp(ls_room)")
        if key is None:
            return None, False
        for table, announced in (("affinity", True), ("placed", False)):
            node = KSR.htable.sht_get(table, key)
            if node is not None and node in candidates:
                return node, announced
        return None, False

    @staticmethod
    def _place_room(node: str, announced: bool) -> None:
        """The room goes where its latest call goes, unless that node was
        chosen for hosting it: should it refuse, the placement must name
        where the retry went."""
        key = KSR.pv.get("$avp(ls_room)")
        if key is not None and not announced:
            KSR.htable.sht_sets("placed", key, node)

    # -- failover (failure route ksr_sipstatus_failure) -------------------------

    def failure(self, msg: object) -> int:
        """A node refused the call (FAILOVER_CODES) or did not answer in
        time: another node, by the same weights, never one this call tried,
        at most MAX_ATTEMPTS in all. When none is left the caller gets the
        best answer, or this proxy's own 503 for the nodes' 503 (tm never
        forwards a 503: RFC 3261 section 16.7)."""
        cfg = self.settings
        if KSR.tm.t_is_canceled() > 0:
            return 1
        failed = KSR.pv.get("$du")
        if KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_branch_replied() < 0:
            self._mark_silent(failed)
        code = KSR.pv.get("$T_reply_code")
        if code not in self._codes:
            return 1
        tried = _tried()
        node = None
        if len(tried) < cfg.max_attempts:
            _, node = self._pick(tried)
        if node is None:
            KSR.notice(f"load-status: {code} from {failed}, {len(tried)} nodes tried, no other takes calls\n")
            if code == 503:
                KSR.tm.t_reply(503, "No node accepts calls")
            return 1
        KSR.info(f"load-status: {code} from {failed}, trying {node}\n")
        if KSR.tm.t_relay() < 0:
            KSR.err(f"load-status: cannot relay to {KSR.pv.get('$du')}\n")
        return 1

    def _mark_silent(self, uri: str) -> None:
        """A destination that did not answer at all is inactive (and probed)
        until it answers an OPTIONS again; without probing it would stay
        out for good, so nothing is marked then."""
        cfg = self.settings
        if cfg.ping_interval <= 0:
            return
        request = {"jsonrpc": "2.0", "method": "dispatcher.set_state", "params": ["ip", cfg.ds_set, uri], "id": 1}
        KSR.jsonrpcs.exec(json.dumps(request))
        if KSR.pv.get("$jsonrpl(code)") == 200:
            KSR.notice(f"load-status: {uri} did not answer: inactive until it answers OPTIONS\n")
        else:
            KSR.err(f"load-status: cannot mark {uri} inactive: {KSR.pv.get('$jsonrpl(text)')}\n")

    # -- subscribing to the agents (rtimer route ksr_sipstatus_subscribe) ----------

    def subscribe_timer(self, msg: object, evname: str = "") -> int:
        """Every second (rtimer sipstatus_subscribe of sipstatus.cfg, with
        WITH_SUBSCRIBE), as the native drop-in's
        route[SIPSTATUS_SUBSCRIBE_ALL]: a new subscription where there is
        none, or where the node's reports stopped and the last SUBSCRIBE is
        SUBSCRIBE_RETRY s old; a refresh in the dialog when a fifth of the
        duration is left. State in the htables lssub (node ->
        "Call-ID;From-tag;CSeq;expiry;sent"), lsdlg (Call-ID -> "agent's
        tag;agent's Contact") and lsretry (node -> not before)."""
        cfg = self.settings
        if not cfg.subscribe:
            return 1
        now = int(time.time())
        pool = self.pool
        pool.current(now)
        for node, uri in pool.nodes.items():
            retry = KSR.htable.sht_get("lsretry", node)
            if retry is not None and int(retry) > now:
                continue
            agent = pool.agents.get(node) or f"sip:{uri_host(uri)}:{cfg.agent_port}"
            current = KSR.htable.sht_get("lssub", node)
            if current is None:
                self._subscribe_new(node, agent, now)
                continue
            call_id, tag, cseq, until, sent = current.split(";")
            if now - int(sent) < cfg.subscribe_retry:
                continue
            stored = KSR.htable.sht_get("ns", node)
            fresh = stored is not None and self._fresh(stored, now)
            if not fresh or int(until) <= now:
                KSR.htable.sht_rm("subs", call_id)  # its NOTIFYs get 481 from now on
                self._subscribe_new(node, agent, now)
            elif int(until) - now <= cfg.subscribe_expires / 5:
                dialog = KSR.htable.sht_get("lsdlg", call_id)
                if dialog is None:
                    self._subscribe_new(node, agent, now)
                else:
                    remote_tag, target = dialog.split(";", 1)
                    self._send_subscribe(node, target, f"<{agent}>;tag={remote_tag}", call_id, tag, int(cseq) + 1, now)
        return 1

    def _fresh(self, stored: str, now: float) -> bool:
        status, received = self._load(stored)
        return received + status.validity > now

    def _subscribe_new(self, node: str, agent: str, now: int) -> None:
        call_id = f"{KSR.pv.get('$sruid')}@sipstatus"
        # Known before the first NOTIFY can come (it may overtake the 200).
        KSR.htable.sht_sets("subs", call_id, node)
        self._send_subscribe(node, agent, f"<{agent}>", call_id, secrets.token_hex(6), 1, now)
        KSR.info(f"load-status: subscribing to {node} at {agent}\n")

    def _send_subscribe(self, node: str, ruri: str, to: str, call_id: str, tag: str, cseq: int, now: int) -> None:
        cfg = self.settings
        headers = (f"From: <{cfg.subscribe_contact}>;tag={tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n"
                   f"CSeq: {cseq} SUBSCRIBE\r\nContact: <{cfg.subscribe_contact}>\r\nEvent: {EVENT}\r\n"
                   f"Accept: {MEDIA_TYPE}\r\nExpires: {cfg.subscribe_expires}\r\n")
        KSR.htable.sht_sets("lssub", node, f"{call_id};{tag};{cseq};{now + cfg.subscribe_expires};{now}")
        if KSR.tm.t_uac_send("SUBSCRIBE", ruri, "", "", headers, "") < 0:
            KSR.err(f"load-status: cannot send a SUBSCRIBE to {node} at {ruri}\n")

    # -- htable events (event_callback ksr_sipstatus_htable_event) -------------------

    def htable_event(self, msg: object, evname: str) -> int:
        """The expiry of an `etag` item (a publication not refreshed in
        time ends, RFC 3903) or of a `joined` item (an auto-joined node
        whose report went stale leaves the pool); other events are not
        this module's and are left alone."""
        if evname == "htable:expired:etag":
            # Unless its node has published again under another tag since.
            node = KSR.pv.get("$shtrecord(value)")
            if node is not None and KSR.htable.sht_get("pub", node) == KSR.pv.get("$shtrecord(key)"):
                self._forget(node)
        elif evname == "htable:expired:joined":
            # htable frees the expiring item after this callback: removing
            # it here too would free it twice.
            self._forget(KSR.pv.get("$shtrecord(key)"), joined=False)
        return 1


def _accept(msg: object) -> int:
    return 1


def _event() -> str | None:
    value = KSR.hdr.get("Event")
    return None if value is None else value.split(";", 1)[0].strip()


def _has_body() -> bool:
    return (KSR.pv.get("$cl") or 0) > 0


def _tried() -> tuple[str, ...]:
    """The nodes this call went to, from $avp(ls_tried)."""
    out: list[str] = []
    while (node := KSR.pv.get(f"$(avp(ls_tried)[{len(out)}])")) is not None:
        out.append(node)
    return tuple(out)


def _stored() -> list[tuple[str, str]]:
    """Every (node, stored status) of the htable `ns`."""
    out = []
    KSR.htable.sht_iterator_start("ns", "ns")
    try:
        while KSR.htable.sht_iterator_next("ns") > 0:
            out.append((KSR.pv.get("$shtitkey(ns)"), KSR.pv.get("$shtitval(ns)")))
    finally:
        KSR.htable.sht_iterator_end("ns")
    return out


def _reason_phrase(text: str) -> str:
    """A reason phrase carries no CR, LF or other control characters."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:200]
