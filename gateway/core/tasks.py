"""Small task helpers shared by the components' stop and wait paths."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has really finished."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def wait_event(event: asyncio.Event, within: float) -> bool:
    """Wait up to ``within`` seconds for ``event``; whether it is set.

    Use this rather than ``asyncio.wait_for(event.wait(), timeout)`` in a loop that is
    stopped by cancelling it: on Python 3.11, ``wait_for`` swallows a cancellation that
    arrives just as the event is set (gh-86296), and the loop then never stops.
    ``asyncio.timeout`` passes it on.
    """
    if event.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, within)):
            await event.wait()
    return event.is_set()


class Fanout(asyncio.Event):
    """An event that also sets the events linked to it.

    A loop that must wake on any of several causes waits on one event the causes are
    linked to, instead of a task per cause around ``asyncio.wait``: at a steady message
    rate those tasks (created, started, cancelled each time) cost more event-loop turns
    than the messages themselves.
    """

    def __init__(self) -> None:
        super().__init__()
        self.linked: list[asyncio.Event] = []

    def set(self) -> None:
        super().set()
        for event in self.linked:
            event.set()
