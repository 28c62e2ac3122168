"""A stand-in for a ChirpStack v4 network server's gRPC API, on a free loopback port.

ChirpStack itself (Rust, PostgreSQL, Redis) cannot run here, so this server, built from
``chirpstack_api``'s generated servicers, behaves as ChirpStack does where the adapter
depends on it:

- every call must carry ``authorization: Bearer <token>`` (else UNAUTHENTICATED); a
  token only sees its own tenant (PERMISSION_DENIED); a tenant id that is not a UUID is
  INVALID_ARGUMENT;
- ``List`` calls are paginated, and ``limit: 0`` returns only the total count;
- ``InternalService.StreamDeviceEvents`` replays the device's event history (the last
  ``history`` events, ten by default, like ``per_device_event_log_max_history``) on
  every call, then sends new events; ``LogItem.id`` is a Redis stream id
  (``<ms>-<seq>``), ``description`` the event type, ``body`` the event as JSON;
- streams can be dropped (:meth:`drop_streams`, ``drop_after``) and the whole server
  stopped and started again on the same port;
- ``DeviceService.Enqueue`` queues downlinks; :meth:`deliver` then emits the txack and
  ack events ChirpStack would.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from chirpstack_api.api import (
    application_pb2,
    application_pb2_grpc,
    device_pb2,
    device_pb2_grpc,
    internal_pb2,
    internal_pb2_grpc,
)
from chirpstack_api.gw import gw_pb2
from chirpstack_api.integration import integration_pb2 as integration
from google.protobuf import json_format
from google.protobuf.message import Message

TENANT = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"


def _is_uuid(s: str) -> bool:
    try:
        uuid.UUID(s)
        return True
    except ValueError:
        return False


class FakeChirpStack:
    """The fake server and its data; run it with ``await start()`` / ``await stop()``."""

    def __init__(self, token: str = "test-token", tenant_id: str = TENANT, history: int = 10,
                 port: int = 0, tls: tuple[bytes, bytes] | None = None,
                 max_concurrent_streams: int | None = None) -> None:
        self.tls = tls  # (private key PEM, certificate PEM): serve TLS instead of plaintext
        # HTTP/2 streams per connection, as servers and proxies in front of ChirpStack cap it
        self.max_concurrent_streams = max_concurrent_streams
        self.token = token
        self.tenant_id = tenant_id
        self.history_len = history
        self.port = port
        self.apps: dict[str, dict[str, str]] = {}
        self.devices: dict[str, dict[str, str]] = {}
        self.history: dict[str, deque[internal_pb2.LogItem]] = defaultdict(
            lambda: deque(maxlen=self.history_len))
        self.queue: list[device_pb2.DeviceQueueItem] = []
        self.list_requests: list[tuple[str, int, int]] = []
        self.stream_calls: dict[str, int] = defaultdict(int)
        self.active_streams = 0
        self.drop_after: int | None = None
        self._drop_generation = 0
        self._changed = asyncio.Event()
        self._last_ms = 0
        self._seq = 0
        self._server: grpc.aio.Server | None = None

    # -- data -------------------------------------------------------------------------------

    def add_application(self, name: str, app_id: str | None = None) -> str:
        app_id = app_id or str(uuid.uuid4())
        self.apps[app_id] = {"name": name, "tenant": self.tenant_id}
        return app_id

    def add_device(self, app_id: str, dev_eui: str, name: str, profile: str = "Generic",
                   profile_id: str | None = None, tags: dict[str, str] | None = None) -> None:
        self.devices[dev_eui] = {"app": app_id, "name": name, "profile": profile,
                                 "profile_id": profile_id or str(uuid.uuid5(uuid.NAMESPACE_DNS,
                                                                            profile))}
        if tags:
            self.devices[dev_eui].update({f"tag:{k}": v for k, v in tags.items()})

    def device_info(self, dev_eui: str) -> integration.DeviceInfo:
        d = self.devices[dev_eui]
        app = self.apps[d["app"]]
        return integration.DeviceInfo(
            tenant_id=self.tenant_id, tenant_name="tenant", application_id=d["app"],
            application_name=app["name"], device_profile_id=d["profile_id"],
            device_profile_name=d["profile"], device_name=d["name"], dev_eui=dev_eui)

    def uplink(self, dev_eui: str, f_cnt: int, *, obj: dict[str, Any] | None = None,
               data: bytes = b"", f_port: int = 1, rssi: int = -80, snr: float = 7.5,
               dr: int = 5) -> integration.UplinkEvent:
        """An UplinkEvent as ChirpStack builds it (not yet emitted)."""
        ev = integration.UplinkEvent(
            deduplication_id=str(uuid.uuid4()), device_info=self.device_info(dev_eui),
            dev_addr="01020304", dr=dr, f_cnt=f_cnt, f_port=f_port, data=data,
            rx_info=[gw_pb2.UplinkRxInfo(gateway_id="0016c001f1500001", rssi=rssi, snr=snr)],
            tx_info=gw_pb2.UplinkTxInfo(frequency=868_100_000))
        ev.time.FromNanoseconds(time.time_ns())
        if obj is not None:
            ev.object.update(obj)
        return ev

    def emit(self, dev_eui: str, kind: str, event: Message) -> str:
        """Append an event to the device's history (what ChirpStack's XADD does)."""
        ms = int(time.time() * 1000)
        if ms <= self._last_ms:
            ms, self._seq = self._last_ms, self._seq + 1
        else:
            self._seq = 0
        self._last_ms = ms
        item = internal_pb2.LogItem(id=f"{ms}-{self._seq}", description=kind,
                                    body=json_format.MessageToJson(event, indent=None))
        if event.HasField("time"):  # type: ignore[arg-type]
            item.time.CopyFrom(event.time)  # type: ignore[attr-defined]
        self.history[dev_eui].append(item)
        self._notify()
        return item.id

    def emit_raw(self, dev_eui: str, kind: str, body: str) -> str:
        """Append an item with an arbitrary body (for garbage tests)."""
        ms = max(int(time.time() * 1000), self._last_ms + 1)
        self._last_ms, self._seq = ms, 0
        item = internal_pb2.LogItem(id=f"{ms}-0", description=kind, body=body)
        self.history[dev_eui].append(item)
        self._notify()
        return item.id

    def deliver(self, queue_item_id: str, acknowledged: bool = True) -> None:
        """The gateway transmitted a queued downlink (txack) and the device answered (ack)."""
        item = next(q for q in self.queue if q.id == queue_item_id)
        info = self.device_info(item.dev_eui)
        self.emit(item.dev_eui, "txack", integration.TxAckEvent(
            downlink_id=1, device_info=info, queue_item_id=item.id, f_cnt_down=3,
            gateway_id="0016c001f1500001"))
        if item.confirmed:
            self.emit(item.dev_eui, "ack", integration.AckEvent(
                deduplication_id=str(uuid.uuid4()), device_info=info, queue_item_id=item.id,
                acknowledged=acknowledged, f_cnt_down=3))

    def drop_streams(self) -> None:
        """Abort every open event stream with UNAVAILABLE, as a restarting server would."""
        self._drop_generation += 1
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- server -----------------------------------------------------------------------------

    async def start(self) -> FakeChirpStack:
        options = []
        if self.max_concurrent_streams is not None:
            options.append(("grpc.max_concurrent_streams", self.max_concurrent_streams))
        server = grpc.aio.server(options=options)
        application_pb2_grpc.add_ApplicationServiceServicer_to_server(_Apps(self), server)
        device_pb2_grpc.add_DeviceServiceServicer_to_server(_Devices(self), server)
        internal_pb2_grpc.add_InternalServiceServicer_to_server(_Internal(self), server)
        if self.tls is not None:
            creds = grpc.ssl_server_credentials([self.tls])
            self.port = server.add_secure_port(f"127.0.0.1:{self.port}", creds)
        else:
            self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        """Stop serving (open streams end with UNAVAILABLE); data is kept for ``start``."""
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def check_auth(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        md = dict(context.invocation_metadata() or ())
        if md.get("authorization") != f"Bearer {self.token}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication failed: "
                                "invalid or missing token")

    async def check_tenant(self, context: grpc.aio.ServicerContext[Any, Any],
                           tenant_id: str) -> None:
        if not _is_uuid(tenant_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"invalid tenant id: {tenant_id!r}")
        if tenant_id != self.tenant_id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "permission denied")


class _Apps(application_pb2_grpc.ApplicationServiceServicer):  # type: ignore[misc]
    def __init__(self, cs: FakeChirpStack) -> None:
        self.cs = cs

    async def List(self, request: Any, context: Any) -> application_pb2.ListApplicationsResponse:
        await self.cs.check_auth(context)
        await self.cs.check_tenant(context, request.tenant_id)
        self.cs.list_requests.append(("applications", request.limit, request.offset))
        apps = sorted(self.cs.apps.items(), key=lambda kv: kv[1]["name"])
        resp = application_pb2.ListApplicationsResponse(total_count=len(apps))
        if request.limit:
            for app_id, a in apps[request.offset:request.offset + request.limit]:
                resp.result.add(id=app_id, name=a["name"])
        return resp


class _Devices(device_pb2_grpc.DeviceServiceServicer):  # type: ignore[misc]
    def __init__(self, cs: FakeChirpStack) -> None:
        self.cs = cs

    async def List(self, request: Any, context: Any) -> device_pb2.ListDevicesResponse:
        await self.cs.check_auth(context)
        if request.application_id not in self.cs.apps:
            if not _is_uuid(request.application_id):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid application id")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "permission denied")
        self.cs.list_requests.append(("devices", request.limit, request.offset))
        devs = sorted((eui, d) for eui, d in self.cs.devices.items()
                      if d["app"] == request.application_id)
        resp = device_pb2.ListDevicesResponse(total_count=len(devs))
        if request.limit:
            for eui, d in devs[request.offset:request.offset + request.limit]:
                item = resp.result.add(dev_eui=eui, name=d["name"],
                                       device_profile_id=d["profile_id"],
                                       device_profile_name=d["profile"])
                for k, v in d.items():
                    if k.startswith("tag:"):
                        item.tags[k[4:]] = v
        return resp

    async def Enqueue(self, request: Any, context: Any
                      ) -> device_pb2.EnqueueDeviceQueueItemResponse:
        await self.cs.check_auth(context)
        item = device_pb2.DeviceQueueItem()
        item.CopyFrom(request.queue_item)
        if item.dev_eui not in self.cs.devices:
            await context.abort(grpc.StatusCode.NOT_FOUND, "Object does not exist")
        if item.f_port == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "FPort must not be 0")
        item.id = str(uuid.uuid4())
        if request.flush_queue:
            self.cs.queue = [q for q in self.cs.queue if q.dev_eui != item.dev_eui]
        self.cs.queue.append(item)
        return device_pb2.EnqueueDeviceQueueItemResponse(id=item.id)


class _Internal(internal_pb2_grpc.InternalServiceServicer):  # type: ignore[misc]
    def __init__(self, cs: FakeChirpStack) -> None:
        self.cs = cs

    async def StreamDeviceEvents(self, request: Any, context: Any
                                 ) -> AsyncIterator[internal_pb2.LogItem]:
        cs = self.cs
        await cs.check_auth(context)
        eui = request.dev_eui
        if eui not in cs.devices:
            await context.abort(grpc.StatusCode.NOT_FOUND, "Object does not exist")
        cs.stream_calls[eui] += 1
        generation = cs._drop_generation
        last: tuple[int, int] | None = None
        sent = 0
        cs.active_streams += 1
        try:
            # like ChirpStack's XREAD from id 0: the whole (capped) history, then new items
            for _ in range(100_000):
                for item in list(cs.history[eui]):
                    ms, _, seq = item.id.partition("-")
                    key = (int(ms), int(seq))
                    if last is not None and key <= last:
                        continue
                    yield item
                    last = key
                    sent += 1
                    if cs.drop_after is not None and sent >= cs.drop_after:
                        return
                if cs._drop_generation != generation:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "stream dropped")
                changed = cs._changed
                try:
                    await asyncio.wait_for(changed.wait(), 0.2)
                except TimeoutError:
                    pass
        finally:
            cs.active_streams -= 1


class ThreadedFakeChirpStack:
    """The fake server on its own event loop in a thread, for tests of the daemon process."""

    def __init__(self, **kw: Any) -> None:
        self._kw = kw
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.cs: FakeChirpStack | None = None

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run ``fn(*args)`` (plain or coroutine) on the server's loop; return the result."""
        async def run() -> Any:
            r = fn(*args, **kw)
            if asyncio.iscoroutine(r):
                r = await r
            return r
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def start(self) -> FakeChirpStack:
        self._thread.start()

        async def make() -> FakeChirpStack:
            return await FakeChirpStack(**self._kw).start()

        self.cs = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)
        return self.cs

    def stop(self) -> None:
        if self.cs is not None:
            asyncio.run_coroutine_threadsafe(self.cs.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
