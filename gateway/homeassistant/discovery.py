"""Home Assistant MQTT discovery payloads and the gateway's topics for it: pure functions.

Follows https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery: a retained
config on ``<discovery prefix>/<component>/<node_id>/<object_id>/config`` per entity,
an empty retained payload to remove it. Names are Zigbee2MQTT's habits: one JSON state
per device, read by ``value_template``; an ``availability`` list with ``mode: all``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.homeassistant.mapping import friendly, sensor_kind
from gateway.reading import Value

#: node and object ids Home Assistant takes in a discovery topic
_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
#: the component ids of switch and light entities (also their object ids)
SWITCH, LIGHT = "switch", "light"
#: Zigbee cluster ids that make a device a switch or a dimmable light
ZCL_ON_OFF, ZCL_LEVEL = 0x0006, 0x0008
#: metrics that carry a switch's or light's state rather than a sensor of their own
ON_OFF_METRICS = ("on_off", "state")
LEVEL_METRICS = ("level", "brightness")
#: Home Assistant's JSON light: brightness 0-100 is the gateway's ``level`` in percent
BRIGHTNESS_SCALE = 100


def slug(text: str) -> str:
    """Characters Home Assistant's topic ids do not take become ``_``."""
    return _ID_CHARS.sub("_", text) or "_"


@dataclass(frozen=True)
class Topics:
    """Where everything lives, for one gateway."""

    discovery_prefix: str
    base: str  # state prefix
    gateway_id: str

    @property
    def status(self) -> str:
        """The gateway's retained online/offline (the bridge's last will)."""
        return f"{self.base}/status"

    @property
    def command_filter(self) -> str:
        return f"{self.base}/+/+/set"

    def node(self, device: str, suffixed: bool = False) -> str:
        """The discovery node id of a device: gateway id and device id, slugged; with
        ``suffixed``, followed by a short hash of the device id, for a device whose slug
        is already taken by another (``sim:a-b`` and ``sim:a_b``)."""
        node = f"{slug(self.gateway_id)}_{slug(device)}"
        if suffixed:
            node += "_" + hashlib.blake2s(device.encode(), digest_size=3).hexdigest()
        return node

    def state(self, node: str) -> str:
        return f"{self.base}/{node}/state"

    def availability(self, node: str) -> str:
        return f"{self.base}/{node}/availability"

    def entity_state(self, node: str, object_id: str) -> str:
        return f"{self.base}/{node}/{object_id}"

    def command(self, node: str, object_id: str) -> str:
        return f"{self.base}/{node}/{object_id}/set"

    def config(self, component: str, node: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{node}/{object_id}/config"

    def under_base(self) -> tuple[str, ...]:
        """Filters of every topic the bridge and Home Assistant use under the state prefix
        (``+``: any node id)."""
        b = self.base
        return (self.status, f"{b}/+/state", f"{b}/+/availability", f"{b}/+/{SWITCH}",
                f"{b}/+/{LIGHT}", f"{b}/+/{SWITCH}/set", f"{b}/+/{LIGHT}/set")

    def parse_command(self, topic: str) -> tuple[str, str] | None:
        """``(node, object_id)`` of a command topic, or None."""
        head = self.base + "/"
        if not topic.startswith(head) or not topic.endswith("/set"):
            return None
        parts = topic[len(head):-len("/set")].split("/")
        return (parts[0], parts[1]) if len(parts) == 2 and all(parts) else None


@dataclass(frozen=True)
class Entity:
    """One entity to announce: its config topic and payload."""

    component: str
    node: str
    object_id: str
    config: dict[str, Any]

    def topic(self, topics: Topics) -> str:
        return topics.config(self.component, self.node, self.object_id)

    def payload(self) -> bytes:
        return json.dumps(self.config, separators=(",", ":"), sort_keys=True).encode()


def gateway_identifier(gateway_id: str) -> str:
    return f"edge_gateway_{slug(gateway_id)}"


def gateway_device(gateway_id: str, version: str) -> dict[str, Any]:
    """The gateway's own device entry, which every device names as ``via_device``."""
    return {"identifiers": [gateway_identifier(gateway_id)], "name": f"Gateway {gateway_id}",
            "manufacturer": "edge gateway", "model": "edge gateway", "sw_version": version}


def device_info(topics: Topics, device: str, info: Mapping[str, Any],
                node: str | None = None) -> dict[str, Any]:
    """A device's ``device`` block from its registry entry (``node``: its node id, when
    not the plain one)."""
    node = node or topics.node(device)
    out: dict[str, Any] = {"identifiers": [f"edge_gateway_{node}"],
                           "name": str(info.get("name") or device),
                           "via_device": gateway_identifier(topics.gateway_id)}
    for key in ("model", "manufacturer"):
        if info.get(key):
            out[key] = str(info[key])
    if info.get("location"):
        out["suggested_area"] = str(info["location"])
    return out


def _origin(version: str) -> dict[str, str]:
    return {"name": "edge gateway", "sw_version": version}


def _availability(topics: Topics, node: str) -> dict[str, Any]:
    return {"availability": [{"topic": topics.status}, {"topic": topics.availability(node)}],
            "availability_mode": "all"}


def _ids(topics: Topics, component: str, node: str, object_id: str) -> dict[str, str]:
    # object_id is what Home Assistant up to 2025.9 reads, default_entity_id what later
    # ones read (object_id is deprecated there); each ignores the other
    return {"unique_id": f"{node}_{object_id}", "object_id": f"{node}_{object_id}",
            "default_entity_id": f"{component}.{node}_{object_id}"}


def sensor_entity(topics: Topics, device: str, info: Mapping[str, Any], metric: str,
                  unit: str | None, value: Value, version: str,
                  node: str | None = None) -> Entity:
    """A sensor or binary sensor for one metric, read from the device's JSON state."""
    node, object_id = node or topics.node(device), slug(metric)
    kind = sensor_kind(metric, unit, value)
    key = json.dumps(metric)  # a Jinja string literal for any metric name
    cfg: dict[str, Any] = {
        "name": friendly(metric),
        **_ids(topics, kind.component, node, object_id),
        "state_topic": topics.state(node),
        "device": device_info(topics, device, info, node),
        "origin": _origin(version),
        **_availability(topics, node),
    }
    if kind.component == "binary_sensor":
        cfg["value_template"] = f"{{{{ 'ON' if value_json[{key}] else 'OFF' }}}}"
    else:
        cfg["value_template"] = f"{{{{ value_json[{key}] }}}}"
    for field, val in (("device_class", kind.device_class),
                       ("unit_of_measurement", kind.unit), ("state_class", kind.state_class)):
        if val is not None:
            cfg[field] = val
    if metric in ("battery", "rssi", "lqi", "linkquality", "signal_strength", "voltage"):
        cfg["entity_category"] = "diagnostic"
    return Entity(kind.component, node, object_id, cfg)


def switch_entity(topics: Topics, device: str, info: Mapping[str, Any],
                  version: str, node: str | None = None) -> Entity:
    """An on/off switch: commands ``ON``/``OFF``, state ``{"state": "ON"}``."""
    node = node or topics.node(device)
    cfg: dict[str, Any] = {
        "name": None,  # the device's name: the switch is what the device is
        **_ids(topics, SWITCH, node, SWITCH),
        "command_topic": topics.command(node, SWITCH),
        "state_topic": topics.entity_state(node, SWITCH),
        "value_template": "{{ value_json.state }}",
        "payload_on": "ON", "payload_off": "OFF", "state_on": "ON", "state_off": "OFF",
        "device": device_info(topics, device, info, node),
        "origin": _origin(version),
        **_availability(topics, node),
    }
    return Entity(SWITCH, node, SWITCH, cfg)


def light_entity(topics: Topics, device: str, info: Mapping[str, Any],
                 version: str, node: str | None = None) -> Entity:
    """A dimmable light, JSON schema: ``{"state": "ON", "brightness": 0-100}``."""
    node = node or topics.node(device)
    cfg: dict[str, Any] = {
        "name": None,
        **_ids(topics, LIGHT, node, LIGHT),
        "schema": "json",
        "command_topic": topics.command(node, LIGHT),
        "state_topic": topics.entity_state(node, LIGHT),
        "brightness_scale": BRIGHTNESS_SCALE,
        "supported_color_modes": ["brightness"],
        "device": device_info(topics, device, info, node),
        "origin": _origin(version),
        **_availability(topics, node),
    }
    return Entity(LIGHT, node, LIGHT, cfg)


def gateway_entity(topics: Topics, version: str) -> Entity:
    """The gateway's connectivity: its own status topic, no availability of its own."""
    node = slug(topics.gateway_id)
    object_id = "connectivity"
    cfg: dict[str, Any] = {
        "name": "Connectivity",
        **_ids(topics, "binary_sensor", f"edge_gateway_{node}", object_id),
        "state_topic": topics.status,
        "payload_on": "online", "payload_off": "offline",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "device": gateway_device(topics.gateway_id, version),
        "origin": _origin(version),
    }
    return Entity("binary_sensor", node, object_id, cfg)


def controls(device: str, info: Mapping[str, Any], switches: bool, lights: bool) -> str | None:
    """``light``, ``switch`` or None: what a device can be told to do.

    A Zigbee device with an OnOff server cluster is a switch, with LevelControl as well a
    light; any adapter may declare ``controls: switch|light`` in the device's registry
    entry; the config's ``switches``/``lights`` patterns say it for the rest.
    """
    declared = info.get("controls")
    if declared in (SWITCH, LIGHT):
        return str(declared)
    if lights:
        return LIGHT
    if switches:
        return SWITCH
    clusters: set[int] = set()
    endpoints = info.get("endpoints")
    if isinstance(endpoints, list):
        for ep in endpoints:
            if isinstance(ep, Mapping) and isinstance(ep.get("in_clusters"), list):
                clusters.update(c for c in ep["in_clusters"] if isinstance(c, int))
    if ZCL_ON_OFF in clusters:
        return LIGHT if ZCL_LEVEL in clusters else SWITCH
    return None


def state_payload(values: Mapping[str, Value]) -> bytes:
    """A device's JSON state: its latest value of each metric."""
    return json.dumps(dict(values), separators=(",", ":"), sort_keys=True).encode()


def control_state(on: bool | None, level: float | None, light: bool) -> bytes:
    """A switch's or light's state payload."""
    body: dict[str, Any] = {"state": None if on is None else ("ON" if on else "OFF")}
    if light and level is not None:
        body["brightness"] = max(0, min(BRIGHTNESS_SCALE, round(level)))
    return json.dumps(body, separators=(",", ":")).encode()


class BadCommand(ValueError):
    """A command payload from Home Assistant that cannot be carried out."""


def parse_command(kind: str, payload: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(action, params)`` to send for a switch's or light's command payload."""
    if len(payload) > 4096:
        raise BadCommand("payload longer than 4096 bytes")
    text = payload.decode("utf-8", errors="replace").strip()
    if kind == SWITCH:
        action = {"ON": "on", "OFF": "off", "TOGGLE": "toggle"}.get(text.upper())
        if action is None:
            raise BadCommand(f"expected ON, OFF or TOGGLE, got {text[:40]!r}")
        return [(action, {})]
    try:
        body = json.loads(text)
    except ValueError:
        raise BadCommand(f"expected a JSON object, got {text[:40]!r}") from None
    if not isinstance(body, dict):
        raise BadCommand(f"expected a JSON object, got {text[:40]!r}")
    state = body.get("state")
    if state is not None and (not isinstance(state, str)
                              or state.upper() not in ("ON", "OFF", "TOGGLE")):
        raise BadCommand(f"state: expected ON, OFF or TOGGLE, got {state!r}")
    params: dict[str, Any] = {}
    if "transition" in body:
        t = body["transition"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 6553:
            raise BadCommand(f"transition: expected seconds from 0 to 6553, got {t!r}")
        params["transition"] = float(t)
    if state is not None and state.upper() == "OFF":
        return [("off", params)]
    if "brightness" in body:
        b = body["brightness"]
        if isinstance(b, bool) or not isinstance(b, (int, float)) \
                or not 0 <= b <= BRIGHTNESS_SCALE:
            raise BadCommand(f"brightness: expected 0 to {BRIGHTNESS_SCALE}, got {b!r}")
        return [("level", {**params, "level": float(b)})]
    if state is None:
        raise BadCommand("expected state or brightness")
    return [(state.lower(), params)]
