"""``type: mqtt`` — local devices through the broker on the gateway (mosquitto).

Accept-then-acknowledge: gmqtt runs with ``optimistic_acknowledgement=False`` and an
``async`` on_message, so the PUBACK carries the reason code our coroutine returns and
leaves only once the readings are durable. Messages arriving in the same loop turn are
pushed to the sink as one batch (one outbox row, one commit wait), which is what keeps
the per-message cost low.

When the sink refuses (queue full, store failing) the default is to *hold* the message:
no PUBACK until a retry is accepted. mosquitto treats a PUBACK with an error code as
final and discards the message, so answering 0x97 would lose it; holding keeps it in
our session, and the broker's in-flight window (``receive_maximum``) throttles the
flow meanwhile. The holding, retrying and ordering are the adapter base's ingest path
(:mod:`gateway.adapters.ingest`), with the whole adapter as one source: every batch
received after a held one waits behind it in arrival order (merged into larger sink
calls), so per-device order survives the refusal. ``on_refused: nack`` answers 0x97 at
once instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, PubRecReasonCode
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.adapters.base import Adapter, AdapterConfig, AdapterContext
from gateway.adapters.mqtt.config import MqttConfig, SubscriptionConfig
from gateway.adapters.mqtt.held import Message
from gateway.adapters.mqtt.topics import TopicTemplate
from gateway.core import gmqtt_patch
from gateway.logs import InputLog
from gateway.metrics import metric_set
from gateway.payloads import DecodeError, Format, Source, format_class
from gateway.reading import Command, CommandResult, Reading

OK = int(PubRecReasonCode.SUCCESS)
NO_SUBSCRIBERS = int(PubRecReasonCode.NO_MATCHING_SUBSCRIBERS)
QUOTA_EXCEEDED = int(PubRecReasonCode.QUOTA_EXCEEDED)
PAYLOAD_INVALID = int(PubRecReasonCode.PAYLOAD_FORMAT_INVALID)
IMPLEMENTATION_ERROR = int(PubRecReasonCode.IMPLEMENTATION_SPECIFIC_ERROR)

#: readings per sink call at most (one outbox row each)
MAX_BATCH = 5000
#: a companion topic's payload at most (zigbee2mqtt's retained device list grows with
#: the network)
BRIDGE_MAX_PAYLOAD = 4 * 1024 * 1024
_EXCERPT = 80


class _Metrics:
    """The adapter's metrics, registered once per registry (adapters restart)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "gateway_mqtt_messages", "MQTT messages by outcome (accepted, malformed, "
            "oversized, unmatched, refused)", ["adapter", "result"], registry=registry)
        self.malformed = Counter(
            "gateway_mqtt_malformed", "Undecodable MQTT payloads per device and reason",
            ["adapter", "device", "reason"], registry=registry)
        self.held = Gauge("gateway_mqtt_held", "Messages held unacknowledged after a refusal "
                          "(refused, or waiting behind one)", ["adapter"], registry=registry)
        self.connected = Gauge("gateway_mqtt_connected", "1 while connected to the broker",
                               ["adapter"], registry=registry)
        self.commands = Counter("gateway_mqtt_commands", "Commands and publishes by result",
                                ["adapter", "result"], registry=registry)




def _filter_matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches the MQTT filter ``pattern`` (``+`` and a final ``#``)."""
    want, parts = pattern.split("/"), topic.split("/")
    for i, seg in enumerate(want):
        if seg == "#":
            return True
        if i >= len(parts) or (seg != "+" and seg != parts[i]):
            return False
    return len(parts) == len(want)


def _excerpt(payload: bytes) -> str:
    text = payload[:_EXCERPT].decode("utf-8", "replace")
    return repr(text) + ("..." if len(payload) > _EXCERPT else "")


class _Route:
    __slots__ = ("template", "format", "sub", "companions")

    def __init__(self, sub: SubscriptionConfig) -> None:
        self.sub = sub
        self.template = TopicTemplate(sub.topic)
        self.format: Format = format_class(sub.format)(sub)
        #: topics the format also reads (zigbee2mqtt's retained device list...)
        self.companions = tuple(self.format.companions(sub.topic))


class MqttAdapter(Adapter):
    """Subscribes to device topics on a local broker; publishes commands back."""

    Config = MqttConfig
    config: MqttConfig

    def __init__(self, config: AdapterConfig, ctx: AdapterContext) -> None:
        super().__init__(config, ctx)
        assert isinstance(config, MqttConfig)
        self._routes = [_Route(s) for s in config.subscriptions]
        self._route_cache: dict[str, tuple[_Route, Source]] = {}
        self._companions = sorted({t for r in self._routes for t in r.companions})
        self._max_payload = config.max_payload
        self._command_topic = TopicTemplate(config.commands.topic) if config.commands else None
        m = metric_set(ctx.metrics, _Metrics)
        name = ctx.name
        self._m_accepted = m.messages.labels(name, "accepted")
        self._m_malformed = m.messages.labels(name, "malformed")
        self._m_oversized = m.messages.labels(name, "oversized")
        self._m_unmatched = m.messages.labels(name, "unmatched")
        self._m_refused = m.messages.labels(name, "refused")
        self._m_bad_device = m.malformed
        self._m_held = m.held.labels(name)
        self._m_connected = m.connected.labels(name)
        self._m_commands = m.commands
        self._client: gmqtt.Client | None = None
        self._storage = gmqtt_patch.MidRecorder()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: list[Reading] = []
        self._batch_messages: list[Message] = []
        self._batches: set[asyncio.Task[None]] = set()  # batches on the ingest path
        self._pending = 0  # messages in those batches, not yet answered
        self._arrivals = 0
        self._stopping = False
        self._closed: asyncio.Future[None] | None = None
        self._acks: dict[int, asyncio.Future[int]] = {}
        self._pubacks: gmqtt_patch.PubackBatcher | None = None
        self._subacks: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._typed: set[str] = set()
        self._input_log = InputLog(self.log)
        self._connected = asyncio.Event()
        self.connects = 0
        # messages held after a refusal: what is on the ingest path while it holds
        self._m_held.set_function(lambda: self._pending if self.ingest.held() else 0)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        loop = self._loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        client = gmqtt.Client(
            cfg.client_id, clean_session=False, optimistic_acknowledgement=False,
            persistent_storage=self._storage, logger=logging.getLogger("gateway.adapter.gmqtt"),
            session_expiry_interval=int(cfg.session_expiry), receive_maximum=cfg.receive_maximum)
        client.set_config({"reconnect_delay": cfg.reconnect_delay, "reconnect_retries": -1})
        if cfg.username:
            client.set_auth_credentials(cfg.username, cfg.password)
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        # commands must know whether the broker took them: PUBACK reason codes
        gmqtt_patch.on_puback(client, self._on_puback)
        # one task per message (gmqtt's way with an async on_message) costs more than the
        # rest of the hot path: take QoS 1 PUBLISHes directly
        self._gmqtt_qos1 = gmqtt_patch.take_qos1(client, self._on_qos1)
        # the PUBACKs of one loop turn leave in one write
        self._pubacks = gmqtt_patch.PubackBatcher(loop)
        gmqtt_patch.batch_pubacks(client, self._pubacks)
        self._client = client
        where = f"mqtt://{cfg.host}:{cfg.port}"
        try:
            await asyncio.wait_for(client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive,
                                                  version=MQTTv50), cfg.connect_timeout)
        except (OSError, TimeoutError) as exc:
            await self._give_up(client)
            raise ConnectionError(f"cannot reach the device broker at {where}: "
                                  f"{exc or type(exc).__name__}; is mosquitto running?") from None
        except Exception as exc:
            await self._give_up(client)
            raise ConnectionError(f"device broker at {where} refused the connection: {exc} "
                                  "(check username/password and the broker's ACL)") from None
        try:
            await self._subscribe()
        except Exception:
            await self._give_up(client)
            raise
        self.log.info("mqtt %s: connected to %s as %s, %d subscription(s): %s", self.prefix,
                      where, cfg.client_id, len(self._routes),
                      ", ".join(r.template.filter for r in self._routes))

    async def _give_up(self, client: gmqtt.Client) -> None:
        try:
            await asyncio.wait_for(client.disconnect(), 2.0)
        except Exception:  # noqa: BLE001 - already failing; the first error is the one to show
            pass
        self._client = None

    async def _subscribe(self) -> None:
        client = self._client
        assert client is not None and self._loop is not None
        subs = [gmqtt.Subscription(r.template.filter, qos=r.sub.qos) for r in self._routes]
        subs += [gmqtt.Subscription(t, qos=1) for t in self._companions]
        mid = client.subscribe(subs)
        fut = self._subacks[mid] = self._loop.create_future()
        try:
            granted = await asyncio.wait_for(fut, self.config.connect_timeout)
        finally:
            self._subacks.pop(mid, None)
        refused = [s.topic for s, g in zip(subs, granted, strict=False) if g >= 0x80]
        if refused:
            raise PermissionError(f"broker refused subscription(s) {refused} (check its ACL)")

    async def stop(self) -> None:
        """Finish what is being accepted, acknowledge it, then disconnect.

        Messages not accepted by then stay unacknowledged: the broker keeps them in our
        session and sends them again when we reconnect.
        """
        self._stopping = True
        # held messages give up now (the broker keeps them); those at the sink finish
        self.ingest.stop_retrying()
        self._flush_batch()
        batches = [t for t in self._batches if not t.done()]
        if batches:
            await asyncio.wait(batches, timeout=self.ingest.remaining())
        if self._pending:
            self.log.warning("mqtt %s: %d message(s) still being accepted at stop; the broker "
                             "will send them again", self.prefix, self._pending)
        # a finished message's PUBACK is queued by gmqtt's done-callback a loop turn or two
        # later: let those run, then write what is queued before disconnecting
        for _ in range(5):
            await asyncio.sleep(0)
        if self._pubacks is not None:
            self._pubacks.flush()
        # from here PUBACKs have no connection to go to: withheld messages are sent again
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.disconnect(), 5.0)
            except Exception as exc:  # noqa: BLE001
                self.log.warning("mqtt %s: disconnect failed: %s", self.prefix, exc)
        self._m_connected.set(0)
        self._m_held.set_function(lambda: 0)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        for fut in self._acks.values():
            if not fut.done():
                fut.cancel()
        await super().stop()

    # -- connection events -------------------------------------------------------------------

    def _on_connect(self, client: gmqtt.Client, flags: int, rc: int, properties: Any) -> None:
        self.connects += 1
        self._connected.set()
        self._m_connected.set(1)
        if self.connects > 1:
            self.log.info("mqtt %s: reconnected (session present: %s)", self.prefix,
                          bool(flags))
            if not flags and not self._stopping:
                # the broker lost our session (expired or restarted without persistence)
                self.spawn(self._resubscribe(), name=f"{self.prefix}:resubscribe")

    async def _resubscribe(self) -> None:
        try:
            await self._subscribe()
        except (TimeoutError, ConnectionError) as exc:
            self.log.warning("mqtt %s: resubscribe failed: %s (retrying on next connect)",
                             self.prefix, exc)

    def _on_disconnect(self, client: gmqtt.Client, packet: Any, exc: Any = None) -> None:
        self._connected.clear()
        self._m_connected.set(0)
        if not self._stopping:
            self.log.warning("mqtt %s: lost the device broker; reconnecting every %.0f s",
                             self.prefix, self.config.reconnect_delay)

    def _on_subscribe(self, client: gmqtt.Client, mid: int, qos: tuple[int, ...],
                      properties: Any) -> None:
        fut = self._subacks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(tuple(qos))

    # -- receiving --------------------------------------------------------------------------

    def _route(self, topic: str) -> tuple[_Route, Source] | None:
        hit = None
        for route in self._routes:
            slots = route.template.match(topic)
            if slots is not None:
                hit = (route, Source(self.prefix, slots.get("device"), topic, slots))
                break
        if hit is not None and len(self._route_cache) < 50_000:
            self._route_cache[topic] = hit
        return hit

    def _prepare(self, topic: str, payload: bytes) -> int | list[Reading]:
        """Route and decode one message: its readings, or the reason code to answer now."""
        hit = self._route_cache.get(topic) or self._route(topic)
        if hit is None:
            if self._companions:
                learned = self._companion(topic, payload)
                if learned is not None:
                    return learned
            return self._unmatched(topic)
        route, source = hit
        if len(payload) > self._max_payload:
            self._m_oversized.inc()
            self._bad(route, source, "oversized", f"{len(payload)} bytes, more than "
                      f"max_payload {self._max_payload}", topic, payload)
            return PAYLOAD_INVALID
        try:
            readings = route.format.decode(payload, source, time.time())
        except DecodeError as exc:
            self._m_malformed.inc()
            self._bad(route, source, exc.reason, str(exc), topic, payload)
            return PAYLOAD_INVALID
        if not readings:
            return OK  # a message the format knows carries no data (a birth message...)
        if route.sub.device_type is not None:
            self._declare_type(readings, route.sub.device_type)
        return readings

    def _on_qos1(self, mid: int, payload: bytes, topic: str, properties: Any) -> None:
        """gmqtt's QoS 1 PUBLISH handler, replaced: the hot path without a task per message.

        The message joins this loop turn's batch; its PUBACK is queued once its readings
        are durable. Stopping takes gmqtt's coroutine path.
        """
        if self._stopping:
            self._gmqtt_qos1(mid, payload, topic, properties)
            return
        try:
            prepared = self._prepare(topic, payload)
        except Exception as exc:  # noqa: BLE001 - a decoder bug must still answer the broker
            self._decoder_failed(topic, exc)
            prepared = IMPLEMENTATION_ERROR
        if isinstance(prepared, int):
            self._queue_puback(mid, prepared)
            return
        self._arrivals += 1
        self._submit(Message(self._arrivals, mid, prepared, topic))

    async def _on_message(self, client: gmqtt.Client, topic: str, payload: bytes, qos: int,
                          properties: Any) -> int:
        """Decode, accept, and return the PUBACK reason code (0 only once durable).

        QoS 1 messages come here only while stopping (see :meth:`_on_qos1`); QoS 0 always.
        """
        try:
            if self._stopping:
                return await self._withhold()
            prepared = self._prepare(topic, payload)
            if isinstance(prepared, int):
                return prepared
            assert self._loop is not None
            accepted = self._loop.create_future()
            self._arrivals += 1
            self._submit(Message(self._arrivals, -1, prepared, topic, accepted))
            if await accepted:
                return OK
            if self.config.on_refused == "nack":
                return QUOTA_EXCEEDED
            return await self._withhold()  # stopping while held
        except Exception as exc:  # noqa: BLE001 - gmqtt would send no PUBACK at all
            self._decoder_failed(topic, exc)
            return IMPLEMENTATION_ERROR

    def _queue_puback(self, mid: int, reason_code: int = 0) -> None:
        if self._pubacks is not None:
            self._pubacks.queue(mid, reason_code)

    def _on_puback(self, mid: int, code: int) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(code)

    def _companion(self, topic: str, payload: bytes) -> int | None:
        """A topic a format reads besides its subscription; None if no format wants it.

        The format learns from it (units, say); the devices it describes (model, vendor...)
        are declared in the registry, so ``gateway devices`` shows them.
        """
        routes = [r for r in self._routes
                  if any(_filter_matches(c, topic) for c in r.companions)]
        if not routes:
            return None
        if len(payload) > BRIDGE_MAX_PAYLOAD:
            self._m_oversized.inc()
            self._log_once(topic, "mqtt %s: %s is %d bytes, more than %d; not read",
                           self.prefix, topic, len(payload), BRIDGE_MAX_PAYLOAD)
            return PAYLOAD_INVALID
        code = OK
        for route in routes:
            try:
                learned = route.format.learn(topic, payload)
            except DecodeError as exc:
                self._m_malformed.inc()
                self._log_once(topic, "mqtt %s: cannot read %s for format %s: %s",
                               self.prefix, topic, route.sub.format, exc)
                code = PAYLOAD_INVALID
                continue
            described = route.format.described()
            for native, info in described.items():
                self.ctx.devices.declare(f"{self.prefix}:{native}", **info)
            self._input_log.log(logging.INFO, topic, "companion", "mqtt %s: %s read for "
                                "format %s: %d device(s) learned, %d described", self.prefix,
                                topic, route.sub.format, learned, len(described))
        return code

    def _unmatched(self, topic: str) -> int:
        self._m_unmatched.inc()
        self._log_once(f"topic:{topic}", "mqtt %s: no subscription template matches %s "
                       "(a subscription left in the broker session?); ignored",
                       self.prefix, topic)
        return OK

    # -- answering ---------------------------------------------------------------------------

    def _answer(self, messages: list[Message]) -> None:
        """The sink accepted these messages' readings: acknowledge each one."""
        self._m_accepted.inc(len(messages))
        self._settle(messages, True, OK)

    def _nack(self, messages: list[Message]) -> None:
        """``on_refused: nack``: answer 0x97 at once (mosquitto then discards the message)."""
        self._log_once("refused", "mqtt %s: outbox refused %d message(s), the first from %s; "
                       "answered 0x97 (on_refused: nack)", self.prefix, len(messages),
                       messages[0].topic)
        self._settle(messages, False, QUOTA_EXCEEDED)

    def _release(self, messages: list[Message]) -> None:
        """Stopping: leave these unacknowledged; the broker sends them again."""
        self._settle(messages, False, None)

    def _settle(self, messages: list[Message], accepted: bool, code: int | None) -> None:
        """Tell each message's waiter whether it was accepted, or queue its PUBACK with
        ``code`` (None: no PUBACK at all)."""
        for m in messages:
            if m.waiter is not None:
                if not m.waiter.done():
                    m.waiter.set_result(accepted)
            elif code is not None:
                self._queue_puback(m.mid, code)

    async def _withhold(self) -> int:
        """Never acknowledge: wait until disconnected (the broker sends it again later)."""
        assert self._closed is not None
        await asyncio.shield(self._closed)
        return IMPLEMENTATION_ERROR  # goes nowhere: the connection is closed

    def _declare_type(self, readings: Sequence[Reading], device_type: str) -> None:
        device = readings[0].device
        if device in self._typed:
            return
        if len(self._typed) < 100_000:
            self._typed.add(device)
        self.ctx.devices.declare(device, type=device_type)

    def _bad(self, route: _Route, source: Source, reason: str, detail: str, topic: str,
             payload: bytes) -> None:
        device = source.device or "unknown"
        # per-device labels only for registered devices: invented ids cannot grow memory
        label = device if self.ctx.devices.knows(device) else "unknown"
        self._m_bad_device.labels(self.prefix, label, reason).inc()
        self._input_log.warning(device, reason, "mqtt %s: cannot decode %s payload from %.200s "
                                "on %.200s (%s): %s; payload %s", self.prefix, route.sub.format,
                                device, topic, reason, detail, _excerpt(payload))

    def _decoder_failed(self, topic: str, exc: Exception) -> None:
        self._m_malformed.inc()
        self._input_log.log(logging.ERROR, topic, "decoder_error",
                            "mqtt %s: decoding a message on %.200s failed: %s: %.200s "
                            "(answered 0x83)", self.prefix, topic, type(exc).__name__, exc)

    def _log_once(self, key: str, msg: str, *args: Any) -> None:
        self._input_log.warning(key, "", msg, *args)

    # -- batching into the sink ---------------------------------------------------------------

    def _submit(self, message: Message) -> None:
        """Join the batch of this loop turn: one sink call for all its messages."""
        if not self._batch_messages:
            assert self._loop is not None
            self._loop.call_soon(self._flush_batch)
        self._batch_messages.append(message)
        self._batch.extend(message.readings)
        if len(self._batch) >= MAX_BATCH:
            self._flush_batch()

    def _flush_batch(self) -> None:
        readings, messages = self._batch, self._batch_messages
        if not messages:
            return
        self._batch, self._batch_messages = [], []
        assert self._loop is not None
        self._pending += len(messages)
        task = self._loop.create_task(self._accept(readings, messages))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _accept(self, readings: list[Reading], messages: list[Message]) -> None:
        """One batch through the ingest path: answered once durable, in arrival order.

        A refused batch is held there (no PUBACK) and retried, and every later batch
        waits behind it, merged with it into larger sink calls; stopping gives up on it
        (no PUBACK: the broker sends it again).
        """
        nack = self.config.on_refused == "nack"

        def refused() -> None:
            self._m_refused.inc(len(messages))  # each message once, however often retried
            if not nack:
                self._log_once("held", "mqtt %s: outbox refused readings from %s; holding "
                               "the message and every later one unacknowledged, in arrival "
                               "order, and retrying (logged once)", self.prefix,
                               messages[0].topic)

        try:
            ok = await self.accept(readings, retry_for=0 if nack else math.inf,
                                   on_refused=refused)
        except Exception as exc:
            # a sink bug: nothing is acknowledged; the restarted adapter gets them again
            self.log.error("mqtt %s: sink failed: %s: %s", self.prefix, type(exc).__name__,
                           exc)
            self._release(messages)
            self.fail(exc)
            return
        finally:
            self._pending -= len(messages)
        if ok:
            self._answer(messages)
        elif nack and not self._stopping:
            self._nack(messages)
        else:
            self._release(messages)

    # -- sending ------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, qos: int = 1,
                      retain: bool = False) -> CommandResult:
        """Publish to a local topic; with QoS 1, wait for the broker's PUBACK."""
        timeout = self.config.commands.timeout if self.config.commands else 5.0
        result = await self._publish(topic, payload, qos, retain, timeout)
        self._m_commands.labels(self.prefix, result.status).inc()
        return result

    async def _publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                       ack_wait: float) -> CommandResult:
        if not topic or "+" in topic or "#" in topic or topic.startswith("$"):
            return CommandResult.refused(f"cannot publish to {topic!r}: a topic name has no "
                                         "wildcards and does not start with $")
        if qos not in (0, 1):
            return CommandResult.unsupported(f"QoS {qos}: the gateway publishes with 0 or 1")
        client = self._client
        if client is None or not self._connected.is_set() or self._stopping:
            return CommandResult.refused("not connected to the device broker; try again")
        client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            return CommandResult.sent(f"published to {topic} (QoS 0)")
        assert self._loop is not None
        fut = self._acks[self._storage.last_mid] = self._loop.create_future()
        try:
            code = await asyncio.wait_for(fut, ack_wait)
        except TimeoutError:
            return CommandResult.timeout(f"no PUBACK for {topic} within {ack_wait:.1f} s "
                                         "(it is sent again on reconnect)")
        except asyncio.CancelledError:
            if self._stopping:
                return CommandResult.refused("adapter stopping")
            raise
        if code >= 0x80:
            return CommandResult.refused(f"broker refused the publish to {topic} with reason "
                                         f"code 0x{code:02x} (check its ACL)")
        if code == NO_SUBSCRIBERS:
            return CommandResult.sent(f"published to {topic}; no subscriber")
        return CommandResult.sent(f"published to {topic}")

    async def send(self, command: Command) -> CommandResult:
        """Publish the command to the device's command topic (QoS 1 by default)."""
        cmds = self.config.commands
        if cmds is None or self._command_topic is None:
            return CommandResult.unsupported(f"adapter {self.prefix} has no commands: topic "
                                             "configured")
        native = command.device.split(":", 1)[1] if ":" in command.device else ""
        tmpl = self._command_topic
        params = dict(command.params)
        if cmds.payload == "envelope":
            body: Any = {"action": command.action, "params": params}
        elif "action" in tmpl.names or command.action == "set":
            body = params
        else:
            return CommandResult.unsupported(
                f"{tmpl.text!r} has no {{action}} and payload is params: only action 'set' "
                f"can be sent, not {command.action!r}")
        try:
            topic = tmpl.fill(device=native, action=command.action)
            payload = json.dumps(body, separators=(",", ":")).encode()
        except (ValueError, TypeError) as exc:
            return CommandResult.refused(f"cannot build the command: {exc}")
        result = await self._publish(topic, payload, cmds.qos, cmds.retain, cmds.timeout)
        if result.ok and result.detail.endswith("no subscriber") and not cmds.retain:
            result = CommandResult.refused(f"no device is subscribed to {topic}")
        self._m_commands.labels(self.prefix, result.status).inc()
        return result
