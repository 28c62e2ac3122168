"""LoRaWAN payload decoders: Cayenne LPP, declarative byte layouts, codec objects, field maps."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.adapters.lorawan.config import LayoutField, LorawanConfig, ProfileConfig
from gateway.adapters.lorawan.decode import (
    DecodeError,
    apply_fields,
    decode_layout,
    flatten_object,
)
from gateway.payloads.lpp import decode_lpp


def test_cayenne_reference_payloads_decode_to_senml_units() -> None:
    # the examples of the Cayenne LPP specification, with The Things Stack's key names
    from gateway.adapters.lorawan import decode as lorawan_decode

    # the profile decoder is the payloads package's, not a copy
    assert lorawan_decode.decode_lpp is decode_lpp
    assert decode_lpp(bytes.fromhex("03670110056700ff")) == [
        ("temperature_3", 27.2, "Cel"), ("temperature_5", 25.5, "Cel")]
    assert decode_lpp(bytes.fromhex("0167ffd7")) == [("temperature_1", -4.1, "Cel")]
    assert decode_lpp(bytes.fromhex("067104d2fb2e0000")) == [
        ("accelerometer_6_x", round(1.234 * 9.80665, 5), "m/s2"),
        ("accelerometer_6_y", round(-1.234 * 9.80665, 5), "m/s2"),
        ("accelerometer_6_z", 0.0, "m/s2")]
    assert decode_lpp(bytes.fromhex("018806765ff2960a0003e8")) == [
        ("gps_1_latitude", 42.3519, "lat"), ("gps_1_longitude", -87.9094, "lon"),
        ("gps_1_altitude", 10.0, "m")]


def test_cayenne_humidity_pressure_presence_and_illuminance() -> None:
    got = decode_lpp(bytes.fromhex("0268610473279505660106650190"))
    # presence keeps the integer the device sent, as every LPP decoder does
    assert got == [("relative_humidity_2", 48.5, "%RH"), ("barometric_pressure_4", 101330, "Pa"),
                   ("presence_5", 1, None), ("luminosity_6", 400, "lx")]


@pytest.mark.parametrize("payload", ["0367", "036701", "03ff0000", "0688010203"])
def test_cayenne_truncated_or_unknown_payload_is_an_error(payload: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_lpp(bytes.fromhex(payload))
    assert err.value.reason == "bad_frame"


def test_layout_reads_fields_in_sequence_and_at_offsets() -> None:
    layout = [
        LayoutField(name="temperature", type="int16", scale=0.01, unit="Cel"),
        LayoutField(name="humidity", type="uint8", scale=0.5, unit="%RH"),
        LayoutField(name="count", type="uint24", endian="little"),
        LayoutField(name="door_open", type="bool", offset=6, bit=2),
        LayoutField(name="flow", type="float32", offset=7, decimals=2, unit="m3/s"),
    ]
    data = bytes.fromhex("f8a4" "5b" "102700" "04" "3fc00000")
    assert decode_layout(data, layout) == [
        ("temperature", -18.84, "Cel"), ("humidity", 45.5, "%RH"), ("count", 10000, None),
        ("door_open", True, None), ("flow", 1.5, "m3/s")]


def test_layout_short_payload_names_the_field() -> None:
    layout = [LayoutField(name="a", type="uint16"), LayoutField(name="b", type="int32")]
    with pytest.raises(DecodeError, match="'b'") as err:
        decode_layout(b"\x00\x01\x02", layout)
    assert err.value.reason == "bad_frame"


def test_object_flattening_and_field_map() -> None:
    obj = {"TempC_SHT": 21.5, "sensor": {"batV": 3.0, "status": "ok"}, "list": [1.0, 2.5],
           "nothing": None}
    profile = ProfileConfig(fields={"TempC_SHT": {"metric": "temperature", "unit": "Cel"},
                                    "sensor_batV": {"metric": "battery_voltage", "unit": "V",
                                                    "scale": 1000, "offset": 0},
                                    "list_1": {"drop": True}})
    got = apply_fields(flatten_object(obj), profile)
    assert got == [("temperature", 21.5, "Cel"), ("battery_voltage", 3000, "V"),
                   ("sensor_status", "ok", None), ("list_0", 1, None)]
    strict = profile.model_copy(update={"unmapped": "drop"})
    assert [m for m, _, _ in apply_fields(flatten_object(obj), strict)] == [
        "temperature", "battery_voltage"]


def test_unmapped_keys_are_named_by_the_shared_metric_name_function() -> None:
    # the same names every other adapter gives (gateway.payloads.names.metric_name)
    keep = ProfileConfig()
    got = apply_fields([("TempC_SHT", 1, None), ("batV", 2, None), ("PM2.5", 3, None),
                        ("1st", 4, None), ("2nd_sensor", 5, None), ("tempC", 6, None),
                        ("HTTPCode", 7, None)], keep)
    assert [m for m, _, _ in got] == ["temp_c_sht", "bat_v", "pm2_5", "m_1st", "m_2nd_sensor",
                                      "temp_c", "http_code"]


def test_config_requires_scope_and_a_token() -> None:
    with pytest.raises(ValidationError, match="tenant_id"):
        LorawanConfig.model_validate({"type": "lorawan", "api_token": "x"})
    with pytest.raises(ValidationError, match="api_token"):
        LorawanConfig.model_validate({"type": "lorawan", "tenant_id": "t"})
    with pytest.raises(ValidationError, match="layout"):
        ProfileConfig.model_validate({"decoder": "layout"})
    with pytest.raises(ValidationError, match="hex"):
        LorawanConfig.model_validate({"type": "lorawan", "api_token": "x", "tenant_id": "t",
                                      "profiles": {"p": {"commands": {
                                          "open": {"f_port": 1, "data": "xyz"}}}}})
    cfg = LorawanConfig.model_validate({"type": "lorawan", "api_token": "s3cret",
                                        "applications": ["a"]})
    assert "s3cret" not in repr(cfg)


def test_unit_aliases_become_senml_names_with_conversion() -> None:
    profile = ProfileConfig(fields={"t": {"metric": "temperature", "unit": "°F"},
                                    "p": {"metric": "pressure", "unit": "hPa"}})
    assert apply_fields([("t", 212.0, None), ("p", 1013.25, None)], profile) == [
        ("temperature", 100.0, "Cel"), ("pressure", 101325.0, "Pa")]
    layout = [LayoutField(name="voltage", type="uint16", unit="mV")]
    assert decode_layout(b"\x0b\xb8", layout) == [("voltage", 3.0, "V")]
    with pytest.raises(ValidationError, match="unknown unit"):
        ProfileConfig(fields={"t": {"unit": "degrees"}})


def test_struct_conversion_matches_the_protobuf_json_mapping() -> None:
    from google.protobuf import json_format, struct_pb2

    from gateway.adapters.lorawan.decode import struct_to_dict

    s = struct_pb2.Struct()
    s.update({"a": 1.5, "b": "x", "c": True, "d": None, "e": {"f": [1.0, "g", {"h": False}]},
              "i": []})
    assert struct_to_dict(s) == json_format.MessageToDict(s)
