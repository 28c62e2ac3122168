"""The values that flow through the gateway: readings in, commands out."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, NamedTuple

Value = float | int | bool | str


class Reading(NamedTuple):
    """One value of one metric of one device at one time (SenML-like, narrow).

    ``device`` is the gateway-wide id ``<adapter>:<native id>``; ``unit`` is a SenML
    unit name (``Cel``, ``%RH``, ``W``...) or ``None``; ``ts`` is UNIX seconds.
    A NamedTuple: immutable, slotted and cheap to build on the hot path.
    """

    device: str
    metric: str
    value: Value
    unit: str | None
    ts: float


def now() -> float:
    """Receive time for readings whose device sends no timestamp."""
    return time.time()


class Command(NamedTuple):
    """An action for one device, routed to the adapter that owns it."""

    device: str
    action: str
    params: Mapping[str, Any] = {}


class CommandResult(NamedTuple):
    """What became of a command: ``status`` is one of the names below."""

    ok: bool
    status: str  # sent | delivered | refused | timeout | unknown_device | unsupported | error
    detail: str = ""

    @classmethod
    def sent(cls, detail: str = "") -> CommandResult:
        return cls(True, "sent", detail)

    @classmethod
    def delivered(cls, detail: str = "") -> CommandResult:
        return cls(True, "delivered", detail)

    @classmethod
    def refused(cls, detail: str) -> CommandResult:
        return cls(False, "refused", detail)

    @classmethod
    def timeout(cls, detail: str = "") -> CommandResult:
        return cls(False, "timeout", detail)

    @classmethod
    def unsupported(cls, detail: str) -> CommandResult:
        return cls(False, "unsupported", detail)

    @classmethod
    def error(cls, detail: str) -> CommandResult:
        return cls(False, "error", detail)


def device_id(adapter: str, native_id: str) -> str:
    """The gateway-wide id of a device: ``<adapter>:<native id>``."""
    return f"{adapter}:{native_id}"
