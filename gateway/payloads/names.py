"""Metric names: the one function that turns a device's field name into a metric name.

The rules, applied in order (the payloads README has the table of examples):

1. A lower-case letter or digit followed by an upper-case letter starts a new word
   (``tempC`` → ``temp_c``, ``batteryLevel`` → ``battery_level``), and so does the last
   capital of a run followed by a lower-case letter (``HTTPCode`` → ``http_code``).
   A run of capitals and digits stays one word (``SHT3X``, ``DS18B20``, ``PM2.5``).
2. Everything is lower-cased; every run of characters other than ``a-z`` and ``0-9``
   (spaces, dots of nested paths, ``-``, ``/``...) becomes one ``_``; leading and
   trailing ``_`` go.
3. A name that starts with a digit gets ``m_`` in front (``2nd_sensor`` → ``m_2nd_sensor``):
   metric names are identifiers in rules and in most time-series databases.
4. At most :data:`MAX_LENGTH` characters. A name with no letter or digit left is ``""``,
   which callers refuse (``bad_name``).

A result always matches ``[a-z][a-z0-9_]*`` (or is empty), the pattern config keys use.
"""

from __future__ import annotations

import re

#: longest metric name a field name becomes
MAX_LENGTH = 64

_WORD = re.compile(r"(?<=[a-z0-9])(?=[A-Z])(?<![0-9A-Z]{2})|(?<=[A-Z])(?=[A-Z][a-z])")
_OTHER = re.compile(r"[^a-z0-9]+")
_cache: dict[str, str] = {}
_CACHE_MAX = 16_384


def metric_name(field: str) -> str:
    """The metric name of a field name or dotted path (cached; names come from devices)."""
    hit = _cache.get(field)
    if hit is not None:
        return hit
    out = _OTHER.sub("_", _WORD.sub("_", field).lower()).strip("_")
    if out and out[0].isdigit():
        out = "m_" + out
    out = out[:MAX_LENGTH].rstrip("_")
    if len(_cache) < _CACHE_MAX:
        _cache[field] = out
    return out
