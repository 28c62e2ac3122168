"""The unit table: what devices write → SenML unit names (RFC 8428 / RFC 8798).

One place for every alias and conversion, so a payload in hPa or °F lands in the outbox
in Pa or Cel, the way every other adapter reports it.
"""

from __future__ import annotations

from collections.abc import Callable

Convert = Callable[[float], float]

#: SenML names we pass through unchanged (RFC 8428 registry and RFC 8798 secondary units)
SENML_UNITS = frozenset({
    "m", "kg", "g", "s", "A", "K", "cd", "mol", "Hz", "rad", "sr", "N", "Pa", "J", "W", "C",
    "V", "F", "Ohm", "S", "Wb", "T", "H", "Cel", "lm", "lx", "Bq", "Gy", "Sv", "kat", "m2",
    "m3", "l", "m/s", "m/s2", "m3/s", "l/s", "W/m2", "cd/m2", "bit", "bit/s", "lat", "lon",
    "pH", "dB", "dBW", "Bspl", "count", "/", "%", "%RH", "%EL", "EL", "1/s", "1/min",
    "beat/min", "beats", "S/m", "B", "VA", "VAs", "var", "vars", "J/m", "kg/m3", "deg",
    "Wh", "dBm", "ppm", "ppb", "ug/m3", "mm/h", "m/h", "mm", "cm", "km", "km/h", "Ah",
})


def _scale(factor: float) -> Convert:
    return lambda x: x * factor


#: alias → (SenML unit, conversion); keys are matched case-sensitively first, then lowercased
ALIASES: dict[str, tuple[str, Convert | None]] = {
    "°C": ("Cel", None), "C": ("Cel", None), "degC": ("Cel", None), "celsius": ("Cel", None),
    "°F": ("Cel", lambda f: (f - 32.0) * 5.0 / 9.0), "F": ("Cel", lambda f: (f - 32.0) * 5.0 / 9.0),
    "degF": ("Cel", lambda f: (f - 32.0) * 5.0 / 9.0),
    "fahrenheit": ("Cel", lambda f: (f - 32.0) * 5.0 / 9.0),
    "%rh": ("%RH", None), "% RH": ("%RH", None), "%el": ("%EL", None),
    "hPa": ("Pa", _scale(100.0)), "mbar": ("Pa", _scale(100.0)), "kPa": ("Pa", _scale(1000.0)),
    "bar": ("Pa", _scale(100_000.0)),
    "mV": ("V", _scale(0.001)), "mA": ("A", _scale(0.001)), "kW": ("W", _scale(1000.0)),
    "kWh": ("Wh", _scale(1000.0)), "kVA": ("VA", _scale(1000.0)),
    "lux": ("lx", None), "Lux": ("lx", None),
    "ms": ("s", _scale(0.001)), "min": ("s", _scale(60.0)), "h": ("s", _scale(3600.0)),
    "µg/m³": ("ug/m3", None), "μg/m³": ("ug/m3", None), "µg/m3": ("ug/m3", None),
    "m³": ("m3", None), "L": ("l", None), "dbm": ("dBm", None),
}
_LOWER = {k.lower(): v for k, v in ALIASES.items()}

#: a bare "%" means different things by metric
PERCENT_BY_METRIC = {"humidity": "%RH", "relative_humidity": "%RH", "battery": "%EL"}


class UnknownUnit(ValueError):
    """A unit that is neither a SenML name nor a known alias."""


def normalize(unit: str, metric: str = "") -> tuple[str, Convert | None]:
    """SenML name and value conversion for ``unit`` (raise :class:`UnknownUnit`).

    Exact aliases win over SenML names: sensors that write "C" or "F" mean degrees
    Celsius or Fahrenheit, not coulomb or farad.
    """
    if unit == "%":
        return PERCENT_BY_METRIC.get(metric, "%"), None
    hit = ALIASES.get(unit)
    if hit is not None:
        return hit
    if unit in SENML_UNITS:
        return unit, None
    hit = _LOWER.get(unit.lower())
    if hit is None:
        raise UnknownUnit(f"unknown unit {unit!r}: use a SenML name (Cel, %RH, Pa, W, Wh, V, "
                          f"lx, ...) or a known alias (°C, °F, hPa, kWh, mV, ...)")
    return hit


def check(unit: str) -> str:
    """Config validator: ``unit`` must be a SenML name or a known alias."""
    normalize(unit)
    return unit


def check_optional(unit: str | None) -> str | None:
    """Config validator for an optional unit field (None passes)."""
    return None if unit is None else check(unit)
