"""SenML units and metric names → Home Assistant sensor device classes, units, state classes.

One table, checked against Home Assistant's sensor documentation
(https://developers.home-assistant.io/docs/core/entity/sensor/#available-device-classes
and https://www.home-assistant.io/integrations/sensor/#device-class): each device class is
given only a unit it allows and a state class it allows. Pure functions, no I/O.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.reading import Value


class SensorKind(NamedTuple):
    """How one metric looks to Home Assistant."""

    component: str  # sensor | binary_sensor
    device_class: str | None
    unit: str | None  # Home Assistant's spelling (°C, µg/m³...)
    state_class: str | None


#: SenML unit → (device class, Home Assistant unit, state class); None: no device class
UNITS: dict[str, tuple[str | None, str, str | None]] = {
    "Cel": ("temperature", "°C", "measurement"),
    "K": ("temperature", "K", "measurement"),
    "%RH": ("humidity", "%", "measurement"),
    "%EL": ("battery", "%", "measurement"),
    "W": ("power", "W", "measurement"),
    "VA": ("apparent_power", "VA", "measurement"),
    "var": ("reactive_power", "var", "measurement"),
    "Wh": ("energy", "Wh", "total_increasing"),
    "J": ("energy", "J", "total_increasing"),
    "V": ("voltage", "V", "measurement"),
    "A": ("current", "A", "measurement"),
    "Hz": ("frequency", "Hz", "measurement"),
    "lx": ("illuminance", "lx", "measurement"),
    "Pa": ("pressure", "Pa", "measurement"),
    "ppm": ("carbon_dioxide", "ppm", "measurement"),  # refined by metric name below
    "ug/m3": ("pm25", "µg/m³", "measurement"),  # refined by metric name below
    "dBm": ("signal_strength", "dBm", "measurement"),
    "dB": ("sound_pressure", "dB", "measurement"),
    "W/m2": ("irradiance", "W/m²", "measurement"),
    "m/s": ("speed", "m/s", "measurement"),
    "km/h": ("speed", "km/h", "measurement"),
    "mm/h": ("precipitation_intensity", "mm/h", "measurement"),
    "m": ("distance", "m", "measurement"),
    "cm": ("distance", "cm", "measurement"),
    "mm": ("distance", "mm", "measurement"),
    "km": ("distance", "km", "measurement"),
    "kg": ("weight", "kg", "measurement"),
    "g": ("weight", "g", "measurement"),
    "s": ("duration", "s", "measurement"),
    "m3": ("volume", "m³", "total_increasing"),
    "l": ("volume", "L", "total_increasing"),
    "%": (None, "%", "measurement"),
    "count": (None, "count", "measurement"),
    "ppb": (None, "ppb", "measurement"),
    "deg": (None, "°", "measurement"),
    "pH": ("ph", "", "measurement"),
}

#: device classes for a unit by metric name, where one unit means several things
BY_METRIC: dict[tuple[str, str], str] = {
    ("ppm", "co"): "carbon_monoxide",
    ("ppm", "carbon_monoxide"): "carbon_monoxide",
    ("ppm", "tvoc"): "volatile_organic_compounds_parts",
    ("ppm", "voc"): "volatile_organic_compounds_parts",
    ("ug/m3", "pm10"): "pm10",
    ("ug/m3", "pm1"): "pm1",
    ("ug/m3", "voc"): "volatile_organic_compounds",
    ("ug/m3", "tvoc"): "volatile_organic_compounds",
    ("Pa", "atmospheric_pressure"): "atmospheric_pressure",
    ("%", "moisture"): "moisture",
    ("%", "soil_moisture"): "moisture",
    ("%", "power_factor"): "power_factor",
    ("m3", "gas"): "gas",
    ("m3", "water"): "water",
    ("l", "water"): "water",
    ("m/s", "wind_speed"): "wind_speed",
    ("km/h", "wind_speed"): "wind_speed",
}

#: bool metrics → binary sensor device class (Home Assistant's binary_sensor classes)
BINARY: dict[str, str | None] = {
    "occupancy": "occupancy", "presence": "presence", "motion": "motion",
    "contact": "door", "door": "door", "window": "window", "opening": "opening",
    "water_leak": "moisture", "leak": "moisture", "moisture": "moisture",
    "smoke": "smoke", "gas": "gas", "carbon_monoxide": "carbon_monoxide",
    "tamper": "tamper", "battery_low": "battery", "vibration": "vibration",
    "alarm": "safety", "problem": "problem", "connectivity": "connectivity",
    "on_off": "power", "plug": "plug", "light": "light", "sound": "sound",
}

#: metrics counted up over time (a device class total_increasing fits when it allows it)
_TOTALS = frozenset({"energy", "gas", "water", "volume"})


def sensor_kind(metric: str, unit: str | None, value: Value) -> SensorKind:
    """How Home Assistant should show ``metric`` (its latest ``value`` gives the type)."""
    if isinstance(value, bool):
        return SensorKind("binary_sensor", BINARY.get(metric), None, None)
    if isinstance(value, str):
        return SensorKind("sensor", None, None, None)  # a text sensor: no unit or class
    if unit is None:
        return SensorKind("sensor", "aqi" if metric == "aqi" else None, None, "measurement")
    found = UNITS.get(unit)
    if found is None:
        # an unknown unit is still shown, as it is, without a device class
        return SensorKind("sensor", None, unit, "measurement")
    device_class, ha_unit, state_class = found
    device_class = BY_METRIC.get((unit, metric), device_class)
    if device_class in _TOTALS:
        state_class = "total_increasing"
    return SensorKind("sensor", device_class, ha_unit or None, state_class)


def friendly(metric: str) -> str:
    """``battery_low`` → ``Battery low``: an entity's name."""
    text = metric.replace("_", " ").strip()
    return text[:1].upper() + text[1:] if text else metric
