"""Cayenne LPP: the binary frame of (channel, type, value) records many LoRaWAN devices send.

``format: cayenne_lpp`` reads the frame as the payload of one device (the topic's
``{device}``); the LoRaWAN adapter calls :func:`decode_lpp` for ``decoder: cayenne``.

The frame is a run of records ``<channel: 1 byte> <type: 1 byte> <value>``; the type
(the IPSO Smart Object id minus 3200) fixes the value's size, sign and resolution, all
big-endian. The types and their layouts follow the public implementations:

- myDevices, *Cayenne Low Power Payload* (the original LPPv1 types):
  https://docs.mydevices.com/docs/lorawan/cayenne-lpp
- ElectronicCats/CayenneLPP (the Arduino library TTN documents, ``src/CayenneLPP.h``)
  for the extended types 100-142: https://github.com/ElectronicCats/CayenneLPP
- The Things Stack's built-in formatter (``pkg/messageprocessors/cayennelpp``) for the
  key names: https://github.com/TheThingsNetwork/lorawan-stack
- smlng/pycayennelpp for type 122 (load): https://github.com/smlng/pycayennelpp
- ChirpStack v4's built-in codec (``chirpstack/src/codec/cayenne_lpp.rs``):
  https://github.com/chirpstack/chirpstack

Metric names are ``<key>_<channel>`` with the keys of The Things Stack's built-in Cayenne
formatter (``temperature_3``, ``relative_humidity_2``, ``barometric_pressure_4``...), the
names most LoRaWAN users meet first, and ElectronicCats' ``getTypeName`` keys for the
types The Things Stack does not decode (``voltage_1``, ``concentration_5``...). Types with
several values get one reading each, named by the sub-key those decoders write
(``accelerometer_7_x``, ``gps_8_latitude``, ``colour_9_r``): the names a JS codec in
ChirpStack that returns the same object produces once its object is flattened, so a
device keeps its metric names whichever side decodes its frames. ChirpStack's own
built-in codec writes ``{"temperatureSensor": {"3": 27.2}}`` instead; the ``fields:`` map
of a LoRaWAN profile renames either.

Values are in SenML units (RFC 8428): barometric pressure 0.1 hPa steps become Pa,
acceleration in G becomes m/s2, energy in kWh becomes Wh, angular rate in °/s becomes
rad/s. Type 133 (UNIX time) stays a value, ``time_<channel>`` in s: which reading a
device means it for is not in the frame, so every reading of a frame carries the receive
time. Digital inputs and outputs, presence and switch keep the integer the device sent
(as every decoder above does); ``generic`` is an unsigned 32-bit count.

Frames are bounded at :data:`MAX_FRAME` bytes: LoRaWAN's largest application payload is
242 bytes, and every encoder above keeps its buffer size and cursor in one byte, so no
LPP encoder writes more than 255; a longer frame is refused (``bad_frame``) before it is
read, as is a truncated record or an unknown type.
"""

from __future__ import annotations

from typing import ClassVar

from gateway.payloads.base import Format, Source
from gateway.payloads.errors import DecodeError
from gateway.reading import Reading, Value

#: longest frame read (bytes); see the module docstring
MAX_FRAME = 255

Candidate = tuple[str, Value, str | None]

_G = 9.80665
_DEG_TO_RAD = 0.017453292519943295

#: single-value types: type → (key, size, signed, factor to the SenML unit, unit, digits)
#: ``digits`` rounds away binary noise (0.1 × 213 = 21.300000000000001); None: integer
_SCALAR: dict[int, tuple[str, int, bool, float, str | None, int | None]] = {
    0: ("digital_in", 1, False, 1, None, None),
    1: ("digital_out", 1, False, 1, None, None),
    2: ("analog_in", 2, True, 0.01, None, 2),
    3: ("analog_out", 2, True, 0.01, None, 2),
    100: ("generic", 4, False, 1, None, None),
    101: ("luminosity", 2, False, 1, "lx", None),
    102: ("presence", 1, False, 1, None, None),
    103: ("temperature", 2, True, 0.1, "Cel", 1),
    104: ("relative_humidity", 1, False, 0.5, "%RH", 1),
    115: ("barometric_pressure", 2, False, 10.0, "Pa", None),   # 0.1 hPa = 10 Pa
    116: ("voltage", 2, False, 0.01, "V", 2),
    117: ("current", 2, False, 0.001, "A", 3),
    118: ("frequency", 4, False, 1, "Hz", None),
    120: ("percentage", 1, False, 1, "%", None),
    121: ("altitude", 2, True, 1, "m", None),
    122: ("load", 3, True, 0.001, "kg", 3),
    125: ("concentration", 2, False, 1, "ppm", None),
    128: ("power", 2, False, 1, "W", None),
    130: ("distance", 4, False, 0.001, "m", 3),
    131: ("energy", 4, False, 1, "Wh", None),                   # 0.001 kWh = 1 Wh
    132: ("direction", 2, False, 1, "deg", None),
    133: ("time", 4, False, 1, "s", None),
    142: ("switch", 1, False, 1, None, None),
}

#: multi-value types: type → (key, [(sub-key, size, signed, factor, unit, digits)...])
_VECTOR: dict[int, tuple[str, tuple[tuple[str, int, bool, float, str | None, int], ...]]] = {
    113: ("accelerometer", tuple((a, 2, True, 0.001 * _G, "m/s2", 5) for a in "xyz")),
    134: ("gyrometer", tuple((a, 2, True, 0.01 * _DEG_TO_RAD, "rad/s", 6) for a in "xyz")),
    135: ("colour", tuple((c, 1, False, 1, None, 0) for c in "rgb")),
    136: ("gps", (("latitude", 3, True, 0.0001, "lat", 4),
                 ("longitude", 3, True, 0.0001, "lon", 4),
                 ("altitude", 3, True, 0.01, "m", 2))),
}

#: type → value bytes after the 2-byte header, for the length check
_SIZE = {t: s[1] for t, s in _SCALAR.items()}
_SIZE.update({t: sum(p[1] for p in parts) for t, (_, parts) in _VECTOR.items()})

# names per (type, channel): at most 256 × 27 strings, built once each
_NAMES: dict[tuple[int, int], str] = {}
_SUB_NAMES: dict[tuple[int, int], tuple[str, ...]] = {}


def _name(kind: int, channel: int) -> str:
    name = _NAMES.get((kind, channel))
    if name is None:
        name = _NAMES[(kind, channel)] = f"{_SCALAR[kind][0]}_{channel}"
    return name


def _sub_names(kind: int, channel: int) -> tuple[str, ...]:
    names = _SUB_NAMES.get((kind, channel))
    if names is None:
        key, parts = _VECTOR[kind]
        names = _SUB_NAMES[(kind, channel)] = tuple(f"{key}_{channel}_{p[0]}" for p in parts)
    return names


def _number(raw: int, factor: float, digits: int | None) -> int | float:
    if digits is None:
        return raw if factor == 1 else int(raw * factor)
    if digits == 0:
        return raw
    return round(raw * factor, digits)


def decode_lpp(data: bytes) -> list[Candidate]:
    """The ``(metric, value, SenML unit)`` of every record of a Cayenne LPP frame.

    Raises :class:`DecodeError` (``bad_frame``) for a frame longer than
    :data:`MAX_FRAME`, a truncated record or an unknown type; an empty frame has no
    records (``[]``).
    """
    n = len(data)
    if n > MAX_FRAME:
        raise DecodeError("bad_frame", f"Cayenne LPP frame of {n} bytes; at most {MAX_FRAME} "
                          "(LoRaWAN payloads are at most 242)")
    out: list[Candidate] = []
    i = 0
    while i < n:
        if i + 2 > n:
            raise DecodeError("bad_frame", f"Cayenne LPP: truncated record header at byte {i}")
        channel, kind = data[i], data[i + 1]
        size = _SIZE.get(kind)
        if size is None:
            raise DecodeError("bad_frame", f"Cayenne LPP: unknown type {kind} on channel "
                              f"{channel} at byte {i + 1}")
        i += 2
        if i + size > n:
            raise DecodeError("bad_frame", f"Cayenne LPP: type {kind} on channel {channel} "
                              f"needs {size} bytes at byte {i}, the frame has {n - i}")
        scalar = _SCALAR.get(kind)
        if scalar is not None:
            _, _, signed, factor, unit, digits = scalar
            raw = int.from_bytes(data[i:i + size], "big", signed=signed)
            out.append((_name(kind, channel), _number(raw, factor, digits), unit))
        else:
            pos = i
            names = _sub_names(kind, channel)
            for name, (_, width, signed, factor, unit, digits) in zip(
                    names, _VECTOR[kind][1], strict=True):
                raw = int.from_bytes(data[pos:pos + width], "big", signed=signed)
                out.append((name, _number(raw, factor, digits), unit))
                pos += width
        i += size
    return out


class CayenneLpp(Format):
    """``format: cayenne_lpp``: one Cayenne LPP frame per message, from one device.

    The topic (or CoAP path) names the device; every reading carries the receive time.
    """

    name: ClassVar[str] = "cayenne_lpp"

    def decode(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        device = source.device
        if device is None:
            raise DecodeError("no_device", "Cayenne LPP frames do not name their device: "
                              "put {device} in the topic")
        records = decode_lpp(payload)
        if not records:
            raise DecodeError("no_values", "empty Cayenne LPP frame")
        return [Reading(device, metric, value, unit, now) for metric, value, unit in records]
