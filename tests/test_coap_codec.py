"""Payload decoding of the CoAP adapter on its own: the edge cases of each format."""

from __future__ import annotations

import json

import cbor2
import pytest

from gateway.adapters.coap import codec
from gateway.payloads import DecodeError

NOW = 1_790_000_000.0
DEV = "coap:d1"


def test_json_timestamps_in_milliseconds_and_unset_clocks() -> None:
    ms = codec.decode(50, b'{"t": 1, "ts": 1790000000500}', DEV, NOW)
    assert ms[0].ts == pytest.approx(1_790_000_000.5)
    unset = codec.decode(50, b'{"t": 1, "ts": 12}', DEV, NOW)  # device clock never set
    assert unset[0].ts == NOW


def test_json_units_are_normalised_and_converted() -> None:
    out = codec.decode(50, json.dumps({
        "pressure": {"v": 1013.2, "u": "hPa"}, "humidity": 40, "battery": 90, "temp": 68,
        "units": {"humidity": "%", "battery": "%", "temp": "°F"}}).encode(), DEV, NOW)
    got = {r.metric: (r.value, r.unit) for r in out}
    assert got["pressure"] == (pytest.approx(101_320.0), "Pa")
    assert got["humidity"] == (40, "%RH")
    assert got["battery"] == (90, "%EL")
    assert got["temp"] == (pytest.approx(20.0), "Cel")


def test_json_list_is_a_batch_and_names_are_snake_cased() -> None:
    out = codec.decode(50, b'[{"tempC": 1, "ts": 1790000001}, {"co2-ppm": 400}]', DEV, NOW)
    assert [(r.metric, r.ts) for r in out] == [("temp_c", 1_790_000_001.0), ("co2_ppm", NOW)]


def test_senml_sum_text_and_base_only_records() -> None:
    pack = [{"bn": "m/", "bver": 10},  # base fields only: no reading
            {"n": "energy", "u": "Wh", "bs": 1000, "s": 5},
            {"n": "state", "vs": "idle"},
            {"n": "blob", "vd": "AAEC"}]  # a data value: its base64url text
    out = codec.decode(110, json.dumps(pack).encode(), DEV, NOW)
    # a sum is a reading of its own (Wh x s has no SenML unit name)
    assert [(r.metric, r.value, r.unit) for r in out] == [("energy_sum", 1005, None),
                                                          ("state", "idle", None),
                                                          ("blob", "AAEC", None)]


def test_senml_must_understand_labels_are_refused() -> None:
    with pytest.raises(DecodeError, match="must be understood"):
        codec.decode(110, b'[{"n": "t", "v": 1, "crit_": 1}]', DEV, NOW)


def test_senml_cbor_labels_and_relative_time() -> None:
    out = codec.decode(112, cbor2.dumps([{-3: NOW, 0: "t", 2: 1.5, 6: -30}]), DEV, NOW + 99)
    assert out[0].ts == NOW - 30
    rel = codec.decode(112, cbor2.dumps([{0: "t", 2: 1.5, 6: -30}]), DEV, NOW)
    assert rel[0].ts == NOW - 30  # below 2**28: relative to now


@pytest.mark.parametrize("payload", [b"[" * 60_000, b"", b"null", b"1", b'"x"', b"[1]",
                                     b'{"a": {"u": "W"}}', b'{"a": "' + b"x" * 300 + b'"}',
                                     b'{"units": {}}'])
def test_json_garbage_raises_payload_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(50, payload, DEV, NOW)


def test_cbor_garbage_raises_payload_error() -> None:
    for payload in (b"\x9f" * 5000, b"\xd9\xd9\xf7", cbor2.dumps({1: 2}), b"\x1b"):
        with pytest.raises(DecodeError):
            codec.decode(60, payload, DEV, NOW)


def test_text_plain_needs_its_metric_and_takes_numbers_and_booleans() -> None:
    with pytest.raises(DecodeError, match="metric"):
        codec.decode(0, b"21.5", DEV, NOW)
    assert codec.decode(0, b" 21 ", DEV, NOW, metric="t", unit="Cel")[0][2:4] == (21, "Cel")
    assert codec.decode(0, b"on", DEV, NOW, metric="relay")[0].value is True
    with pytest.raises(DecodeError):
        codec.decode(0, b"inf", DEV, NOW, metric="t")


def test_command_bodies() -> None:
    assert codec.encode("json", {"level": 40}) == (50, b'{"level":40}')
    assert codec.encode("cbor", {"on": True}) == (60, cbor2.dumps({"on": True}))
    assert codec.encode("text", {"value": False}) == (0, b"false")
    with pytest.raises(ValueError):
        codec.encode("text", {"a": 1, "b": 2})
