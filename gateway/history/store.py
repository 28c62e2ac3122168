"""The history file: a bounded time series in its own SQLite database.

Layout (``PRAGMA user_version`` 1), every table keyed so that a flush appends at the
end of its B-tree (few pages written) and a query of one series is point look-ups:

- ``series(id, device, metric, unit)``;
- ``flushes(t, lo, hi, n, raw)``: one row per flush (``t`` its time, ``lo``/``hi`` the
  readings' time range, ``n`` readings, ``raw`` whether raw readings were kept);
- ``recent(t, series, data)``: per flush and series, the raw ``(ts, value)`` pairs, or
  (a flush above ``raw_max_rate``) that flush's partial one-minute buckets;
- ``chunks(step, start, series, data)``: closed periods rolled up, one row per series:
  an hour of 1-minute buckets (``step`` 60) or a day of 15-minute buckets (900);
- ``meta(key, value)``: how far the roll-ups got.

All writing happens in one thread (its own connection), all reading in another: the
event loop only swaps the list the observer appends to.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.core.files import set_aside
from gateway.history.config import COARSE_STEP, FINE_STEP, HistoryConfig
from gateway.history.query import MAX_POINTS, Query
from gateway.reading import Reading

log = logging.getLogger("gateway.history")

SCHEMA_VERSION = 1
PAGE_SIZE = 1024
WAL_PAGES = 4096
HOUR, DAY = 3600, 86400
RAW = struct.Struct("<dd")  # ts, value
PARTIAL = struct.Struct("<iIddd")  # minute index (ts // 60), n, min, max, sum
BUCKET = struct.Struct("<HIddd")  # bucket index within the chunk, n, min, max, sum

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, device TEXT NOT NULL,
    metric TEXT NOT NULL, unit TEXT, UNIQUE (device, metric));
CREATE TABLE IF NOT EXISTS flushes (t INTEGER PRIMARY KEY, lo REAL NOT NULL, hi REAL NOT NULL,
    n INTEGER NOT NULL, raw INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS recent (t INTEGER NOT NULL, series INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (t, series)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (step INTEGER NOT NULL, start INTEGER NOT NULL,
    series INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (step, start, series))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: a bucket while it is built: [n, min, max, sum]
Agg = list[float]


def _merge(into: dict[int, Agg], key: int, n: float, lo: float, hi: float, total: float) -> None:
    a = into.get(key)
    if a is None:
        into[key] = [n, lo, hi, total]
    else:
        a[0] += n
        if lo < a[1]:
            a[1] = lo
        if hi > a[2]:
            a[2] = hi
        a[3] += total


def _numeric(value: object) -> float | None:
    cls = value.__class__
    if cls is float or cls is int or cls is bool:
        v = float(value)  # type: ignore[arg-type]
        return v if math.isfinite(v) else None
    return None


class Metrics:
    """The history's Prometheus metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.flushes = Counter("gateway_history_flushes_total",
                               "history flushes (one transaction each)", registry=registry)
        self.stored = Counter("gateway_history_readings_total",
                              "numeric readings written to the history", registry=registry)
        self.skipped = Counter("gateway_history_skipped_total",
                               "readings not kept in the history, by reason (text: not "
                               "numeric; overflow: more than max_pending waited; late: "
                               "their hour was already rolled up, kept raw only)",
                               ["reason"], registry=registry)
        self.pruned = Counter("gateway_history_pruned_total",
                              "readings (raw) and buckets (1m, 15m) deleted, by tier and "
                              "reason (age: past their span, after the roll-up; size: "
                              "beyond max_bytes)", ["tier", "reason"], registry=registry)
        self.errors = Counter("gateway_history_flush_errors_total",
                              "flushes that failed (their readings are dropped)",
                              registry=registry)
        self.bytes = Gauge("gateway_history_bytes", "bytes the history file uses",
                           registry=registry)


class HistoryStore:
    """Buffer, writer and reader of the history file."""

    def __init__(self, config: HistoryConfig, path: Path, metrics: Metrics) -> None:
        self.config = config
        self.path = path
        self.m = metrics
        self._buf: list[Reading] = []
        self.writer_pool = ThreadPoolExecutor(1, thread_name_prefix="history-write")
        self.reader_pool = ThreadPoolExecutor(1, thread_name_prefix="history-read")
        self._wdb: sqlite3.Connection | None = None
        self._rdb: sqlite3.Connection | None = None
        self._series: dict[tuple[str, str], int] = {}
        self._last_t = 0
        self._expired_hour = 0
        self._last_flush = time.time()
        self.lock = threading.Lock()  # the status numbers, read by the API thread
        self.pruned: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.flush_count = 0
        self.set_aside_as: Path | None = None

    # -- the observer (event loop): O(1) per reading ------------------------------------

    def observe(self, readings: Sequence[Reading]) -> None:
        """Keep ``readings`` for the next flush; beyond ``max_pending`` they are dropped."""
        buf = self._buf
        if len(buf) < self.config.max_pending:
            buf.extend(readings)
        else:
            self._skip("overflow", len(readings))

    def take(self) -> list[Reading]:
        """What waited since the last call (the event loop hands it to the writer)."""
        buf, self._buf = self._buf, []
        return buf

    def _skip(self, reason: str, n: int) -> None:
        self.m.skipped.labels(reason).inc(n)
        with self.lock:
            self.skipped[reason] = self.skipped.get(reason, 0) + n

    def _prune(self, tier: str, reason: str, n: int) -> None:
        if n:
            self.m.pruned.labels(tier, reason).inc(n)
            with self.lock:
                key = f"{tier}:{reason}"
                self.pruned[key] = self.pruned.get(key, 0) + n

    # -- opening (writer thread) --------------------------------------------------------

    def open_sync(self) -> None:
        """Open (or create) the file; one SQLite cannot read is set aside, history
        starts empty (logged once)."""
        try:
            self._wdb = self._connect_write()
        except sqlite3.DatabaseError as exc:
            log.error("history file %s cannot be read (%s); setting it aside and starting "
                      "an empty history", self.path, exc)
            self.set_aside_as = set_aside(self.path, "corrupt", suffixes=("-wal", "-shm"))
            self._wdb = self._connect_write()
        self._rdb = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._rdb.execute("PRAGMA query_only=1")
        self._refresh_size()

    def _connect_write(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            # small pages: a flush at a home load changes a few KB, and the WAL (then the
            # checkpoint) writes whole pages; this takes effect on a new file only
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("PRAGMA journal_mode=WAL")
            # a larger WAL coalesces the pages every flush touches (the header, the
            # B-trees' inner pages) into one write per checkpoint
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            # Debian's SQLite zeroes deleted content by default: every expired row would be
            # written once more; readings are no secret on the gateway's own disk
            db.execute("PRAGMA secure_delete=0")
            # a power cut may lose the last flush, never corrupt the file (WAL)
            db.execute("PRAGMA synchronous=NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version}, this gateway knows "
                                            f"{SCHEMA_VERSION}")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._series = {(d, m): sid for sid, d, m in
                            db.execute("SELECT id, device, metric FROM series")}
            row = db.execute("SELECT max(t) FROM flushes").fetchone()
            self._last_t = int(row[0] or 0)
        except BaseException:
            db.close()
            raise
        return db

    def close_sync(self) -> None:
        for db in (self._wdb, self._rdb):
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
        self._wdb = self._rdb = None

    # -- flushing (writer thread) -------------------------------------------------------

    def flush_sync(self, readings: list[Reading], now: float | None = None) -> None:
        """Write one flush: readings, roll-ups, pruning, all in one transaction."""
        db = self._wdb
        assert db is not None
        now = time.time() if now is None else now
        elapsed = max(now - self._last_flush, self.config.flush_interval)
        self._last_flush = now
        try:
            db.execute("BEGIN IMMEDIATE")
            self._write(db, readings, now, elapsed)
            self._roll_up(db, now)
            if int(now) // HOUR != self._expired_hour:
                # once an hour: deleting a whole hour at once frees whole pages
                self._expire(db, now)
                self._expired_hour = int(now) // HOUR
            self._fit(db)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._series = {(d, m): sid for sid, d, m in
                            db.execute("SELECT id, device, metric FROM series")}
            self.m.errors.inc()
            raise
        self.m.flushes.inc()
        with self.lock:
            self.flush_count += 1
        self._refresh_size()

    def _series_id(self, db: sqlite3.Connection, r: Reading) -> int:
        key = (r.device, r.metric)
        sid = self._series.get(key)
        if sid is None:
            cur = db.execute("INSERT INTO series (device, metric, unit) VALUES (?, ?, ?)",
                             (r.device, r.metric, r.unit))
            sid = self._series[key] = int(cur.lastrowid or 0)
        return sid

    def _write(self, db: sqlite3.Connection, readings: list[Reading], now: float,
               elapsed: float) -> None:
        by_series: dict[int, list[tuple[float, float]]] = {}
        text = 0
        lo, hi = math.inf, -math.inf
        for r in readings:
            v = _numeric(r.value)
            if v is None:
                text += 1
                continue
            ts = r.ts
            by_series.setdefault(self._series_id(db, r), []).append((ts, v))
            if ts < lo:
                lo = ts
            if ts > hi:
                hi = ts
        if text:
            self._skip("text", text)
        n = sum(len(p) for p in by_series.values())
        if not n:
            return
        done = self._meta_int(db, "hour_done")
        if done is not None:
            late = sum(1 for pts in by_series.values() for ts, _ in pts if ts < done + HOUR)
            if late:
                self._skip("late", late)
        raw = self.config.raw_span > 0 and n / elapsed <= self.config.raw_max_rate
        t = max(int(now), self._last_t + 1)
        self._last_t = t
        rows = []
        # in key order: each row appends at the end of the B-tree (no half-empty splits)
        for sid, pts in sorted(by_series.items()):
            if raw:
                rows.append((t, sid, b"".join(RAW.pack(ts, v) for ts, v in pts)))
            else:
                minutes: dict[int, Agg] = {}
                for ts, v in pts:
                    _merge(minutes, int(ts // FINE_STEP), 1, v, v, v)
                rows.append((t, sid, b"".join(PARTIAL.pack(k, int(a[0]), a[1], a[2], a[3])
                                               for k, a in minutes.items())))
        db.executemany("INSERT INTO recent (t, series, data) VALUES (?, ?, ?)", rows)
        db.execute("INSERT INTO flushes (t, lo, hi, n, raw) VALUES (?, ?, ?, ?, ?)",
                   (t, lo, hi, n, int(raw)))
        self.m.stored.inc(n)

    @staticmethod
    def _meta_int(db: sqlite3.Connection, key: str) -> int | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else None

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: int) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def _roll_up(self, db: sqlite3.Connection, now: float) -> None:
        """Close every hour whose readings have all been flushed into 1-minute chunks,
        and every day whose hours are closed into 15-minute chunks."""
        ready = int(now - self.config.flush_interval) // HOUR * HOUR  # hours before: closed
        done = self._meta_int(db, "hour_done")
        if done is None:
            first = db.execute("SELECT min(lo) FROM flushes").fetchone()[0]
            if first is None:
                return
            done = int(first) // HOUR * HOUR - HOUR
        hour = done + HOUR
        while hour < ready:
            nxt = db.execute("SELECT min(lo) FROM flushes WHERE hi >= ?", (hour,)).fetchone()[0]
            if nxt is None:
                break
            hour = max(hour, int(nxt) // HOUR * HOUR)
            if hour >= ready:
                break
            rows = []
            for sid, minutes in sorted(
                    self._recent_minutes(db, None, hour, hour + HOUR).items()):
                rows.append((FINE_STEP, hour, sid, _pack_chunk(minutes, hour, FINE_STEP)))
            db.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?)", rows)
            self._set_meta(db, "hour_done", hour)
            hour += HOUR
        hour_done = self._meta_int(db, "hour_done")
        if hour_done is None:
            return
        day_done = self._meta_int(db, "day_done")
        day = (hour_done // DAY * DAY - DAY) if day_done is None else day_done + DAY
        while day + DAY <= hour_done + HOUR:
            nxt = db.execute("SELECT min(start) FROM chunks WHERE step = ? AND start >= ?",
                             (FINE_STEP, day)).fetchone()[0]
            if nxt is None:
                break
            day = max(day, int(nxt) // DAY * DAY)
            if day + DAY > hour_done + HOUR:
                break
            per: dict[int, dict[int, Agg]] = {}
            for sid, start, data in db.execute(
                    "SELECT series, start, data FROM chunks WHERE step = ? AND start >= ? "
                    "AND start < ?", (FINE_STEP, day, day + DAY)):
                into = per.setdefault(sid, {})
                for i, n, lo, hi, total in BUCKET.iter_unpack(data):
                    _merge(into, (start + i * FINE_STEP) // COARSE_STEP, n, lo, hi, total)
            db.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?)",
                           [(COARSE_STEP, day, sid, _pack_chunk(b, day, COARSE_STEP))
                            for sid, b in sorted(per.items())])
            self._set_meta(db, "day_done", day)
            day += DAY

    @staticmethod
    def _recent_minutes(db: sqlite3.Connection, series: int | None, lo: float,
                        hi: float) -> dict[int, dict[int, Agg]]:
        """One-minute buckets (by minute index) of the recent rows with readings in
        ``[lo, hi)``, per series (one series, or all)."""
        ts_list = [t for (t,) in db.execute(
            "SELECT t FROM flushes WHERE hi >= ? AND lo < ?", (lo, hi))]
        out: dict[int, dict[int, Agg]] = {}
        if not ts_list:
            return out
        raw = dict(db.execute(f"SELECT t, raw FROM flushes WHERE t IN ({_marks(ts_list)})",
                              ts_list))
        if series is None:
            rows: Iterable[tuple[int, int, bytes]] = db.execute(
                f"SELECT t, series, data FROM recent WHERE t IN ({_marks(ts_list)})", ts_list)
        else:
            rows = db.execute(f"SELECT t, series, data FROM recent WHERE series = ? AND t IN "
                              f"({_marks(ts_list)})", [series, *ts_list])
        lo_m, hi_m = lo / FINE_STEP, hi / FINE_STEP
        for t, sid, data in rows:
            into = out.setdefault(sid, {})
            if raw[t]:
                for ts, v in RAW.iter_unpack(data):
                    if lo <= ts < hi:
                        _merge(into, int(ts // FINE_STEP), 1, v, v, v)
            else:
                for k, n, mn, mx, total in PARTIAL.iter_unpack(data):
                    if lo_m <= k < hi_m:
                        _merge(into, k, n, mn, mx, total)
        return out

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        cfg = self.config
        hour_done = self._meta_int(db, "hour_done")
        rolled = -math.inf if hour_done is None else hour_done + HOUR
        # recent rows go once past raw_span and once their hour is rolled up
        keep = min(now - max(cfg.raw_span, 2 * HOUR), rolled)
        self._delete_flushes(db, "t < ?", (keep,), "age")
        self._delete_chunks(db, FINE_STEP, now - cfg.fine_span, "age")
        self._delete_chunks(db, COARSE_STEP, now - cfg.max_age, "age")

    def _delete_flushes(self, db: sqlite3.Connection, where: str, args: tuple[Any, ...],
                        reason: str) -> None:
        n, last = db.execute(f"SELECT sum(n), max(t) FROM flushes WHERE {where}",
                             args).fetchone()
        if last is None:
            return
        db.execute("DELETE FROM recent WHERE t <= ?", (last,))
        db.execute("DELETE FROM flushes WHERE t <= ?", (last,))
        self._prune("raw", reason, int(n or 0))

    def _delete_chunks(self, db: sqlite3.Connection, step: int, before: float,
                       reason: str) -> None:
        # a chunk goes once all of it is past: its start a period before ``before``
        before -= HOUR if step == FINE_STEP else DAY
        size = db.execute("SELECT sum(length(data)) FROM chunks WHERE step = ? AND start <= ?",
                          (step, before)).fetchone()[0]
        if size is None:
            return
        db.execute("DELETE FROM chunks WHERE step = ? AND start <= ?", (step, before))
        self._prune("1m" if step == FINE_STEP else "15m", reason, int(size) // BUCKET.size)

    @staticmethod
    def _used(db: sqlite3.Connection) -> int:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * db.execute("PRAGMA page_size").fetchone()[0])

    def _fit(self, db: sqlite3.Connection) -> None:
        """Beyond ``max_bytes``: the oldest data goes first (15-minute days, then
        1-minute hours, then recent flushes), counted as pruned for size."""
        for _ in range(10_000):
            if self._used(db) <= self.config.max_bytes:
                return
            day = db.execute("SELECT min(start) FROM chunks WHERE step = ?",
                             (COARSE_STEP,)).fetchone()[0]
            hour = db.execute("SELECT min(start) FROM chunks WHERE step = ?",
                              (FINE_STEP,)).fetchone()[0]
            if day is not None and (hour is None or day < hour + DAY):
                self._delete_chunks(db, COARSE_STEP, day + DAY, "size")
                continue
            if hour is not None:
                self._delete_chunks(db, FINE_STEP, hour + HOUR, "size")
                continue
            count = db.execute("SELECT count(*) FROM flushes").fetchone()[0]
            if count <= 1:
                return  # the newest flush stays: the limit is below one flush
            t = db.execute("SELECT t FROM flushes ORDER BY t LIMIT 1 OFFSET ?",
                           (max(0, count // 4 - 1),)).fetchone()[0]
            self._delete_flushes(db, "t <= ?", (t,), "size")

    def _refresh_size(self) -> None:
        if self._wdb is not None:
            with contextlib.suppress(sqlite3.Error):
                self.m.bytes.set(self._used(self._wdb))

    # -- status and queries (reader thread) -------------------------------------------

    def status_sync(self) -> dict[str, Any]:
        db = self._rdb
        assert db is not None
        db.execute("BEGIN")
        try:
            series = db.execute("SELECT count(*) FROM series").fetchone()[0]
            flushes, oldest_raw = db.execute(
                "SELECT count(*), min(lo) FROM flushes WHERE raw = 1").fetchone()
            fine = db.execute("SELECT min(start) FROM chunks WHERE step = ?",
                              (FINE_STEP,)).fetchone()[0]
            coarse = db.execute("SELECT min(start) FROM chunks WHERE step = ?",
                                (COARSE_STEP,)).fetchone()[0]
            used = self._used(db)
        finally:
            db.execute("COMMIT")
        with self.lock:
            pruned, skipped, count = dict(self.pruned), dict(self.skipped), self.flush_count
        return {"path": str(self.path), "series": series, "bytes": used,
                "file_bytes": _file_bytes(self.path), "max_bytes": self.config.max_bytes,
                "flushes": count, "flush_interval": self.config.flush_interval,
                "raw_flushes_kept": flushes, "oldest_raw": oldest_raw,
                "oldest_1m": fine, "oldest_15m": coarse,
                "pending": len(self._buf), "pruned": pruned, "skipped": skipped}

    def has_device_sync(self, device: str) -> bool:
        db = self._rdb
        assert db is not None
        return db.execute("SELECT 1 FROM series WHERE device = ? LIMIT 1",
                          (device,)).fetchone() is not None

    def query_sync(self, device: str, metric: str | None, q: Query) -> dict[str, Any]:
        """The answer of ``GET /api/devices/{id}/history`` for a checked query."""
        db = self._rdb
        assert db is not None
        db.execute("BEGIN")  # one snapshot: a flush or roll-up meanwhile is not half seen
        try:
            sql = "SELECT id, metric, unit FROM series WHERE device = ?"
            args: list[Any] = [device]
            if metric is not None:
                sql += " AND metric = ?"
                args.append(metric)
            out: dict[str, Any] = {}
            truncated = False
            for sid, name, unit in db.execute(sql + " ORDER BY metric", args).fetchall():
                if q.step is None:
                    points = self._raw_points(db, sid, q.since, q.until)
                    if len(points) > MAX_POINTS:
                        points, truncated = points[-MAX_POINTS:], True
                    out[name] = {"unit": unit, "points": points}
                else:
                    buckets, resolution = self._buckets(db, sid, q.since, q.until, q.step)
                    out[name] = {"unit": unit, "resolution": resolution, "buckets": buckets}
        finally:
            db.execute("COMMIT")
        return {"device": device, "since": q.since, "until": q.until,
                "step": "raw" if q.step is None else q.step, "metrics": out,
                "truncated": truncated}

    @staticmethod
    def _raw_points(db: sqlite3.Connection, sid: int, lo: float,
                    hi: float) -> list[list[float]]:
        ts_list = [t for (t,) in db.execute(
            "SELECT t FROM flushes WHERE raw = 1 AND hi >= ? AND lo <= ?", (lo, hi))]
        points: list[list[float]] = []
        if not ts_list:
            return points
        for (data,) in db.execute(f"SELECT data FROM recent WHERE series = ? AND t IN "
                                  f"({_marks(ts_list)})", [sid, *ts_list]):
            points.extend([ts, v] for ts, v in RAW.iter_unpack(data) if lo <= ts <= hi)
        points.sort(key=lambda p: p[0])
        return points

    def _buckets(self, db: sqlite3.Connection, sid: int, lo: float, hi: float,
                 step: int) -> tuple[list[list[float]], str]:
        """``[start, min, avg, max, count]`` per step (aligned to UNIX time 0), from the
        finest buckets kept for each part of the span: 1m where kept, 15m before."""
        minutes: dict[int, Agg] = {}  # by minute index
        hour_done = self._meta_int(db, "hour_done")
        open_from = (hour_done + HOUR) if hour_done is not None else -math.inf
        first_hour = int(lo) // HOUR * HOUR
        hours = [] if hour_done is None else list(
            range(first_hour, min(int(hi), hour_done) + 1, HOUR))
        for start, data in _chunk_rows(db, FINE_STEP, sid, hours):
            for i, n, mn, mx, total in BUCKET.iter_unpack(data):
                _merge(minutes, start // FINE_STEP + i, n, mn, mx, total)
        if hi >= open_from:
            recent = self._recent_minutes(db, sid, max(lo, open_from), hi + FINE_STEP)
            for k, a in recent.get(sid, {}).items():
                _merge(minutes, k, *a)
        fine_from = db.execute("SELECT min(start) FROM chunks WHERE step = ?",
                               (FINE_STEP,)).fetchone()[0]
        if fine_from is None:
            fine_from = open_from
        out: dict[int, Agg] = {}
        resolution = "1m"
        if lo < fine_from:
            first_day = int(lo) // DAY * DAY
            days = list(range(first_day, int(min(hi, fine_from)) + 1, DAY))
            for start, data in _chunk_rows(db, COARSE_STEP, sid, days):
                for i, n, mn, mx, total in BUCKET.iter_unpack(data):
                    b = start + i * COARSE_STEP
                    if b < fine_from and lo - COARSE_STEP < b <= hi:
                        resolution = "15m"
                        _merge(out, b // step * step, n, mn, mx, total)
        for k, a in minutes.items():
            b = k * FINE_STEP
            if lo - FINE_STEP < b <= hi:
                _merge(out, b // step * step, *a)
        return [[start, a[1], a[3] / a[0], a[2], int(a[0])]
                for start, a in sorted(out.items())], resolution


def _pack_chunk(buckets: dict[int, Agg], start: int, step: int) -> bytes:
    """Buckets by absolute index (time // step) into a chunk starting at ``start``."""
    base = start // step
    return b"".join(BUCKET.pack(k - base, int(a[0]), a[1], a[2], a[3])
                    for k, a in sorted(buckets.items()))


def _chunk_rows(db: sqlite3.Connection, step: int, sid: int,
                starts: list[int]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for i in range(0, len(starts), 500):
        part = starts[i:i + 500]
        out.extend(db.execute(f"SELECT start, data FROM chunks WHERE step = ? AND series = ? "
                              f"AND start IN ({_marks(part)})", [step, sid, *part]))
    return out


def _marks(items: Sequence[object]) -> str:
    return ",".join("?" * len(items))


def _file_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total
