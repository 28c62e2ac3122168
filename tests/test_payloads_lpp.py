"""``format: cayenne_lpp``: the frames of the LPP implementations' docs and test suites.

The fixtures (tests/fixtures/payloads/cayenne_lpp/, SOURCES.md says where each frame comes
from) give the exact metric, value and unit of every reading; every reading carries the
receive time.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.payloads import format_class
from gateway.payloads.base import Options, Source
from gateway.payloads.errors import REASONS, DecodeError
from gateway.payloads.lpp import MAX_FRAME, CayenneLpp, decode_lpp
from gateway.payloads.names import metric_name
from gateway.payloads.units import SENML_UNITS
from gateway.reading import Reading

FIXTURES = Path(__file__).parent / "fixtures" / "payloads" / "cayenne_lpp"
CASES: list[dict[str, Any]] = json.loads((FIXTURES / "cases.json").read_text())
MALFORMED: list[dict[str, Any]] = json.loads((FIXTURES / "malformed.json").read_text())
NOW = 1_800_000_000.5
SOURCE = Source("lpp", "node-1", "devices/node-1/lpp")
FMT = CayenneLpp()


def frame(case: dict[str, Any]) -> bytes:
    if "base64" in case:
        return base64.b64decode(case["base64"])
    return bytes.fromhex(case["hex"].replace(" ", ""))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_fixture_frames_give_the_documented_readings(case: dict[str, Any]) -> None:
    got = FMT.decode(frame(case), SOURCE, NOW)
    assert [(r.metric, r.value, r.unit) for r in got] == [tuple(x) for x in case["readings"]]
    assert {r.device for r in got} == {"lpp:node-1"}
    assert {r.ts for r in got} == {NOW}
    # integers stay integers, scaled values are floats: exactly what the fixture says
    assert [type(r.value) for r in got] == [type(x[1]) for x in case["readings"]]


@pytest.mark.parametrize("case", MALFORMED, ids=[c["name"] for c in MALFORMED])
def test_malformed_frames_are_refused_with_their_reason(case: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as err:
        FMT.decode(frame(case), SOURCE, NOW)
    assert err.value.reason == case["reason"]


def test_frames_longer_than_any_lpp_encoder_writes_are_refused_before_reading() -> None:
    # 120 kB of digital inputs gave 40,000 readings before the bound
    for size in (MAX_FRAME + 1, 120_000):
        body = (b"\x01\x00\x01" * (size // 3 + 1))[:size]
        with pytest.raises(DecodeError, match=f"{size} bytes") as err:
            decode_lpp(body)
        assert err.value.reason == "bad_frame"
    # the longest frame still reads: 85 records of 3 bytes
    assert len(decode_lpp(b"\x01\x00\x01" * 85)) == 85


def test_every_common_ipso_type_is_read_with_its_size() -> None:
    # one record of each type, all bytes 0x01: the size of each type decides where the
    # next record starts, so a wrong size shows as a wrong next type
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 100: 4, 101: 2, 102: 1, 103: 2, 104: 1, 113: 6, 115: 2,
             116: 2, 117: 2, 118: 4, 120: 1, 121: 2, 122: 3, 125: 2, 128: 2, 130: 4, 131: 4,
             132: 2, 133: 4, 134: 6, 135: 3, 136: 9, 142: 1}
    body = b"".join(bytes([7, t]) + b"\x01" * n for t, n in sizes.items())
    got = decode_lpp(body)
    keys = sorted({name.rsplit("_7", 1)[0] for name, _, _ in got})
    assert keys == sorted([
        "accelerometer", "altitude", "analog_in", "analog_out", "barometric_pressure",
        "colour", "concentration", "current", "digital_in", "digital_out", "direction",
        "distance", "energy", "frequency", "generic", "gps", "gyrometer", "load",
        "luminosity", "percentage", "power", "presence", "relative_humidity", "switch",
        "temperature", "time", "voltage"])
    assert len(got) == len(sizes) - 4 + 4 * 3  # accelerometer, gyrometer, colour, gps: 3 each


def test_type_122_load_is_read_signed_in_kg() -> None:
    # refused as an unknown type before
    assert decode_lpp(bytes.fromhex("047a800000")) == [("load_4", -8388.608, "kg")]


def test_unix_time_stays_a_value_and_does_not_move_the_readings() -> None:
    got = FMT.decode(bytes.fromhex("01856a7a3b80036700e1"), SOURCE, NOW)
    assert got == [Reading("lpp:node-1", "time_1", 1786395520, "s", NOW),
                   Reading("lpp:node-1", "temperature_3", 22.5, "Cel", NOW)]


def test_metric_names_are_canonical_and_units_are_senml() -> None:
    body = b"".join(bytes([200, t]) + b"\xff" * n for t, n in [
        (103, 2), (113, 6), (136, 9), (131, 4), (135, 3), (104, 1)])
    for name, value, unit in decode_lpp(body):
        assert metric_name(name) == name
        assert unit is None or unit in SENML_UNITS or unit == "rad/s"
        assert isinstance(value, int) or math.isfinite(value)


def test_the_frame_needs_a_device_from_the_topic() -> None:
    with pytest.raises(DecodeError) as err:
        FMT.decode(bytes.fromhex("03670110"), Source("lpp"), NOW)
    assert err.value.reason == "no_device"
    with pytest.raises(ValueError, match="device"):
        CayenneLpp.check(Options(), frozenset())
    CayenneLpp.check(Options(), frozenset({"device"}))


def test_registered_as_cayenne_lpp() -> None:
    assert format_class("cayenne_lpp") is CayenneLpp


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_readings_or_a_decode_error(data: bytes) -> None:
    try:
        got = FMT.decode(data, SOURCE, NOW)
    except DecodeError as exc:
        assert exc.reason in REASONS and str(exc)
        return
    assert got and all(isinstance(r.value, (int, float)) for r in got)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255),
                          st.sampled_from([0, 1, 2, 3, 100, 101, 102, 103, 104, 113, 115, 116,
                                           117, 118, 120, 121, 122, 125, 128, 130, 131, 132,
                                           133, 134, 135, 136, 142]),
                          st.binary(min_size=9, max_size=9)), max_size=20))
def test_well_formed_frames_always_decode(records: list[tuple[int, int, bytes]]) -> None:
    sizes = {113: 6, 134: 6, 136: 9, 135: 3, 122: 3, 100: 4, 118: 4, 130: 4, 131: 4, 133: 4,
             0: 1, 1: 1, 102: 1, 104: 1, 120: 1, 142: 1}
    body = b"".join(bytes([c, t]) + v[:sizes.get(t, 2)] for c, t, v in records)
    if len(body) > MAX_FRAME:
        with pytest.raises(DecodeError):
            decode_lpp(body)
        return
    got = decode_lpp(body)
    assert len(got) == sum(3 if t in (113, 134, 135, 136) else 1 for _, t, _ in records)
