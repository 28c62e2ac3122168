"""``type: zigbee`` — a Zigbee coordinator stick, driven by zigpy and a radio library.

zigpy does the protocol: network formation and restore, joins, the interview (node
descriptor, endpoints, simple descriptors, Basic model/manufacturer), ZCL parsing and its
own SQLite database. This adapter wires it in: it binds and configures reporting for the
clusters it knows once a device is interviewed (and again when a sleepy device next
talks, until that succeeds), enrolls IAS zones, turns attribute reports into readings
through the unit table (``clusters.py``), carries commands out, exports coordinator
backups, and tells the device registry what it learns.

Neither zigpy nor bellows reconnects after ``connection_lost``: the adapter then fails,
and the supervisor shuts it down and starts it again with backoff. The network survives
in the stick and in zigpy's database (``<state_dir>/<name>/zigbee.db``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.adapters.base import Adapter, AdapterConfig, AdapterContext
from gateway.adapters.zigbee import backup as backups
from gateway.adapters.zigbee import commands, health
from gateway.adapters.zigbee.clusters import (
    IAS_ZONE,
    METRICS,
    REPORTING,
    SCALING_ATTRIBUTES,
    normalise,
)
from gateway.adapters.zigbee.config import ZigbeeConfig
from gateway.adapters.zigbee.radios import controller_class
from gateway.core.files import set_aside, write_json_atomic
from gateway.logs import InputLog
from gateway.metrics import metric_set
from gateway.reading import Command, CommandResult, Reading

#: bounds on waiting for the radio to come up (bellows' startup is ~130 exchanges)
STARTUP_TIMEOUT = 60.0
#: how long stop() waits for zigpy and the radio library to shut down (part of the drain
#: limit: the supervisor's stop timeout covers the whole stop)
RADIO_SHUTDOWN_TIMEOUT = 3.0
#: most readings handed to the pipeline in one call
BATCH = 500
PERMIT_MAX = 254
#: zigpy drops a frame identical to one received within this many seconds (retransmission)
DUPLICATE_WINDOW = 10.0
#: an unchanged LQI/RSSI pair is sent again after this many link_interval periods
LINK_REPEAT = 10
#: energy scan bounds: duration exponent (each channel listened to (2^n + 1) x 15.36 ms)
#: and repetitions
SCAN_DURATION_MAX = 8
SCAN_COUNT_MAX = 5


class ScanRefused(RuntimeError):
    """A scan cannot run now (joining is open, or another scan runs)."""


class _Metrics:
    """The adapter's Prometheus metrics, registered once per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter("gateway_zigbee_readings_dropped",
                               "Zigbee readings given up on (pipeline refused for too long,"
                               " or too many waiting)", ["adapter", "reason"], registry=registry)
        self.malformed = Counter("gateway_zigbee_malformed",
                                 "Zigbee attribute values or commands that could not be"
                                 " understood", ["adapter"], registry=registry)
        self.commands = Counter("gateway_zigbee_commands", "Zigbee commands by result",
                                ["adapter", "status"], registry=registry)
        self.connection_lost = Counter("gateway_zigbee_connection_lost",
                                       "Times the link to the Zigbee stick dropped", ["adapter"],
                                       registry=registry)
        self.backups = Counter("gateway_zigbee_backups", "Coordinator backups exported",
                               ["adapter"], registry=registry)
        self.devices = Gauge("gateway_zigbee_devices", "Devices in the Zigbee network",
                             ["adapter"], registry=registry)
        self.pending = Gauge("gateway_zigbee_readings_pending",
                             "Zigbee readings waiting for the pipeline", ["adapter"],
                             registry=registry)


class ZigbeeAdapter(Adapter):
    """A Zigbee network: pairing, interview, readings from reports, commands, backups."""

    Config = ZigbeeConfig
    config: ZigbeeConfig

    def __init__(self, config: AdapterConfig, ctx: AdapterContext) -> None:
        super().__init__(config, ctx)
        self._input_log = InputLog(self.log)
        assert isinstance(config, ZigbeeConfig)
        self.dir: Path = Path(ctx.state_dir) / ctx.name
        self.app: Any = None
        # one set per registry: the supervisor builds a new adapter object on every restart
        self._m = metric_set(ctx.metrics, _Metrics)
        self._pending: collections.deque[Reading] = collections.deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self._watched: dict[Any, list[Callable[[], None]]] = {}
        self._configured: set[str] = set()
        #: devices whose interview zigpy finished (configuration waits for it)
        self._interviewed: set[str] = set()
        #: devices removed through remove(): their late leave/left events are not news
        self._removed: set[str] = set()
        #: last report frame per (ieee, endpoint, cluster), and the one zigpy is handling
        self._last_report: dict[tuple[Any, int, int], tuple[bytes, float]] = {}
        self._frame: _Frame | None = None
        self._configuring: dict[str, asyncio.Task[Any]] = {}
        self._last_configure: dict[str, float] = {}
        self._last_link: dict[str, float] = {}
        #: per device: when its last LQI/RSSI readings went out, and their values
        self._link_sent: dict[str, tuple[float, Any, Any]] = {}
        self._link_due: set[str] = set()
        self._permit_until = 0.0
        self._forwarder: asyncio.Task[None] | None = None
        self._map_scan: asyncio.Task[None] | None = None
        self._energy_scanning = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._configured = self._load_configured()
        if self.config.port.startswith("/dev/tty"):
            from gateway.adapters.zigbee.hardware import stable_path

            stable = stable_path(self.config.port)
            if stable:
                self.log.info("zigbee: %s is %s; that name survives replugging and reboots,"
                              " prefer it as port:", self.config.port, stable)
        # importing zigpy and a radio library takes a second or more on a Pi: do it off the
        # event loop so the other adapters and the control API start meanwhile
        cls = await asyncio.to_thread(controller_class, self.config.radio_type)
        zconf = self.config.zigpy_config(str(self.dir / "zigbee.db"))
        # new(start_radio=False) only opens the database: seed it from the exported
        # backup first, so a replaced stick (or a lost database) restores the old network
        try:
            app = await _open_app(cls, zconf)
        except sqlite3.DatabaseError as exc:
            # a corrupt database must not keep the network down: set it aside and start
            # from the exported backup; devices come back as they next talk
            await asyncio.to_thread(self._quarantine_database, str(exc))
            app = await _open_app(cls, zconf)
        self.app = app
        try:
            if app.backups.most_recent_backup() is None:
                try:
                    seeded = backups.load_latest(self.dir)
                except ValueError as exc:
                    self.log.warning("zigbee: %s; not restoring from it", exc)
                    seeded = None
                if seeded is not None:
                    self.log.info("zigbee: database has no network backup; using %s",
                                  self.dir / backups.LATEST)
                    app.backups.add_backup(seeded)
            async with asyncio.timeout(STARTUP_TIMEOUT):
                await app.startup(auto_form=True)
        except BaseException as exc:
            self.app = None
            with contextlib.suppress(Exception):
                await app.shutdown()
            if isinstance(exc, TimeoutError):
                raise ConnectionError(
                    f"the Zigbee stick at {self.config.port} ({self.config.radio_type}) did not"
                    f" come up within {STARTUP_TIMEOUT:g} s; check radio_type, baudrate and"
                    " flow_control") from exc
            if isinstance(exc, Exception) and type(exc).__name__ == "TransientConnectionError":
                # zigpy hides the reason (no such port, permission denied) in the cause
                cause = exc.__cause__ or exc
                raise ConnectionError(f"cannot open the Zigbee stick at {self.config.port}:"
                                      f" {cause}") from exc
            raise
        app.add_listener(self)
        info = app.state.network_info
        self.log.info("zigbee: %s radio on %s up: channel %s, PAN 0x%04X, %d device(s)",
                      self.config.radio_type, self.config.port, info.channel, info.pan_id,
                      len(self._devices()))
        for device in self._devices():
            # known devices from zigpy's database: listen again, configure what is missing
            self._watch(device)
            if device.is_initialized and device.model is not None:
                self._interviewed.add(str(device.ieee))
            self._declare(device, interview=self._interview_state(device))
        self._m.devices.labels(self.prefix).set(len(self._devices()))
        self._forwarder = self.spawn(self._forward(), name=f"{self.prefix}:forward")
        self.spawn(self._backup_loop(), name=f"{self.prefix}:backup")

    async def stop(self) -> None:
        self._stopping = True
        self.ingest.begin_stop()  # one limit for the radio's shutdown and the drain after it
        app, self.app = self.app, None
        for task in list(self._configuring.values()):
            task.cancel()
        if self._map_scan is not None:
            self._map_scan.cancel()  # its requests would only fail on a closing radio
        for unsubscribe in [u for subs in self._watched.values() for u in subs]:
            with contextlib.suppress(Exception):
                unsubscribe()
        self._watched.clear()
        if app is not None:
            app.remove_listener(self)
            try:
                # bellows can hang here for good after a lost link: its serial thread
                # stops, and a disconnect handed to it in that moment never runs
                async with asyncio.timeout(RADIO_SHUTDOWN_TIMEOUT):
                    await app.shutdown()
            except TimeoutError:
                self.log.warning("zigbee: radio did not shut down within %g s; closing its"
                                 " database anyway", RADIO_SHUTDOWN_TIMEOUT)
                # zigpy closes its database only after the radio: without this its
                # SQLite thread outlives the adapter and keeps the process from exiting
                db = getattr(app, "_dblistener", None)
                if db is not None:
                    with contextlib.suppress(Exception):
                        await db.shutdown()
            except Exception as exc:  # noqa: BLE001 - a dead stick must not block the drain
                self.log.warning("zigbee: radio shutdown failed: %s", exc)
        # the radio is quiet now: hand what is still queued to the pipeline
        if self._forwarder is not None and not self._forwarder.done():
            self._wake.set()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._drained()),
                                       self.ingest.remaining())
        self.ingest.stop_retrying()
        if self._pending:
            self._drop(len(self._pending), "shutdown")
            self._pending.clear()
        await super().stop()

    def _quarantine_database(self, reason: str) -> None:
        db = self.dir / "zigbee.db"
        # its log and shared memory move with it, under the same name
        aside = set_aside(db, "corrupt", suffixes=("-wal", "-shm"))
        self.log.error("zigbee: database %s is unusable (%s); moved aside as %s, starting a"
                       " new one from %s. Paired devices stay in the network and reappear as"
                       " they next talk.", db, reason, aside or "nothing (it was gone)",
                       self.dir / backups.LATEST)

    async def _drained(self) -> None:
        # polled: the forwarder pops a batch once it is accepted; bounded by the caller
        while self._pending:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    # -- zigpy application listener (called synchronously by zigpy) -----------------------

    def connection_lost(self, exc: Exception) -> None:
        """The stick is gone (unplugged, link dropped, watchdog): restart the adapter."""
        if self._stopping:
            return
        self._m.connection_lost.labels(self.prefix).inc()
        self.log.error("zigbee: connection to the stick lost: %s", exc)
        self.fail(ConnectionError(f"Zigbee stick connection lost: {exc}"))

    def device_joined(self, device: Any) -> None:
        """A new device is on the network; zigpy interviews it next."""
        self.log.info("zigbee: device %s joined (nwk 0x%04X)", device.ieee, device.nwk)
        self._removed.discard(str(device.ieee))
        self._configured.discard(str(device.ieee))
        self._interviewed.discard(str(device.ieee))
        self._declare(device, interview="interviewing")
        self._m.devices.labels(self.prefix).set(len(self._devices()))

    def device_initialized(self, device: Any) -> None:
        """The interview finished: watch its clusters, then bind and configure reporting."""
        if self._is_coordinator(device):
            return
        self._watch(device)
        ieee = str(device.ieee)
        self._interviewed.add(ieee)
        configured = ieee in self._configured
        self._declare(device, interview="configured" if configured else "interviewed")
        self.log.info("zigbee: device %s interviewed: %s / %s, endpoints %s", ieee,
                      device.manufacturer, device.model,
                      [ep.endpoint_id for ep in device.non_zdo_endpoints])
        if not configured:
            self._schedule_configure(device)

    def device_reinterviewed(self, device: Any) -> None:
        """zigpy replaced the device object after a re-interview."""
        self.device_initialized(device)

    def device_init_failure(self, device: Any) -> None:
        """The interview did not finish (zigpy retries when the device talks again)."""
        self.log.warning("zigbee: interview of %s did not finish", device.ieee)
        self._declare(device, interview="failed")

    def device_left(self, device: Any) -> None:
        """The device announced it left the network."""
        self.log.info("zigbee: device %s left the network", device.ieee)
        if str(device.ieee) not in self._removed:
            self._declare(device, interview="left")

    def device_removed(self, device: Any) -> None:
        """The device was removed from zigpy's database."""
        self._unwatch(device)
        self._configured.discard(str(device.ieee))
        self._save_configured()
        self._m.devices.labels(self.prefix).set(len(self._devices()))

    def handle_message(self, device: Any, profile: int, cluster: int, src_ep: int,
                       dst_ep: int, message: bytes) -> None:
        """Any frame from a device: it is awake now, so retry what it missed."""
        if self._stopping or self._is_coordinator(device):
            return
        if dst_ep != 0 and src_ep != 0:
            self._expect_report(device, cluster, src_ep, message)
        ieee = str(device.ieee)
        now = time.monotonic()
        if (ieee in self._interviewed and ieee not in self._configured
                and now - self._last_configure.get(ieee, -1e9) >= self.config.configure_retry):
            self._schedule_configure(device)
        if now - self._last_link.get(ieee, -1e9) >= self.config.link_update_interval:
            self._last_link[ieee] = now
            self.ctx.devices.declare(self.device_id(device), lqi=device.lqi, rssi=device.rssi)
        if self.config.link_readings and ieee not in self._link_due:
            sent = self._link_sent.get(ieee)
            if sent is None or now - sent[0] >= self.config.link_interval:
                # zigpy stores this frame's LQI/RSSI on the device right after this call
                self._link_due.add(ieee)
                asyncio.get_running_loop().call_soon(self._link_reading, device)

    def _link_reading(self, device: Any) -> None:
        """The device's LQI and RSSI as readings, if they changed or were due again."""
        ieee = str(device.ieee)
        self._link_due.discard(ieee)
        lqi, rssi = device.lqi, device.rssi
        if self._stopping or (lqi is None and rssi is None):
            return
        now = time.monotonic()
        sent = self._link_sent.get(ieee)
        if sent is not None and (lqi, rssi) == sent[1:] \
                and now - sent[0] < self.config.link_interval * LINK_REPEAT:
            return
        self._link_sent[ieee] = (now, lqi, rssi)
        values: list[tuple[str, Any, str | None]] = []
        if lqi is not None:
            values.append(("linkquality", int(lqi), None))
        if rssi is not None:
            values.append(("rssi", int(rssi), "dBm"))
        self._emit(device, None, values)

    def _expect_report(self, device: Any, cluster_id: int, src_ep: int,
                       message: bytes) -> None:
        """Note a Report Attributes frame; if zigpy emits nothing for it, it was malformed.

        zigpy drops frames it cannot parse (or values of the wrong type) at debug level,
        before any event: the only trace of a broken device would be missing readings.
        zigpy calls this listener, then parses the frame and emits its events in the same
        call; the frame is judged when the next one arrives or on the next loop turn,
        whichever is first. Cheaper than parsing every frame twice.
        """
        self._judge_frame(self._frame)
        if not _is_report_frame(message):
            return
        key = (device.ieee, src_ep, cluster_id)
        now = time.monotonic()
        last = self._last_report.get(key)
        if last is not None and last[0] == message and now - last[1] < DUPLICATE_WINDOW:
            return  # a retransmission zigpy filters out: no events expected
        self._last_report[key] = (message, now)
        frame = _Frame(key, message)
        self._frame = frame
        asyncio.get_running_loop().call_soon(self._judge_frame, frame)

    def _judge_frame(self, frame: _Frame | None) -> None:
        if frame is None or frame is not self._frame:
            return
        self._frame = None
        if frame.handled:
            return
        self._m.malformed.labels(self.prefix).inc()
        ieee, ep, cluster = frame.key
        self._input_log.warning(str(ieee), "unparsed", "zigbee: report from %s (endpoint %d, "
                                "cluster 0x%04X) could not be parsed; frame %.200s", ieee, ep,
                                cluster, frame.message.hex())

    # -- devices ---------------------------------------------------------------------------

    def device_id(self, device: Any) -> str:
        """The gateway-wide id of a zigpy device: ``<adapter name>:<ieee>``."""
        return f"{self.prefix}:{device.ieee}"

    def _is_coordinator(self, device: Any) -> bool:
        app = self.app
        return app is not None and device.ieee == app.state.node_info.ieee

    def _devices(self) -> list[Any]:
        app = self.app
        if app is None:
            return []
        return [d for d in app.devices.values()
                if not self._is_coordinator(d) and hasattr(d, "endpoints")]

    def _find(self, device_id: str) -> Any:
        if not self.owns(device_id):
            return None
        native = device_id[len(self.prefix) + 1:].lower()
        for device in self._devices():
            if str(device.ieee) == native:
                return device
        return None

    def _interview_state(self, device: Any) -> str:
        ieee = str(device.ieee)
        if ieee in self._configured:
            return "configured"
        return "interviewed" if ieee in self._interviewed else "interviewing"

    def _declare(self, device: Any, **extra: Any) -> None:
        info: dict[str, Any] = {"model": device.model, "manufacturer": device.manufacturer,
                                "lqi": device.lqi, "rssi": device.rssi, "protocol": "zigbee",
                                "nwk": f"0x{device.nwk:04X}"}
        desc = device.node_desc
        if desc is not None:
            info["type"] = "mains" if desc.is_mains_powered else "battery"
            info["role"] = ("router" if desc.is_router else
                            "end_device" if desc.is_end_device else "coordinator")
        endpoints = [{"id": ep.endpoint_id, "profile": ep.profile_id,
                      "device_type": int(ep.device_type) if ep.device_type is not None else None,
                      "in_clusters": sorted(ep.in_clusters),
                      "out_clusters": sorted(ep.out_clusters)}
                     for ep in device.non_zdo_endpoints]
        if endpoints:
            info["endpoints"] = endpoints
        info.update(extra)
        if extra.get("interview") == "configured":
            self._configured.add(str(device.ieee))
        try:
            self.ctx.devices.declare(self.device_id(device), **info)
        except Exception as exc:  # noqa: BLE001 - the registry must not break the radio
            self.log.warning("zigbee: registry refused %s: %s", self.device_id(device), exc)

    # -- readings --------------------------------------------------------------------------

    def _watch(self, device: Any) -> None:
        """Subscribe to every cluster of ``device`` (again, after zigpy replaced it)."""
        self._unwatch(device)
        subs: list[Callable[[], None]] = []
        for ep in device.non_zdo_endpoints:
            for cluster in [*ep.in_clusters.values(), *ep.out_clusters.values()]:
                reported = functools.partial(self._on_attribute, device, cluster, reported=True)
                # zigpy files a report from a device that lists the cluster as an output
                # under that output cluster; "attribute_updated" replaces "attribute_report"
                # when a value is transformed on the way in
                subs.append(cluster.on_event("attribute_report", reported))
                subs.append(cluster.on_event("attribute_updated", reported))
                if cluster.is_server:
                    subs.append(cluster.on_event("attribute_read", functools.partial(
                        self._on_attribute, device, cluster, reported=False)))
                if cluster.cluster_id == IAS_ZONE and cluster.is_server:
                    watcher = _ZoneWatcher(self, device, cluster)
                    cluster.add_listener(watcher)
                    subs.append(functools.partial(cluster.remove_listener, watcher))
        self._watched[device.ieee] = subs

    def _unwatch(self, device: Any) -> None:
        for unsubscribe in self._watched.pop(device.ieee, []):
            with contextlib.suppress(Exception):
                unsubscribe()

    def _metric_suffix(self, device: Any, cluster: Any) -> str:
        # a metric on a second endpoint (double switches) gets the endpoint number appended
        first = min((ep.endpoint_id for ep in device.non_zdo_endpoints
                     if cluster.cluster_id in ep.in_clusters), default=None)
        ep_id = cluster.endpoint.endpoint_id
        return "" if first is None or ep_id == first else f"_{ep_id}"

    def _on_attribute(self, device: Any, cluster: Any, event: Any, *, reported: bool) -> None:
        frame = self._frame
        if reported and frame is not None and frame.key == (
                device.ieee, cluster.endpoint.endpoint_id, cluster.cluster_id):
            frame.handled = True
        try:
            if not reported and (cluster.cluster_id, event.attribute_id) not in METRICS \
                    and not (cluster.cluster_id == IAS_ZONE and event.attribute_id == 0x0002):
                return  # reads of anything else (scaling factors, zone type) are not data
            zone_type = None
            if cluster.cluster_id == IAS_ZONE:
                zone_type = _int_or_none(cluster.get("zone_type"))
            values = normalise(cluster.cluster_id, event.attribute_id, event.value,
                               lambda attr: cluster.get(attr), cluster.ep_attribute,
                               event.attribute_name, zone_type)
        except Exception as exc:  # noqa: BLE001 - a bad value is counted, never fatal
            self._m.malformed.labels(self.prefix).inc()
            self._input_log.warning(str(device.ieee), getattr(exc, "reason", "bad_value"),
                                    "zigbee: cannot read attribute 0x%04X of cluster 0x%04X "
                                    "from %s: %s: %.200s", event.attribute_id,
                                    cluster.cluster_id, device.ieee, type(exc).__name__, exc)
            return
        self._emit(device, cluster, values)

    def _emit(self, device: Any, cluster: Any, values: list[tuple[str, Any, str | None]]) -> None:
        """Queue readings of ``device``; ``cluster`` None for values of the device itself."""
        if not values:
            return  # values arriving while stopping are still queued: stop() drains them
        ts = time.time()
        dev_id = self.device_id(device)
        suffix = "" if cluster is None else self._metric_suffix(device, cluster)
        for metric, value, unit in values:
            if len(self._pending) >= self.config.max_pending:
                self._drop(1, "overflow")
                continue
            self._pending.append(Reading(dev_id, metric + suffix, value, unit, ts))
        self._m.pending.labels(self.prefix).set(len(self._pending))
        self._wake.set()

    def _drop(self, n: int, reason: str) -> None:
        self._m.dropped.labels(self.prefix, reason).inc(n)
        self._input_log.warning("queue", reason, "zigbee: dropped %d reading(s) (%s)", n, reason)

    async def _forward(self) -> None:
        """Hand queued readings to the pipeline; a refusal is retried, then counted."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
                # the store is full or failing: the device will not resend, so hold on
                # for retry_for (the ingest path retries), then count the loss
                if not await self.accept(batch, retry_for=self.config.retry_for):
                    if self._stopping:
                        return  # stop() counts what is still queued
                    self._drop(len(batch), "refused")
                for _ in range(len(batch)):
                    self._pending.popleft()
                self._m.pending.labels(self.prefix).set(len(self._pending))

    # -- binding, reporting, IAS enrollment -------------------------------------------------

    def _schedule_configure(self, device: Any) -> None:
        ieee = str(device.ieee)
        running = self._configuring.get(ieee)
        if running is not None and not running.done():
            return
        self._last_configure[ieee] = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._configure(device),
                                                      name=f"{self.prefix}:configure:{ieee}")
        self._configuring[ieee] = task
        task.add_done_callback(functools.partial(self._configure_done, ieee))

    def _configure_done(self, ieee: str, task: asyncio.Task[Any]) -> None:
        if self._configuring.get(ieee) is task:
            del self._configuring[ieee]

    async def _configure(self, device: Any) -> None:
        """Bind known clusters to the coordinator and ask for reports; mark done on success."""
        from zigpy.zcl import foundation
        from zigpy.zcl.helpers import ReportingConfig

        ieee = str(device.ieee)
        desc = device.node_desc
        mains = bool(desc is not None and desc.is_mains_powered)
        max_interval = int(self.config.report_max_interval_mains if mains
                           else self.config.report_max_interval_battery)
        problems: list[str] = []
        try:
            for ep in device.non_zdo_endpoints:
                for cid, cluster in sorted(ep.in_clusters.items()):
                    wanted = REPORTING.get(cid)
                    if wanted is None:
                        continue
                    async with asyncio.timeout(self.config.command_timeout * 3):
                        rsp = await cluster.bind()
                        status = rsp[0] if isinstance(rsp, (list, tuple)) and rsp else None
                        if status is not None and int(status) != 0:
                            problems.append(f"bind 0x{cid:04X}: {getattr(status, 'name', status)}")
                        if cid == IAS_ZONE:
                            await self._enroll(cluster)
                        # scaling factors first, so the first values are scaled right
                        scaling = list(SCALING_ATTRIBUTES.get(cid, ()))
                        if scaling:
                            await cluster.read_attributes(scaling)
                        config = {}
                        for rep in wanted:
                            try:
                                attr = cluster.find_attribute(rep.attribute)
                            except KeyError:
                                continue
                            config[attr] = ReportingConfig(
                                min_interval=rep.min_interval,
                                max_interval=min(rep.max_interval or max_interval, 0xFFFE),
                                reportable_change=rep.reportable_change)
                        results = await cluster.configure_reporting_multiple(config)
                        for attr, st in results.items():
                            if st not in (foundation.Status.SUCCESS,
                                          foundation.Status.UNSUPPORTED_ATTRIBUTE):
                                problems.append(f"report {cluster.name}.{attr.name}: {st.name}")
                        # current values, so a new device has readings before its first report
                        await cluster.read_attributes([a.id for a in config])
        except TimeoutError as exc:
            self.log.info("zigbee: %s did not answer while being configured (%s); retrying when"
                          " it next talks", ieee, type(exc).__name__)
            return
        except Exception as exc:  # noqa: BLE001 - zigpy's delivery errors, parsing errors...
            self.log.info("zigbee: configuring %s failed: %s: %s; retrying when it next talks",
                          ieee, type(exc).__name__, exc)
            return
        if problems:
            self.log.warning("zigbee: %s configured with problems: %s", ieee, "; ".join(problems))
        self._configured.add(ieee)
        self._save_configured()
        self._declare(device, interview="configured")
        self.log.info("zigbee: %s bound and reporting", ieee)

    async def _enroll(self, cluster: Any) -> None:
        """IAS zones report alarms only to their CIE: write our address, then enroll."""
        from zigpy.zcl.clusters.security import IasZone

        assert self.app is not None
        await cluster.write_attributes({"cie_addr": self.app.state.node_info.ieee})
        await cluster.read_attributes(["zone_type", "zone_state"])
        # auto-enroll response: many sensors never send an enroll request
        await cluster.enroll_response(enroll_response_code=IasZone.EnrollResponse.Success,
                                      zone_id=0, expect_reply=False)

    def _on_zone_command(self, device: Any, cluster: Any, command_id: int, args: Any) -> None:
        try:
            if command_id == 0x00:  # status change notification
                zone_type = _int_or_none(cluster.get("zone_type"))
                values = normalise(IAS_ZONE, 0x0002, int(args.zone_status), lambda a: None,
                                   zone_type=zone_type)
                self._emit(device, cluster, values)
            elif command_id == 0x01:  # enroll request
                from zigpy.zcl.clusters.security import IasZone

                self.log.info("zigbee: %s asks to enroll (zone type %s)", device.ieee,
                              getattr(args, "zone_type", "?"))
                asyncio.get_running_loop().create_task(cluster.enroll_response(
                    enroll_response_code=IasZone.EnrollResponse.Success, zone_id=0,
                    expect_reply=False))
        except Exception as exc:  # noqa: BLE001
            self._m.malformed.labels(self.prefix).inc()
            self._input_log.warning(str(device.ieee), "bad_zone_command",
                                    "zigbee: bad IAS zone command 0x%02X from %s: %.200s",
                                    command_id, device.ieee, exc)

    def _load_configured(self) -> set[str]:
        path = self.dir / "configured.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            self.log.warning("zigbee: %s unreadable (%s); devices will be configured again",
                             path, exc)
            return set()
        return {str(x) for x in data} if isinstance(data, list) else set()

    def _save_configured(self) -> None:
        path = self.dir / "configured.json"
        try:
            # rare (a device configured or removed): written on the loop, fsynced
            write_json_atomic(path, sorted(self._configured))
        except OSError as exc:
            self.log.warning("zigbee: cannot save %s: %s", path, exc)

    # -- the control interface ---------------------------------------------------------------

    async def permit_join(self, seconds: int) -> dict[str, Any]:
        """Open the network for joining for ``seconds`` (0 closes it, at most 254)."""
        if not isinstance(seconds, int) or isinstance(seconds, bool) \
                or not 0 <= seconds <= PERMIT_MAX:
            raise ValueError(f"seconds: expected 0 to {PERMIT_MAX}, got {seconds!r}")
        app = self._running()
        await app.permit(seconds)
        self._permit_until = time.time() + seconds
        self.log.info("zigbee: joining %s", f"open for {seconds} s" if seconds else "closed")
        return {"adapter": self.prefix, "seconds": seconds, "until": self._permit_until,
                "devices": [self.device_id(d) for d in self._devices()]}

    async def backup(self) -> dict[str, Any]:
        """Take a coordinator backup now and export it; returns where it went."""
        app = self._running()
        taken = await app.backups.create_backup(load_devices=True)
        path = await asyncio.to_thread(backups.export, self.dir, taken, self.config.backups_kept)
        self._m.backups.labels(self.prefix).inc()
        self.log.info("zigbee: coordinator backup exported to %s", path)
        return {"adapter": self.prefix, "path": str(path),
                "latest": str(self.dir / backups.LATEST),
                "backup_time": taken.backup_time.isoformat(),
                "devices": len(taken.network_info.nwk_addresses),
                "channel": int(taken.network_info.channel),
                "pan_id": f"0x{int(taken.network_info.pan_id):04X}"}

    async def remove(self, device: str) -> CommandResult:
        """Ask ``device`` to leave the network and forget it."""
        dev = self._find(device)
        if dev is None:
            return CommandResult(False, "unknown_device", f"no Zigbee device {device!r}")
        app = self._running()
        result: CommandResult
        try:
            async with asyncio.timeout(self.config.command_timeout):
                rsp = await dev.zdo.leave()
            status = rsp[0] if isinstance(rsp, (list, tuple)) and rsp else None
            result = (CommandResult.delivered("left the network")
                      if status is None or int(status) == 0 else
                      CommandResult.refused(f"leave: {getattr(status, 'name', status)}"))
        except TimeoutError:
            result = CommandResult.timeout("no answer to the leave request; removed anyway")
        except Exception as exc:  # noqa: BLE001 - delivery failures: still remove locally
            result = CommandResult.timeout(f"leave not delivered ({exc}); removed anyway")
        self._unwatch(dev)
        self._removed.add(str(dev.ieee))
        await app.remove(dev.ieee)
        self._configured.discard(str(dev.ieee))
        self._save_configured()
        # readings already taken reach the pipeline first, or the registry would see the
        # device again right after forgetting it
        for _ in range(100):
            if not any(r.device == device for r in self._pending):
                break
            await asyncio.sleep(0.01)
        with contextlib.suppress(Exception):  # it has left: a registry error changes nothing
            self.ctx.devices.remove(device)
        self.log.info("zigbee: %s removed (%s)", device, result.status)
        return result

    # -- network health ------------------------------------------------------------------------

    def _scan_refusal(self, energy: bool) -> str | None:
        if self._energy_scanning:
            return f"an energy scan is running on {self.prefix}; try again when it is done"
        if not energy:
            return None
        if self._map_scan is not None and not self._map_scan.done():
            return f"a network map scan is running on {self.prefix}; try again when it is done"
        if time.time() < self._permit_until:
            # the radio leaves the network's channel while it listens to the others
            left = self._permit_until - time.time()
            return (f"joining is open on {self.prefix} for {left:.0f} s more: an energy scan"
                    " now could lose a joining device; close it (gateway pair --seconds 0)"
                    " or wait")
        return None

    async def network_map(self, refresh: bool = False) -> dict[str, Any]:
        """Nodes and links from the routers' neighbour tables; ``refresh`` scans them again
        (one scan at a time: a second caller waits for the running one)."""
        app = self._running()
        complete = True
        if refresh:
            if self._map_scan is None or self._map_scan.done():
                refused = self._scan_refusal(energy=False)
                if refused:
                    raise ScanRefused(refused)
                self._map_scan = asyncio.get_running_loop().create_task(
                    self._scan_topology(app), name=f"{self.prefix}:topology")
            try:
                await asyncio.wait_for(asyncio.shield(self._map_scan),
                                       self.config.map_scan_timeout)
            except TimeoutError:
                complete = False
                self._map_scan.cancel()
                self.log.warning("zigbee: network map scan stopped after %g s; answering the"
                                 " tables read so far", self.config.map_scan_timeout)
        scanned_at = await asyncio.to_thread(self._load_scanned_at)
        answer = health.network_map(
            app, lambda d: self.device_id(d) if not self._is_coordinator(d) else None,
            scanned_at)
        answer.update(adapter=self.prefix, complete=complete)
        return answer

    async def _scan_topology(self, app: Any) -> None:
        started = time.monotonic()
        await app.topology.scan()
        await asyncio.to_thread(write_json_atomic, self.dir / "map.json",
                                {"scanned_at": time.time()})
        self.log.info("zigbee: network map scanned in %.1f s", time.monotonic() - started)

    def _load_scanned_at(self) -> float | None:
        try:
            value = json.loads((self.dir / "map.json").read_text(encoding="utf-8"))
            return float(value["scanned_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def energy_scan(self, channels: list[int] | None = None, duration: int = 4,
                          count: int = 1) -> dict[str, Any]:
        """Energy per channel (0-255) from the coordinator's radio, and the channel to use."""
        channels = sorted(set(channels or health.ALL_CHANNELS))
        if any(not 11 <= c <= 26 for c in channels):
            raise ValueError(f"channels: expected channels 11 to 26, got {channels}")
        if not 0 <= duration <= SCAN_DURATION_MAX:
            raise ValueError(f"duration: expected 0 to {SCAN_DURATION_MAX}, got {duration!r}")
        if not 1 <= count <= SCAN_COUNT_MAX:
            raise ValueError(f"count: expected 1 to {SCAN_COUNT_MAX}, got {count!r}")
        app = self._running()
        refused = self._scan_refusal(energy=True)
        if refused:
            raise ScanRefused(refused)
        # the radio leaves the network's channel per channel scanned: bound it generously
        limit = count * len(channels) * (2 ** duration + 1) * 0.01536 * 2 + 15.0
        self._energy_scanning = True
        try:
            async with asyncio.timeout(limit):
                energy = await app.energy_scan(channels=health.channel_mask(channels),
                                               duration_exp=duration, count=count)
        finally:
            self._energy_scanning = False
        current = _int_or_none(app.state.network_info.channel)
        answer = health.scan_report({int(c): float(e) for c, e in energy.items()}, current)
        answer.update(adapter=self.prefix, duration=duration, count=count)
        self.log.info("zigbee: energy scan of %d channel(s): channel %s recommended",
                      len(channels), answer["recommendation"]["channel"])
        return answer

    def _running(self) -> Any:
        if self.app is None:
            raise RuntimeError(f"Zigbee adapter {self.prefix!r} is not running (stick"
                               " disconnected or restarting); try again shortly")
        return self.app

    async def send(self, command: Command) -> CommandResult:
        dev = self._find(command.device)
        if dev is None:
            result = CommandResult(False, "unknown_device",
                                   f"no Zigbee device {command.device!r} (paired devices:"
                                   f" {len(self._devices())})")
        else:
            try:
                async with asyncio.timeout(self.config.command_timeout):
                    result = await commands.run(dev, command.action, command.params)
            except commands.UnsupportedAction as exc:
                result = CommandResult.unsupported(str(exc))
            except commands.CommandError as exc:
                result = CommandResult.refused(str(exc))
            except TimeoutError:
                result = CommandResult.timeout(
                    f"no answer from {command.device} within {self.config.command_timeout:g} s")
            except Exception as exc:  # noqa: BLE001 - zigpy DeliveryError and friends
                name = type(exc).__name__
                if name == "DeliveryError":
                    result = CommandResult.timeout(f"not delivered: {exc}")
                else:
                    result = CommandResult.error(f"{name}: {exc}")
        self._m.commands.labels(self.prefix, result.status).inc()
        return result

    # -- periodic backup -----------------------------------------------------------------

    async def _backup_loop(self) -> None:
        interval = self.config.backup_interval
        await asyncio.sleep(min(interval, 30.0))  # let the network settle first
        while True:
            try:
                await self.backup()
            except Exception as exc:  # noqa: BLE001 - a failed backup is retried next round
                self.log.warning("zigbee: coordinator backup failed: %s: %s",
                                 type(exc).__name__, exc)
            await asyncio.sleep(interval)


async def _open_app(cls: Any, zconf: dict[str, object]) -> Any:
    """``cls.new`` without the radio: opens zigpy's database, and only that.

    A stop arriving meanwhile lets the opening finish and closes the database again:
    zigpy's database thread would otherwise outlive the adapter (and block exit).
    """
    opening = asyncio.ensure_future(cls.new(zconf, auto_form=True, start_radio=False))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            app = await opening
            await app.shutdown()
        raise


class _Frame:
    """A report frame handed to zigpy: did any attribute event come out of it?"""

    __slots__ = ("key", "message", "handled")

    def __init__(self, key: tuple[Any, int, int], message: bytes) -> None:
        self.key = key
        self.message = message
        self.handled = False


def _is_report_frame(message: bytes) -> bool:
    """A ZCL Report Attributes frame (general, server to client), read from its header."""
    if len(message) < 3:
        return False
    control = message[0]
    if control & 0x03 != 0 or not control & 0x08:  # cluster-specific, or client to server
        return False
    command_at = 4 if control & 0x04 else 2  # a manufacturer code takes two bytes
    return len(message) > command_at and message[command_at] == 0x0A


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


class _ZoneWatcher:
    """Legacy zigpy cluster listener: IAS zone commands arrive only as ``cluster_command``."""

    def __init__(self, adapter: ZigbeeAdapter, device: Any, cluster: Any) -> None:
        self.adapter = adapter
        self.device = device
        self.cluster = cluster

    def cluster_command(self, tsn: int, command_id: int, args: Any) -> None:
        self.adapter._on_zone_command(self.device, self.cluster, command_id, args)
