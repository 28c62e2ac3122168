"""SenML JSON and CBOR (RFC 8428): real packs from the RFC and public implementations,
the two device modes, strict refusals, and arbitrary input raising only DecodeError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.payloads.base import Options, Source
from gateway.payloads.errors import REASONS, DecodeError
from gateway.payloads.senml import MAX_RECORDS, SenmlCbor, SenmlJson, decode_pack
from gateway.payloads.values import Units
from gateway.reading import Reading

FIXTURES = Path(__file__).parent / "fixtures" / "payloads" / "senml"
NOW = 1_700_000_000.0
PREFIX = "senml"
BY_PACK = Source(PREFIX)                 # the pack names its devices
BY_TOPIC = Source(PREFIX, "dev1")        # the topic or path names the device


def rel(offset: float) -> float:
    """A time relative to the receive time (RFC 8428 §4.5.3)."""
    return NOW + offset


def load(name: str) -> tuple[SenmlJson | SenmlCbor, bytes]:
    data = (FIXTURES / name).read_bytes()
    if name.endswith(".cbor.hex"):
        return SenmlCbor(), bytes.fromhex(data.decode().strip())
    return SenmlJson(), data


URN = "urn:dev:ow:10e2073a01080063"
U6 = "urn:dev:ow:10e2073a0108006"  # §5.1.2's second example drops a digit
MAC = "urn:dev:mac:0b92569229fc9e68"
BT_512 = 1276020076.001
BT_513 = 1.320067464e09

# fixture → [(native device id, metric, value, unit, ts)]
VALID: dict[str, list[tuple[str, str, Any, str | None, float]]] = {
    "rfc8428_5.1.1_single_data_point.json": [(URN, "temperature", 23.1, "Cel", rel(0))],
    "rfc8428_5.1.2_multiple_data_points.json": [
        (URN, "voltage", 120.1, "V", rel(0)), (URN, "current", 1.2, "A", rel(0))],
    "rfc8428_5.1.2_multiple_data_points_with_time.json": [
        (U6, "voltage", 120.1, "V", BT_512),
        (U6, "current", 1.2, "A", BT_512 - 5), (U6, "current", 1.3, "A", BT_512 - 4),
        (U6, "current", 1.4, "A", BT_512 - 3), (U6, "current", 1.5, "A", BT_512 - 2),
        (U6, "current", 1.6, "A", BT_512 - 1), (U6, "current", 1.7, "A", BT_512)],
    "rfc8428_5.1.3_multiple_measurements.json": [
        (URN, "humidity", 20, "%RH", BT_513), (URN, "longitude", 24.30621, "lon", BT_513),
        (URN, "latitude", 60.07965, "lat", BT_513),
        (URN, "humidity", 20.3, "%RH", BT_513 + 60),
        (URN, "longitude", 24.30622, "lon", BT_513 + 60),
        (URN, "latitude", 60.07965, "lat", BT_513 + 60),
        (URN, "humidity", 20.7, "%RH", BT_513 + 120),
        (URN, "longitude", 24.30623, "lon", BT_513 + 120),
        (URN, "latitude", 60.07966, "lat", BT_513 + 120),
        (URN, "battery", 98, "%EL", BT_513 + 150),
        (URN, "humidity", 21.2, "%RH", BT_513 + 180),
        (URN, "longitude", 24.30628, "lon", BT_513 + 180),
        (URN, "latitude", 60.07967, "lat", BT_513 + 180)],
    "rfc8428_5.1.5_multiple_data_types.json": [
        (URN, "temp", 23.1, "Cel", rel(0)), (URN, "label", "Machine Room", None, rel(0)),
        (URN, "open", False, None, rel(0)), (URN, "nfv_reader", "aGkgCg", None, rel(0))],
    "rfc8428_5.1.6_collection_of_resources.json": [
        ("2001:db8::2", "temperature", 25.2, "Cel", 1.320078429e09),
        ("2001:db8::2", "humidity", 30, "%RH", 1.320078429e09),
        ("2001:db8::1", "temperature", 12.3, "Cel", 1.320078429e09),
        ("2001:db8::1", "humidity", 67, "%RH", 1.320078429e09)],
    "rfc8428_5.1.7_setting_an_actuator.json": [
        (URN, "temp", 23.1, "Cel", rel(0)), (URN, "heat", 1, "/", rel(0)),
        (URN, "fan", 0, "/", rel(0))],
    "eistec_senml_python_test.json": [
        (MAC, "rpm_fwd", 17.666544, "1/min", 1234567895.123),
        (MAC, "rpm_fwd_sum", 0.05, "count", 1234567895.123),        # 3 (1/min)·s
        (MAC, "rpm_rev", 123.456, "1/min", 1234567897.123),
        (MAC, "rpm_rev_sum", 0.0666666666667, "count", 1234567897.123),
        (MAC, "rpm_bool", True, None, 1234567891.123),
        (MAC, "rpm_str", "hej", None, 1234567892.123)],
    "farshidtz_codec_json_reference.json": [
        ("dev123", "temp", 22.1, "Cel", rel(-46.67)),
        ("dev123", "temp_sum", 0, None, rel(-46.67)),                # Cel·s has no name
        ("dev123", "room", "kitchen", None, rel(-46.67)),
        ("dev123", "data", "abc", None, rel(-45.67)),
        ("dev123", "ok", True, None, rel(-45.67))],
    "farshidtz_example_decode.json": [
        ("room1", "temp", 23.5, "Cel", 1276020076.305),
        ("room1", "temp", 23.6, "Cel", 1276020091.305)],
    "farshidtz_example_encode_output.json": [
        ("room1", "air_quality", "good", None, 1276020000.0),
        ("room1", "air_quality", "excellent", None, 1276020100.0),
        ("room1", "temp", 22.1, "Cel", 1276020100.0)],
}
# the resolved form of §5.1.3 gives the same readings; so does §6, the CBOR of §5.1.2
VALID["rfc8428_5.1.4_resolved_data.json"] = VALID["rfc8428_5.1.3_multiple_measurements.json"]
VALID["rfc8428_6_cbor_example.cbor.hex"] = VALID[
    "rfc8428_5.1.2_multiple_data_points_with_time.json"]

REFUSED: dict[str, tuple[str, str]] = {
    "farshidtz_codec_cbor_reference.cbor.hex": ("bad_senml", "vd must be a byte string"),
    "riot_senml_cbor_encoder_output.cbor.hex": ("bad_senml", "'CBOR test' breaks RFC 8428"),
    "riot_senml_json_encoder_output.txt": ("bad_json", "not valid JSON"),
    "wakaama_lwm2m_device_object.json": ("bad_senml", "'/3/0/0' breaks RFC 8428"),
    "wakaama_bver_11.json": ("bad_senml", "version 11 is newer than the version 10"),
    "wakaama_mandatory_label.json": ("bad_senml", "'test_' must be understood"),
}


def rows(readings: list[Reading]) -> list[tuple[str, str, Any, str | None]]:
    return [(r.device, r.metric, r.value, r.unit) for r in readings]


def test_every_fixture_is_listed_and_sourced() -> None:
    files = {p.name for p in FIXTURES.iterdir()} - {"SOURCES.md"}
    assert files == set(VALID) | set(REFUSED)
    sources = (FIXTURES / "SOURCES.md").read_text()
    assert all(f"`{name}`" in sources for name in files)


@pytest.mark.parametrize("name", sorted(VALID))
@pytest.mark.parametrize("source", [BY_PACK, BY_TOPIC], ids=["by_pack", "by_topic"])
def test_fixture_readings(name: str, source: Source) -> None:
    fmt, payload = load(name)
    got = fmt.decode(payload, source, NOW)
    want = VALID[name]
    def device(native: str) -> str:
        return f"{PREFIX}:{native}" if source.native is None else "senml:dev1"

    assert rows(got) == [(device(d), m, v, u) for d, m, v, u, _ in want]
    assert [type(r.value) for r in got] == [type(v) for _, _, v, _, _ in want]
    assert [r.ts for r in got] == pytest.approx([ts for *_, ts in want], abs=1e-6)


@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("source", [BY_PACK, BY_TOPIC], ids=["by_pack", "by_topic"])
def test_fixture_refused(name: str, source: Source) -> None:
    fmt, payload = load(name)
    reason, message = REFUSED[name]
    with pytest.raises(DecodeError, match=message) as err:
        fmt.decode(payload, source, NOW)
    assert err.value.reason == reason


def test_riot_cbor_pack_with_a_valid_base_name() -> None:
    """RIOT's pack once its base name is legal: half floats, tag-4 decimals, vd bytes."""
    _, payload = load("riot_senml_cbor_encoder_output.cbor.hex")
    pack = cbor2.loads(payload)
    pack[0][-2] = "CBOR-test"
    got = SenmlCbor().decode(cbor2.dumps(pack), BY_TOPIC, NOW)
    bt = 1619264720
    assert [(r.metric, r.value, r.unit, r.ts) for r in got] == [
        ("cbor_test", 61.5, "m", bt), ("cbor_test", 61.5, None, bt + 1),
        ("cbor_test", 61, None, bt + 2), ("cbor_test", 61, None, bt + 3),
        ("cbor_test", 61.5, None, bt + 4), ("cbor_test", True, None, bt + 5),
        ("cbor_test", "RIOT OS", None, bt + 6), ("cbor_test", "AAECAw", None, bt + 7),
        ("cbor_test_sum", 61, None, bt)]  # kg·s has no SenML name
    # when the pack must name the device, a one-part name names it and no metric is left
    with pytest.raises(DecodeError, match="names no quantity") as err:
        SenmlCbor().decode(cbor2.dumps(pack), BY_PACK, NOW)
    assert err.value.reason == "bad_name"


def decode(pack: Any, source: Source = BY_PACK, now: float = NOW) -> list[Reading]:
    return SenmlJson().decode(json.dumps(pack).encode(), source, now)


# -- device and metric from the name ------------------------------------------------------

@pytest.mark.parametrize(("pack", "device", "metric"), [
    ([{"bn": "urn:dev:ow:10e2073a01080063:", "n": "temp", "u": "Cel", "v": 1}],
     "urn:dev:ow:10e2073a01080063", "temp"),
    # no bn: the full name in n is split at its last ':' or '/' (refused before)
    ([{"n": "urn:dev:ow:10e2073a01080063:temp", "u": "Cel", "v": 1}],
     "urn:dev:ow:10e2073a01080063", "temp"),
    ([{"n": "gw-7/temp", "u": "Cel", "v": 1}], "gw-7", "temp"),
    # no n: the base name is the name (refused before)
    ([{"bn": "urn:dev:ow:10e2073a01080063:temp", "u": "Cel", "v": 1}],
     "urn:dev:ow:10e2073a01080063", "temp"),
    ([{"bn": "urn:dev:ow:10e2073a01080063", "u": "Cel", "v": 1}],
     "urn:dev:ow:10e2073a01080063", "temperature"),
    # a bare RFC 9039 device URN names the device even when its id starts with a letter
    ([{"n": "urn:dev:mac:abcdef0123456789", "u": "%RH", "v": 1}],
     "urn:dev:mac:abcdef0123456789", "humidity"),
    # device ids hold no '/': the path after the first one goes to the metric
    ([{"bn": "2001:db8::2/room/", "n": "temp", "u": "Cel", "v": 1}], "2001:db8::2",
     "room_temp"),
    ([{"bn": "sensor-1.", "n": "batteryLevel", "u": "%EL", "v": 1}], "sensor-1",
     "battery_level"),
])
def test_names_split_into_device_and_metric(pack: Any, device: str, metric: str) -> None:
    assert rows(decode(pack))[0][:2] == (f"senml:{device}", metric)
    assert rows(decode(pack, BY_TOPIC))[0][:2] == ("senml:dev1", metric)


def test_one_part_name_is_the_metric_when_the_topic_names_the_device() -> None:
    pack = [{"bn": "thermometer", "u": "Cel", "v": 21}]
    assert rows(decode(pack, BY_TOPIC)) == [("senml:dev1", "thermometer", 21, "Cel")]
    assert rows(decode(pack)) == [("senml:thermometer", "temperature", 21, "Cel")]


@pytest.mark.parametrize(("pack", "reason", "message"), [
    # a one-part name, with no device in the topic, names the device: no metric is left
    ([{"n": "temp", "v": 1}], "bad_name", "'temp' names no quantity"),
    ([{"bn": "urn:dev:ow:10e2073a01080063", "v": 1}], "bad_name", "names no quantity"),
    ([{"bn": "urn:dev:ow:10e2073a01080063", "u": "dB", "v": 1}], "bad_name",
     "names no quantity"),
    ([{"bn": "d:", "n": "__", "v": 1}], "bad_name", "no usable metric"),
    ([{"v": 1}], "bad_senml", "no name"),
    ([{"bn": "a" * 300 + ":", "n": "x", "v": 1}], "bad_name", "longer than 256"),
    ([{"bn": "a" * 200 + ":", "n": "x", "v": 1}], "no_device", "unusable device id"),
])
def test_names_that_give_no_device_or_metric(pack: Any, reason: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as err:
        decode(pack)
    assert err.value.reason == reason


# -- values, sums, times, units -----------------------------------------------------------

def test_base_value_base_sum_and_base_unit() -> None:
    got = decode([{"bn": "m:", "bv": 100, "bs": 1000, "bu": "W", "n": "p", "v": 5, "s": 7},
                  {"n": "q", "v": 1.5},
                  {"n": "r", "u": "kW", "s": 2}])
    assert rows(got) == [
        ("senml:m", "p", 105, "W"), ("senml:m", "p_sum", 1007, "J"),
        ("senml:m", "q", 101.5, "W"),  # no s: no sum, whatever bs says
        ("senml:m", "r_sum", 1002000.0, "J")]  # (1000 + 2) kW·s, a sum with no value


def test_a_sum_alone_is_a_reading_and_base_only_records_are_none() -> None:
    got = decode([{"bn": "meter:", "bver": 10},
                  {"n": "flow", "u": "l/s", "s": 12.5, "t": -10},
                  {"bt": 1_690_000_000}])
    assert [(r.metric, r.value, r.unit, r.ts) for r in got] == [
        ("flow_sum", 12.5, "l", NOW - 10)]


def test_relative_and_absolute_times() -> None:
    got = decode([{"bn": "d:", "bt": 1_690_000_000, "n": "a", "v": 1, "t": 5},
                  {"bt": -60, "n": "b", "v": 2},
                  {"bt": 0, "n": "c", "v": 3, "t": 2**28}])
    assert [r.ts for r in got] == [1_690_000_005.0, NOW - 60, float(2**28)]


def test_units_are_normalised_and_unknown_units_refused() -> None:
    got = decode([{"bn": "d:", "n": "t", "u": "°F", "v": 212},
                  {"n": "p", "u": "hPa", "v": 1013.2}])
    assert rows(got) == [("senml:d", "t", 100.0, "Cel"), ("senml:d", "p", 101320.0, "Pa")]
    with pytest.raises(DecodeError, match="furlongs") as err:
        decode([{"n": "d:x", "u": "furlongs", "v": 1}])
    assert err.value.reason == "bad_unit"
    with pytest.raises(DecodeError) as err:  # a text value with an unknown unit too
        decode([{"n": "d:x", "u": "furlongs", "vs": "a"}])
    assert err.value.reason == "bad_unit"


def test_data_values_are_base64url_text() -> None:
    assert decode([{"n": "d:blob", "vd": "AP8"}])[0].value == "AP8"
    got = SenmlCbor().decode(cbor2.dumps([{0: "d:blob", 8: b"\x00\xff\xfe"}]), BY_PACK, NOW)
    assert got[0].value == "AP_-"
    assert decode([{"n": "d:blob", "vd": ""}])[0].value == ""


@pytest.mark.parametrize(("rec", "reason", "message"), [
    ({"vd": "AP8="}, "bad_senml", "base64url without padding"),
    ({"vd": "AP+/"}, "bad_senml", "base64url"),
    ({"vd": "A"}, "bad_senml", "base64url"),
    ({"vd": "A" * 257}, "bad_value", "at most 256"),
    ({"vd": 5}, "bad_senml", "vd must be base64url text"),
])
def test_bad_data_values(rec: dict[str, Any], reason: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as err:
        decode([{"n": "d:x", **rec}])
    assert err.value.reason == reason


def test_long_cbor_data_is_refused() -> None:
    got = SenmlCbor().decode(cbor2.dumps([{0: "d:x", 8: bytes(192)}]), BY_PACK, NOW)
    assert got[0].value == "A" * 256
    with pytest.raises(DecodeError, match="at most 192 bytes") as err:
        SenmlCbor().decode(cbor2.dumps([{0: "d:x", 8: bytes(193)}]), BY_PACK, NOW)
    assert err.value.reason == "bad_value"


# -- strict refusals ----------------------------------------------------------------------

@pytest.mark.parametrize(("pack", "reason", "message"), [
    ([{"n": "d:x", "v": 1, "vs": "a"}], "bad_senml", "v and vs in one record"),
    ([{"n": "d:x", "vb": True, "vd": "AA"}], "bad_senml", "vb and vd in one record"),
    ([{"n": "d:x y", "v": 1}], "bad_senml", "breaks RFC 8428 §4.5.1"),
    ([{"n": "-d:x", "v": 1}], "bad_senml", "breaks RFC 8428 §4.5.1"),
    ([{"bn": "d:", "n": "é", "v": 1}], "bad_senml", "breaks RFC 8428 §4.5.1"),
    ([{"bver": 99, "n": "d:x", "v": 1}], "bad_senml", "version 99 is newer"),
    ([{"bver": 0, "n": "d:x", "v": 1}], "bad_senml", "positive integer"),
    ([{"bver": 10.0, "n": "d:x", "v": 1}], "bad_senml", "positive integer"),
    ([{"bver": 5, "n": "d:x", "v": 1}, {"bver": 10, "n": "d:y", "v": 1}], "bad_senml",
     "every record must have the same"),
    ([{"n": "d:x", "v": 1}, {"bver": 5, "n": "d:y", "v": 1}], "bad_senml",
     "differs from the pack's version 10"),
    ([{"n": "d:x", "v": 1, "crit_": 1}], "bad_senml", "'crit_' must be understood"),
    ([{"n": "d:x", "v": "1"}], "bad_senml", "v must be a number, not text"),
    ([{"n": "d:x", "v": True}], "bad_senml", "v must be a number"),
    ([{"n": "d:x", "vb": "true"}], "bad_senml", "vb must be true or false"),
    ([{"n": "d:x", "vs": 5}], "bad_senml", "vs must be text"),
    ([{"n": 5, "v": 1}], "bad_senml", "n must be text"),
    ([{"bn": 5, "n": "x", "v": 1}], "bad_senml", "bn must be text"),
    ([{"n": "d:x", "u": 7, "v": 1}], "bad_senml", "u must be text"),
    ([{"bt": "yesterday", "n": "d:x", "v": 1}], "bad_senml", "bt must be a number"),
    ([{"n": "d:x", "v": 1, "ut": "soon"}], "bad_senml", "ut must be a number"),
    ([{"n": "d:x", "s": None}], "bad_senml", "s must be a number, not null"),
    ([{"n": "d:x"}], "bad_senml", "no value"),
    ([{"n": "d:x", "t": 5}], "bad_senml", "no value"),
    ([{"n": "d:x", "v": 2**64}], "bad_value", "64-bit"),
    ([{"n": "d:x", "v": 1.7e308, "bv": 1.7e308}], "bad_value", "once its base is added"),
    ([{"n": "d:x", "v": 1, "t": 1e308, "bt": 1e308}], "bad_time", "not a finite time"),
    ([{"n": "d:x", "vs": "s" * 257}], "bad_value", "at most 256"),
    ([{"n": "d:x", "vs": "\ud800"}], "bad_value", "not valid Unicode"),
    ([], "no_values", "no values"),
    ([{"bn": "d:"}], "no_values", "no values"),
    ({"n": "d:x", "v": 1}, "bad_senml", "array of records"),
    ([5], "bad_senml", "record 0: a record is a map"),
])
def test_refused_packs(pack: Any, reason: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as err:
        decode(pack)
    assert err.value.reason == reason


def test_record_bound() -> None:
    ok = [{"bn": "d:", "n": "x", "v": 1}] + [{"n": "x", "v": i} for i in range(MAX_RECORDS - 1)]
    assert len(decode(ok)) == MAX_RECORDS
    with pytest.raises(DecodeError, match="1001 records") as err:
        decode(ok + [{"n": "x", "v": 0}])
    assert err.value.reason == "bad_senml"


@pytest.mark.parametrize(("pack", "message"), [
    ([{"n": "d:x", "v": 1}], "text label 'n' in SenML CBOR: use the integer label 0"),
    ([{0: "d:x", 2: 1, "v_": 1}], "'v_' must be understood"),
    ([{0: "d:x", 8: "AP8"}], "vd must be a byte string"),
    ([{0: "d:x", 2: 10**400}], "beyond the 64-bit"),
    ([{0: "d:x", 6: 10**400, 2: 1}], "beyond the 64-bit"),
    ([{0: "d:x", 2: float("nan")}], "finite number"),
    ([{0: "d:x", 2: cbor2.CBORTag(99, 1)}], "v must be a number, not CBORTag"),
    ([{0: "d:x", 2: cbor2.CBORTag(4, [1, 10**400])}], "v must be a finite number"),
])
def test_cbor_refusals(pack: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        SenmlCbor().decode(cbor2.dumps(pack), BY_PACK, NOW)


def test_cbor_ignores_unknown_labels_and_reads_decimal_fractions() -> None:
    payload = cbor2.dumps([{-2: "d:", 0: "x", 2: cbor2.CBORTag(4, [-2, 12345]), 99: "?",
                            "ext": 1}])
    assert rows(SenmlCbor().decode(payload, BY_PACK, NOW)) == [("senml:d", "x", 123.45, None)]


def test_decode_pack_serves_the_coap_adapter_directly() -> None:
    units = Units()
    got = decode_pack([{-2: "d:", 0: "x", 2: 1}], BY_PACK, NOW, units, cbor=True)
    assert rows(got) == [("senml:d", "x", 1, None)]
    with pytest.raises(DecodeError):
        decode_pack([{-2: "d:", 0: "x", 2: 1}], BY_PACK, NOW, units)  # JSON: no int labels


def test_format_metadata_and_options() -> None:
    assert (SenmlJson.name, SenmlJson.content_formats) == ("senml", (110,))
    assert (SenmlCbor.name, SenmlCbor.content_formats) == ("senml+cbor", (112,))
    assert SenmlJson.names_devices and SenmlCbor.names_devices
    SenmlJson.check(Options(), frozenset())
    SenmlCbor.check(Options(), frozenset({"device"}))
    with pytest.raises(ValueError, match="unit"):
        SenmlJson.check(Options(unit="Cel"), frozenset())
    with pytest.raises(ValueError, match="timestamp"):
        SenmlCbor.check(Options(timestamp="ts"), frozenset())


# -- nothing but DecodeError, whatever the input ------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd",
                         "s", "t", "ut", "x_", "other"]) | st.text(max_size=5), inner,
        max_size=6),
    max_leaves=30)
LABEL_KEYS = st.integers(-7, 9) | st.sampled_from(["n", "x_", "ext"])
CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(LABEL_KEYS, inner, max_size=6),
    max_leaves=30)


def _only_decode_error(fmt: SenmlJson | SenmlCbor, payload: bytes, source: Source) -> None:
    try:
        fmt.decode(payload, source, NOW)
    except DecodeError as exc:
        assert exc.reason in REASONS


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_arbitrary_json_raises_only_decode_error(value: Any, by_topic: bool) -> None:
    payload = json.dumps([value] if isinstance(value, dict) else value).encode()
    _only_decode_error(SenmlJson(), payload, BY_TOPIC if by_topic else BY_PACK)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(payload: bytes) -> None:
    _only_decode_error(SenmlJson(), payload, BY_PACK)
    _only_decode_error(SenmlCbor(), payload, BY_PACK)


@settings(max_examples=400, deadline=None)
@given(CBOR_VALUES, st.booleans())
def test_arbitrary_cbor_packs_raise_only_decode_error(value: Any, by_topic: bool) -> None:
    payload = cbor2.dumps([value] if isinstance(value, dict) else value)
    _only_decode_error(SenmlCbor(), payload, BY_TOPIC if by_topic else BY_PACK)
