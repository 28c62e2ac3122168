"""Checksums stored beside each outbox row, so a salvage that reads the raw file (when
SQLite cannot open it) can tell an intact row from a damaged or half-overwritten one.

CRC-32 (zlib) over the row's own key and content: a row whose bytes survived is accepted
whole, anything else is refused. Stored as an integer column next to the row.
"""

from __future__ import annotations

import zlib


def telemetry_crc(rid: int, n: int, blob: str) -> int:
    """CRC of a telemetry row: its id, its reading count and its packed batch."""
    return zlib.crc32(blob.encode(), zlib.crc32(b"t%d:%d:" % (rid, n)))


def series_crc(sid: int, device: str, metric: str, unit: str | None) -> int:
    """CRC of a series row (the names a telemetry row's series ids stand for)."""
    parts = (device, metric, "" if unit is None else unit)
    body = "\x00".join(parts).encode("utf-8", "surrogatepass")
    return zlib.crc32(body, zlib.crc32(b"s%d:%d:" % (sid, unit is None)))
