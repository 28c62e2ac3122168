"""``type: lorawan`` — LoRaWAN devices through a ChirpStack v4 network server.

Discovery and downlinks use ChirpStack's gRPC API; uplinks come from per-device gRPC
event streams or from ChirpStack's MQTT integration (see README.md for the trade-off).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chirpstack_api.integration import integration_pb2 as integration
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.adapters.base import Adapter, AdapterConfig, AdapterContext
from gateway.adapters.lorawan.chirpstack import (
    ChirpStackClient,
    ChirpStackError,
    ChirpStackNotFound,
    ChirpStackRefused,
    ChirpStackUnavailable,
)
from gateway.adapters.lorawan.config import CommandTemplate, LorawanConfig, ProfileConfig
from gateway.adapters.lorawan.decode import (
    Candidate,
    DecodeError,
    apply_fields,
    decode_layout,
    decode_lpp,
)
from gateway.adapters.lorawan.events import Delivery
from gateway.adapters.lorawan.sources import GrpcStreamSource, MqttIntegrationSource, UplinkSource
from gateway.adapters.lorawan.state import DeviceStateStore
from gateway.core.backoff import Backoff
from gateway.core.tasks import wait_event
from gateway.logs import InputLog
from gateway.metrics import metric_set
from gateway.payloads import chirpstack
from gateway.reading import Command, CommandResult, Reading, now

_EUI = re.compile(r"^[0-9a-f]{16}$")
_PAYLOAD_KEYS = frozenset({"data", "data_base64", "object"})


def _flag(value: Any) -> bool:
    """A boolean command parameter; "false", "0", "no" are false (API callers send text)."""
    if isinstance(value, str):
        if value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if value.strip().lower() in ("false", "0", "no", "off", ""):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return bool(value)
#: a frame counter jump larger than this is a counter reset or rejoin, not lost uplinks
_FCNT_GAP_MAX = 16384


class LorawanMetrics:
    """The adapter's metrics, registered once per registry and shared by instances."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("gateway_lorawan_events", "ChirpStack events received",
                              ["adapter", "kind"], registry=registry)
        self.malformed = Counter("gateway_lorawan_malformed",
                                 "Events or payloads that could not be parsed or decoded",
                                 ["adapter", "reason"], registry=registry)
        self.duplicates = Counter("gateway_lorawan_duplicates",
                                  "Events dropped as already accepted (deduplication id)",
                                  ["adapter"], registry=registry)
        self.replayed = Counter("gateway_lorawan_replay_skipped",
                                "Replayed stream history items at or before the saved cursor",
                                ["adapter"], registry=registry)
        self.fcnt_gaps = Counter("gateway_lorawan_uplinks_missed",
                                 "Uplinks missing by frame counter (radio loss, or an outage "
                                 "longer than ChirpStack's event history)",
                                 ["adapter"], registry=registry)
        self.reconnects = Counter("gateway_lorawan_source_reconnects",
                                  "Reconnects of the uplink source", ["adapter", "source"],
                                  registry=registry)
        self.downlinks = Counter("gateway_lorawan_downlinks", "Downlinks by outcome",
                                 ["adapter", "result"], registry=registry)
        self.devices = Gauge("gateway_lorawan_devices", "Devices discovered in ChirpStack",
                             ["adapter"], registry=registry)


def metrics_for(registry: CollectorRegistry) -> LorawanMetrics:
    """The metrics on ``registry`` (restarted adapters reuse them: no double registration)."""
    return metric_set(registry, LorawanMetrics)


@dataclass
class _Pending:
    """A downlink waiting for its txack (and, if confirmed, ack)."""

    confirmed: bool
    future: asyncio.Future[CommandResult]
    transmitted: str = ""


class LorawanAdapter(Adapter):
    """ChirpStack devices: discovered over gRPC, uplinks to readings, commands to downlinks."""

    Config = LorawanConfig
    config: LorawanConfig

    def __init__(self, config: AdapterConfig, ctx: AdapterContext) -> None:
        super().__init__(config, ctx)
        self._input_log = InputLog(self.log)
        assert isinstance(config, LorawanConfig)
        self.metrics = metrics_for(ctx.metrics)
        self.state = DeviceStateStore(ctx.state_dir / f"lorawan-{ctx.name}.json",
                                      config.dedup_memory, fsync=config.state_fsync)
        self.client: ChirpStackClient | None = None
        self.source: UplinkSource | None = None
        #: dev_eui → {name, profile, profile_id, application_id, ...} from discovery
        self.devices: dict[str, dict[str, str]] = {}
        self._declared: dict[str, dict[str, str]] = {}
        self._pending: dict[str, _Pending] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: devices with an event left unaccepted at stop: their later events wait for it
        self._withheld: set[str] = set()
        self._ignored_kinds: set[str] = set()
        self._stopping = asyncio.Event()
        self.discovered = asyncio.Event()
        m = self.metrics
        name = ctx.name
        self._m_malformed = m.malformed
        self._m_dup = m.duplicates.labels(name)
        self._m_replayed = m.replayed.labels(name)
        self._m_gaps = m.fcnt_gaps.labels(name)
        self._m_devices = m.devices.labels(name)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load progress, discover devices (or use the last known ones), start the source."""
        cfg = self.config
        self.state.load()
        self.client = ChirpStackClient(cfg.server, cfg.api_token.get_secret_value(),
                                       tls=cfg.tls, ca_file=cfg.ca_file,
                                       timeout=cfg.request_timeout,
                                       streams_per_channel=cfg.stream.per_connection)
        try:
            await self._discover()
        except ChirpStackUnavailable as exc:
            # ChirpStack keeps what devices send while it is down only in its short history;
            # carry on with the devices known from the last run and keep trying
            cached = {eui: d.info for eui, d in self.state.devices.items() if d.info}
            self.log.warning("ChirpStack not reachable at start (%s); following %d device(s) "
                             "known from the last run and retrying discovery", exc, len(cached))
            self.devices = cached
        except BaseException:
            await self.client.close()  # refused (token, tenant...): the message says what to fix
            raise
        if cfg.source == "grpc":
            self.source = GrpcStreamSource(self.client, self.state, self._handle, self,
                                           cfg.stream, self.log)
        else:
            client_id = cfg.mqtt.client_id or f"gateway-lorawan-{self.ctx.name}"
            self.source = MqttIntegrationSource(cfg.mqtt, client_id, self._handle, self,
                                                self.log)
        try:
            await self.source.start()
        except Exception:
            await self.client.close()
            raise
        self.source.track(self.devices)
        self.spawn(self._discovery_loop(), name=f"{self.prefix}:discovery")

    async def stop(self) -> None:
        """Stop the source (the event being accepted finishes), save progress, close."""
        self._stopping.set()
        self.ingest.stop_retrying()  # also starts the drain limit: the source's wait counts
        if self.source is not None:
            await self.source.stop(self.ingest.remaining())
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_result(CommandResult.timeout("adapter stopped before the outcome"))
        await super().stop()
        await self.state.save(compact=True)
        self.state.close()
        if self.client is not None:
            await self.client.close()

    # -- hooks for the sources -------------------------------------------------------------

    def malformed(self, reason: str, source: str, detail: str) -> None:
        """Count and log (at a bounded rate per source and reason) an unusable payload."""
        self._m_malformed.labels(self.ctx.name, reason).inc()
        self._input_log.warning(source, reason, "malformed LoRaWAN event (%s) from %.100s: "
                                "%.300s", reason, source, detail)

    def ignored(self, kind: str) -> None:
        """Count an event type the adapter does not use; log each type once."""
        self.metrics.events.labels(self.ctx.name, "other").inc()
        if kind not in self._ignored_kinds and len(self._ignored_kinds) < 100:
            self._ignored_kinds.add(kind)
            self.log.info("ignoring ChirpStack %r events (not used by this adapter)", kind)

    def replay_skipped(self, n: int) -> None:
        """Count stream history items skipped by the cursor."""
        self._m_replayed.inc(n)

    def reconnected(self, source: str) -> None:
        """Count a reconnect of the uplink source."""
        self.metrics.reconnects.labels(self.ctx.name, source).inc()

    def fatal(self, exc: BaseException) -> None:
        """A source cannot go on (e.g. the token was revoked): fail the adapter."""
        self.log.error("%s", exc)
        self.fail(exc)

    # -- discovery -------------------------------------------------------------------------

    async def _discover(self) -> None:
        assert self.client is not None
        cfg = self.config
        apps: list[tuple[str, str]] = []
        if cfg.applications:
            apps = [(a, "") for a in cfg.applications]
        else:
            assert cfg.tenant_id
            for app in await self.client.list_applications(cfg.tenant_id, cfg.page_size):
                apps.append((app.id, app.name))
        found: dict[str, dict[str, str]] = {}
        for app_id, app_name in apps:
            for dev in await self.client.list_devices(app_id, cfg.page_size):
                eui = dev.dev_eui.lower()
                info = {"name": dev.name, "profile": dev.device_profile_name,
                        "profile_id": dev.device_profile_id, "application_id": app_id}
                if app_name:
                    info["application"] = app_name
                if dev.description:
                    info["description"] = dev.description
                for k, v in dev.tags.items():
                    info[f"tag_{k}"] = v
                found[eui] = info
        gone = set(self.devices) - set(found)
        for eui in gone:
            self.state.forget(eui)
        for eui, info in found.items():
            self.state.set_info(eui, info)
            self._declare(eui, info)
        if gone or set(found) != set(self.devices):
            self.log.info("ChirpStack: %d device(s) in %d application(s)%s", len(found),
                          len(apps), f", {len(gone)} removed" if gone else "")
        self.devices = found
        self._m_devices.set(len(found))
        self.discovered.set()

    async def _discovery_loop(self) -> None:
        backoff = Backoff(self.config.stream.backoff_initial, self.config.stream.backoff_max)
        delay = self.config.discovery_interval if self.discovered.is_set() else 0.0
        while not self._stopping.is_set():
            if delay:
                if await wait_event(self._stopping, delay):
                    return
            try:
                await self._discover()
            except ChirpStackUnavailable as exc:
                delay = backoff.next_delay()
                self.log.warning("ChirpStack discovery failed (%s); retrying in %.1f s", exc,
                                 delay)
                continue
            # ChirpStackRefused propagates: the token was revoked or the tenant changed
            backoff.reset()
            if self.source is not None:
                self.source.track(self.devices)
            await self.state.save()
            delay = self.config.discovery_interval

    def _declare(self, eui: str, info: Mapping[str, str]) -> None:
        if self._declared.get(eui) == info:
            return
        self._declared[eui] = dict(info)
        extra = {k: v for k, v in info.items()
                 if k not in ("name", "profile") and not k.startswith("tag_")}
        tags = sorted(f"{k[4:]}={v}" for k, v in info.items() if k.startswith("tag_"))
        self.ctx.devices.declare(
            f"{self.prefix}:{eui}", name=info.get("name") or eui,
            type=info.get("tag_type") or "lorawan", model=info.get("profile", ""),
            tags=tags, dev_eui=eui, **extra)

    # -- events → readings ------------------------------------------------------------------

    async def _handle(self, d: Delivery) -> bool:
        """Handle one event; True once it is durable (or needs no storing)."""
        # one event per device at a time, in arrival order (asyncio.Lock is FIFO): the MQTT
        # source runs handlers concurrently, and dedup and frame counters need the order
        lock = self._locks.get(d.dev_eui)
        if lock is None:
            lock = self._locks[d.dev_eui] = asyncio.Lock()
        async with lock:
            if d.dev_eui in self._withheld:
                return False  # an earlier event comes again next run: this one follows it
            if await self._handle_in_order(d):
                return True
            self._withheld.add(d.dev_eui)
            return False

    async def _handle_in_order(self, d: Delivery) -> bool:
        self.metrics.events.labels(self.ctx.name, d.kind).inc()
        eui = d.dev_eui
        dedup_id = str(getattr(d.event, "deduplication_id", "") or "")
        if dedup_id and self.state.is_duplicate(eui, dedup_id):
            self._m_dup.inc()
            return await self._commit(eui, d.cursor)
        readings: list[Reading] = []
        f_cnt: int | None = None
        try:
            if isinstance(d.event, integration.UplinkEvent):
                self._learn(eui, d.event.device_info)
                f_cnt = d.event.f_cnt
                readings = self.uplink_readings(d.event)
                self._check_f_cnt(eui, f_cnt)
            elif isinstance(d.event, integration.StatusEvent):
                self._learn(eui, d.event.device_info)
                readings = self.status_readings(d.event)
            elif isinstance(d.event, integration.TxAckEvent):
                self._txack(d.event)
            elif isinstance(d.event, integration.AckEvent):
                self._ack(d.event)
            elif isinstance(d.event, integration.JoinEvent):
                self._learn(eui, d.event.device_info)
                self.log.info("device %s joined (DevAddr %s)", eui, d.event.dev_addr)
            elif isinstance(d.event, integration.LogEvent):
                self._chirpstack_log(eui, d.event)
            elif isinstance(d.event, integration.LocationEvent):
                readings = self.location_readings(d.event)
        except DecodeError as exc:
            # an event the payloads package refuses (no DevEUI...): counted, never stored
            self.malformed(exc.reason, eui or "?", f"{d.kind} event: {exc}")
            readings = []
        except Exception as exc:  # noqa: BLE001 - one odd event must not stop the device's stream
            # skipped for good (committed below): replaying it would fail the same way
            self.malformed("error", eui, f"{d.kind} event: {type(exc).__name__}: {exc}")
            readings = []
        # refused (queue full, store failing): retried, in order per device, until stop;
        # the event stays uncommitted meanwhile (ChirpStack's history or the broker
        # session holds it)
        if readings and not await self.accept(readings, source=eui):
            return False
        self.state.record(eui, cursor=d.cursor, dedup_id=dedup_id, f_cnt=f_cnt)
        await self.state.save()
        return True

    def _chirpstack_log(self, eui: str, ev: integration.LogEvent) -> None:
        code = integration.LogCode.Name(ev.code)
        if ev.code == integration.UPLINK_CODEC:
            # the profile's codec threw: that uplink has no decoded object, only radio data
            self.malformed("codec", eui, f"ChirpStack codec error: {ev.description}")
            return
        level = logging.WARNING if ev.level else logging.DEBUG
        self.log.log(level, "ChirpStack log for %s: %s (%s)", eui, ev.description, code)

    async def _commit(self, eui: str, cursor: str) -> bool:
        if cursor:
            self.state.record(eui, cursor=cursor)
            await self.state.save()
        return True

    def _profile(self, eui: str, info: integration.DeviceInfo | None) -> ProfileConfig:
        profiles = self.config.profiles
        if profiles:
            names = []
            if info is not None:
                names += [info.device_profile_name, info.device_profile_id]
            known = self.devices.get(eui, {})
            names += [known.get("profile", ""), known.get("profile_id", "")]
            for n in names:
                if n and n in profiles:
                    return profiles[n]
        return self.config.default_profile

    def _learn(self, eui: str, info: integration.DeviceInfo) -> None:
        """Declare devices first seen in events (MQTT source, or newer than discovery)."""
        if eui in self.devices or not info.dev_eui:
            return
        learned = {"name": info.device_name, "profile": info.device_profile_name,
                   "profile_id": info.device_profile_id, "application_id": info.application_id,
                   "application": info.application_name}
        for k, v in info.tags.items():
            learned[f"tag_{k}"] = v
        self.devices[eui] = learned
        self.state.set_info(eui, learned)
        self._declare(eui, learned)

    def _check_f_cnt(self, eui: str, f_cnt: int) -> None:
        d = self.state.devices.get(eui)
        last = d.f_cnt if d is not None else None
        if last is None:
            return
        gap = f_cnt - last - 1
        if 0 < gap <= _FCNT_GAP_MAX:
            self._m_gaps.inc(gap)
            self.log.warning("device %s: %d uplink(s) missing (frame counter %d → %d): radio "
                             "loss, or an outage longer than ChirpStack's per-device event "
                             "history", eui, gap, last, f_cnt)

    def uplink_readings(self, ev: integration.UplinkEvent) -> list[Reading]:
        """The readings of one uplink: decoded payload, then radio metadata.

        DecodeError (``no_device``) for an event without a DevEUI.
        """
        eui = chirpstack.device_of(ev)
        device = f"{self.prefix}:{eui}"
        ts = chirpstack.event_time(ev, now())
        profile = self._profile(eui, ev.device_info)
        values: list[Candidate] = []
        if not profile.ports or ev.f_port in profile.ports:
            try:
                values = apply_fields(self._decode(ev, profile), profile)
            except DecodeError as exc:
                self.malformed("payload", eui, f"f_port {ev.f_port}, "
                               f"data {ev.data.hex()}: {exc}")
        return chirpstack.uplink_readings(ev, device, ts, values, self.config.radio_metrics)

    @staticmethod
    def _decode(ev: integration.UplinkEvent, profile: ProfileConfig) -> list[Candidate]:
        if profile.decoder == "object":
            return chirpstack.object_candidates(ev)
        if profile.decoder == "cayenne":
            return decode_lpp(ev.data)
        if profile.decoder == "layout":
            return decode_layout(ev.data, profile.layout)
        return []

    def status_readings(self, ev: integration.StatusEvent) -> list[Reading]:
        """Battery and link margin from a device status event (DecodeError: no DevEUI)."""
        device = f"{self.prefix}:{chirpstack.device_of(ev)}"
        return chirpstack.status_readings(ev, device, chirpstack.event_time(ev, now()))

    def location_readings(self, ev: integration.LocationEvent) -> list[Reading]:
        """A geolocation result (ChirpStack's location event) as latitude/longitude/altitude."""
        device = f"{self.prefix}:{chirpstack.device_of(ev)}"
        return chirpstack.location_readings(ev, device, chirpstack.event_time(ev, now()))

    # -- downlinks ----------------------------------------------------------------------------

    def _txack(self, ev: integration.TxAckEvent) -> None:
        self.metrics.downlinks.labels(self.ctx.name, "transmitted").inc()
        p = self._pending.get(ev.queue_item_id)
        if p is None or p.future.done():
            return
        p.transmitted = ev.gateway_id
        if not p.confirmed:
            p.future.set_result(CommandResult.sent(
                f"transmitted by gateway {ev.gateway_id} (queue item {ev.queue_item_id}, "
                f"FCntDown {ev.f_cnt_down}); unconfirmed, so delivery is not known"))

    def _ack(self, ev: integration.AckEvent) -> None:
        result = "acked" if ev.acknowledged else "not_acked"
        self.metrics.downlinks.labels(self.ctx.name, result).inc()
        p = self._pending.get(ev.queue_item_id)
        if p is None or p.future.done():
            return
        if ev.acknowledged:
            p.future.set_result(CommandResult.delivered(
                f"acknowledged by the device (queue item {ev.queue_item_id})"))
        else:
            p.future.set_result(CommandResult.timeout(
                f"the device did not acknowledge the confirmed downlink (queue item "
                f"{ev.queue_item_id})"))

    def _downlink_params(self, command: Command, eui: str) -> dict[str, Any] | CommandResult:
        params = dict(command.params)
        if command.action != "downlink":
            profile = self._profile(eui, None)
            template: CommandTemplate | None = profile.commands.get(command.action)
            if template is None:
                known = ", ".join(sorted(["downlink", *profile.commands])) or "downlink"
                return CommandResult.unsupported(
                    f"LoRaWAN devices of profile {self.devices.get(eui, {}).get('profile', '?')!r}"
                    f" understand {known}, not {command.action!r}")
            base: dict[str, Any] = {"f_port": template.f_port, "confirmed": template.confirmed}
            if not _PAYLOAD_KEYS.intersection(params):  # a payload given replaces the template's
                if template.data is not None:
                    base["data"] = template.data
                if template.object is not None:
                    base["object"] = template.object
            params = {**base, **params}
        return params

    async def send(self, command: Command) -> CommandResult:
        """Queue a downlink with ``DeviceService.Enqueue``.

        ``action: downlink`` takes ``f_port`` (1-223), ``data`` (hex) or ``data_base64`` or
        ``object`` (for the codec's encoder), ``confirmed``, ``expires_in`` (s) or
        ``expires_at`` (UNIX s), ``flush_queue``, ``wait`` (s to wait for txack/ack). Other
        actions are the profile's ``commands``.
        """
        if self.client is None:
            return CommandResult.refused("the LoRaWAN adapter is not running")
        eui = command.device.split(":", 1)[1].lower() if ":" in command.device else ""
        if not _EUI.fullmatch(eui):
            return CommandResult(False, "unknown_device",
                                 f"{command.device!r} is not <adapter>:<16 hex digit DevEUI>")
        p = self._downlink_params(command, eui)
        if isinstance(p, CommandResult):
            return p
        try:
            f_port = int(p.get("f_port", 0))
            data: bytes | None = None
            if "data" in p:
                data = bytes.fromhex(str(p["data"]))
            elif "data_base64" in p:
                data = base64.b64decode(str(p["data_base64"]), validate=True)
            obj = p.get("object")
            confirmed = _flag(p.get("confirmed", False))
            expires_at: float | None = None
            if "expires_at" in p:
                expires_at = float(p["expires_at"])
            elif "expires_in" in p:
                expires_at = time.time() + float(p["expires_in"])
            wait = float(p.get("wait", self.config.downlink_wait))
        except (TypeError, ValueError) as exc:
            return CommandResult.refused(f"bad downlink parameters: {exc}")
        if not 1 <= f_port <= 223:
            return CommandResult.refused(f"f_port must be 1-223 (got {p.get('f_port')!r})")
        if (data is None) == (obj is None):
            return CommandResult.refused("give the payload as data (hex), data_base64 or "
                                         "object (for the device profile's codec), exactly one")
        if obj is not None and not isinstance(obj, Mapping):
            return CommandResult.refused("object must be a mapping")
        try:
            qid = await self.client.enqueue(eui, f_port, data=data, obj=obj, confirmed=confirmed,
                                            expires_at=expires_at,
                                            flush_queue=_flag(p.get("flush_queue", False)))
        except ChirpStackNotFound:
            self.metrics.downlinks.labels(self.ctx.name, "failed").inc()
            return CommandResult(False, "unknown_device", f"ChirpStack has no device {eui}")
        except ChirpStackRefused as exc:
            self.metrics.downlinks.labels(self.ctx.name, "failed").inc()
            return CommandResult.refused(str(exc))
        except ChirpStackError as exc:
            self.metrics.downlinks.labels(self.ctx.name, "failed").inc()
            return CommandResult.error(str(exc))
        self.metrics.downlinks.labels(self.ctx.name, "queued").inc()
        if wait <= 0:
            return CommandResult.sent(f"queued in ChirpStack as {qid}; sent at the device's "
                                      "next receive window")
        fut: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._pending[qid] = _Pending(confirmed, fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), wait)
        except TimeoutError:
            pending = self._pending.get(qid)
            if pending is not None and pending.transmitted:
                return CommandResult.sent(f"queue item {qid} transmitted by gateway "
                                          f"{pending.transmitted}; no acknowledgement within "
                                          f"{wait:g} s")
            return CommandResult.timeout(f"queue item {qid} queued in ChirpStack; not "
                                         f"transmitted within {wait:g} s (class A devices "
                                         "receive only after their next uplink)")
        finally:
            self._pending.pop(qid, None)
