"""sipstatus under Kamailio's app_python3 (KEMI): the routing logic of
kamailio.cfg beside this file, written in Python with the sipstatus library.

It does what the native example (../native/kamailio.cfg) does, with the
library instead of script arithmetic:

- PUBLISH with `Event: load-status`: Kamailio is the Event State Compositor
  (RFC 3903): entity tags in the htable `etag`, 412 for an unknown
  SIP-If-Match, 423 + Min-Expires below PUBLISH_MIN_EXPIRES, Expires: 0
  removes, the 200 carries SIP-ETag and the granted Expires;
- in-dialog NOTIFY with `Event: load-status` for a subscription whose
  Call-ID is in the htable `subs` (filled by whoever subscribes, e.g.
  `kamcmd htable.sets subs <Call-ID> <node>`); anything else gets 481;
- every body goes through `sipstatus.codec.decode`, the full validator of
  spec section 6: a bad body gets 400 with the reason phrase of spec 6.6
  ("Invalid load-status body: weight (maximum)") and the codec's longer
  message in a Warning header ("weight: 101 is above the maximum 100
  (rule: maximum)"), and nothing changes;
- ordering (instance, seq) and staleness (validity) are those of
  `sipstatus.nodetable.NodeTable`, and the weights come from a
  `sipstatus.policy` policy (FreeSlotsPolicy by default: weight in
  proportion to free call slots, capacity x asterisk.limit);
- each INVITE goes to a node drawn at random in proportion to those weights,
  among the destinations dispatcher holds active (ds_is_active_uri); with no
  fresh report at all (cold start) in proportion to the `rweight`s of the
  dispatcher list;
- conference rooms (spec/load-affinity.md 7.2): a call naming a room
  (`X-Exec-App: Conference`, `X-Exec-App-Data: <room>`; or, with
  AFFINITY_RURI 1, the Request-URI user) goes to the node hosting it (htable
  `affinity`, pushed by `sipstatus sidecar` with [affinity] enabled), else
  to the node this proxy placed it on in the last 10 s (htable `placed`),
  when that node is among those the weighted choice may take; otherwise by
  weight, and the choice is recorded in `placed`;
- failover: a node that refuses a call (FAILOVER_CODES) or does not answer
  within FAILOVER_TIMEOUT ms loses it to another node drawn the same way,
  never one the call tried, at most MAX_ATTEMPTS nodes per call; a node
  that did not answer at all is marked inactive in dispatcher until it
  answers OPTIONS again.

Python state lives in each Kamailio worker process, so nothing shared is
kept in Python: the last accepted body of each node and its time of receipt
are in the htable `ns` (one JSON string per node), and each process rebuilds
a NodeTable from it when it needs one. The pool (node -> URI) is read by each
process from the dispatcher list file itself (DS_LIST), again when the file
changes.

With WITH_SUBSCRIBE defined, Kamailio also subscribes to every node's
agent by itself (`ksr_subscribe_timer`, run every second by rtimer), as the
native drop-in does with the same defines (AGENT_PORT, SUBSCRIBE_CONTACT,
SUBSCRIBE_EXPIRES, SUBSCRIBE_RETRY) and the same `agent` attribute of the
dispatcher destinations.

Settings are the -A defines of kamailio.cfg, read with $def(): DS_LIST,
DS_SET, DS_PING_INTERVAL, FAILOVER_CODES, MAX_ATTEMPTS, FAILOVER_TIMEOUT,
PUBLISH_DEFAULT_EXPIRES, PUBLISH_MIN_EXPIRES, PUBLISH_MAX_EXPIRES,
WITH_AUTOJOIN, AUTOJOIN_PORT, POLICY (a name in sipstatus.policy.POLICIES)
and DEFAULT_LIMIT (FreeSlotsPolicy's limit for a node that reports none).

The library: in production the Debian package python3-sipstatus installs it
for Debian's /usr/bin/python3, which is the interpreter app_python3 embeds.
Until then, set SIPSTATUS_PATH (directories, separated by ':') in
Kamailio's environment to a checkout of the repository; failing that, the
checkout this file sits in is used.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import sys
import time
from pathlib import Path


def _find_library() -> None:
    extra = [p for p in os.environ.get("SIPSTATUS_PATH", "").split(os.pathsep) if p]
    sys.path[:0] = [p for p in extra if p not in sys.path]
    try:
        import sipstatus  # noqa: F401
    except ImportError:
        # packaging/examples/kamailio/kemi/ -> the root of the checkout
        sys.path.insert(0, str(Path(__file__).resolve().parents[4]))


_find_library()

import KSR  # noqa: E402  (the module app_python3 provides)

from sipstatus.affinity import affinity_key  # noqa: E402
from sipstatus.codec import MAX_BODY_OCTETS, MEDIA_TYPE, StatusError, decode  # noqa: E402
from sipstatus.nodetable import NodeTable, Outcome  # noqa: E402
from sipstatus.policy import POLICIES, FreeSlotsPolicy, WeightPolicy  # noqa: E402
from sipstatus.status import LoadStatus  # noqa: E402

EVENT = "load-status"
#: Decoded bodies kept per process, by body text (a node's body changes with
#: each report; old ones are dropped when the cache is full).
CACHE_SIZE = 1024


def mod_init() -> kamailio:
    """Called by app_python3 once, in the main process, before the fork."""
    return kamailio()


class Settings:
    """The -A defines of kamailio.cfg this script reads."""

    def __init__(self) -> None:
        self.ds_list = _define("DS_LIST", "/etc/kamailio/dispatcher.list").strip('"')
        self.ds_set = int(_define("DS_SET", "1"))
        self.default_expires = int(_define("PUBLISH_DEFAULT_EXPIRES", "600"))
        self.min_expires = int(_define("PUBLISH_MIN_EXPIRES", "60"))
        self.max_expires = int(_define("PUBLISH_MAX_EXPIRES", "3600"))
        self.auto_join = KSR.pv.get("$def(WITH_AUTOJOIN)") is not None
        self.auto_join_port = int(_define("AUTOJOIN_PORT", "5060"))
        policy = _define("POLICY", "free-slots").strip('"')
        limit = int(_define("DEFAULT_LIMIT", "100"))
        self.policy: WeightPolicy = FreeSlotsPolicy(default_limit=limit) if policy == "free-slots" else POLICIES[policy]()
        self.ping_interval = int(_define("DS_PING_INTERVAL", "5"))
        codes = _define("FAILOVER_CODES", "^(408|480|486|500|502|503|504)$").strip('"')
        self.failover_codes = frozenset(code for code in range(100, 700) if re.search(codes, str(code)))
        self.max_attempts = int(_define("MAX_ATTEMPTS", "3"))
        self.failover_timeout = int(_define("FAILOVER_TIMEOUT", "2000"))
        self.subscribe = KSR.pv.get("$def(WITH_SUBSCRIBE)") is not None
        self.agent_port = int(_define("AGENT_PORT", "5070"))
        self.contact = _define("SUBSCRIBE_CONTACT", "sip:load-status@127.0.0.1:5060").strip('"')
        self.subscribe_expires = int(_define("SUBSCRIBE_EXPIRES", "600"))
        self.subscribe_retry = int(_define("SUBSCRIBE_RETRY", "10"))


def _define(name: str, default: str) -> str:
    value = KSR.pv.get(f"$def({name})")
    return default if value in (None, "") else str(value)


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
        self._checked = 0.0

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
            node = attrs.get("duid") or _uri_host(uri)
            nodes[node] = uri
            rweight = attrs.get("rweight", "")
            rweights[node] = int(rweight) if rweight.isdigit() and int(rweight) > 0 else 1
            agents[node] = attrs.get("agent")
        self.nodes, self.rweights, self.agents = nodes, rweights, agents


def _uri_host(uri: str) -> str:
    rest = uri.split(":", 1)[1].split(";", 1)[0].rsplit("@", 1)[-1]
    if rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.split(":", 1)[0]


class kamailio:  # noqa: N801  (the name app_python3 looks for)
    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.pool: Pool | None = None
        self.rng = random.Random()
        self._decoded: dict[str, LoadStatus] = {}

    def child_init(self, rank: int) -> int:
        # The script was loaded before Kamailio forked its workers: without a
        # fresh seed every worker would draw the same "random" sequence.
        self.rng.seed()
        return 0

    # -- routes Kamailio calls besides the request route ----------------------
    # app_python3 (5.6.3) looks these up on every message it sends or
    # receives as a reply; a missing one leaves an AttributeError set, and
    # the next KSR call in the worker fails with SystemError.

    def ksr_onsend_route(self, msg: object) -> int:
        return 1

    def ksr_reply_route(self, msg: object) -> int:
        return 1

    # -- request routing ----------------------------------------------------

    def setup(self) -> None:
        """Reads the settings on first use in this process (a failure route
        may run in tm's timer process, which never saw a request)."""
        if self.settings is None:
            self.settings = Settings()
            self.pool = Pool(self.settings.ds_list, self.settings.ds_set)

    def ksr_request_route(self, msg: object) -> int:
        self.setup()
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return 1
        if KSR.sanity.sanity_check(17895, 7) < 0:
            return -1
        if KSR.is_CANCEL():
            if KSR.tm.t_check_trans() > 0:
                self.relay()
            return 1
        if KSR.is_method_in("PN") and self.event() == EVENT:
            # A transaction first: a retransmission gets the same reply again
            # instead of being processed twice.
            if KSR.tm.t_newtran() < 0:
                KSR.sl.sl_reply_error()
                return 1
            if KSR.is_PUBLISH():
                self.publish()
            else:
                self.notify()
            return 1
        if KSR.siputils.has_totag() > 0:
            self.within_dialog()
            return 1
        if not KSR.is_ACK():
            if KSR.tmx.t_precheck_trans() > 0:
                KSR.tm.t_check_trans()
                return 1
            if KSR.tm.t_check_trans() == 0:
                return 1
        if KSR.is_OPTIONS() and KSR.is_myself_ruri() and KSR.pv.get("$rU") is None:
            KSR.sl.sl_send_reply(200, "OK")
            return 1
        if KSR.is_method_in("PS"):
            KSR.hdr.append_to_reply(f"Allow-Events: {EVENT}\r\n")
            KSR.sl.sl_send_reply(489, "Bad Event")
            return 1
        if not KSR.is_INVITE():
            KSR.hdr.append_to_reply("Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, PUBLISH, NOTIFY\r\n")
            KSR.sl.sl_send_reply(405, "Method Not Allowed")
            return 1
        KSR.hdr.remove("Route")
        KSR.rr.record_route()
        if self.dispatch():
            self.relay()
        return 1

    def within_dialog(self) -> None:
        if KSR.rr.loose_route() > 0:
            self.relay()
        elif KSR.is_ACK():
            if KSR.tm.t_check_trans() > 0:
                self.relay()
        else:
            KSR.sl.sl_send_reply(404, "Not here")

    def relay(self) -> None:
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()

    @staticmethod
    def event() -> str | None:
        value = KSR.hdr.get("Event")
        return None if value is None else value.split(";", 1)[0].strip()

    # -- PUBLISH (RFC 3903 section 6) ---------------------------------------

    def publish(self) -> None:
        cfg = self.settings
        assert cfg is not None
        expires = cfg.default_expires
        header = KSR.hdr.get("Expires")
        if header is not None:
            if not header.strip().isdigit():
                KSR.tm.t_reply(400, "Bad Expires")
                return
            expires = min(int(header), cfg.max_expires)
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
        if 0 < expires < cfg.min_expires:
            KSR.hdr.append_to_reply(f"Min-Expires: {cfg.min_expires}\r\n")
            KSR.tm.t_reply(423, "Interval Too Brief")
            return
        if old is None and not self.has_body():
            KSR.tm.t_reply(400, "body: missing in an initial PUBLISH")
            return

        if expires == 0:
            assert old is not None and node is not None
            KSR.htable.sht_rm("etag", old)
            if KSR.htable.sht_get("pub", node) == old:
                self.forget(node)
            KSR.hdr.append_to_reply(f"SIP-ETag: {old}\r\nExpires: 0\r\n")
            KSR.tm.t_reply(200, "OK")
            return

        status = None
        if self.has_body():
            taken = self.take_body()
            if taken is None:
                return
            status, text = taken
            if node is not None and status.node != node:
                # Spec 5.5 step 10, reason phrase of 6.6.
                KSR.tm.t_reply(400, "Invalid load-status body: node (publication)")
                return
            if not self.store(status, text):
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

    # -- NOTIFY ---------------------------------------------------------------

    def notify(self) -> None:
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
            self.forget(node)
            KSR.tm.t_reply(200, "OK")
            return
        if self.has_body():
            taken = self.take_body()
            if taken is None or not self.store(*taken):
                return
        KSR.tm.t_reply(200, "OK")

    # -- bodies ---------------------------------------------------------------

    @staticmethod
    def has_body() -> bool:
        return (KSR.pv.get("$cl") or 0) > 0

    def take_body(self) -> tuple[LoadStatus, str] | None:
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

    def store(self, status: LoadStatus, text: str) -> bool:
        """Takes a decoded status under the NodeTable rules (spec section 7).
        Answers 403 and returns False for a node outside the pool."""
        cfg, pool = self.settings, self.pool
        assert cfg is not None and pool is not None
        now = time.time()
        members = pool.current(now)
        node = status.node
        KSR.htable.sht_lock("ns", node)
        try:
            table = NodeTable([node] if node in members else [], auto_join=cfg.auto_join)
            stored = KSR.htable.sht_get("ns", node)
            if stored is not None:
                previous, received = self.load(stored)
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

    def load(self, stored: str) -> tuple[LoadStatus, float]:
        """A status from the htable `ns`, decoded once per process."""
        entry = json.loads(stored)
        text = entry["body"]
        status = self._decoded.get(text)
        if status is None:
            if len(self._decoded) >= CACHE_SIZE:
                self._decoded.clear()
            status = self._decoded[text] = decode(text)
        return status, float(entry["received"])

    def forget(self, node: str, *, joined: bool = True) -> None:
        KSR.htable.sht_rm("ns", node)
        KSR.htable.sht_rm("pub", node)
        if joined:
            KSR.htable.sht_rm("joined", node)
        KSR.notice(f"load-status: {node} forgotten\n")

    # -- calls ------------------------------------------------------------------

    def dispatch(self) -> bool:
        """Sets $du for a new call and arms the failover; False after
        answering 503."""
        self.room_key()
        fresh, node = self.pick(())
        if node is None:
            KSR.sl.sl_send_reply(503, "No node accepts calls" if fresh else "No destination")
            return False
        return True

    def pick(self, tried: tuple[str, ...]) -> tuple[bool, str | None]:
        """Chooses a node at random in proportion to the weights, among the
        nodes with a weight above 0 whose destination dispatcher holds active
        (ds_is_active_uri) and that are not in `tried`; with no fresh report
        from any node (cold start), by the `rweight`s of the dispatcher list.
        Sets $du to its URI, records it in $avp(ls_tried) and asks for
        `ksr_failure_failover`. Returns (any node has a fresh report, the
        node or None)."""
        cfg, pool = self.settings, self.pool
        assert cfg is not None and pool is not None
        now = time.time()
        members = pool.current(now)
        table = NodeTable(members, auto_join=True)
        uris = dict(members)
        for node, stored in self.stored():
            if node not in members:
                uri = KSR.htable.sht_get("joined", node)
                if uri is None:
                    continue
                uris[node] = uri
            status, received = self.load(stored)
            table.update(status, received)
        views = list(table.views(now))
        fresh = any(v.fresh for v in views)
        # Cold start: nobody has reported. The static relative weights (not
        # dispatcher's algorithm 11: with more than about 25 destinations it
        # sends a quarter of all calls to the first, kamailio issue 2698).
        weights = cfg.policy.weights(views) if fresh else pool.rweights
        candidates = [
            (node, weight) for node, weight in weights.items()
            if weight > 0 and node not in tried
            and (node not in members or KSR.dispatcher.ds_is_active_uri(cfg.ds_set, uris[node]) > 0)
        ]
        if not candidates:
            return fresh, None
        room_node, announced = self.room_node(dict(candidates))
        node = room_node or self.rng.choices([n for n, _ in candidates], [w for _, w in candidates])[0]
        self.place_room(node, announced)
        # $du through the pv (not KSR.setdsturi): assigning $du marks the
        # Request-URI as new, without which tm has no branch to add in a
        # failure route ("no branches for forwarding", 5.6.3).
        KSR.pv.sets("$du", uris[node])
        KSR.pv.sets("$avp(ls_tried)", node)
        KSR.tm.t_on_failure("ksr_failure_failover")
        # No answer at all (not even 100 Trying) within this: try the next.
        KSR.tm.t_set_fr(0, cfg.failover_timeout)
        if fresh:
            KSR.dbg(f"load-status: call to {node} ({uris[node]}), weights {dict(candidates)}\n")
        else:
            KSR.info(f"load-status: no fresh report, rweight chose {node} ({uris[node]})\n")
        return fresh, node

    # -- conference rooms (spec/load-affinity.md 7.2) -------------------------

    @staticmethod
    def room_key() -> None:
        """$avp(ls_room) = the affinity key of the conference room this call
        names: `X-Exec-App-Data` when `X-Exec-App` is `Conference`, else,
        with AFFINITY_RURI 1, the Request-URI user; unset otherwise."""
        room = None
        if (KSR.hdr.get("X-Exec-App") or "").strip() == "Conference":
            room = (KSR.hdr.get("X-Exec-App-Data") or "").strip() or None
        if room is None and _define("AFFINITY_RURI", "0") == "1":
            room = KSR.pv.get("$rU")
        if room:
            KSR.pv.sets("$avp(ls_room)", affinity_key(room))

    @staticmethod
    def room_node(candidates: dict[str, int]) -> tuple[str | None, bool]:
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
    def place_room(node: str, announced: bool) -> None:
        """The room goes where its latest call goes, unless that node was
        chosen for hosting it: should it refuse, the placement must name
        where the retry went."""
        key = KSR.pv.get("$avp(ls_room)")
        if key is not None and not announced:
            KSR.htable.sht_sets("placed", key, node)

    # -- failover -------------------------------------------------------------

    def ksr_failure_failover(self, msg: object) -> int:
        """A node refused the call (FAILOVER_CODES) or did not answer in
        time: another node, by the same weights, never one this call tried,
        at most MAX_ATTEMPTS in all. When none is left the caller gets the
        best answer, or this proxy's own 503 for the nodes' 503 (tm never
        forwards a 503: RFC 3261 section 16.7)."""
        self.setup()
        cfg = self.settings
        assert cfg is not None
        if KSR.tm.t_is_canceled() > 0:
            return 1
        failed = KSR.pv.get("$du")
        if KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_branch_replied() < 0:
            self.mark_silent(failed)
        code = KSR.pv.get("$T_reply_code")
        if code not in cfg.failover_codes:
            return 1
        tried = self.tried()
        node = None
        if len(tried) < cfg.max_attempts:
            _, node = self.pick(tried)
        if node is None:
            KSR.notice(f"load-status: {code} from {failed}, {len(tried)} nodes tried, no other takes calls\n")
            if code == 503:
                KSR.tm.t_reply(503, "No node accepts calls")
            return 1
        KSR.info(f"load-status: {code} from {failed}, trying {node}\n")
        if KSR.tm.t_relay() < 0:
            KSR.err(f"load-status: cannot relay to {KSR.pv.get('$du')}\n")
        return 1

    @staticmethod
    def tried() -> tuple[str, ...]:
        """The nodes this call went to, from $avp(ls_tried)."""
        out = []
        while (node := KSR.pv.get(f"$(avp(ls_tried)[{len(out)}])")) is not None:
            out.append(node)
        return tuple(out)

    def mark_silent(self, uri: str) -> None:
        """A destination that did not answer at all is inactive (and probed)
        until it answers an OPTIONS again; without probing it would stay
        out for good, so nothing is marked then."""
        cfg = self.settings
        assert cfg is not None
        if cfg.ping_interval <= 0:
            return
        request = {"jsonrpc": "2.0", "method": "dispatcher.set_state", "params": ["ip", cfg.ds_set, uri], "id": 1}
        KSR.jsonrpcs.exec(json.dumps(request))
        if KSR.pv.get("$jsonrpl(code)") == 200:
            KSR.notice(f"load-status: {uri} did not answer: inactive until it answers OPTIONS\n")
        else:
            KSR.err(f"load-status: cannot mark {uri} inactive: {KSR.pv.get('$jsonrpl(text)')}\n")

    @staticmethod
    def stored() -> list[tuple[str, str]]:
        """Every (node, stored status) of the htable `ns`."""
        out = []
        KSR.htable.sht_iterator_start("ns", "ns")
        try:
            while KSR.htable.sht_iterator_next("ns") > 0:
                out.append((KSR.pv.get("$shtitkey(ns)"), KSR.pv.get("$shtitval(ns)")))
        finally:
            KSR.htable.sht_iterator_end("ns")
        return out

    # -- subscribing to the agents (WITH_SUBSCRIBE) ------------------------------

    def ksr_subscribe_timer(self, msg: object, evname: str = "") -> int:
        """Every second (rtimer sipstatus_subscribe; it passes the timer name
        as `evname`), as the native
        drop-in's route[SIPSTATUS_SUBSCRIBE_ALL]: a new subscription where
        there is none, or where the node's reports stopped and the last
        SUBSCRIBE is SUBSCRIBE_RETRY s old; a refresh in the dialog when a
        fifth of the duration is left. State in the htables lssub (node ->
        "Call-ID;From-tag;CSeq;expiry;sent"), lsdlg (Call-ID -> "agent's
        tag;agent's Contact") and lsretry (node -> not before)."""
        self.setup()
        cfg, pool = self.settings, self.pool
        assert cfg is not None and pool is not None
        now = int(time.time())
        pool.current(now)
        for node, uri in pool.nodes.items():
            retry = KSR.htable.sht_get("lsretry", node)
            if retry is not None and int(retry) > now:
                continue
            agent = pool.agents.get(node) or f"sip:{_uri_host(uri)}:{cfg.agent_port}"
            current = KSR.htable.sht_get("lssub", node)
            if current is None:
                self.subscribe_new(node, agent, now)
                continue
            call_id, tag, cseq, until, sent = current.split(";")
            if now - int(sent) < cfg.subscribe_retry:
                continue
            stored = KSR.htable.sht_get("ns", node)
            fresh = stored is not None and self._fresh(stored, now)
            if not fresh or int(until) <= now:
                KSR.htable.sht_rm("subs", call_id)  # its NOTIFYs get 481 from now on
                self.subscribe_new(node, agent, now)
            elif int(until) - now <= cfg.subscribe_expires / 5:
                dialog = KSR.htable.sht_get("lsdlg", call_id)
                if dialog is None:
                    self.subscribe_new(node, agent, now)
                else:
                    remote_tag, target = dialog.split(";", 1)
                    self.send_subscribe(node, target, f"<{agent}>;tag={remote_tag}", call_id, tag, int(cseq) + 1, now)
        return 1

    def _fresh(self, stored: str, now: float) -> bool:
        status, received = self.load(stored)
        return received + status.validity > now

    def subscribe_new(self, node: str, agent: str, now: int) -> None:
        call_id = f"{KSR.pv.get('$sruid')}@sipstatus"
        # Known before the first NOTIFY can come (it may overtake the 200).
        KSR.htable.sht_sets("subs", call_id, node)
        self.send_subscribe(node, agent, f"<{agent}>", call_id, secrets.token_hex(6), 1, now)
        KSR.info(f"load-status: subscribing to {node} at {agent}\n")

    def send_subscribe(self, node: str, ruri: str, to: str, call_id: str, tag: str, cseq: int, now: int) -> None:
        cfg = self.settings
        assert cfg is not None
        headers = (f"From: <{cfg.contact}>;tag={tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n"
                   f"CSeq: {cseq} SUBSCRIBE\r\nContact: <{cfg.contact}>\r\nEvent: {EVENT}\r\n"
                   f"Accept: {MEDIA_TYPE}\r\nExpires: {cfg.subscribe_expires}\r\n")
        KSR.htable.sht_sets("lssub", node, f"{call_id};{tag};{cseq};{now + cfg.subscribe_expires};{now}")
        if KSR.tm.t_uac_send("SUBSCRIBE", ruri, "", "", headers, "") < 0:
            KSR.err(f"load-status: cannot send a SUBSCRIBE to {node} at {ruri}\n")

    # -- htable events ------------------------------------------------------

    def ksr_htable_event(self, msg: object, evname: str) -> int:
        if evname == "htable:expired:etag":
            # A publication that was not refreshed in time ends (RFC 3903),
            # unless its node has published again under another tag since.
            node = KSR.pv.get("$shtrecord(value)")
            if node is not None and KSR.htable.sht_get("pub", node) == KSR.pv.get("$shtrecord(key)"):
                self.forget(node)
        elif evname == "htable:expired:joined":
            # An auto-joined node whose report went stale leaves the pool.
            # htable frees the expiring item after this callback: removing
            # it here too would free it twice.
            self.forget(KSR.pv.get("$shtrecord(key)"), joined=False)
        return 1


def _reason_phrase(text: str) -> str:
    """A reason phrase carries no CR, LF or other control characters."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:200]
