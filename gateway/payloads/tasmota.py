"""Tasmota: the telemetry and status messages Tasmota firmware publishes over MQTT.

What it reads (https://tasmota.github.io/docs/MQTT/), by the topic's last segment:

- ``tele/<topic>/SENSOR`` (and ``stat/<topic>/STATUS8``/``STATUS10``, the same object
  under ``StatusSNS``): ``{"Time": "2019-11-03T19:34:28", "BME280": {"Temperature": 21.7,
  "Humidity": 66.6, "Pressure": 988.6}, "PressureUnit": "hPa", "TempUnit": "C"}``
  (https://tasmota.github.io/docs/BME280/). Each number in a sensor object is a metric
  named :func:`~gateway.payloads.names.metric_name` of ``<sensor>.<field>``:
  ``bme280_temperature``, ``sht3x_0x45_humidity``, ``ds18b20_1_temperature``,
  ``pms5003_pm2_5``, nested ``tx23_speed_act``; arrays (one value per channel) get
  ``_1``, ``_2``... The ``ENERGY`` object follows the same rule (``energy_total``,
  ``energy_power``...; https://tasmota.github.io/docs/devices/Sonoff-Pow-R2/), so the
  relay's ``power`` (on/off) and the meter's ``energy_power`` (W) never collide. Units
  come from the field name (:data:`FIELD_UNITS`, :data:`ENERGY_UNITS`) and from
  ``TempUnit`` (``C``/``F``), ``PressureUnit`` (``hPa``/``mmHg``/``inHg``, SetOption24
  and SetOption139) and ``SpeedUnit`` (https://tasmota.github.io/docs/Commands/#speedunit);
  ``"ON"``/``"OFF"`` (``Switch1``) become booleans, other text is skipped.
- ``tele/<topic>/STATE`` (and ``stat/<topic>/STATUS11``, under ``StatusSTS``),
  ``stat/<topic>/RESULT``: ``POWER``, ``POWER1``... ``"ON"``/``"OFF"`` → booleans
  ``power``, ``power1``...; ``Dimmer`` (%), ``CT`` (mired, no unit), ``Vcc`` (V),
  ``LoadAvg``, ``UptimeSec`` → ``uptime`` (s), ``Wifi.RSSI`` → ``wifi_rssi`` (%, Tasmota's
  signal quality) and ``Wifi.Signal`` → ``wifi_signal`` (dBm). The rest (heap, sleep,
  SSID...) is bookkeeping. A RESULT that carries none of these (a command's answer) has
  no readings and is no error.
- ``stat/<topic>/POWER``, ``POWER1``...: the text ``ON`` or ``OFF``.
- ``LWT``, ``INFO1``-``INFO3``, ``UPGRADE`` and other ``STATUS<n>``: no readings, no error.

Times: ``Epoch`` (UNIX seconds) when the message has it, else ``Time``, which is the
device's local time without zone unless ``TimeStd``/``Timezone`` configure an offset
(https://tasmota.github.io/docs/Commands/#timezone); a naive time is read as the
gateway's local time (:func:`~gateway.payloads.values.parse_timestamp`). A device in
another zone, or one whose clock never synchronised, is then hours or years off: a time
more than :data:`CLOCK_WINDOW` from the receive time is replaced by the receive time.
"""

from __future__ import annotations

from typing import Any

from gateway.payloads.base import Format, Options, Source
from gateway.payloads.errors import DecodeError
from gateway.payloads.names import metric_name
from gateway.payloads.values import Units, is_number, load_json, parse_timestamp, path_get
from gateway.reading import Reading

#: a device time further than this from the receive time (seconds) is not used
CLOCK_WINDOW = 86400.0
#: deepest object nesting read under a sensor (TX23 → Speed → Act is 3)
MAX_DEPTH = 4
#: most values of one array (channels) and most readings of one message
MAX_ARRAY = 16
MAX_READINGS = 1000
#: most distinct paths whose metric name and unit are cached (names come from devices)
MAX_CACHED = 4096

# placeholders for the units a message states itself
_TEMP, _PRESSURE, _SPEED = "@TempUnit", "@PressureUnit", "@SpeedUnit"

#: field of any sensor → unit (a SenML name or alias) and factor to it
FIELD_UNITS: dict[str, tuple[str, float]] = {
    "Temperature": (_TEMP, 1.0), "DewPoint": (_TEMP, 1.0), "HeatIndex": (_TEMP, 1.0),
    "Humidity": ("%RH", 1.0), "Moisture": ("%", 1.0),
    "Pressure": (_PRESSURE, 1.0), "SeaPressure": (_PRESSURE, 1.0),
    "Speed": (_SPEED, 1.0), "Dir": ("deg", 1.0),
    "Illuminance": ("lx", 1.0), "Ambient": ("lx", 1.0),
    "CarbonDioxide": ("ppm", 1.0), "eCO2": ("ppm", 1.0), "TVOC": ("ppb", 1.0),
    "PM1": ("ug/m3", 1.0), "PM2.5": ("ug/m3", 1.0), "PM10": ("ug/m3", 1.0),
    "CF1": ("ug/m3", 1.0), "CF2.5": ("ug/m3", 1.0), "CF10": ("ug/m3", 1.0),
    "Voltage": ("V", 1.0), "Current": ("A", 1.0), "Power": ("W", 1.0),
    "ActivePower": ("W", 1.0), "ApparentPower": ("VA", 1.0), "ReactivePower": ("var", 1.0),
    "Frequency": ("Hz", 1.0), "PhaseAngle": ("deg", 1.0),
    "Battery": ("%EL", 1.0), "Weight": ("kg", 1.0), "CCT": ("K", 1.0),
    "Gas": ("Ohm", 1000.0),  # BME680 gas resistance, published in kOhm
}
#: fields of the ENERGY object only: energies in kWh (Period in Wh), reactive in kvarh
ENERGY_UNITS: dict[str, tuple[str, float]] = {
    "Total": ("kWh", 1.0), "Yesterday": ("kWh", 1.0), "Today": ("kWh", 1.0),
    "TotalTariff": ("kWh", 1.0), "ExportActive": ("kWh", 1.0), "ExportTariff": ("kWh", 1.0),
    "ImportActive": ("kWh", 1.0), "Period": ("Wh", 1.0),
    "ImportReactive": ("vars", 3.6e6), "ExportReactive": ("vars", 3.6e6),
}
#: TempUnit, PressureUnit and SpeedUnit values → unit and factor
TEMP_UNITS: dict[str, tuple[str, float]] = {"C": ("Cel", 1.0), "F": ("F", 1.0), "K": ("K", 1.0)}
PRESSURE_UNITS: dict[str, tuple[str, float]] = {
    "hPa": ("hPa", 1.0), "mmHg": ("Pa", 133.322387415), "inHg": ("Pa", 3386.388640341)}
SPEED_UNITS: dict[str, tuple[str, float]] = {
    "m/s": ("m/s", 1.0), "km/h": ("km/h", 1.0), "kn": ("m/s", 1852.0 / 3600.0),
    "mph": ("m/s", 0.44704), "ft/s": ("m/s", 0.3048), "yd/s": ("m/s", 0.9144)}
#: keys of a SENSOR message that are not sensors (Tasmota's own Zigbee/IR/RF bridges
#: name devices inside the payload: not read by this format)
SENSOR_META = frozenset({"Time", "Epoch", "TempUnit", "PressureUnit", "SpeedUnit",
                         "ZbReceived", "IrReceived", "RfReceived"})
#: STATE/RESULT keys read, → metric and unit
STATE_FIELDS: dict[str, tuple[str, str | None]] = {
    "Dimmer": ("dimmer", "%"), "CT": ("ct", None), "Vcc": ("vcc", "V"),
    "LoadAvg": ("load_avg", None), "UptimeSec": ("uptime", "s"),
}
WIFI_FIELDS: dict[str, tuple[str, str | None]] = {
    "RSSI": ("wifi_rssi", "%"), "Signal": ("wifi_signal", "dBm")}
#: message types that carry no readings
EMPTY_TYPES = frozenset({"LWT", "INFO1", "INFO2", "INFO3", "UPGRADE"})
_ON_OFF = {"ON": True, "OFF": False}


def message_type(topic: str) -> str:
    """The Tasmota message type: the topic's last segment (``SENSOR`` with no topic)."""
    return topic.rsplit("/", 1)[-1].upper() if topic else "SENSOR"


def relay_metric(key: str) -> str | None:
    """``power``/``power<n>`` for ``POWER``/``POWER<n>``, else None."""
    upper = key.upper()
    if not upper.startswith("POWER"):
        return None
    suffix = upper[5:]
    if suffix == "" or (suffix.isdigit() and len(suffix) <= 2):
        return "power" + suffix
    return None


def on_off(raw: Any) -> bool | None:
    """True for ``ON``, False for ``OFF`` (any case), else None."""
    return _ON_OFF.get(raw.strip().upper()) if raw.__class__ is str else None


def _iso(raw: Any) -> Any:
    """Old firmware's ``2018.02.15 01:00:50`` as ISO 8601; anything else unchanged."""
    if raw.__class__ is str and len(raw) >= 10 and raw[4] == "." and raw[7] == ".":
        return f"{raw[:4]}-{raw[5:7]}-{raw[8:]}"
    return raw


def _dynamic(table: dict[str, tuple[str, float]], obj: dict[str, Any], key: str,
             default: tuple[str, float] | None) -> tuple[str, float] | None:
    """The unit a message states in ``key`` (``bad_unit`` if not one Tasmota writes)."""
    raw = obj.get(key)
    if raw is None:
        return default
    hit = table.get(raw) if raw.__class__ is str else None
    if hit is None:
        raise DecodeError("bad_unit", f"{key} {raw!r:.20} is not one of {', '.join(table)}")
    return hit


class Tasmota(Format):
    """Tasmota SENSOR, STATE, RESULT, POWER and STATUS messages; the type from the topic."""

    name = "tasmota"
    names_devices = False

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self._units = Units()
        self._paths: dict[tuple[str, ...], tuple[str, tuple[str, float] | None]] = {}
        #: the ``timestamp:`` field is the readings' time, not a reading
        ts_field = self.options.timestamp
        self._ts_path = tuple(ts_field.split(".")) if ts_field else None

    def decode(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        """The readings of one message; the message type is the topic's last segment."""
        device = source.device
        if device is None:
            raise DecodeError("no_device", "tasmota needs {device} (the device topic) in the "
                              "topic")
        kind = message_type(source.topic)
        relay = relay_metric(kind)
        if relay is not None:
            return [self._relay(device, relay, payload, now)]
        if kind in EMPTY_TYPES or (kind.startswith("STATUS") and kind not in
                                   ("STATUS8", "STATUS10", "STATUS11")):
            return []
        obj = load_json(payload)
        if type(obj) is not dict:
            raise DecodeError("bad_shape", f"{kind}: expected a JSON object, got "
                              f"{type(obj).__name__}")
        out: list[Reading] = []
        if kind in ("SENSOR", "ENERGY", "STATUS8", "STATUS10"):
            if kind.startswith("STATUS"):
                obj = self._unwrap(obj, "StatusSNS")
            self._sensor(device, obj, self._ts(obj, now), out)
        elif kind in ("STATE", "RESULT", "STATUS11"):
            if kind == "STATUS11":
                obj = self._unwrap(obj, "StatusSTS")
            self._state(device, obj, self._ts(obj, now), out)
            if not out and kind == "RESULT":
                return []  # the answer to a command that reports no state
        else:
            raise DecodeError("bad_shape", f"Tasmota message type {kind[:40]} is not read "
                              "(SENSOR, STATE, RESULT, POWER, STATUS8/10/11)")
        if not out:
            raise DecodeError("no_values", f"{kind}: no numbers or ON/OFF values")
        return out

    # -- message parts ---------------------------------------------------------------------

    @staticmethod
    def _unwrap(obj: dict[str, Any], key: str) -> dict[str, Any]:
        inner = obj.get(key)
        if type(inner) is not dict:
            raise DecodeError("bad_shape", f"expected an object under {key}")
        return inner

    @staticmethod
    def _relay(device: str, metric: str, payload: bytes, now: float) -> Reading:
        """``stat/<topic>/POWER`` with ``ON``/``OFF``."""
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("bad_text", "POWER payload is not UTF-8 text") from None
        value = on_off(text)
        if value is None:
            raise DecodeError("bad_text", f"POWER payload must be ON or OFF, got {text!r:.40}")
        return Reading(device, metric, value, None, now)

    def _ts(self, obj: dict[str, Any], now: float) -> float:
        """``Epoch``, else ``Time`` (or ``timestamp:``); ``now`` when a day or more off."""
        opts = self.options
        if opts.timestamp:
            ts = parse_timestamp(_iso(path_get(obj, opts.timestamp)), opts.timestamp_unit)
        else:
            epoch = obj.get("Epoch")
            ts = parse_timestamp(epoch if is_number(epoch) else _iso(obj.get("Time")))
        if ts is None or not abs(ts - now) <= CLOCK_WINDOW:
            return now
        return ts

    def _state(self, device: str, obj: dict[str, Any], ts: float, out: list[Reading]) -> None:
        """Relays, dimmer, supply voltage, load, uptime and Wi-Fi of STATE/RESULT."""
        for key, raw in obj.items():
            relay = relay_metric(key)
            if relay is not None:
                value = on_off(raw)
                if value is not None:
                    out.append(Reading(device, relay, value, None, ts))
                continue
            spec = STATE_FIELDS.get(key)
            if spec is not None:
                self._number(device, spec[0], raw, spec[1], 1.0, ts, out)
            elif key == "Wifi" and type(raw) is dict:
                for sub, (metric, unit) in WIFI_FIELDS.items():
                    self._number(device, metric, raw.get(sub), unit, 1.0, ts, out)

    def _number(self, device: str, metric: str, raw: Any, unit: str | None, scale: float,
                ts: float, out: list[Reading]) -> None:
        if raw.__class__ is int or raw.__class__ is float:
            r = self._units.reading(device, metric, raw, unit, ts, scale)
            if r is not None:
                out.append(r)

    def _sensor(self, device: str, obj: dict[str, Any], ts: float, out: list[Reading]) -> None:
        """Every sensor object of a SENSOR message, with the units the message states."""
        stated = {
            _TEMP: _dynamic(TEMP_UNITS, obj, "TempUnit", TEMP_UNITS["C"]),
            _PRESSURE: _dynamic(PRESSURE_UNITS, obj, "PressureUnit", PRESSURE_UNITS["hPa"]),
            _SPEED: _dynamic(SPEED_UNITS, obj, "SpeedUnit", None),
        }
        for key, raw in obj.items():
            if key in SENSOR_META:
                continue
            self._leaf(device, (key,), raw, stated, ts, out, 0)

    def _leaf(self, device: str, path: tuple[str, ...], raw: Any,
              stated: dict[str, tuple[str, float] | None], ts: float, out: list[Reading],
              depth: int) -> None:
        """One value at ``path``: a number, ON/OFF, an array of channels or an object."""
        if path == self._ts_path:
            return
        cls = raw.__class__
        if cls is dict:
            if depth < MAX_DEPTH:
                for k, v in raw.items():
                    self._leaf(device, (*path, str(k)), v, stated, ts, out, depth + 1)
            return
        if cls is list:
            if depth < MAX_DEPTH:
                for i, v in enumerate(raw[:MAX_ARRAY]):
                    if v.__class__ is not list and v.__class__ is not dict:
                        self._leaf(device, (*path, str(i + 1)), v, stated, ts, out, depth + 1)
            return
        if cls is str:
            value = on_off(raw)
            if value is None:
                return
            metric, _ = self._path(path)
            if metric:
                out.append(Reading(device, metric, value, None, ts))
        elif cls is bool:
            metric, _ = self._path(path)
            if metric:
                out.append(Reading(device, metric, raw, None, ts))
        elif cls is int or cls is float:
            metric, spec = self._path(path)
            if not metric:
                return
            if spec is not None and spec[0][0] == "@":
                spec = stated[spec[0]]
            unit, scale = (None, 1.0) if spec is None else spec
            r = self._units.reading(device, metric, raw, unit, ts, scale)
            if r is not None:
                out.append(r)
        else:
            return
        if len(out) > MAX_READINGS:
            raise DecodeError("bad_shape", f"more than {MAX_READINGS} values in one message")

    def _path(self, path: tuple[str, ...]) -> tuple[str, tuple[str, float] | None]:
        """Metric name and unit spec of a value's path (cached, bounded)."""
        hit = self._paths.get(path)
        if hit is not None:
            return hit
        field = path[1] if len(path) > 1 else path[0]
        spec = ENERGY_UNITS.get(field) if path[0] == "ENERGY" else None
        if spec is None:
            spec = FIELD_UNITS.get(field)
        hit = (metric_name(".".join(path)), spec)
        if len(self._paths) < MAX_CACHED:
            self._paths[path] = hit
        return hit
