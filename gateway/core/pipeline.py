"""The pipeline every reading goes through: filters → outbox → (once durable) observers.

Observers (device registry, rules) see every reading that was accepted, including the
ones filters kept out of the outbox; a refused batch is seen by no one, because the
device will send it again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from gateway.reading import Reading

Filter = Callable[[Sequence[Reading]], Sequence[Reading]]
Observer = Callable[[Sequence[Reading]], None]


class Store(Protocol):
    async def append(self, readings: Sequence[Reading]) -> bool: ...


class Pipeline:
    """The core's sink: adapters push here through their :class:`AdapterSink`."""

    def __init__(self, store: Store, log_observer_error: Callable[[str, BaseException], None]
                 | None = None) -> None:
        self.store = store
        self.filters: list[Filter] = []
        self.observers: list[Observer] = []
        self._on_observer_error = log_observer_error

    async def accept(self, readings: Sequence[Reading]) -> bool:
        kept = readings
        for f in self.filters:
            kept = f(kept)
            if not kept:
                break
        if kept and not await self.store.append(kept):
            return False
        for observe in self.observers:
            try:
                observe(readings)
            except Exception as exc:  # an observer bug must not refuse durable data
                if self._on_observer_error is not None:
                    self._on_observer_error(getattr(observe, "__qualname__", repr(observe)), exc)
        return True


class AdapterSink:
    """One adapter's view of the pipeline; counts what it received, accepted, refused."""

    def __init__(self, pipeline: Pipeline, adapter: str, counters: SinkCounters) -> None:
        self._accept = pipeline.accept
        self._received = counters.received.labels(adapter)
        self._accepted = counters.accepted.labels(adapter)
        self._refused = counters.refused.labels(adapter)

    async def accept(self, readings: Sequence[Reading]) -> bool:
        n = len(readings)
        self._received.inc(n)
        if await self._accept(readings):
            self._accepted.inc(n)
            return True
        self._refused.inc(n)
        return False


class SinkCounters:
    """Per-adapter reading counters, registered once per daemon."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter("gateway_readings_received", "Readings adapters pushed",
                                ["adapter"], registry=registry)
        self.accepted = Counter("gateway_readings_accepted", "Readings made durable",
                                ["adapter"], registry=registry)
        self.refused = Counter("gateway_readings_refused",
                               "Readings refused (queue full or store failing)",
                               ["adapter"], registry=registry)
