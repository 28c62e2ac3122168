"""What the LoRaWAN adapter tests give the adapter in place of the daemon's core."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.adapters.base import AdapterContext
from gateway.adapters.lorawan import LorawanAdapter
from gateway.adapters.lorawan.config import LorawanConfig
from gateway.reading import Reading


class RecordingSink:
    """Accepts (or refuses, while ``refuse`` is set) and keeps what it accepted."""

    def __init__(self) -> None:
        self.accepted: list[Reading] = []
        self.refuse = False
        self.refused_calls = 0
        #: seconds each accept takes, as a group commit does
        self.delay = 0.0

    async def accept(self, readings: Sequence[Reading]) -> bool:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.refuse:
            self.refused_calls += 1
            return False
        self.accepted.extend(readings)
        return True

    def values(self, metric: str, device: str | None = None) -> list[Any]:
        return [r.value for r in self.accepted
                if r.metric == metric and (device is None or r.device == device)]


class RecordingDirectory:
    """Keeps what the adapter declared about devices."""

    def __init__(self) -> None:
        self.declared: dict[str, dict[str, Any]] = {}

    def declare(self, device: str, **info: Any) -> None:
        self.declared[device] = info


def make_adapter(state_dir: Path, registry: CollectorRegistry | None = None,
                 sink: RecordingSink | None = None, directory: RecordingDirectory | None = None,
                 name: str = "lora", **config: Any) -> LorawanAdapter:
    cfg = LorawanConfig.model_validate({"type": "lorawan", "name": name, **config})
    ctx = AdapterContext(name=name, sink=sink or RecordingSink(), state_dir=state_dir,
                         metrics=registry or CollectorRegistry(),
                         devices=directory or RecordingDirectory(),
                         log=logging.getLogger(f"gateway.adapter.{name}"))
    return LorawanAdapter(cfg, ctx)


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0,  # noqa: ASYNC109
                     what: str = "") -> None:
    """Poll ``cond`` every 20 ms until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}")


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
