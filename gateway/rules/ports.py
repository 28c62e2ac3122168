"""What the rule engine reaches outside itself: typed ports, built by the daemon.

The engine keeps its own state (latest values, windows, rule states) and reaches the rest
of the gateway only through a :class:`RulePorts`:

- actions: ``alert`` (queue an alert event in the outbox), ``command`` (route a
  :class:`~gateway.reading.Command` to the adapter owning its device), ``publish`` (raw
  payload through a named adapter, or the first running one that can publish), ``derive``
  (feed a derived reading into the pipeline). Each completes or raises
  :class:`ActionError` saying why; the engine logs and counts it.
- facts: :class:`Facts` (whether a device is online, its registry entry, online/offline
  transitions).
- health: :class:`~gateway.rules.health.GatewayHealth`, the sampler of the gateway's own
  ``gateway.*`` facts (outbox, uplink, adapter restarts, disk, Pi temperature/throttling).

:func:`ports_for` builds them from what the daemon offers (:class:`RuleParts`). The parts
are read when a port is used, not when it is built: the supervisor starts after the core
(rules belong to the core), and the device registry may be missing or appear late.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from gateway.reading import Command, CommandResult, Reading
from gateway.rules.health import (
    AdapterRecord,
    GatewayHealth,
    HealthOutbox,
    HealthSettings,
    UplinkState,
)

__all__ = ["ActionError", "AdapterRoster", "DeviceLookup", "EventQueue", "Facts",
           "GatewayOutbox", "OnlineListener", "Publishing", "ReadingSink", "RuleParts",
           "RulePorts", "find_publisher", "ports_for"]

#: called with (device, online) on each online/offline transition
OnlineListener = Callable[[str, bool], None]


class ActionError(Exception):
    """An action could not be carried out; logged and counted by the engine."""


# -- what the engine gets ---------------------------------------------------------------------


class Facts(Protocol):
    """Device facts conditions and templates read (``device.online``, ``device.name``...)."""

    def is_online(self, device: str) -> bool | None:
        """Whether ``device`` is online; None when nothing knows (no device registry)."""
        ...

    def info(self, device: str) -> dict[str, Any] | None:
        """The registry's entry for ``device`` without its values; None if unknown."""
        ...

    def add_listener(self, fn: OnlineListener) -> bool:
        """Call ``fn`` on each online/offline transition; False if there is nothing to
        listen to yet (ask again later)."""
        ...


@dataclass(frozen=True, slots=True)
class RulePorts:
    """The engine's ports: each action completes or raises :class:`ActionError`."""

    #: queue an alert event (its JSON body) for the cloud
    alert: Callable[[dict[str, Any]], Awaitable[None]]
    #: carry out a command on its device, through the adapter that owns it
    command: Callable[[Command], Awaitable[None]]
    #: (adapter or None for the first that can, topic, payload, qos, retain)
    publish: Callable[[str | None, str, bytes, int, bool], Awaitable[None]]
    #: accept a derived reading as if an adapter had sent it
    derive: Callable[[Reading], Awaitable[None]]
    facts: Facts
    #: the gateway's own health facts; None where nothing offers them
    health: GatewayHealth | None = None


# -- what the daemon offers -------------------------------------------------------------------


class EventQueue(Protocol):
    """The outbox, as far as alerts go."""

    def append_event(self, kind: str, body: dict[str, Any]) -> Awaitable[bool]:
        """Queue an event; True once it is durable, False if refused."""
        ...


class GatewayOutbox(EventQueue, HealthOutbox, Protocol):
    """The outbox: alerts go in, its depth and oldest reading are health facts."""


class ReadingSink(Protocol):
    """The pipeline, as far as derived readings go."""

    def accept(self, readings: Sequence[Reading]) -> Awaitable[bool]:
        """Take readings; True once they are durable, False if refused."""
        ...


class AdapterRoster(Protocol):
    """The adapter supervisor: running adapters by name, and command routing."""

    @property
    def adapters(self) -> Mapping[str, object]:
        """The adapters running now, by name."""
        ...

    def send(self, command: Command) -> Awaitable[CommandResult]:
        """Route ``command`` to the adapter owning its device."""
        ...

    @property
    def states(self) -> Mapping[str, AdapterRecord]:
        """Each configured adapter's record (restart times), by name."""
        ...


class DeviceLookup(Protocol):
    """The device registry, as far as rules read it."""

    def get(self, device: str) -> dict[str, Any] | None:
        """The JSON-ready entry of ``device`` (with its ``values``), or None."""
        ...

    def is_online(self, device: str) -> bool:
        """Whether ``device`` has been heard from within its silence timeout."""
        ...

    def add_listener(self, fn: OnlineListener) -> None:
        """Call ``fn`` on each online/offline transition."""
        ...

    def remove_listener(self, fn: OnlineListener) -> None:
        """Stop calling ``fn`` (an engine replaced by a reload)."""
        ...


class RuleParts(Protocol):
    """What the daemon offers rules; any part may still be missing (None) when asked."""

    @property
    def outbox(self) -> GatewayOutbox | None: ...

    @property
    def pipeline(self) -> ReadingSink | None: ...

    @property
    def supervisor(self) -> AdapterRoster | None: ...

    @property
    def devices(self) -> DeviceLookup | None: ...

    @property
    def uplink(self) -> UplinkState | None: ...

    @property
    def config(self) -> HealthSettings: ...


@runtime_checkable
class Publishing(Protocol):
    """An adapter that publishes raw payloads: the shape of
    :class:`gateway.adapters.capabilities.Publisher` (rules do not import adapters)."""

    async def publish(self, topic: str, payload: bytes, qos: int = 1,
                      retain: bool = False) -> CommandResult: ...


# -- building the ports -----------------------------------------------------------------------


def find_publisher(adapters: Mapping[str, object], name: str | None) -> Publishing:
    """The adapter ``name`` if it runs and can publish, else (``name`` None) the first
    running one that can; raises :class:`ActionError` when there is none."""
    if name is not None:
        target = adapters.get(name)
        if not isinstance(target, Publishing):
            raise ActionError(f"adapter {name!r} is not running or cannot publish")
        return target
    for a in adapters.values():
        if isinstance(a, Publishing):
            return a
    raise ActionError("no running adapter can publish (add an mqtt adapter)")


class _RegistryFacts:
    """:class:`Facts` read from the parts' device registry, whenever there is one."""

    __slots__ = ("_parts",)

    def __init__(self, parts: RuleParts) -> None:
        self._parts = parts

    def is_online(self, device: str) -> bool | None:
        devices = self._parts.devices
        return None if devices is None else bool(devices.is_online(device))

    def info(self, device: str) -> dict[str, Any] | None:
        devices = self._parts.devices
        got = devices.get(device) if devices is not None else None
        if not isinstance(got, dict):
            return None
        return {k: v for k, v in got.items() if k != "values"}

    def add_listener(self, fn: OnlineListener) -> bool:
        devices = self._parts.devices
        if devices is None:
            return False
        devices.add_listener(fn)
        return True


def ports_for(parts: RuleParts) -> RulePorts:
    """The rule engine's ports onto ``parts``, each part looked up when a port is used."""

    async def alert(body: dict[str, Any]) -> None:
        outbox = parts.outbox
        if outbox is None:
            raise ActionError("no outbox to queue the alert in")
        if not await outbox.append_event("alert", body):
            raise ActionError("the outbox refused the alert (full or failing)")

    async def command(cmd: Command) -> None:
        supervisor = parts.supervisor
        if supervisor is None:
            raise ActionError("adapters are not running yet")
        result = await supervisor.send(cmd)
        if not result.ok:
            raise ActionError(f"command {cmd.action} to {cmd.device}: "
                              f"{result.status}: {result.detail}")

    async def publish(adapter: str | None, topic: str, payload: bytes, qos: int,
                      retain: bool) -> None:
        supervisor = parts.supervisor
        target = find_publisher(supervisor.adapters if supervisor is not None else {}, adapter)
        result = await target.publish(topic, payload, qos, retain)
        # a third-party publisher answering nothing has published
        if isinstance(result, CommandResult) and not result.ok:
            raise ActionError(f"publish to {topic}: {result.status}: {result.detail}")

    async def derive(reading: Reading) -> None:
        pipeline = parts.pipeline
        if pipeline is None:
            raise ActionError("no pipeline to feed the derived reading into")
        if not await pipeline.accept([reading]):
            raise ActionError(f"derived {reading.metric} of {reading.device} refused "
                              "(outbox full or failing)")

    return RulePorts(alert=alert, command=command, publish=publish, derive=derive,
                     facts=_RegistryFacts(parts), health=GatewayHealth(parts))
