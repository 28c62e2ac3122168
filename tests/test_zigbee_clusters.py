"""The Zigbee unit table: raw ZCL values → metrics in SenML units."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.adapters.zigbee.clusters import normalise, plain_value


def _none(_: int) -> Any:
    return None


@pytest.mark.parametrize(("cluster", "attr", "raw", "expected"), [
    (0x0402, 0x0000, 2150, [("temperature", 21.5, "Cel")]),
    (0x0402, 0x0000, -1, [("temperature", -0.01, "Cel")]),
    (0x0402, 0x0000, 0x8000, []),                      # "invalid measurement"
    (0x0405, 0x0000, 4550, [("humidity", 45.5, "%RH")]),
    (0x0403, 0x0000, 1013, [("pressure", 101300.0, "Pa")]),
    (0x0400, 0x0000, 0, [("illuminance", 0.0, "lx")]),
    (0x0400, 0x0000, 1, [("illuminance", 1.0, "lx")]),
    (0x0400, 0x0000, 30001, [("illuminance", 1000.0, "lx")]),  # 10^((v-1)/10000)
    (0x0406, 0x0000, 0b01, [("occupancy", True, None)]),
    (0x0006, 0x0000, 0, [("on_off", False, None)]),
    (0x0008, 0x0000, 254, [("level", 100.0, "%")]),
    (0x0001, 0x0021, 200, [("battery", 100.0, "%EL")]),   # half-percent units
    (0x0001, 0x0021, 0xFF, []),
    (0x0001, 0x0020, 31, [("battery_voltage", 3.1, "V")]),
])
def test_known_attributes_are_scaled_to_senml_units(cluster: int, attr: int, raw: int,
                                                    expected: list[Any]) -> None:
    assert normalise(cluster, attr, raw, _none) == expected


def test_metering_and_electrical_use_their_cached_multiplier_and_divisor() -> None:
    cache = {0x0301: 1, 0x0302: 100, 0x0604: 1, 0x0605: 10}
    assert normalise(0x0702, 0x0000, 250, cache.get) == [("energy", 2500.0, "Wh")]
    assert normalise(0x0702, 0x0400, 3, cache.get) == [("power", 30.0, "W")]
    assert normalise(0x0B04, 0x050B, 605, cache.get) == [("power", 60.5, "W")]
    # not read yet: 1/1, never a division by zero
    assert normalise(0x0B04, 0x0505, 230, {0x0601: 0}.get) == [("voltage", 230.0, "V")]
    # the factors themselves are not readings
    assert normalise(0x0702, 0x0302, 100, _none) == []


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
    assert normalise(0xFC00, 0x0002, b"\x01\xff", _none) == [("zcl_fc00_0002", "01ff", None)]
    assert plain_value(float("nan")) is None
