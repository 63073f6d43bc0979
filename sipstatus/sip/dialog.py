"""Dialog state as subscriptions need it (RFC 3261 section 12, RFC 6665 4.1-4.2).

A :class:`Dialog` is a value holding the dialog's identity (Call-ID, local
and remote tags), sequence numbers, route set and remote target.  It is
created from the request and response that establish it
(:func:`dialog_as_uac`, :func:`dialog_as_uas`), builds in-dialog requests
(:meth:`Dialog.create_request`, section 12.2.1.1) and checks incoming
in-dialog requests (:meth:`Dialog.receive_request`, section 12.2.2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import SipError, bad_request
from .headers import NameAddr, format_params, parse_name_addr, split_list
from .message import Request, Response
from .uri import SipUri, parse_uri

# Section 8.1.1.6: the recommended initial Max-Forwards.
DEFAULT_MAX_FORWARDS = 70

DialogId = tuple[str, str, str]  # Call-ID, local tag, remote tag


@dataclass
class Dialog:
    """One dialog, seen from our side.

    ``route_set`` holds Route values (``<sip:proxy;lr>``) in the order they
    are put in requests; ``remote_target`` is the peer's Contact URI.
    ``local_cseq`` is None until we send our first request (section 12.1.1),
    ``remote_cseq`` None until the peer sends one (section 12.1.2).
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    local_cseq: int | None = None
    remote_cseq: int | None = None
    secure: bool = False

    @property
    def id(self) -> DialogId:
        return self.call_id, self.local_tag, self.remote_tag

    def next_hop(self) -> str:
        """The URI the next request is sent to: first route, else the target."""
        if self.route_set:
            return str(parse_name_addr(self.route_set[0], "Route").uri)
        return self.remote_target

    def create_request(
        self,
        method: str,
        *,
        via: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        contact: str | None = None,
    ) -> Request:
        """A request within the dialog (section 12.2.1.1).

        ``via`` is the local Via without branch (``SIP/2.0/UDP host:port``);
        the transaction layer adds the branch.  CSeq is the next local
        number.  With a loose-routing first route (``;lr``) the Request-URI is
        the remote target; with a strict router it is that route's URI and
        the remote target becomes the last Route (section 12.2.1.1).
        """
        self.local_cseq = 1 if self.local_cseq is None else self.local_cseq + 1
        uri, routes = self.remote_target, list(self.route_set)
        if routes:
            first = parse_name_addr(routes[0], "Route").uri
            if not (isinstance(first, SipUri) and first.lr):
                uri = _strip_for_request_uri(first)
                routes = routes[1:] + [f"<{self.remote_target}>"]
        out: list[tuple[str, str]] = [("Via", via), ("Max-Forwards", str(DEFAULT_MAX_FORWARDS))]
        out += [("Route", route) for route in routes]
        out += [
            ("From", f"{self.local_uri};tag={self.local_tag}"),
            ("To", f"{self.remote_uri};tag={self.remote_tag}"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.local_cseq} {method}"),
        ]
        if contact is not None:
            out.append(("Contact", contact))
        out += list(headers)
        return Request(method, uri, out, body)

    def receive_request(self, request: Request) -> None:
        """Check and absorb an in-dialog request (section 12.2.2).

        A CSeq lower than or equal to the last one is out of order (500,
        section 12.2.2); otherwise the remote CSeq advances and a Contact,
        if present, refreshes the remote target (SUBSCRIBE and NOTIFY are
        target refresh requests in RFC 6665).
        """
        cseq = request.cseq
        if cseq is None:
            raise bad_request("missing CSeq")
        if self.remote_cseq is not None and cseq.number <= self.remote_cseq:
            raise SipError(500, "CSeq out of order")
        self.remote_cseq = cseq.number
        self.refresh_target(request)

    def refresh_target(self, message: Request | Response) -> None:
        """Take the remote target from the message's Contact, if it has one."""
        contacts = message.contacts
        if contacts:
            self.remote_target = str(contacts[0].uri)


def _strip_for_request_uri(uri: object) -> str:
    # Section 19.1.1 table: method and header components are not allowed in
    # a Request-URI; a strict router's URI is used as it is otherwise.
    if isinstance(uri, SipUri) and uri.headers:
        uri = SipUri(uri.host, uri.user, uri.password, uri.port,
                     {k: v for k, v in uri.params.items() if k != "method"}, (), uri.scheme)
    return str(uri)


def _route_values(message: Request | Response) -> list[str]:
    return [item for value in message.header_all("Record-Route")
            for item in split_list(value, "Record-Route")]


def _bare(addr: NameAddr) -> str:
    """The name-addr without its tag, as dialog URIs are kept."""
    params = {k: v for k, v in addr.params.items() if k != "tag"}
    return f"<{addr.uri}>{format_params(params)}"


def _single_contact(message: Request | Response) -> str:
    contacts = message.contacts
    if len(contacts) != 1:
        raise bad_request("a dialog-creating message needs exactly one Contact")
    return str(contacts[0].uri)


def _is_sips(request: Request) -> bool:
    uri = parse_uri(request.uri)
    return isinstance(uri, SipUri) and uri.scheme == "sips"


def dialog_as_uac(request: Request, response: Response) -> Dialog:
    """The dialog a 2xx (or NOTIFY-confirmed) response creates for the UAC (section 12.1.2).

    The route set is the response's Record-Route in reverse order.
    """
    from_addr, to_addr, cseq = request.from_addr, response.to_addr, request.cseq
    if from_addr is None or to_addr is None or cseq is None or request.call_id is None:
        raise bad_request("missing dialog identifiers")
    if not from_addr.tag or not to_addr.tag:
        raise bad_request("a dialog needs both tags")
    return Dialog(
        call_id=request.call_id,
        local_tag=from_addr.tag,
        remote_tag=to_addr.tag,
        local_uri=_bare(from_addr),
        remote_uri=_bare(to_addr),
        remote_target=_single_contact(response),
        route_set=list(reversed(_route_values(response))),
        local_cseq=cseq.number,
        remote_cseq=None,
        secure=_is_sips(request),
    )


def dialog_as_uas(request: Request, local_tag: str) -> Dialog:
    """The dialog the UAS creates when it answers ``request`` with ``local_tag``
    as its To tag (section 12.1.1); the route set is Record-Route in order."""
    from_addr, to_addr, cseq = request.from_addr, request.to_addr, request.cseq
    if from_addr is None or to_addr is None or cseq is None or request.call_id is None:
        raise bad_request("missing dialog identifiers")
    if not from_addr.tag:
        raise bad_request("a dialog needs the From tag")
    return Dialog(
        call_id=request.call_id,
        local_tag=local_tag,
        remote_tag=from_addr.tag,
        local_uri=_bare(to_addr),
        remote_uri=_bare(from_addr),
        remote_target=_single_contact(request),
        route_set=_route_values(request),
        local_cseq=None,
        remote_cseq=cseq.number,
        secure=_is_sips(request),
    )


def dialog_id_of(message: Request | Response, *, received: bool = True) -> DialogId | None:
    """The id of the dialog ``message`` belongs to, from our side.

    ``received`` says whether the message came from the peer.  Our tag is
    the To tag of a request we receive and of a response we send, and the
    From tag of a request we send and of a response we receive.  None when
    a tag is missing (not an in-dialog message).
    """
    from_addr, to_addr, call_id = message.from_addr, message.to_addr, message.call_id
    if from_addr is None or to_addr is None or call_id is None:
        return None
    if not from_addr.tag or not to_addr.tag:
        return None
    if isinstance(message, Request) == received:
        return call_id, to_addr.tag, from_addr.tag
    return call_id, from_addr.tag, to_addr.tag
