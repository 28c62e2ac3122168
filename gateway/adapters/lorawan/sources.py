"""The two uplink sources behind one interface: per-device gRPC streams, or MQTT.

Both call a :data:`Handler` with each :class:`Delivery` and commit only once it returned
True: the gRPC source by saving the device's cursor (the LogItem id), the MQTT source by
sending PUBACK. When the handler returns False (the adapter is stopping with readings
refused), nothing is committed and the event comes again: replayed from ChirpStack's
history, or redelivered by the broker from the persistent session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import grpc
import grpc.aio
from gmqtt import Client as MQTTClient
from gmqtt.mqtt.constants import MQTTv50

from gateway.adapters.lorawan.chirpstack import FATAL, ChirpStackClient, explain
from gateway.adapters.lorawan.config import MqttIntegrationConfig, StreamConfig
from gateway.adapters.lorawan.events import (
    Delivery,
    Handler,
    MalformedEvent,
    UnknownKind,
    dev_eui_of,
    parse_json,
    parse_payload,
)
from gateway.adapters.lorawan.state import DeviceStateStore
from gateway.core.backoff import Backoff
from gateway.core.tasks import wait_event

#: a stream that delivered events or stayed up this long counts as healthy: backoff restarts
STREAM_HEALTHY_AFTER = 30.0
#: the DISCONNECT at stop may take this long even when the drain used up the deadline
DISCONNECT_MIN = 0.5


class UplinkSource(Protocol):
    """Where integration events come from."""

    async def start(self) -> None:
        """Connect; raise if the first contact fails."""
        ...

    async def stop(self, within: float) -> None:
        """Stop delivering; what is being handled finishes (or stays uncommitted) within
        ``within`` seconds, the time left of the adapter's stop deadline."""
        ...

    def track(self, dev_euis: Iterable[str]) -> None:
        """The devices to follow (the gRPC source streams each; MQTT needs no list)."""
        ...


class SourceHooks(Protocol):
    """What sources report to the adapter besides deliveries."""

    def malformed(self, reason: str, source: str, detail: str) -> None:
        """An event that cannot be used (counted and logged)."""
        ...

    def ignored(self, kind: str) -> None:
        """An event type not used by the adapter."""
        ...

    def replay_skipped(self, n: int) -> None:
        """History items at or before the cursor, skipped."""
        ...

    def reconnected(self, source: str) -> None:
        """The source connected again after losing its connection or stream."""
        ...

    def fatal(self, exc: BaseException) -> None:
        """The source cannot go on; the adapter must fail."""
        ...


class GrpcStreamSource:
    """``InternalService.StreamDeviceEvents``, one stream per device, jittered reconnects.

    ChirpStack replays the device's recent history (ten events by default) on every
    stream call; items at or before the saved cursor are skipped.
    """

    def __init__(self, client: ChirpStackClient, state: DeviceStateStore, handler: Handler,
                 hooks: SourceHooks, config: StreamConfig, log: logging.Logger) -> None:
        self.client = client
        self.state = state
        self.handler = handler
        self.hooks = hooks
        self.config = config
        self.log = log
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._calls: dict[str, Any] = {}
        self._stopping = False
        # one generator for every stream's jitter: seeding one costs ~1 ms, per device
        self._rng = random.Random()

    async def start(self) -> None:
        """Nothing to connect up front: streams open as devices are tracked."""
        return None

    def track(self, dev_euis: Iterable[str]) -> None:
        """Open a stream for each new device, close those of devices gone."""
        wanted = set(dev_euis)
        for eui in list(self._tasks):
            if eui not in wanted:
                self._cancel(eui)
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        for eui in sorted(wanted - set(self._tasks)):
            task = loop.create_task(self._follow(eui), name=f"lorawan-stream:{eui}")
            self._tasks[eui] = task
            task.add_done_callback(functools.partial(self._done, eui))

    def _done(self, eui: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(eui) is task:
            del self._tasks[eui]
        if not task.cancelled() and task.exception() is not None:
            self.hooks.fatal(task.exception() or RuntimeError("stream task failed"))

    def _cancel(self, eui: str) -> None:
        call = self._calls.pop(eui, None)
        if call is not None:
            call.cancel()
        task = self._tasks.pop(eui, None)
        if task is not None:
            task.cancel()

    @property
    def streams(self) -> int:
        """Streams currently followed."""
        return len(self._tasks)

    async def _follow(self, eui: str) -> None:
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max, _rng=self._rng)
        first = True
        while not self._stopping:
            if not first:
                self.hooks.reconnected("grpc")
            first = False
            opened = time.monotonic()
            delivered = 0
            call = self.client.stream_device_events(eui)
            self._calls[eui] = call
            reason = "closed by the server"
            try:
                delivered = await self._consume(eui, call)
                if self._stopping:
                    return
            except grpc.aio.AioRpcError as exc:
                if self._stopping:
                    return
                if exc.code() in FATAL:
                    raise explain(exc, f"streaming the events of device {eui}",
                                  self.client.server) from None
                reason = f"{exc.code().name}: {exc.details()}"
            finally:
                if self._calls.get(eui) is call:
                    del self._calls[eui]
                call.cancel()
            if delivered or time.monotonic() - opened >= STREAM_HEALTHY_AFTER:
                backoff.reset()
            delay = backoff.next_delay()
            self.log.info("event stream of %s ended (%s); reconnecting in %.1f s", eui, reason,
                          delay)
            await asyncio.sleep(delay)

    async def _consume(self, eui: str, call: Any) -> int:
        delivered = 0
        async for item in call:
            if self._stopping:
                break
            if self.state.already_seen(eui, item.id):
                self.hooks.replay_skipped(1)
                continue
            kind = item.description
            try:
                event = parse_json(kind, item.body)
            except UnknownKind as exc:
                self.hooks.ignored(exc.kind)
                self.state.record(eui, cursor=item.id)
                await self.state.save()
                continue
            except MalformedEvent as exc:
                # poison: skip it for good, or every reconnect would stumble on it again
                self.hooks.malformed(exc.reason, eui, f"item {item.id}: {exc}")
                self.state.record(eui, cursor=item.id)
                await self.state.save()
                continue
            if not await self.handler(Delivery(kind, event, eui, item.id)):
                break  # stopping with readings refused: the next run replays them
            delivered += 1
        return delivered

    async def stop(self, within: float) -> None:
        """Stop reading; an event already being handled finishes (its cursor is saved)
        within ``within`` seconds, else its stream is cancelled and replays it next run."""
        self._stopping = True
        for call in list(self._calls.values()):
            call.cancel()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, within))
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
        self._tasks.clear()


class MqttIntegrationSource:
    """ChirpStack's MQTT integration, persistent session, QoS 1, PUBACK after acceptance."""

    def __init__(self, config: MqttIntegrationConfig, client_id: str, handler: Handler,
                 hooks: SourceHooks, log: logging.Logger,
                 on_device: Callable[[Delivery], None] | None = None) -> None:
        self.config = config
        self.client_id = client_id
        self.handler = handler
        self.hooks = hooks
        self.log = log
        self._stopping = False
        self._inflight: set[asyncio.Task[Any]] = set()
        self._connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._idle = asyncio.Event()
        self._client: MQTTClient | None = None
        self._ever_connected = False

    def track(self, dev_euis: Iterable[str]) -> None:
        """The broker sends every device's events: no per-device setup."""
        return None

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up."""
        return self._connected.is_set()

    async def start(self) -> None:
        """Connect (raising if the broker cannot be reached) and subscribe."""
        c = self.config
        client = MQTTClient(self.client_id, clean_session=False, optimistic_acknowledgement=False,
                            session_expiry_interval=int(c.session_expiry),
                            receive_maximum=100)
        client.set_config({"reconnect_retries": -1, "reconnect_delay": c.reconnect_delay})
        if c.username:
            client.set_auth_credentials(
                c.username, c.password.get_secret_value() if c.password else None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        try:
            await client.connect(c.host, c.port, keepalive=int(c.keepalive), version=MQTTv50)
        except OSError as exc:
            raise ConnectionError(
                f"cannot reach ChirpStack's MQTT integration broker at {c.host}:{c.port}: "
                f"{exc.strerror or exc}; check mqtt.host and mqtt.port") from None

    def _on_connect(self, client: MQTTClient, flags: int, rc: int, properties: Any) -> None:
        if self._ever_connected:
            self.hooks.reconnected("mqtt")
        self._ever_connected = True
        for topic in self.config.topics:
            client.subscribe(topic, qos=1)
        self._connected.set()
        self.log.info("MQTT integration source connected to %s:%d (session present: %s)",
                      self.config.host, self.config.port, bool(flags))

    def _on_disconnect(self, client: MQTTClient, packet: Any, exc: Any = None) -> None:
        self._connected.clear()
        if not self._stopping:
            self.log.warning("MQTT integration source lost %s:%d; reconnecting",
                             self.config.host, self.config.port)

    async def _on_message(self, client: MQTTClient, topic: str, payload: bytes, qos: int,
                          properties: Any) -> int:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
            self._idle.clear()
        try:
            return await self._handle(topic, payload)
        finally:
            self._leave()

    def _leave(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.discard(task)
        if not self._inflight:
            self._idle.set()

    async def _handle(self, topic: str, payload: bytes) -> int:
        kind = topic.rsplit("/", 1)[-1]
        try:
            event = parse_payload(kind, payload, self.config.encoding)
        except UnknownKind:
            self.hooks.ignored(kind)
            return 0
        except MalformedEvent as exc:
            # acknowledged and dropped: redelivering a payload that cannot parse fixes nothing
            self.hooks.malformed(exc.reason, topic, str(exc))
            return 0
        eui = dev_eui_of(event)
        if not eui:
            self.hooks.malformed("no_device", topic, f"{kind} event without device_info")
            return 0
        if not await self.handler(Delivery(kind, event, eui)):
            # stopping with the readings refused: answer only once the connection is gone,
            # so no PUBACK reaches the broker and it sends the message again next session
            self._leave()
            await self._closed.wait()
            return 0
        return 0

    async def stop(self, within: float) -> None:
        """Let messages being handled finish (each PUBACKs or stays unacknowledged) within
        ``within`` seconds, then leave."""
        self._stopping = True
        deadline = time.monotonic() + within
        if self._inflight:
            # handlers still accepting finish (and PUBACK); withheld ones leave the set
            await wait_event(self._idle, max(0.0, within))
        await asyncio.sleep(0)  # let gmqtt write the PUBACKs of the last accepted messages
        if self._client is not None:
            # what is left of the deadline, with a moment for the DISCONNECT itself (the
            # supervisor's margin covers it)
            left = max(DISCONNECT_MIN, deadline - time.monotonic())
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.disconnect(), left)
        self._connected.clear()
        self._closed.set()
        await asyncio.sleep(0)
