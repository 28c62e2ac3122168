"""The pipeline every reading goes through: checks → filters → outbox → observers.

Each adapter's :class:`AdapterSink` checks readings first (:class:`ReadingLimits`, and
the device registry's bounds on devices and metrics): what fails is counted as malformed with its
reason, logged at a bounded rate, and dropped; the rest of the batch goes on.
Observers (device registry, rules) see every reading the outbox took, including the
ones filters kept out of the outbox, as soon as it took them: a rule reacts without
waiting for the commit. A batch the outbox refuses at once (full, failing, too many
pending) is seen by no one, because the device will send it again; one whose commit
then fails has been seen, and may be seen again when the device resends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter

from gateway.logs import InputLog
from gateway.reading import Reading, ReadingLimits

log = logging.getLogger("gateway.readings")

Filter = Callable[[Sequence[Reading]], Sequence[Reading]]
Observer = Callable[[Sequence[Reading]], None]
#: ``(index, reason)`` of readings the device registry's bounds refuse
Screen = Callable[[Sequence[Reading]], list[tuple[int, str]]]


#: durable state that must commit with a batch: key → text, None deletes
State = Mapping[str, str | None]
T = TypeVar("T")


class Store(Protocol):
    def submit(self, readings: Sequence[Reading],
               state: State | None = None) -> asyncio.Future[bool] | None:
        """Take readings now; the future answers True once they are durable (and
        ``state`` with them). None: refused at once."""


class Stateful(Protocol):
    """A filter whose decisions change state that must be as durable as the readings
    (the open windows of aggregate filters)."""

    def take_state(self) -> dict[str, str | None] | None:
        """What changed since the last call; it commits with the batch being accepted."""

    def put_back(self, state: State) -> None:
        """The batch was refused: offer this state again with a later one."""


class Pipeline:
    """The core's sink: adapters push here through their :class:`AdapterSink`."""

    def __init__(self, store: Store, log_observer_error: Callable[[str, BaseException], None]
                 | None = None, limits: ReadingLimits | None = None) -> None:
        self.store = store
        self.limits = limits or ReadingLimits()
        #: set by the device registry (bounds on devices and metrics); None admits all
        self.screen: Screen | None = None
        self.filters: list[Filter] = []
        #: filters with durable state, asked for it after every batch
        self.stateful: list[Stateful] = []
        self.observers: list[Observer] = []
        self._on_observer_error = log_observer_error
        self._gate: asyncio.Event | None = None

    def add_filter(self, f: Filter, first: bool = False,
                   stateful: Stateful | None = None) -> None:
        """Run ``f`` on every batch (``first``: before the others); ``stateful`` is the
        object whose durable state commits with the batches ``f`` changed."""
        if first:
            self.filters.insert(0, f)
        else:
            self.filters.append(f)
        if stateful is not None:
            self.stateful.append(stateful)

    def add_observer(self, observe: Observer) -> None:
        """Show ``observe`` every batch the outbox took (errors in it are logged)."""
        self.observers.append(observe)

    def replace_filter(self, old: Filter | None, new: Filter | None,
                       old_stateful: Stateful | None = None,
                       new_stateful: Stateful | None = None) -> None:
        """Swap filter ``old`` for ``new`` in its place (a reload); either may be None
        (``new`` alone goes first, as rules' filters do)."""
        _swap(self.filters, old, new, first=True)
        if old_stateful is not None and old_stateful in self.stateful:
            self.stateful.remove(old_stateful)
        if new_stateful is not None:
            self.stateful.append(new_stateful)

    def replace_observer(self, old: Observer | None, new: Observer | None) -> None:
        """Swap observer ``old`` for ``new`` in its place; either may be None (``new``
        alone goes last)."""
        _swap(self.observers, old, new, first=False)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Batches arriving meanwhile wait at the door (not refused) until the block ends:
        a reload swaps filters whose state must be complete first."""
        gate = self._gate = asyncio.Event()
        try:
            yield
        finally:
            self._gate = None
            gate.set()

    async def accept(self, readings: Sequence[Reading]) -> bool:
        gate = self._gate
        while gate is not None:
            await gate.wait()
            gate = self._gate
        kept = readings
        for f in self.filters:
            kept = f(kept)
            if not kept:
                break
        state: dict[str, str | None] | None = None
        for sf in self.stateful:
            more = sf.take_state()
            if more:
                state = more if state is None else {**state, **more}
        durable = None
        if state is not None:
            durable = self.store.submit(kept, state)
            if durable is None:
                for sf in self.stateful:
                    sf.put_back(state)
                return False
        elif kept:
            durable = self.store.submit(kept)
            if durable is None:
                return False
        for observe in self.observers:
            try:
                observe(readings)
            except Exception as exc:  # an observer bug must not refuse durable data
                if self._on_observer_error is not None:
                    self._on_observer_error(getattr(observe, "__qualname__", repr(observe)), exc)
        return durable is None or await durable


def _swap(items: list[T], old: T | None, new: T | None, first: bool) -> None:
    """Put ``new`` where ``old`` is in ``items`` (or drop ``old`` if ``new`` is None); with
    no ``old`` there, ``new`` goes first or last."""
    if old is not None and old in items:
        i = items.index(old)
        if new is None:
            del items[i]
        else:
            items[i] = new
    elif new is not None:
        items.insert(0 if first else len(items), new)


class AdapterSink:
    """One adapter's view of the pipeline: checks readings, counts what it received,
    accepted, refused and found malformed."""

    def __init__(self, pipeline: Pipeline, adapter: str, counters: SinkCounters) -> None:
        self._pipeline = pipeline
        self._accept = pipeline.accept
        self._adapter = adapter
        self._received = counters.received.labels(adapter)
        self._accepted = counters.accepted.labels(adapter)
        self._refused = counters.refused.labels(adapter)
        self._malformed = counters.malformed
        self._input_log = InputLog(log)

    async def accept(self, readings: Sequence[Reading]) -> bool:
        n = len(readings)
        self._received.inc(n)
        bad = self._pipeline.limits.problems(readings, time.time())
        screen = self._pipeline.screen
        if screen is not None:
            refused = screen(readings)
            if refused:
                # a reading both malformed and past a bound is counted as malformed
                bad = sorted({**dict(refused), **dict(bad)}.items()) if bad else refused
        if bad:
            readings = self._drop(readings, bad)
            n = len(readings)
            if not n:
                return True  # nothing storable: the device must not send it again
        if await self._accept(readings):
            self._accepted.inc(n)
            return True
        self._refused.inc(n)
        return False

    def _drop(self, readings: Sequence[Reading], bad: list[tuple[int, str]]) -> list[Reading]:
        skip: set[int] = set()
        for i, reason in bad:
            if i in skip:
                continue
            skip.add(i)
            r = readings[i]
            self._malformed.labels(self._adapter, reason).inc()
            device = r.device if isinstance(r.device, str) else "unknown"
            self._input_log.warning(
                device[:200], reason, "%s: reading of %s refused (%s): metric %s, "
                "value %s, ts %s", self._adapter, device[:200], _EXPLAIN[reason],
                _shown(r.metric), _shown(r.value), _shown(r.ts))
        return [r for i, r in enumerate(readings) if i not in skip]


def _shown(value: object) -> str:
    """A bounded text for a log line; repr of a huge int raises past 4,300 digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    try:
        return repr(value)[:100]
    except Exception:  # noqa: BLE001 - a value whose repr fails is still only bad input
        return f"<{type(value).__name__}>"


#: what each malformed reason means, for the log line
_EXPLAIN = {
    "bad_device_id": "device id empty, too long or without adapter prefix",
    "bad_metric": "metric name empty or too long",
    "bad_unit": "unit too long",
    "value_not_finite": "value is NaN or infinite",
    "value_out_of_range": "value too large to store",
    "string_too_long": "string value longer than readings.max_string",
    "value_type": "value is not a number, bool or string",
    "ts_type": "timestamp is not a number",
    "ts_not_finite": "timestamp is NaN or infinite",
    "ts_too_old": "timestamp older than readings.max_past",
    "ts_in_future": "timestamp further ahead than readings.max_future",
    "device_limit": "too many devices: devices.max_devices reached",
    "metric_limit": "too many metrics for one device: devices.max_metrics reached",
    "series_limit": "too many metrics in all: devices.max_series reached",
}


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
        self.malformed = Counter("gateway_readings_malformed",
                                 "Readings dropped because they cannot be kept (see reason)",
                                 ["adapter", "reason"], registry=registry)
