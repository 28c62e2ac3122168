"""What every simulated Zigbee stick on a TCP socket shares: listening on loopback, one
host link at a time (a newcomer replaces it, as after a replug), dropping the link, and
waiting on what the host has done. :mod:`tests.ezsp_stick` and :mod:`tests.znp_stick` add
their radio's framing and command set."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from gateway.core.tasks import wait_event

log = logging.getLogger("tests.stick")


class Link(Protocol):
    """A stick's end of one host connection."""

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


L = TypeVar("L", bound=Link)


class SocketStick(Generic[L]):
    """A stick listening on ``host:port``; subclasses build each connection's link in
    :meth:`_protocol` and hand it to :meth:`_attach`."""

    #: the radio family, in log lines and errors
    KIND = "zigbee"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.link: L | None = None
        self._links: list[L] = []  # every connection so far, closed at stop()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()

    # -- life ---------------------------------------------------------------------------

    async def start(self) -> Any:
        """Listen; ``port`` 0 lets the kernel pick a free one. Returns the stick."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("%s stick listening on %s", self.KIND, self.url)
        return self

    async def stop(self) -> None:
        """Close the link and stop listening."""
        self.drop_link()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for link in self._links:
            link.close()
            await link.wait_closed()
        self._links.clear()

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The device path the radio library opens: ``socket://host:port``."""
        return f"socket://{self.host}:{self.port}"

    def _protocol(self) -> L:
        raise NotImplementedError

    def _attach(self, link: L) -> L:
        """A host connected: ``link`` is now the stick's only one."""
        if self.link is not None:
            # Only one host can own a stick: the newcomer wins, as after a replug
            log.warning("%s stick: new connection replaces the current one", self.KIND)
            self.link.close()
        self.link = link
        self._links.append(link)
        self.connections += 1
        return link

    # -- waiting ------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()

    def commands(self) -> Mapping[str, int]:
        """What the host has asked so far, by command (shown when a wait times out)."""
        return {}

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0,
                       what: str = "condition") -> None:
        """Wait until ``predicate()`` holds (checked whenever the host talks to the stick)."""
        deadline = time.monotonic() + within
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.KIND} stick: {what} not reached within {within} s "
                                   f"(commands so far: {dict(self.commands())})")
            self._changed.clear()
            await wait_event(self._changed, min(remaining, 0.2))

    # -- faults -------------------------------------------------------------------------

    def drop_link(self) -> None:
        """Close the TCP connection, as when the stick is unplugged."""
        if self.link is not None:
            log.info("%s stick: dropping the link", self.KIND)
            self.link.close()
