"""The Zigbee unit table: (cluster, attribute) → metric, SenML unit and scaling.

One place for everything the adapter knows about ZCL values: what a reported attribute
is called as a reading, how its raw integer becomes a physical value, which attributes
are only scaling factors for others (multiplier/divisor), and which attributes get
reporting configured when a device pairs. Attributes not in the table still become
readings, under a raw name (``<cluster>_<attribute>`` or ``zcl_<cluster>_<attribute>``
in hex), so nothing a device reports vanishes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.reading import Value

#: cluster ids, by the names used in this table and in commands
POWER = 0x0001
ON_OFF = 0x0006
LEVEL = 0x0008
ILLUMINANCE = 0x0400
TEMPERATURE = 0x0402
PRESSURE = 0x0403
HUMIDITY = 0x0405
OCCUPANCY = 0x0406
IAS_ZONE = 0x0500
METERING = 0x0702
ELECTRICAL = 0x0B04

#: what a scaling converter gets: the cached value of another attribute of the same cluster
Lookup = Callable[[int], Any]
Convert = Callable[[Any, Lookup], Value | None]


@dataclass(frozen=True)
class Metric:
    """How one attribute becomes a reading."""

    name: str
    unit: str | None
    convert: Convert


@dataclass(frozen=True)
class Reporting:
    """Reporting configuration asked of the device for one attribute."""

    attribute: int
    min_interval: int
    #: None: the adapter's max interval for the device's power source
    max_interval: int | None
    reportable_change: int


def _scaled(divisor: float, invalid: int | None = None, digits: int = 2) -> Convert:
    def convert(value: Any, _: Lookup) -> Value | None:
        raw = int(value)
        if invalid is not None and raw == invalid:
            return None
        return round(raw / divisor, digits)

    return convert


def _illuminance(value: Any, _: Lookup) -> Value | None:
    # ZCL 4.2.2.2.1: MeasuredValue = 10000 × log10(lux) + 1; 0 means too dark to measure
    raw = int(value)
    if raw == 0xFFFF:
        return None
    if raw == 0:
        return 0.0
    return round(math.pow(10, (raw - 1) / 10000.0), 1)


def _bool(value: Any, _: Lookup) -> Value | None:
    return bool(value)


def _bit0(value: Any, _: Lookup) -> Value | None:
    return bool(int(value) & 0x01)


def _percent_of_254(value: Any, _: Lookup) -> Value | None:
    return round(min(int(value), 254) * 100 / 254, 1)


def _half_percent(value: Any, _: Lookup) -> Value | None:
    raw = int(value)
    if raw == 0xFF:
        return None
    return round(min(raw, 200) / 2, 1)


def _ratio(multiplier: int, divisor: int, factor: float = 1.0, digits: int = 3) -> Convert:
    """Raw × multiplier / divisor (both read from the device's cache) × factor."""

    def convert(value: Any, lookup: Lookup) -> Value | None:
        m = lookup(multiplier)
        d = lookup(divisor)
        m = int(m) if isinstance(m, int) and m > 0 else 1
        d = int(d) if isinstance(d, int) and d > 0 else 1
        return round(int(value) * m / d * factor, digits)

    return convert


def _invalid_or(raw_invalid: int, convert: Convert) -> Convert:
    def wrapped(value: Any, lookup: Lookup) -> Value | None:
        if int(value) == raw_invalid:
            return None
        return convert(value, lookup)

    return wrapped


#: (cluster, attribute) → metric; scaled to SenML units (RFC 8428)
METRICS: dict[tuple[int, int], Metric] = {
    # Power configuration: voltage in 100 mV, percentage in half-percent units
    (POWER, 0x0000): Metric("mains_voltage", "V", _scaled(10, 0xFFFF, 1)),
    (POWER, 0x0020): Metric("battery_voltage", "V", _scaled(10, 0xFF, 1)),
    (POWER, 0x0021): Metric("battery", "%EL", _half_percent),
    (ON_OFF, 0x0000): Metric("on_off", None, _bool),
    (LEVEL, 0x0000): Metric("level", "%", _percent_of_254),
    (ILLUMINANCE, 0x0000): Metric("illuminance", "lx", _illuminance),
    # centi-degrees; 0x8000 means "invalid measurement"
    (TEMPERATURE, 0x0000): Metric("temperature", "Cel", _scaled(100, 0x8000)),
    # 0.1 kPa = 100 Pa
    (PRESSURE, 0x0000): Metric("pressure", "Pa", _invalid_or(0x8000, _scaled(0.01, None, 0))),
    (HUMIDITY, 0x0000): Metric("humidity", "%RH", _scaled(100, 0xFFFF)),
    (OCCUPANCY, 0x0000): Metric("occupancy", None, _bit0),
    # Metering: kWh (unit_of_measure 0) × multiplier / divisor; reported in Wh and W
    (METERING, 0x0000): Metric("energy", "Wh", _ratio(0x0301, 0x0302, 1000.0, 1)),
    (METERING, 0x0400): Metric("power", "W", _ratio(0x0301, 0x0302, 1000.0, 1)),
    # Electrical measurement: each quantity has its own multiplier and divisor
    (ELECTRICAL, 0x050B): Metric("power", "W", _ratio(0x0604, 0x0605)),
    (ELECTRICAL, 0x0505): Metric("voltage", "V", _invalid_or(0xFFFF, _ratio(0x0600, 0x0601))),
    (ELECTRICAL, 0x0508): Metric("current", "A", _invalid_or(0xFFFF, _ratio(0x0602, 0x0603))),
}

#: attributes that only scale others: cached by zigpy, never readings of their own
SCALING_ATTRIBUTES: dict[int, tuple[int, ...]] = {
    METERING: (0x0300, 0x0301, 0x0302),
    ELECTRICAL: (0x0600, 0x0601, 0x0602, 0x0603, 0x0604, 0x0605),
}

#: reporting configured at pairing, per server cluster (min s, max s or None, change)
REPORTING: dict[int, tuple[Reporting, ...]] = {
    POWER: (Reporting(0x0020, 3600, None, 1), Reporting(0x0021, 3600, None, 2)),
    ON_OFF: (Reporting(0x0000, 0, None, 1),),
    LEVEL: (Reporting(0x0000, 1, None, 1),),
    ILLUMINANCE: (Reporting(0x0000, 10, None, 500),),
    TEMPERATURE: (Reporting(0x0000, 30, None, 10),),  # 0.1 °C
    PRESSURE: (Reporting(0x0000, 30, None, 1),),  # 0.1 kPa
    HUMIDITY: (Reporting(0x0000, 30, None, 50),),  # 0.5 %RH
    OCCUPANCY: (Reporting(0x0000, 0, None, 1),),
    IAS_ZONE: (Reporting(0x0002, 0, None, 1),),
    METERING: (Reporting(0x0000, 30, None, 1), Reporting(0x0400, 5, None, 1)),
    ELECTRICAL: (Reporting(0x050B, 5, None, 1), Reporting(0x0505, 30, None, 1),
                 Reporting(0x0508, 5, None, 1)),
}

# -- IAS zones: the alarm bits mean different things for different zone types ------------

#: zone type → metric of the Alarm_1 bit
ZONE_ALARM_METRIC: dict[int, str] = {
    0x000D: "motion",
    0x0015: "contact",
    0x0016: "contact",
    0x0028: "smoke",
    0x002A: "water_leak",
    0x002B: "carbon_monoxide",
    0x002D: "vibration",
    0x0226: "glass_break",
}


def zone_status_readings(status: int, zone_type: int | None) -> list[tuple[str, Value, None]]:
    """IAS zone status bits → readings.

    ``contact`` is True when closed (Alarm_1 clear), like a door sensor's reed switch;
    every other alarm metric is True while the alarm is raised.
    """
    metric = ZONE_ALARM_METRIC.get(zone_type if zone_type is not None else -1, "alarm")
    alarm1 = bool(status & 0x0001)
    value: Value = (not alarm1) if metric == "contact" else alarm1
    return [(metric, value, None), ("tamper", bool(status & 0x0004), None),
            ("battery_low", bool(status & 0x0008), None)]


# -- anything else ---------------------------------------------------------------------

def raw_metric(cluster_id: int, attribute_id: int, cluster_name: str | None,
               attribute_name: str | None) -> str:
    """Name of an attribute the table does not know: zigpy's names, else hex ids."""
    if cluster_name and attribute_name:
        return f"{cluster_name}_{attribute_name}".lower()
    return f"zcl_{cluster_id:04x}_{attribute_id:04x}"


def plain_value(value: Any) -> Value | None:
    """A ZCL value as a reading value: numbers stay numbers, the rest becomes text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        # enums report their name, bitmaps (IntFlag) their number
        if isinstance(value, enum.Flag):
            return int(value.value)
        return str(value.name)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, str):
        return value
    if value is None:
        return None
    return str(value)


def normalise(cluster_id: int, attribute_id: int, value: Any, lookup: Lookup,
              cluster_name: str | None = None, attribute_name: str | None = None,
              zone_type: int | None = None) -> list[tuple[str, Value, str | None]]:
    """Readings (metric, value, unit) for one attribute value; empty when it is not data."""
    if attribute_id in SCALING_ATTRIBUTES.get(cluster_id, ()):
        return []
    if cluster_id == IAS_ZONE and attribute_id == 0x0002:
        return list(zone_status_readings(int(value), zone_type))
    metric = METRICS.get((cluster_id, attribute_id))
    if metric is not None:
        converted = metric.convert(value, lookup)
        return [] if converted is None else [(metric.name, converted, metric.unit)]
    plain = plain_value(value)
    if plain is None:
        return []
    return [(raw_metric(cluster_id, attribute_id, cluster_name, attribute_name), plain, None)]


def known_clusters() -> Mapping[int, tuple[Reporting, ...]]:
    """Server clusters the adapter binds and configures reporting for."""
    return REPORTING
