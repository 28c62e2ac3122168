"""The ``homeassistant:`` section: MQTT discovery for Home Assistant (opt-in)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Any

from pydantic import Field, SecretStr, field_validator

from gateway.config.types import Duration, Section, TlsConfig

#: what a discovery prefix or a state topic prefix may hold (MQTT topic levels, no wildcards)
_TOPIC = re.compile(r"^[^#+\s]+(/[^#+\s]+)*$")


def _topic(value: str) -> str:
    if not _TOPIC.match(value) or value.startswith("$"):
        raise ValueError("expected an MQTT topic without wildcards (+, #), spaces or a "
                         "leading $, e.g. homeassistant")
    return value


class HomeAssistantConfig(Section):
    """Home Assistant MQTT discovery of the gateway's devices, on a local broker."""

    enabled: bool = False
    host: str | None = Field(default=None, description="default: the broker of the first "
                                                       "type: mqtt adapter")
    port: int | None = Field(default=None, ge=1, le=65535,
                             description="default: that adapter's port (1883, 8883 with tls)")
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = Field(default=None, description="default: <gateway id>-homeassistant")
    tls: TlsConfig | None = None
    keepalive: int = Field(default=30, ge=5, le=65535)
    discovery_prefix: str = "homeassistant"
    birth_topic: str = Field(default="homeassistant/status",
                             description="Home Assistant's status topic; 'online' re-sends "
                                         "every discovery config")
    state_prefix: str | None = Field(default=None,
                                     description="default: gateway/<gateway id>; states, "
                                                 "availability and command topics live under it")
    devices: list[str] = Field(default_factory=lambda: ["*"],
                               description="device id patterns (fnmatch) to expose")
    exclude_devices: list[str] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=lambda: ["*"],
                               description="metric name patterns (fnmatch) to expose")
    exclude_metrics: list[str] = Field(default_factory=list)
    switches: list[str] = Field(default_factory=list,
                                description="device id patterns that get an on/off switch "
                                            "(besides Zigbee OnOff devices)")
    lights: list[str] = Field(default_factory=list,
                              description="device id patterns that get a dimmable light "
                                          "(besides Zigbee OnOff + LevelControl devices)")
    retain: bool = Field(default=True, description="retain discovery configs")
    retain_state: bool = Field(default=True, description="retain states and availability")
    min_interval: Duration = Field(default=1.0, ge=0, le=3600,
                                   description="a device's state is published at most this "
                                               "often; a burst in between is coalesced")
    max_entities: int = Field(default=2000, ge=1, le=100_000,
                              description="entities announced at most; further ones are "
                                          "refused (counted, logged)")
    command_timeout: Duration = Field(default=10.0, gt=0, le=600)
    sweep_interval: Duration | None = Field(
        default=None, description="deprecated and ignored: removed, declared and renamed "
                                  "devices are acted on at once; kept so that older config "
                                  "files still load")
    reconnect_delay: Duration = Field(default=2.0, gt=0, le=3600)
    connect_timeout: Duration = Field(default=10.0, gt=0, le=600)

    _check_prefix = field_validator("discovery_prefix", "birth_topic")(_topic)

    @field_validator("state_prefix")
    @classmethod
    def _check_state_prefix(cls, v: str | None) -> str | None:
        return None if v is None else _topic(v)

    def state_base(self, gateway_id: str) -> str:
        """Where states, availability and commands live: ``state_prefix`` or its default."""
        return self.state_prefix or f"gateway/{gateway_id}"

    def wants(self, device: str, metric: str | None = None) -> bool:
        """Whether the patterns expose ``device`` (and its ``metric``)."""
        if not _matches(device, self.devices) or _matches(device, self.exclude_devices):
            return False
        return metric is None or (_matches(metric, self.metrics)
                                  and not _matches(metric, self.exclude_metrics))


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class Broker(Section):
    """The local broker the bridge connects to, once the defaults are filled in."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic matches both MQTT filters (``+`` one level, ``#`` the rest)."""
    left, right = a.split("/"), b.split("/")
    for x, y in zip(left, right, strict=False):
        if x == "#" or y == "#":
            return True
        if x != y and x != "+" and y != "+":
            return False
    longer = left if len(left) > len(right) else right
    return len(left) == len(right) or longer[min(len(left), len(right)):] == ["#"]


def _filter(template: str) -> str:
    """The subscription filter of an MQTT adapter's topic template (``{name}`` is ``+``)."""
    return "/".join("+" if s[:1] == "{" and s[-1:] == "}" else s for s in template.split("/"))


def _host(host: str) -> str:
    host = host.strip().lower().rstrip(".").strip("[]")
    if host in ("localhost", "ip6-localhost", "::1") or host.startswith("127."):
        return "loopback"
    return host


def state_prefix_overlaps(cfg: HomeAssistantConfig, gateway_id: str, broker: Broker,
                          adapters: Sequence[Any]) -> list[str]:
    """What is wrong when an enabled ``type: mqtt`` adapter on the bridge's broker
    subscribes to topics under the state prefix: it would take the gateway's own states
    (and Home Assistant's commands) in as devices. One line per subscription."""
    from gateway.homeassistant.discovery import Topics

    base = cfg.state_base(gateway_id)
    ours = Topics(cfg.discovery_prefix, base, gateway_id).under_base()
    shown = repr(base) + ("" if cfg.state_prefix else " (the default, gateway/<gateway id>)")
    out: list[str] = []
    for adapter in adapters:
        if getattr(adapter, "type", None) != "mqtt" or not getattr(adapter, "enabled", True):
            continue
        if (_host(adapter.host), adapter.port) != (_host(broker.host), broker.port):
            continue
        for i, sub in enumerate(adapter.subscriptions):
            hit = next((t for t in ours if filters_overlap(_filter(sub.topic), t)), None)
            if hit is None:
                continue
            out.append(f"{shown} overlaps subscriptions[{i}].topic {sub.topic!r} of the "
                       f"mqtt adapter {adapter.name!r} on the same broker "
                       f"{broker.host}:{broker.port}: the gateway would read its own Home "
                       f"Assistant topics (such as {hit.replace('/+/', '/<node>/')}) back as "
                       "devices; set homeassistant.state_prefix to a topic that subscription "
                       "does not match, or narrow the subscription")
    return out


def resolve_broker(cfg: HomeAssistantConfig, adapters: Sequence[Any]) -> Broker | str:
    """The broker to use, or what is missing (for ``gateway check``): explicit settings
    win, the rest comes from the first ``type: mqtt`` adapter."""
    first = next((a for a in adapters if getattr(a, "type", None) == "mqtt"), None)
    host = cfg.host or (first.host if first is not None else None)
    if host is None:
        return ("homeassistant.host: required value is missing (no type: mqtt adapter to "
                "take the broker from); give the local broker's host")
    port = cfg.port or (first.port if first is not None and cfg.host is None else None)
    if port is None:
        port = 8883 if cfg.tls is not None and cfg.tls.enabled else 1883
    username = cfg.username if cfg.username is not None else (
        first.username if first is not None and cfg.host is None else None)
    password: str | None = cfg.password.get_secret_value() if cfg.password else None
    if password is None and cfg.username is None and first is not None and cfg.host is None:
        password = first.password
    return Broker(host=host, port=port, username=username, password=password)
