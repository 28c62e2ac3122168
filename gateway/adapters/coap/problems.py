"""Bad datagrams and aiocoap's errors about them: counted, logged once a minute, no traceback.

aiocoap logs through the context's logger (``loggername``: ``gateway.adapter.<name>.aiocoap``)
and its children, and through ``coap-server.oscore-site`` and ``aiocoap.cryptography``.
Exceptions escaping its callbacks reach asyncio's exception handler, which logs them on
``asyncio``. :class:`Problems` is the one place all of that goes through:

- the patched endpoints (:mod:`.aiocoap_patch`) report dropped datagrams to
  :meth:`Problems.dropped`;
- :class:`Problems` is also a logging filter, installed on those loggers at start and
  removed at stop. A record carrying an exception (from aiocoap's code; on ``asyncio``
  only if the traceback passes through aiocoap) is counted as ``library_error`` and
  becomes one line, without the traceback unless the adapter logs at debug level.
  Other warnings are passed on at most once a minute per sender address and message
  (with a count of what was suppressed); those about a peer's bad datagram are counted.

Counts go to ``gateway_coap_dropped_total{adapter, reason}``; lines through
:class:`gateway.logs.InputLog`, keyed by sender address (host, not port: a sender
changing ports is still one source) and reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import aiocoap

from gateway.logs import InputLog

_AIOCOAP_DIR = os.path.dirname(os.path.abspath(aiocoap.__file__)) + os.sep
#: aiocoap's loggers besides the context's own (and its children)
LIBRARY_LOGGERS = ("coap-server.oscore-site", "aiocoap.cryptography")
#: children of the context's logger that aiocoap creates
_CHILDREN = ("blockwise-requester", "edhoc")
#: aiocoap warnings that are about a peer's datagram: the dropped-counter reason
_BAD_INPUT = {
    "Ignoring unparsable message from %s": "unparsable",
    "Received a message with code %s and type %s (those don't fit) from %s, ignoring it.":
        "bad_message",
}
#: every reason of gateway_coap_dropped_total
DROPPED_REASONS = ("unparsable", "truncated", "bad_message", "library_error", "backlog_full")
_WHAT = {
    "unparsable": "dropped a datagram that is not a CoAP message",
    "truncated": "dropped a datagram larger than 4096 bytes (use block-wise transfer)",
    "bad_message": "ignored a CoAP message whose type and code do not fit",
    "library_error": "aiocoap failed on a message",
    "backlog_full": "dropped a confirmable message: too many waiting for one peer",
}


def host(address: Any) -> str:
    """The sender's host from a socket address or an aiocoap remote (``unknown`` if none)."""
    sockaddr = getattr(address, "sockaddr", None)
    if sockaddr is None:
        underlying = getattr(address, "underlying_address", None)  # OSCORE remotes
        sockaddr = getattr(underlying, "sockaddr", address)
    if isinstance(sockaddr, tuple) and sockaddr and isinstance(sockaddr[0], str):
        h = sockaddr[0]
        return h[7:] if h.startswith("::ffff:") else h
    return "unknown"


def _text(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:200]
    except Exception:  # noqa: BLE001 - an exception's str may itself fail
        return type(exc).__name__


def _innermost(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name}"


def _through_aiocoap(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(_AIOCOAP_DIR):
            return True
        tb = tb.tb_next
    return False


class _Formatted:
    """A record's message, formatted only if the line is actually written."""

    def __init__(self, record: logging.LogRecord) -> None:
        self._record = record

    def __str__(self) -> str:
        try:
            return self._record.getMessage()[:300]
        except Exception:  # noqa: BLE001 - a library's bad format string must not raise here
            return str(self._record.msg)[:300]


class Problems(logging.Filter):
    """Counts and rate-limited lines for one adapter's dropped datagrams and library errors."""

    def __init__(self, adapter: str, input_log: InputLog, count: Callable[[str], None],
                 log: logging.Logger, context_logger: str) -> None:
        super().__init__()
        self._adapter = adapter
        self._input_log = input_log
        self._count = count
        self._log = log
        self._names = [context_logger, *(f"{context_logger}.{c}" for c in _CHILDREN),
                       *LIBRARY_LOGGERS, "asyncio"]
        self._installed: list[logging.Logger] = []

    def install(self) -> None:
        """Filter aiocoap's loggers (and asyncio's, for aiocoap's exceptions)."""
        for name in self._names:
            logger = logging.getLogger(name)
            logger.addFilter(self)
            self._installed.append(logger)

    def remove(self) -> None:
        for logger in self._installed:
            logger.removeFilter(self)
        self._installed.clear()

    # -- reports from the patched endpoints --------------------------------------------------

    def dropped(self, reason: str, address: Any, exc: BaseException | None) -> None:
        """A datagram or message dropped (see :data:`DROPPED_REASONS`)."""
        self._count(reason)
        source = host(address)
        if exc is None:
            self._input_log.warning(source, reason, "coap %s: %s from %s", self._adapter,
                                    _WHAT[reason], source)
        else:
            self._input_log.warning(source, reason, "coap %s: %s from %s: %s (at %s)",
                                    self._adapter, _WHAT[reason], source, _text(exc),
                                    _innermost(exc))

    # -- aiocoap's own log records -----------------------------------------------------------

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.name == "asyncio" and (exc is None or not _through_aiocoap(exc)):
            return True  # not aiocoap's: none of this filter's business
        source = self._source(record.args)
        if exc is not None:
            self._count("library_error")
            if self._log.isEnabledFor(logging.DEBUG):
                return True  # debugging: the traceback is wanted
            self._input_log.warning(source, "library_error", "coap %s: %s (%s): %s (at %s)",
                                    self._adapter, _WHAT["library_error"], _Formatted(record),
                                    _text(exc), _innermost(exc))
            return False
        if record.levelno < logging.WARNING:
            return True
        reason = _BAD_INPUT.get(str(record.msg))
        if reason is not None:
            self._count(reason)
        self._input_log.log(record.levelno, source, reason or str(record.msg)[:60],
                            "coap %s: aiocoap: %s", self._adapter, _Formatted(record))
        return False

    @staticmethod
    def _source(args: Any) -> str:
        if isinstance(args, tuple):
            for a in args:
                if hasattr(a, "sockaddr") or (isinstance(a, tuple) and len(a) >= 2
                                              and isinstance(a[0], str)
                                              and isinstance(a[1], int)):
                    return host(a)
        return "aiocoap"
