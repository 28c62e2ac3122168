"""aiocoap 0.4.17 internals bounded for the CoAP adapter: the one place that patches them.

What grows per datagram in aiocoap 0.4.17, and what this module does about it:

- ``MessageManager._recent_messages`` (messagemanager.py) remembers every request's
  (sender, message id) with its whole response Message (which references the request,
  its payload, options and remote) for EXCHANGE_LIFETIME, 247 s with the default
  transport tuning, each with a timer handle: about 2.6 KiB per request, so about
  300 MiB at 500 requests/s. Replaced, per endpoint, by :class:`DuplicateCache`:
  the encoded response only, for ``lifetime`` to ``2 * lifetime`` seconds, at most
  ``max_entries`` entries.
- ``MessageManager._backlogs``: confirmable messages to one peer wait while it has an
  exchange open (NSTART = 1); a peer that never acknowledges collects them until the
  exchange times out (93 s). Capped at ``max_backlog`` per peer; what is over is dropped
  and counted.
- ``ExtensibleIntEnum._missing_`` (util/__init__.py) caches a new member, process-wide
  and forever, for every unknown option number, content format or code a datagram
  names. Capped: past :data:`ENUM_CACHE_LIMIT` members unknown values are made fresh.
- ``MessageInterfaceUDP6.datagram_msg_received`` (transports/udp6.py) catches only
  ``UnparsableMessage`` around ``Message.decode``: a text option that is not UTF-8 raises
  ``UnicodeDecodeError`` out of the event loop's reader callback (a traceback per
  datagram from asyncio's exception handler), and errors from dispatching a message are
  logged with a traceback and raised there too; a datagram larger than its 4096-byte
  receive buffer is parsed cut short. Replaced, per endpoint, by a receiver that drops
  what does not parse or was cut and reports all of it to the adapter (counted, logged
  once a minute per sender).

Every patch is applied to one context's endpoints (the enum cap once per process), only
on the aiocoap version it was written for: :func:`install` returns None and changes
nothing on another version.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import aiocoap
from aiocoap import Message, meta
from aiocoap.numbers.types import CON
from aiocoap.util import ExtensibleIntEnum

#: the aiocoap release these patches were written for and tested against (pyproject pins it)
PATCHED_VERSION = "0.4.17"
#: seconds a request is remembered for duplicate detection, at least (at most twice that):
#: a CON is retransmitted within MAX_TRANSMIT_SPAN (45 s) of its first transmission
DUPLICATE_LIFETIME = 45.0
#: requests remembered per endpoint at most (about 300 bytes each)
DUPLICATE_ENTRIES = 32768
#: confirmable messages waiting for one peer's open exchange, at most
MAX_BACKLOG = 256
#: members an aiocoap enumeration (option numbers, content formats, codes) caches at most
ENUM_CACHE_LIMIT = 1024


class Reporter(Protocol):
    """Where the patched endpoints report what they drop."""

    def dropped(self, reason: str, address: Any, exc: BaseException | None) -> None:
        """A datagram or message dropped: ``unparsable``, ``truncated``, ``library_error``,
        ``backlog_full``."""
        ...


def installed_version() -> str:
    """The aiocoap version installed."""
    return str(meta.version)


def version_supported(version: str | None = None) -> bool:
    """Whether these patches apply to the installed (or the given) aiocoap version."""
    return (installed_version() if version is None else version) == PATCHED_VERSION


class DuplicateCache:
    """(sender, message id) → encoded response (None until there is one), bounded.

    Two generations of dicts: entries go into the current one; when it is ``lifetime``
    seconds old or holds half of ``max_entries``, it becomes the previous one and the
    previous one is forgotten. So an entry is kept for ``lifetime`` to ``2 * lifetime``
    seconds, or, at rates above ``max_entries / 2 / lifetime`` per second, for the
    latest ``max_entries / 2`` requests at least. No timer per entry.
    """

    def __init__(self, lifetime: float = DUPLICATE_LIFETIME,
                 max_entries: int = DUPLICATE_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.max_entries = max_entries
        self._half = max(1, max_entries // 2)
        self._clock = clock
        self._current: dict[Hashable, bytes | None] = {}
        self._previous: dict[Hashable, bytes | None] = {}
        self._since = clock()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def lookup(self, key: Hashable) -> tuple[bool, bytes | None]:
        """(seen, response) of ``key``."""
        self._age()
        if key in self._current:
            return True, self._current[key]
        if key in self._previous:
            return True, self._previous[key]
        return False, None

    def add(self, key: Hashable) -> None:
        """Remember a new message (its response is not known yet)."""
        if len(self._current) >= self._half:
            self._rotate(self._clock())
        self._current[key] = None

    def wants(self, key: Hashable) -> bool:
        """Whether ``key`` is remembered without a response yet."""
        return self._current.get(key, 0) is None or self._previous.get(key, 0) is None

    def respond(self, key: Hashable, response: bytes) -> None:
        """Keep ``response`` for the remembered message ``key``."""
        if key in self._current:
            self._current[key] = response
        elif key in self._previous:
            self._previous[key] = response

    def _age(self) -> None:
        now = self._clock()
        if now - self._since >= self.lifetime:
            self._rotate(now)

    def _rotate(self, now: float) -> None:
        stale = now - self._since >= 2 * self.lifetime
        self._previous = {} if stale else self._current
        self._current = {}
        self._since = now


class _Replay:
    """A response already encoded, sent again (what the UDP interface's ``send`` reads)."""

    __slots__ = ("remote", "_data")

    def __init__(self, data: bytes, remote: Any) -> None:
        self._data = data
        self.remote = remote

    def encode(self) -> bytes:
        return self._data


def _key(message: Any) -> Hashable:
    # UDP6EndpointAddress compares by sockaddr[:-1] (host, port, flowinfo); host and port
    # say the same without keeping the remote object alive
    addr = message.remote.sockaddr
    return (addr[0], addr[1], message.mid)


class Endpoint:
    """The patches applied to one UDP endpoint (message manager and interface)."""

    def __init__(self, manager: Any, reporter: Reporter, cache: DuplicateCache,
                 max_backlog: int) -> None:
        self.manager = manager
        self.interface = manager.message_interface
        self.cache = cache
        self._reporter = reporter
        self._max_backlog = max_backlog
        self._send_message = manager.send_message
        manager._recent_messages = {}  # unused from here on; the cache replaces it
        manager._deduplicate_message = self._deduplicate_message
        manager._store_response_for_duplicates = self._store_response
        manager.send_message = self._send_bounded
        self.interface.datagram_msg_received = self._datagram_received

    def remove(self) -> None:
        """Give the endpoint aiocoap's own methods back."""
        for name in ("_deduplicate_message", "_store_response_for_duplicates", "send_message"):
            self.manager.__dict__.pop(name, None)
        self.interface.__dict__.pop("datagram_msg_received", None)

    # -- duplicate detection (messagemanager.py) ----------------------------------------------

    def _deduplicate_message(self, message: Any) -> bool:
        key = _key(message)
        seen, response = self.cache.lookup(key)
        if not seen:
            self.cache.add(key)
            return False
        if message.mtype is CON and response is not None:
            # the same answer again, as aiocoap does, without processing the request twice
            self.manager._send_via_transport(_Replay(response,
                                                     message.remote.as_response_address()))
        return True

    def _store_response(self, message: Any) -> None:
        key = _key(message)
        if self.cache.wants(key):
            self.cache.respond(key, message.encode())

    # -- per-peer backlog (messagemanager.py) --------------------------------------------------

    def _send_bounded(self, message: Any, messageerror_monitor: Any) -> None:
        self._send_message(message, messageerror_monitor)
        backlog = self.manager._backlogs.get(message.remote)
        if backlog is not None and len(backlog) > self._max_backlog:
            _, monitor = backlog.pop()  # the one just queued
            self._reporter.dropped("backlog_full", message.remote.sockaddr, None)
            if monitor is not None:
                monitor()

    # -- receiving (transports/udp6.py) --------------------------------------------------------

    def _datagram_received(self, data: bytes, ancdata: Any, flags: int, address: Any) -> None:
        from aiocoap.message import Direction
        from aiocoap.transports.udp6 import UDP6EndpointAddress

        if flags & socket.MSG_TRUNC:
            # larger than aiocoap's 4096-byte receive buffer: the rest is lost, and a cut
            # body must not be taken for the whole
            self._reporter.dropped("truncated", address, None)
            return
        pktinfo = None
        for level, kind, value in ancdata:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                pktinfo = value
        try:
            message = Message.decode(data, UDP6EndpointAddress(address, self.interface,
                                                               pktinfo=pktinfo))
        except Exception as exc:  # noqa: BLE001 - UnparsableMessage, UnicodeDecodeError...
            self._reporter.dropped("unparsable", address, exc)
            return
        message.direction = Direction.INCOMING
        try:
            self.interface._ctx.dispatch_message(message)
        except Exception as exc:  # noqa: BLE001 - would reach the loop's exception handler
            self._reporter.dropped("library_error", address, exc)


def bound_enum_caches(limit: int = ENUM_CACHE_LIMIT) -> None:
    """Unknown option numbers, content formats and codes stop being cached past ``limit``.

    Process-wide and idempotent. Members found in the cache stay identical objects;
    values past the limit get an equal, uncached member (they are unknown to aiocoap
    either way, so nothing compares them by identity).
    """
    if getattr(ExtensibleIntEnum, "_gateway_bounded", False):
        return
    cached = ExtensibleIntEnum.__dict__["_missing_"].__func__

    def _missing_(cls: Any, value: Any) -> Any:
        if len(cls._value2member_map_) < limit:
            return cached(cls, value)
        member = int.__new__(cls, value)
        member._value_ = value
        return member

    ExtensibleIntEnum._missing_ = classmethod(_missing_)
    ExtensibleIntEnum._gateway_bounded = True


class Installed:
    """The patches on one context; :meth:`remove` before the context shuts down."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints

    def duplicate_entries(self) -> int:
        """Requests remembered for duplicate detection, all endpoints together."""
        return sum(len(e.cache) for e in self.endpoints)

    def remove(self) -> None:
        for e in self.endpoints:
            e.remove()


def install(context: aiocoap.Context, reporter: Reporter,
            lifetime: float = DUPLICATE_LIFETIME, max_entries: int = DUPLICATE_ENTRIES,
            max_backlog: int = MAX_BACKLOG) -> Installed | None:
    """Bound ``context``'s UDP endpoints; None (nothing changed) on another aiocoap."""
    if not version_supported():
        return None
    from aiocoap.transports.udp6 import MessageInterfaceUDP6

    bound_enum_caches()
    endpoints = []
    for ri in context.request_interfaces:
        manager = getattr(ri, "token_interface", None)
        interface = getattr(manager, "message_interface", None)
        if isinstance(interface, MessageInterfaceUDP6):
            endpoints.append(Endpoint(manager, reporter, DuplicateCache(lifetime, max_entries),
                                      max_backlog))
    return Installed(endpoints)
