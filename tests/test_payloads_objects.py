"""JSON objects and bare values (gateway.payloads.objects) as MQTT subscriptions use them,
and the subscription config that picks a format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.adapters.mqtt.config import MqttConfig, SubscriptionConfig
from gateway.adapters.mqtt.topics import TopicTemplate
from gateway.config.model import ConfigError, load_config
from gateway.payloads import DecodeError, Format, Source, format_class
from gateway.payloads.values import parse_timestamp
from gateway.reading import Reading

NOW = 1_790_000_000.0


def decoder(**sub: Any) -> tuple[Format, str]:
    config = SubscriptionConfig.model_validate(sub)
    return format_class(config.format)(config), config.topic


def decode(dec: tuple[Format, str], topic: str, payload: bytes | str) -> list[Reading]:
    fmt, template = dec
    slots = TopicTemplate(template).match(topic)
    assert slots is not None, f"{topic} does not fit {template}"
    raw = payload.encode() if isinstance(payload, str) else payload
    return fmt.decode(raw, Source("mqtt", slots.get("device"), topic, slots), NOW)


def by_metric(readings: list[Reading]) -> dict[str, Reading]:
    return {r.metric: r for r in readings}


# -- topic templates ---------------------------------------------------------------------


def test_template_gives_filter_and_extracts_named_segments() -> None:
    t = TopicTemplate("site/{location}/sensors/{device}/{metric}")
    assert t.filter == "site/+/sensors/+/+"
    assert t.match("site/attic/sensors/th-1/temperature") == {
        "location": "attic", "device": "th-1", "metric": "temperature"}
    assert t.match("site/attic/sensors/th-1") is None
    assert t.match("other/attic/sensors/th-1/temperature") is None
    assert t.fill(location="attic", device="th-1", metric="x") == "site/attic/sensors/th-1/x"


@pytest.mark.parametrize("bad", ["", "a/{dev", "a/x{device}", "a/#/b", "a/b+c", "$SYS/{device}",
                                 "a/{device}/{device}"])
def test_template_rejects_malformed_topics(bad: str) -> None:
    with pytest.raises(ValueError):
        TopicTemplate(bad)


def test_fill_refuses_values_that_would_change_the_topic_level() -> None:
    with pytest.raises(ValueError, match="cannot contain"):
        TopicTemplate("cmd/{device}").fill(device="a/b")


# -- json --------------------------------------------------------------------------------


def test_json_flat_object_becomes_one_reading_per_numeric_field() -> None:
    dec = decoder(topic="devices/{device}/telemetry", units={"temperature": "°C",
                                                             "humidity": "%"})
    out = decode(dec, "devices/kitchen/telemetry",
                 '{"temperature": 21.5, "humidity": 48, "seq": 17, "door_open": false, '
                 '"fw": "1.2.3"}')
    got = by_metric(out)
    assert got["temperature"] == Reading("mqtt:kitchen", "temperature", 21.5, "Cel", NOW)
    assert got["humidity"].unit == "%RH" and got["humidity"].value == 48
    assert got["seq"].value == 17 and got["seq"].unit is None
    assert got["door_open"].value is False
    assert "fw" not in got  # free text is only taken when mapped


def test_json_nested_paths_with_unit_scale_and_millisecond_timestamp() -> None:
    # a Tasmota-style energy report
    dec = decoder(topic="tele/{device}/SENSOR", timestamp="Time",
                  fields={"ENERGY.Power": {"metric": "power", "unit": "W"},
                          "ENERGY.Total": {"metric": "energy", "unit": "kWh"},
                          "SI7021.Temperature": {"metric": "temperature", "unit": "°F"},
                          "raw.t10": {"metric": "probe", "unit": "Cel", "scale": 0.1}})
    payload = {"Time": "2026-09-21T12:00:00+00:00",
               "ENERGY": {"Total": 12.345, "Power": 45, "Voltage": 230},
               "SI7021": {"Temperature": 71.6}, "raw": {"t10": 215}}
    got = by_metric(decode(dec, "tele/plug-3/SENSOR", json.dumps(payload)))
    assert set(got) == {"power", "energy", "temperature", "probe"}
    assert got["energy"].value == 12345.0 and got["energy"].unit == "Wh"
    assert got["temperature"].value == 22.0 and got["temperature"].unit == "Cel"
    assert got["probe"].value == 21.5
    assert got["power"].ts == parse_timestamp("2026-09-21T12:00:00+00:00")

    ms = decoder(topic="d/{device}", timestamp="ts")
    (r, *_) = decode(ms, "d/x", '{"ts": 1790000123456, "v": 1}')
    assert r.ts == pytest.approx(1790000123.456)


def test_json_device_id_from_payload_field() -> None:
    dec = decoder(topic="gateway/uplink", device_field="meta.id")
    out = decode(dec, "gateway/uplink", '{"meta": {"id": "th-9"}, "t": 3.5}')
    assert out == [Reading("mqtt:th-9", "t", 3.5, None, NOW)]
    with pytest.raises(DecodeError) as err:
        decode(dec, "gateway/uplink", '{"t": 3.5}')
    assert err.value.reason == "no_device"


def test_json_unset_device_clock_falls_back_to_receive_time() -> None:
    dec = decoder(topic="d/{device}", timestamp="ts")
    (r,) = decode(dec, "d/x", '{"ts": 12, "v": 1}')  # seconds since boot, not UNIX time
    assert r.ts == NOW


@pytest.mark.parametrize("payload,reason", [
    ("{nope", "bad_json"),
    ("[1, 2]", "bad_shape"),
    ('{"name": "only text"}', "no_values"),
    ('{"v": NaN}', "bad_json"),
    (b"\xff\xfe\x00", "bad_json"),
])
def test_json_malformed_payloads_raise_decode_error(payload: str | bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode(decoder(topic="d/{device}"), "d/x", payload)
    assert err.value.reason == reason


# -- SenML -------------------------------------------------------------------------------


def test_senml_base_name_time_unit_and_value_are_resolved() -> None:
    # RFC 8428 section 5.1.4-style pack: base fields carry to later records
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.790000000e9, "bu": "A", "bver": 5,
         "n": "voltage", "u": "V", "v": 120.1},
        {"n": "current", "t": -5, "v": 1.2},
        {"n": "current", "t": -4, "v": 1.3},
        {"n": "door", "vb": True},
        {"n": "label", "vs": "hall"},
    ]
    out = decode(decoder(topic="senml/in", format="senml"), "senml/in", json.dumps(pack))
    dev = "mqtt:urn:dev:ow:10e2073a01080063"
    assert out[0] == Reading(dev, "voltage", 120.1, "V", 1.79e9)
    assert out[1] == Reading(dev, "current", 1.2, "A", 1.79e9 - 5)
    assert out[2].ts == 1.79e9 - 4
    assert out[3].value is True and out[4].value == "hall"


def test_senml_relative_time_and_device_from_topic() -> None:
    dec = decoder(topic="senml/{device}", format="senml")
    out = decode(dec, "senml/meter-1",
                 '[{"bn": "meter-1/", "bv": 1000, "n": "energy", "u": "kWh", "v": 0.5, "t": -10}]')
    assert out == [Reading("mqtt:meter-1", "energy", 1_000_500.0, "Wh", NOW - 10)]


@pytest.mark.parametrize("payload", ['{"bn": 3}', '[{"n": "x", "v": "text"}]', "[]", "[1]",
                                     '[{"n": "t", "v": 1}]', '[{"bn": "d:", "vb": 1}]'])
def test_senml_malformed_packs_raise_decode_error(payload: str) -> None:
    with pytest.raises(DecodeError):
        decode(decoder(topic="senml/in", format="senml"), "senml/in", payload)


# -- bare values -------------------------------------------------------------------------


def test_bare_values_take_metric_and_unit_from_topic_and_config() -> None:
    dec = decoder(topic="sensors/{device}/{metric}", format="value",
                  units={"temperature": "°F", "pressure": "hPa"})
    assert decode(dec, "sensors/garage/temperature", b" 50 \n") == [
        Reading("mqtt:garage", "temperature", 10.0, "Cel", NOW)]
    assert decode(dec, "sensors/garage/pressure", "1013.25")[0].value == 101325.0
    assert decode(dec, "sensors/garage/Motion", "ON")[0] == Reading(
        "mqtt:garage", "motion", True, None, NOW)
    assert decode(dec, "sensors/garage/count", "-3")[0].value == -3


@pytest.mark.parametrize("payload", ["", "warm", "nan", b"\xc3\x28"])
def test_bare_value_that_is_not_a_number_or_boolean_is_malformed(payload: str | bytes) -> None:
    dec = decoder(topic="sensors/{device}/{metric}", format="value")
    with pytest.raises(DecodeError):
        decode(dec, "sensors/garage/temperature", payload)


def test_bare_text_values_when_asked_for() -> None:
    dec = decoder(topic="state/{device}", format="value", metric="mode", value_type="string")
    assert decode(dec, "state/hvac", "heating")[0].value == "heating"


# -- zigbee2mqtt -------------------------------------------------------------------------


def test_zigbee2mqtt_climate_sensor_converted_to_senml_units() -> None:
    # Aqara WSDCGQ11LM as zigbee2mqtt 1.x publishes it
    payload = {"battery": 100, "humidity": 52.43, "linkquality": 255, "power_outage_count": 3,
               "pressure": 1001.7, "temperature": 22.66, "voltage": 3025,
               "last_seen": "2026-09-21T12:00:05.000Z",
               "update": {"state": "idle"}, "update_available": False}
    out = decode(decoder(topic="zigbee2mqtt/{device}", format="zigbee2mqtt"),
                 "zigbee2mqtt/living_room_climate", json.dumps(payload))
    got = by_metric(out)
    dev = "mqtt:living_room_climate"
    ts = parse_timestamp("2026-09-21T12:00:05.000Z")
    assert got["temperature"] == Reading(dev, "temperature", 22.66, "Cel", ts)
    assert got["humidity"].unit == "%RH"
    assert got["pressure"].value == 100170.0 and got["pressure"].unit == "Pa"
    assert got["voltage"].value == 3.025 and got["voltage"].unit == "V"
    assert got["battery"].unit == "%EL"
    assert got["linkquality"].value == 255
    assert "update" not in got and "update_available" not in got and "last_seen" not in got


def test_zigbee2mqtt_switch_state_contact_and_action() -> None:
    dec = decoder(topic="zigbee2mqtt/{device}", format="zigbee2mqtt")
    got = by_metric(decode(dec, "zigbee2mqtt/plug", '{"state": "ON", "power": 12.5, '
                           '"energy": 1.25, "power_on_behavior": "previous", "contact": false, '
                           '"action": "single", "color": {"x": 0.31, "y": 0.32}}'))
    assert got["state"].value is True
    assert got["energy"].value == 1250.0 and got["energy"].unit == "Wh"
    assert got["contact"].value is False
    assert got["action"].value == "single"
    assert got["color_x"].value == 0.31
    assert "power_on_behavior" not in got


def test_zigbee2mqtt_payload_without_values_is_malformed() -> None:
    dec = decoder(topic="zigbee2mqtt/{device}", format="zigbee2mqtt")
    with pytest.raises(DecodeError):
        decode(dec, "zigbee2mqtt/plug", '{"last_seen": 1790000000000}')
    with pytest.raises(DecodeError):
        decode(dec, "zigbee2mqtt/plug", '"online"')


# -- config ------------------------------------------------------------------------------


@pytest.mark.parametrize("sub,needle", [
    ({"topic": "s/{device}", "format": "value"}, "needs {metric}"),
    ({"topic": "s/{device}/{metric}", "format": "json"}, "only works with format: value"),
    ({"topic": "s/all", "format": "json"}, "device_field"),
    ({"topic": "s/{device}", "units": {"temperature": "furlongs"}}, "unknown unit"),
    ({"topic": "s/{device}", "fields": {"a": {"unit": "C", "metric": "Bad-Name"}}}, "snake_case"),
    ({"topic": "s/#/x"}, "must be the last"),
])
def test_subscription_config_errors_say_what_is_wrong(sub: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        SubscriptionConfig.model_validate(sub)


def test_two_subscriptions_on_the_same_filter_are_refused() -> None:
    with pytest.raises(ValidationError, match="merge them"):
        MqttConfig.model_validate({"type": "mqtt", "subscriptions": [
            {"topic": "a/{device}"}, {"topic": "a/+", "device_field": "id"}]})


def test_gateway_check_names_file_line_and_key_of_a_bad_mqtt_option(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("uplink:\n  enabled: false\nadapters:\n  - type: mqtt\n    subscriptions:\n"
                    "      - topic: sensors/{device}/{metric}\n        format: value\n"
                    "        unit: furlongs\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    (problem,) = err.value.problems
    assert problem.startswith(f"{path}:8: adapters[0].subscriptions[0].unit: unknown unit")



def test_the_shared_unit_table_reads_c_and_f_as_temperatures() -> None:
    from gateway.payloads.units import normalize

    assert normalize("C") == ("Cel", None)
    unit, convert = normalize("F")
    assert unit == "Cel" and convert is not None and abs(convert(212.0) - 100.0) < 1e-9
    assert normalize("Cel") == ("Cel", None) and normalize("W") == ("W", None)


def test_a_payload_unit_outside_senml_and_the_aliases_is_refused_by_name() -> None:
    with pytest.raises(DecodeError) as err:
        decode(decoder(topic="senml/in", format="senml"), "senml/in",
               '[{"bn": "d1:", "n": "distance", "u": "furlong", "v": 3}]')
    assert err.value.reason == "bad_unit" and "'furlong'" in str(err.value)


# -- recorded payloads ---------------------------------------------------------------------

_FIXTURES = Path(__file__).parent / "fixtures" / "payloads" / "json"
_CASES = json.loads((_FIXTURES / "cases.json").read_text())


@pytest.mark.parametrize("case", _CASES, ids=[c["name"] for c in _CASES])
def test_recorded_json_payloads(case: dict[str, Any]) -> None:
    dec = decoder(**case["subscription"])
    got = decode(dec, case["topic"], json.dumps(case["payload"]))
    want = [Reading(d, m, v, u, NOW if ts == "now" else ts) for d, m, v, u, ts in
            case["readings"]]
    assert [(r.device, r.metric, r.unit) for r in got] == [(r.device, r.metric, r.unit)
                                                          for r in want]
    for g, w in zip(got, want, strict=True):
        assert g.value == pytest.approx(w.value) and type(g.value) is type(w.value)
        assert g.ts == pytest.approx(w.ts)
