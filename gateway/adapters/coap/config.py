"""The ``type: coap`` config section, validated at load (``gateway check`` names the key)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.adapters.base import AdapterConfig
from gateway.config.types import ByteSize, Duration, Section
from gateway.payloads.units import check_optional

#: native device ids: what may follow ``<adapter>:`` and appear as one Uri-Path segment
NATIVE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_METRIC = re.compile(r"^[a-z][a-z0-9_]*$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_.~-]+$")

#: block sizes RFC 7959 allows (SZX 0..6)
BLOCK_SIZES = (16, 32, 64, 128, 256, 512, 1024)

#: how a command's params become its body; ``file`` sends the file named by param ``file``
CommandFormat = Literal["json", "cbor", "text", "file"]


def _native_id(v: str) -> str:
    if not NATIVE_ID.match(v):
        raise ValueError("expected a device id of letters, digits, '_', '.', ':' or '-' "
                         "(at most 64 characters, starting with a letter or digit)")
    return v


def _path(v: str) -> str:
    parts = [p for p in v.split("/") if p]
    if not parts or not all(_PATH_SEGMENT.match(p) for p in parts):
        raise ValueError("expected a resource path such as /sensors/temperature")
    return "/" + "/".join(parts)


def _block_size(v: int | None) -> int | None:
    if v is not None and v not in BLOCK_SIZES:
        raise ValueError(f"expected a CoAP block size: one of {', '.join(map(str, BLOCK_SIZES))}")
    return v


class ResourceSpec(Section):
    """One resource of a declared device that the gateway observes (or polls)."""

    path: str
    #: observe (RFC 7641); false, or a device that does not support it, means GET polling
    observe: bool = True
    #: seconds between GETs when polling
    poll_interval: Duration = Field(default=60.0, gt=0, le=86400)
    #: an observation silent for this long is registered again (device rebooted or lost it)
    quiet_after: Duration = Field(default=300.0, gt=0, le=86400)
    #: metric of a text/plain (bare number) payload; json/cbor/senml payloads name their own
    metric: str | None = None
    #: unit of a text/plain payload
    unit: str | None = None

    _check_path = field_validator("path")(_path)

    @field_validator("metric")
    @classmethod
    def _check_metric(cls, v: str | None) -> str | None:
        if v is not None and not _METRIC.match(v):
            raise ValueError("expected a snake_case metric name such as temperature")
        return v

    @field_validator("unit")
    @classmethod
    def _check_unit(cls, v: str | None) -> str | None:
        return check_optional(v)


class CommandSpec(Section):
    """How one command action goes out: a PUT or POST to a resource of the device."""

    path: str
    method: Literal["PUT", "POST"] = "PUT"
    #: fixed payload (text); without it the command's params are encoded in ``format``
    payload: str | None = None
    format: CommandFormat = "json"
    #: seconds to wait for the device's response
    timeout: Duration = Field(default=30.0, gt=0, le=600)

    _check_path = field_validator("path")(_path)


class DeviceSpec(Section):
    """A device the gateway talks to as a client: observes its resources, sends it commands."""

    id: str
    #: base URI of the device, e.g. coap://[fd00::12]:5683 or coap://192.0.2.7
    address: str
    name: str | None = None
    type: str | None = None
    model: str | None = None
    #: observed or polled resources
    resources: list[ResourceSpec] = Field(default_factory=list)
    #: action name → resource; a Command's ``action`` picks one
    commands: dict[str, CommandSpec] = Field(default_factory=dict)
    #: largest block the device takes (16..1024 bytes); default: the adapter's block_size
    block_size: int | None = None
    #: protect requests to this device with its OSCORE context (<oscore.dir>/<id>/)
    oscore: bool = False

    _check_id = field_validator("id")(_native_id)
    _check_block = field_validator("block_size")(_block_size)

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        if not re.match(r"^coap://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?/?$", v):
            raise ValueError("expected a base URI such as coap://192.0.2.7 or "
                             "coap://[fd00::12]:5683 (no path)")
        return v.rstrip("/")


class OscoreConfig(Section):
    """OSCORE (RFC 8613): per-device security contexts kept in the state directory."""

    enabled: bool = False
    #: refuse (4.01) requests to the readings resources that carry no OSCORE protection
    required: bool = False
    #: one subdirectory per device (named by its native id) holding aiocoap's
    #: settings.json / secret.json; sequence.json is written next to them.
    #: Default: <state_dir>/coap/oscore
    dir: str | None = None

    @model_validator(mode="after")
    def _required_needs_enabled(self) -> OscoreConfig:
        if self.required and not self.enabled:
            raise ValueError("oscore.required needs oscore.enabled: true")
        return self


class CoapConfig(AdapterConfig):
    """``type: coap``: devices POST/PUT readings; the gateway observes and commands devices."""

    #: address to bind the UDP server to; "::" also takes IPv4 (v4-mapped)
    bind: str = "::"
    port: int = Field(default=5683, ge=0, le=65535)
    #: readings are posted to /<path>/<device id>
    path: str = "readings"
    #: payloads larger than this (after block-wise reassembly) are refused with 4.13
    max_payload: ByteSize = Field(default=64 * 1024, gt=0, le=16 * 1024 * 1024)
    #: accept readings from device ids not declared below (and without an OSCORE context)
    accept_unknown: bool = True
    #: Max-Age of the 5.03 answer when the outbox refuses: when devices should retry
    retry_after: Duration = Field(default=5.0, gt=0, le=3600)
    #: block size for the gateway's own block-wise transfers (16..1024 bytes)
    block_size: int = 1024
    oscore: OscoreConfig = Field(default_factory=OscoreConfig)
    devices: list[DeviceSpec] = Field(default_factory=list)

    _check_block = field_validator("block_size")(_block_size)

    @field_validator("path")
    @classmethod
    def _check_path(cls, v: str) -> str:
        v = v.strip("/")
        if not _PATH_SEGMENT.match(v) or v.startswith("."):
            raise ValueError("expected one path segment such as readings")
        return v

    @field_validator("devices")
    @classmethod
    def _unique_ids(cls, v: list[DeviceSpec]) -> list[DeviceSpec]:
        seen: set[str] = set()
        for d in v:
            if d.id in seen:
                raise ValueError(f"device id {d.id!r} is declared twice")
            seen.add(d.id)
        return v

    @model_validator(mode="after")
    def _oscore_devices(self) -> CoapConfig:
        wants = [d.id for d in self.devices if d.oscore]
        if wants and not self.oscore.enabled:
            raise ValueError(f"device(s) {', '.join(wants)} use oscore: set oscore.enabled: true")
        return self
