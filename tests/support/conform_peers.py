"""Implementations for the conformance kit to check: the library's own, and broken ones.

`Served` runs one transaction user of the library (a Notifier, a Compositor
or a SubscriberPool) over UDP on 127.0.0.1 in an event loop of its own
thread, so the kit, which blocks, can run in the test's thread. The broken
peers are the library's state machines with one rule of the spec broken on
purpose; the kit must fail them, naming that rule.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable

from sipstatus import codec
from sipstatus.net import Endpoint, SipService
from sipstatus.sip import Request, SipError
from sipstatus.sip.publication import Compositor
from sipstatus.sip.subscription import (
    Notifier,
    Subscriber,
    SubscriberConfig,
    SubscriberPool,
    body_reason,
)

PACKAGE, MEDIA_TYPE = "load-status", codec.MEDIA_TYPE
NODE = "ast1.example.com"
#: ``make(service, host, port) -> (user, outputs to submit first)``
Maker = Callable[[SipService, str, int], tuple[object, list]]


class Served:
    """``with Served(make) as served:`` the user listens at ``served.port``."""

    def __init__(self, make: Maker) -> None:
        self.make = make
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            endpoint = Endpoint(allow_events=[PACKAGE])
            service = SipService(endpoint)
            host, self.port = await service.listen("UDP", "127.0.0.1", 0)
            user, outputs = self.make(service, host, self.port)
            endpoint.users.append(user)  # type: ignore[arg-type]
            service.submit(user, outputs)  # type: ignore[arg-type]
        except BaseException as error:  # noqa: BLE001 - reported to the test
            self.error = error
            self._ready.set()
            raise
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await service.close()

    def __enter__(self) -> Served:
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def target(self) -> str:
        return f"sip:127.0.0.1:{self.port}"


def bodies(node: str = NODE, *, copies: bool = False) -> Callable[[float], bytes]:
    """A producer of fresh bodies (seq + 1 each), or (``copies``) the same one."""
    seq = itertools.count(1)
    instance = "lib" + format(id(seq) % 10**6, "06d")

    def produce(now: float) -> bytes:
        number = 1 if copies else next(seq)
        return codec.encode(codec.decode(
            f'{{"version":1,"node":"{node}","instance":"{instance}","seq":{number},'
            f'"validity":15,"state":"active","capacity":0.5,"weight":50}}'.encode()))
    return produce


# -- notifiers -------------------------------------------------------------------------


def notifier(**kw: object) -> Maker:
    def make(service: SipService, host: str, port: int) -> tuple[object, list]:
        produce = kw.pop("produce", None) or bodies()
        return Notifier(PACKAGE, MEDIA_TYPE, f"sip:{PACKAGE}@{host}:{port}", produce=produce,
                        **kw), []  # type: ignore[arg-type]
    return make


class CaseBlindNotifier(Notifier):
    """Broken: compares the package name case-insensitively (spec 4.1)."""

    def handle_request(self, request: Request, source, now):  # type: ignore[no-untyped-def]
        event = request.header("Event")
        if event is not None:
            request.set_header("Event", event.lower())
        return super().handle_request(request, source, now)


def case_blind_notifier() -> Maker:
    def make(service: SipService, host: str, port: int) -> tuple[object, list]:
        return CaseBlindNotifier(PACKAGE, MEDIA_TYPE, f"sip:{PACKAGE}@{host}:{port}",
                                 produce=bodies()), []
    return make


# -- compositors -------------------------------------------------------------------------


def classify(request: Request, body: bytes) -> tuple[str, object]:
    """Decode a body; a broken one is refused with the reason phrase of spec 6.6."""
    try:
        status = codec.decode(body)
    except codec.StatusError as error:
        raise SipError(400, body_reason(PACKAGE, error)) from None
    return status.node, status


def compositor(**kw: object) -> Maker:
    def make(service: SipService, host: str, port: int) -> tuple[object, list]:
        return Compositor(PACKAGE, MEDIA_TYPE, classify=classify, **kw), []  # type: ignore[arg-type]
    return make


# -- subscribers ---------------------------------------------------------------------------


class NodeError(ValueError):
    member, rule = "node", "subscription"


def subscriber(kit_port: int, *, decode: Callable[[bytes], object] | None = codec.decode) -> Maker:
    """The library's subscriber, subscribing to the kit listening at ``kit_port``."""
    def make(service: SipService, host: str, port: int) -> tuple[object, list]:
        config = SubscriberConfig(PACKAGE, MEDIA_TYPE, f"sip:watcher@{host}",
                                  f"sip:watcher@{host}:{port}", decode=decode)

        def check(value: object) -> None:
            if getattr(value, "node", NODE) != NODE:
                raise NodeError("a body for another node")

        from sipstatus.sip.transaction import Destination
        sub = Subscriber(f"sip:{PACKAGE}@127.0.0.1:{kit_port}", config,
                         destination=Destination("UDP", "127.0.0.1", kit_port), key=NODE,
                         check=check)
        pool = SubscriberPool()
        return pool, pool.add(sub, service.now())
    return make
