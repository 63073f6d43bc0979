"""sipstatus under Kamailio's app_python3 (KEMI): a complete routing script
(kamailio.cfg beside this file runs it) built on the library's KEMI module,
sipstatus.kemi.

A proxy in front of an Asterisk pool and nothing else: every new INVITE
goes to a node of the pool; PUBLISH and NOTIFY with `Event: load-status`
are the nodes' reports; in-dialog requests follow the Record-Route; other
requests get 405, other event packages 489. What the three sipstatus
calls do (reports, dispatch, failover, subscriptions) is documented in
sipstatus/kemi.py; its parameters are the defines of sipstatus.cfg.

The library: in production the Debian package python3-sipstatus installs it
for Debian's /usr/bin/python3, which is the interpreter app_python3 embeds.
Until then, set SIPSTATUS_PATH (directories, separated by ':') in
Kamailio's environment to a checkout of the repository; failing that, the
checkout this file sits in is used.
"""

from __future__ import annotations

import os
import sys
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

from sipstatus.kemi import EVENT, SipStatus  # noqa: E402


def mod_init() -> kamailio:
    """Called by app_python3 once, in the main process, before the fork."""
    return kamailio()


class kamailio:  # noqa: N801  (the name app_python3 looks for)
    def __init__(self) -> None:
        # Gives this object the failure route, timer and htable callbacks
        # (ksr_sipstatus_*) and the reply/onsend routes app_python3 needs.
        self.sipstatus = SipStatus(self)

    def child_init(self, rank: int) -> int:
        return 0

    def ksr_request_route(self, msg: object) -> int:
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return 1
        if KSR.sanity.sanity_check(17895, 7) < 0:
            return -1
        if KSR.is_CANCEL():
            if KSR.tm.t_check_trans() > 0:
                self.relay()
            return 1
        # load-status reports are for this proxy, whatever their Request-URI
        # (and a NOTIFY's To-tag: the dialog is the subscription, not a call).
        if self.sipstatus.reports():
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
        # A new call: this proxy picks the next hop (a preloaded Route is
        # dropped) and stays on the path, so that ACK and BYE come back here.
        KSR.hdr.remove("Route")
        KSR.rr.record_route()
        if self.sipstatus.dispatch():
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
