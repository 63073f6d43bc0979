"""SipService.listen on a UDP port another process still holds: a restarted
agent starts while the old one finishes its final NOTIFYs (up to 2 s), so
the port in use is tried again for BIND_RETRY seconds before it is an
error. (Not SO_REUSEADDR: two running processes could then share the port.)"""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from sipstatus.net import Endpoint, SipService
from sipstatus.net import service as net_service


def held_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_a_port_released_within_the_retry_time_is_bound() -> None:
    holder = held_port()
    port = holder.getsockname()[1]

    async def main() -> tuple[str, int]:
        asyncio.get_running_loop().call_later(0.5, holder.close)
        service = SipService(Endpoint([]))
        try:
            return await service.listen("UDP", "127.0.0.1", port)
        finally:
            await service.close()

    assert asyncio.run(main()) == ("127.0.0.1", port)


def test_a_port_still_held_after_the_retry_time_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(net_service, "BIND_RETRY", 0.3)
    holder = held_port()

    async def main() -> None:
        service = SipService(Endpoint([]))
        try:
            await service.listen("UDP", "127.0.0.1", holder.getsockname()[1])
        finally:
            await service.close()

    try:
        with pytest.raises(OSError) as caught:
            asyncio.run(main())
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        holder.close()
