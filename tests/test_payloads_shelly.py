"""Shelly formats: Gen1 topics and Gen2+ RPC notifications, from real payloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.payloads.base import Options, Source
from gateway.payloads.errors import REASONS, DecodeError
from gateway.payloads.shelly import MAX_COMPONENTS, ShellyGen1, ShellyRpc
from tests.payload_cases import assert_readings

FIXTURES = Path(__file__).parent / "fixtures" / "payloads" / "shelly"
NOW = 1_760_000_000.0
GEN1 = json.loads((FIXTURES / "gen1.json").read_text())
GEN2 = json.loads((FIXTURES / "gen2.json").read_text())


def gen1_source(topic: str) -> Source:
    """What the MQTT adapter gives for ``shellies/{device}/#``."""
    parts = topic.split("/")
    assert parts[0] == "shellies"
    rest = "/".join(parts[2:])
    return Source("mqtt", parts[1], topic, {"device": parts[1], "#": rest})


def rpc_source(topic: str, device: str | None) -> Source:
    slots = {} if device is None else {"device": device}
    return Source("mqtt", device, topic, slots)


def triples(readings: list[Any]) -> list[tuple[str, Any, str | None]]:
    return sorted(((r.metric, r.value, r.unit) for r in readings), key=lambda t: t[0])


@pytest.mark.parametrize("case", GEN1, ids=[f"{c['source']}:{c['topic'].split('/', 2)[2]}"
                                            for c in GEN1])
def test_gen1_fixture(case: dict[str, Any]) -> None:
    src = gen1_source(case["topic"])
    out = ShellyGen1().decode(case["payload"].encode(), src, NOW)
    assert triples(out) == sorted((tuple(e) for e in case["expect"]), key=lambda t: t[0])
    for r in out:
        assert r.device == f"mqtt:{src.native}"
        assert r.ts == NOW
        assert type(r.value) is type(next(e[1] for e in case["expect"] if e[0] == r.metric))


@pytest.mark.parametrize("case", GEN2, ids=[f"{c['source']}:{i}" for i, c in enumerate(GEN2)])
def test_gen2_fixture(case: dict[str, Any]) -> None:
    src = rpc_source(case["topic"], case["device"])
    out = ShellyRpc().decode(case["payload"].encode(), src, NOW)
    native = case["device"] or case["native"]
    got = sorted(((r.metric, r.value, r.unit, r.ts) for r in out), key=lambda t: t[0])
    want = sorted(((m, v, u, NOW if ts is None else ts) for m, v, u, ts in case["expect"]),
                  key=lambda t: t[0])
    assert_readings(got, want)
    assert all(r.device == f"mqtt:{native}" for r in out)


def test_gen1_overpower_is_off_and_flagged() -> None:
    out = ShellyGen1().decode(b"overpower", gen1_source("shellies/plug/relay/0"), NOW)
    assert triples(out) == [("relay_0", False, None), ("relay_0_overpower", True, None)]


def test_gen1_sensor_temperature_unit_from_options() -> None:
    src = gen1_source("shellies/shellyht-1/sensor/temperature")
    assert triples(ShellyGen1().decode(b"21.5", src, NOW)) == [("temperature", 21.5, "Cel")]
    fahrenheit = ShellyGen1(Options(units={"temperature": "°F"}))
    assert triples(fahrenheit.decode(b"212", src, NOW)) == [("temperature", 100.0, "Cel")]


def test_gen1_topic_without_hash_slot() -> None:
    """A template without '#' (shellies/{device}/relay/0/power): the suffix comes from the topic."""
    src = Source("mqtt", "plug", "shellies/plug/relay/0/power", {"device": "plug"})
    assert triples(ShellyGen1().decode(b"5", src, NOW)) == [("relay_0_power", 5, "W")]


@pytest.mark.parametrize("suffix, payload, reason", [
    ("relay/0", b"maybe", "bad_value"),
    ("relay/0/power", b"abc", "bad_value"),
    ("relay/0/power", b"1_000", "bad_value"),
    ("relay/0/power", b"nan", "bad_value"),
    ("relay/0/power", b"inf", "bad_value"),
    ("relay/0/power", b"", "bad_value"),
    ("relay/0/power", "٣".encode(), "bad_value"),
    ("relay/0/power", b"\xff\xfe", "bad_text"),
    ("relay/0/power", b"1" * 100, "bad_text"),
    ("sensor/state", b"ajar", "bad_value"),
    ("input/0", b"2", "bad_value"),
    ("light/0/status", b"{", "bad_json"),
    ("light/0/status", b"[]", "bad_shape"),
    ("light/0/status", b"{}", "no_values"),
    ("input_event/0", b'{"event": 5}', "no_values"),
    ("foo/bar", b"1", "no_values"),
    ("relay/x/power", b"1", "no_values"),
    ("sensor/unknown", b"1", "no_values"),
])
def test_gen1_malformed(suffix: str, payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        ShellyGen1().decode(payload, gen1_source(f"shellies/dev1/{suffix}"), NOW)
    assert exc.value.reason == reason


def _notify(params: Any, method: str = "NotifyStatus") -> bytes:
    return json.dumps({"src": "shellyplus1pm-a8032ab12345", "method": method,
                       "params": params}).encode()


@pytest.mark.parametrize("payload, reason", [
    (b"not json", "bad_json"),
    (b"[]", "bad_shape"),
    (b'{"src": "x"}', "bad_shape"),
    (b'{"method": "NotifyStatus", "params": []}', "bad_shape"),
    (_notify({"ts": 1.7e9, "switch:0": {"apower": "12 W"}}), "bad_value"),
    (_notify({"ts": 1.7e9, "switch:0": {"output": "on"}}), "bad_value"),
    (_notify({"ts": 1.7e9, "cover:0": {"state": ["open"]}}), "bad_value"),
    (_notify({"ts": 1.7e9, "events": {}}, "NotifyEvent"), "bad_shape"),
    (_notify({"ts": 1.7e9, "events": [1]}, "NotifyEvent"), "bad_shape"),
    (_notify({f"switch:{i}": {"output": True} for i in range(MAX_COMPONENTS + 1)}),
     "bad_shape"),
])
def test_gen2_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        ShellyRpc().decode(payload, rpc_source("dev1/events/rpc", "dev1"), NOW)
    assert exc.value.reason == reason


def test_gen2_device_from_src_needs_a_usable_id() -> None:
    payload = json.dumps({"src": "bad id", "method": "NotifyStatus",
                          "params": {"switch:0": {"output": True}}}).encode()
    with pytest.raises(DecodeError) as exc:
        ShellyRpc().decode(payload, rpc_source("x/events/rpc", None), NOW)
    assert exc.value.reason == "no_device"


def test_gen2_topics() -> None:
    fmt = ShellyRpc()
    assert fmt.decode(b"true", rpc_source("dev1/online", "dev1"), NOW) == []
    assert fmt.decode(b'{"id": 1, "result": {}}', rpc_source("dev1/events/rpc", "dev1"),
                      NOW) == []
    with pytest.raises(DecodeError) as exc:
        fmt.decode(b"1", rpc_source("dev1/elsewhere", "dev1"), NOW)
    assert exc.value.reason == "no_values"


def test_gen2_implausible_ts_is_receive_time() -> None:
    out = ShellyRpc().decode(_notify({"ts": 12, "temperature:0": {"id": 0, "tC": 21.5}}),
                             rpc_source("d/events/rpc", "d"), NOW)
    assert [(r.metric, r.value, r.unit, r.ts) for r in out] == [
        ("temperature_0", 21.5, "Cel", NOW)]


def test_gen2_devicepower_and_humidity() -> None:
    params = {"ts": 1700000000.5, "humidity:0": {"id": 0, "rh": 54.3},
              "devicepower:0": {"id": 0, "battery": {"V": 5.9, "percent": 88},
                                "external": {"present": False}}}
    out = ShellyRpc().decode(_notify(params, "NotifyFullStatus"), rpc_source("d/events/rpc", "d"),
                             NOW)
    assert triples(out) == [("devicepower_0_battery", 88, "%EL"),
                            ("devicepower_0_battery_voltage", 5.9, "V"),
                            ("devicepower_0_external_power", False, None),
                            ("humidity_0", 54.3, "%RH")]
    assert {r.ts for r in out} == {1700000000.5}


def test_check_messages() -> None:
    with pytest.raises(ValueError, match=r"shellies/\{device\}/#"):
        ShellyGen1.check(Options(), frozenset())
    ShellyGen1.check(Options(), frozenset({"device"}))
    ShellyRpc.check(Options(), frozenset())
    with pytest.raises(ValueError, match="events/rpc"):
        ShellyRpc.check(Options(), frozenset({"device", "metric"}))


def _only_decode_errors(fmt: Any, payload: bytes, src: Source) -> None:
    try:
        out = fmt.decode(payload, src, NOW)
    except DecodeError as exc:
        assert exc.reason in REASONS
        return
    assert isinstance(out, list)


_segment = st.sampled_from(["relay", "0", "1", "power", "energy", "sensor", "temperature",
                            "emeter", "light", "status", "input", "input_event", "roller",
                            "pos", "command", "online", "info", "ext_temperature", "x", ""])
_suffix = st.one_of(st.lists(_segment, min_size=1, max_size=5).map("/".join),
                    st.text(max_size=40))
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                         max_size=4),
                     max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(_suffix, st.one_of(st.binary(max_size=80), _json.map(lambda v: json.dumps(v).encode())))
def test_gen1_never_raises_anything_else(suffix: str, payload: bytes) -> None:
    src = Source("mqtt", "dev", f"shellies/dev/{suffix}", {"device": "dev", "#": suffix})
    _only_decode_errors(ShellyGen1(), payload, src)


_status = st.dictionaries(
    st.sampled_from(["switch:0", "cover:1", "input:0", "em:0", "emdata:0", "temperature:100",
                     "devicepower:0", "wifi", "sys", "light:0", "switch:x", "pm1:0"]),
    st.dictionaries(st.sampled_from(["output", "apower", "aenergy", "state", "tC", "rh",
                                     "battery", "a_act_power", "total_act", "rssi",
                                     "temperature", "current_pos"]), _json, max_size=4),
    max_size=4)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["NotifyStatus", "NotifyFullStatus", "NotifyEvent", 3]),
       st.one_of(_status, _json), st.one_of(st.none(), _json),
       st.sampled_from(["d/events/rpc", "d/status/switch:0", "d/status/em:0", "d/online",
                        "d/other"]))
def test_gen2_never_raises_anything_else(method: Any, params: Any, ts: Any, topic: str) -> None:
    if isinstance(params, dict) and ts is not None:
        params = {**params, "ts": ts}
    body = {"src": "dev-1", "method": method, "params": params}
    for payload in (json.dumps(body).encode(), json.dumps(params).encode()):
        _only_decode_errors(ShellyRpc(), payload, rpc_source(topic, "d"))
        _only_decode_errors(ShellyRpc(), payload, rpc_source(topic, None))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_gen2_arbitrary_bytes(payload: bytes) -> None:
    _only_decode_errors(ShellyRpc(), payload, rpc_source("d/events/rpc", "d"))
