"""format: tasmota: payloads from Tasmota's documentation, units, clocks, bad input."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.payloads import DecodeError, Options, Source, format_class
from gateway.payloads.errors import REASONS
from gateway.payloads.tasmota import CLOCK_WINDOW, MAX_READINGS, Tasmota, message_type
from tests.payload_cases import assert_readings

FIXTURES = Path(__file__).parent / "fixtures" / "payloads" / "tasmota"
CASES = json.loads((FIXTURES / "cases.json").read_text())["cases"]
NOW = 1_700_000_000.0


@pytest.fixture(autouse=True, scope="module")
def utc() -> Iterator[None]:
    """Device times without zone are read as the gateway's local time: make it UTC."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def src(topic: str) -> Source:
    return Source("tas", topic.split("/")[1], topic, {"device": topic.split("/")[1]})


def decode(topic: str, payload: str | bytes, now: float = NOW,
           options: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    f = Tasmota(Options.model_validate(options or {}))
    raw = payload.encode() if isinstance(payload, str) else payload
    out = f.decode(raw, src(topic), now)
    assert all(r.device == f"tas:{topic.split('/')[1]}" for r in out)
    return [(r.metric, r.value, r.unit, r.ts) for r in out]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_documented_payloads(case: dict[str, Any]) -> None:
    now = case["now"]
    got = decode(case["topic"], case["payload"], now)
    want = [(m, v, u, now if ts == "now" else ts) for m, v, u, ts in case["readings"]]
    assert_readings(got, want)


def test_registered_and_checked() -> None:
    assert format_class("tasmota") is Tasmota
    Tasmota.check(Options(), frozenset({"device"}))
    with pytest.raises(ValueError, match="needs {device}"):
        Tasmota.check(Options(), frozenset())
    assert message_type("tele/x/sensor") == "SENSOR" and message_type("") == "SENSOR"


BME = {"Time": "2019-11-03T19:34:28", "BME280": {"Temperature": 70.0, "Pressure": 29.92},
       "TempUnit": "F", "PressureUnit": "inHg"}
BME_TS = 1572809668.0


def test_fahrenheit_and_inches_of_mercury() -> None:
    assert decode("tele/t/SENSOR", json.dumps(BME), BME_TS) == [
        ("bme280_temperature", 21.1111111111, "Cel", BME_TS),
        ("bme280_pressure", 101320.748119, "Pa", BME_TS)]


def test_millimetres_of_mercury_and_knots() -> None:
    obj = {"BMP280": {"Pressure": 760.0}, "PressureUnit": "mmHg",
           "TX20": {"Speed": {"Act": 10}}, "SpeedUnit": "kn"}
    assert decode("tele/t/SENSOR", json.dumps(obj)) == [
        ("bmp280_pressure", 101325.014435, "Pa", NOW),
        ("tx20_speed_act", 5.14444444444, "m/s", NOW)]


def test_speed_without_unit_has_none() -> None:
    assert decode("tele/t/SENSOR", '{"TX20": {"Speed": {"Act": 3.5}}}') == [
        ("tx20_speed_act", 3.5, None, NOW)]


def test_clock_window() -> None:
    payload = '{"Time": "2019-11-03T19:34:28", "AM2301": {"Temperature": 24.6}}'
    assert decode("tele/t/SENSOR", payload, BME_TS + CLOCK_WINDOW)[0][3] == BME_TS
    assert decode("tele/t/SENSOR", payload, BME_TS - CLOCK_WINDOW)[0][3] == BME_TS
    assert decode("tele/t/SENSOR", payload, BME_TS + CLOCK_WINDOW + 1)[0][3] == \
        BME_TS + CLOCK_WINDOW + 1
    # a device in UTC+2 without Timezone: the same wall clock two hours off is still used
    assert decode("tele/t/SENSOR", payload, BME_TS - 7200)[0][3] == BME_TS
    # an unset clock (1970) and text that is no time: the receive time
    assert decode("tele/t/SENSOR", '{"Time": "1970-01-01T00:00:12", "A": {"Temperature": 1}}'
                  )[0][3] == NOW
    assert decode("tele/t/SENSOR", '{"Time": "soon", "A": {"Temperature": 1}}')[0][3] == NOW


def test_old_dotted_time_and_timestamp_option() -> None:
    payload = '{"Time": "2018.02.15 01:00:50", "Switch1": "OFF"}'
    assert decode("stat/t/STATUS8", '{"StatusSNS": ' + payload + "}", 1518656480.0) == [
        ("switch1", False, None, 1518656450.0)]
    got = decode("tele/t/SENSOR", '{"T": 1518656450, "A": {"Temperature": 1}}', 1518656480.0,
                 {"timestamp": "T"})
    assert got == [("a_temperature", 1, "Cel", 1518656450.0)]


def test_status11_and_channels() -> None:
    obj = {"StatusSTS": {"POWER1": "ON", "POWER2": "OFF", "Dimmer": 40, "CT": 153,
                         "POWER_LOW": "ON", "Wifi": {"RSSI": 100}}}
    assert decode("stat/t/STATUS11", json.dumps(obj)) == [
        ("power1", True, None, NOW), ("power2", False, None, NOW), ("dimmer", 40, "%", NOW),
        ("ct", 153, None, NOW), ("wifi_rssi", 100, "%", NOW)]
    energy = {"ENERGY": {"Power": [12.5, 0], "Voltage": [230, 231, [1]], "Today": "x"}}
    assert decode("tele/t/SENSOR", json.dumps(energy)) == [
        ("energy_power_1", 12.5, "W", NOW), ("energy_power_2", 0, "W", NOW),
        ("energy_voltage_1", 230, "V", NOW), ("energy_voltage_2", 231, "V", NOW)]


def test_messages_without_readings() -> None:
    for topic, payload in [("tele/t/INFO1", '{"Info1": {"Module": "Sonoff Basic"}}'),
                           ("tele/t/LWT", "Offline"), ("stat/t/STATUS", "{}"),
                           ("stat/t/STATUS5", "not json"), ("tele/t/UPGRADE", "x")]:
        assert decode(topic, payload) == [], topic


# -- refused input ---------------------------------------------------------------------------

@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("tele/t/SENSOR", b"", "bad_json"),
    ("tele/t/SENSOR", b"{\"A\": {\"Temperature\": NaN}}", "bad_json"),
    ("tele/t/SENSOR", b"[1, 2]", "bad_shape"),
    ("tele/t/SENSOR", b"{\"Time\": \"2019-11-03T19:34:28\"}", "no_values"),
    ("tele/t/SENSOR", b"{\"A\": {\"Id\": \"00000566CC39\"}}", "no_values"),
    ("tele/t/SENSOR", b"{\"A\": {\"Temperature\": 1}, \"TempUnit\": \"X\"}", "bad_unit"),
    ("tele/t/SENSOR", b"{\"A\": {\"Pressure\": 1}, \"PressureUnit\": 5}", "bad_unit"),
    ("tele/t/SENSOR", b"{\"A\": {\"Speed\": 1}, \"SpeedUnit\": \"furlong\"}", "bad_unit"),
    ("tele/t/SENSOR", json.dumps({"A": {str(i): i for i in range(MAX_READINGS + 1)}}).encode(),
     "bad_shape"),
    ("tele/t/STATE", b"{\"Uptime\": \"0T00:00:13\"}", "no_values"),
    ("stat/t/STATUS10", b"{\"StatusSNS\": 3}", "bad_shape"),
    ("stat/t/POWER", b"TOGGLE", "bad_text"),
    ("stat/t/POWER2", b"\xff", "bad_text"),
    ("tele/t/MARGINS", b"{}", "bad_shape"),
])
def test_refused(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decode(topic, payload)
    assert exc.value.reason == reason


def test_no_device() -> None:
    with pytest.raises(DecodeError) as exc:
        Tasmota().decode(b"{}", Source("tas", None, "tele/x/SENSOR"), NOW)
    assert exc.value.reason == "no_device"


# -- anything else ---------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                     st.integers(min_value=-(10**400), max_value=10**400), st.text(max_size=20))
json_values = st.recursive(
    _scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                      st.dictionaries(st.text(max_size=12), inner, max_size=6)),
    max_leaves=30)
keys = st.sampled_from(["Time", "Epoch", "TempUnit", "PressureUnit", "SpeedUnit", "ENERGY",
                        "POWER", "POWER1", "Wifi", "Dimmer", "StatusSNS", "StatusSTS", "DS18B20",
                        "Temperature", "Pressure", "Speed", "Switch1", "UptimeSec"])
tasmota_objects = st.dictionaries(keys, json_values, max_size=8)
topics = st.sampled_from(["tele/t/SENSOR", "tele/t/STATE", "stat/t/RESULT", "stat/t/POWER",
                          "stat/t/POWER3", "stat/t/STATUS10", "stat/t/STATUS11", "tele/t/LWT",
                          "tele/t/OTHER"])
EXAMPLES = settings(max_examples=300, deadline=None)
FORMAT = Tasmota()


def _only_decode_errors(topic: str, payload: bytes) -> None:
    try:
        out = FORMAT.decode(payload, src(topic), NOW)
    except DecodeError as exc:
        assert exc.reason in REASONS
        return
    for r in out:
        assert r.value.__class__ in (int, float, bool, str)
        assert r.ts.__class__ is float and abs(r.ts - NOW) <= CLOCK_WINDOW


@EXAMPLES
@given(topics, st.binary(max_size=200))
def test_arbitrary_bytes(topic: str, payload: bytes) -> None:
    _only_decode_errors(topic, payload)


@EXAMPLES
@given(topics, json_values)
def test_arbitrary_json(topic: str, value: Any) -> None:
    _only_decode_errors(topic, json.dumps(value).encode())


@EXAMPLES
@given(topics, tasmota_objects)
def test_arbitrary_tasmota_objects(topic: str, value: Any) -> None:
    _only_decode_errors(topic, json.dumps(value).encode())
    _only_decode_errors(topic, json.dumps({"StatusSNS": value, "StatusSTS": value}).encode())
