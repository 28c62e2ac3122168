"""The adapter contract: what every protocol plugin implements and what it is given.

An adapter owns one protocol. It turns wire payloads into :class:`Reading` s (through
the payload layer, :mod:`gateway.payloads`), hands them to the core with
:meth:`Adapter.accept` (the one ingest path, :mod:`gateway.adapters.ingest`: counted,
retried with one policy, in order per source, drained at stop), and acknowledges the
device only once that returned True (the readings are durable). It turns
:class:`Command` s into wire payloads. It knows nothing about rules, storage or the cloud.

Third-party adapters register a subclass under the entry-point group
``gateway.adapters`` with the ``type:`` name users write in YAML::

    [project.entry-points."gateway.adapters"]
    modbus = "gateway_modbus:ModbusAdapter"
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
from collections.abc import Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from prometheus_client import CollectorRegistry
from pydantic import Field

from gateway.adapters.ingest import DRAIN_TIMEOUT, WHOLE, Ingest
from gateway.config.types import Section
from gateway.reading import Command, CommandResult, Reading


class Sink(Protocol):
    """Where adapters push readings."""

    async def accept(self, readings: Sequence[Reading]) -> bool:
        """True once the readings are durable (acknowledge the device then).

        False means refused (queue full or store failing): answer the device with a
        refusal it will retry on (MQTT 0x97, CoAP 5.03). Never raises for that.
        """
        ...


class DeviceDirectory(Protocol):
    """What adapters tell the device registry beyond readings (names, models...)."""

    def declare(self, device: str, **info: Any) -> None:
        """Record a device and descriptive fields (name, model, manufacturer, type...)."""
        ...

    def knows(self, device: str) -> bool:
        """Whether ``device`` is registered: only those get a per-device metric label."""
        ...

    def remove(self, device: str) -> bool:
        """Forget ``device`` (it left the adapter's network); False if it was unknown."""
        ...


class _NullDirectory:
    def declare(self, device: str, **info: Any) -> None:
        return None

    def knows(self, device: str) -> bool:
        return False

    def remove(self, device: str) -> bool:
        return False


@dataclass(frozen=True)
class Advice:
    """What ``gateway check`` says about a valid section: the gateway would still start."""

    level: Literal["warning", "note"]
    text: str


class AdapterConfig(Section):
    """Fields every adapter section has; adapters subclass it with their own."""

    type: str
    name: str = Field(default="", description="instance name; defaults to the type")
    enabled: bool = True

    def advice(self) -> list[Advice]:
        """Warnings and notes about what this section needs of the machine it runs on
        (a local service's limits, say), for ``gateway check``. Never raises."""
        return []


@dataclass
class AdapterContext:
    """Everything an adapter is given by the daemon."""

    name: str
    sink: Sink
    state_dir: Path
    metrics: CollectorRegistry
    devices: DeviceDirectory = field(default_factory=_NullDirectory)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("gateway.adapter"))
    #: how long stop() may wait for readings being accepted (below the supervisor's limit)
    drain_timeout: float = DRAIN_TIMEOUT


class Adapter(abc.ABC):
    """Base class of protocol adapters.

    Subclasses set ``Config`` (their pydantic model) and implement :meth:`start`,
    :meth:`stop` and :meth:`send`. Background work goes through :meth:`spawn`: if a
    spawned task raises, the adapter is marked failed and the supervisor restarts it
    with backoff.
    """

    Config: ClassVar[type[AdapterConfig]] = AdapterConfig
    #: device id prefix this adapter owns (``mqtt`` owns ``mqtt:...``); defaults to name
    prefix: str

    def __init__(self, config: AdapterConfig, ctx: AdapterContext) -> None:
        self.config = config
        self.ctx = ctx
        self.prefix = ctx.name
        self.log = ctx.log
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failed: asyncio.Future[BaseException] | None = None
        #: the one path readings take into the core
        self.ingest = Ingest(ctx.sink, ctx.drain_timeout)

    async def accept(self, readings: Sequence[Reading], source: Hashable = WHOLE,
                     retry_for: float = math.inf,
                     on_refused: Callable[[], None] | None = None) -> bool:
        """Hand readings to the core; True once durable (acknowledge the device then).

        A refusal is retried (:mod:`gateway.adapters.ingest`) for ``retry_for`` seconds
        (0: answer the refusal at once), and later batches of the same ``source`` wait
        behind it. False: refused for good, or stopping. ``on_refused`` is called the
        first time the batch is refused (to count it, say).
        """
        return await self.ingest.push(readings, source, retry_for, on_refused)

    # -- lifecycle -------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Bring the adapter up; return once it is running. Raise if first contact fails."""

    async def stop(self) -> None:
        """Finish what was accepted, then release everything ``start`` set up.

        The default drains :attr:`ingest` (bounded by the context's ``drain_timeout``)
        and cancels tasks started with :meth:`spawn`; override to stop taking input
        first and call ``await super().stop()`` at the end.
        """
        left = await self.ingest.drain()
        if left:
            self.log.warning("%s: %d batch(es) still being accepted at stop; their devices "
                             "keep them", self.prefix, left)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # noqa: BLE001 - already reported through fail()
                pass
        self._tasks.clear()

    @abc.abstractmethod
    async def send(self, command: Command) -> CommandResult:
        """Deliver a command to a device this adapter owns."""

    def owns(self, device: str) -> bool:
        """Whether ``device`` (a gateway-wide id) belongs to this adapter."""
        return device.startswith(self.prefix + ":")

    # -- failure reporting ------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run background work; an exception in it fails the adapter."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """Report that the adapter cannot go on; the supervisor will restart it."""
        fut = self.failed
        if not fut.done():
            fut.set_result(exc)

    @property
    def failed(self) -> asyncio.Future[BaseException]:
        """Resolves with the exception that broke the adapter."""
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        return self._failed

