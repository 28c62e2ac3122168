"""Shelly: Gen1 ``shellies/<id>/...`` topics, and Gen2/Gen3/Gen4 (Plus, Pro) RPC notifications.

**Gen1** (:class:`ShellyGen1`, ``format: shelly``, ``topic: shellies/{device}/#``) follows
https://shelly-api-docs.shelly.cloud/gen1/#mqtt-support and each device's "MQTT" section
(Shelly 1/1PM/2.5/Plug S/EM/3EM/H&T/Door-Window/Flood/Motion/Dimmer/RGBW2/Bulb). One bare
value per topic; what the topic says is what the value is. The metric is the topic after
``shellies/<id>/`` with ``/`` as ``_`` (``relay/0/power`` → ``relay_0_power``), except for
the ``sensor/...`` topics of battery devices, named by the quantity alone
(``sensor/temperature`` → ``temperature``, ``sensor/lux`` → ``illuminance``), and the
device's own ``temperature`` → ``device_temperature``:

- ``relay/<i>`` ``on``/``off``/``overpower`` → ``relay_<i>`` bool; ``overpower`` (the relay
  was switched off by its power limit) is ``relay_<i>`` false plus ``relay_<i>_overpower``
  true. ``light/<i>``, ``color/<i>``, ``white/<i>`` ``on``/``off`` likewise; ``roller/<i>``
  (``open``/``close``/``stop``) and ``roller/<i>/stop_reason`` are text.
- ``.../power`` W; ``.../energy`` and ``emeter/<i>/energy|returned_energy`` are counters in
  watt-minutes (the Gen1 docs: "energy counter in Watt-minute"), stored in Wh (÷ 60);
  ``emeter/<i>/total|total_returned`` are Wh; ``emeter/<i>/voltage`` V, ``current`` A,
  ``reactive_power`` var, ``pf`` (no unit); ``roller/<i>/pos`` %.
- ``sensor/temperature`` is in the unit set on the device (°C or °F): ``Cel`` unless the
  subscription's ``units: {temperature: °F}`` says otherwise. ``sensor/humidity`` %RH,
  ``sensor/battery`` %EL, ``sensor/lux`` lx, ``sensor/concentration`` (Shelly Gas) ppm,
  ``sensor/tilt`` deg; ``sensor/motion|flood|smoke|charger|ext_power`` ``true``/``false``
  and ``sensor/vibration`` ``0``/``1`` are booleans; ``sensor/state`` ``open``/``close``
  is ``contact`` (true = closed, as Zigbee door sensors report it); ``sensor/gas``,
  ``sensor/illumination``, ``sensor/operation`` are text.
- ``temperature`` (the device's internal sensor, °C) → ``device_temperature``;
  ``overtemperature``, ``overload``, ``loaderror``, ``input/<i>``, ``longpush/<i>`` ``0``/``1``
  → booleans; ``ext_temperature/<i>`` °C, ``ext_humidity/<i>`` %RH (the sensor add-on),
  ``adc/<i>`` V (Shelly UNI).
- JSON: ``light|color|white/<i>/status`` (``ison``, ``brightness`` %, ``gain`` %, ``temp``
  K, ``red``/``green``/``blue``/``white``, ``mode``), ``input_event/<i>`` (``event`` text,
  ``event_cnt``), ``status`` of Shelly Motion (``motion``, ``vibration``, ``lux``, ``bat``).

Known topics that carry no reading return ``[]`` (nothing to store, not an error):
``online`` (the last will), ``announce``, ``info`` (the periodic full status: the same
values arrive on their own topics, so reading both would store each twice),
``temperature_f`` and ``ext_temperature_f/<i>`` (the same value in °F),
``sensor/act_reasons``, and anything ending in ``command`` or ``set`` (what controllers
publish to the device). Any other topic raises ``DecodeError("no_values")``, so it is counted.

**Gen2+** (:class:`ShellyRpc`, ``format: shelly_rpc``) reads the JSON-RPC notifications
(https://shelly-api-docs.shelly.cloud/gen2/General/Notifications) a device publishes on
``<prefix>/events/rpc`` (``topic: {device}/events/rpc``; the default prefix is the device
id, ``shellyplus1pm-a8032ab12345``), and the per-component status a device publishes on
``<prefix>/status/<component>`` when "generic status update" is on (``topic:
{device}/status/+``). ``NotifyStatus`` and ``NotifyFullStatus`` carry component statuses
(https://shelly-api-docs.shelly.cloud/gen2/ComponentsAndServices/Switch#status and the
pages of Cover, Light, Input, Temperature, Humidity, Illuminance, DevicePower, PM1, EM,
EMData, EM1, EM1Data, Smoke, Flood, Voltmeter); ``params.ts`` (UNIX seconds) is the time.
The metric is ``<type>_<id>_<field>`` with Shelly's own field names (``switch:0`` ``apower``
→ ``switch_0_apower``; nested totals by their object: ``aenergy.total`` →
``switch_0_aenergy`` Wh, ``temperature.tC`` → ``switch_0_temperature`` Cel,
``battery.percent`` → ``devicepower_0_battery``); a component's main value is
``<type>_<id>`` alone: ``switch:0`` ``output`` → ``switch_0`` (bool), ``input:0`` ``state``
→ ``input_0``, ``cover:0`` ``state`` → ``cover_0`` (text), ``temperature:0`` ``tC`` →
``temperature_0``, ``humidity:0`` ``rh`` → ``humidity_0``; see :data:`RPC_FIELDS`. Other components
(``sys``, ``cloud``, ``mqtt``, ``script:N``...) and fields are diagnostics and skipped;
``wifi.rssi`` is kept as ``wifi_rssi`` dBm. A notification with nothing to store (a
``sys`` revision counter, ``cloud.connected``) returns ``[]``. ``NotifyEvent`` events of
``input:N`` (``single_push``, ``double_push``, ``long_push``, ``btn_down``...) become text
``input_<id>_event`` at the event's ``ts``; other events return ``[]``. The device is the
topic's ``{device}``, or the notification's ``src`` when the topic has none (``+/events/rpc``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from gateway.payloads.base import Format, Options, Source
from gateway.payloads.errors import DecodeError
from gateway.payloads.values import (
    Units,
    is_number,
    load_json,
    native_id,
    parse_number,
    parse_timestamp,
)
from gateway.reading import Reading, Value

#: longest topic suffix read (a Gen1 topic is at most four short segments)
MAX_SUFFIX = 128
#: longest bare-value payload read
MAX_BARE = 64
#: most Gen1 topic plans and Gen2 component keys cached per instance (names come from devices)
MAX_CACHED = 4096
#: most components read from one notification (a Pro 4PM full status has about 20)
MAX_COMPONENTS = 256
#: most events read from one NotifyEvent
MAX_EVENTS = 64
#: largest component instance number (Shelly numbers virtual components from 200)
MAX_COMPONENT_ID = 65535

#: watt-minutes (Gen1 energy counters) to watt-hours
WMIN = 1.0 / 60.0

_ON_OFF = {"on": True, "off": False}
_TRUE_FALSE = {"true": True, "false": False}
_ZERO_ONE = {"0": False, "1": True}
_OPEN_CLOSE = {"open": False, "close": True, "closed": True}


def _text(payload: bytes) -> str:
    """A bare value's text: UTF-8, stripped, short."""
    if len(payload) > MAX_BARE:
        raise DecodeError("bad_text", f"a bare value of {len(payload)} bytes: expected at most "
                                      f"{MAX_BARE}")
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise DecodeError("bad_text", "value is not UTF-8 text") from None


def _choice(text: str, table: Mapping[str, bool], what: str) -> bool:
    hit = table.get(text.lower())
    if hit is None:
        raise DecodeError("bad_value", f"expected {what}, got {text!r:.40}")
    return hit


# -- Gen1 -------------------------------------------------------------------------------------


class Plan(NamedTuple):
    """How one Gen1 topic suffix becomes readings: a kind, its metric, unit and scale."""

    kind: str          # num | bool | relay | contact | text | light | event | motion | skip
    metric: str = ""
    unit: str | None = None
    scale: float = 1.0
    table: Mapping[str, bool] | None = None


SKIP = Plan("skip")

#: ``<group>/<i>/<field>`` of outputs and meters: field → (unit, scale)
_METER_FIELDS: dict[str, tuple[str | None, float]] = {
    "power": ("W", 1.0), "energy": ("Wh", WMIN), "returned_energy": ("Wh", WMIN),
    "total": ("Wh", 1.0), "total_returned": ("Wh", 1.0), "voltage": ("V", 1.0),
    "current": ("A", 1.0), "reactive_power": ("var", 1.0), "pf": (None, 1.0),
    "overpower_value": ("W", 1.0), "pos": ("%", 1.0),
}
_OUTPUTS = frozenset({"relay", "light", "color", "white", "roller"})
_METER_GROUPS = _OUTPUTS | {"emeter"}

#: ``sensor/<field>`` of battery devices (H&T, Door/Window, Flood, Smoke, Gas, Sense)
_SENSOR: dict[str, Plan] = {
    "temperature": Plan("num", "temperature", "Cel"),
    "humidity": Plan("num", "humidity", "%RH"),
    "battery": Plan("num", "battery", "%EL"),
    "lux": Plan("num", "illuminance", "lx"),
    "tilt": Plan("num", "tilt", "deg"),
    "concentration": Plan("num", "gas_concentration", "ppm"),
    "error": Plan("num", "sensor_error"),
    "motion": Plan("bool", "motion", table=_TRUE_FALSE),
    "flood": Plan("bool", "flood", table=_TRUE_FALSE),
    "smoke": Plan("bool", "smoke", table=_TRUE_FALSE),
    "charger": Plan("bool", "charger", table=_TRUE_FALSE),
    "ext_power": Plan("bool", "ext_power", table=_TRUE_FALSE),
    "vibration": Plan("bool", "vibration", table=_ZERO_ONE),
    "state": Plan("contact", "contact", table=_OPEN_CLOSE),
    "gas": Plan("text", "gas"),
    "illumination": Plan("text", "illumination"),
    "operation": Plan("text", "gas_operation"),
    "self_test": Plan("text", "gas_self_test"),
    "act_reasons": SKIP, "temperature_f": SKIP,
}

#: one-segment topics
_TOP: dict[str, Plan] = {
    "temperature": Plan("num", "device_temperature", "Cel"),
    "overtemperature": Plan("bool", "overtemperature", table=_ZERO_ONE),
    "overload": Plan("bool", "overload", table=_ZERO_ONE),
    "loaderror": Plan("bool", "loaderror", table=_ZERO_ONE),
    "temperature_status": Plan("text", "temperature_status"),
    "status": Plan("motion"),
    "online": SKIP, "announce": SKIP, "info": SKIP, "temperature_f": SKIP,
}

#: ``<group>/<i>`` indexed bare values
_INDEXED: dict[str, Plan] = {
    "input": Plan("bool", "input", table=_ZERO_ONE),
    "longpush": Plan("bool", "longpush", table=_ZERO_ONE),
    "ext_switch": Plan("bool", "ext_switch", table=_ZERO_ONE),
    "ext_temperature": Plan("num", "ext_temperature", "Cel"),
    "ext_humidity": Plan("num", "ext_humidity", "%RH"),
    "adc": Plan("num", "adc", "V"),
    "input_event": Plan("event", "input_event"),
    "ext_temperature_f": SKIP,
}


def _index(seg: str) -> bool:
    return seg.isdigit() and len(seg) <= 3


def gen1_plan(suffix: str, temperature_unit: str) -> Plan | None:
    """What the Gen1 topic suffix (after ``shellies/<id>/``) carries; None if unknown."""
    segs = suffix.split("/")
    last = segs[-1]
    if last in ("command", "set") or (len(segs) > 2 and segs[-2] == "command"):
        return SKIP
    n = len(segs)
    head = segs[0]
    if n == 1:
        return _TOP.get(head)
    if head == "sensor" and n == 2:
        plan = _SENSOR.get(last)
        if plan is not None and plan.metric == "temperature":
            return plan._replace(unit=temperature_unit)
        return plan
    if n == 2 and head in _INDEXED and _index(last):
        plan = _INDEXED[head]
        return plan if plan is SKIP else plan._replace(metric=f"{plan.metric}_{last}")
    if head in _OUTPUTS and n == 2 and _index(last):
        if head == "relay":
            return Plan("relay", f"relay_{last}")
        if head == "roller":
            return Plan("text", f"roller_{last}")
        return Plan("bool", f"{head}_{last}", table=_ON_OFF)
    if head == "relay" and n == 2 and last in ("power", "energy"):  # Shelly 2: one meter
        unit, scale = _METER_FIELDS[last]
        return Plan("num", f"relay_{last}", unit, scale)
    if n == 3 and head in _METER_GROUPS and _index(segs[1]):
        base = f"{head}_{segs[1]}"
        if last == "status" and head in ("light", "color", "white"):
            return Plan("light", base)
        if last == "stop_reason" and head == "roller":
            return Plan("text", f"{base}_stop_reason")
        meter = _METER_FIELDS.get(last)
        if meter is not None:
            return Plan("num", f"{base}_{last}", meter[0], meter[1])
    return None


#: ``light/<i>/status`` JSON fields: key → (metric suffix, unit)
_LIGHT_FIELDS: dict[str, tuple[str, str | None]] = {
    "brightness": ("brightness", "%"), "gain": ("gain", "%"), "temp": ("color_temp", "K"),
    "red": ("red", None), "green": ("green", None), "blue": ("blue", None),
    "white": ("white", None), "power": ("power", "W"),
}
#: Shelly Motion's ``status`` JSON: key → (metric, unit)
_MOTION_FIELDS: dict[str, tuple[str, str | None]] = {
    "motion": ("motion", None), "vibration": ("vibration", None),
    "lux": ("illuminance", "lx"), "bat": ("battery", "%EL"),
}


class ShellyGen1(Format):
    """Shelly Gen1 MQTT: one value per ``shellies/<id>/<...>`` topic (see the module doc)."""

    name = "shelly"

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self.units = Units()
        self._temperature_unit = self.options.units.get("temperature", "Cel")
        self._plans: dict[str, Plan | None] = {}

    @classmethod
    def check(cls, options: Options, topic_names: frozenset[str]) -> None:
        if "device" not in topic_names:
            raise ValueError("format: shelly reads Gen1 topics by device: use "
                             "topic: shellies/{device}/#")
        if "metric" in topic_names:
            raise ValueError("format: shelly names metrics from the topic: use "
                             "topic: shellies/{device}/# (no {metric})")
        if options.fields:
            raise ValueError("fields: does not apply to format: shelly")

    def decode(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        device = source.device
        if device is None:
            raise DecodeError("no_device", "no device in the topic: use shellies/{device}/#")
        suffix = _suffix(source)
        plan = self._plans.get(suffix)
        if plan is None:
            plan = gen1_plan(suffix, self._temperature_unit) if len(suffix) <= MAX_SUFFIX \
                else None
            if plan is None:
                raise DecodeError("no_values", f"{suffix[:80]!r} is not a Shelly Gen1 topic "
                                               "this format reads")
            if len(self._plans) < MAX_CACHED:
                self._plans[suffix] = plan
        kind = plan.kind
        if kind == "skip":
            return []
        if kind in ("light", "event", "motion"):
            return self._json(kind, plan.metric, payload, device, now)
        text = _text(payload)
        value: Value
        if kind == "num":
            value = parse_number(text)
        elif kind == "relay":
            low = text.lower()
            if low == "overpower":
                return [Reading(device, plan.metric, False, None, now),
                        Reading(device, f"{plan.metric}_overpower", True, None, now)]
            value = _choice(low, _ON_OFF, "on, off or overpower")
        elif kind in ("bool", "contact"):
            assert plan.table is not None
            value = _choice(text, plan.table, "/".join(plan.table))
        else:
            value = text
        r = self.units.reading(device, plan.metric, value, plan.unit, now, plan.scale)
        if r is None:
            raise DecodeError("bad_value", f"{plan.metric}: {text!r:.40} is not a value to store")
        return [r]

    def _json(self, kind: str, base: str, payload: bytes, device: str,
              now: float) -> list[Reading]:
        obj = load_json(payload)
        if type(obj) is not dict:
            raise DecodeError("bad_shape", f"{base or 'status'}: expected a JSON object")
        out: list[Reading] = []
        if kind == "event":
            event, count = obj.get("event"), obj.get("event_cnt", "")
            if isinstance(event, str) and event and len(event) <= 16:
                out.append(Reading(device, base, event, None, now))
            if isinstance(count, int) and is_number(count):
                out.append(Reading(device, f"{base}_count", count, None, now))
        else:
            fields = _LIGHT_FIELDS if kind == "light" else _MOTION_FIELDS
            if kind == "light":
                ison = obj.get("ison")
                if type(ison) is bool:
                    out.append(Reading(device, base, ison, None, now))
                mode = obj.get("mode")
                if isinstance(mode, str) and 0 < len(mode) <= 16:
                    out.append(Reading(device, f"{base}_mode", mode, None, now))
            for key, (suffix, unit) in fields.items():
                v = obj.get(key)
                if v is None or not (type(v) is bool or is_number(v)):
                    continue
                if key == "bat" and not 0 <= v <= 100:
                    continue  # not a percentage (some firmware sent raw counts here)
                metric = f"{base}_{suffix}" if base else suffix
                r = self.units.reading(device, metric, v, unit, now)
                if r is not None:
                    out.append(r)
        if not out:
            raise DecodeError("no_values", f"{base or 'status'}: no field this format reads")
        return out


def _suffix(source: Source) -> str:
    """The topic after the device segment: the ``#`` slot, else found in the topic."""
    rest = source.slots.get("#")
    if rest is not None:
        return rest
    native = source.native or ""
    topic = source.topic
    mark = f"/{native}/"
    at = topic.find(mark)
    if at >= 0:
        return topic[at + len(mark):]
    if topic.startswith(native + "/"):
        return topic[len(native) + 1:]
    return topic


# -- Gen2+ ------------------------------------------------------------------------------------


class Field(NamedTuple):
    """One status field of a Gen2 component: the key path, the metric suffix and unit."""

    key: str
    sub: str | None   # the key inside a nested object (aenergy.total), or None
    suffix: str       # "" for the component's main value: switch:0 output is switch_0
    unit: str | None
    kind: str = "num"  # num | bool | text


def _f(path: str, suffix: str | None = None, unit: str | None = None,
       kind: str = "num") -> Field:
    key, _, sub = path.partition(".")
    return Field(key, sub or None, key if suffix is None else suffix, unit, kind)


_POWER = [
    _f("apower", unit="W"), _f("voltage", unit="V"), _f("current", unit="A"),
    _f("freq", unit="Hz"), _f("pf"), _f("aenergy.total", "aenergy", "Wh"),
    _f("ret_aenergy.total", "ret_aenergy", "Wh"), _f("temperature.tC", "temperature", "Cel"),
]


def _phases() -> list[Field]:
    out = []
    for p in ("a", "b", "c"):
        out += [_f(f"{p}_current", unit="A"), _f(f"{p}_voltage", unit="V"),
                _f(f"{p}_act_power", unit="W"), _f(f"{p}_aprt_power", unit="VA"),
                _f(f"{p}_pf"), _f(f"{p}_freq", unit="Hz")]
    return out + [_f("n_current", unit="A"), _f("total_current", unit="A"),
                  _f("total_act_power", unit="W"), _f("total_aprt_power", unit="VA")]


def _phase_energies() -> list[Field]:
    out = []
    for p in ("a", "b", "c"):
        out += [_f(f"{p}_total_act_energy", unit="Wh"),
                _f(f"{p}_total_act_ret_energy", unit="Wh")]
    return out + [_f("total_act", unit="Wh"), _f("total_act_ret", unit="Wh")]


#: component type → the status fields read (Shelly's names; the module doc has the rule)
RPC_FIELDS: dict[str, list[Field]] = {
    "switch": [_f("output", "", kind="bool"), *_POWER],
    "cover": [_f("state", "", kind="text"), _f("current_pos", unit="%"), *_POWER],
    "light": [_f("output", "", kind="bool"), _f("brightness", unit="%"), *_POWER],
    "rgb": [_f("output", "", kind="bool"), _f("brightness", unit="%"), *_POWER],
    "rgbw": [_f("output", "", kind="bool"), _f("brightness", unit="%"), _f("white"),
             *_POWER],
    "cct": [_f("output", "", kind="bool"), _f("brightness", unit="%"), _f("ct", unit="K"),
            *_POWER],
    "input": [_f("state", "", kind="bool"), _f("percent", unit="%"), _f("xpercent"),
              _f("counts.total", "count"), _f("freq", unit="Hz")],
    "temperature": [_f("tC", "", "Cel")],
    "humidity": [_f("rh", "", "%RH")],
    "illuminance": [_f("lux", "", "lx"), _f("illumination", kind="text")],
    "devicepower": [_f("battery.percent", "battery", "%EL"),
                    _f("battery.V", "battery_voltage", "V"),
                    _f("external.present", "external_power", kind="bool")],
    "pm1": _POWER[:-1],
    "em1": [_f("current", unit="A"), _f("voltage", unit="V"), _f("act_power", unit="W"),
            _f("aprt_power", unit="VA"), _f("pf"), _f("freq", unit="Hz")],
    "em1data": [_f("total_act_energy", unit="Wh"), _f("total_act_ret_energy", unit="Wh")],
    "em": _phases(),
    "emdata": _phase_energies(),
    "smoke": [_f("alarm", "", kind="bool")],
    "flood": [_f("alarm", "", kind="bool")],
    "voltmeter": [_f("voltage", unit="V")],
}
#: components without an instance number that carry a reading
_SINGLE: dict[str, list[Field]] = {"wifi": [_f("rssi", unit="dBm")]}


def component_key(key: str) -> tuple[str, list[Field]] | None:
    """The metric prefix and fields of a status key (``switch:0`` → ``switch_0``), or None."""
    kind, sep, ident = key.partition(":")
    if not sep:
        fields = _SINGLE.get(kind)
        return None if fields is None else (kind, fields)
    fields = RPC_FIELDS.get(kind)
    if fields is None or not ident.isdigit() or len(ident) > 5 \
            or int(ident) > MAX_COMPONENT_ID:
        return None
    return f"{kind}_{int(ident)}", fields


class ShellyRpc(Format):
    """Shelly Gen2+ MQTT: NotifyStatus/NotifyFullStatus/NotifyEvent and status topics."""

    name = "shelly_rpc"
    names_devices = True  # the notification's ``src`` names the device

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self.units = Units()
        self._keys: dict[str, tuple[str, list[Field]] | None] = {}

    @classmethod
    def check(cls, options: Options, topic_names: frozenset[str]) -> None:
        if "metric" in topic_names:
            raise ValueError("format: shelly_rpc names metrics from the payload: use "
                             "topic: {device}/events/rpc or {device}/status/+")
        if options.fields:
            raise ValueError("fields: does not apply to format: shelly_rpc")

    def decode(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        topic = source.topic
        parts = topic.rsplit("/", 2)
        if topic.endswith("/events/rpc") or topic == "events/rpc":
            return self._notification(payload, source, now)
        if len(parts) == 3 and parts[1] == "status":
            device = source.device
            if device is None:
                raise DecodeError("no_device", "no device in the topic: use "
                                               "{device}/status/+")
            obj = load_json(payload)
            if type(obj) is not dict:
                raise DecodeError("bad_shape", f"{parts[2][:40]}: expected a status object")
            return self._component(parts[2], obj, device, now)
        last = parts[-1]
        if last in ("online", "rpc", "log") or topic.endswith("/debug/log"):
            return []  # the last will, RPC requests and replies, the debug log
        raise DecodeError("no_values", f"{topic[-80:]!r}: not a Shelly notification topic "
                                       "(use {device}/events/rpc or {device}/status/+)")

    def _notification(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        msg = load_json(payload)
        if type(msg) is not dict:
            raise DecodeError("bad_shape", "expected a JSON-RPC notification object")
        method = msg.get("method")
        params = msg.get("params")
        if not isinstance(method, str):
            if "result" in msg or "error" in msg:
                return []  # a reply to an RPC call published on the events topic
            raise DecodeError("bad_shape", "notification has no method")
        if type(params) is not dict:
            raise DecodeError("bad_shape", f"{method[:40]}: params must be an object")
        device = source.device
        if device is None:
            device = f"{source.prefix}:{native_id(msg.get('src'))}"
        ts = _ts(params.get("ts"), now)
        if method in ("NotifyStatus", "NotifyFullStatus"):
            if len(params) > MAX_COMPONENTS:
                raise DecodeError("bad_shape", f"{len(params)} components in one notification: "
                                               f"at most {MAX_COMPONENTS}")
            out: list[Reading] = []
            for key, status in params.items():
                if key != "ts" and type(status) is dict:
                    out += self._component(key, status, device, ts)
            return out
        if method == "NotifyEvent":
            return self._events(params.get("events"), device, ts)
        return []  # other notifications (NotifyDebug...) carry no reading

    def _component(self, key: str, status: dict[str, Any], device: str,
                   ts: float) -> list[Reading]:
        hit = self._keys.get(key)
        if hit is None and key not in self._keys:
            if len(key) > 64:
                return []
            hit = component_key(key)
            if len(self._keys) < MAX_CACHED:
                self._keys[key] = hit
        if hit is None:
            return []
        base, fields = hit
        out: list[Reading] = []
        for f in fields:
            v = status.get(f.key)
            if f.sub is not None:
                v = v.get(f.sub) if type(v) is dict else None
            if v is None:
                continue
            metric = f"{base}_{f.suffix}" if f.suffix else base
            if f.kind == "bool":
                if type(v) is not bool:
                    raise DecodeError("bad_value", f"{key}.{f.key}: expected true or false")
            elif f.kind == "text":
                if not isinstance(v, str) or len(v) > 64:
                    raise DecodeError("bad_value", f"{key}.{f.key}: expected short text")
            elif not is_number(v):
                raise DecodeError("bad_value", f"{key}.{f.key}: expected a number, "
                                               f"got {v!r:.40}")
            r = self.units.reading(device, metric, v, f.unit, ts)
            if r is not None:
                out.append(r)
        return out

    def _events(self, events: Any, device: str, ts: float) -> list[Reading]:
        if type(events) is not list:
            raise DecodeError("bad_shape", "NotifyEvent: params.events must be a list")
        if len(events) > MAX_EVENTS:
            raise DecodeError("bad_shape", f"{len(events)} events: at most {MAX_EVENTS}")
        out: list[Reading] = []
        for ev in events:
            if type(ev) is not dict:
                raise DecodeError("bad_shape", "NotifyEvent: each event must be an object")
            comp, name = ev.get("component"), ev.get("event")
            if not (isinstance(comp, str) and comp.startswith("input:")
                    and isinstance(name, str)) or name == "config_changed":
                continue
            ident = comp[6:]
            if not ident.isdigit() or len(ident) > 5 or not 0 < len(name) <= 32:
                continue
            out.append(Reading(device, f"input_{int(ident)}_event", name, None,
                               _ts(ev.get("ts"), ts)))
        return out


def _ts(raw: Any, default: float) -> float:
    """``ts`` of a notification or event (UNIX seconds), else ``default``."""
    if raw is None:
        return default
    ts = parse_timestamp(raw, "s")
    return default if ts is None else ts
