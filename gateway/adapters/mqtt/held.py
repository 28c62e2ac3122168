"""Received MQTT messages until answered, and the line they wait in after a refusal.

Once the outbox refuses a message, it and every message received after it wait in one
:class:`HeldLine`, in arrival order, and only its head is offered to the sink: a later
message never overtakes a held one (DESIGN.md, "Accepted means durable").
"""

from __future__ import annotations

import asyncio
from bisect import insort

from gateway.reading import Reading


class Message:
    """One received message with readings, from receipt until it is answered.

    ``mid`` is the packet id whose PUBACK the adapter writes itself (QoS 1 on the fast
    path), or -1 when a coroutine awaits ``waiter`` and answers through gmqtt.
    """

    __slots__ = ("seq", "mid", "readings", "topic", "waiter", "refused")

    def __init__(self, seq: int, mid: int, readings: list[Reading], topic: str,
                 waiter: asyncio.Future[bool] | None = None) -> None:
        self.seq = seq  # arrival order
        self.mid = mid
        self.readings = readings
        self.topic = topic
        self.waiter = waiter
        self.refused = False  # counted as refused once, however often it is retried


class HeldLine:
    """Held messages in arrival order; the head goes to the sink first."""

    def __init__(self) -> None:
        self._items: list[Message] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, messages: list[Message]) -> None:
        items = self._items
        for m in messages:
            if items and m.seq < items[-1].seq:
                # a batch that was already at the sink when the first refusal came back
                # was refused after later messages joined the line: it goes before them
                insort(items, m, key=_arrival)
            else:
                items.append(m)

    def head(self, max_readings: int) -> list[Message]:
        """The first messages, up to ``max_readings`` readings (at least one message)."""
        out: list[Message] = []
        total = 0
        for m in self._items:
            total += len(m.readings)
            if out and total > max_readings:
                break
            out.append(m)
        return out

    def remove_head(self, count: int) -> None:
        del self._items[:count]

    def take_all(self) -> list[Message]:
        items, self._items = self._items, []
        return items


def _arrival(m: Message) -> int:
    return m.seq
