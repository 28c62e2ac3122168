"""The Zigbee unit table: raw ZCL values → metrics in SenML units, and the adapter's use of it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.adapters.zigbee.clusters import (
    METRICS,
    REPORTING,
    SCALING_ATTRIBUTES,
    known_clusters,
    normalise,
    plain_value,
)
from gateway.payloads.errors import DecodeError
from tests import zigbee_virtual as zv
from tests.zigbee_harness import Harness, wait_for


def _none(_: int) -> Any:
    return None


@pytest.mark.parametrize(("cluster", "attr", "raw", "expected"), [
    (0x0402, 0x0000, 2150, [("temperature", 21.5, "Cel")]),
    (0x0402, 0x0000, -1, [("temperature", -0.01, "Cel")]),
    (0x0402, 0x0000, 0x8000, []),                      # "invalid measurement", unsigned
    (0x0402, 0x0000, -0x8000, []),                     # ... as zigpy delivers an int16
    (0x0405, 0x0000, 4550, [("humidity", 45.5, "%RH")]),
    (0x0403, 0x0000, 1013, [("pressure", 101300.0, "Pa")]),
    (0x0403, 0x0000, -0x8000, []),
    (0x0404, 0x0000, 360, [("flow", 0.01, "m3/s")]),   # 36.0 m³/h
    (0x0400, 0x0000, 0, [("illuminance", 0.0, "lx")]),
    (0x0400, 0x0000, 1, [("illuminance", 1.0, "lx")]),
    (0x0400, 0x0000, 30001, [("illuminance", 1000.0, "lx")]),  # 10^((v-1)/10000)
    (0x0406, 0x0000, 0b01, [("occupancy", True, None)]),
    (0x0006, 0x0000, 0, [("on_off", False, None)]),
    (0x0008, 0x0000, 254, [("level", 100.0, "%")]),
    (0x0001, 0x0021, 200, [("battery", 100.0, "%EL")]),   # half-percent units
    (0x0001, 0x0021, 0xFF, []),
    (0x0001, 0x0020, 31, [("battery_voltage", 3.1, "V")]),
    (0x0201, 0x0000, 1950, [("local_temperature", 19.5, "Cel")]),
    (0x0201, 0x0000, -0x8000, []),
    (0x040D, 0x0000, 0.0012, [("co2", 1200.0, "ppm")]),
    (0x042A, 0x0000, 35.0, [("pm25", 35.0, "ug/m3")]),
])
def test_known_attributes_are_scaled_to_senml_units(cluster: int, attr: int, raw: Any,
                                                    expected: list[Any]) -> None:
    assert normalise(cluster, attr, raw, _none) == expected


@pytest.mark.parametrize(("cluster", "attr", "raw"), [
    (0x0001, 0x0021, 201),        # more than 100 %: refused, not clamped
    (0x0402, 0x0000, -27316),     # below absolute zero
    (0x0405, 0x0000, 10001),      # above 100 %RH
    (0x0402, 0x0000, "2900"),     # text where the type is int16: not converted
    (0x0402, 0x0000, b"\x54\x0b"),
    (0x0402, 0x0000, True),
    (0x0405, 0x0000, 45.5),       # a float where the type is uint16
    (0x0500, 0x0002, "1"),        # zone status is a map16
])
def test_values_the_spec_does_not_allow_are_refused(cluster: int, attr: int,
                                                    raw: Any) -> None:
    with pytest.raises(DecodeError) as err:
        normalise(cluster, attr, raw, _none)
    assert err.value.reason == "bad_value"


def test_signed_invalid_markers_of_metering_and_electrical_give_nothing() -> None:
    cache = {0x0301: 1, 0x0302: 100, 0x0604: 1, 0x0605: 10}
    assert normalise(0x0B04, 0x050B, -0x8000, cache.get) == []       # int16 ActivePower
    assert normalise(0x0702, 0x0400, -0x800000, cache.get) == []     # int24 demand
    assert normalise(0x0702, 0x0400, 0x800000, cache.get) == []
    assert normalise(0x0702, 0x0000, 0xFFFFFFFFFFFF, cache.get) == []  # uint48 summation


def test_metering_and_electrical_use_their_cached_multiplier_and_divisor() -> None:
    cache = {0x0301: 1, 0x0302: 100, 0x0604: 1, 0x0605: 10}
    assert normalise(0x0702, 0x0000, 250, cache.get) == [("energy", 2500.0, "Wh")]
    assert normalise(0x0702, 0x0400, 3, cache.get) == [("power", 30.0, "W")]
    assert normalise(0x0B04, 0x050B, 605, cache.get) == [("power", 60.5, "W")]
    # not read yet: 1/1, never a division by zero
    assert normalise(0x0B04, 0x0505, 230, {0x0601: 0}.get) == [("voltage", 230.0, "V")]
    # the factors themselves are not readings
    assert normalise(0x0702, 0x0302, 100, _none) == []


def test_a_zero_multiplier_or_divisor_means_unset() -> None:
    # ZCL: 0 is not a valid Multiplier/Divisor; firmwares that send it mean "not set"
    assert normalise(0x0702, 0x0000, 250, {0x0301: 0, 0x0302: 0}.get) == [
        ("energy", 250000.0, "Wh")]
    assert normalise(0x0B04, 0x050B, 605, {0x0604: 0, 0x0605: 0}.get) == [
        ("power", 605.0, "W")]
    assert normalise(0x0B04, 0x0508, 1234, {0x0602: 0, 0x0603: 1000}.get) == [
        ("current", 1.234, "A")]


@pytest.mark.parametrize(("zone_type", "status", "metric", "value"), [
    (0x0015, 0x0001, "contact", False),   # contact switch, alarm: open
    (0x0015, 0x0000, "contact", True),
    (0x000D, 0x0001, "motion", True),
    (0x002A, 0x0001, "water_leak", True),
    (0x0028, 0x0000, "smoke", False),
    (None, 0x0001, "alarm", True),
])
def test_ias_zone_alarm_bits_mean_what_the_zone_type_says(zone_type: int | None, status: int,
                                                          metric: str, value: bool) -> None:
    out = normalise(0x0500, 0x0002, status | 0x0004, _none, zone_type=zone_type)
    assert (metric, value, None) in out
    assert ("tamper", True, None) in out and ("battery_low", False, None) in out


def test_unknown_attributes_keep_a_raw_name() -> None:
    assert normalise(0xFC00, 0x0001, 7, _none) == [("zcl_fc00_0001", 7, None)]
    assert normalise(0x0402, 0x0003, 5, _none, "temperature", "tolerance") == [
        ("temperature_tolerance", 5, None)]
    assert normalise(0xFC00, 0x0001, 1, _none, "opple", "motionSensitivity") == [
        ("opple_motion_sensitivity", 1, None)]
    assert normalise(0xFC00, 0x0002, b"\x01\xff", _none) == [("zcl_fc00_0002", "01ff", None)]
    assert plain_value(float("nan")) is None


def test_reporting_is_configured_for_table_rows_only() -> None:
    assert known_clusters() is REPORTING
    for cluster, wanted in REPORTING.items():
        for rep in wanted:
            assert (cluster, rep.attribute) in METRICS or (cluster, rep.attribute) == (
                0x0500, 0x0002)
            assert rep.attribute not in SCALING_ATTRIBUTES.get(cluster, ())
    assert {0x0201, 0x0404, 0x042A} <= set(REPORTING)


# -- through the adapter: a refused value is counted, an invalid marker is quiet ----------

async def test_the_adapter_counts_refused_values_and_skips_invalid_markers(zb: Harness) -> None:
    adapter = await zb.started()
    sensor = zv.climate_sensor()
    dev_id = await zb.pair(adapter, sensor)
    await zb.wait_reading(dev_id, "temperature", 21.5)
    before = zb.metric("gateway_zigbee_malformed_total", adapter="zigbee")

    sensor.report(0x0402, {0x0000: -0x8000})  # int16 0x8000 on the air: "invalid"
    sensor.report(0x0001, {0x0021: 230})      # a battery at 115 %
    await wait_for(lambda: zb.metric("gateway_zigbee_malformed_total",
                                     adapter="zigbee") == before + 1,
                   2, "the out-of-range battery counted")
    sensor.report(0x0402, {0x0000: 1999})
    await zb.wait_reading(dev_id, "temperature", 19.99)
    await asyncio.sleep(0.05)
    values = {(r.metric, r.value) for r in await zb.readings() if r.device == dev_id}
    assert ("temperature", -327.68) not in values
    assert not any(m == "battery" and v == 100.0 for m, v in values)
    assert zb.metric("gateway_zigbee_malformed_total", adapter="zigbee") == before + 1
