"""The ``type: lorawan`` section: ChirpStack connection, uplink source, decoders per profile."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.adapters.base import AdapterConfig
from gateway.config.types import Duration, LongDuration, Section
from gateway.payloads.units import check_optional

_METRIC = re.compile(r"^[a-z][a-z0-9_]*$")


def _check_metric(name: str) -> str:
    if not _METRIC.fullmatch(name):
        raise ValueError(f"metric names are snake_case (a-z, 0-9, _), got {name!r}")
    return name


class FieldMap(Section):
    """How one decoded key becomes a reading: its metric name, unit and scaling."""

    metric: str | None = Field(default=None, description="default: the key in snake_case")
    unit: str | None = Field(default=None, description="SenML name (Cel, %RH, V, Pa...) or an "
                             "alias the shared unit table converts (°C, hPa, mV, kWh...)")
    scale: float = 1.0
    offset: float = 0.0
    drop: bool = False

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        return None if v is None else _check_metric(v)

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str | None) -> str | None:
        return check_optional(v)


LayoutType = Literal["int8", "uint8", "int16", "uint16", "int24", "uint24", "int32", "uint32",
                     "float32", "float64", "bool"]


class LayoutField(Section):
    """One value in a fixed byte layout (``decoder: layout``)."""

    name: str
    type: LayoutType
    offset: int | None = Field(default=None, ge=0, le=255,
                               description="byte offset; default: right after the previous field")
    endian: Literal["big", "little"] = "big"
    bit: int | None = Field(default=None, ge=0, le=63,
                            description="for type bool: the bit of the byte(s) read")
    scale: float = 1.0
    add: float = 0.0
    unit: str | None = None
    decimals: int | None = Field(default=None, ge=0, le=12)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_metric(v)

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str | None) -> str | None:
        return check_optional(v)


class CommandTemplate(Section):
    """A named downlink, so rules and the CLI can say ``open_valve`` instead of bytes."""

    f_port: int = Field(ge=1, le=223)
    data: str | None = Field(default=None, description="payload as hex, e.g. 0101")
    object: dict[str, Any] | None = Field(default=None,
                                             description="for the profile codec's encoder")
    confirmed: bool = False

    @model_validator(mode="after")
    def _payload(self) -> CommandTemplate:
        if (self.data is None) == (self.object is None):
            raise ValueError("give either data (hex) or object, not both and not neither")
        if self.data is not None:
            try:
                bytes.fromhex(self.data)
            except ValueError:
                raise ValueError(f"data must be hex, e.g. 0a01ff (got {self.data!r})") from None
        return self


class ProfileConfig(Section):
    """How uplinks of devices with one device profile are turned into readings."""

    decoder: Literal["object", "cayenne", "layout", "none"] = Field(
        default="object",
        description="object: ChirpStack codec output; cayenne: Cayenne LPP bytes; "
                    "layout: the byte layout below; none: radio metadata only")
    ports: list[Annotated[int, Field(ge=0, le=255)]] = Field(default_factory=list,
                             description="decode only these f_ports; empty: every port")
    layout: list[LayoutField] = Field(default_factory=list)
    fields: dict[str, FieldMap] = Field(default_factory=dict)
    unmapped: Literal["keep", "drop"] = "keep"
    commands: dict[str, CommandTemplate] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _layout(self) -> ProfileConfig:
        if self.decoder == "layout" and not self.layout:
            raise ValueError("decoder: layout needs a layout (a list of fields)")
        if self.decoder != "layout" and self.layout:
            raise ValueError("layout is only used with decoder: layout")
        return self


class StreamConfig(Section):
    """Reconnects of the per-device gRPC event streams."""

    backoff_initial: Duration = Field(default=1.0, gt=0, le=3600)
    backoff_max: Duration = Field(default=60.0, gt=0, le=86400)
    per_connection: int = Field(default=100, ge=1, le=10_000,
                                description="streams per HTTP/2 connection (server limit)")


class MqttIntegrationConfig(Section):
    """ChirpStack's MQTT integration as the uplink source."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    client_id: str = Field(default="", description="default: gateway-lorawan-<adapter name>")
    # some ChirpStack releases publish join/status/location as retained "state" messages;
    # a retained status seen again on resubscribe is dropped by its deduplication id
    topics: list[str] = Field(default_factory=lambda: ["application/+/device/+/event/+",
                                                       "application/+/device/+/state/+"])
    encoding: Literal["auto", "protobuf", "json"] = "auto"
    session_expiry: LongDuration = Field(default=7 * 86400.0, ge=0, le=0xFFFFFFFF,
                                     description="how long the broker keeps our session offline")
    keepalive: Duration = Field(default=60.0, ge=5, le=3600)
    reconnect_delay: Duration = Field(default=2.0, gt=0, le=3600)


class LorawanConfig(AdapterConfig):
    """ChirpStack v4 over gRPC: discovery, uplinks (gRPC stream or MQTT), downlinks."""

    server: str = Field(default="127.0.0.1:8080", description="ChirpStack gRPC API, host:port")
    tls: bool = False
    ca_file: str | None = Field(default=None, description="with tls: CA bundle; default: system")
    api_token: SecretStr
    tenant_id: str | None = None
    applications: list[str] = Field(default_factory=list,
                                    description="application ids; empty: all of tenant_id")
    discovery_interval: Duration = Field(default=300.0, ge=1, le=7 * 86400)
    page_size: int = Field(default=100, ge=1, le=1000)
    request_timeout: Duration = Field(default=10.0, gt=0, le=600)
    source: Literal["grpc", "mqtt"] = "grpc"
    stream: StreamConfig = Field(default_factory=StreamConfig)
    mqtt: MqttIntegrationConfig = Field(default_factory=MqttIntegrationConfig)
    radio_metrics: bool = True
    profiles: dict[str, ProfileConfig] = Field(
        default_factory=dict, description="by device profile name or id")
    default_profile: ProfileConfig = Field(default_factory=ProfileConfig)
    downlink_wait: Duration = Field(default=0.0, ge=0, le=3600,
                                    description="default wait for ack/txack; 0: enqueue only")
    dedup_memory: int = Field(default=16, ge=1, le=1000,
                              description="deduplication ids remembered per device")
    state_fsync: bool = Field(default=False,
                              description="fsync the cursor journal after every event")

    @model_validator(mode="after")
    def _scope(self) -> LorawanConfig:
        if not self.tenant_id and not self.applications:
            raise ValueError("set tenant_id (ChirpStack: Tenants → the tenant's id) or list "
                             "the application ids to serve in applications")
        if not self.api_token.get_secret_value().strip():
            raise ValueError("api_token is empty: create an API key in ChirpStack and "
                             "reference it with ${credential:NAME} or ${file:PATH}")
        return self
