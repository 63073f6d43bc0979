"""The asyncio layer: transports, timers and RFC 3263 resolution around the sans-I/O core.

- :mod:`service` -- :class:`SipService`, UDP/TCP/TLS sockets and one timer
  on the running event loop, driving a :class:`sipstatus.sip.endpoint.Endpoint`
  (the transaction layer and the transaction users of one element);
- :mod:`resolver` -- :class:`Resolver`, RFC 3263 (NAPTR, SRV, A/AAAA) with
  dnspython.
"""

from .resolver import Resolver, Target, order_srv
from .service import SipService

__all__ = ["Resolver", "SipService", "Target", "order_srv"]
