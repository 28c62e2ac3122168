"""Optional abilities of adapters, beyond the :class:`~gateway.adapters.base.Adapter` contract.

Every adapter receives readings and carries out commands (``send``); some can do more. Each
extra ability is a :func:`~typing.runtime_checkable` protocol: an adapter has it when its
class defines the method, structurally, without declaring anything. Callers test it with
``isinstance(adapter, Joiner)`` (or ``issubclass(cls, Joiner)`` before an adapter runs:
these protocols have methods only, so both work) and mypy then knows the method's
signature.

- :class:`Publisher`: publishes raw payloads on the adapter's local broker (MQTT); used by
  the rules' ``publish`` action.
- :class:`Joiner`: opens its network for new devices (Zigbee); ``POST /api/permit-join``.
- :class:`Remover`: makes a device leave the network before it is forgotten (Zigbee);
  ``DELETE /api/devices/{device}``.

A runtime check only sees that the method exists, not its signature: keep the signatures
below and the adapters' in step (``tests/test_capabilities.py`` checks the real adapters).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from gateway.reading import CommandResult

__all__ = ["Joiner", "Publisher", "Remover"]


@runtime_checkable
class Publisher(Protocol):
    """An adapter that publishes to topics of its own broker."""

    async def publish(self, topic: str, payload: bytes, qos: int = 1,
                      retain: bool = False) -> CommandResult:
        """Publish ``payload`` to ``topic``; the result says whether the broker took it."""
        ...


@runtime_checkable
class Joiner(Protocol):
    """An adapter whose network admits new devices only while joining is permitted."""

    async def permit_join(self, seconds: int) -> dict[str, Any] | None:
        """Permit joining for ``seconds`` (0 closes); an optional JSON-ready summary.

        Raises (``ValueError``, ``RuntimeError``...) when joining cannot be opened; the
        message is shown to whoever asked.
        """
        ...


@runtime_checkable
class Remover(Protocol):
    """An adapter that removes a device from its network (not just from the registry)."""

    async def remove(self, device: str) -> CommandResult:
        """Remove ``device`` (a gateway-wide id); ``unknown_device`` if it has no such one."""
        ...
