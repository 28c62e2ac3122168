"""Zigbee2MQTT: the JSON state Zigbee2MQTT publishes on ``<base>/<friendly name>``.

What it reads (https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html):

- ``<base>/FRIENDLY_NAME``: one JSON object per device, ``{"temperature": 21.6,
  "humidity": 54, "battery": 97, "voltage": 2985, "linkquality": 120, "last_seen": ...}``.
  Each key becomes a metric (:func:`~gateway.payloads.names.metric_name` of the key);
  numbers keep their unit, JSON booleans stay booleans (``contact``, ``occupancy``,
  ``water_leak``, ``tamper``, ``battery_low``...), ``state``/``state_<endpoint>``
  ``"ON"``/``"OFF"`` become booleans, ``color`` becomes ``color_x``, ``color_y``,
  ``color_hue``... Text is kept only for events and modes (``action``, ``system_mode``...,
  and enums the device only publishes); other text, and a string where a number is
  expected, is skipped, never stored. ``last_seen`` (ISO 8601 or epoch milliseconds,
  https://www.zigbee2mqtt.io/guide/configuration/device-availability.html) is the
  readings' time when present, unless ``timestamp:`` names another field.
- ``<base>/bridge/devices``: the retained device list
  (https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html#zigbee2mqtt-bridge-devices),
  a companion topic read by :meth:`Zigbee2Mqtt.learn`: for each ``friendly_name``, its
  ``definition.exposes`` (https://www.zigbee2mqtt.io/guide/usage/exposes.html) give each
  property's type and unit, so ``voltage`` in ``mV`` (a battery, the ``battery_voltage``
  preset) and ``voltage`` in ``V`` (mains, the ``voltage`` preset) both land in ``V``.

Units, in order: ``units:`` of the subscription (per metric), then the device's exposes,
then :data:`DEFAULT_UNITS` (the units zigbee-herdsman-converters' expose presets
publish, https://github.com/Koenkk/zigbee-herdsman-converters/blob/master/src/lib/exposes.ts).
Without exposes, ``voltage`` is read as millivolts from 1000 up and as volts below
(:func:`voltage_unit`), and ``illuminance`` as lux unless the same message carries
``illuminance_lux`` (Zigbee2MQTT 1.x: ``illuminance`` was then the raw ZCL value, and
has no unit; 2.0 made ``illuminance`` lux and dropped ``illuminance_lux``). A property
whose exposed unit the unit table does not know is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from gateway.payloads.base import Format, Options, Source
from gateway.payloads.errors import DecodeError
from gateway.payloads.names import metric_name
from gateway.payloads.values import Units, is_number, load_json, parse_timestamp, path_get
from gateway.reading import Reading

#: most devices read from one bridge/devices list (a Zigbee network holds a few hundred)
MAX_DEVICES = 5000
#: most exposes (features included) read per device
MAX_EXPOSES = 500
#: deepest nesting of ``features`` followed (light → color composite is 2)
MAX_DEPTH = 4
#: most keys read from one state message, and from its ``color`` object
MAX_KEYS = 1000
MAX_COLOR_KEYS = 16
#: most distinct property names whose default handling is cached (names come from devices)
MAX_CACHED = 4096
#: battery voltages are published in mV (2000-3300 for a CR2032 or two AA cells),
#: mains voltages in V (100-250): at and above this a unit-less ``voltage`` is mV
VOLTAGE_MV_FROM = 1000

#: units the expose presets publish, for properties of devices not in bridge/devices
DEFAULT_UNITS: dict[str, str] = {
    "temperature": "°C", "device_temperature": "°C", "local_temperature": "°C",
    "cpu_temperature": "°C", "occupied_heating_setpoint": "°C",
    "occupied_cooling_setpoint": "°C", "unoccupied_heating_setpoint": "°C",
    "current_heating_setpoint": "°C",
    "humidity": "%", "soil_moisture": "%", "battery": "%", "position": "%",
    "pressure": "hPa",
    "current": "A", "current_phase_b": "A", "current_phase_c": "A",
    "voltage_phase_b": "V", "voltage_phase_c": "V",
    "power": "W", "power_phase_b": "W", "power_phase_c": "W", "power_apparent": "VA",
    "power_reactive": "VAR", "energy": "kWh", "produced_energy": "kWh",
    "energy_produced": "kWh", "ac_frequency": "Hz",
    "illuminance_lux": "lx",
    "co2": "ppm", "eco2": "ppm", "co": "ppm", "voc": "µg/m³",
    "pm1": "µg/m³", "pm25": "µg/m³", "pm10": "µg/m³", "formaldehyd": "mg/m³", "hcho": "mg/m³",
    "noise": "dBA", "linkquality": "lqi", "color_temp": "mired",
}
#: Zigbee2MQTT unit names the unit table does not carry: SenML unit (None: a number
#: without unit) and the factor to it
Z2M_UNITS: dict[str, tuple[str | None, float]] = {
    "lqi": (None, 1.0), "mired": (None, 1.0), "VAR": ("var", 1.0), "°": ("deg", 1.0),
    "mg/m³": ("ug/m3", 1000.0), "seconds": ("s", 1.0), "dBA": ("dB", 1.0),
}
#: text values worth keeping (events and modes); other text is configuration noise
TEXT = frozenset({"action", "click", "lock_state", "system_mode", "running_state", "alarm",
                  "door_state", "motion_state"})
#: bookkeeping fields Zigbee2MQTT adds, not measurements
IGNORED = frozenset({"last_seen", "update", "update_available", "device", "elapsed",
                     "power_on_behavior", "color_mode", "color_temp_startup"})

# how a property's value is read
_SKIP, _NUMBER, _BINARY, _TEXT, _STATE, _COLOR, _VOLTAGE, _ILLUMINANCE = range(8)
#: ZCL access bit "can be set" (exposes.md: access 1 published, 2 set, 4 get)
_ACCESS_SET = 2


class _Field(NamedTuple):
    """How one property is read: kind, metric, unit for the table and factor to it."""

    kind: int
    metric: str = ""
    unit: str | None = None
    scale: float = 1.0
    on: Any = None  # binary exposes: the values meaning true and false
    off: Any = None


_SKIPPED = _Field(_SKIP)
_UNKNOWN = object()


def voltage_unit(value: float) -> str:
    """The unit of a ``voltage`` no expose describes: ``mV`` from 1000 up, else ``V``.

    Zigbee2MQTT's ``battery_voltage`` preset publishes ``voltage`` in mV (an Aqara
    WSDCGQ11LM reports 2985), its ``voltage`` preset in V (a mains plug reports 230):
    no battery is read at 1 V or more in volts' thousands, no mains at 1000 V.
    """
    return "mV" if abs(value) >= VOLTAGE_MV_FROM else "V"


def companion_topic(topic: str) -> str | None:
    """``<base>/bridge/devices`` for a subscription ``<base>/{device}``, else None."""
    suffix = "/{device}"
    if not topic.endswith(suffix):
        return None
    base = topic[: -len(suffix)]
    if not base or any(c in base for c in "{}+#"):
        return None
    return f"{base}/bridge/devices"


class Zigbee2Mqtt(Format):
    """Zigbee2MQTT device state; units from the bridge's device list when it was read."""

    name = "zigbee2mqtt"
    names_devices = False

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self._units = Units()
        self._defaults: dict[str, _Field] = {}
        #: friendly name → property → field, from the last bridge/devices read
        self._devices: dict[str, dict[str, _Field]] = {}
        #: friendly name → model, manufacturer, description, IEEE address
        self._info: dict[str, dict[str, str]] = {}
        #: a top-level ``timestamp:`` field is the readings' time, not a reading
        ts_field = self.options.timestamp
        self._ts_key = ts_field if ts_field and "." not in ts_field else None

    # -- companion topic -----------------------------------------------------------------

    def companions(self, topic: str) -> Sequence[str]:
        """``<base>/bridge/devices`` for ``<base>/{device}`` (a fixed base), else none."""
        found = companion_topic(topic)
        return () if found is None else (found,)

    def learn(self, topic: str, payload: bytes) -> int:
        """Read ``bridge/devices``: each device's property units; the number of devices.

        The list replaces what an earlier one taught (it is republished whole whenever a
        device joins or leaves). Devices without a definition (unsupported, the
        coordinator) are not counted. A list that is not Zigbee2MQTT's raises
        ``bad_shape`` and the previous list stays in use.
        """
        entries = load_json(payload)
        if type(entries) is not list:
            raise DecodeError("bad_shape", "bridge/devices: expected a JSON list of devices")
        if len(entries) > MAX_DEVICES:
            raise DecodeError("bad_shape", f"bridge/devices: {len(entries)} devices, more "
                              f"than {MAX_DEVICES}")
        devices: dict[str, dict[str, _Field]] = {}
        info: dict[str, dict[str, str]] = {}
        for entry in entries:
            if type(entry) is not dict:
                raise DecodeError("bad_shape", "bridge/devices: each device must be an object")
            name = entry.get("friendly_name")
            if type(name) is not str or not name:
                raise DecodeError("bad_shape", "bridge/devices: a device without a "
                                  "friendly_name")
            definition = entry.get("definition")
            if entry.get("type") != "Coordinator" and "/" not in name:
                info[name] = _described(entry, definition)
            if definition is None:
                continue
            if type(definition) is not dict:
                raise DecodeError("bad_shape", f"bridge/devices: {name[:60]}: definition "
                                  "must be an object or null")
            exposes = definition.get("exposes")
            if exposes is None:
                exposes = []
            if type(exposes) is not list:
                raise DecodeError("bad_shape", f"bridge/devices: {name[:60]}: exposes must "
                                  "be a list")
            fields: dict[str, _Field] = {}
            self._walk(exposes, fields, [MAX_EXPOSES], 0, name)
            devices[name] = fields
        self._devices = devices
        self._info = info
        return len(devices)

    def described(self) -> Mapping[str, Mapping[str, str]]:
        """Each device of the last ``bridge/devices``: model, vendor, description, IEEE."""
        return self._info

    def _walk(self, exposes: list[Any], fields: dict[str, _Field], budget: list[int],
              depth: int, name: str) -> None:
        """Collect the fields of ``exposes`` and their ``features`` (bounded, in place)."""
        for item in exposes:
            if budget[0] <= 0:
                return
            budget[0] -= 1
            if type(item) is not dict:
                raise DecodeError("bad_shape", f"bridge/devices: {name[:60]}: each expose "
                                  "must be an object")
            kind = item.get("type")
            prop = item.get("property")
            if kind == "composite" or kind == "list":
                # sub-features are keys of the composite's own object (color.x, color.y)
                if prop == "color":
                    fields["color"] = _Field(_COLOR, "color")
                continue
            features = item.get("features")
            if features is not None:
                if type(features) is not list:
                    raise DecodeError("bad_shape", f"bridge/devices: {name[:60]}: features "
                                      "must be a list")
                if depth < MAX_DEPTH:
                    self._walk(features, fields, budget, depth + 1, name)
                continue
            if type(prop) is str and prop:
                field = self._exposed(prop, kind, item)
                if field is not None:
                    fields[prop] = field

    def _exposed(self, prop: str, kind: Any, item: Mapping[str, Any]) -> _Field | None:
        """The field an expose describes; None leaves the property to the default."""
        metric = metric_name(prop)
        if not metric or prop in IGNORED:
            return _SKIPPED
        override = self._override(metric)
        if kind == "numeric":
            if override is not None:
                return override
            unit = item.get("unit")
            if type(unit) is not str:
                return _Field(_VOLTAGE, metric) if prop == "voltage" else _Field(_NUMBER, metric)
            resolved = self._z2m_unit(unit, metric)
            if resolved is None:
                return _SKIPPED  # a unit nobody downstream could read
            return _Field(_NUMBER, metric, resolved[0], resolved[1])
        if kind == "binary":
            on, off = item.get("value_on"), item.get("value_off")
            scalars = (str, bool, int)
            return _Field(_BINARY, metric, on=on if isinstance(on, scalars) else True,
                          off=off if isinstance(off, scalars) else False)
        if kind == "enum":
            access = item.get("access")
            published_only = type(access) is int and not access & _ACCESS_SET
            return _Field(_TEXT, metric) if prop in TEXT or published_only else _SKIPPED
        if kind == "text":
            return _Field(_TEXT, metric) if prop in TEXT else _SKIPPED
        return None

    # -- units -----------------------------------------------------------------------------

    def _override(self, metric: str) -> _Field | None:
        """The subscription's ``units:`` entry for ``metric`` as a field, if any."""
        unit = self.options.units.get(metric)
        return None if unit is None else _Field(_NUMBER, metric, unit)

    def _z2m_unit(self, unit: str, metric: str) -> tuple[str | None, float] | None:
        """Unit for the table and factor of a Zigbee2MQTT unit; None if unknown."""
        hit = Z2M_UNITS.get(unit)
        if hit is not None:
            return hit
        try:
            self._units.get(unit, metric)
        except DecodeError:
            return None
        return unit, 1.0

    def _default(self, key: str) -> _Field:
        """How a property no exposes describe is read (cached, bounded)."""
        hit = self._defaults.get(key)
        if hit is not None:
            return hit
        field = self._default_field(key)
        if len(self._defaults) < MAX_CACHED:
            self._defaults[key] = field
        return field

    def _default_field(self, key: str) -> _Field:
        metric = metric_name(key)
        if not metric or key in IGNORED:
            return _SKIPPED
        if key == "color":
            return _Field(_COLOR, metric)
        if key == "state" or key.startswith("state_"):
            return _Field(_STATE, metric)
        if key in TEXT:
            return _Field(_TEXT, metric)
        override = self._override(metric)
        if override is not None:
            return override
        if key == "voltage":
            return _Field(_VOLTAGE, metric)
        if key == "illuminance":
            return _Field(_ILLUMINANCE, metric)
        unit = DEFAULT_UNITS.get(key)
        if unit is None:
            return _Field(_NUMBER, metric)
        resolved = self._z2m_unit(unit, metric)
        assert resolved is not None, unit  # the default table is tested against the table
        return _Field(_NUMBER, metric, resolved[0], resolved[1])

    # -- state messages --------------------------------------------------------------------

    def decode(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        """The readings of one device state message."""
        device = source.device
        if device is None:
            raise DecodeError("no_device", "zigbee2mqtt needs {device} (the friendly name) "
                              "in the topic")
        obj = load_json(payload)
        if type(obj) is not dict:
            raise DecodeError("bad_shape", f"expected a JSON object, got {type(obj).__name__}")
        if len(obj) > MAX_KEYS:
            raise DecodeError("bad_shape", f"{len(obj)} keys, more than {MAX_KEYS}")
        ts = self._ts(obj, now)
        learned = self._devices.get(source.native or "") if self._devices else None
        units = self._units
        out: list[Reading] = []
        for key, raw in obj.items():
            field = learned.get(key) if learned is not None else None
            if field is None:
                field = self._default(key)
            kind = field.kind
            if kind == _SKIP or key == self._ts_key:
                continue
            if kind == _COLOR:
                if type(raw) is dict:
                    self._color(device, raw, ts, out)
                continue
            cls = raw.__class__
            if cls is bool:
                out.append(Reading(device, field.metric, raw, None, ts))
                continue
            number = cls is int or cls is float
            unit, scale = field.unit, field.scale
            if kind == _NUMBER:
                if not number:
                    continue  # text where a number is expected: never a string of a number
            elif kind == _VOLTAGE:
                if not number or not is_number(raw):
                    continue
                unit = voltage_unit(raw)
            elif kind == _ILLUMINANCE:
                if not number:
                    continue
                unit = None if "illuminance_lux" in obj else "lx"
            elif kind == _BINARY:
                if raw == field.on and raw.__class__ is field.on.__class__:
                    raw = True
                elif raw == field.off and raw.__class__ is field.off.__class__:
                    raw = False
                else:
                    continue
                out.append(Reading(device, field.metric, raw, None, ts))
                continue
            elif kind == _STATE:
                if cls is not str:
                    continue
                up = raw.upper()
                raw = True if up == "ON" else False if up == "OFF" else raw
                unit = None
            elif kind == _TEXT:
                if cls is not str and not number:
                    continue
                unit = None
            r = units.reading(device, field.metric, raw, unit, ts, scale)
            if r is not None:
                out.append(r)
        if not out:
            raise DecodeError("no_values", "no values Zigbee2MQTT publishes for a device "
                              "(numbers, true/false, ON/OFF, actions)")
        return out

    def _color(self, device: str, color: dict[str, Any], ts: float, out: list[Reading]) -> None:
        """``color_x``, ``color_y``, ``color_hue``... from a light's ``color`` object."""
        for i, (sub, v) in enumerate(color.items()):
            if i >= MAX_COLOR_KEYS:
                return
            if is_number(v):
                metric = metric_name(f"color_{sub}")
                if metric != "color":
                    out.append(Reading(device, metric, v, None, ts))

    def _ts(self, obj: Mapping[str, Any], now: float) -> float:
        """The readings' time: ``timestamp:``'s field, else ``last_seen``, else ``now``."""
        opts = self.options
        if opts.timestamp:
            raw = path_get(obj, opts.timestamp)
            unit = opts.timestamp_unit
        else:
            raw = obj.get("last_seen")
            unit = "auto"
        if raw is None:
            return now
        ts = parse_timestamp(raw, unit)
        return now if ts is None else ts


def _described(entry: dict[str, Any], definition: Any) -> dict[str, str]:
    """Registry fields of one ``bridge/devices`` entry (text values only)."""
    d = definition if type(definition) is dict else {}
    fields = {"model": d.get("model"),
              "manufacturer": d.get("vendor") or entry.get("manufacturer"),
              "description": d.get("description"), "ieee_address": entry.get("ieee_address")}
    return {k: v[:200] for k, v in fields.items() if isinstance(v, str) and v}
