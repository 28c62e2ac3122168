"""Upload filters: decide which readings reach the outbox (and so the cloud).

Each series (device, metric) is matched once against the ``filters:`` list; the first
filter whose device and metric patterns match applies. Rules still see every reading:
filters only thin what is uploaded.

- ``drop``: nothing of the series is uploaded.
- ``deadband`` (absolute or ``"N%"``), ``min_interval``, ``sample`` (one in N) and
  ``heartbeat`` compare with the last value *durably accepted* for the series. The
  filter remembers a kept reading as tentative and commits it when the pipeline reports
  the batch accepted (:meth:`FilterSet.confirm`), so a refused batch that the device
  sends again gets the same decisions: a refusal never turns into a silent drop.
- ``aggregate``: raw numeric values are replaced by ``<metric>_<fn>`` readings (avg,
  min, max, count, sum, last) per aligned window, stamped with the window's start. A
  window closes when a reading of a later window arrives (its aggregates then join that
  reading's batch) or when its end passed by ``WINDOW_GRACE`` seconds (queued to the
  outbox by the filters' task).

  **Open windows are durable.** Each change of a window (a raw reading absorbed, the
  window closed) is state that commits in the outbox's transaction with the batch it
  came with (:meth:`FilterSet.take_state`, ``Outbox.submit(readings, state)``), and the
  device is acknowledged only then. So a SIGKILL or power cut loses no absorbed reading:
  at start the windows are restored from the outbox (:meth:`FilterSet.restore`), and a
  device's resend of readings already absorbed is recognised by its timestamp and not
  counted twice. Windows stay open across a stop, closing by the clock after the start.
  A window whose filter is gone or changed at start is closed with the functions it was
  opened with.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

from gateway.core.tasks import cancel_and_wait, wait_event
from gateway.reading import Reading
from gateway.rules.config import FilterSpec

log = logging.getLogger("gateway.filters")

#: a window is closed this long after its end even when no later reading came
WINDOW_GRACE = 2.0
TICK = 1.0
#: aggregate readings waiting for the outbox; beyond this the oldest are dropped (counted)
MAX_QUEUED = 100_000
EMIT_BATCH = 5000
STOP_TIMEOUT = 5.0
#: series remembered; beyond this the cache restarts (deadband state starts over)
MAX_SERIES = 500_000

#: queues readings with the state that must commit with them (the outbox's ``append``)
Emit = Callable[[Sequence[Reading], Mapping[str, str | None] | None], Awaitable[bool]]
#: state keys of open windows: this prefix, the device, a unit separator, the metric
STATE_PREFIX = "window:"
_SEP = "\x1f"


_NUMBERS: frozenset[Any] = frozenset({int, float})


def _is_number(v: Any) -> bool:
    return v.__class__ in _NUMBERS


class _Filter:
    __slots__ = ("name", "devices", "metrics", "drop", "band", "pct", "min_interval",
                 "sample", "heartbeat", "window", "functions", "counts", "reduces")

    def __init__(self, index: int, spec: FilterSpec) -> None:
        self.name = spec.name or f"filters[{index}]"
        self.devices = tuple(spec.device)
        self.metrics = tuple(spec.metric)
        self.drop = spec.drop
        db = spec.deadband_value
        self.band: float | None = db[0] if db is not None else None
        self.pct = db[1] if db is not None else False
        self.min_interval = spec.min_interval
        self.sample = spec.sample
        self.heartbeat = spec.heartbeat
        self.window = spec.aggregate.window if spec.aggregate is not None else 0.0
        self.functions = tuple(spec.aggregate.functions) if spec.aggregate is not None else ()
        self.counts: dict[str, int] = {}
        self.reduces = (self.band is not None or bool(self.min_interval) or self.sample > 1
                        or bool(self.heartbeat))

    def matches(self, device: str, metric: str) -> bool:
        return any(p == "*" or fnmatch.fnmatchcase(device, p) for p in self.devices) and \
            any(p == "*" or fnmatch.fnmatchcase(metric, p) for p in self.metrics)

    def count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


class _Series:
    __slots__ = ("f", "device", "metric", "unit", "sent_v", "sent_ts", "pend_v", "pend_ts",
                 "call", "local_v", "local_ts", "n", "w_start", "w_n", "w_sum", "w_min",
                 "w_max", "w_last", "w_last_ts")

    def __init__(self, f: _Filter | None, device: str, metric: str) -> None:
        self.f = f
        self.device = device
        self.metric = metric
        self.unit: str | None = None
        self.sent_v: Any = None
        self.sent_ts: float | None = None  # last durably accepted
        self.pend_v: Any = None
        self.pend_ts: float | None = None  # kept, not yet confirmed
        self.call = 0
        self.local_v: Any = None
        self.local_ts: float | None = None  # kept earlier in the same batch
        self.n = 0
        self.w_start: float | None = None
        self.w_n = 0
        self.w_sum = 0.0
        self.w_min = 0.0
        self.w_max = 0.0
        self.w_last = 0.0
        self.w_last_ts = 0.0


class FilterSet:
    """The ``filters:`` list compiled; ``apply`` is a pipeline filter, ``confirm`` an observer.

    ``emit`` queues aggregate readings (the outbox's ``append``); it is retried until it
    returns True.
    """

    def __init__(self, specs: Sequence[FilterSpec], metrics: CollectorRegistry | None = None,
                 emit: Emit | None = None, clock: Callable[[], float] = time.time) -> None:
        self.filters = [_Filter(i, s) for i, s in enumerate(specs)]
        self.emit = emit
        self.clock = clock
        self.reduces = any(f.reduces for f in self.filters)
        self._series: dict[tuple[str, str], _Series] = {}
        self._windows: dict[tuple[str, str], _Series] = {}
        self._queue: list[Reading] = []
        #: aggregates of windows closed during the current apply(): they join its batch
        self._closed: list[Reading] = []
        #: series whose window changed since the last take_state()
        self._dirty: set[tuple[str, str]] = set()
        #: functions of restored windows whose filter changed (closed with these)
        self._restored_functions: dict[tuple[str, str], tuple[str, ...]] = {}
        self.windows = any(f.window for f in self.filters)
        self._wake = asyncio.Event()
        self._call = 0
        self._task: asyncio.Task[None] | None = None
        self.emitted = 0
        self.lost = 0
        if metrics is not None:
            metrics.register(_FilterCollector(self))

    # -- the hot path ------------------------------------------------------------------------

    def apply(self, readings: Sequence[Reading]) -> Sequence[Reading]:
        """Pipeline filter: the readings worth uploading (the same object if all are)."""
        self._call += 1
        call = self._call
        series = self._series
        out: list[Reading] | None = None
        i = 0
        for r in readings:
            device, metric, value, _, ts = r
            v: Any = value  # compared by its runtime type below
            s = series.get((device, metric))
            if s is None:
                s = self._new_series(device, metric)
            f = s.f
            keep = True
            if f is None:
                pass
            elif f.drop:
                f.count("drop")
                keep = False
            elif f.window:
                if value.__class__ in _NUMBERS and -math.inf < v < math.inf:
                    self._aggregate(f, s, r)
                    keep = False
                # text, booleans, NaN and infinities cannot be averaged: sent as they are
            else:
                # compare with what was durably sent, or kept earlier in this batch
                base_v: Any
                base_ts: float | None
                if s.call == call:
                    base_v, base_ts = s.local_v, s.local_ts
                else:
                    base_v, base_ts = s.sent_v, s.sent_ts
                if base_ts is not None and not (f.heartbeat and ts - base_ts >= f.heartbeat):
                    if f.min_interval and ts - base_ts < f.min_interval:
                        f.count("min_interval")
                        keep = False
                    elif f.band is not None and (v == base_v or (
                            v.__class__ in _NUMBERS and base_v.__class__ in _NUMBERS
                            and abs(v - base_v) < (f.band * abs(base_v) / 100.0
                                                   if f.pct else f.band))):
                        f.count("deadband")
                        keep = False
                    elif f.sample > 1:
                        s.n += 1
                        if s.n % f.sample:
                            f.count("sample")
                            keep = False
                if keep:
                    s.call = call
                    s.local_v = s.pend_v = value
                    s.local_ts = s.pend_ts = ts
            if keep:
                if out is not None:
                    out.append(r)
            elif out is None:
                out = list(readings[:i])
            i += 1
        if self._closed:
            out = list(readings) if out is None else out
            out.extend(self._closed)
            self._closed = []
        return readings if out is None else out

    def confirm(self, readings: Sequence[Reading]) -> None:
        """Pipeline observer: the batch is durable, so what was kept of it counts as sent."""
        series = self._series
        for r in readings:
            s = series.get((r.device, r.metric))
            if s is not None and s.pend_ts is not None and s.pend_ts == r.ts \
                    and s.pend_v == r.value:
                s.sent_v, s.sent_ts = r.value, r.ts
                s.pend_ts = None

    def _new_series(self, device: str, metric: str) -> _Series:
        if len(self._series) >= MAX_SERIES:
            self._series.clear()
        f = next((f for f in self.filters if f.matches(device, metric)), None)
        s = _Series(f, device, metric)
        self._series[(device, metric)] = s
        return s

    # -- windows -------------------------------------------------------------------------------

    def _aggregate(self, f: _Filter, s: _Series, r: Reading) -> None:
        v = float(r.value)
        start = math.floor(r.ts / f.window) * f.window
        key = (s.device, s.metric)
        # even a duplicate: the window's state may not be committed yet (a refused batch)
        self._dirty.add(key)
        if s.w_start is not None:
            if start == s.w_start:
                if r.ts <= s.w_last_ts:
                    f.count("duplicate")  # a resend of a batch already counted
                    return
                s.w_n += 1
                s.w_sum += v
                s.w_min = min(s.w_min, v)
                s.w_max = max(s.w_max, v)
                s.w_last, s.w_last_ts = v, r.ts
                return
            if start < s.w_start:
                f.count("late")
                return
            self._close(s, self._closed)
        s.w_start, s.w_n, s.w_sum, s.w_min, s.w_max = start, 1, v, v, v
        s.w_last, s.w_last_ts, s.unit = v, r.ts, r.unit
        self._windows[key] = s

    def _close(self, s: _Series, out: list[Reading]) -> None:
        f = s.f
        assert s.w_start is not None
        key = (s.device, s.metric)
        functions = self._restored_functions.pop(key, None) or (f.functions if f else ())
        values = {"avg": s.w_sum / s.w_n, "min": s.w_min, "max": s.w_max, "count": s.w_n,
                  "sum": s.w_sum, "last": s.w_last}
        for fn in functions:
            unit = None if fn == "count" else s.unit
            out.append(Reading(s.device, f"{s.metric}_{fn}", values[fn], unit, s.w_start))
        if f is not None:
            f.count("aggregated")
        s.w_start = None
        self._windows.pop(key, None)
        self._dirty.add(key)
        if out is self._queue:
            self._bound_queue()

    def _bound_queue(self) -> None:
        if len(self._queue) > MAX_QUEUED:
            over = len(self._queue) - MAX_QUEUED
            del self._queue[:over]
            self.lost += over
            log.error("filters: %d aggregate reading(s) dropped: the outbox refused them for "
                      "too long", over)
        self._wake.set()

    def close_windows(self, now: float | None = None, everything: bool = False) -> int:
        """Close windows whose end passed (all of them with ``everything``)."""
        now = self.clock() if now is None else now
        n = 0
        for s in list(self._windows.values()):
            assert s.w_start is not None
            window = s.f.window if s.f is not None and s.f.window else 0.0
            if everything or not window or s.w_start + window + WINDOW_GRACE <= now:
                self._close(s, self._queue)
                n += 1
        return n

    # -- durable windows ------------------------------------------------------------------------

    def take_state(self) -> dict[str, str | None] | None:
        """The windows changed since the last call, as outbox state (None: no change).

        The pipeline commits it with the batch that changed them; if that batch is
        refused, :meth:`put_back` marks them changed again.
        """
        if not self._dirty:
            return None
        out: dict[str, str | None] = {}
        for key in self._dirty:
            s = self._series.get(key)
            if s is None or s.w_start is None:
                s = self._windows.get(key)
            out[STATE_PREFIX + key[0] + _SEP + key[1]] = None if s is None or s.w_start is None \
                else self._encode_window(s)
        self._dirty.clear()
        return out

    def put_back(self, state: Mapping[str, str | None]) -> None:
        """A batch carrying this state was refused: it must go with a later one."""
        for k in state:
            device, _, metric = k[len(STATE_PREFIX):].partition(_SEP)
            self._dirty.add((device, metric))

    def _encode_window(self, s: _Series) -> str:
        key = (s.device, s.metric)
        functions = self._restored_functions.get(key) or (s.f.functions if s.f else ())
        window = s.f.window if s.f is not None else 0.0
        return json.dumps([window, list(functions), s.w_start, s.w_n, s.w_sum, s.w_min,
                           s.w_max, s.w_last, s.w_last_ts, s.unit], separators=(",", ":"))

    def restore(self, state: Mapping[str, str]) -> int:
        """Reopen the windows an earlier run left open (the outbox's committed state).

        A window whose series now has a different filter (or none) is closed at once with
        the functions it was opened with; its aggregates are queued. The number reopened.
        """
        n = 0
        for k, text in state.items():
            if not k.startswith(STATE_PREFIX):
                continue
            device, _, metric = k[len(STATE_PREFIX):].partition(_SEP)
            try:
                (window, functions, start, count, total, lo, hi, last, last_ts,
                 unit) = json.loads(text)
                s = self._series.get((device, metric)) or self._new_series(device, metric)
                s.w_start, s.w_n, s.w_sum = float(start), int(count), float(total)
                s.w_min, s.w_max, s.w_last = float(lo), float(hi), float(last)
                s.w_last_ts, s.unit = float(last_ts), unit
            except (ValueError, TypeError) as exc:
                log.error("filters: open window %r in the outbox is unreadable (%s); "
                          "dropped", k[:200], exc)
                self._dirty.add((device, metric))
                continue
            self._windows[(device, metric)] = s
            if s.f is None or s.f.window != window or tuple(s.f.functions) != tuple(functions):
                self._restored_functions[(device, metric)] = tuple(str(f) for f in functions)
                self._close(s, self._queue)
                continue
            n += 1
        if n:
            log.info("filters: %d open aggregate window(s) restored", n)
        return n

    def take_queued(self) -> list[Reading]:
        """Aggregate readings waiting to be queued (for tests and the emitter)."""
        out, self._queue = self._queue, []
        return out

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start closing windows and queueing aggregates (only needed with ``aggregate``)."""
        if self.windows or self._windows or self._queue:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="filters")

    async def stop(self, close_windows: bool = False) -> None:
        """Queue what closed windows hold, bounded by STOP_TIMEOUT.

        Open windows stay open (their state is durable) unless ``close_windows``, or
        unless the filters have nowhere durable to keep them (no ``emit``).
        """
        await cancel_and_wait(self._task)
        self._task = None
        if close_windows or self.emit is None:
            self.close_windows(everything=True)
        if self._queue or self._dirty:
            try:
                await asyncio.wait_for(self._drain(retry=True), STOP_TIMEOUT)
            except TimeoutError:
                pass
            if self._queue:
                self.lost += len(self._queue)
                log.error("filters: %d aggregate reading(s) could not be queued at stop",
                          len(self._queue))
                self._queue = []

    async def _run(self) -> None:
        while True:
            await wait_event(self._wake, TICK)
            self._wake.clear()
            self.close_windows()
            await self._drain(retry=False)

    async def _drain(self, retry: bool) -> None:
        while (self._queue or self._dirty) and self.emit is not None:
            batch = self._queue[:EMIT_BATCH]
            # the closed windows' state (deleted) commits with their aggregates
            state = self.take_state()
            try:
                ok = await self.emit(batch, state)
            except Exception as exc:  # noqa: BLE001 - retried; the store reports its own errors
                log.warning("filters: queueing %d aggregate reading(s) failed: %s", len(batch),
                            exc)
                ok = False
            if ok:
                del self._queue[:len(batch)]
                self.emitted += len(batch)
                continue
            if state:
                self.put_back(state)
            await asyncio.sleep(0.5)
            if not retry:
                return


class _FilterCollector:
    """Exposes the filters' plain-int counters (no locking on the hot path)."""

    def __init__(self, fs: FilterSet) -> None:
        self.fs = fs

    def collect(self) -> Iterator[Metric]:
        dropped = CounterMetricFamily(
            "gateway_filter_readings", "Readings kept out of the outbox by upload filters, "
            "by reason (drop, deadband, min_interval, sample, duplicate, late; aggregated "
            "counts closed windows)", labels=["filter", "reason"])
        for f in self.fs.filters:
            for reason, n in f.counts.items():
                dropped.add_metric([f.name, reason], n)
        yield dropped
        emitted = CounterMetricFamily("gateway_filter_aggregates_queued",
                                      "Aggregate readings queued to the outbox")
        emitted.add_metric([], self.fs.emitted)
        yield emitted
        lost = CounterMetricFamily("gateway_filter_aggregates_lost",
                                   "Aggregate readings lost (outbox refused them too long)")
        lost.add_metric([], self.fs.lost)
        yield lost
