"""Zigbee adapter configuration: cluster ids, the reporting asked at pairing, known clusters.

How attribute values become readings (the unit table, invalid markers, ranges, IAS zone
bits, raw names) lives in :mod:`gateway.payloads.zcl`; this module re-exports what the
adapter and its commands use from there, so there is one table and one copy of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.payloads.zcl import (
    CO2,
    ELECTRICAL,
    FLOW,
    HUMIDITY,
    IAS_ZONE,
    ILLUMINANCE,
    LEVEL,
    METERING,
    METRICS,
    OCCUPANCY,
    ON_OFF,
    PM25,
    POWER,
    PRESSURE,
    SCALING_ATTRIBUTES,
    TEMPERATURE,
    THERMOSTAT,
    ZONE_ALARM_METRIC,
    Lookup,
    Metric,
    normalise,
    plain_value,
    raw_metric,
    zone_status_readings,
)

__all__ = ["CO2", "ELECTRICAL", "FLOW", "HUMIDITY", "IAS_ZONE", "ILLUMINANCE", "LEVEL",
           "METERING", "METRICS", "OCCUPANCY", "ON_OFF", "PM25", "POWER", "PRESSURE",
           "REPORTING", "SCALING_ATTRIBUTES", "TEMPERATURE", "THERMOSTAT",
           "ZONE_ALARM_METRIC", "Lookup", "Metric", "Reporting", "known_clusters",
           "normalise", "plain_value", "raw_metric", "zone_status_readings"]


@dataclass(frozen=True)
class Reporting:
    """Reporting configuration asked of the device for one attribute.

    ``reportable_change`` is in the attribute's raw units (0.01 °C for a temperature).
    """

    attribute: int
    min_interval: int
    #: None: the adapter's max interval for the device's power source
    max_interval: int | None
    reportable_change: int


#: reporting configured at pairing, per server cluster (min s, max s or None, change);
#: CO2 (0x040D) is not here: its change is a fraction (1e-5 = 10 ppm), not an integer
REPORTING: dict[int, tuple[Reporting, ...]] = {
    POWER: (Reporting(0x0020, 3600, None, 1), Reporting(0x0021, 3600, None, 2)),
    ON_OFF: (Reporting(0x0000, 0, None, 1),),
    LEVEL: (Reporting(0x0000, 1, None, 1),),
    THERMOSTAT: (Reporting(0x0000, 30, None, 10), Reporting(0x0012, 0, None, 1)),  # 0.1 °C
    ILLUMINANCE: (Reporting(0x0000, 10, None, 500),),
    TEMPERATURE: (Reporting(0x0000, 30, None, 10),),  # 0.1 °C
    PRESSURE: (Reporting(0x0000, 30, None, 1),),  # 0.1 kPa
    FLOW: (Reporting(0x0000, 10, None, 1),),  # 0.1 m³/h
    HUMIDITY: (Reporting(0x0000, 30, None, 50),),  # 0.5 %RH
    OCCUPANCY: (Reporting(0x0000, 0, None, 1),),
    PM25: (Reporting(0x0000, 30, None, 1),),  # 1 µg/m³ (sent as a Single)
    IAS_ZONE: (Reporting(0x0002, 0, None, 1),),
    METERING: (Reporting(0x0000, 30, None, 1), Reporting(0x0400, 5, None, 1)),
    ELECTRICAL: (Reporting(0x050B, 5, None, 1), Reporting(0x0505, 30, None, 1),
                 Reporting(0x0508, 5, None, 1)),
}


def known_clusters() -> Mapping[int, tuple[Reporting, ...]]:
    """Server clusters the adapter binds and configures reporting for."""
    return REPORTING
