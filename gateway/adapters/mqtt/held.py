"""A received MQTT message, from receipt until it is answered.

Holding, retrying and ordering after a refusal are the ingest path's
(:mod:`gateway.adapters.ingest`); the adapter only answers each message once its batch
is accepted (PUBACK), refused for good (0x97 with ``on_refused: nack``) or given up at
stop (no PUBACK: the broker sends it again).
"""

from __future__ import annotations

import asyncio

from gateway.reading import Reading


class Message:
    """One received message with readings, from receipt until it is answered.

    ``mid`` is the packet id whose PUBACK the adapter writes itself (QoS 1 on the fast
    path), or -1 when a coroutine awaits ``waiter`` and answers through gmqtt.
    """

    __slots__ = ("seq", "mid", "readings", "topic", "waiter")

    def __init__(self, seq: int, mid: int, readings: list[Reading], topic: str,
                 waiter: asyncio.Future[bool] | None = None) -> None:
        self.seq = seq  # arrival order
        self.mid = mid
        self.readings = readings
        self.topic = topic
        self.waiter = waiter
