"""Metric names and the canonical-names table: what gateway/payloads/README.md promises is
what the decoders do.

The README's examples of ``metric_name`` and its table of canonical names are read from
the file itself, so a row that drifts from the code (or code that drifts from a row)
fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.payloads
from gateway.adapters.mqtt.config import SubscriptionConfig
from gateway.adapters.mqtt.topics import TopicTemplate
from gateway.payloads import Source, format_class, metric_name, zcl
from gateway.payloads.lpp import decode_lpp
from gateway.payloads.names import MAX_LENGTH

README = Path(gateway.payloads.__file__).parent / "README.md"
CHIRPSTACK = Path(__file__).parent / "fixtures" / "payloads" / "chirpstack"
NOW = 1_790_000_000.0

Pair = tuple[str, str | None]


def _table(section: str) -> list[list[str]]:
    """The body rows of the first table under ``## <section>``, as stripped cells."""
    text = README.read_text(encoding="utf-8")
    assert f"\n## {section}\n" in text, f"README has no section {section!r}"
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in part.splitlines() if line.startswith("|")]
    return [r for r in rows[1:] if not set("".join(r)) <= set("- ")]


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# -- metric_name: the README's examples and its rules ------------------------------------

def _naming_examples() -> list[tuple[str, str]]:
    pairs = []
    for row in _table("Metric names"):
        for field, metric in ((row[0], row[1]), (row[3], row[4])):
            if field:
                pairs.append((_code(field)[0], _code(metric)[0]))
    return pairs


def test_the_readme_examples_are_what_metric_name_gives() -> None:
    examples = _naming_examples()
    assert len(examples) >= 10
    assert {f: metric_name(f) for f, _ in examples} == dict(examples)


@pytest.mark.parametrize(("field", "metric"), [
    ("tempC", "temp_c"), ("2nd_sensor", "m_2nd_sensor"),     # the names the adapters disagreed on
    ("temp_c", "temp_c"), ("m_2nd_sensor", "m_2nd_sensor"),  # canonical names stay as they are
    ("  Temp  (°C) ", "temp_c"), ("a--b..c", "a_b_c"), ("_x_", "x"),
    ("-5V", "m_5_v"), ("3", "m_3"), ("!!", ""), ("°", ""), ("", ""),
    ("x" * 100, "x" * MAX_LENGTH), ("a" * 63 + "_b", "a" * 63),  # no trailing _ after the cut
])
def test_metric_name_rules(field: str, metric: str) -> None:
    assert metric_name(field) == metric


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_a_metric_name_is_an_identifier_and_canonical(field: str) -> None:
    name = metric_name(field)
    assert name == "" or re.fullmatch(r"[a-z][a-z0-9_]*", name)
    assert len(name) <= MAX_LENGTH and not name.endswith("_") and "__" not in name
    assert metric_name(name) == name


# -- the canonical-names table ------------------------------------------------------------

def _mqtt(fmt: str, template: str, topic: str, payload: Any) -> Callable[[], list[Pair]]:
    def run() -> list[Pair]:
        config = SubscriptionConfig.model_validate({"topic": template, "format": fmt})
        slots = TopicTemplate(config.topic).match(topic)
        assert slots is not None
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        readings = format_class(fmt)(config).decode(
            raw, Source("mqtt", slots.get("device"), topic, slots), NOW)
        return [(r.metric, r.unit) for r in readings]
    return run


def _z2m(state: dict[str, Any]) -> Callable[[], list[Pair]]:
    return _mqtt("zigbee2mqtt", "zigbee2mqtt/{device}", "zigbee2mqtt/dev", state)


def _tasmota(kind: str, payload: dict[str, Any]) -> Callable[[], list[Pair]]:
    return _mqtt("tasmota", "tele/{device}/+", f"tele/plug/{kind}", payload)


def _shelly(path: str, payload: str) -> Callable[[], list[Pair]]:
    return _mqtt("shelly", "shellies/{device}/#", f"shellies/plug/{path}", payload.encode())


def _shelly_rpc(params: dict[str, Any]) -> Callable[[], list[Pair]]:
    return _mqtt("shelly_rpc", "{device}/events/rpc", "shellyplus1pm-a1/events/rpc",
                 {"src": "shellyplus1pm-a1", "method": "NotifyStatus",
                  "params": {"ts": NOW, **params}})


def _senml(pack: list[dict[str, Any]]) -> Callable[[], list[Pair]]:
    return _mqtt("senml", "senml/{device}", "senml/d1", pack)


def _chirpstack(file: str, kind: str) -> Callable[[], list[Pair]]:
    return _mqtt("chirpstack", "application/+/device/+/event/+",
                 f"application/a1/device/0101010101010101/event/{kind}",
                 (CHIRPSTACK / file).read_bytes())


def _lpp(frame: str) -> Callable[[], list[Pair]]:
    return lambda: [(m, u) for m, _, u in decode_lpp(bytes.fromhex(frame))]


def _zcl(cluster: int, attribute: int, value: Any,
         cache: dict[int, Any] | None = None) -> Callable[[], list[Pair]]:
    return lambda: [(m, u) for m, _, u in zcl.normalise(cluster, attribute, value,
                                                         (cache or {}).get)]


#: (README source, metric as the README spells it, its unit or None, a payload, what the
#: decoder must give for it)
CANONICAL: list[tuple[str, str, str | None, Callable[[], list[Pair]], Pair]] = [
    ("Zigbee2MQTT", "temperature", "Cel", _z2m({"temperature": 21.5}), ("temperature", "Cel")),
    ("Zigbee2MQTT", "local_temperature", "Cel", _z2m({"local_temperature": 20}),
     ("local_temperature", "Cel")),
    ("Zigbee2MQTT", "humidity", "%RH", _z2m({"humidity": 40}), ("humidity", "%RH")),
    ("Zigbee2MQTT", "battery", "%EL", _z2m({"battery": 90}), ("battery", "%EL")),
    ("Zigbee2MQTT", "pressure", "Pa", _z2m({"pressure": 1013}), ("pressure", "Pa")),
    ("Zigbee2MQTT", "voltage", "V", _z2m({"voltage": 239}), ("voltage", "V")),
    ("Zigbee2MQTT", "voltage", "V", _z2m({"voltage": 2900}), ("voltage", "V")),
    ("Zigbee2MQTT", "energy", "Wh", _z2m({"energy": 1.5}), ("energy", "Wh")),
    ("Zigbee2MQTT", "power", "W", _z2m({"power": 12}), ("power", "W")),
    ("Zigbee2MQTT", "illuminance", "lx", _z2m({"illuminance": 300}), ("illuminance", "lx")),
    ("Zigbee2MQTT", "co2", "ppm", _z2m({"co2": 400}), ("co2", "ppm")),
    ("Zigbee2MQTT", "pm25", "ug/m3", _z2m({"pm25": 5}), ("pm25", "ug/m3")),
    ("Zigbee2MQTT", "linkquality", None, _z2m({"linkquality": 120}), ("linkquality", None)),
    ("Zigbee2MQTT", "contact", None, _z2m({"contact": True}), ("contact", None)),
    ("Zigbee2MQTT", "state_l1", None, _z2m({"state_l1": "ON"}), ("state_l1", None)),
    ("Zigbee2MQTT", "action", None, _z2m({"action": "single"}), ("action", None)),
    ("Tasmota", "<sensor>_temperature", "Cel",
     _tasmota("SENSOR", {"BME280": {"Temperature": 21.5}, "TempUnit": "C"}),
     ("bme280_temperature", "Cel")),
    ("Tasmota", "energy_total", "Wh", _tasmota("SENSOR", {"ENERGY": {"Total": 1.5}}),
     ("energy_total", "Wh")),
    ("Tasmota", "energy_power", "W", _tasmota("SENSOR", {"ENERGY": {"Power": 100}}),
     ("energy_power", "W")),
    ("Tasmota", "power1", None, _tasmota("STATE", {"POWER1": "ON"}), ("power1", None)),
    ("Tasmota", "wifi_signal", "dBm", _tasmota("STATE", {"Wifi": {"Signal": -60}}),
     ("wifi_signal", "dBm")),
    ("Shelly Gen1", "relay_<i>_power", "W", _shelly("relay/0/power", "12.5"),
     ("relay_0_power", "W")),
    ("Shelly Gen1", "relay_<i>_energy", "Wh", _shelly("relay/0/energy", "600"),
     ("relay_0_energy", "Wh")),
    ("Shelly Gen1", "emeter_<i>_power", "W", _shelly("emeter/0/power", "100"),
     ("emeter_0_power", "W")),
    ("Shelly Gen1", "illuminance", "lx", _shelly("sensor/lux", "300"), ("illuminance", "lx")),
    ("Shelly Gen1", "contact", None, _shelly("sensor/state", "open"), ("contact", None)),
    ("Shelly Gen2", "switch_N_apower", "W", _shelly_rpc({"switch:0": {"id": 0, "apower": 1}}),
     ("switch_0_apower", "W")),
    ("Shelly Gen2", "switch_N_aenergy", "Wh",
     _shelly_rpc({"switch:0": {"id": 0, "aenergy": {"total": 12.3}}}), ("switch_0_aenergy", "Wh")),
    ("Shelly Gen2", "temperature_N", "Cel", _shelly_rpc({"temperature:0": {"id": 0, "tC": 21}}),
     ("temperature_0", "Cel")),
    ("Shelly Gen2", "devicepower_N_battery", "%EL",
     _shelly_rpc({"devicepower:0": {"id": 0, "battery": {"percent": 80}}}),
     ("devicepower_0_battery", "%EL")),
    ("Cayenne LPP", "temperature_N", "Cel", _lpp("036701 10"), ("temperature_3", "Cel")),
    ("Cayenne LPP", "relative_humidity_N", "%RH", _lpp("026850"), ("relative_humidity_2", "%RH")),
    ("Cayenne LPP", "barometric_pressure_N", "Pa", _lpp("0473276b"),
     ("barometric_pressure_4", "Pa")),
    ("Cayenne LPP", "luminosity_N", "lx", _lpp("0165012c"), ("luminosity_1", "lx")),
    ("Cayenne LPP", "analog_in_N", None, _lpp("05020100"), ("analog_in_5", None)),
    ("Cayenne LPP", "accelerometer_N_x", "m/s2", _lpp("0771 0001 0002 0003"),
     ("accelerometer_7_x", "m/s2")),
    ("Cayenne LPP", "voltage_N", "V", _lpp("0174 5aa0"), ("voltage_1", "V")),
    ("Cayenne LPP", "energy_N", "Wh", _lpp("0183 00000010"), ("energy_1", "Wh")),
    ("Cayenne LPP", "load_N", "kg", _lpp("017a0003e8"), ("load_1", "kg")),
    ("Cayenne LPP", "gps_N_latitude", "lat", _lpp("0188 06765f f2960a 0003e8"),
     ("gps_1_latitude", "lat")),
    ("ChirpStack", "rssi", "dBm", _chirpstack("up.json", "up"), ("rssi", "dBm")),
    ("ChirpStack", "snr", "dB", _chirpstack("up.json", "up"), ("snr", "dB")),
    ("ChirpStack", "frame_counter", None, _chirpstack("up.json", "up"), ("frame_counter", None)),
    ("ChirpStack", "battery", "%EL", _chirpstack("status.json", "status"), ("battery", "%EL")),
    ("ChirpStack", "link_margin", "dB", _chirpstack("status.json", "status"),
     ("link_margin", "dB")),
    ("ZCL", "temperature", "Cel", _zcl(0x0402, 0x0000, 2150), ("temperature", "Cel")),
    ("ZCL", "humidity", "%RH", _zcl(0x0405, 0x0000, 4000), ("humidity", "%RH")),
    ("ZCL", "pressure", "Pa", _zcl(0x0403, 0x0000, 1013), ("pressure", "Pa")),
    ("ZCL", "flow", "m3/s", _zcl(0x0404, 0x0000, 40), ("flow", "m3/s")),
    ("ZCL", "illuminance", "lx", _zcl(0x0400, 0x0000, 30001), ("illuminance", "lx")),
    ("ZCL", "occupancy", None, _zcl(0x0406, 0x0000, 1), ("occupancy", None)),
    ("ZCL", "co2", "ppm", _zcl(0x040D, 0x0000, 0.0004), ("co2", "ppm")),
    ("ZCL", "pm25", "ug/m3", _zcl(0x042A, 0x0000, 12.5), ("pm25", "ug/m3")),
    ("ZCL", "battery_voltage", "V", _zcl(0x0001, 0x0020, 29), ("battery_voltage", "V")),
    ("ZCL", "battery", "%EL", _zcl(0x0001, 0x0021, 98), ("battery", "%EL")),
    ("ZCL", "on_off", None, _zcl(0x0006, 0x0000, True), ("on_off", None)),
    ("ZCL", "level", "%", _zcl(0x0008, 0x0000, 127), ("level", "%")),
    ("ZCL", "local_temperature", "Cel", _zcl(0x0201, 0x0000, 2150),
     ("local_temperature", "Cel")),
    ("ZCL", "energy", "Wh", _zcl(0x0702, 0x0000, 1000), ("energy", "Wh")),
    ("ZCL", "power", "W", _zcl(0x0702, 0x0400, 3), ("power", "W")),
    ("ZCL", "voltage", "V", _zcl(0x0B04, 0x0505, 2301), ("voltage", "V")),
    ("ZCL", "current", "A", _zcl(0x0B04, 0x0508, 236), ("current", "A")),
    ("ZCL", "power", "W", _zcl(0x0B04, 0x050B, 99), ("power", "W")),
    ("SenML", "<metric>_sum", "J", _senml([{"n": "p", "u": "W", "s": 7}]), ("p_sum", "J")),
]


def _documented(source: str, metric: str, unit: str | None) -> bool:
    for row in _table("Canonical names"):
        if row[0] != source:
            continue
        names = [n.rstrip(".") for n in _code(row[2])]
        if row[2] == "same":
            names = _code(row[1])
        units = {u.strip() for u in row[3].split(",")}
        # a unit the note spells as a conversion (SenML sums: "W → J")
        converted = unit is not None and f"→ {unit}" in row[4]
        if metric in names and ((unit or "–") in units or converted):
            return True
    return False


@pytest.mark.parametrize(("source", "doc_metric", "doc_unit", "decode", "want"), CANONICAL,
                         ids=[f"{c[0]}:{c[4][0]}" for c in CANONICAL])
def test_the_canonical_table_is_what_the_decoders_give(
        source: str, doc_metric: str, doc_unit: str | None,
        decode: Callable[[], list[Pair]], want: Pair) -> None:
    assert _documented(source, doc_metric, doc_unit), (
        f"README's canonical table has no {source} row naming `{doc_metric}` in {doc_unit}")
    assert want in decode()


def test_every_source_of_the_canonical_table_is_checked_here() -> None:
    assert {row[0] for row in _table("Canonical names")} - {c[0] for c in CANONICAL} \
        <= {"ESPHome"}  # its unit comes from discovery: tests/test_payloads_esphome.py


# -- the same quantity, the same name, whichever Zigbee stack reports it ------------------

def test_zigbee2mqtt_and_zcl_name_the_same_quantities_alike() -> None:
    z2m = dict(_z2m({"temperature": 21.5, "humidity": 40, "battery": 90, "pressure": 1013,
                     "illuminance": 300, "occupancy": True, "co2": 400, "pm25": 5,
                     "power": 12, "energy": 1.5, "voltage": 230, "current": 0.1,
                     "local_temperature": 20})())
    zigbee = dict(
        _zcl(0x0402, 0, 2150)() + _zcl(0x0405, 0, 4000)() + _zcl(0x0001, 0x0021, 180)()
        + _zcl(0x0403, 0, 1013)() + _zcl(0x0400, 0, 30001)() + _zcl(0x0406, 0, 1)()
        + _zcl(0x040D, 0, 0.0004)() + _zcl(0x042A, 0, 5.0)() + _zcl(0x0B04, 0x050B, 12)()
        + _zcl(0x0702, 0, 1)() + _zcl(0x0B04, 0x0505, 2300)() + _zcl(0x0B04, 0x0508, 1)()
        + _zcl(0x0201, 0, 2000)())
    assert z2m == zigbee
