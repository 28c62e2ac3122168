"""Waiting in tests: poll a condition until it holds, with a deadline.

A test that sleeps a fixed time and then counts passes on the machine it was written on
and flakes on a Raspberry Pi four times slower. These two functions wait for the
condition itself and fail, naming what was awaited and the last value seen, only when
the deadline passes:

- :func:`wait_until` for synchronous tests (subprocess daemons, files, sockets);
- :func:`eventually` in ``async`` tests, for conditions that are plain callables or
  coroutine functions.

Deadlines use :func:`time.monotonic`. Polling starts every ``step`` seconds and the
interval grows by half each round up to ten times ``step``: quick answers are seen
quickly, slow ones do not cost a busy loop. The condition is checked once more at the
deadline, so a condition that holds by then is never reported as a timeout.

Asserting that something does *not* happen cannot be a poll: that needs a fixed window,
best opened after a positive event (wait for what must happen, then check what must not
have), and a comment saying why the window is long enough.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: the polling interval grows by this factor each round...
GROWTH = 1.5
#: ...up to this many times the first ``step``
MAX_STEP_FACTOR = 10.0
#: characters of the last value shown in a timeout message
SHOWN = 300


def _describe(cond: object, what: str) -> str:
    if what:
        return what
    name = getattr(cond, "__qualname__", None) or repr(cond)
    code = getattr(cond, "__code__", None)
    if code is not None:
        return f"{name} ({code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno})"
    return str(name)


def _timeout(cond: object, within: float, what: str, last: object) -> AssertionError:
    shown = repr(last)
    if len(shown) > SHOWN:
        shown = shown[:SHOWN] + "..."
    return AssertionError(f"timed out after {within:g} s waiting for {_describe(cond, what)}; "
                          f"last value: {shown}")


def _next(delay: float, step: float) -> float:
    return min(delay * GROWTH, step * MAX_STEP_FACTOR)


def wait_until(cond: Callable[[], T], within: float, what: str = "",
               step: float = 0.02) -> T:
    """Call ``cond`` until it returns something truthy; return that value.

    Raises AssertionError naming ``what`` (or the condition) and the last value once
    ``within`` seconds have passed. Exceptions from ``cond`` are not caught.
    """
    deadline = time.monotonic() + within
    delay = step
    while True:
        value = cond()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timeout(cond, within, what, value)
        time.sleep(min(delay, left))
        delay = _next(delay, step)


async def eventually(cond: Callable[[], T | Awaitable[T]], within: float, what: str = "",
                     step: float = 0.02) -> T:
    """:func:`wait_until` for ``async`` tests: sleeps with asyncio, awaits ``cond``'s
    result when it is awaitable (a coroutine function or a lambda returning one)."""
    deadline = time.monotonic() + within
    delay = step
    while True:
        value: Any = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[no-any-return]
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timeout(cond, within, what, value)
        await asyncio.sleep(min(delay, left))
        delay = _next(delay, step)
