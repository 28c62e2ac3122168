"""The ``uplink:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from gateway.config.types import Duration, Section, TlsConfig


class UplinkConfig(Section):
    """MQTT 5 connection to the cloud broker."""

    enabled: bool = True
    host: str = "localhost"
    port: int = Field(default=8883, ge=1, le=65535)
    client_id: str | None = Field(default=None, description="default: the gateway id")
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    topic_prefix: str = "gateway"
    format: str = Field(default="json", description="an installed gateway.uplink_formats entry "
                                                    "point: json, senml, thingsboard, ...")
    batch_max_readings: int = Field(default=2000, gt=0, le=100_000)
    batch_linger: Duration = Field(
        default=0.02, ge=0, le=60,
        description="new readings leave at most this often, together in one message")
    max_inflight: int = Field(default=8, gt=0, le=1000)
    keepalive: Duration = Field(default=60.0, ge=5, le=3600)
    connect_timeout: Duration = Field(
        default=10.0, gt=0, le=600,
        description="give a connection attempt up after this (a broker, proxy or load "
                    "balancer that takes the TCP connection and never answers)")
    ack_timeout: Duration = Field(default=30.0, gt=0, le=3600)
    backoff_initial: Duration = Field(default=1.0, gt=0, le=3600)
    backoff_max: Duration = Field(default=60.0, gt=0, le=86400)
    qos: Literal[1] = 1

    @field_validator("format")
    @classmethod
    def _installed_format(cls, name: str) -> str:
        # loaded here, so `gateway check` also names a format plugin that does not load
        from gateway.uplink.formats import UnknownUplinkFormat, available_formats, format_class

        installed = available_formats()
        if name not in installed:
            raise ValueError("expected an installed uplink format: "
                             + (", ".join(installed) or "none installed"))
        try:
            format_class(name)
        except UnknownUplinkFormat as exc:
            raise ValueError(str(exc)) from None
        return name
