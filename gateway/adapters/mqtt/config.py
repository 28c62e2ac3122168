"""The ``type: mqtt`` config section, validated at load (``gateway check`` names the key)."""

from __future__ import annotations

import re
import socket
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.adapters.base import AdapterConfig, Advice
from gateway.adapters.mqtt.broker_limits import DEFAULT_BROKER_CONFIG, TYPICAL_PAYLOAD, queue_advice
from gateway.adapters.mqtt.topics import TopicTemplate
from gateway.config.types import ByteSize, Duration, LongDuration, Section
from gateway.payloads.units import check_optional

_METRIC = re.compile(r"^[a-z][a-z0-9_]*$")

Format = Literal["json", "senml", "value", "zigbee2mqtt"]


_unit = check_optional


def _metric(v: str | None) -> str | None:
    if v is not None and not _METRIC.match(v):
        raise ValueError("expected a snake_case metric name such as temperature or co2_ppm")
    return v


class FieldSpec(Section):
    """How one JSON field becomes a reading: its metric name, unit and scaling."""

    metric: str | None = Field(default=None, description="defaults to the path, snake_cased")
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0

    _check_unit = field_validator("unit")(_unit)
    _check_metric = field_validator("metric")(_metric)


class SubscriptionConfig(Section):
    """One topic template and how its payloads decode."""

    topic: str
    format: Format = "json"
    qos: Literal[0, 1] = 1
    #: fixed metric for ``value`` payloads when the topic has no {metric}
    metric: str | None = None
    #: unit of a ``value`` payload
    unit: str | None = None
    #: unit per metric name, when the payload does not say
    units: dict[str, str] = Field(default_factory=dict)
    #: json: dotted path → metric/unit/scale; only these fields unless include_unmapped
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    include_unmapped: bool | None = None
    #: dotted path of a device timestamp (UNIX seconds or milliseconds, or ISO 8601)
    timestamp: str | None = None
    timestamp_unit: Literal["auto", "s", "ms"] = "auto"
    #: json: dotted path of the device id when the topic has no {device}
    device_field: str | None = None
    #: registered as the type of devices seen here (selects their offline timeout)
    device_type: str | None = None
    #: value: what a bare payload may be
    value_type: Literal["auto", "number", "bool", "string"] = "auto"

    _check_unit = field_validator("unit")(_unit)
    _check_metric = field_validator("metric")(_metric)

    @field_validator("units")
    @classmethod
    def _check_units(cls, v: dict[str, str]) -> dict[str, str]:
        for metric, unit in v.items():
            _metric(metric)
            _unit(unit)
        return v

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, v: str) -> str:
        TopicTemplate(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SubscriptionConfig:
        names = TopicTemplate(self.topic).names
        has_device = "device" in names
        if "metric" in names and self.format != "value":
            raise ValueError("{metric} in the topic only works with format: value")
        if self.format == "value" and "metric" not in names and not self.metric:
            raise ValueError("format: value needs {metric} in the topic or a metric: key")
        if self.format in ("value", "zigbee2mqtt") and not has_device:
            raise ValueError(f"format: {self.format} needs {{device}} in the topic")
        if self.format == "json" and not has_device and not self.device_field:
            raise ValueError("format: json needs {device} in the topic or a device_field: key")
        if self.fields and self.format != "json":
            raise ValueError("fields: only applies to format: json")
        if self.device_field and has_device:
            raise ValueError("device_field: and {device} in the topic: choose one")
        return self


class CommandsConfig(Section):
    """Where commands to devices are published."""

    topic: str = Field(description="template with {device} and optionally {action}")
    #: params: the command's params as a JSON object; envelope: {"action", "params"}
    payload: Literal["params", "envelope"] = "params"
    qos: Literal[0, 1] = 1
    retain: bool = False
    timeout: Duration = Field(default=5.0, gt=0, le=600,
                              description="wait this long for the PUBACK")

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, v: str) -> str:
        t = TopicTemplate(v)
        if "device" not in t.names:
            raise ValueError("the command topic needs {device}")
        if "+" in v.split("/"):
            raise ValueError("the command topic cannot contain '+': name the segment")
        return v


def _default_client_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0] or "gateway")
    return f"gateway-{host}"[:64]


class MqttConfig(AdapterConfig):
    """``type: mqtt``: a local broker, its subscriptions and command topic."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = Field(default_factory=_default_client_id,
                           description="stable: the broker keeps our session under it")
    username: str | None = None
    password: str | None = None
    keepalive: int = Field(default=30, ge=5, le=65535)
    session_expiry: LongDuration = Field(default=86400.0, ge=0, le=0xFFFFFFFF,
                                     description="how long the broker queues for us while away")
    receive_maximum: int = Field(default=1000, ge=1, le=65535,
                                 description="unacknowledged messages the broker may send")
    max_payload: ByteSize = Field(default=65536, ge=16, le=256 * 1024**2)
    reconnect_delay: Duration = Field(default=2.0, gt=0, le=3600)
    connect_timeout: Duration = Field(default=10.0, gt=0, le=600)
    #: hold: keep a refused message unacknowledged and retry (mosquitto drops a message
    #: answered with an error code); nack: answer 0x97 at once (a broker that redelivers)
    on_refused: Literal["hold", "nack"] = "hold"
    subscriptions: list[SubscriptionConfig] = Field(min_length=1)
    commands: CommandsConfig | None = None
    #: What a local broker must queue for our session while the gateway is away or
    #: holding refused messages: ``gateway check`` compares expected_rate x outage
    #: messages of expected_payload bytes with mosquitto's max_queued_messages and
    #: max_queued_bytes in broker_config (broker_limits.py); null skips the comparison.
    expected_rate: float = Field(default=50.0, gt=0, le=1_000_000,
                                 description="messages/s the devices publish here, together")
    outage: Duration = Field(default=600.0, gt=0,
                             description="how long the broker must queue for us")
    expected_payload: ByteSize = Field(default=TYPICAL_PAYLOAD, ge=1, le=256 * 1024**2,
                                       description="typical payload size of one message")
    broker_config: str | None = Field(default=DEFAULT_BROKER_CONFIG, min_length=1,
                                      description="the local mosquitto's main config file")

    @model_validator(mode="after")
    def _distinct_filters(self) -> MqttConfig:
        seen: dict[str, int] = {}
        for i, sub in enumerate(self.subscriptions):
            f = TopicTemplate(sub.topic).filter
            if f in seen:
                raise ValueError(f"subscriptions[{i}] and subscriptions[{seen[f]}] both "
                                 f"subscribe to {f!r}; merge them")
            seen[f] = i
        return self

    def advice(self) -> list[Advice]:
        """Whether the local broker's queue holds ``outage`` at ``expected_rate``."""
        return queue_advice(self)
