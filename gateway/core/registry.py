"""The device registry: which devices exist, what they are, when they were last seen.

- Devices are registered on their first accepted reading (the pipeline calls
  :meth:`DeviceRegistry.observe`) or declared by config and adapters (:meth:`declare`).
- ``last_seen`` and the latest value of each metric live in memory; the file (TinyDB,
  ``devices.json`` in the state directory) is written every ``flush_interval``, soon after
  a new device or a change of its descriptive fields, and at shutdown, never per reading:
  SD cards die of small writes. Each write replaces the file atomically.
- A device is online while it keeps sending: silent longer than its timeout
  (``offline_after``, per type in ``offline_after_by_type``) it goes offline. Each
  transition is logged, counted, queued to the cloud as a ``status`` event and handed to
  listeners (rules).
- Change listeners hear of a device registered, given new descriptive fields (declared,
  renamed) or removed, when it happens; a reading of a known device costs them nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge
from tinydb import TinyDB
from tinydb.middlewares import CachingMiddleware
from tinydb.storages import Storage

from gateway.core.config import DevicesSection
from gateway.core.files import set_aside, write_json_atomic
from gateway.core.tasks import cancel_and_wait, wait_event
from gateway.logs import InputLog
from gateway.reading import Reading

log = logging.getLogger("gateway.devices")

#: descriptive fields every device dict carries (``None`` until declared)
INFO_FIELDS = ("name", "type", "location", "tags", "model", "manufacturer")
#: fields the registry computes; ``declare`` cannot set them
_RESERVED = frozenset({"id", "adapter", "first_seen", "last_seen", "online", "values"})
#: a new device or a changed name reaches the file within this many seconds
FLUSH_SOON = 1.0
#: bounds on how often silence is checked (a quarter of the shortest timeout in between)
_CHECK_MIN, _CHECK_MAX = 0.05, 5.0

Listener = Callable[[str, bool], None]
#: what happened to a device: registered or its descriptive fields changed, or removed
DeviceChange = Literal["changed", "removed"]
ChangeListener = Callable[[str, DeviceChange], None]
EventSink = Callable[[str, dict[str, Any]], Awaitable[bool]]


class AtomicJSONStorage(Storage):
    """TinyDB storage that replaces its file atomically (write aside, fsync, rename).

    TinyDB's own ``JSONStorage`` rewrites the file in place: a power cut mid-write
    leaves half a file. Here a crash leaves either the old file or the new one.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object at the top level")
        return data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        write_json_atomic(self.path, data, separators=(",", ":"))

    def close(self) -> None:
        return None


class _FlushedCache(CachingMiddleware):
    """Keep TinyDB's writes in memory until :meth:`flush`: one file write per flush."""

    WRITE_CACHE_SIZE = 1_000_000

    def __init__(self, storage_cls: type[Storage]) -> None:
        super().__init__(storage_cls)  # type: ignore[no-untyped-call]

    def flush(self) -> None:
        super().flush()  # type: ignore[no-untyped-call]


class _Device:
    """One device's live state; mutated in place on the hot path."""

    __slots__ = ("id", "adapter", "info", "first_seen", "last_seen", "online", "values",
                 "timeout")

    def __init__(self, device: str, first_seen: float, timeout: float) -> None:
        self.id = device
        self.adapter = device.split(":", 1)[0] if ":" in device else ""
        self.info: dict[str, Any] = {}
        self.first_seen = first_seen
        self.last_seen: float | None = None
        self.online = False
        self.values: dict[str, Reading] = {}
        self.timeout = timeout

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "adapter": self.adapter}
        for key in INFO_FIELDS:
            out[key] = self.info.get(key)
        if out["tags"] is None:
            out["tags"] = []
        for key, value in self.info.items():
            if key not in out:
                out[key] = value
        out["first_seen"] = self.first_seen
        out["last_seen"] = self.last_seen
        out["online"] = self.online
        out["values"] = {m: {"value": r.value, "unit": r.unit, "ts": r.ts}
                         for m, r in self.values.items()}
        return out

    def to_doc(self) -> dict[str, Any]:
        return {"id": self.id, "info": self.info, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "online": self.online,
                "values": {m: [r.value, r.unit, r.ts] for m, r in self.values.items()}}


class DeviceRegistry:
    """Known devices, their descriptive fields, last values and online state."""

    def __init__(self, config: DevicesSection, path: Path, metrics: CollectorRegistry,
                 events: EventSink | None = None) -> None:
        self.config = config
        self.path = Path(path)
        self._events = events
        self._devices: dict[str, _Device] = {}
        self._listeners: list[Listener] = []
        self._change_listeners: list[ChangeListener] = []
        self._dirty = False
        self._soon = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._writing: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending_events: set[asyncio.Task[bool]] = set()
        self._db: TinyDB | None = None
        self._declared_timeouts = {d.id: d.offline_after for d in config.declared
                                   if d.offline_after}
        self.m_transitions = Counter("gateway_device_transitions",
                                     "Device online/offline transitions", ["to"],
                                     registry=metrics)
        self.m_flushes = Counter("gateway_device_registry_flushes",
                                 "Writes of the device registry file", registry=metrics)
        self.m_refused = Counter("gateway_devices_refused",
                                 "Readings or declarations of new devices refused because "
                                 "devices.max_devices is reached", registry=metrics)
        self._limit_log = InputLog(log)
        self._series = 0  # (device, metric) pairs with a latest value, all devices
        #: online/offline lines: once a minute per device; a flood of devices shares lines
        self._transition_log = InputLog(log, max_keys=100)
        #: "new device" lines per minute at most; a flood of new ids gets one summary line
        self._new_log = InputLog(log, max_keys=20)
        self.m_flush_errors = Counter("gateway_device_registry_flush_errors",
                                      "Failed writes of the device registry file",
                                      registry=metrics)
        known = Gauge("gateway_devices_known", "Devices in the registry", registry=metrics)
        known.set_function(lambda: len(self._devices))
        online = Gauge("gateway_devices_online", "Devices currently online", registry=metrics)
        online.set_function(lambda: sum(1 for d in self._devices.values() if d.online))

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the file, declare config devices, start flushing and checking silence."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._load_sync)
        for dev in self.config.declared:
            info = dev.model_dump(exclude={"id", "offline_after"}, exclude_none=True)
            self.declare(dev.id, **info)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="devices")
        log.info("device registry: %d device(s) known (%s)", len(self._devices), self.path)

    async def stop(self) -> None:
        """Stop checking, deliver queued status events, write the file a last time."""
        await cancel_and_wait(self._task)
        self._task = None
        if self._writing is not None and not self._writing.done():
            with contextlib.suppress(Exception):
                await self._writing
        if self._pending_events:
            await asyncio.wait(list(self._pending_events), timeout=10.0)
        self._dirty = True
        await self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None

    def _load_sync(self) -> None:
        try:
            db = TinyDB(str(self.path), storage=_FlushedCache(AtomicJSONStorage))
            docs = list(db.table("devices").all())
        except (ValueError, OSError) as exc:
            aside: Path | str | None
            try:
                aside = set_aside(self.path)
            except OSError as err:
                aside = f"nowhere ({err})"
            log.error("device registry %s is unreadable (%s); moved it to %s and starting "
                      "empty: devices re-register on their next reading", self.path, exc, aside)
            db = TinyDB(str(self.path), storage=_FlushedCache(AtomicJSONStorage))
            docs = []
        self._db = db
        for doc in docs:
            try:
                dev = _Device(str(doc["id"]), float(doc.get("first_seen") or time.time()), 0.0)
                dev.info = dict(doc.get("info") or {})
                last = doc.get("last_seen")
                dev.last_seen = float(last) if last is not None else None
                dev.online = bool(doc.get("online")) and dev.last_seen is not None
                for metric, (value, unit, ts) in (doc.get("values") or {}).items():
                    dev.values[metric] = Reading(dev.id, metric, value, unit, float(ts))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("device registry: skipping unreadable entry %.80r: %s", doc, exc)
                continue
            dev.timeout = self._timeout_for(dev)
            self._devices[dev.id] = dev
            self._series += len(dev.values)

    # -- the hot path --------------------------------------------------------------------

    def observe(self, readings: Sequence[Reading]) -> None:
        """Pipeline observer: note last_seen and latest values (memory only)."""
        now = time.time()
        dev: _Device | None = None
        devices = self._devices
        for r in readings:
            if dev is None or r.device != dev.id:
                dev = devices.get(r.device)
                if dev is None:
                    dev = self._add(r.device, now)
                    self._changed(dev.id, "changed")
                dev.last_seen = now
                if not dev.online:
                    self._transition(dev, True, now)
            values = dev.values
            if r.metric not in values:
                if len(values) >= self.config.max_metrics:
                    continue  # admitted past the bound by a concurrent batch: not kept
                self._series += 1
            values[r.metric] = r
        self._dirty = True

    # -- the interface ---------------------------------------------------------------------

    def admits(self, device: str) -> bool:
        """Whether readings of ``device`` may enter: known, or room for a new device."""
        if device in self._devices or len(self._devices) < self.config.max_devices:
            return True
        self._refuse(device)
        return False

    def screen(self, readings: Sequence[Reading]) -> list[tuple[int, str]]:
        """``(index, reason)`` of readings the registry's bounds refuse: of a new device
        past ``max_devices``, of a new metric past ``max_metrics`` for its device or past
        ``max_series`` in all. The pipeline drops them before the outbox."""
        out: list[tuple[int, str]] = []
        devices = self._devices
        cfg = self.config
        fresh: dict[str, set[str]] = {}  # new metrics admitted in this batch, by device
        fresh_total = 0
        device_id: object = None
        values: dict[str, Reading] = {}
        admitted = True
        for i, r in enumerate(readings):
            if r.device is not device_id:
                device_id = r.device
                dev = devices.get(r.device)
                admitted = dev is not None or self.admits(r.device)
                values = dev.values if dev is not None else {}
            if not admitted:
                out.append((i, "device_limit"))
                continue
            metric = r.metric
            if metric in values:
                continue
            mine = fresh.get(r.device)
            if mine is not None and metric in mine:
                continue
            if len(values) + (len(mine) if mine else 0) >= cfg.max_metrics:
                out.append((i, "metric_limit"))
                continue
            if self._series + fresh_total >= cfg.max_series:
                out.append((i, "series_limit"))
                continue
            if mine is None:
                mine = fresh[r.device] = set()
            mine.add(metric)
            fresh_total += 1
        if out:
            self._refuse_series(out, readings)
        return out

    def _refuse_series(self, refused: list[tuple[int, str]], readings: Sequence[Reading]) -> None:
        for i, reason in refused:
            if reason == "series_limit":
                self._limit_log.warning("limit", reason, "device registry holds "
                                        "devices.max_series (%d) metrics in all: refusing new "
                                        "metrics such as %.100s of %.200s",
                                        self.config.max_series, readings[i].metric,
                                        readings[i].device)
                return

    def knows(self, device: str) -> bool:
        """Whether ``device`` is in the registry (per-device metric labels need this)."""
        return device in self._devices

    def _refuse(self, device: str) -> None:
        self.m_refused.inc()
        self._limit_log.warning("limit", "max_devices",
                                "device registry full (devices.max_devices %d): refusing %.200s "
                                "and every other new device (counted in "
                                "gateway_devices_refused_total)", self.config.max_devices, device)

    def declare(self, device: str, **info: Any) -> None:
        """Register ``device`` or update its descriptive fields (name, type, location...)."""
        bad = _RESERVED.intersection(info)
        if bad:
            raise ValueError(f"cannot declare computed field(s) {sorted(bad)} of {device}")
        dev = self._devices.get(device)
        changed = dev is None
        if dev is None:
            if not self.admits(device):
                return
            dev = self._add(device, time.time())
        for key, value in info.items():
            if value is None:
                continue
            if key == "tags":
                value = list(value)
            if dev.info.get(key) != value:
                dev.info[key] = value
                changed = True
        if changed:
            if "type" in info:
                dev.timeout = self._timeout_for(dev)
            self._mark_soon()
            self._changed(device, "changed")

    def get(self, device: str) -> dict[str, Any] | None:
        """The JSON-ready description of one device, or None."""
        dev = self._devices.get(device)
        return dev.as_dict() if dev is not None else None

    def all(self) -> list[dict[str, Any]]:
        """Every device, sorted by id."""
        return [self._devices[k].as_dict() for k in sorted(self._devices)]

    def latest(self, device: str) -> dict[str, Reading]:
        """The current value of each metric of ``device`` (empty if unknown)."""
        dev = self._devices.get(device)
        return dict(dev.values) if dev is not None else {}

    def is_online(self, device: str) -> bool:
        """Whether ``device`` has been heard from within its silence timeout."""
        dev = self._devices.get(device)
        return dev is not None and dev.online

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(device, online)`` on each online/offline transition."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        """Stop calling ``fn`` (a rule engine replaced by a reload)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(fn)

    def add_change_listener(self, fn: ChangeListener) -> None:
        """Call ``fn(device, "changed")`` when a device is registered or its descriptive
        fields change (declare, rename), ``fn(device, "removed")`` when it is removed."""
        self._change_listeners.append(fn)

    def remove_change_listener(self, fn: ChangeListener) -> None:
        """Stop calling ``fn`` (a component stopped or replaced by a reload)."""
        with contextlib.suppress(ValueError):
            self._change_listeners.remove(fn)

    def reconfigure(self, config: DevicesSection) -> None:
        """Apply a reloaded ``devices:`` section in place: bounds, silence timeouts and
        declared devices. Devices no longer declared stay known (they may still send)."""
        self.config = config
        self._declared_timeouts = {d.id: d.offline_after for d in config.declared
                                   if d.offline_after}
        for dev in config.declared:
            info = dev.model_dump(exclude={"id", "offline_after"}, exclude_none=True)
            self.declare(dev.id, **info)
        for d in self._devices.values():
            d.timeout = self._timeout_for(d)
        self._soon.set()  # the silence check picks up the new timeouts now

    def rename(self, device: str, name: str) -> bool:
        """Give ``device`` a display name; False if the device is unknown."""
        dev = self._devices.get(device)
        if dev is None:
            return False
        if dev.info.get("name") != name:
            dev.info["name"] = name
            self._mark_soon()
            self._changed(device, "changed")
        return True

    def remove(self, device: str) -> bool:
        """Forget ``device`` (it registers again on its next reading); False if unknown."""
        dev = self._devices.pop(device, None)
        if dev is None:
            return False
        self._series -= len(dev.values)
        self._mark_soon()
        log.info("device %s removed from the registry", device)
        self._changed(device, "removed")
        return True

    def __contains__(self, device: object) -> bool:
        return device in self._devices

    def __len__(self) -> int:
        return len(self._devices)

    # -- online / offline ------------------------------------------------------------------

    def _timeout_for(self, dev: _Device) -> float:
        declared = self._declared_timeouts.get(dev.id)
        if declared is not None:
            return declared
        kind = dev.info.get("type")
        if isinstance(kind, str) and kind in self.config.offline_after_by_type:
            return self.config.offline_after_by_type[kind]
        return self.config.offline_after

    def _add(self, device: str, now: float) -> _Device:
        dev = _Device(device, now, self.config.offline_after)
        dev.timeout = self._timeout_for(dev)
        self._devices[device] = dev
        self._mark_soon()
        self._new_log.log(logging.INFO, device, "new", "new device %.200s", device)
        return dev

    def _transition(self, dev: _Device, online: bool, now: float) -> None:
        dev.online = online
        self.m_transitions.labels("online" if online else "offline").inc()
        if online:
            self._transition_log.log(logging.INFO, dev.id, "online", "device %s online", dev.id)
        else:
            self._transition_log.log(logging.INFO, dev.id, "offline",
                                     "device %s offline (silent for %.0f s, timeout %.0f s)",
                                     dev.id, now - (dev.last_seen or now), dev.timeout)
        if self._events is not None:
            body = {"device": dev.id, "online": online, "ts": now, "last_seen": dev.last_seen}
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to queue to
                task = asyncio.get_running_loop().create_task(self._emit(body))
                self._pending_events.add(task)
                task.add_done_callback(self._pending_events.discard)
        for fn in list(self._listeners):
            try:
                fn(dev.id, online)
            except Exception as exc:  # a listener's bug must not stop the others
                log.error("device listener %s failed on %s: %s: %s",
                          getattr(fn, "__qualname__", repr(fn)), dev.id, type(exc).__name__, exc)

    def _changed(self, device: str, change: DeviceChange) -> None:
        for fn in list(self._change_listeners):
            try:
                fn(device, change)
            except Exception as exc:  # a listener's bug must not stop the others
                log.error("device change listener %s failed on %s (%s): %s: %s",
                          getattr(fn, "__qualname__", repr(fn)), device, change,
                          type(exc).__name__, exc)

    async def _emit(self, body: dict[str, Any]) -> bool:
        assert self._events is not None
        try:
            ok = await self._events("status", body)
        except Exception as exc:  # noqa: BLE001 - a lost status event is logged, not fatal
            log.error("could not queue status event for %s: %s", body["device"], exc)
            return False
        if not ok:
            log.warning("outbox refused status event for %s", body["device"])
        return ok

    def check_silence(self, now: float | None = None) -> int:
        """Mark devices silent past their timeout offline; return how many went offline."""
        now = time.time() if now is None else now
        n = 0
        for dev in list(self._devices.values()):
            if dev.online and dev.last_seen is not None and now - dev.last_seen > dev.timeout:
                self._transition(dev, False, now)
                n += 1
        if n:
            self._dirty = True
        return n

    def _check_interval(self) -> float:
        shortest = min([self.config.offline_after, *self.config.offline_after_by_type.values(),
                        *self._declared_timeouts.values()])
        return max(_CHECK_MIN, min(_CHECK_MAX, shortest / 4))

    # -- persistence -----------------------------------------------------------------------

    def _mark_soon(self) -> None:
        self._dirty = True
        self._soon.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + self.config.flush_interval
        soon: float | None = None  # when a burst of changes gets written
        while True:
            check_every = self._check_interval()  # timeouts change on a reload
            timeout = check_every if soon is None else max(0.0, min(check_every,
                                                                    soon - loop.time()))
            await wait_event(self._soon, timeout)
            if self._soon.is_set():
                self._soon.clear()
                # gather a burst of new devices (a fresh install, a pairing) into one write
                if soon is None:
                    soon = loop.time() + FLUSH_SOON
            self.check_silence()
            now = loop.time()
            if now >= next_flush or (soon is not None and now >= soon):
                await self.flush()
                next_flush = loop.time() + self.config.flush_interval
                soon = None

    async def flush(self) -> None:
        """Write the registry file now if anything changed since the last write."""
        async with self._flush_lock:
            if not self._dirty or self._db is None:
                return
            self._dirty = False
            docs = [d.to_doc() for d in self._devices.values()]
            # the write runs to its end even if this task is cancelled: stop() waits for it
            # rather than starting a second writer on the same file
            self._writing = asyncio.ensure_future(asyncio.to_thread(self._write_sync, docs))
            try:
                await asyncio.shield(self._writing)
            except Exception as exc:  # noqa: BLE001 - keep running; retry next flush
                self._dirty = True
                self.m_flush_errors.inc()
                log.error("could not write device registry %s: %s: %s (will retry)",
                          self.path, type(exc).__name__, exc)
                return
            self.m_flushes.inc()

    def _write_sync(self, docs: list[dict[str, Any]]) -> None:
        assert self._db is not None
        table = self._db.table("devices")
        table.truncate()
        table.insert_multiple(docs)
        storage = self._db.storage
        assert isinstance(storage, _FlushedCache)
        storage.flush()
