"""ZCL attribute values → readings: types, invalid markers, ranges and units of Zigbee clusters.

What it reads: the value of one attribute of one cluster as zigpy delivers it after parsing
a Report Attributes or Read Attributes Response frame. zigpy's integer types (``int16s``,
``uint48_t``...) are ``int`` subclasses and signed types arrive signed (MeasuredValue
0x8000 of an int16 is ``-32768``); ``Single`` is a ``float`` subclass; Boolean is
``t.Bool``, an int enum; enums and bitmaps are ``enum`` members; octet and character
strings are ``bytes`` and ``str``.

What it follows:

* Zigbee Cluster Library Specification, revision 8 (CSA document 07-5123-08),
  https://csa-iot.org/developer-resource/specifications-download-request/ :
  2.6.2 data types and their non-value ("invalid") markers; 3.3 Power Configuration;
  3.8 On/Off; 3.10 Level Control; 4.2 Illuminance Measurement; 4.4 Temperature
  Measurement; 4.5 Pressure Measurement; 4.6 Flow Measurement; 4.7 Relative Humidity
  Measurement; 4.8 Occupancy Sensing; 4.9 Electrical Measurement; 4.13 Concentration
  Measurement (CO2, PM2.5); 6.3 Thermostat; 8.2 IAS Zone.
* Zigbee Smart Energy Standard (CSA document 07-5356), D.3 Metering, for cluster 0x0702.
* zigpy's attribute types (``zigpy/zcl/clusters/*.py``, https://github.com/zigpy/zigpy)
  and ZHA's divisors (``zha/application/platforms/sensor/__init__.py``,
  https://github.com/zigpy/zha), which the tests' fixtures cite row by row.

The contract of :func:`normalise`:

* a list of ``(metric, value, unit)`` with the unit a SenML name (RFC 8428) or None;
* ``[]`` when the attribute is not data (a scaling factor such as Multiplier), or when
  the device sends its type's invalid marker: the spec's way of saying "no measurement
  now", which is not a fault;
* :class:`~gateway.payloads.errors.DecodeError` with reason ``bad_value`` for a value
  the spec does not allow: the wrong Python type (text or bytes where the type is an
  integer, a bool where it is not Boolean, a float where it is an integer) or a number
  outside the attribute's range (a battery at 230 half-percent, a temperature below
  absolute zero). The adapter counts it as malformed and logs it at a bounded rate.

Attributes the table does not know still become readings under a raw name (zigpy's
``<cluster>_<attribute>`` through :func:`~gateway.payloads.names.metric_name`, or
``zcl_<cluster>_<attribute>`` in hex), so nothing a device reports vanishes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.payloads.errors import DecodeError
from gateway.payloads.names import metric_name
from gateway.payloads.values import MAX_TEXT, is_number, sig
from gateway.reading import Value

#: cluster ids, by the names used in this table and in commands
POWER = 0x0001
ON_OFF = 0x0006
LEVEL = 0x0008
THERMOSTAT = 0x0201
ILLUMINANCE = 0x0400
TEMPERATURE = 0x0402
PRESSURE = 0x0403
FLOW = 0x0404
HUMIDITY = 0x0405
OCCUPANCY = 0x0406
CO2 = 0x040D
PM25 = 0x042A
IAS_ZONE = 0x0500
METERING = 0x0702
ELECTRICAL = 0x0B04

#: what a converter gets besides the value: another attribute of the same cluster, as
#: zigpy cached it (multipliers, divisors, scales, unit of measure), or None
Lookup = Callable[[int], Any]
Convert = Callable[[Any, Lookup], Value | None]
Reading3 = tuple[str, Value, str | None]


# -- ZCL types ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Int:
    """A ZCL integer type (2.6.2), optionally narrowed to an attribute's range.

    ``invalid`` is the type's non-value; both spellings of it are accepted (zigpy gives
    signed types signed, a hand-written value may be unsigned: int16 0x8000 is -32768,
    uint48 0xFFFFFFFFFFFF is -1 read as signed).
    """

    name: str
    bits: int
    signed: bool
    invalid: int | None
    lo: int | None = None
    hi: int | None = None

    @property
    def markers(self) -> frozenset[int]:
        """The invalid marker in its unsigned and its signed spelling."""
        if self.invalid is None:
            return frozenset()
        m = self.invalid & ((1 << self.bits) - 1)
        signed = m - (1 << self.bits) if m >= 1 << (self.bits - 1) else m
        return frozenset({m, signed})

    @property
    def bounds(self) -> tuple[int, int]:
        """The valid range: the attribute's if given, else the type's."""
        if self.signed:
            lo, hi = -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        else:
            lo, hi = 0, (1 << self.bits) - 1
        return (lo if self.lo is None else self.lo, hi if self.hi is None else self.hi)


def _int_checker(t: Int) -> Callable[[Any], int | None]:
    """A function: value → its int, None for the invalid marker, DecodeError otherwise."""
    markers = t.markers
    lo, hi = t.bounds

    def check(value: Any) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise DecodeError("bad_value", f"expected a ZCL {t.name} integer, got "
                                           f"{type(value).__name__} {value!r:.40}")
        raw = int(value)
        if raw in markers:
            return None
        if not lo <= raw <= hi:
            raise DecodeError("bad_value", f"{raw} is outside {lo}..{hi} ({t.name})")
        return raw

    return check


def _float_checker(name: str, lo: float, hi: float) -> Callable[[Any], float | None]:
    """Single (2.6.2 semi/single precision): NaN is the non-value; ints are exact floats."""

    def check(value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DecodeError("bad_value", f"expected a ZCL {name} number, got "
                                           f"{type(value).__name__} {value!r:.40}")
        x = float(value) if not isinstance(value, int) or abs(value) < 2**63 else math.inf
        if math.isnan(x):
            return None
        if not lo <= x <= hi:
            raise DecodeError("bad_value", f"{value!r:.40} is outside {lo:g}..{hi:g} ({name})")
        return x

    return check


INT8S = Int("int8", 8, True, 0x80)
UINT8 = Int("uint8", 8, False, 0xFF)
UINT16 = Int("uint16", 16, False, 0xFFFF)
INT16S = Int("int16", 16, True, 0x8000)
INT24S = Int("int24", 24, True, 0x800000)
UINT48 = Int("uint48", 48, False, 0xFFFFFFFFFFFF)
#: ZCL 4.4.2.2.1 / 6.3.2.2.1: 100 × °C, −273.15..327.67 °C
CENTI_CELSIUS = Int("int16", 16, True, 0x8000, -27315, 0x7FFF)


# -- the table ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Metric:
    """How one attribute becomes a reading; ``zcl_type`` documents its ZCL type."""

    name: str
    unit: str | None
    convert: Convert
    zcl_type: str = ""


def _scaled(t: Int, factor: float) -> Convert:
    """An integer of type ``t`` times ``factor`` (a power of ten: the spec's resolution)."""
    check = _int_checker(t)

    def convert(value: Any, _: Lookup) -> Value | None:
        raw = check(value)
        return None if raw is None else sig(raw * factor)

    return convert


def _illuminance(value: Any, _: Lookup) -> Value | None:
    """ZCL 4.2.2.2.1: MeasuredValue = 10000 × log10(lux) + 1; 0 is too dark to measure."""
    raw = _ILLUMINANCE(value)
    if raw is None:
        return None
    if raw == 0:
        return 0.0
    return round(math.pow(10, (raw - 1) / 10000.0), 1)


_ILLUMINANCE = _int_checker(Int("uint16", 16, False, 0xFFFF, 0, 0xFFFE))


def _boolean(value: Any, _: Lookup) -> Value | None:
    """ZCL Boolean (2.6.2): 0 false, 1 true, 0xFF invalid; zigpy gives ``t.Bool``."""
    if isinstance(value, bool):
        return value
    raw = _BOOLEAN(value)
    return None if raw is None else raw == 1


_BOOLEAN = _int_checker(Int("bool", 8, False, 0xFF, 0, 1))


def _bit0(value: Any, _: Lookup) -> Value | None:
    """Occupancy (4.8.2.2.1.1), a map8: bit 0 is "occupied"; bitmaps have no non-value."""
    raw = _MAP8(value)
    return None if raw is None else bool(raw & 0x01)


_MAP8 = _int_checker(Int("map8", 8, False, None))


def _level(value: Any, _: Lookup) -> Value | None:
    """CurrentLevel (3.10.2.3.1), uint8 0..0xFE; as a percentage of 0xFE."""
    raw = _LEVEL(value)
    return None if raw is None else round(raw * 100 / 254, 1)


_LEVEL = _int_checker(Int("uint8", 8, False, 0xFF, 0, 0xFE))


def _half_percent(value: Any, _: Lookup) -> Value | None:
    """BatteryPercentageRemaining (3.3.2.2.3.1), uint8 in half percent: 0..200, 0xFF invalid.

    More than 200 is refused, not clamped: a device that reports 230 is not at 100 %.
    """
    raw = _BATTERY(value)
    return None if raw is None else raw / 2


_BATTERY = _int_checker(Int("uint8", 8, False, 0xFF, 0, 200))


def _factor(lookup: Lookup, attribute: int) -> int:
    """A Multiplier or Divisor from zigpy's cache; 1 when unset, 0 or not an integer.

    The spec says 0 is invalid for both; firmwares that report 0 mean "not set", so the
    raw value is taken as it is rather than dropped (and never divided by zero).
    """
    f = lookup(attribute)
    if isinstance(f, int) and not isinstance(f, bool) and f > 0:
        return int(f)
    return 1


def _ratio(t: Int, multiplier: int, divisor: int, factor: float = 1.0) -> Convert:
    """Raw × Multiplier / Divisor (attributes of the same cluster) × ``factor``."""
    check = _int_checker(t)

    def convert(value: Any, lookup: Lookup) -> Value | None:
        raw = check(value)
        if raw is None:
            return None
        return sig(raw * _factor(lookup, multiplier) / _factor(lookup, divisor) * factor)

    return convert


_SCALE = _int_checker(Int("int8", 8, True, 0x80, -127, 127))
_SCALED_VALUE = _int_checker(INT16S)


def _scaled_pressure(value: Any, lookup: Lookup) -> Value | None:
    """ScaledValue (4.5.2.2.2): 10^Scale × pressure in Pa; Scale defaults to 0 if unread."""
    raw = _SCALED_VALUE(value)
    if raw is None:
        return None
    cached = lookup(0x0014)
    scale = 0 if cached is None else _SCALE(cached)
    if scale is None:
        return None  # the device says its scale is invalid: the value means nothing
    return sig(raw * 10.0 ** -scale)


#: Metering UnitOfMeasure (SE D.3.2.2.4.1) low 7 bits (0x80 only says BCD display):
#: 0 kWh and kW, 1 m³ and m³/h; others keep their raw names
_METERING_UNIT = 0x0300
_METERING_KWH, _METERING_M3 = 0, 1
_SUMMATION = _ratio(UINT48, 0x0301, 0x0302)
_DEMAND = _ratio(INT24S, 0x0301, 0x0302)


def _metering_unit(lookup: Lookup) -> int | None:
    unit = lookup(_METERING_UNIT)
    if unit is None:
        return _METERING_KWH  # not read yet: electricity, by far the common case
    if isinstance(unit, int) and not isinstance(unit, bool):
        return int(unit) & 0x7F
    return None


def _summation(value: Any, lookup: Lookup) -> Value | None:
    """CurrentSummationDelivered, uint48 × Multiplier / Divisor in kWh → Wh."""
    v = _SUMMATION(value, lookup)
    return None if v is None else sig(float(v) * 1000.0)


def _demand(value: Any, lookup: Lookup) -> Value | None:
    """InstantaneousDemand, int24 × Multiplier / Divisor in kW → W."""
    v = _DEMAND(value, lookup)
    return None if v is None else sig(float(v) * 1000.0)


def _volume_rate(value: Any, lookup: Lookup) -> Value | None:
    """InstantaneousDemand of a water or gas meter, m³/h → m³/s."""
    v = _DEMAND(value, lookup)
    return None if v is None else sig(float(v) / 3600.0)


#: (cluster, attribute) → metric, scaled to SenML units (RFC 8428); each row's comment
#: gives the ZCL type, resolution and invalid marker
METRICS: dict[tuple[int, int], Metric] = {
    # Power Configuration 3.3: MainsVoltage uint16 100 mV, 0xFFFF invalid
    (POWER, 0x0000): Metric("mains_voltage", "V", _scaled(UINT16, 0.1), "uint16"),
    # BatteryVoltage uint8 100 mV, 0xFF invalid
    (POWER, 0x0020): Metric("battery_voltage", "V", _scaled(UINT8, 0.1), "uint8"),
    # BatteryPercentageRemaining uint8 half percent 0..200, 0xFF invalid
    (POWER, 0x0021): Metric("battery", "%EL", _half_percent, "uint8"),
    # On/Off 3.8: OnOff Boolean, 0xFF invalid
    (ON_OFF, 0x0000): Metric("on_off", None, _boolean, "bool"),
    # Level Control 3.10: CurrentLevel uint8 0..0xFE, 0xFF invalid
    (LEVEL, 0x0000): Metric("level", "%", _level, "uint8"),
    # Thermostat 6.3: LocalTemperature int16 0.01 °C, 0x8000 invalid
    (THERMOSTAT, 0x0000): Metric("local_temperature", "Cel",
                                 _scaled(CENTI_CELSIUS, 0.01), "int16"),
    # OccupiedCooling/HeatingSetpoint int16 0.01 °C
    (THERMOSTAT, 0x0011): Metric("occupied_cooling_setpoint", "Cel",
                                 _scaled(CENTI_CELSIUS, 0.01), "int16"),
    (THERMOSTAT, 0x0012): Metric("occupied_heating_setpoint", "Cel",
                                 _scaled(CENTI_CELSIUS, 0.01), "int16"),
    # Illuminance 4.2: uint16 10000 × log10(lx) + 1, 0 too dark, 0xFFFF invalid
    (ILLUMINANCE, 0x0000): Metric("illuminance", "lx", _illuminance, "uint16"),
    # Temperature 4.4: int16 0.01 °C, −27315..32767, 0x8000 invalid
    (TEMPERATURE, 0x0000): Metric("temperature", "Cel", _scaled(CENTI_CELSIUS, 0.01), "int16"),
    # Pressure 4.5: MeasuredValue int16 0.1 kPa = 100 Pa, 0x8000 invalid
    (PRESSURE, 0x0000): Metric("pressure", "Pa", _scaled(INT16S, 100.0), "int16"),
    # ScaledValue int16, 10^Scale × Pa (Scale 0x0014 int8), 0x8000 invalid
    (PRESSURE, 0x0010): Metric("pressure", "Pa", _scaled_pressure, "int16"),
    # Flow 4.6: uint16 0.1 m³/h, 0xFFFF invalid; m³/h / 3600 = m³/s
    (FLOW, 0x0000): Metric("flow", "m3/s", _scaled(UINT16, 0.1 / 3600.0), "uint16"),
    # Relative Humidity 4.7: uint16 0.01 %, 0..10000, 0xFFFF invalid
    (HUMIDITY, 0x0000): Metric("humidity", "%RH",
                               _scaled(Int("uint16", 16, False, 0xFFFF, 0, 10000), 0.01),
                               "uint16"),
    # Occupancy 4.8: map8, bit 0 occupied
    (OCCUPANCY, 0x0000): Metric("occupancy", None, _bit0, "map8"),
    # Concentration 4.13: single, a fraction of 1 (1e-6 = 1 ppm), NaN invalid
    (CO2, 0x0000): Metric("co2", "ppm", lambda v, _: _ppm(v), "single"),
    # PM2.5: single in µg/m³ (ZHA and zigbee-herdsman read it so), NaN invalid
    (PM25, 0x0000): Metric("pm25", "ug/m3", lambda v, _: _pm25(v), "single"),
    # Metering (SE D.3): uint48 summation and int24 demand × Multiplier / Divisor
    (METERING, 0x0000): Metric("energy", "Wh", _summation, "uint48"),
    (METERING, 0x0400): Metric("power", "W", _demand, "int24"),
    # Electrical Measurement 4.9: each quantity has its own multiplier and divisor
    (ELECTRICAL, 0x0505): Metric("voltage", "V", _ratio(UINT16, 0x0600, 0x0601), "uint16"),
    (ELECTRICAL, 0x0508): Metric("current", "A", _ratio(UINT16, 0x0602, 0x0603), "uint16"),
    (ELECTRICAL, 0x050B): Metric("power", "W", _ratio(INT16S, 0x0604, 0x0605), "int16"),
}

_CO2 = _float_checker("single", 0.0, 1.0)
_PM25 = _float_checker("single", 0.0, 1e6)


def _single(x: float) -> float:
    """``x`` to the 7 significant digits a Single carries (0.0004 arrives as 3.9999999e-4)."""
    return float(f"{x:.7g}")


def _ppm(value: Any) -> Value | None:
    """A concentration fraction (1 = 100 %) as parts per million."""
    x = _CO2(value)
    return None if x is None else _single(x * 1e6)


def _pm25(value: Any) -> Value | None:
    x = _PM25(value)
    return None if x is None else _single(x)


#: water and gas meters: the same attributes under other names and units
_METERING_M3_METRICS = {
    0x0000: Metric("volume", "m3", _SUMMATION, "uint48"),
    0x0400: Metric("flow", "m3/s", _volume_rate, "int24"),
}

#: attributes that only scale others: cached by zigpy, never readings of their own
SCALING_ATTRIBUTES: dict[int, tuple[int, ...]] = {
    PRESSURE: (0x0014,),
    METERING: (0x0300, 0x0301, 0x0302),
    ELECTRICAL: (0x0600, 0x0601, 0x0602, 0x0603, 0x0604, 0x0605),
}


# -- IAS zones: the alarm bits mean different things for different zone types ------------

#: zone type → metric of the Alarm_1 bit (ZCL 8.2.2.2.1.3)
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

_ZONE_STATUS = _int_checker(Int("map16", 16, False, None))


def zone_status_readings(status: Any, zone_type: int | None) -> list[Reading3]:
    """IAS ZoneStatus (ZCL 8.2.2.2.1.4, map16) bits → readings.

    ``contact`` is True when closed (Alarm_1 clear), like a door sensor's reed switch;
    every other alarm metric is True while the alarm is raised.
    """
    bits = _ZONE_STATUS(status)
    assert bits is not None  # map16 has no invalid marker
    metric = ZONE_ALARM_METRIC.get(zone_type if zone_type is not None else -1, "alarm")
    alarm1 = bool(bits & 0x0001)
    value: Value = (not alarm1) if metric == "contact" else alarm1
    return [(metric, value, None), ("tamper", bool(bits & 0x0004), None),
            ("battery_low", bool(bits & 0x0008), None)]


# -- anything else ---------------------------------------------------------------------

def raw_metric(cluster_id: int, attribute_id: int, cluster_name: str | None,
               attribute_name: str | None) -> str:
    """Name of an attribute the table does not know: zigpy's names, else hex ids."""
    if cluster_name and attribute_name:
        name = metric_name(f"{cluster_name}_{attribute_name}")
        if name:
            return name
    return f"zcl_{cluster_id & 0xFFFF:04x}_{attribute_id & 0xFFFF:04x}"


def plain_value(value: Any) -> Value | None:
    """A ZCL value as a reading value: numbers stay numbers, the rest becomes text.

    Enums give their name, bitmaps their number, octet strings their hex; NaN and
    infinities, and text longer than :data:`~gateway.payloads.values.MAX_TEXT`, give None.
    Integers beyond 64 bits (uint64 counters) become text rather than be lost.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        if isinstance(value, enum.Flag):
            return int(value.value)
        return str(value.name)
    if isinstance(value, int):
        return int(value) if is_number(value) else str(int(value))
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex() if len(value) * 2 <= MAX_TEXT else None
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else None
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= MAX_TEXT else None


def _metric(cluster_id: int, attribute_id: int, lookup: Lookup) -> Metric | None:
    if cluster_id == METERING and attribute_id in _METERING_M3_METRICS:
        unit = _metering_unit(lookup)
        if unit == _METERING_M3:
            return _METERING_M3_METRICS[attribute_id]
        if unit != _METERING_KWH:
            return None  # BTU, ft³, kPa...: the raw name, unconverted
    return METRICS.get((cluster_id, attribute_id))


def normalise(cluster_id: int, attribute_id: int, value: Any, lookup: Lookup,
              cluster_name: str | None = None, attribute_name: str | None = None,
              zone_type: int | None = None) -> list[Reading3]:
    """Readings (metric, value, unit) of one attribute value (see the module docstring).

    ``[]`` for scaling factors and invalid markers; DecodeError ``bad_value`` for a value
    of the wrong type or out of the attribute's range; nothing else escapes.
    """
    if attribute_id in SCALING_ATTRIBUTES.get(cluster_id, ()):
        return []
    name = "zone_status"
    try:
        if cluster_id == IAS_ZONE and attribute_id == 0x0002:
            return zone_status_readings(value, zone_type)
        metric = _metric(cluster_id, attribute_id, lookup)
        if metric is not None:
            name = metric.name
            converted = metric.convert(value, lookup)
            return [] if converted is None else [(metric.name, converted, metric.unit)]
    except DecodeError as exc:
        raise DecodeError("bad_value", f"{name} (cluster 0x{cluster_id:04X} attribute "
                                       f"0x{attribute_id:04X}): {exc}") from None
    plain = plain_value(value)
    if plain is None:
        return []
    return [(raw_metric(cluster_id, attribute_id, cluster_name, attribute_name), plain, None)]
