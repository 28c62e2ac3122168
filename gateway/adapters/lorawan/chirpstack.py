"""A thin client for the parts of ChirpStack v4's gRPC API the adapter uses.

Every call carries ``authorization: Bearer <token>``. Refusals that retrying cannot fix
(UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT) become :class:`ChirpStackRefused`
with a message saying what to fix; transient ones (UNAVAILABLE...) become
:class:`ChirpStackUnavailable`, which callers retry with backoff.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from pathlib import Path
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
from google.protobuf import struct_pb2

FATAL = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                   grpc.StatusCode.INVALID_ARGUMENT})


class ChirpStackError(Exception):
    """A ChirpStack call failed."""


class ChirpStackRefused(ChirpStackError):
    """ChirpStack refused a call for a reason retrying will not fix: configuration is wrong."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


class ChirpStackUnavailable(ChirpStackError):
    """ChirpStack could not be reached or failed transiently: try again later."""


class ChirpStackNotFound(ChirpStackError):
    """The object (device, application) does not exist in ChirpStack."""


def explain(exc: grpc.aio.AioRpcError, what: str, server: str,
            invalid_hint: str = "Check tenant_id and the application ids (UUIDs from the "
                                "ChirpStack web UI)") -> ChirpStackError:
    """Turn a gRPC error into an exception whose message says what to do next."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ChirpStackRefused(
            f"ChirpStack at {server} rejected the API token while {what} (UNAUTHENTICATED: "
            f"{details}). Create an API key in ChirpStack (tenant → API keys, or an admin key) "
            "and point api_token at it with ${credential:NAME} or ${file:PATH}", code)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return ChirpStackRefused(
            f"ChirpStack at {server} denied {what} (PERMISSION_DENIED: {details}). The API "
            "key must belong to the tenant in tenant_id (or be an admin key) and the "
            "applications listed must be in that tenant", code)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ChirpStackRefused(
            f"ChirpStack at {server} refused {what} as invalid (INVALID_ARGUMENT: {details}). "
            f"{invalid_hint}", code)
    if code == grpc.StatusCode.NOT_FOUND:
        return ChirpStackNotFound(f"{what}: not found in ChirpStack ({details})")
    return ChirpStackUnavailable(f"{what} failed: {code.name}: {details}")


def struct_from(obj: Mapping[str, Any]) -> struct_pb2.Struct:
    """A protobuf Struct (what ChirpStack's codec encoder takes) from a plain mapping."""
    s = struct_pb2.Struct()
    s.update(dict(obj))
    return s


class ChirpStackClient:
    """One gRPC channel to ChirpStack, with the token on every call."""

    def __init__(self, server: str, token: str, *, tls: bool = False,
                 ca_file: str | None = None, timeout: float = 10.0,
                 streams_per_channel: int = 100) -> None:
        self.server = server
        self.timeout = timeout
        self.streams_per_channel = streams_per_channel
        self._metadata = (("authorization", f"Bearer {token}"),)
        # keepalive pings find a dead connection under an idle event stream within minutes
        # (every 5 min: servers built on gRPC core answer more frequent pings on a
        # connection without data with GOAWAY "too_many_pings");
        # the channel's own reconnect backoff grows to two minutes by default: cap it, so
        # that ChirpStack coming back is noticed soon after our own backoff retries; a
        # local subchannel pool gives each channel its own connection (see _StreamChannel)
        self._options = [("grpc.keepalive_time_ms", 300_000),
                         ("grpc.keepalive_timeout_ms", 20_000),
                         ("grpc.http2.max_pings_without_data", 0),
                         ("grpc.max_reconnect_backoff_ms", 15_000),
                         ("grpc.use_local_subchannel_pool", 1)]
        self._creds: grpc.ChannelCredentials | None = None
        if tls:
            root = Path(ca_file).read_bytes() if ca_file else None
            self._creds = grpc.ssl_channel_credentials(root_certificates=root)
        self._channel = self._new_channel()
        self._apps = application_pb2_grpc.ApplicationServiceStub(self._channel)
        self._devices = device_pb2_grpc.DeviceServiceStub(self._channel)
        self._stream_channels: list[_StreamChannel] = []

    def _new_channel(self) -> grpc.aio.Channel:
        if self._creds is not None:
            return grpc.aio.secure_channel(self.server, self._creds, options=self._options)
        return grpc.aio.insecure_channel(self.server, options=self._options)

    async def close(self) -> None:
        """Close every channel; streams still open end with CANCELLED."""
        for ch in self._stream_channels:
            await ch.channel.close(grace=None)
        self._stream_channels.clear()
        await self._channel.close(grace=None)

    async def _all_pages(self, call: Any, request: Callable[[int], Any], what: str) -> list[Any]:
        """Every item of a paginated List call (limit 0 would return only the count)."""
        out: list[Any] = []
        offset = 0
        while True:
            try:
                resp = await call(request(offset), metadata=self._metadata, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                raise explain(exc, what, self.server) from None
            out.extend(resp.result)
            offset += len(resp.result)
            if not resp.result or offset >= resp.total_count:
                return out

    async def list_applications(self, tenant_id: str, page_size: int
                                ) -> list[application_pb2.ApplicationListItem]:
        """Every application of a tenant, page by page."""
        return await self._all_pages(
            self._apps.List,
            lambda offset: application_pb2.ListApplicationsRequest(
                tenant_id=tenant_id, limit=page_size, offset=offset),
            f"listing the applications of tenant {tenant_id}")

    async def list_devices(self, application_id: str, page_size: int
                           ) -> list[device_pb2.DeviceListItem]:
        """Every device of an application, page by page."""
        return await self._all_pages(
            self._devices.List,
            lambda offset: device_pb2.ListDevicesRequest(
                application_id=application_id, limit=page_size, offset=offset),
            f"listing the devices of application {application_id}")

    def stream_device_events(self, dev_eui: str) -> Any:
        """Open ``InternalService.StreamDeviceEvents``: an async iterator of ``LogItem``.

        ChirpStack first replays the device's short event history, then sends new events;
        the returned call is cancelled with ``.cancel()``.
        """
        ch = next((c for c in self._stream_channels if c.active < self.streams_per_channel),
                  None)
        if ch is None:
            ch = _StreamChannel(self._new_channel())
            self._stream_channels.append(ch)
        call = ch.stub.StreamDeviceEvents(
            internal_pb2.StreamDeviceEventsRequest(dev_eui=dev_eui), metadata=self._metadata)
        ch.active += 1
        call.add_done_callback(ch.release)
        return call

    @property
    def stream_channels(self) -> int:
        """Connections carrying event streams."""
        return len(self._stream_channels)

    async def enqueue(self, dev_eui: str, f_port: int, *, data: bytes | None = None,
                      obj: Mapping[str, Any] | None = None, confirmed: bool = False,
                      expires_at: float | None = None, flush_queue: bool = False) -> str:
        """Queue a downlink; returns ChirpStack's queue item id."""
        item = device_pb2.DeviceQueueItem(dev_eui=dev_eui, f_port=f_port, confirmed=confirmed)
        if data is not None:
            item.data = data
        if obj is not None:
            item.object.CopyFrom(struct_from(obj))
        if expires_at is not None:
            item.expires_at.FromDatetime(
                datetime.datetime.fromtimestamp(expires_at, tz=datetime.UTC))
        req = device_pb2.EnqueueDeviceQueueItemRequest(queue_item=item, flush_queue=flush_queue)
        try:
            resp = await self._devices.Enqueue(req, metadata=self._metadata,
                                               timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise explain(exc, f"queueing a downlink for {dev_eui}", self.server,
                          "Check f_port (1-223), the payload size allowed at the device's "
                          "data rate, and the object the profile codec's encoder expects"
                          ) from None
        return str(resp.id)


class _StreamChannel:
    """A connection for at most ``streams_per_channel`` event streams.

    HTTP/2 servers cap concurrent streams per connection (``max_concurrent_streams``,
    commonly 100 to 200); streams past the cap wait for a free slot, and event streams
    never end, so devices past it would never be heard. Unary calls (discovery,
    downlinks) use their own channel so that they never queue behind the streams.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.stub = internal_pb2_grpc.InternalServiceStub(channel)
        self.active = 0

    def release(self, _call: Any = None) -> None:
        """A stream on this connection ended (a done callback of the call)."""
        self.active -= 1

