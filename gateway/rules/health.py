"""The gateway's own health as facts rules can watch: ``gateway.outbox_depth`` and the like.

A rule whose condition reads ``gateway.<fact>`` is a *health rule*: it is evaluated for a
pseudo-device that is the gateway itself (``gateway:<gateway.id>``) on the engine's 1 s
tick, never on the reading hot path, with the same ``for``/``clear``/``cooldown`` state
as any other rule. :class:`GatewayHealth` samples, once per tick and only what some rule
reads, the outbox (depth, age of the oldest waiting reading), the uplink (connected, down
for how long), the adapter supervisor (restarts in a window), the state directory's file
system (``os.statvfs``) and, on a Raspberry Pi, the CPU temperature and the firmware's
throttling flags. A fact that cannot be known here (no uplink configured, no thermal zone,
not a Pi) is absent: a condition on it neither fires nor clears.

This module imports nothing of the rule language: the sampler hands back a plain dict of
values by fact key, and the compiler (:mod:`gateway.rules.expr`) reads the catalogue here.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.config.types import format_seconds
from gateway.logs import InputLog

log = logging.getLogger("gateway.rules")

PREFIX = "gateway."
#: the pseudo-device of health rules: ``gateway:<gateway.id>``
DEVICE_PREFIX = "gateway:"
#: a source that fails (unreadable file, a part that raises) is logged this often at most
ERROR_LOG_EVERY = 60.0
#: the file a throttling state is read from is this small; anything longer is not it
_MAX_FILE = 256


@dataclass(frozen=True, slots=True)
class Fact:
    """One ``gateway.<name>`` value: where it comes from, its unit, what it means."""

    source: str  # outbox | uplink | disk | thermal | throttled
    unit: str | None
    doc: str


#: firmware ``get_throttled`` bits (Raspberry Pi documentation, "get_throttled")
THROTTLE_BITS: dict[str, int] = {
    "undervoltage": 0, "freq_capped": 1, "throttled": 2, "soft_temp_limit": 3,
    "undervoltage_occurred": 16, "freq_capped_occurred": 17, "throttled_occurred": 18,
    "soft_temp_limit_occurred": 19,
}

FACTS: dict[str, Fact] = {
    "outbox_depth": Fact("outbox", None, "readings waiting in the outbox"),
    "outbox_oldest_age": Fact("outbox", "s", "age of the oldest waiting reading (0 when "
                                             "the outbox is empty)"),
    "outbox_bytes": Fact("outbox", "By", "bytes the outbox uses on disk"),
    "outbox_disk_full": Fact("outbox", None, "true while new readings are refused for "
                                             "want of disk space"),
    "uplink_connected": Fact("uplink", None, "true while connected to the cloud broker"),
    "uplink_down_for": Fact("uplink", "s", "seconds since the uplink lost (or never had) its "
                                           "connection; 0 while connected"),
    "free_bytes": Fact("disk", "By", "bytes free for the gateway in the state directory's "
                                     "file system"),
    "free_percent": Fact("disk", "%", "the same, in percent of its size"),
    "cpu_temp": Fact("thermal", "Cel", "CPU temperature (thermal zone 0)"),
    "throttled_flags": Fact("throttled", None, "the firmware's get_throttled bits, as a number"),
    **{name: Fact("throttled", None, f"get_throttled bit {bit}")
       for name, bit in THROTTLE_BITS.items()},
}

#: ``gateway.<function>(...)``: name → what it takes (for messages)
FUNCTIONS: dict[str, str] = {
    "adapter_restarts": "gateway.adapter_restarts(mqtt, 1h) (or (1h) for all adapters)",
}


def fact_key(name: str) -> str:
    """The key (and display name) of a plain fact: ``gateway.cpu_temp``."""
    return PREFIX + name


def restarts_key(adapter: str | None, seconds: float) -> str:
    """The key of ``gateway.adapter_restarts(adapter, window)``."""
    return f"{PREFIX}adapter_restarts({adapter or '*'}, {format_seconds(seconds)})"


def unit_of(key: str) -> str | None:
    """The unit of the fact ``key`` (None where unitless or unknown)."""
    fact = FACTS.get(key[len(PREFIX):]) if key.startswith(PREFIX) else None
    return fact.unit if fact is not None else None


# -- what the sampler reads (the daemon's parts, structurally) ----------------------------------


class OutboxStatus(Protocol):
    @property
    def depth(self) -> int: ...

    @property
    def oldest_ts(self) -> float | None: ...

    @property
    def bytes(self) -> int: ...

    @property
    def disk_full(self) -> bool: ...


class HealthOutbox(Protocol):
    """The outbox, as far as its health goes."""

    def stats(self) -> OutboxStatus: ...


class UplinkState(Protocol):
    """The uplink's connection state."""

    @property
    def connected(self) -> bool: ...

    @property
    def disconnected_since(self) -> float | None:
        """UNIX time the connection was lost (or the uplink started); None while connected."""
        ...


class AdapterRecord(Protocol):
    @property
    def restart_times(self) -> Sequence[float]:
        """UNIX times of the adapter's latest restarts, oldest first (bounded)."""
        ...


class AdapterStates(Protocol):
    @property
    def states(self) -> Mapping[str, AdapterRecord]: ...


class HealthPaths(Protocol):
    """The ``health:`` section (:class:`gateway.rules.config.HealthSection`)."""

    @property
    def disk_path(self) -> str | None: ...

    @property
    def thermal_path(self) -> str: ...

    @property
    def throttled_path(self) -> str: ...


class Identity(Protocol):
    @property
    def id(self) -> str: ...


class HealthSettings(Protocol):
    """The parts of the configuration health facts read."""

    @property
    def health(self) -> HealthPaths: ...

    @property
    def state_dir(self) -> Path: ...

    @property
    def gateway(self) -> Identity: ...


class HealthParts(Protocol):
    """What the daemon offers the sampler; any part may be missing (None) when asked."""

    @property
    def outbox(self) -> HealthOutbox | None: ...

    @property
    def uplink(self) -> UplinkState | None: ...

    @property
    def supervisor(self) -> AdapterStates | None: ...

    @property
    def config(self) -> HealthSettings: ...


# -- reading the Pi's files ---------------------------------------------------------------------


def read_cpu_temp(path: str) -> float | None:
    """°C from a thermal zone file (millidegrees, ``"48312"``); None if there is none."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")[:_MAX_FILE]
    except (FileNotFoundError, NotADirectoryError):
        return None
    value = float(text.strip()) / 1000.0
    if not math.isfinite(value):
        raise ValueError(f"not a temperature: {text.strip()!r}")
    return value


def parse_throttled(text: str) -> int:
    """The flags of ``get_throttled``: the firmware's sysfs file (``"50005"``, hex) or
    ``vcgencmd get_throttled`` output (``"throttled=0x50005"``)."""
    body = text.strip()
    if "=" in body:
        body = body.split("=", 1)[1].strip()
    if not body:
        raise ValueError("empty")
    try:
        flags = int(body, 16)
    except ValueError:
        raise ValueError(f"expected hexadecimal flags such as 0x50005, got {body[:40]!r}") \
            from None
    if not 0 <= flags < 1 << 32:
        raise ValueError(f"flags out of range: {body[:40]!r}")
    return flags


def read_throttled(path: str) -> int | None:
    """The firmware's throttling flags from ``path``; None if there is no such file."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")[:_MAX_FILE]
    except (FileNotFoundError, NotADirectoryError):
        return None
    return parse_throttled(text)


# -- the sampler ----------------------------------------------------------------------------------


class GatewayHealth:
    """Samples the facts rules ask for, from the daemon's parts, looked up when sampled.

    A failing source costs only its own facts (absent); it is counted by the caller's
    ``errors`` and logged at most once a minute per source with the number suppressed.
    """

    def __init__(self, parts: HealthParts) -> None:
        self._parts = parts
        self._log = InputLog(log, ERROR_LOG_EVERY)
        #: failures per source since start (the engine exports them as a metric)
        self.errors: dict[str, int] = {}

    @property
    def device(self) -> str:
        """The pseudo-device health rules are evaluated for: ``gateway:<gateway.id>``."""
        try:
            return DEVICE_PREFIX + self._parts.config.gateway.id
        except AttributeError:  # parts without a config (in-process tests)
            return DEVICE_PREFIX + "gateway"

    def sample(self, now: float, keys: Iterable[str],
               restarts: Mapping[str, tuple[str | None, float]]) -> dict[str, Any]:
        """The values of ``keys`` (plain facts) and ``restarts`` (key → (adapter or None,
        window seconds)) as of ``now``; what cannot be known is left out (absent)."""
        sources = {FACTS[k[len(PREFIX):]].source for k in keys
                   if k.startswith(PREFIX) and k[len(PREFIX):] in FACTS}
        out: dict[str, Any] = {}
        for source in sorted(sources):
            try:
                getattr(self, f"_{source}")(now, out)
            except Exception as exc:  # noqa: BLE001 - a failing source costs only its facts
                self._failed(source, exc)
        if restarts:
            try:
                self._restarts(now, restarts, out)
            except Exception as exc:  # noqa: BLE001
                self._failed("adapters", exc)
        return out

    def _failed(self, source: str, exc: Exception) -> None:
        self.errors[source] = self.errors.get(source, 0) + 1
        self._log.warning(source, "unreadable", "health facts: cannot read the %s: %s: %s; its "
                          "gateway.* facts are absent (logged once a minute)", source,
                          type(exc).__name__, exc)

    def _outbox(self, now: float, out: dict[str, Any]) -> None:
        outbox = self._parts.outbox
        if outbox is None:
            return
        stats = outbox.stats()
        out["gateway.outbox_depth"] = int(stats.depth)
        oldest = stats.oldest_ts
        out["gateway.outbox_oldest_age"] = max(0.0, now - oldest) if oldest else 0.0
        out["gateway.outbox_bytes"] = int(stats.bytes)
        out["gateway.outbox_disk_full"] = bool(stats.disk_full)

    def _uplink(self, now: float, out: dict[str, Any]) -> None:
        uplink = self._parts.uplink
        if uplink is None:
            return  # no uplink configured: whether it is down means nothing
        connected = bool(uplink.connected)
        out["gateway.uplink_connected"] = connected
        since = uplink.disconnected_since
        out["gateway.uplink_down_for"] = 0.0 if connected or since is None \
            else max(0.0, now - since)

    def _disk(self, now: float, out: dict[str, Any]) -> None:
        config = self._parts.config
        path = config.health.disk_path or str(config.state_dir)
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
        out["gateway.free_bytes"] = free
        if st.f_blocks:
            out["gateway.free_percent"] = 100.0 * st.f_bavail / st.f_blocks

    def _thermal(self, now: float, out: dict[str, Any]) -> None:
        temp = read_cpu_temp(self._parts.config.health.thermal_path)
        if temp is not None:
            out["gateway.cpu_temp"] = temp

    def _throttled(self, now: float, out: dict[str, Any]) -> None:
        flags = read_throttled(self._parts.config.health.throttled_path)
        if flags is None:
            return
        out["gateway.throttled_flags"] = flags
        for name, bit in THROTTLE_BITS.items():
            out[PREFIX + name] = bool(flags >> bit & 1)

    def _restarts(self, now: float, wanted: Mapping[str, tuple[str | None, float]],
                  out: dict[str, Any]) -> None:
        supervisor = self._parts.supervisor
        if supervisor is None:
            return  # adapters not started yet
        states = supervisor.states
        for key, (adapter, seconds) in wanted.items():
            edge = now - seconds
            if adapter is None:
                records: list[AdapterRecord] = list(states.values())
            else:
                record = states.get(adapter)
                if record is None:
                    continue  # no such adapter (removed, or a typo): absent
                records = [record]
            out[key] = sum(1 for r in records for t in r.restart_times if t > edge)
