"""The uplink: drains the outbox to the cloud broker over MQTT 5, oldest first.

- One connection at a time, QoS 1, a bounded window of publishes in flight (also bounded
  by the broker's Receive Maximum).
- A batch's rows leave the outbox only after a PUBACK whose reason code is a success
  (< 0x80). gmqtt 0.8 ignores PUBACK reason codes (its handler has a TODO), so the uplink
  installs its own PUBACK handler on the connection and reads them itself.
- A refused publish (reason >= 0x80), a missing acknowledgement or a lost connection all
  end the connection: the uplink reconnects with jittered backoff and resends from the
  oldest unacknowledged row, so nothing is lost and per-device order is kept (the cloud
  may see a batch twice; it de-duplicates on ``(gw, epoch, seq)``).
- Retained online/offline status on ``<prefix>/<id>/status`` with a last will.
- Commands arrive on ``<prefix>/<id>/commands`` and their results are published back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gmqtt import Message
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.config.types import TlsConfig
from gateway.core import gmqtt_patch
from gateway.core.backoff import Backoff
from gateway.core.tasks import Fanout, wait_event
from gateway.reading import Command, CommandResult
from gateway.store.outbox import Outbox
from gateway.uplink.config import UplinkConfig
from gateway.uplink.formats import Format, make_format

log = logging.getLogger("gateway.uplink")

CommandHandler = Callable[[Command], Awaitable[CommandResult]]

#: MQTT 5 reason codes worth naming in a log line
REASONS = {
    0x10: "no matching subscribers", 0x80: "unspecified error",
    0x83: "implementation specific error", 0x87: "not authorized",
    0x90: "topic name invalid", 0x91: "packet identifier in use",
    0x97: "quota exceeded", 0x99: "payload format invalid",
}


class PublishRefused(Exception):
    """The broker answered a publish with a failure reason code."""

    def __init__(self, topic: str, reason: int) -> None:
        name = REASONS.get(reason, "refused")
        super().__init__(f"broker refused publish to {topic}: reason 0x{reason:02x} ({name})")
        self.reason = reason


class ConnectionEnded(Exception):
    pass


@dataclass
class _Batch:
    table: str
    first: int
    last: int
    readings: int
    mids: set[int] = field(default_factory=set)
    topic: str = ""
    sent_at: float = 0.0


class _Client(gmqtt_patch.OwnReconnectClient):
    """gmqtt client whose reconnects, resends and PUBACKs are the uplink's business
    (it resends from the outbox)."""

    def __init__(self, client_id: str, on_puback: Callable[[int, int], None],
                 **kwargs: Any) -> None:
        super().__init__(client_id, **kwargs)
        # gmqtt's PUBACK handler drops the MQTT 5 reason code, and would replay on its own
        gmqtt_patch.on_puback(self, on_puback, replace=True)

    def publish_qos1(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Send a QoS 1 PUBLISH and return its packet id (not kept for gmqtt's replay)."""
        return gmqtt_patch.publish_qos1(self, topic, payload, retain)

    @property
    def receive_maximum(self) -> int:
        return gmqtt_patch.receive_maximum(self)


#: ``uplink:`` options a reload applies to the running connection; any other change
#: reconnects (with the new options)
IN_PLACE = frozenset({"batch_max_readings", "batch_linger", "ack_timeout", "backoff_initial",
                      "backoff_max"})


class Uplink:
    """Keeps the outbox flowing to the cloud broker while the daemon runs."""

    def __init__(self, config: UplinkConfig, gateway_id: str, outbox: Outbox,
                 metrics: CollectorRegistry | None = None) -> None:
        self.config = config
        self.gateway_id = gateway_id
        self.outbox = outbox
        self.format: Format = make_format(config.format, gateway_id, config.topic_prefix)
        self.connected = False
        self.on_command: CommandHandler | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        #: set by stop() and by a reconfigure() that reconnects: ends a backoff wait
        self._kick = asyncio.Event()
        self._reconnecting = False
        self._client: _Client | None = None
        self._inflight: dict[int, _Batch] = {}
        self._batches: list[_Batch] = []
        #: publishes that may still go out before PUBACKs come back (the broker's
        #: receive maximum and max_inflight)
        self._free = config.max_inflight
        self._failure: BaseException | None = None
        self._failed = Fanout()
        #: the session loop's one wake-up: set by whatever it may be waiting for (a freed
        #: window slot, a lost connection, a failure, new data while it waits for data)
        self._wake = asyncio.Event()
        self._failed.linked.append(self._wake)
        self._backoff = Backoff(config.backoff_initial, config.backoff_max)
        self._last_sent = 0.0  # when a batch last left (monotonic): new ones wait batch_linger
        self.last_error: str | None = None
        self.connected_since: float | None = None
        #: when the connection was lost (or the uplink made); None while connected
        self.disconnected_since: float | None = time.time()
        reg = metrics or CollectorRegistry()
        self.m_connected = Gauge("gateway_uplink_connected", "1 while connected to the cloud",
                                 registry=reg)
        self.m_publishes = Counter("gateway_uplink_publishes", "Batches published",
                                   ["kind"], registry=reg)
        self.m_acks = Counter("gateway_uplink_acks", "Batches acknowledged with success",
                              ["kind"], registry=reg)
        self.m_refusals = Counter("gateway_uplink_refusals", "Publishes refused by the broker",
                                  ["reason"], registry=reg)
        self.m_readings = Counter("gateway_uplink_readings", "Readings acknowledged by the cloud",
                                  registry=reg)
        self.m_bytes = Counter("gateway_uplink_bytes", "Payload bytes published", registry=reg)
        self.m_connects = Counter("gateway_uplink_connects", "Connection attempts",
                                  ["result"], registry=reg)
        self.m_latency = Histogram("gateway_uplink_ack_seconds", "Publish to PUBACK time",
                                   buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10),
                                   registry=reg)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background; readings queue in the outbox meanwhile."""
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="uplink")

    async def stop(self, drain: float = 5.0) -> None:
        """Wait briefly for publishes in flight, send offline status, disconnect."""
        self._stopping.set()
        self._kick.set()
        deadline = time.monotonic() + drain
        while self._inflight and self.connected and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await self._close_client(graceful=True)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    # -- connection loop ------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self._connect()
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: back off and reconnect
                self.last_error = str(exc) or type(exc).__name__
                if not isinstance(exc, (ConnectionEnded, PublishRefused)):
                    log.warning("uplink to %s:%d: %s", self.config.host, self.config.port,
                                self.last_error)
            finally:
                # a reconnect for new options says goodbye like a stop (offline status)
                await self._close_client(graceful=self._reconnecting)
            if self._stopping.is_set():
                return
            if self._reconnecting:
                self._reconnecting = False
                self._kick.clear()
                log.info("uplink: reconnecting with the reloaded options")
                continue
            if time.monotonic() - started > 60:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            log.info("uplink: reconnecting in %.1f s", delay)
            await wait_event(self._kick, delay)
            if self._kick.is_set() and not self._stopping.is_set():
                self._kick.clear()
                self._reconnecting = False

    def reconfigure(self, config: UplinkConfig) -> bool:
        """Apply a reloaded ``uplink:`` section; True if it reconnects for it.

        Batching, acknowledgement and backoff options (:data:`IN_PLACE`) apply to the
        running connection; anything else closes it (publishes in flight are resent from
        the outbox) and connects again at once with the new options.
        """
        same = config.model_copy(update={k: getattr(self.config, k) for k in IN_PLACE})
        reconnect = same != self.config
        if (config.backoff_initial, config.backoff_max) != (self.config.backoff_initial,
                                                            self.config.backoff_max):
            self._backoff = Backoff(config.backoff_initial, config.backoff_max)
        self.config = config
        if reconnect:
            self.format = make_format(config.format, self.gateway_id, config.topic_prefix)
            self._reconnecting = True
            self._kick.set()
            if self._client is not None:
                self._client.lost.set()  # the session ends; _run connects again
        return reconnect

    async def _connect(self) -> None:
        cfg = self.config
        status_topic, offline = self.format.status(False)
        client = _Client(
            cfg.client_id or self.gateway_id, self._on_puback,
            clean_session=True,
            will_message=Message(status_topic, offline, qos=1, retain=True),
            session_expiry_interval=0,
        )
        client.on_message = self._on_message
        if cfg.username:
            client.set_auth_credentials(
                cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        self._client = client
        try:
            await asyncio.wait_for(
                client.connect(cfg.host, cfg.port, ssl=TlsConfig.context(self.config.tls),
                               keepalive=int(cfg.keepalive)),
                timeout=cfg.connect_timeout)
        except TimeoutError:
            self.m_connects.labels("failed").inc()
            raise ConnectionError(f"no CONNACK within {cfg.connect_timeout:g} s "
                                  "(uplink.connect_timeout)") from None
        except Exception:
            self.m_connects.labels("failed").inc()
            raise
        self.m_connects.labels("ok").inc()
        self._free = min(cfg.max_inflight, client.receive_maximum)
        client.lost.linked.append(self._wake)
        self.connected = True
        self.connected_since = time.time()
        self.disconnected_since = None
        self.m_connected.set(1)
        self.last_error = None
        log.info("uplink connected to %s:%d as %s", cfg.host, cfg.port,
                 cfg.client_id or self.gateway_id)
        topic, online = self.format.status(True)
        client.publish(topic, online, qos=1, retain=True)
        for t in self.format.command_topics():
            client.subscribe(t, qos=1)

    async def _close_client(self, graceful: bool) -> None:
        client, self._client = self._client, None
        was_connected = self.connected
        self.connected = False
        self.connected_since = None
        if self.disconnected_since is None:
            self.disconnected_since = time.time()
        self.m_connected.set(0)
        self._inflight.clear()
        self._batches.clear()
        self._failed.clear()
        self._failure = None
        if client is None:
            return
        try:
            # 0x04 "disconnect with will message": the broker publishes the retained
            # offline status for us, exactly as it would if the gateway had died
            reason = 0x04 if graceful and was_connected else 0
            await asyncio.wait_for(client.disconnect(reason_code=reason), 5)
        except Exception:  # noqa: BLE001 - the connection is going away regardless
            pass

    # -- sending ------------------------------------------------------------------------------

    async def _session(self) -> None:
        """Send batches until the connection ends; raise why it ended."""
        client = self._client
        assert client is not None
        # rows acknowledged on the previous connection may still await deletion: settle
        # them first so they are not sent again
        await self.outbox.flush()
        cursor = {"events": 0, "telemetry": 0}
        watchdog = asyncio.get_running_loop().create_task(self._ack_watchdog(client))
        try:
            while True:
                # whatever happens from here on wakes the waits below
                self._wake.clear()
                self._raise_if_ended(client)
                if self._free <= 0:  # wait for a PUBACK to free a slot
                    await self._doze(client, None)
                    continue
                # new readings leave at most once per batch_linger, together: a lone one
                # at once, many in one message
                waiting = self.outbox.waiting(cursor["events"], cursor["telemetry"],
                                              self.config.batch_max_readings)
                wait = self._last_sent + self.config.batch_linger - time.monotonic()
                if waiting > 0 and wait > 0:
                    await self._doze(client, wait)  # new data does not cut it short
                    continue
                batch = await self._next_batch(client, cursor)
                if batch is not None:
                    self._last_sent = time.monotonic()
                else:
                    await self._doze(client, None, data=True)
        finally:
            watchdog.cancel()

    def _raise_if_ended(self, client: _Client) -> None:
        if self._failure is not None:
            raise self._failure
        if client.lost.is_set() or not client.is_connected:
            raise ConnectionEnded("connection lost")

    async def _doze(self, client: _Client, delay: float | None, data: bool = False) -> None:
        """Wait until :attr:`_wake` is set (a slot freed, the connection lost, a failure;
        with ``data`` also new data in the outbox), or ``delay`` seconds have passed.

        One event and at most one timer per wait, no task per cause: at a steady rate
        this loop waits several times per batch.
        """
        new = self.outbox.new_data
        if data:
            if new.is_set():
                return
            new.linked.append(self._wake)
        try:
            if delay is None:
                await self._wake.wait()
            else:
                await wait_event(self._wake, delay)
        finally:
            if data:
                new.linked.remove(self._wake)
        self._raise_if_ended(client)

    async def _next_batch(self, client: _Client, cursor: dict[str, int]) -> _Batch | None:
        self.outbox.new_data.clear()
        events, rows = await self.outbox.read_next(cursor["events"], cursor["telemetry"],
                                                   self.config.batch_max_readings)
        if events:
            msgs = self.format.events(events, self.outbox.epoch)
            batch = _Batch("events", events[0].id, events[-1].id, 0)
            cursor["events"] = events[-1].id
        else:
            if not rows:
                return None
            msgs = self.format.telemetry(rows, self.outbox.epoch)
            batch = _Batch("telemetry", rows[0].id, rows[-1].id,
                           sum(len(r.readings) for r in rows))
            cursor["telemetry"] = rows[-1].id
        self._raise_if_ended(client)
        batch.sent_at = time.monotonic()
        size = 0
        for topic, payload in msgs:
            mid = client.publish_qos1(topic, payload)
            batch.mids.add(mid)
            batch.topic = topic
            self._inflight[mid] = batch
            size += len(payload)
        self._batches.append(batch)
        self._free -= 1  # given back when the batch is settled
        self.m_publishes.labels(batch.table).inc()
        self.m_bytes.inc(size)
        if not batch.mids:  # nothing to send for these rows (format skipped them)
            self._settle(batch)
        return batch

    def _on_puback(self, mid: int, reason: int) -> None:
        batch = self._inflight.pop(mid, None)
        if batch is None:
            return  # status publishes and batches of an earlier connection
        if reason >= 0x80:
            self.m_refusals.labels(f"0x{reason:02x}").inc()
            err = PublishRefused(batch.topic, reason)
            log.error("uplink: %s; %d row(s) kept in the outbox, will retry after backoff",
                      err, batch.last - batch.first + 1)
            self.last_error = str(err)
            if self._failure is None:
                self._failure = err
                self._failed.set()
            return
        batch.mids.discard(mid)
        if not batch.mids:
            self.m_latency.observe(time.monotonic() - batch.sent_at)
            self._settle(batch)

    def _settle(self, batch: _Batch) -> None:
        """A batch is fully acknowledged: free its window slot, delete its rows."""
        self._free += 1
        self._wake.set()
        self.outbox.ack(batch.table, batch.first, batch.last)
        self.m_acks.labels(batch.table).inc()
        if batch.readings:
            self.m_readings.inc(batch.readings)
        self._backoff.reset()
        try:
            self._batches.remove(batch)
        except ValueError:
            pass

    async def _ack_watchdog(self, client: _Client) -> None:
        """A publish unacknowledged for ack_timeout means the link is stuck: reconnect."""
        while True:
            await asyncio.sleep(min(1.0, self.config.ack_timeout / 4))
            now = time.monotonic()
            for batch in self._batches:
                if now - batch.sent_at > self.config.ack_timeout:
                    if self._failure is None:
                        self._failure = ConnectionEnded(
                            f"no PUBACK within {self.config.ack_timeout:.0f} s")
                        log.warning("uplink: %s; reconnecting", self._failure)
                        self._failed.set()
                    return

    # -- downlink commands ------------------------------------------------------------------

    async def _on_message(self, client: _Client, topic: str, payload: bytes, qos: int,
                          properties: dict[str, Any]) -> int:
        if topic not in self.format.command_topics():
            return 0
        request_id = None
        try:
            body = json.loads(payload)
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            request_id = body.get("id") or str(uuid.uuid4())
            command = Command(str(body["device"]), str(body["action"]),
                              dict(body.get("params") or {}))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("uplink: bad command on %s: %s", topic, exc)
            result = CommandResult.error(f"bad command: {exc}; expected "
                                         '{"id", "device", "action", "params"}')
        else:
            if self.on_command is None:
                result = CommandResult.refused("gateway is starting; try again")
            else:
                log.info("cloud command %s: %s %s", request_id, command.device, command.action)
                result = await self.on_command(command)
        if client.is_connected:
            reply = {"id": request_id, "ok": result.ok, "status": result.status,
                     "detail": result.detail}
            client.publish(self.format.result_topic(), json.dumps(reply).encode(), qos=1)
        return 0
