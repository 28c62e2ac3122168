"""Placeholder: replaced by the real uplink."""
from __future__ import annotations
from typing import Any


class Uplink:
    def __init__(self, config: Any, gateway_id: str, outbox: Any, metrics: Any = None) -> None:
        self.connected = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
