"""ESPHome: the state topics an ESPHome node publishes with its ``mqtt:`` component.

What it reads (https://esphome.io/components/mqtt/, "MQTT Component Base Configuration"
and each component's ``state_topic``): ``<topic_prefix>/<component>/<object_id>/state``,
one value per topic, where ``topic_prefix`` defaults to the node name and ``object_id`` is
the entity's name in snake case. Subscribe with ``topic: {device}/{component}/{object}/state``
(these placeholder names; the node is the device), or ``topic: {device}/#`` to also read
the topics of covers, fans and climates that carry a field name
(``<prefix>/climate/<object_id>/current_temperature/state``), the birth and last-will
messages, and the Home Assistant discovery configs on the same subscription.

- ``sensor``, ``number``: a number (as many decimals as ``accuracy_decimals``) → metric
  :func:`~gateway.payloads.names.metric_name` of the object id
  (``living_room_temperature``). ``nan`` (a sensor with no value yet, or a failed read)
  returns ``[]``: nothing to store.
- ``binary_sensor``, ``switch``: ``ON``/``OFF`` → bool.
- ``light``: the JSON schema state (https://esphome.io/components/light/, MQTT JSON
  ``{"state":"ON","brightness":255,"color_mode":"rgb","color":{"r":255,"g":0,"b":0}}``):
  ``<object>`` bool, ``<object>_brightness`` (0-255), ``<object>_color_temp`` (mireds),
  ``<object>_color_r|g|b|w``, ``<object>_white``.
- ``fan``: ``ON``/``OFF`` → bool; ``.../speed_level/state`` a number,
  ``.../oscillation/state`` (``oscillate_on``/``oscillate_off``) a bool,
  ``.../direction/state`` and ``.../preset_mode/state`` text.
- ``cover``, ``valve``: the state (``open``, ``closed``, ``opening``, ``closing``) as text;
  ``.../position/state`` and ``.../tilt/state`` in % (0-100).
- ``climate`` (https://esphome.io/components/climate/: "°C is assumed for all temperature
  values"): ``.../current_temperature|target_temperature|target_temperature_low|
  target_temperature_high/state`` in Cel, ``.../current_humidity|target_humidity/state``
  in %RH, ``.../mode|action|fan_mode|swing_mode|preset/state`` text, ``.../away/state``
  bool; the metric is ``<object>_<field>``.
- ``text_sensor``, ``select``, ``text``, ``lock``, ``alarm_control_panel``, ``date``,
  ``time``, ``datetime``: text; ``event``: the JSON ``event_type`` as text.
- ``<prefix>/status`` (``online``/``offline``, the birth and last will), ``<prefix>/debug``
  (the log), ``esphome/discover/<node>``, and topics ending in ``command`` or ``set`` carry
  no reading and return ``[]``. Any other topic raises ``DecodeError("no_values")``.

Units: ESPHome state topics carry none. When the node publishes Home Assistant discovery
(``discovery: true``, the default; https://www.home-assistant.io/integrations/mqtt/#discovery-messages),
the retained ``homeassistant/<component>/<node>/<object_id>/config`` of each entity has
``unit_of_measurement`` and ``device_class`` (ESPHome writes the abbreviated keys
``unit_of_meas``, ``dev_cla``, ``stat_t``): :meth:`EspHome.learn` keeps state topic →
unit (a ``%`` of a ``humidity`` device class is %RH, of ``battery`` %EL), at most
:data:`MAX_LEARNED` of them. A number's unit is, in order: ``units:`` of the subscription
for its metric, the discovered unit, the field's fixed unit above (climate, cover), none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from gateway.payloads.base import Format, Options, Source
from gateway.payloads.errors import DecodeError
from gateway.payloads.names import metric_name
from gateway.payloads.values import Units, is_number, load_json, parse_number
from gateway.reading import Reading, Value

#: Home Assistant's default discovery prefix (ESPHome's ``mqtt: discovery_prefix``)
DISCOVERY_PREFIX = "homeassistant"
#: most state topics whose discovered unit is kept
MAX_LEARNED = 10_000
#: most topic plans cached per instance (names come from devices)
MAX_CACHED = 4096
#: longest state payload read (text sensors publish up to 255 characters; light JSON more)
MAX_STATE = 1024
#: longest topic suffix and object id read
MAX_SUFFIX = 256

_ON_OFF = {"ON": True, "OFF": False}
_OSCILLATION = {"oscillate_on": True, "oscillate_off": False}

#: components whose main state is text, a number or ON/OFF
_TEXT = frozenset({"text_sensor", "select", "text", "lock", "alarm_control_panel", "cover",
                   "valve", "date", "time", "datetime"})
_NUMBER = frozenset({"sensor", "number"})
_BOOL = frozenset({"binary_sensor", "switch", "fan"})

#: ``<component>/<object>/<field>/state``: (component, field) → (kind, fixed unit)
_FIELDS: dict[tuple[str, str], tuple[str, str | None]] = {
    ("climate", "current_temperature"): ("num", "Cel"),
    ("climate", "target_temperature"): ("num", "Cel"),
    ("climate", "target_temperature_low"): ("num", "Cel"),
    ("climate", "target_temperature_high"): ("num", "Cel"),
    ("climate", "current_humidity"): ("num", "%RH"),
    ("climate", "target_humidity"): ("num", "%RH"),
    ("climate", "mode"): ("text", None), ("climate", "action"): ("text", None),
    ("climate", "fan_mode"): ("text", None), ("climate", "swing_mode"): ("text", None),
    ("climate", "preset"): ("text", None), ("climate", "away"): ("bool", None),
    ("cover", "position"): ("num", "%"), ("cover", "tilt"): ("num", "%"),
    ("valve", "position"): ("num", "%"),
    ("fan", "speed_level"): ("num", None), ("fan", "oscillation"): ("oscillation", None),
    ("fan", "direction"): ("text", None), ("fan", "preset_mode"): ("text", None),
    ("fan", "speed"): ("text", None),
}

#: light JSON: key → metric suffix (numbers without unit: 0-255 levels, mireds)
_LIGHT_NUMBERS = {"brightness": "brightness", "color_temp": "color_temp", "white": "white",
                  "white_value": "white"}
_LIGHT_COLOR = ("r", "g", "b", "w", "c")


class Plan(NamedTuple):
    """How one state topic becomes a reading: its kind, metric and fixed unit."""

    kind: str  # num | bool | oscillation | text | light | event | skip
    metric: str = ""
    unit: str | None = None


SKIP = Plan("skip")


def topic_parts(source: Source) -> list[str]:
    """The topic's segments after the node: from the slots, the ``#`` rest, or the topic."""
    slots = source.slots
    component, obj = slots.get("component"), slots.get("object")
    if component is not None and obj is not None:
        return [component, obj, "state"]
    rest = slots.get("#")
    if rest is None:
        native, topic = source.native or "", source.topic
        mark = f"/{native}/"
        at = topic.find(mark)
        if at >= 0:
            rest = topic[at + len(mark):]
        elif topic.startswith(native + "/"):
            rest = topic[len(native) + 1:]
        else:
            rest = topic
    return rest.split("/")


def plan_for(parts: Sequence[str]) -> Plan | None:
    """What the topic segments after the node carry; None when not an ESPHome topic."""
    n = len(parts)
    last = parts[-1]
    if n == 1:
        return SKIP if last in ("status", "debug") else None
    if last in ("command", "set") or parts[0] == "discover":
        return SKIP
    if last != "state" or n not in (3, 4):
        return None
    component, obj = parts[0], parts[1]
    if not obj:
        return None
    base = metric_name(obj)
    if not base:
        raise DecodeError("bad_name", f"object id {obj[:40]!r} gives no metric name")
    if n == 4:
        hit = _FIELDS.get((component, parts[2]))
        if hit is None:
            return None
        return Plan(hit[0], metric_name(f"{obj}_{parts[2]}"), hit[1])
    if component in _NUMBER:
        return Plan("num", base)
    if component in _BOOL:
        return Plan("bool", base)
    if component in _TEXT:
        return Plan("text", base)
    if component == "light":
        return Plan("light", base)
    if component == "event":
        return Plan("event", base)
    if component in ("button", "update"):
        return SKIP  # a button has no state; an update entity's JSON is firmware metadata
    return None


def percent_unit(unit: str, device_class: Any) -> str:
    """A discovered ``%`` in the SenML unit its device class means (%RH, %EL), else as is."""
    if unit != "%":
        return unit
    if device_class in ("humidity", "moisture"):
        return "%RH"
    if device_class == "battery":
        return "%EL"
    return unit


def discovery_entry(obj: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """(state topic, unit) of one discovery config, None when it names no state topic.

    Reads the full and the abbreviated keys and expands a ``~`` base topic
    (https://www.home-assistant.io/integrations/mqtt/#using-abbreviations-and-base-topic).
    """
    state = obj.get("stat_t", obj.get("state_topic"))
    if not isinstance(state, str) or not state or len(state) > 512:
        return None
    base = obj.get("~")
    if isinstance(base, str):
        if state.startswith("~"):
            state = base + state[1:]
        elif state.endswith("~"):
            state = state[:-1] + base
    unit = obj.get("unit_of_meas", obj.get("unit_of_measurement"))
    if not isinstance(unit, str) or not unit or len(unit) > 32:
        return state, None
    return state, percent_unit(unit, obj.get("dev_cla", obj.get("device_class")))


class EspHome(Format):
    """ESPHome MQTT state topics, with units from its Home Assistant discovery configs."""

    name = "esphome"

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self.units = Units()
        self._plans: dict[tuple[str, ...], Plan | None] = {}
        #: state topic → discovered unit (None: the entity has no unit)
        self._learned: dict[str, str | None] = {}

    @classmethod
    def check(cls, options: Options, topic_names: frozenset[str]) -> None:
        use = ("use topic: {device}/{component}/{object}/state, or {device}/# for every "
               "topic of a node")
        if "device" not in topic_names:
            raise ValueError(f"format: esphome needs the node as {{device}}: {use}")
        if ("component" in topic_names) != ("object" in topic_names):
            raise ValueError(f"format: esphome needs both {{component}} and {{object}}: {use}")
        if "metric" in topic_names:
            raise ValueError(f"format: esphome names metrics from the object id: {use}")
        if options.fields:
            raise ValueError("fields: does not apply to format: esphome")

    def companions(self, topic: str) -> Sequence[str]:
        return (f"{DISCOVERY_PREFIX}/+/+/+/config",)

    def learn(self, topic: str, payload: bytes) -> int:
        """Keep the unit of the entity whose discovery config this is (0 or 1)."""
        if not payload:
            return 0  # a removed (emptied retained) config; its last unit stays valid
        obj = load_json(payload)
        if type(obj) is not dict:
            raise DecodeError("bad_shape", "a discovery config must be a JSON object")
        entry = discovery_entry(obj)
        if entry is None:
            return 0
        state, unit = entry
        if state not in self._learned and len(self._learned) >= MAX_LEARNED:
            return 0
        self._learned[state] = unit
        return 1

    def decode(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        device = source.device
        if device is None:
            raise DecodeError("no_device", "no node in the topic: use "
                                           "{device}/{component}/{object}/state")
        topic = source.topic
        if topic.startswith(DISCOVERY_PREFIX + "/") and topic.endswith("/config"):
            self.learn(topic, payload)  # a {device}/# subscription also sees the configs
            return []
        parts = tuple(topic_parts(source))
        plan = self._plans.get(parts)
        if plan is None:
            short = len(parts) <= 6 and sum(map(len, parts)) <= MAX_SUFFIX
            plan = plan_for(parts) if short else None
            if plan is None:
                raise DecodeError("no_values", f"{'/'.join(parts)[:80]!r} is not an ESPHome "
                                               "state topic")
            if len(self._plans) < MAX_CACHED:
                self._plans[parts] = plan
        kind = plan.kind
        if kind == "skip":
            return []
        if len(payload) > MAX_STATE:
            raise DecodeError("bad_text", f"a state of {len(payload)} bytes: at most {MAX_STATE}")
        if kind == "light":
            return self._light(plan.metric, payload, device, now)
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DecodeError("bad_text", f"{plan.metric}: state is not UTF-8 text") from None
        value: Value
        if kind == "num":
            if text.lower() == "nan":
                return []  # ESPHome's "no value" (not yet read, or the read failed)
            value = parse_number(text)
        elif kind == "bool":
            value = _pick(text, _ON_OFF, plan.metric)
        elif kind == "oscillation":
            value = _pick(text, _OSCILLATION, plan.metric)
        elif kind == "event":
            event = load_json(text)
            name = event.get("event_type") if type(event) is dict else None
            if not isinstance(name, str) or not name:
                raise DecodeError("bad_shape", f"{plan.metric}: expected "
                                               '{"event_type": "..."}')
            value = name
        else:
            value = text
        unit = self._unit(plan, topic) if kind == "num" else None
        r = self.units.reading(device, plan.metric, value, unit, now)
        if r is None:
            raise DecodeError("bad_value", f"{plan.metric}: {text!r:.40} is not a value to store")
        return [r]

    def _unit(self, plan: Plan, topic: str) -> str | None:
        unit = self.options.units.get(plan.metric)
        if unit is not None:
            return unit
        learned = self._learned.get(topic)
        return plan.unit if learned is None else learned

    def _light(self, base: str, payload: bytes, device: str, now: float) -> list[Reading]:
        obj = load_json(payload)
        if type(obj) is not dict:
            raise DecodeError("bad_shape", f"{base}: a light's state must be a JSON object")
        out: list[Reading] = []
        state = obj.get("state")
        if state is not None:
            out.append(Reading(device, base, _pick(state, _ON_OFF, base), None, now))
        for key, suffix in _LIGHT_NUMBERS.items():
            v = obj.get(key)
            if isinstance(v, (int, float)) and is_number(v):
                out.append(Reading(device, f"{base}_{suffix}", v, None, now))
        color = obj.get("color")
        if type(color) is dict:
            for key in _LIGHT_COLOR:
                v = color.get(key)
                if isinstance(v, (int, float)) and is_number(v):
                    out.append(Reading(device, f"{base}_color_{key}", v, None, now))
        if not out:
            raise DecodeError("no_values", f"{base}: no state, brightness or color in the JSON")
        return out


def _pick(text: Any, table: Mapping[str, bool], metric: str) -> bool:
    hit = table.get(text) if isinstance(text, str) else None
    if hit is None:
        raise DecodeError("bad_value", f"{metric}: expected {' or '.join(table)}, "
                                       f"got {text!r:.40}")
    return hit
