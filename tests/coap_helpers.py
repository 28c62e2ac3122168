"""CoAP test parts: the adapter in-process on a real outbox, real aiocoap clients and devices.

Everything binds free loopback UDP ports. Nothing is mocked except, where a test says so,
a sink that refuses (the outbox's "queue full" answer, which is hard to provoke on time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiocoap import Context, Message, resource
from aiocoap.numbers.codes import Code
from prometheus_client import CollectorRegistry

from gateway.adapters.base import AdapterContext
from gateway.adapters.coap import CoapAdapter
from gateway.adapters.coap.config import CoapConfig
from gateway.reading import Reading
from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests import waiting
from tests.brokers import free_port


def udp_port() -> int:
    """A free loopback UDP port."""
    return free_port(kind=socket.SOCK_DGRAM)


class OutboxSink:
    """The adapter's sink: a real outbox; ``refuse`` makes it answer as a full queue does."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.refuse = False
        self.calls = 0
        #: when set, accept waits for it first: a commit that takes as long as the test wants
        self.hold: asyncio.Event | None = None

    async def accept(self, readings: Sequence[Reading]) -> bool:
        self.calls += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.refuse:
            return False
        return await self.outbox.append(readings)

    async def stored(self) -> list[Reading]:
        """Every reading committed so far, in outbox order."""
        rows = await self.outbox.read_telemetry(0, 1_000_000)
        return [r for row in rows for r in row.readings]


class Directory:
    """Records what the adapter declares to the device registry."""

    def __init__(self) -> None:
        self.declared: dict[str, dict[str, Any]] = {}

    def declare(self, device: str, **info: Any) -> None:
        self.declared[device] = info

    def knows(self, device: str) -> bool:
        return device in self.declared


class Gateway:
    """One CoAP adapter in-process, on its own outbox and metrics registry."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.tmp = tmp
        self.port = config.get("port") or udp_port()
        self.raw = {"type": "coap", "name": "coap", "bind": "127.0.0.1", "port": self.port,
                    **config}
        self.config = CoapConfig.model_validate(self.raw)
        self.metrics = CollectorRegistry()
        self.directory = Directory()
        self.outbox: Outbox | None = None
        self.sink: OutboxSink | None = None
        self.adapter: CoapAdapter | None = None

    async def start(self) -> Gateway:
        self.outbox = await Outbox.open(self.tmp / "outbox.db",
                                        StoreConfig(commit_interval=0.005), metrics=None)
        self.sink = OutboxSink(self.outbox)
        ctx = AdapterContext(name="coap", sink=self.sink, state_dir=self.tmp,
                             metrics=self.metrics, devices=self.directory,
                             log=logging.getLogger("gateway.adapter.coap"))
        self.adapter = CoapAdapter(self.config, ctx)
        await self.adapter.start()
        return self

    async def stop(self) -> None:
        if self.adapter is not None:
            await self.adapter.stop()
        if self.outbox is not None:
            await self.outbox.close()

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.get_sample_value(name, labels)
        return value or 0.0

    async def stored(self) -> list[Reading]:
        assert self.sink is not None
        return await self.sink.stored()

    async def wait_stored(self, check: Callable[[list[Reading]], bool],
                          within: float = 10.0) -> list[Reading]:
        """Poll the outbox until ``check`` holds (bounded in time); what it holds then."""
        seen: list[Reading] = []

        async def holds() -> bool:
            nonlocal seen
            seen = await self.stored()
            return check(seen)

        try:
            await waiting.eventually(holds, within, "the outbox's expected state")
        except AssertionError:
            raise AssertionError(
                f"outbox never reached the expected state in {within:g} s; it holds {seen}"
            ) from None
        return seen


async def client(transports: list[str] | None = None) -> Context:
    """A real aiocoap client context (UDP only, so nothing else is opened)."""
    return await Context.create_client_context(transports=transports or ["udp6"])


async def post(ctx: Context, uri: str, payload: bytes, fmt: int | None = 50,
               code: Code = Code.POST, within: float = 10.0, **opts: Any) -> Message:
    msg = Message(code=code, uri=uri, payload=payload, **opts)
    if fmt is not None:
        msg.opt.content_format = fmt
    return await asyncio.wait_for(ctx.request(msg).response, within)


def write_oscore_pair(gateway_dir: Path, device_dir: Path, secret: str = "0123456789abcdef",
                      gateway_id: str = "00", device_id: str = "01") -> None:
    """One OSCORE context as the gateway keeps it and as the device keeps it (ids swapped)."""
    for d, sender, recipient in ((gateway_dir, gateway_id, device_id),
                                 (device_dir, device_id, gateway_id)):
        d.mkdir(parents=True, exist_ok=True)
        (d / "settings.json").write_text(json.dumps({
            "sender-id_hex": sender, "recipient-id_hex": recipient,
            "secret_ascii": secret, "salt_ascii": "saltsalt"}))


class DeviceResource(resource.ObservableResource):
    """An observable sensor value on a simulated device (a real aiocoap server)."""

    def __init__(self, value: dict[str, Any], fmt: int = 50) -> None:
        super().__init__()
        self.value = value
        self.fmt = fmt
        self.gets = 0

    def set(self, **value: Any) -> None:
        self.value = {**self.value, **value}
        self.updated_state()

    async def render_get(self, request: Message) -> Message:
        self.gets += 1
        return Message(payload=json.dumps(self.value).encode(), content_format=self.fmt)


class PlainResource(resource.Resource):
    """A resource that does not support observe (answers GET without an Observe option)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.gets = 0

    async def render_get(self, request: Message) -> Message:
        self.gets += 1
        return Message(payload=self.text.encode(), content_format=0)


class Actuator(resource.Resource):
    """Takes PUT/POST; records bodies and Block1 sizes; answers with ``answer``."""

    def __init__(self, answer: Code = Code.CHANGED) -> None:
        super().__init__()
        self.answer = answer
        self.bodies: list[tuple[int | None, bytes]] = []
        self.block_sizes: list[int] = []

    async def render_to_pipe(self, pipe: Any) -> None:
        block1 = pipe.request.opt.block1
        if block1 is not None:
            self.block_sizes.append(block1.size)
        await super().render_to_pipe(pipe)

    async def _body(self, request: Message) -> Message:
        fmt = request.opt.content_format
        self.bodies.append((None if fmt is None else int(fmt), request.payload))
        return Message(code=self.answer, payload=b"nope" if not self.answer.is_successful()
                       else b"")

    render_put = _body
    render_post = _body


class Device:
    """A simulated CoAP device: a real aiocoap server on a loopback port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or udp_port()
        self.site = resource.Site()
        self.context: Context | None = None

    def add(self, path: str, res: Any) -> Any:
        self.site.add_resource([p for p in path.split("/") if p], res)
        return res

    async def start(self) -> Device:
        self.context = await Context.create_server_context(
            self.site, bind=("127.0.0.1", self.port), transports=["udp6"])
        return self

    async def stop(self) -> None:
        if self.context is not None:
            await self.context.shutdown()
            self.context = None

    @property
    def address(self) -> str:
        return f"coap://127.0.0.1:{self.port}"


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 10.0,
                     what: str = "condition") -> None:
    """:func:`tests.waiting.eventually` with the CoAP tests' default of 10 s (the name the
    CoAP test modules import from here)."""
    await waiting.eventually(check, within, what)
