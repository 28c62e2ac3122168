"""SenML packs (RFC 8428) in JSON and CBOR, read strictly.

What it reads:

- ``application/senml+json`` (CoAP Content-Format 110, ``format: senml``) and
  ``application/senml+cbor`` (112, ``format: senml+cbor``): a pack is an array of
  records. RFC 8428: https://www.rfc-editor.org/rfc/rfc8428 (§4 data model, §5 JSON,
  §6 CBOR with the integer labels of Table 4).
- Base fields ``bn``, ``bt``, ``bu``, ``bv``, ``bs`` and ``bver`` apply from their record
  on (§4.1); regular fields ``n``, ``u``, ``v``, ``vs``, ``vb``, ``vd``, ``s``, ``t``,
  ``ut`` (§4.2). Resolution follows §4.6: name = bn + n, time = bt + t (times below
  2**28 are relative to the receive time, §4.5.3), value = bv + v, sum = bs + s, unit =
  u or bu.

What becomes a reading (each record gives one, plus one for its sum):

- ``v`` → a number in the SenML unit (aliases such as °C or hPa converted by the unit
  table, an unknown unit refused ``bad_unit``); ``vb`` → true/false; ``vs`` → text;
  ``vd`` → its base64url text (RFC 4648 §5, no padding; a CBOR byte string is encoded
  so), at most :data:`~gateway.payloads.values.MAX_TEXT` characters (192 bytes), longer
  data is refused ``bad_value`` rather than dropped.
- ``s`` (plus the ``bs`` in effect) → ``<metric>_sum``. A sum is in the unit × s
  (§4.2): W → J, A → C, VA → VAs, var → vars, l/s → l, m3/s → m3, m/s → m, 1/s or Hz →
  count, 1/min → count ÷ 60, beat/min → beats ÷ 60, bit/s → bit, km/h → km ÷ 3600 (and
  m/h, mm/h); a unit × s with no SenML name (Cel × s...) leaves the sum without a unit.
  A record may carry a sum with or without a value.
- A record of base fields only gives no reading; ``ut`` is checked and ignored.

Device and metric, from the resolved name (bn + n):

- When the transport names the device (``source.native``), every reading is of it.
- Otherwise the name does: with both ``bn`` and ``n``, ``bn`` (trailing ``:/._-``
  stripped) is the device and ``n`` the metric; with only one of them, the full name
  is split at its last ``:`` or ``/`` (``urn:dev:ow:10e2073a01080063:temp`` → device
  ``urn:dev:ow:10e2073a01080063``, metric ``temp``). Device ids hold no ``/``: a name
  path ``2001:db8::2/room/temp`` names device ``2001:db8::2`` and metric ``room_temp``.
- A name whose last part is no metric (it starts with a digit, as in
  ``urn:dev:ow:10e2073a01080063``, or it is a bare RFC 9039 device URN
  ``urn:dev:<type>:<id>``) names the device alone; the metric is then the quantity of
  its unit (Cel → temperature, %RH → humidity, lat → latitude...: :data:`UNIT_METRICS`),
  refused ``bad_name`` for a unit that names none. Metrics are the same in both modes,
  but for a one-part name (no ``:`` or ``/``): with the device named by the transport
  it is the metric (``[{"bn": "thermometer", "v": 21}]`` → ``thermometer``), else the
  device (and the metric comes from the unit).

Strictness (every refusal is a :class:`~gateway.payloads.errors.DecodeError`):
names outside §4.5.1's characters ``[A-Za-z0-9][A-Za-z0-9:./_-]*``, a record with two
value fields or a name but no value or sum, fields of the wrong type, ``bver`` other
than an integer 1..10 or differing between records (§4.4), labels ending in ``_``
(§4.4), text labels in CBOR where Table 4 has integers, a ``vd`` that is not base64url
(JSON) or not a byte string (CBOR) and more than :data:`MAX_RECORDS` records are
``bad_senml``. Other labels are ignored (§4.4). A record as such, not inside an array,
is not a pack (§5).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from gateway.payloads.base import Format, Options, Source
from gateway.payloads.errors import DecodeError
from gateway.payloads.names import metric_name
from gateway.payloads.values import INT_MAX, MAX_TEXT, Units, load_cbor, load_json, native_id, sig
from gateway.reading import Reading

#: the SenML version this decoder implements (RFC 8428 is version 10)
VERSION = 10
#: most records a pack may hold
MAX_RECORDS = 1000
#: longest resolved name (bn + n) taken from a pack
MAX_NAME = 256
#: times below this are relative to now (RFC 8428 §4.5.3)
RELATIVE = 2**28
#: SenML CBOR integer labels (RFC 8428 Table 4) → JSON labels
LABELS: dict[int, str] = {
    -1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
    0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}
_CBOR_LABEL = {v: k for k, v in LABELS.items()}
_KNOWN = frozenset(LABELS.values())
_REGULAR = ("n", "u", "t", "ut", "v", "vs", "vb", "vd", "s")
#: the metric of a record whose name names only its device, by SenML unit
UNIT_METRICS: dict[str, str] = {
    "Cel": "temperature", "K": "temperature", "%RH": "humidity", "%EL": "battery",
    "lat": "latitude", "lon": "longitude", "Pa": "pressure", "V": "voltage", "A": "current",
    "W": "power", "VA": "apparent_power", "var": "reactive_power", "Wh": "energy",
    "J": "energy", "lx": "illuminance", "Hz": "frequency", "m/s": "speed",
    "beat/min": "heart_rate",
}
#: SenML unit → (unit of its sum, unit × s, and the factor to it); RFC 8428 §4.2
SUM_UNITS: dict[str, tuple[str, float]] = {
    "W": ("J", 1.0), "VA": ("VAs", 1.0), "var": ("vars", 1.0), "A": ("C", 1.0),
    "l/s": ("l", 1.0), "m3/s": ("m3", 1.0), "m/s": ("m", 1.0), "1/s": ("count", 1.0),
    "Hz": ("count", 1.0), "1/min": ("count", 1 / 60), "beat/min": ("beats", 1 / 60),
    "bit/s": ("bit", 1.0), "km/h": ("km", 1 / 3600), "m/h": ("m", 1 / 3600),
    "mm/h": ("mm", 1 / 3600),
}
_SEPARATORS = ":/._-"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_CACHE_MAX = 4096


class _Name(NamedTuple):
    """A resolved name split into device (native id, or None) and metric (or None).

    ``single`` is the metric a one-part name (no ``:`` or ``/``) gives when the
    transport names the device: the name is then the sensor's, not the device's.
    """

    device: str | None
    metric: str | None
    single: str | None = None


_names: dict[tuple[str, str], _Name] = {}
_sum_metrics: dict[str, str] = {}


def _fail(reason: str, where: str, message: str) -> DecodeError:
    return DecodeError(reason, f"{where}: {message}")


def _number(raw: Any, where: str, label: str, reason: str) -> int | float:
    """``raw`` as an int (64-bit) or finite float; ``bad_senml`` for another type.

    ``reason`` is raised for a number out of range (infinite, NaN, beyond 64 bits).
    CBOR decimal fractions (tag 4, :class:`~decimal.Decimal`) become floats.
    """
    cls = raw.__class__
    if cls is int:
        if -INT_MAX <= raw <= INT_MAX:
            return int(raw)
        raise _fail(reason, where, f"{label} is beyond the 64-bit integer range")
    if cls is float:
        if math.isfinite(raw):
            return float(raw)
        raise _fail(reason, where, f"{label} must be a finite number, not {raw}")
    if cls is Decimal:
        try:
            value = float(raw) if raw.is_finite() else math.inf
        except (ValueError, ArithmeticError):
            value = math.inf
        if math.isfinite(value):
            return value
        raise _fail(reason, where, f"{label} must be a finite number")
    raise _fail("bad_senml", where, f"{label} must be a number, not {_kind(raw)}")


def _kind(raw: Any) -> str:
    """The JSON-ish type name of ``raw``, for messages."""
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "true/false"
    if isinstance(raw, str):
        return "text"
    return type(raw).__name__


def _add(base: int | float | None, value: int | float, where: str, label: str,
         reason: str) -> int | float:
    """``base + value`` (ints stay ints), checked to stay a finite 64-bit number."""
    if base is None:
        return value
    total = base + value
    if total.__class__ is int:
        if -INT_MAX <= total <= INT_MAX:
            return total
    elif math.isfinite(total):
        return total
    raise _fail(reason, where, f"{label} is out of range once its base is added")


def _fields(rec: dict[Any, Any], where: str, cbor: bool) -> dict[str, Any]:
    """The RFC 8428 fields of one record by JSON label; other labels are dropped.

    Integer labels are mapped by Table 4 (CBOR). A label ending in ``_`` is a field
    that must be understood (§4.4): none is, so it is refused; so is a text label in
    CBOR that Table 4 gives an integer for.
    """
    out: dict[str, Any] = {}
    for key, raw in rec.items():
        cls = key.__class__
        if cls is str:
            if key in _KNOWN:
                if cbor:
                    raise _fail("bad_senml", where, f"text label {key!r} in SenML CBOR: use "
                                f"the integer label {_CBOR_LABEL[key]} (RFC 8428 Table 4)")
                out[key] = raw
            elif key.endswith("_"):
                raise _fail("bad_senml", where, f"label {key[:40]!r} must be understood "
                            "(it ends in '_', RFC 8428 §4.4) and this gateway does not")
        elif cls is int and cbor:
            label = LABELS.get(key)
            if label is not None:
                out[label] = raw
    return out


def _check_name(name: str, where: str) -> None:
    """Refuse a resolved name that breaks RFC 8428 §4.5.1 or is too long."""
    if len(name) > MAX_NAME:
        raise _fail("bad_name", where, f"name longer than {MAX_NAME} characters")
    if not _NAME.fullmatch(name):
        raise _fail("bad_senml", where, f"name {name[:60]!r} breaks RFC 8428 §4.5.1: letters, "
                    "digits and - : . / _ only, starting with a letter or digit")


def _no_metric(part: str) -> bool:
    """Whether the last part of a name is an id or index rather than a quantity."""
    return not part or not part[0].isalpha()


def _split(bn: str, n: str) -> _Name:
    """Device (native id, unchecked) and metric of the name bn + n (see the module doc)."""
    if bn and n:
        device, sensor = bn.rstrip(_SEPARATORS), n
    else:
        full = (bn or n).rstrip(_SEPARATORS)
        cut = max(full.rfind(":"), full.rfind("/"))
        tail = full[cut + 1:]
        dev_urn = full.startswith("urn:dev:") and full.count(":") == 3 and "/" not in full
        if cut < 0 or _no_metric(tail) or dev_urn:
            # the name names a device (or a sensor, when the transport names the device)
            single = metric_name(full) if cut < 0 and not _no_metric(full) else ""
            return _Name(full, None, single or None)
        device, sensor = full[:cut].rstrip(_SEPARATORS), tail
    if "/" in device:
        device, rest = device.split("/", 1)
        device = device.rstrip(_SEPARATORS)
        rest = rest.strip(_SEPARATORS)
        sensor = f"{rest}/{sensor}" if rest else sensor
    return _Name(device or None, metric_name(sensor))


def resolve_name(bn: str, n: str, where: str) -> _Name:
    """The checked split of bn + n: device native id and metric (None: from the unit)."""
    key = (bn, n)
    hit = _names.get(key)
    if hit is None:
        name = bn + n
        if not name:
            raise _fail("bad_senml", where, "a value with no name: give the record an n, "
                        "or the pack a base name (bn)")
        _check_name(name, where)
        hit = _split(bn, n)
        if hit.metric == "":
            raise _fail("bad_name", where, f"name {name[:60]!r} gives no usable metric name")
        if len(_names) < _CACHE_MAX:
            _names[key] = hit
    return hit


def _sum_metric(metric: str) -> str:
    hit = _sum_metrics.get(metric)
    if hit is None:
        hit = metric_name(f"{metric}_sum")
        if len(_sum_metrics) < _CACHE_MAX:
            _sum_metrics[metric] = hit
    return hit


def _data(raw: Any, where: str, cbor: bool) -> str:
    """A data value (vd) as base64url text without padding, length-checked."""
    if cbor:
        if raw.__class__ is not bytes:
            raise _fail("bad_senml", where, f"vd must be a byte string in SenML CBOR, not "
                        f"{_kind(raw)}")
        if len(raw) > MAX_TEXT * 3 // 4:
            raise _fail("bad_value", where, f"vd of {len(raw)} bytes: at most "
                        f"{MAX_TEXT * 3 // 4} bytes are kept")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if raw.__class__ is not str:
        raise _fail("bad_senml", where, f"vd must be base64url text, not {_kind(raw)}")
    if len(raw) > MAX_TEXT:
        raise _fail("bad_value", where, f"vd of {len(raw)} characters: at most {MAX_TEXT} "
                    "are kept")
    if len(raw) % 4 == 1 or not _B64URL.fullmatch(raw):
        raise _fail("bad_senml", where, "vd must be base64url without padding (RFC 8428 §5, "
                    "RFC 4648 §5: A-Z a-z 0-9 - _)")
    return raw


def _text(raw: Any, where: str) -> str:
    if raw.__class__ is not str:
        raise _fail("bad_senml", where, f"vs must be text, not {_kind(raw)}")
    if len(raw) > MAX_TEXT:
        raise _fail("bad_value", where, f"vs of {len(raw)} characters: at most {MAX_TEXT} "
                    "are kept")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail("bad_value", where, "vs is not valid Unicode text") from None
    return raw


class _Base:
    """The base fields in effect while a pack is read."""

    __slots__ = ("bn", "bs", "bt", "bu", "bv", "version")

    def __init__(self) -> None:
        self.bn = ""
        self.bt: int | float = 0
        self.bu: str | None = None
        self.bv: int | float | None = None
        self.bs: int | float | None = None
        self.version: int | None = None

    def update(self, f: dict[str, Any], where: str) -> None:
        """Take the base fields of one record (RFC 8428 §4.1), checking their types."""
        version = f.get("bver", VERSION)
        if self.version is None:
            if version.__class__ is not int or not 0 < version <= INT_MAX:
                raise _fail("bad_senml", where, f"bver must be a positive integer, not "
                            f"{version!r:.40}")
            if version > VERSION:
                raise _fail("bad_senml", where, f"SenML version {version} is newer than the "
                            f"version {VERSION} (RFC 8428) this gateway reads")
            self.version = version
        elif "bver" in f and (version.__class__ is not int or version != self.version):
            raise _fail("bad_senml", where, f"bver {version!r:.40} differs from the pack's "
                        f"version {self.version}: every record must have the same (§4.4)")
        if "bn" in f:
            bn = f["bn"]
            if bn.__class__ is not str:
                raise _fail("bad_senml", where, f"bn must be text, not {_kind(bn)}")
            self.bn = bn
        if "bt" in f:
            self.bt = _number(f["bt"], where, "bt", "bad_time")
        if "bu" in f:
            bu = f["bu"]
            if bu.__class__ is not str:
                raise _fail("bad_senml", where, f"bu must be text, not {_kind(bu)}")
            self.bu = bu
        if "bv" in f:
            self.bv = _number(f["bv"], where, "bv", "bad_value")
        if "bs" in f:
            self.bs = _number(f["bs"], where, "bs", "bad_value")


def decode_pack(records: Any, source: Source, now: float, units: Units, *,
                cbor: bool = False) -> list[Reading]:
    """The readings of one SenML pack, already loaded from JSON or CBOR.

    ``records`` is the loaded pack (anything: a non-array is refused). With ``cbor``,
    labels are Table 4's integers (mapped here), ``vd`` is a byte string and text labels
    for the RFC's fields are refused; without it, labels are text and ``vd`` base64url.
    Readings are of ``source.device`` when the transport names the device, else of the
    device each name names (``<prefix>:<native id>``). ``now`` resolves relative times;
    ``units`` is the caller's unit cache. Raises DecodeError and nothing else.
    """
    if records.__class__ is not list:
        raise DecodeError("bad_senml", "a SenML pack is an array of records (RFC 8428 §5), "
                          f"not {_kind(records)}")
    if len(records) > MAX_RECORDS:
        raise DecodeError("bad_senml", f"{len(records)} records in one pack: at most "
                          f"{MAX_RECORDS}")
    base = _Base()
    fixed = source.device
    out: list[Reading] = []
    for i, rec in enumerate(records):
        where = f"record {i}"
        if rec.__class__ is not dict:
            raise _fail("bad_senml", where, f"a record is a map of labels, not {_kind(rec)}")
        f = _fields(rec, where, cbor)
        base.update(f, where)
        _record(f, base, where, fixed, source.prefix, now, units, cbor, out)
    if not out:
        raise DecodeError("no_values", "the SenML pack has no values")
    return out


def _record(f: dict[str, Any], base: _Base, where: str, fixed: str | None, prefix: str,
            now: float, units: Units, cbor: bool, out: list[Reading]) -> None:
    """Append the readings of one record (fields ``f``, base fields applied) to ``out``."""
    present = [k for k in ("v", "vs", "vb", "vd") if k in f]
    if len(present) > 1:
        raise _fail("bad_senml", where, f"{' and '.join(present)} in one record: exactly one "
                    "value field per record (RFC 8428 §4.2)")
    if not present and "s" not in f:
        if any(k in f for k in _REGULAR):
            raise _fail("bad_senml", where, "no value (v, vs, vb or vd) and no sum (s)")
        return  # base fields only
    n = f.get("n", "")
    if n.__class__ is not str:
        raise _fail("bad_senml", where, f"n must be text, not {_kind(n)}")
    unit = f.get("u", base.bu)
    if unit is not None and unit.__class__ is not str:
        raise _fail("bad_senml", where, f"u must be text, not {_kind(unit)}")
    t = _number(f.get("t", 0), where, "t", "bad_time")
    if "ut" in f:
        _number(f["ut"], where, "ut", "bad_time")
    name = resolve_name(base.bn, n, where)
    metric = name.metric
    if metric is None and fixed is not None:
        metric = name.single
    if metric is None:
        senml, _ = units.get(unit, "")
        metric = UNIT_METRICS.get(senml or "")
        if metric is None:
            given = "no unit" if unit is None else f"unit {unit[:20]!r}, which names none"
            raise _fail("bad_name", where, f"name {(base.bn + n)[:60]!r} names no quantity "
                        f"({given}): add the metric to the name (n, or bn + n such as "
                        "'urn:dev:ow:10e2073a01080063:temp')")
    if fixed is not None:
        device = fixed
    elif name.device is None:
        raise _fail("no_device", where, f"name {(base.bn + n)[:60]!r} names no device: use "
                    "a base name such as 'sensor-1:' (or a device topic or path)")
    else:
        device = f"{prefix}:{native_id(name.device)}"
    ts = float(base.bt + t)
    if not math.isfinite(ts):
        raise _fail("bad_time", where, "bt + t is not a finite time")
    if ts < RELATIVE:
        ts += now
    if present:
        label = present[0]
        raw = f[label]
        value: Any
        if label == "v":
            value = _add(base.bv, _number(raw, where, "v", "bad_value"), where, "v",
                         "bad_value")
        elif label == "vb":
            if raw.__class__ is not bool:
                raise _fail("bad_senml", where, f"vb must be true or false, not {_kind(raw)}")
            value = raw
        elif label == "vs":
            value = _text(raw, where)
        else:
            value = _data(raw, where, cbor)
        units.get(unit, metric)  # refuse an unknown unit whatever the value's type
        r = units.reading(device, metric, value, unit, ts)
        if r is None:
            raise _fail("bad_value", where, f"{label} is out of range once converted")
        out.append(r)
    if "s" in f:  # bs is added to the sums records carry; a record without s has none
        s = _number(f["s"], where, "s", "bad_value")
        out.append(_sum(device, metric, _add(base.bs, s, where, "s", "bad_value"), unit, ts,
                        where, units))


def _sum(device: str, metric: str, total: int | float, unit: str | None, ts: float,
         where: str, units: Units) -> Reading:
    """The reading of a record's sum: ``<metric>_sum`` in the unit × s (RFC 8428 §4.2)."""
    senml, conv = units.get(unit, metric)
    sum_metric = _sum_metric(metric)
    product = SUM_UNITS.get(senml) if senml is not None else None
    if product is None:  # no unit, or a unit × s that has no SenML name
        value: int | float = total
        sum_unit = None
    else:
        sum_unit, factor = product
        value = total
        if conv is not None or factor != 1.0:
            value = sig((float(total) if conv is None else conv(float(total))) * factor)
    r = units.reading(device, sum_metric, value, sum_unit, ts)
    if r is None:
        raise _fail("bad_value", where, "s is out of range once converted")
    return r


class _Senml(Format):
    """What both SenML representations share: the unit cache and the option check."""

    names_devices = True

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self._units = Units()

    @classmethod
    def check(cls, options: Options, topic_names: frozenset[str]) -> None:
        """Refuse keys a SenML pack does not need: it names its metrics, units and times."""
        super().check(options, topic_names)
        unused = _unused(options)
        if unused:
            raise ValueError(f"{', '.join(unused)}: do(es) not apply to format: {cls.name} "
                             "(the pack names its metrics, units and times)")



class SenmlJson(_Senml):
    """``application/senml+json`` (RFC 8428 §5): a JSON array of SenML records."""

    name = "senml"
    content_formats = (110,)

    def decode(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        """The readings of one SenML JSON pack (see :func:`decode_pack`)."""
        return decode_pack(load_json(payload), source, now, self._units)


class SenmlCbor(_Senml):
    """``application/senml+cbor`` (RFC 8428 §6): a CBOR array of integer-labelled maps."""

    name = "senml+cbor"
    content_formats = (112,)

    def decode(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        """The readings of one SenML CBOR pack (see :func:`decode_pack`)."""
        return decode_pack(load_cbor(payload), source, now, self._units, cbor=True)


def _unused(options: Options) -> list[str]:
    """The generic option keys set in ``options`` that SenML does not read."""
    defaults: Mapping[str, Any] = {"metric": None, "unit": None, "units": {},
                                   "include_unmapped": None, "timestamp": None,
                                   "timestamp_unit": "auto", "device_field": None,
                                   "value_type": "auto"}
    return [k for k, d in defaults.items() if getattr(options, k, d) != d]
