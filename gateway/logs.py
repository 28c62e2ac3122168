"""Logging set-up: one line per event, readable on a terminal and under journald."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    """``<prio>logger: message``: journald reads the priority, adds its own timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")
        return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # third-party chatter stays at warning unless we debug
    for noisy in ("gmqtt", "aiocoap", "zigpy", "bellows", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


class InputLog:
    """Problems with input, logged at most once per ``interval`` per (source, reason).

    A misbehaving device must not be able to write the log full: the first problem of
    each (source, reason) is logged at once, repeats within ``interval`` are counted and
    reported with the next line for that key. At most ``max_keys`` keys are tracked;
    past that, new sources share one key (``other``), so invented ids cannot grow memory.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0, max_keys: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        #: key → [time the window opened, lines suppressed in it]
        self._windows: dict[tuple[str, str], list[float]] = {}
        self._next_expiry = 0.0

    def warning(self, source: str, reason: str, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless (source, reason) was logged within the interval."""
        return self.log(logging.WARNING, source, reason, msg, *args)

    def log(self, level: int, source: str, reason: str, msg: str, *args: Any) -> bool:
        now = self._clock()
        key = (source, reason)
        window = self._windows.get(key)
        if window is None and len(self._windows) >= self._max_keys:
            if now >= self._next_expiry:
                self._expire(now)
            if len(self._windows) >= self._max_keys:
                key = ("other", reason)
                window = self._windows.get(key)
        if window is not None and now - window[0] < self._interval:
            window[1] += 1
            return False
        suppressed = int(window[1]) if window is not None else 0
        self._windows[key] = [now, 0]
        if key[0] == "other" and source != "other":
            msg += " (sources past the first %d share this line)"
            args = (*args, self._max_keys)
        if suppressed:
            msg += " (%d more like this in the last %.0f s, not logged)"
            args = (*args, suppressed, self._interval)
        self._log.log(level, msg, *args, stacklevel=3)  # the caller's file and line
        return True

    def _expire(self, now: float) -> None:
        """Forget keys whose window has closed (at most once a second: the table is big)."""
        self._next_expiry = now + 1.0
        cutoff = now - self._interval
        for k in [k for k, (opened, _) in self._windows.items() if opened < cutoff]:
            del self._windows[k]
