"""An operator's own KEMI routing script (app_python3), with sipstatus
added: the three lines marked `sipstatus` and the import. Everything else
is the operator's: initial checks, in-dialog requests, a relay wrapper
with a failure route of its own (kept out of the way when one is set, as
Debian's basic KEMI script does). tests/interop/test_kamailio_kemi_module.py runs
it with the real Kamailio."""

import KSR

from sipstatus.kemi import SipStatus


def mod_init():
    return kamailio()


class kamailio:  # noqa: N801  (the name app_python3 looks for)
    def __init__(self):
        self.sipstatus = SipStatus(self)  # sipstatus 1/3

    def child_init(self, rank):
        return 0

    def ksr_request_route(self, msg):
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return 1
        if KSR.sanity.sanity_check(17895, 7) < 0:
            return 1
        if KSR.is_OPTIONS() and KSR.is_myself_ruri() and KSR.corex.has_ruri_user() < 0:
            KSR.sl.sl_send_reply(200, "Keepalive")
            return 1
        if KSR.is_CANCEL():
            if KSR.tm.t_check_trans() > 0:
                self.relay()
            return 1
        if self.sipstatus.reports():  # sipstatus 2/3
            return 1
        if KSR.siputils.has_totag() > 0:
            if KSR.rr.loose_route() > 0 or (KSR.is_ACK() and KSR.tm.t_check_trans() > 0):
                self.relay()
            elif not KSR.is_ACK():
                KSR.sl.sl_send_reply(404, "Not here")
            return 1
        if KSR.tmx.t_precheck_trans() > 0:
            KSR.tm.t_check_trans()
            return 1
        if KSR.tm.t_check_trans() == 0:
            return 1
        if not KSR.is_INVITE():
            KSR.sl.sl_send_reply(405, "Method Not Allowed")
            return 1
        KSR.hdr.remove("Route")
        KSR.rr.record_route()
        if not self.sipstatus.dispatch():  # sipstatus 3/3
            return 1
        self.relay()
        return 1

    def relay(self):
        if KSR.is_INVITE() and KSR.tm.t_is_set("failure_route") < 0:
            KSR.tm.t_on_failure("ksr_failure_manage")
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()

    def ksr_failure_manage(self, msg):
        return 1
