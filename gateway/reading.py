"""The values that flow through the gateway: readings in, commands out."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


#: longest device id, metric name and unit the gateway keeps (characters)
MAX_DEVICE_ID, MAX_METRIC, MAX_UNIT = 200, 100, 32
#: integers beyond SQLite's and most consumers' 64 bits are refused
_INT_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ReadingLimits:
    """What a Reading may carry: checked once, where readings enter the core.

    ``max_past`` and ``max_future`` bound the timestamp around the receive time (device
    clocks drift, LoRaWAN and sleepy devices deliver late); ``max_string`` bounds string
    values. Anything the outbox, the uplink or a cloud consumer could not keep is refused.
    """

    max_past: float = 365 * 86400.0
    max_future: float = 86400.0
    max_string: int = 1024

    def problems(self, readings: Sequence[Reading], now: float) -> list[tuple[int, str]]:
        """``(index, reason)`` of each reading that must not be stored; empty if all fit."""
        lo, hi = now - self.max_past, now + self.max_future
        out: list[tuple[int, str]] = []
        checked: object = None  # the device id last found good (batches run by device)
        for i, r in enumerate(readings):
            d, m, u, v, ts = r.device, r.metric, r.unit, r.value, r.ts
            if d is not checked:
                if d.__class__ is not str or not 2 < len(d) <= MAX_DEVICE_ID or ":" not in d:
                    out.append((i, "bad_device_id"))
                    continue
                checked = d
            if m.__class__ is not str or not 0 < len(m) <= MAX_METRIC:
                out.append((i, "bad_metric"))
                continue
            if u is not None and (u.__class__ is not str or len(u) > MAX_UNIT):
                out.append((i, "bad_unit"))
                continue
            cls = v.__class__
            fast: Any = v  # mypy does not narrow on __class__; the comparisons are guarded
            # the common case in a few comparisons; anything unusual goes to _reason
            if ((cls is float and -1e300 < fast < 1e300) or cls is bool
                    or (cls is int and -_INT_MAX <= fast <= _INT_MAX)) \
                    and ts.__class__ is float and lo <= ts <= hi:
                continue
            reason = self._reason(v, ts, lo, hi)
            if reason is not None:
                out.append((i, reason))
        return out

    def _reason(self, v: object, ts: object, lo: float, hi: float) -> str | None:
        if isinstance(v, bool):
            pass
        elif isinstance(v, float):
            if not math.isfinite(v):
                return "value_not_finite"
            if not -1e300 < v < 1e300:
                return "value_out_of_range"
        elif isinstance(v, int):
            if not -_INT_MAX <= v <= _INT_MAX:
                return "value_out_of_range"
        elif isinstance(v, str):
            if len(v) > self.max_string:
                return "string_too_long"
        else:
            return "value_type"
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            return "ts_type"
        if not math.isfinite(ts):
            return "ts_not_finite"
        if ts < lo:
            return "ts_too_old"
        if ts > hi:
            return "ts_in_future"
        return None


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
