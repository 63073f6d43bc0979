"""The asyncio layer: transports, timers and RFC 3263 resolution around the sans-I/O core.

- :mod:`endpoint` -- :class:`Endpoint`, the transaction layer and the
  transaction users (notifier, subscriber pool, publisher, compositor) of
  one element, still sans-I/O;
- :mod:`resolver` -- :class:`Resolver`, RFC 3263 (NAPTR, SRV, A/AAAA) with
  dnspython;
- :mod:`service` -- :class:`SipService`, UDP/TCP/TLS sockets and one timer
  on the running event loop.
"""

from .endpoint import Endpoint, Resolve, TransactionUser, Transmit
from .resolver import Resolver, Target, order_srv
from .service import SipService

__all__ = ["Endpoint", "Resolve", "Resolver", "SipService", "Target", "TransactionUser",
           "Transmit", "order_srv"]
