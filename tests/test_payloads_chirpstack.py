"""``format: chirpstack``: ChirpStack's documented MQTT integration events become readings.

The fixtures (tests/fixtures/payloads/chirpstack/, SOURCES.md says where each comes from)
give the exact metric, value, unit and time of every reading.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from chirpstack_api.integration import integration_pb2 as integration
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.payloads import format_class
from gateway.payloads.base import Options, Source
from gateway.payloads.chirpstack import (
    MAX_EVENT,
    ChirpstackEvent,
    parse_event,
    parse_json,
)
from gateway.payloads.errors import REASONS, DecodeError

FIXTURES = Path(__file__).parent / "fixtures" / "payloads" / "chirpstack"
EXPECTED: list[dict[str, Any]] = json.loads((FIXTURES / "expected.json").read_text())
NOW = 1_800_000_000.5
FMT = ChirpstackEvent()
UP = "application/app-1/device/0101010101010101/event/up"
STATUS = "application/app-1/device/0101010101010101/event/status"


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def doc(name: str) -> dict[str, Any]:
    return json.loads(body(name))


def decode(payload: bytes | dict[str, Any], topic: str = UP) -> list[tuple[Any, ...]]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return [tuple(r) for r in FMT.decode(raw, Source("cs", topic=topic), NOW)]


@pytest.mark.parametrize("case", EXPECTED, ids=[c["file"] for c in EXPECTED])
def test_documented_events_give_their_readings(case: dict[str, Any]) -> None:
    got = FMT.decode(body(case["file"]), Source("cs", topic=case["topic"]), NOW)
    assert [(r.metric, r.value, r.unit) for r in got] == [tuple(x) for x in case["readings"]]
    assert {r.device for r in got} == {f"cs:{case['device']}"}
    assert {r.ts for r in got} == {case["ts"]}
    assert [type(r.value) for r in got] == [type(x[1]) for x in case["readings"]]


def test_protobuf_bodies_give_the_same_readings_as_json() -> None:
    for case in EXPECTED:
        kind = case["topic"].rsplit("/", 1)[-1]
        msg = parse_json(kind, body(case["file"]))
        source = Source("cs", topic=case["topic"])
        assert FMT.decode(msg.SerializeToString(), source, NOW) == \
            FMT.decode(body(case["file"]), source, NOW)


def test_codec_object_keys_get_the_shared_metric_names() -> None:
    up = doc("up.json")
    up["object"] = {"tempC": 21.5, "2nd_sensor": 3, "batteryLevel": 87, "env": {"Humidity": 41},
                    "list": [1, "two", None, True], "on": False, "!!": 1, "nothing": None,
                    "status": "ok"}
    got = {m: (v, u) for _, m, v, u, _ in decode(up)}
    assert {k: got[k] for k in ("temp_c", "m_2nd_sensor", "battery_level", "env_humidity",
                                "list_0", "list_1", "list_3", "on", "status")} == {
        "temp_c": (21.5, None), "m_2nd_sensor": (3, None), "battery_level": (87, None),
        "env_humidity": (41, None), "list_0": (1, None), "list_1": ("two", None),
        "list_3": (True, None), "on": (False, None), "status": ("ok", None)}
    assert "" not in got and "nothing" not in got and "list_2" not in got
    assert type(got["battery_level"][0]) is int  # a Struct's 87.0 is given back as 87


def test_an_event_with_an_empty_deveui_is_refused() -> None:
    # gave readings for device "cs:" before
    for eui in ("", "   ", "not-an-eui", "01010101010101"):
        up = doc("up.json")
        up["deviceInfo"]["devEui"] = eui
        with pytest.raises(DecodeError) as err:
            decode(up)
        assert err.value.reason == "no_device"
    up = doc("up.json")
    del up["deviceInfo"]
    with pytest.raises(DecodeError) as err:
        decode(up)
    assert err.value.reason == "no_device"


def test_upper_case_deveui_is_lower_cased_as_chirpstack_writes_it() -> None:
    up = doc("up.json")
    up["deviceInfo"]["devEui"] = "A84041000181C8A1"
    assert {d for d, *_ in decode(up)} == {"cs:a84041000181c8a1"}


@pytest.mark.parametrize(("change", "battery"), [
    ({"batteryLevel": "NaN"}, None),              # protobuf JSON's NaN: was stored as nan
    ({"batteryLevel": "Infinity"}, None),
    ({"batteryLevel": 120.0}, None),               # not a percentage
    ({"batteryLevel": -1.0}, None),
    ({"batteryLevelUnavailable": True, "batteryLevel": 0}, None),
    ({"externalPowerSource": True, "batteryLevel": 0}, None),
    ({"batteryLevel": 0}, 0.0),                    # an empty battery is a level
    ({"batteryLevel": 100}, 100.0),
])
def test_battery_level_only_when_it_is_a_level(change: dict[str, Any],
                                              battery: float | None) -> None:
    status = {**doc("status.json"), **change}
    got = {m: v for _, m, v, _, _ in decode(status, STATUS)}
    assert got.get("battery") == battery
    assert got["link_margin"] == 10
    assert got["external_power"] is bool(change.get("externalPowerSource", False))


def test_nan_battery_in_a_protobuf_body_is_left_out() -> None:
    ev = integration.StatusEvent(margin=3, battery_level=math.nan)
    ev.device_info.dev_eui = "0101010101010101"
    got = FMT.decode(ev.SerializeToString(), Source("cs", topic=STATUS), NOW)
    assert [(r.metric, r.value) for r in got] == [("link_margin", 3), ("external_power", False)]
    assert {r.ts for r in got} == {NOW}  # no time in the event: the receive time


def test_a_bare_nan_constant_is_not_json() -> None:
    raw = body("status.json").replace(b"88.3", b"NaN")
    with pytest.raises(DecodeError) as err:
        FMT.decode(raw, Source("cs", topic=STATUS), NOW)
    assert err.value.reason == "bad_json"


def test_non_finite_snr_and_a_clock_before_2001_are_not_readings() -> None:
    up = doc("up.json")
    up["rxInfo"] = [{"rssi": -100, "snr": "NaN"}, {"rssi": -90, "snr": "-Infinity"}]
    up["time"] = "1970-01-01T00:00:10Z"
    got = decode(up)
    assert [(m, v) for _, m, v, _, _ in got] == [("rssi", -90), ("frame_counter", 0),
                                                 ("data_rate", 1)]
    assert {ts for *_, ts in got} == {NOW}


@pytest.mark.parametrize(("payload", "topic", "reason"), [
    (b"{", UP, "bad_json"),
    (b"[1, 2]", UP, "bad_json"),
    (b'{"fCnt": "many"}', UP, "bad_json"),
    (b'{"time": "yesterday"}', UP, "bad_json"),
    (b"\xff\xff\xff", UP, "bad_shape"),                     # not protobuf either
    (b'{"deviceInfo": {"devEui": "0101010101010101"}}', "a/b/event/integration", "bad_format"),
    (b'{"deviceInfo": {"devEui": "0101010101010101"}}', "a/b/event/join", "no_values"),
    (b'{"deviceInfo": {"devEui": "0101010101010101"}}', "a/b/event/location", "no_values"),
    (b"{" + b" " * MAX_EVENT + b"}", UP, "bad_shape"),
])
def test_malformed_events_are_refused_with_their_reason(payload: bytes, topic: str,
                                                        reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        FMT.decode(payload, Source("cs", topic=topic), NOW)
    assert err.value.reason == reason


def test_an_object_too_large_or_too_deep_is_bounded() -> None:
    up = doc("up.json")
    up["object"] = {f"k{i}": i for i in range(1001)}
    with pytest.raises(DecodeError) as err:
        decode(up)
    assert err.value.reason == "bad_shape"
    deep: dict[str, Any] = {"v": 1}
    for _ in range(20):
        deep = {"a": deep}
    up["object"] = {"shallow": 2, "deep": deep}
    assert [m for _, m, *_ in decode(up)][:1] == ["shallow"]


def test_the_fast_json_path_agrees_with_protobufs_reference_parser() -> None:
    for case in EXPECTED:
        kind = case["topic"].rsplit("/", 1)[-1]
        ref = type(parse_json(kind, "{}"))()
        json_format.Parse(body(case["file"]), ref, ignore_unknown_fields=True)
        assert parse_json(kind, body(case["file"])) == ref
        assert parse_event(kind, body(case["file"])) == ref


def test_check_needs_no_device_placeholder_and_refuses_fields() -> None:
    ChirpstackEvent.check(Options(), frozenset())
    ChirpstackEvent.check(Options(), frozenset({"device"}))
    with pytest.raises(ValueError, match="fields"):
        ChirpstackEvent.check(Options.model_validate({"fields": {"a": {}}}), frozenset())
    assert format_class("chirpstack") is ChirpstackEvent
    assert ChirpstackEvent.names_devices


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                     st.integers(min_value=-(10**30), max_value=10**30), st.text(max_size=20))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=25)
_keys = st.sampled_from(["deviceInfo", "devEui", "object", "rxInfo", "rssi", "snr", "time",
                         "fCnt", "dr", "data", "margin", "batteryLevel", "location",
                         "latitude", "externalPowerSource", "batteryLevelUnavailable"])
_events = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=6)), max_leaves=25)
_topics = st.sampled_from([UP, STATUS, "a/b/event/location", "a/b/event/log", "a/b/event/x"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), _topics)
def test_any_bytes_give_readings_or_a_decode_error(data: bytes, topic: str) -> None:
    try:
        FMT.decode(data, Source("cs", topic=topic), NOW)
    except DecodeError as exc:
        assert exc.reason in REASONS and str(exc)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_json, _events), _topics)
def test_any_json_gives_readings_or_a_decode_error(value: Any, topic: str) -> None:
    if isinstance(value, dict) and isinstance(value.get("deviceInfo"), dict):
        value["deviceInfo"]["devEui"] = "0101010101010101"
    try:
        got = FMT.decode(json.dumps(value).encode(), Source("cs", topic=topic), NOW)
    except DecodeError as exc:
        assert exc.reason in REASONS and str(exc)
        return
    for r in got:
        assert r.device == "cs:0101010101010101" and r.metric
        assert not isinstance(r.value, float) or math.isfinite(r.value)
