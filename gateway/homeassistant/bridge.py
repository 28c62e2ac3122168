"""The running Home Assistant bridge: discovery configs, states and commands on a local broker.

- The hot path only notes which devices changed (:meth:`HomeAssistantBridge.observe`); one
  task publishes, at most once per ``min_interval`` per device, the device's latest values
  as one JSON state (a burst in between is coalesced into the last values).
- A device's entities are announced when it is first seen or declared, re-announced when
  its registry entry or metric set changes, when Home Assistant's birth message
  ``online`` arrives and after every reconnect; a device forgotten by the registry gets
  empty retained configs (Home Assistant removes its entities). The registry's change
  listener says when a device is declared, renamed or removed: the bridge acts at once.
- Switch and light commands from Home Assistant go to the adapter that owns the device
  (the supervisor's ``send``); the state after a successful command is published.
- The connection's last will marks the gateway offline; every entity's availability needs
  both the gateway and its device online.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gmqtt import Message
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config.types import TlsConfig
from gateway.core.backoff import Backoff
from gateway.core.gmqtt_patch import OwnReconnectClient as _Client
from gateway.core.registry import DeviceChange
from gateway.core.tasks import cancel_and_wait, wait_event
from gateway.homeassistant import discovery as d
from gateway.homeassistant.config import Broker, HomeAssistantConfig
from gateway.logs import InputLog
from gateway.metrics import metric_set
from gateway.reading import Command, CommandResult, Reading

log = logging.getLogger("gateway.homeassistant")

Send = Callable[[Command], Awaitable[CommandResult]]
#: commands from Home Assistant being carried out at once, at most
MAX_PENDING_COMMANDS = 64
#: a full look at the registry this often, a safety net only: the registry's change
#: listener already reports every declared, renamed and removed device when it happens
RESYNC_EVERY = 300.0


class Devices(Protocol):
    """What the bridge reads from the device registry."""

    def get(self, device: str) -> dict[str, Any] | None: ...

    def all(self) -> list[dict[str, Any]]: ...

    def add_listener(self, fn: Callable[[str, bool], None]) -> None: ...

    def remove_listener(self, fn: Callable[[str, bool], None]) -> None: ...

    def add_change_listener(self, fn: Callable[[str, DeviceChange], None]) -> None: ...

    def remove_change_listener(self, fn: Callable[[str, DeviceChange], None]) -> None: ...

    def __contains__(self, device: object) -> bool: ...

    def __len__(self) -> int: ...


@dataclass
class _Known:
    """What has been published for one device."""

    node: str
    configs: dict[str, bytes] = field(default_factory=dict)  # config topic → payload
    refused: set[str] = field(default_factory=set)  # config topics past max_entities
    state: bytes | None = None
    online: bool | None = None
    control: str | None = None
    on: bool | None = None
    level: float | None = None
    control_state: bytes | None = None
    published_at: float = -1e9  # monotonic


def _first_seen(entry: dict[str, Any]) -> tuple[float, str]:
    first = entry.get("first_seen")
    return (float(first) if isinstance(first, (int, float)) else 0.0, str(entry["id"]))


class BridgeMetrics:
    """The bridge's metrics, registered once per registry (a reload restarts the bridge)."""

    def __init__(self, reg: CollectorRegistry) -> None:
        self.published = Counter("gateway_homeassistant_published",
                                 "Messages published for Home Assistant", ["kind"],
                                 registry=reg)
        self.refused = Counter("gateway_homeassistant_refused",
                               "Entities or commands refused", ["reason"], registry=reg)
        self.commands = Counter("gateway_homeassistant_commands",
                                "Commands from Home Assistant, by result", ["status"],
                                registry=reg)
        self.connected = Gauge("gateway_homeassistant_connected",
                               "1 while connected to the Home Assistant broker", registry=reg)
        self.entities = Gauge("gateway_homeassistant_entities", "Entities announced",
                              registry=reg)


class HomeAssistantBridge:
    """Announces the registry's devices to Home Assistant and carries out its commands."""

    def __init__(self, config: HomeAssistantConfig, broker: Broker, gateway_id: str,
                 version: str, devices: Devices, send: Send | None,
                 metrics: CollectorRegistry | None = None) -> None:
        self.config = config
        self.broker = broker
        self.gateway_id = gateway_id
        self.version = version
        self.devices = devices
        self.send = send
        self.topics = d.Topics(config.discovery_prefix, config.state_base(gateway_id),
                               gateway_id)
        self.connected = False
        self._client: _Client | None = None
        self._known: dict[str, _Known] = {}
        self._nodes: dict[str, str] = {}  # node id → device
        self._entities = 0
        self._pending: set[str] = set()
        self._changed: set[str] = set()  # declared, renamed or removed since the last turn
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._resend = False
        self._task: asyncio.Task[None] | None = None
        self._commands: set[asyncio.Task[None]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._backoff = Backoff(config.reconnect_delay, max(60.0, config.reconnect_delay))
        self._input_log = InputLog(log)
        m = metric_set(metrics or CollectorRegistry(), BridgeMetrics)
        self.m_published, self.m_refused = m.published, m.refused
        self.m_commands, self.m_connected = m.commands, m.connected
        m.entities.set_function(lambda: self._entities)  # the bridge running now

    # -- hooks (hot path: note and wake, nothing else) -----------------------------------

    def observe(self, readings: Sequence[Reading]) -> None:
        """Pipeline observer: note which devices changed."""
        last: object = None
        pending = self._pending
        for r in readings:
            if r.device is not last:
                last = r.device
                pending.add(r.device)
        self._wake.set()

    def on_transition(self, device: str, online: bool) -> None:
        """Registry listener: a device went online or offline."""
        self._pending.add(device)
        self._wake.set()

    def on_change(self, device: str, change: DeviceChange) -> None:
        """Registry change listener: a device was declared, renamed or removed."""
        self._changed.add(device)
        self._wake.set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Hook into the registry and start connecting in the background."""
        if self.config.sweep_interval is not None:
            log.warning("homeassistant.sweep_interval is no longer used (removed devices "
                        "lose their entities at once); remove it from the config")
        self.devices.add_listener(self.on_transition)
        self.devices.add_change_listener(self.on_change)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="homeassistant")

    async def stop(self) -> None:
        """Finish commands briefly, mark the gateway offline, disconnect."""
        self.devices.remove_listener(self.on_transition)
        self.devices.remove_change_listener(self.on_change)
        self._stopping.set()
        self._wake.set()
        if self._commands:
            await asyncio.wait(list(self._commands), timeout=self.config.command_timeout)
        await self._close(graceful=True)  # before the task's own close, which has no will
        await cancel_and_wait(self._task)
        self._task = None

    # -- connection ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self._connect()
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: back off and reconnect
                if self._stopping.is_set():
                    return
                log.warning("homeassistant: broker %s:%d: %s", self.broker.host,
                            self.broker.port, str(exc) or type(exc).__name__)
            finally:
                await self._close(graceful=False)
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 60:
                self._backoff.reset()
            await wait_event(self._stopping, self._backoff.next_delay())

    async def _connect(self) -> None:
        cfg = self.config
        client = _Client(cfg.client_id or f"{self.gateway_id}-homeassistant",
                         clean_session=True, session_expiry_interval=0,
                         will_message=Message(self.topics.status, b"offline", qos=1,
                                              retain=True))
        client.on_message = self._on_message
        if self.broker.username:
            client.set_auth_credentials(self.broker.username, self.broker.password)
        self._client = client
        try:
            tls = TlsConfig.context(cfg.tls)
            await asyncio.wait_for(client.connect(self.broker.host, self.broker.port, ssl=tls,
                                                  keepalive=cfg.keepalive),
                                   timeout=cfg.connect_timeout)
        except TimeoutError:
            raise ConnectionError(f"no CONNACK within {cfg.connect_timeout:g} s") from None
        self.connected = True
        self.m_connected.set(1)
        log.info("homeassistant: connected to %s:%d; discovery under %s/, states under %s/",
                 self.broker.host, self.broker.port, cfg.discovery_prefix, self.topics.base)
        client.subscribe(cfg.birth_topic, qos=1)
        client.subscribe(self.topics.command_filter, qos=1)
        self._publish(self.topics.status, b"online", retain=True, kind="status")

    async def _close(self, graceful: bool) -> None:
        client, self._client = self._client, None
        was = self.connected
        self.connected = False
        self.m_connected.set(0)
        if client is None:
            return
        try:
            # 0x04: the broker publishes the will (offline) for us, as if we had died
            await asyncio.wait_for(client.disconnect(reason_code=0x04 if graceful and was
                                                     else 0), 5)
        except Exception:  # noqa: BLE001 - the connection is going away regardless
            pass

    def _publish(self, topic: str, payload: bytes, retain: bool, kind: str) -> None:
        client = self._client
        if client is None or not self.connected:
            return
        client.publish(topic, payload, qos=1, retain=retain)
        self.m_published.labels(kind).inc()

    # -- the publishing loop --------------------------------------------------------------------

    async def _session(self) -> None:
        client = self._client
        assert client is not None
        self._changed.clear()  # what changed while disconnected: the resync covers it
        self._resync(force=True)
        next_resync = time.monotonic() + RESYNC_EVERY
        while not client.lost.is_set():
            now = time.monotonic()
            if self._resend:
                self._resend = False
                log.info("homeassistant: birth message: sending every discovery config again")
                self._resync(force=True)
            elif now >= next_resync:
                self._resync(force=False)
                next_resync = now + RESYNC_EVERY
            if self._changed:
                self._apply_changes(now)
            due = self._publish_pending(now)
            timeout = min(next_resync, due) - time.monotonic()
            self._wake.clear()
            if timeout > 0 and not self._pending_due():
                lost = asyncio.ensure_future(client.lost.wait())
                woke = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({lost, woke}, timeout=timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                    woke.cancel()
            if self._stopping.is_set():
                return
        raise ConnectionError("connection lost")

    def _apply_changes(self, now: float) -> None:
        """Act on the devices the registry declared, renamed or removed."""
        changed, self._changed = self._changed, set()
        entries = {device: self.devices.get(device) for device in changed}
        for device in sorted(dev for dev, e in entries.items() if e is None):
            self._update(device, force=False, now=now)  # removed: frees its node id first
        for entry in sorted((e for e in entries.values() if e is not None), key=_first_seen):
            self._update(str(entry["id"]), force=False, now=now, entry=entry)

    def _pending_due(self) -> bool:
        return self._resend or self._stopping.is_set()

    def _publish_pending(self, now: float) -> float:
        """Publish the devices whose turn has come; when the next one is due."""
        next_due = now + 3600.0
        if not self._pending:
            return next_due
        pending, self._pending = self._pending, set()
        interval = self.config.min_interval
        for device in pending:
            known = self._known.get(device)
            if known is not None and now - known.published_at < interval:
                self._pending.add(device)  # coalesced: its latest values go out later
                next_due = min(next_due, known.published_at + interval)
                continue
            self._update(device, force=False, now=now)
        return next_due

    def _resync(self, force: bool) -> None:
        """Announce every device of the registry (again, with ``force``), publish states."""
        if force:
            self._publish_entity(d.gateway_entity(self.topics, self.version))
            for known in self._known.values():
                self._entities -= len(known.configs)
                known.configs.clear()
                known.state = known.control_state = None
                known.online = None
        now = time.monotonic()
        # oldest first: of two device ids that slug alike, the one registered first keeps
        # the plain node id on every start, as it had when the second one appeared
        for entry in sorted(self.devices.all(), key=_first_seen):
            self._update(str(entry["id"]), force=force, now=now, entry=entry)
        self._sweep()

    def _sweep(self) -> None:
        """Clear the entities of devices the registry forgot."""
        for device in [dev for dev in self._known if dev not in self.devices]:
            self._forget(device)

    def _forget(self, device: str) -> None:
        known = self._known.pop(device)
        self._nodes.pop(known.node, None)
        self._locks.pop(device, None)
        for topic in known.configs:
            self._publish(topic, b"", retain=True, kind="removal")
        self._entities -= len(known.configs)
        retain = self.config.retain_state
        if retain:  # retained states and availability go too
            self._publish(self.topics.state(known.node), b"", retain=True, kind="removal")
            self._publish(self.topics.availability(known.node), b"", retain=True,
                          kind="removal")
            if known.control is not None:
                self._publish(self.topics.entity_state(known.node, known.control), b"",
                              retain=True, kind="removal")
        log.info("homeassistant: %s forgotten: its %d entit%s removed", device,
                 len(known.configs), "y" if len(known.configs) == 1 else "ies")

    # -- one device -------------------------------------------------------------------------

    def _update(self, device: str, force: bool, now: float,
                entry: dict[str, Any] | None = None) -> None:
        if not self.config.wants(device):
            return
        entry = entry if entry is not None else self.devices.get(device)
        if entry is None:
            if device in self._known:
                self._forget(device)
            return
        known = self._known.get(device)
        if known is None:
            node = self.topics.node(device)
            other = self._nodes.get(node)
            if other is not None:  # another device id slugs the same: a suffix tells apart
                node = self.topics.node(device, suffixed=True)
                if node in self._nodes:
                    self._refuse("node_collision", device, "homeassistant: %s and %s share "
                                 "the node id %s: %s is not announced (rename one device id)",
                                 self._nodes[node], device, node, device)
                    return
                log.info("homeassistant: %s and %s slug to the same node id: %s is "
                         "announced as %s", other, device, device, node)
            known = self._known[device] = _Known(node)
            self._nodes[node] = device
        if not self.connected:
            return
        values: dict[str, Any] = entry.get("values") or {}
        info = {k: v for k, v in entry.items() if k != "values"}
        control = d.controls(device, info, self._matches(device, self.config.switches),
                             self._matches(device, self.config.lights))
        entities: list[d.Entity] = []
        state: dict[str, Any] = {}
        for metric, latest in sorted(values.items()):
            value = latest.get("value")
            if control is not None and metric in d.ON_OFF_METRICS and isinstance(value, bool):
                known.on = value
                continue
            if control is not None and metric in d.LEVEL_METRICS \
                    and isinstance(value, (int, float)) and not isinstance(value, bool):
                known.level = float(value)
                continue
            if not self.config.wants(device, metric):
                continue
            state[metric] = value
            entities.append(d.sensor_entity(self.topics, device, info, metric,
                                            latest.get("unit"), value, self.version,
                                            node=known.node))
        if control is not None:
            known.control = control
            builder = d.light_entity if control == d.LIGHT else d.switch_entity
            entities.append(builder(self.topics, device, info, self.version, node=known.node))
        for entity in entities:
            self._announce(device, known, entity)
        # availability before state: Home Assistant shows a value only while available
        online = bool(entry.get("online"))
        if online != known.online:
            known.online = online
            self._publish(self.topics.availability(known.node),
                          b"online" if online else b"offline",
                          retain=self.config.retain_state, kind="availability")
        if state:
            payload = d.state_payload(state)
            if payload != known.state:
                known.state = payload
                known.published_at = now
                self._publish(self.topics.state(known.node), payload,
                              retain=self.config.retain_state, kind="state")
        if known.control is not None:
            self._publish_control(known)

    def _announce(self, device: str, known: _Known, entity: d.Entity) -> None:
        topic = entity.topic(self.topics)
        payload = entity.payload()
        if known.configs.get(topic) == payload:
            return
        if topic not in known.configs:
            if self._entities >= self.config.max_entities:
                if topic not in known.refused:  # counted once, not on every state update
                    known.refused.add(topic)
                    # one line a minute for the whole bridge: the limit is not one device's
                    self._refuse("max_entities", "entities", "homeassistant: %d entities "
                                 "announced (homeassistant.max_entities): not announcing %s "
                                 "of %s (counted in gateway_homeassistant_refused_total; "
                                 "raise the limit or narrow devices/metrics)",
                                 self._entities, entity.object_id, device)
                return
            known.refused.discard(topic)
            self._entities += 1
        known.configs[topic] = payload
        self._publish(topic, payload, retain=self.config.retain, kind="config")

    def _publish_entity(self, entity: d.Entity) -> None:
        self._publish(entity.topic(self.topics), entity.payload(), retain=self.config.retain,
                      kind="config")

    def _publish_control(self, known: _Known) -> None:
        assert known.control is not None
        payload = d.control_state(known.on, known.level, known.control == d.LIGHT)
        if payload != known.control_state and known.on is not None:
            known.control_state = payload
            self._publish(self.topics.entity_state(known.node, known.control), payload,
                          retain=self.config.retain_state, kind="state")

    def _refuse(self, reason: str, device: str, msg: str, *args: Any) -> None:
        self.m_refused.labels(reason).inc()
        self._input_log.warning(device[:200], reason, msg, *args)

    @staticmethod
    def _matches(device: str, patterns: list[str]) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(device, p) for p in patterns)

    # -- messages from Home Assistant ------------------------------------------------------

    def _on_message(self, client: _Client, topic: str, payload: bytes, qos: int,
                    properties: dict[str, Any]) -> int:
        if topic == self.config.birth_topic:
            if payload.strip() == b"online":
                self._resend = True
                self._wake.set()
            return 0
        where = self.topics.parse_command(topic)
        if where is None:
            return 0
        node, object_id = where
        device = self._nodes.get(node)
        known = self._known.get(device) if device is not None else None
        if device is None or known is None or known.control != object_id:
            self._refuse("unknown_entity", topic, "homeassistant: command on %.200s: no "
                         "such switch or light announced", topic)
            return 0
        try:
            actions = d.parse_command(object_id, payload)
        except d.BadCommand as exc:
            self._refuse("bad_command", device, "homeassistant: bad command for %s on %s: %s",
                         device, topic, exc)
            self.m_commands.labels("bad_payload").inc()
            return 0
        if len(self._commands) >= MAX_PENDING_COMMANDS:
            self._refuse("busy", device, "homeassistant: %d commands already in progress: "
                         "refusing one for %s", len(self._commands), device)
            return 0
        task = asyncio.get_running_loop().create_task(self._carry_out(device, actions))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)
        return 0

    async def _carry_out(self, device: str, actions: list[tuple[str, dict[str, Any]]]) -> None:
        lock = self._locks.setdefault(device, asyncio.Lock())
        async with lock:  # one device's commands run in the order they came
            for action, params in actions:
                result = await self._send(Command(device, action, params))
                self.m_commands.labels(result.status).inc()
                if not result.ok:
                    self._input_log.warning(device[:200], result.status, "homeassistant: %s "
                                            "%s: %s %s", device, action, result.status,
                                            result.detail)
                    continue
                known = self._known.get(device)
                if known is None:
                    return
                if action == "on":
                    known.on = True
                elif action == "off":
                    known.on = False
                elif action == "toggle":
                    known.on = not known.on
                elif action == "level":
                    known.on = float(params["level"]) > 0
                    known.level = float(params["level"])
                log.info("homeassistant: %s %s: %s", device, action, result.detail or "done")
                if known.control is not None:
                    self._publish_control(known)

    async def _send(self, command: Command) -> CommandResult:
        if self.send is None:
            return CommandResult.refused("no adapters are running")
        try:
            return await asyncio.wait_for(self.send(command), self.config.command_timeout)
        except TimeoutError:
            return CommandResult.timeout(f"no answer within {self.config.command_timeout:g} s")
        except Exception as exc:  # noqa: BLE001 - a failing command is a result, not a crash
            return CommandResult.error(f"{type(exc).__name__}: {exc}")
