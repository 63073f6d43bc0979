"""The conformance kit: ``sipstatus conform ROLE sip:host:port``.

It plays the other side of a `load-status` implementation over the network
and prints PASS or FAIL per numbered rule of spec/load-status.md (the
number is the section).  Roles checked:

- ``notifier``: the kit subscribes to the agent at the address;
- ``compositor``: the kit publishes to the proxy at the address (``node``
  must be a node the compositor accepts from the kit's address);
- ``subscriber``: the kit listens at the address as a notifier; configure
  the subscriber under test to subscribe there.

The implementation under test must trust the kit's source address (as it
would trust a proxy or an agent).
"""

from __future__ import annotations

from collections.abc import Callable

from .common import parse_target
from .compositor import CompositorCheck
from .notifier import NotifierCheck
from .peer import Peer
from .report import Report, Result
from .subscriber import SubscriberCheck

ROLES = ("notifier", "compositor", "subscriber")

__all__ = ["ROLES", "Report", "Result", "run"]


def run(role: str, target: str, *, node: str = "ast1.example.com", resource: str | None = None,
        local: str | None = None, wait: float = 60.0,
        echo: Callable[[str], None] | None = None) -> Report:
    """Check the implementation at ``target`` in ``role``; the report says how it went.

    ``local`` is the kit's own address for notifier and compositor checks
    (default: 127.0.0.1, or ::1 for an IPv6 target, on a free port).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    host, port = parse_target(target)
    report = Report(role, target, echo)
    if role == "subscriber":
        peer = Peer(host, port)
    else:
        peer = Peer(local or ("::1" if ":" in host else "127.0.0.1"))
    try:
        if role == "notifier":
            NotifierCheck(peer, (host, port), report).run()
        elif role == "compositor":
            CompositorCheck(peer, (host, port), report, node=node, resource=resource).run()
        else:
            SubscriberCheck(peer, report, node=node, wait=wait).run()
    finally:
        peer.close()
    return report
