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
from gateway.payloads import Options, UnknownFormat, format_class


class SubscriptionConfig(Options):
    """One topic template and how its payloads decode (the payload keys: :class:`Options`)."""

    topic: str
    #: a payload format registered under ``gateway.decoders`` (gateway/payloads/README.md)
    format: str = "json"
    qos: Literal[0, 1] = 1
    #: registered as the type of devices seen here (selects their offline timeout)
    device_type: str | None = None

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, v: str) -> str:
        TopicTemplate(v)
        return v

    @field_validator("format")
    @classmethod
    def _check_format(cls, v: str) -> str:
        try:
            format_class(v)
        except UnknownFormat as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SubscriptionConfig:
        format_class(self.format).check(self, frozenset(TopicTemplate(self.topic).names))
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
