"""ZCL attribute values → readings: the cases of tests/fixtures/payloads/zcl, and fuzzing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import zigpy.types as t
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.adapters.zigbee import clusters
from gateway.payloads import zcl
from gateway.payloads.errors import DecodeError
from gateway.payloads.units import SENML_UNITS

FIXTURES = Path(__file__).parent / "fixtures" / "payloads" / "zcl"
CASES: list[dict[str, Any]] = json.loads((FIXTURES / "cases.json").read_text())["cases"]


def _value(spec: Any) -> Any:
    """A case's value: JSON as is, bytes from hex, or wire bytes parsed by a zigpy type."""
    if isinstance(spec, dict):
        if "bytes" in spec:
            return bytes.fromhex(spec["bytes"])
        value, rest = getattr(t, spec["wire"]).deserialize(bytes.fromhex(spec["hex"]))
        assert rest == b""
        return value
    return spec


def _lookup(case: dict[str, Any]) -> Any:
    cache = {int(k, 16): v for k, v in case.get("cache", {}).items()}
    return cache.get


def _nothing(_: int) -> Any:
    return None


def _run(case: dict[str, Any]) -> list[tuple[str, Any, str | None]]:
    names = case.get("names", [None, None])
    return zcl.normalise(int(case["cluster"], 16), int(case["attribute"], 16),
                         _value(case["value"]), _lookup(case), names[0], names[1])


def test_every_case_has_a_documented_source() -> None:
    sources = (FIXTURES / "SOURCES.md").read_text()
    assert len({c["id"] for c in CASES}) == len(CASES)
    for case in CASES:
        assert f"`{case['source']}`" in sources, case["id"]
        assert ("expect" in case) != ("refused" in case), case["id"]


@pytest.mark.parametrize("case", [c for c in CASES if "expect" in c], ids=lambda c: c["id"])
def test_fixture_values_become_these_readings(case: dict[str, Any]) -> None:
    out = _run(case)
    expected = [tuple(r) for r in case["expect"]]
    assert [(m, u) for m, _, u in out] == [(m, u) for m, _, u in expected]
    for (_, got, _), (_, want, _) in zip(out, expected, strict=True):
        assert type(got) is type(want), (got, want)  # True is not 1, 2500.0 is not 2500
        assert got == want


@pytest.mark.parametrize("case", [c for c in CASES if "refused" in c], ids=lambda c: c["id"])
def test_fixture_values_that_the_spec_forbids_are_refused(case: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as err:
        _run(case)
    assert err.value.reason == case["refused"]
    assert f"0x{int(case['cluster'], 16):04X}" in str(err.value)


def test_invalid_markers_are_taken_in_both_spellings() -> None:
    # zigpy gives signed types signed: the old table compared 0x8000 with -32768
    for cluster, attr, unsigned, signed in [
        (0x0402, 0x0000, 0x8000, -0x8000), (0x0403, 0x0000, 0x8000, -0x8000),
        (0x0403, 0x0010, 0x8000, -0x8000), (0x0B04, 0x050B, 0x8000, -0x8000),
        (0x0201, 0x0000, 0x8000, -0x8000), (0x0702, 0x0400, 0x800000, -0x800000),
        (0x0702, 0x0000, 0xFFFFFFFFFFFF, -1), (0x0001, 0x0021, 0xFF, -1),
    ]:
        assert zcl.normalise(cluster, attr, unsigned, _nothing) == [], (cluster, attr)
        assert zcl.normalise(cluster, attr, signed, _nothing) == [], (cluster, attr)


def test_the_refusal_names_the_metric_and_what_was_wrong() -> None:
    with pytest.raises(DecodeError) as err:
        zcl.normalise(0x0001, 0x0021, 230, lambda _: None)
    assert str(err.value) == ("battery (cluster 0x0001 attribute 0x0021): "
                              "230 is outside 0..200 (uint8)")
    with pytest.raises(DecodeError) as err:
        zcl.normalise(0x0402, 0x0000, "2900", lambda _: None)
    assert "expected a ZCL int16 integer, got str '2900'" in str(err.value)


def test_the_adapter_configuration_re_exports_the_one_table() -> None:
    assert clusters.METRICS is zcl.METRICS
    assert clusters.normalise is zcl.normalise
    assert clusters.SCALING_ATTRIBUTES is zcl.SCALING_ATTRIBUTES
    assert not hasattr(clusters, "_scaled")
    # every row documents its ZCL type; every unit is a SenML name
    for metric in zcl.METRICS.values():
        assert metric.zcl_type
        assert metric.unit is None or metric.unit in SENML_UNITS


def test_raw_names_go_through_metric_name() -> None:
    assert zcl.raw_metric(0x0006, 0x4003, "on_off", "start_up_on_off") == "on_off_start_up_on_off"
    assert zcl.raw_metric(0xFC00, 1, "Xiaomi", "PowerOnState") == "xiaomi_power_on_state"
    assert zcl.raw_metric(0xFC00, 1, "---", "???") == "zcl_fc00_0001"
    assert zcl.plain_value(b"\x00" * 200) is None  # 400 hex digits: too long for a reading
    assert zcl.plain_value(2**64 - 1) == "18446744073709551615"
    flags: Any = t.bitmap8
    assert zcl.plain_value(flags(5)) == 5
    assert zcl.plain_value(float("inf")) is None


# -- nothing but the documented refusal, whatever the value -------------------------------

ROWS = sorted(zcl.METRICS) + [(0x0500, 0x0002), (0x0403, 0x0014), (0xFC00, 0x0001)]
values = st.one_of(st.none(), st.booleans(), st.integers(),
                   st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
                   st.text(max_size=20), st.binary(max_size=16))
caches = st.dictionaries(st.sampled_from([0x0014, 0x0300, 0x0301, 0x0302, 0x0600, 0x0601,
                                          0x0602, 0x0603, 0x0604, 0x0605]), values,
                         max_size=4)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(ROWS), values, caches, st.sampled_from([None, 0x0015, 0x000D]))
def test_any_value_gives_readings_or_bad_value(row: tuple[int, int], value: Any,
                                                cache: dict[int, Any],
                                                zone_type: int | None) -> None:
    cluster, attr = row
    try:
        out = zcl.normalise(cluster, attr, value, cache.get, "x_cluster", "attr",
                            zone_type)
    except DecodeError as exc:
        assert exc.reason == "bad_value"
        assert len(str(exc)) < 200
        return
    for metric, v, unit in out:
        assert metric and metric == metric.lower()
        assert unit is None or unit in SENML_UNITS
        assert isinstance(v, (bool, int, float, str))
        if isinstance(v, float):
            assert math.isfinite(v)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(zcl.METRICS)), st.integers(min_value=-(2**48),
                                                          max_value=2**48))
def test_an_integer_is_a_reading_a_marker_or_out_of_range(row: tuple[int, int],
                                                          value: int) -> None:
    try:
        out = zcl.normalise(*row, value, lambda _: None)
    except DecodeError as exc:
        assert "outside" in str(exc) or "number" in str(exc)
        return
    assert len(out) <= 1
