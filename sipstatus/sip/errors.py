"""The one exception of the SIP core.

Like h11's ``ProtocolError``, a :class:`SipError` knows the status code a
server should answer with, so the layer that catches it can reply without
re-deriving what went wrong.
"""

from __future__ import annotations

from collections.abc import Iterable


class SipError(Exception):
    """A message (or a request in its context) is not acceptable.

    ``status`` is the response code a UAS should answer with (400, 413, 416,
    420, 505, ...); ``reason`` names what was wrong, precisely enough to be
    used as the reason phrase of that response.  ``headers`` are header
    fields the response must carry (``Allow`` with 405, ``Unsupported`` with
    420, ``Accept`` with 415, RFC 3261 section 21.4).  For a received
    *response* there is no one to answer: the message is discarded.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers: list[tuple[str, str]] = list(headers)


def bad_request(reason: str) -> SipError:
    """A 400 Bad Request error (RFC 3261 section 21.4.1)."""
    return SipError(400, reason)
