"""The asyncio shell: UDP, TCP and TLS transports, one timer, RFC 3263 resolution.

:class:`SipService` moves bytes between sockets and an :class:`Endpoint`
and keeps one ``TimerHandle`` on the endpoint's ``next_timer()``.  Streams
are cut into messages by the core's ``StreamFramer``; a peer whose stream
cannot be framed (endless header, huge Content-Length) is answered when
possible and disconnected.  Nothing raised by a message escapes into the
event loop.

Connections peers open to us are bounded before anything is authenticated
(:class:`StreamLimits`): so many in all and per source address, closed when
idle, when a message takes too long to arrive whole, or when a TLS
handshake takes too long.  A refused peer is closed at once (a FIN, no
reset); UDP, outgoing connections and the process's other descriptors are
not touched by the caps.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import resource
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from ..sip.endpoint import Endpoint, LogLimit, Resolve, TransactionUser, Transmit
from ..sip.errors import SipError
from ..sip.message import MAX_HEADER_BYTES, Request, StreamFramer, salvage_error_response
from ..sip.transaction import Destination
from .resolver import Resolver

log = logging.getLogger(__name__)

STREAM_TRANSPORTS = ("TCP", "TLS")
# Requests remembered per connection for reporting a lost connection; more
# than one element ever has in flight on one connection.
MAX_TRACKED = 64
# A stream connection we opened waits this long for the TCP/TLS handshake.
CONNECT_TIMEOUT = 10.0
# A UDP port in use is tried again for this long, every BIND_RETRY_STEP s:
# a restarted process starts while the old one finishes (the agent waits
# up to 2 s for the answers to its final NOTIFYs). Not SO_REUSEADDR: on UDP
# it lets two running processes bind the same port, and the newer one would
# silently take the other's traffic.
BIND_RETRY = 5.0
BIND_RETRY_STEP = 0.1
# Our address towards a peer (wildcard listeners) is looked up in the routing
# table at most this often per peer; routes change rarely, requests often.
ROUTE_CACHE_SECONDS = 10.0
ROUTE_CACHE_SIZE = 4096
# File descriptors kept free of incoming connections for everything else the
# process holds (UDP sockets, AMI, the control socket, /proc reads, logs).
FD_RESERVE = 64
# A receive buffer that holds a burst of SUBSCRIBEs up to the caps (256
# subscriptions, about 600 octets each) rather than Linux's default 208 KiB,
# which lost bursts above ~170 requests while the loop was busy.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


@dataclass(frozen=True)
class StreamLimits:
    """Bounds on the TCP and TLS connections peers open to us.

    Precedents: Kamailio's tcp_connection_lifetime and OpenSIPS's
    tcp_connection_lifetime are 120 s (idle); Kamailio waits 20 s
    (tcp_msg_read_timeout) and OpenSIPS 4 s (tcp_max_msg_time) for a
    message to arrive whole; asyncio waits 60 s for a TLS handshake.  The
    connection caps follow the subscription caps (spec 4.6.2: 256 in all,
    16 per source): a connection per subscription, twice over.
    """

    #: Incoming connections held at once, in all and per source address.
    max_connections: int = 512
    max_per_source: int = 32
    #: Seconds without a byte either way before an incoming connection is closed
    #: (RFC 5626 CRLF keep-alives count).
    idle_timeout: float = 120.0
    #: Seconds a message may take from its first octet to its last.
    message_timeout: float = 10.0
    #: Seconds a TLS client has to complete its handshake.
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_per_source < 1:
            raise ValueError("connection caps must be at least 1")
        if min(self.idle_timeout, self.message_timeout, self.handshake_timeout) <= 0:
            raise ValueError("stream timeouts must be positive")


def fit_to_descriptors(limits: StreamLimits, reserve: int = FD_RESERVE) -> StreamLimits:
    """``limits`` with the connection cap lowered, if need be, to what the
    process's descriptor limit (RLIMIT_NOFILE) leaves after ``reserve``:
    connections must never take the descriptors the rest needs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or limits.max_connections <= soft - reserve:
        return limits
    fitted = max(1, soft - reserve)
    log.warning("connection cap lowered from %d to %d: the descriptor limit is %d "
                "(LimitNOFILE= in the unit, ulimit -n)", limits.max_connections, fitted, soft)
    return replace(limits, max_connections=fitted,
                   max_per_source=min(limits.max_per_source, fitted))


def _host_key(host: str) -> str:
    return host.strip("[]").lower()


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False  # a name: bound to what it resolves to


def route_source(peer: str) -> str | None:
    """The local address this host sends from towards ``peer`` (an IP
    address): a routing-table lookup (connecting a UDP socket sends nothing).
    None when there is no route."""
    peer = peer.strip("[]")
    family = socket.AF_INET6 if ":" in peer else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((peer, 9))
            return sock.getsockname()[0]
    except OSError:
        return None


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection, in either direction.

    An incoming one (``server_ssl`` for TLS) is admitted under the service's
    caps first; a TLS one then does its handshake (``loop.start_tls``, so
    that the caps apply before it and its timeout bounds it) and is known to
    the service once it is done.
    """

    def __init__(self, service: SipService, transport_name: str, *, inbound: bool = False,
                 server_ssl: ssl.SSLContext | None = None) -> None:
        self.service = service
        self.name = transport_name
        self.inbound = inbound
        self.server_ssl = server_ssl
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Destination | None = None
        self.certificate: dict | None = None
        self.admitted = False
        self.handshaking = False
        self._early = bytearray()  # app data that came before start_tls returned
        self.last_activity = service.now()
        self.message_started: float | None = None  # first octet of an unfinished message
        # Requests written here whose transactions may still wait: if the
        # connection drops, the transaction layer hears of it (RFC 3261 18.4).
        self.requests: list[object] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        address = transport.get_extra_info("peername")
        self.peer = Destination(self.name, address[0], address[1])
        if self.inbound:
            if not self.service._admit(self):
                transport.close()  # a FIN once nothing is buffered: a clean close
                return
            self.admitted = True
            if self.server_ssl is not None:
                transport.pause_reading()  # the ClientHello is start_tls's to read
                self.handshaking = True
                self.service._spawn(self._handshake(transport, self.server_ssl))
                return
        self.certificate = transport.get_extra_info("peercert")
        self.service._connections[self.peer] = self

    async def _handshake(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        service = self.service
        try:
            tls = await service.loop.start_tls(
                raw, self, context, server_side=True,
                ssl_handshake_timeout=service.limits.handshake_timeout)
        except (OSError, ssl.SSLError, TimeoutError) as error:
            service.handshakes_failed += 1
            service._refusal_log.log(log, logging.INFO, service.now(),
                                     "TLS handshake with %s failed: %s", self.peer,
                                     error or type(error).__name__)
            raw.abort()
            self._forget()  # asyncio tells no connection_lost for a failed handshake
            return
        if tls is None or service.closed:
            raw.abort()
            self._forget()
            return
        assert isinstance(tls, asyncio.Transport) and self.peer is not None
        self.transport = tls
        self.handshaking = False
        self.last_activity = service.now()
        self.certificate = tls.get_extra_info("peercert")
        service._connections[self.peer] = self
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self.data_received(early)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        if self.handshaking:
            self._early += data  # decrypted, but start_tls has not returned yet
            return
        now = self.service.now()
        self.last_activity = now
        pings = self.framer.pings
        try:
            messages = self.framer.feed(data)
        except SipError as error:
            self.service.cut_off += 1
            self.service._refusal_log.log(log, logging.WARNING, now, "closing %s: %s",
                                          self.peer, error.reason)
            # The framer keeps what it could not frame; its head may still
            # address an answer (a 413 for a huge Content-Length).
            reply = salvage_error_response(bytes(self.framer._buffer[:MAX_HEADER_BYTES]), error)
            if reply is not None:
                self.transport.write(reply.to_bytes())
            self.transport.close()
            return
        if self.framer.pings > pings:
            self.transport.write(b"\r\n" * (self.framer.pings - pings))  # RFC 5626 pong
        if not self.framer.partial:
            self.message_started = None
        elif messages or self.message_started is None:
            self.message_started = now  # a new message began in this read
        for message in messages:
            self.service._receive(message, self.peer)

    def send(self, item: Transmit) -> None:
        assert self.transport is not None
        self.last_activity = self.service.now()
        self.transport.write(item.data)
        if isinstance(item.message, Request):
            self.requests = [*self.requests[-(MAX_TRACKED - 1):], item.message]

    def expired(self, now: float) -> str | None:
        """Why this incoming connection must close now, if it must."""
        limits = self.service.limits
        if self.message_started is not None \
                and now - self.message_started >= limits.message_timeout:
            return f"a message unfinished after {limits.message_timeout:g} s"
        if now - self.last_activity >= limits.idle_timeout:
            return f"idle for {limits.idle_timeout:g} s"
        return None

    def _forget(self) -> None:
        if self.admitted:
            self.admitted = False
            self.service._release(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        connections = self.service._connections
        for key in [k for k, v in connections.items() if v is self]:
            del connections[key]
        requests, self.requests = self.requests, []
        for request in requests:  # finished transactions ignore this
            self.service._lost(request)


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, service: SipService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.service._receive(data, Destination("UDP", addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self.service.send_errors += 1  # an ICMP error for some earlier datagram


class SipService:
    """Runs ``endpoint`` on the running event loop.

    ``on_event`` gets every application event (SubscriptionCreated,
    NotificationReceived, ...).  ``client_ssl`` is the context for TLS
    connections we open; the default verifies the server's certificate
    against the system's CAs and the target's domain (RFC 5922).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        resolver: Resolver | None = None,
        on_event: Callable[[object], None] | None = None,
        client_ssl: ssl.SSLContext | None = None,
        limits: StreamLimits | None = None,
        udp_receive_buffer: int = UDP_RECEIVE_BUFFER,
    ) -> None:
        self.endpoint = endpoint
        self.limits = fit_to_descriptors(limits or StreamLimits())
        self.udp_receive_buffer = udp_receive_buffer
        self.resolver = resolver or Resolver()
        self.on_event = on_event or (lambda event: None)
        self.client_ssl = client_ssl
        self.loop = asyncio.get_running_loop()
        self._udp: dict[int, asyncio.DatagramTransport] = {}  # address family -> socket
        self._servers: list[asyncio.base_events.Server] = []
        self._connections: dict[Destination, _Stream] = {}
        self._connecting: dict[Destination, list[Transmit]] = {}
        self._tls_names: dict[tuple[str, int], str] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task] = set()
        self._wildcards: set[str] = set()  # transports listening on 0.0.0.0 or ::
        self._routes: dict[str, tuple[str | None, float]] = {}  # peer -> (our address, until)
        self._inbound: set[_Stream] = set()  # admitted incoming connections
        self._per_source: dict[str, int] = {}
        self._sweeper: asyncio.Task | None = None
        self._refusal_log = LogLimit()
        self.send_errors = 0
        self.cut_off = 0
        self.refused = 0  # incoming connections refused at a cap
        self.timed_out = 0  # incoming connections closed idle or slow
        self.handshakes_failed = 0
        self.closed = False

    def now(self) -> float:
        return self.loop.time()

    # -- listening -------------------------------------------------------------------------

    async def listen(self, transport: str, host: str, port: int = 0, *,
                     ssl_context: ssl.SSLContext | None = None,
                     advertise: str | None = None) -> tuple[str, int]:
        """Listen on ``host:port`` (0: any free port); returns the bound address.

        ``advertise`` is the host our Via carries for this transport when
        ``host`` is a wildcard address and the routing table knows no better
        for a peer (see :meth:`local_host`).
        """
        transport = transport.upper()
        if transport == "UDP":
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            udp = await self._bind_udp(host, port, family)
            self._udp[family] = udp
            self._size_receive_buffer(udp.get_extra_info("socket"))
            bound = udp.get_extra_info("sockname")
        elif transport in STREAM_TRANSPORTS:
            if transport == "TLS" and ssl_context is None:
                raise ValueError("TLS needs a server ssl_context")
            # TLS is started per connection (see _Stream), after admission.
            context = ssl_context if transport == "TLS" else None
            server = await self.loop.create_server(
                lambda: _Stream(self, transport, inbound=True, server_ssl=context), host, port)
            self._servers.append(server)
            bound = server.sockets[0].getsockname()
            if self._sweeper is None:
                self._sweeper = self.loop.create_task(self._sweep())
        else:
            raise ValueError(f"transport {transport} not supported")
        self.endpoint.local.setdefault(transport, (advertise or bound[0], bound[1]))
        if _is_wildcard(host):
            self._wildcards.add(transport)
            self.endpoint.local_for = self.local_host
        return bound[0], bound[1]

    def _size_receive_buffer(self, sock: socket.socket | None) -> None:
        """Ask for ``udp_receive_buffer`` octets; the kernel caps the request
        at net.core.rmem_max (then only root's SO_RCVBUFFORCE gets more)."""
        if sock is None or self.udp_receive_buffer <= 0:
            return
        for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
            if option is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, self.udp_receive_buffer)
                break
            except OSError:
                continue  # SO_RCVBUFFORCE needs CAP_NET_ADMIN
        # Linux reports twice what it grants (the other half is its bookkeeping).
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        if granted < self.udp_receive_buffer:
            log.warning("UDP receive buffer: %d bytes granted of %d asked "
                        "(raise net.core.rmem_max for the rest)", granted, self.udp_receive_buffer)

    # -- incoming connections under the caps -------------------------------------------------

    @property
    def inbound_connections(self) -> int:
        return len(self._inbound)

    def _admit(self, stream: _Stream) -> bool:
        assert stream.peer is not None
        host = _host_key(stream.peer.host)
        limits = self.limits
        if self.closed:
            return False
        if len(self._inbound) >= limits.max_connections:
            why = f"{limits.max_connections} connections held in all"
        elif self._per_source.get(host, 0) >= limits.max_per_source:
            why = f"{limits.max_per_source} connections held from {host}"
        else:
            self._inbound.add(stream)
            self._per_source[host] = self._per_source.get(host, 0) + 1
            return True
        self.refused += 1
        self._refusal_log.log(log, logging.WARNING, self.now(),
                              "refused a %s connection from %s: %s", stream.name, stream.peer, why)
        return False

    def _release(self, stream: _Stream) -> None:
        assert stream.peer is not None
        self._inbound.discard(stream)
        host = _host_key(stream.peer.host)
        left = self._per_source.get(host, 1) - 1
        if left > 0:
            self._per_source[host] = left
        else:
            self._per_source.pop(host, None)

    async def _sweep(self) -> None:
        """Close incoming connections that are idle or slow to finish a message."""
        limits = self.limits
        period = max(0.05, min(limits.idle_timeout, limits.message_timeout) / 10)
        while not self.closed:
            await asyncio.sleep(period)
            now = self.now()
            for stream in list(self._inbound):
                why = stream.expired(now)
                if why is None or stream.transport is None:
                    continue
                self.timed_out += 1
                self._refusal_log.log(log, logging.INFO, now, "closing %s: %s", stream.peer, why)
                if stream.transport.get_write_buffer_size():
                    stream.transport.abort()  # a peer that reads nothing would hold it open
                else:
                    stream.transport.close()
                stream._forget()  # its descriptor is freed as it closes

    async def _bind_udp(self, host: str, port: int, family: int) -> asyncio.DatagramTransport:
        """A UDP socket on ``host:port``. A port in use is tried again for
        BIND_RETRY seconds: the process this one replaces (a restart) may
        still hold it while it waits for the answers to its last requests."""
        deadline = self.loop.time() + BIND_RETRY
        while True:
            try:
                udp, _ = await self.loop.create_datagram_endpoint(
                    lambda: _Datagram(self), local_addr=(host, port), family=family)
                return udp
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or port == 0 or self.loop.time() >= deadline:
                    raise
                if self.loop.time() + BIND_RETRY - deadline < BIND_RETRY_STEP:
                    log.info("udp:%s:%d is in use, trying again for up to %.0f s", host, port, BIND_RETRY)
                await asyncio.sleep(BIND_RETRY_STEP)

    def local_host(self, transport: str, peer: str) -> str | None:
        """Our address as ``peer`` should know it on a wildcard listener of
        ``transport`` (the routing table's choice, cached a few seconds);
        None for a listener bound to one address, or without a route."""
        if transport.upper() not in self._wildcards:
            return None
        now = self.now()
        cached = self._routes.get(peer)
        if cached is not None and cached[1] > now:
            return cached[0]
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.clear()
        host = route_source(peer)
        self._routes[peer] = (host, now + ROUTE_CACHE_SECONDS)
        return host

    async def close(self) -> None:
        self.closed = True  # connections lost from here on are ours to drop
        if self._timer is not None:
            self._timer.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        for udp in self._udp.values():
            udp.close()
        for server in self._servers:
            server.close()
        for stream in {*self._connections.values(), *self._inbound}:
            if stream.transport is not None:
                stream.transport.close()
        for server in self._servers:
            await server.wait_closed()
        await asyncio.sleep(0)

    def peer_certificate(self, peer: Destination) -> dict | None:
        """The verified certificate of a TLS peer (for authorization hooks)."""
        stream = self._connections.get(peer)
        return None if stream is None else stream.certificate

    # -- feeding the endpoint ------------------------------------------------------------------

    def submit(self, user: TransactionUser, outputs: Iterable[object]) -> None:
        """Send the outputs of an application call on ``user``."""
        self._feed(self.endpoint.submit(user, outputs, self.now()))

    def _receive(self, data: bytes, source: Destination) -> None:
        self._feed(self.endpoint.receive(data, source, self.now()))

    def _feed(self, outputs: Iterable[object]) -> None:
        if self.closed:
            return
        for item in outputs:
            try:
                if isinstance(item, Transmit):
                    self._send(item)
                elif isinstance(item, Resolve):
                    self._spawn(self._resolve(item))
                else:
                    self.on_event(item)
            except Exception:  # noqa: BLE001 - the loop keeps serving
                log.exception("failed to act on %r", item)
        self._arm()

    def _arm(self) -> None:
        when = self.endpoint.next_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = None if when is None else self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        self._feed(self.endpoint.handle_timer(self.now()))

    def _spawn(self, coroutine: object) -> None:
        task = self.loop.create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, item: Resolve) -> None:
        try:
            targets = await self.resolver.resolve(item.uri)
        except Exception:  # noqa: BLE001
            log.exception("resolving %s failed", item.uri)
            targets = []
        for target in targets:
            self._tls_names[(target.destination.host, target.destination.port)] = target.name
        self._feed(self.endpoint.targets_resolved(
            item.token, [t.destination for t in targets], self.now()))

    # -- sending -----------------------------------------------------------------------------------

    def _lost(self, request: Request) -> None:
        self._feed(self.endpoint.transport_error(request, self.now()))

    def _failed(self, item: Transmit) -> None:
        self.send_errors += 1
        self._feed(self.endpoint.transport_error(item.message, self.now()))

    def _send(self, item: Transmit) -> None:
        destination = item.destination
        name = destination.transport.upper()
        if name == "UDP":
            family = socket.AF_INET6 if ":" in destination.host else socket.AF_INET
            udp = self._udp.get(family)
            if udp is None:
                self._failed(item)
                return
            try:
                udp.sendto(item.data, (destination.host.strip("[]"), destination.port))
            except OSError:
                self._failed(item)
            return
        key = Destination(name, _host_key(destination.host), destination.port)
        stream = self._connections.get(key) or self._connections.get(destination)
        if stream is not None and stream.transport is not None \
                and not stream.transport.is_closing():
            stream.send(item)
            return
        queue = self._connecting.get(key)
        if queue is not None:
            queue.append(item)
            return
        self._connecting[key] = [item]
        self._spawn(self._connect(key))

    async def _connect(self, key: Destination) -> None:
        tls = key.transport == "TLS"
        context: ssl.SSLContext | None = None
        if tls:
            context = self.client_ssl or ssl.create_default_context()
        try:
            _, stream = await asyncio.wait_for(self.loop.create_connection(
                lambda: _Stream(self, key.transport), key.host, key.port, ssl=context,
                server_hostname=self._tls_names.get((key.host, key.port), key.host)
                if tls else None), CONNECT_TIMEOUT)
        except (TimeoutError, OSError, ssl.SSLError) as error:
            log.warning("cannot connect to %s: %s", key, error)
            for item in self._connecting.pop(key, []):
                self._failed(item)
            return
        assert isinstance(stream, _Stream) and stream.transport is not None
        # Known by the address it connected to as well as the peer's name for it.
        self._connections[key] = stream
        for item in self._connecting.pop(key, []):
            stream.send(item)
