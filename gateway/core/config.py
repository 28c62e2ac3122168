"""The ``gateway:`` and ``devices:`` sections."""

from __future__ import annotations

import re
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator

from gateway.config.types import Duration, LongDuration, Section
from gateway.reading import ReadingLimits

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _default_id() -> str:
    host = socket.gethostname().split(".")[0] or "gateway"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", host)[:64]


class GatewaySection(Section):
    """Identity and process settings."""

    id: str = Field(default_factory=_default_id, description="used in cloud topics")
    state_dir: str = "/var/lib/gateway"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("id")
    @classmethod
    def _valid_id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("expected 1-64 letters, digits, '_', '.' or '-' (used in MQTT topics)")
        return v


class DeclaredDevice(Section):
    """A device listed in config: registered even before its first reading."""

    id: str
    name: str | None = None
    type: str | None = None
    location: str | None = None
    tags: list[str] = Field(default_factory=list)
    model: str | None = None
    manufacturer: str | None = None
    offline_after: Duration | None = Field(default=None, gt=0,
                                           description="overrides the type's silence timeout")


class DevicesSection(Section):
    """Device registry settings."""

    max_devices: int = Field(default=2000, ge=1, le=1_000_000,
                             description="readings from new devices past this many are "
                                         "refused (a flood of invented ids)")
    max_metrics: int = Field(default=256, ge=1, le=100_000,
                             description="readings of further new metrics of one device "
                                         "are refused")
    max_series: int = Field(default=10_000, ge=1, le=10_000_000,
                            description="device/metric pairs in all; readings of new ones "
                                        "past it are refused (invented metric names)")
    offline_after: Duration = Field(default=300.0, gt=0)
    offline_after_by_type: dict[str, Annotated[Duration, Field(gt=0)]] = Field(default_factory=dict)
    flush_interval: Duration = Field(
        default=900.0, gt=0, le=86400,
        description="how often last_seen and latest values are written (SD wear)")
    declared: list[DeclaredDevice] = Field(default_factory=list)


class ReadingsSection(Section):
    """What a reading may carry; anything else is refused as malformed where it enters."""

    max_past: LongDuration = Field(default=365 * 86400.0, gt=0, le=100 * 365 * 86400.0,
                               description="oldest timestamp accepted, before receive time")
    max_future: Duration = Field(default=86400.0, gt=0, le=10 * 365 * 86400.0,
                                 description="newest timestamp accepted, past receive time")
    max_string: int = Field(default=1024, ge=1, le=65536,
                            description="longest string value, in characters")

    def limits(self) -> ReadingLimits:
        return ReadingLimits(self.max_past, self.max_future, self.max_string)
