"""The outbox: a durable, ordered, bounded store-and-forward queue in SQLite.

- WAL mode, one writer thread, group commit: every append made while a transaction is
  being written goes into the next one, and commits are at least ``commit_interval``
  apart, so an SD card sees few, large writes.
- A reading is accepted once its transaction has committed (``append`` returns True).
- Rows are ordered by a monotonic id that is never reused within an epoch (the random id
  of the database file), so the cloud can de-duplicate on ``(epoch, seq)``.
- Telemetry rows hold one accepted batch each, packed compactly (series are interned).
  Events (alerts, device status) live in their own table and leave first.
- Bounded by bytes and by age: at the bound the oldest telemetry is dropped first
  (events last); every dropped reading is counted, in a metric and in the file.
- One bad row never refuses the others. A reading (or event) that cannot be encoded or
  bound (its own problem, not the disk's) is set aside in a bounded ``dead_letters``
  table with its reason, and the rest of its batch and of its group commit is stored. Its
  ``append`` answers True: it has been kept, and sending it again cannot help. Disk, lock
  and corruption errors still refuse the whole commit, to be retried.
- A corrupt file at start is renamed aside, a fresh one started, what can be read is
  salvaged into it, and an alert is queued.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import reprlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.reading import Reading
from gateway.store.config import StoreConfig
from gateway.store.migrations import MIGRATIONS, migrate

log = logging.getLogger("gateway.outbox")

T = TypeVar("T")

#: cap on how much one bound enforcement deletes per transaction (bounded work per commit)
_DROP_CHUNK = 20_000
#: what SQLite raises when a row cannot be bound or stored because of the row itself;
#: disk I/O, disk full, locks and corruption are OperationalError / DatabaseError instead
_ROW_SQL_ERRORS = (sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.DataError,
                   OverflowError, ValueError, TypeError)
#: longest device id, metric or unit the outbox interns (the core allows far less)
_MAX_NAME = 4096
#: a dead letter keeps at most this many characters of its readings, device and reason
_DEAD_EXCERPT, _DEAD_DEVICE, _DEAD_REASON = 1024, 200, 200
#: the reasons gateway_outbox_dead_letters_total is labelled with; any other is "other"
_DEAD_LABELS = frozenset({
    "OverflowError", "ValueError", "TypeError", "RecursionError", "UnicodeEncodeError",
    "KeyError", "IndexError", "AttributeError", "InterfaceError", "ProgrammingError",
    "DataError",
})
#: at most one log line about dead letters this often (seconds)
_DEAD_LOG_EVERY = 60.0
#: salvaged batches committed per transaction
_SALVAGE_CHUNK = 1000
#: files up to this size get a full quick_check at every start (well under a second)
_ALWAYS_CHECK_BELOW = 64 * 1024**2


class TelemetryRow(NamedTuple):
    """One accepted batch: its outbox id and its readings."""

    id: int
    readings: list[Reading]


class EventRow(NamedTuple):
    """One event (``alert``, ``status``...) and its JSON body."""

    id: int
    kind: str
    body: dict[str, Any]
    ts: float


@dataclass
class OutboxStats:
    epoch: str
    depth: int  # readings waiting (telemetry)
    rows: int
    events: int
    bytes: int
    oldest_ts: float | None
    dropped: int
    dropped_events: int
    last_id: int
    pending: int
    dead_letters: int = 0  # rows in the dead-letter table
    dead_letters_deleted: int = 0  # deleted beyond ``dead_letter_max``, since the file began


class DeadLetter(NamedTuple):
    """A reading the outbox could not store, set aside with the reason."""

    id: int
    ts: float
    device: str
    reason: str
    reading: str


class OutboxError(Exception):
    pass


_Key = tuple[str, str, str | None]  # a series: device, metric, unit
#: a dead letter: when, device(s), reason, excerpt, metric label
_Dead = tuple[float, str, str, str, str]


@dataclass(slots=True)
class _Plan:
    """One commit, encoded before its transaction starts."""

    rows: list[tuple[int, int, str]] = field(default_factory=list)  # id, readings, JSON row
    sources: list[Sequence[Reading]] = field(default_factory=list)  # each row's readings
    uses: dict[int, list[_Key]] = field(default_factory=dict)  # row index: its fresh series
    fresh: dict[_Key, int] = field(default_factory=dict)  # series new in this commit: ids
    written: int = 0  # rows written (all of them unless SQLite refused one)
    readings: int = 0  # readings in the rows written
    oldest: float | None = None  # the first timestamp of the oldest row written
    events: list[tuple[str, float, str]] = field(default_factory=list)  # kind, ts, JSON body
    dead: list[_Dead] = field(default_factory=list)
    stored: dict[_Key, int] = field(default_factory=dict)  # the fresh series written


def _is_corruption(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text or "corrupt" in text
        or "file is encrypted" in text
    )


class Outbox:
    """Durable queue between the core and the uplink. Create with :meth:`open`."""

    def __init__(self, path: Path, config: StoreConfig, metrics: CollectorRegistry | None) -> None:
        self.path = path
        self.config = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None
        self.epoch = ""
        self._next_id = 1
        self._series: dict[tuple[str, str, str | None], int] = {}
        self._series_by_id: dict[int, tuple[str, str, str | None]] = {}
        self._rows = 0
        self._readings = 0
        self._events = 0
        self._bytes = 0
        self._oldest: float | None = None
        self._dropped = 0
        self._dropped_events = 0
        self._next_sid = 1
        self._dead = 0  # rows in dead_letters
        self._dead_deleted = 0
        self._dead_logged = -math.inf  # when a dead letter was last logged (monotonic)
        self._dead_unlogged = 0
        # group commit state (event loop side)
        self._pending: list[tuple[Sequence[Reading], asyncio.Future[bool]]] = []
        self._pending_readings = 0
        self._pending_events: list[tuple[str, dict[str, Any], float, asyncio.Future[bool]]] = []
        self._acks: list[tuple[str, int, int]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._last_commit = 0.0
        #: set whenever new rows are committed; the uplink waits on it
        self.new_data = asyncio.Event()
        self._page_size = 4096
        reg = metrics or CollectorRegistry()
        self.m_depth = Gauge("gateway_outbox_depth", "Readings waiting in the outbox", registry=reg)
        self.m_bytes = Gauge("gateway_outbox_bytes", "Bytes used by the outbox database",
                             registry=reg)
        self.m_oldest = Gauge("gateway_outbox_oldest_age_seconds",
                              "Age of the oldest waiting reading", registry=reg)
        self.m_dropped = Counter("gateway_outbox_dropped",
                                 "Readings dropped at the outbox bound (oldest first)",
                                 ["kind", "reason"], registry=reg)
        self.m_commits = Counter("gateway_outbox_commits", "Outbox transactions committed",
                                 registry=reg)
        self.m_errors = Counter("gateway_outbox_errors",
                                "Outbox transactions that failed (store errors)", registry=reg)
        self.m_dead = Counter("gateway_outbox_dead_letters",
                              "Readings set aside because they cannot be stored", ["reason"],
                              registry=reg)
        self.m_dead_rows = Gauge("gateway_outbox_dead_letter_rows",
                                 "Rows in the outbox's dead-letter table", registry=reg)
        self.m_quarantined = Counter("gateway_outbox_quarantined",
                                     "Corrupt outbox files renamed aside", registry=reg)
        self.m_depth.set_function(lambda: self._readings)
        self.m_dead_rows.set_function(lambda: self._dead)
        self.m_bytes.set_function(lambda: self._bytes)
        self.m_oldest.set_function(
            lambda: max(0.0, time.time() - self._oldest) if self._oldest else 0.0)

    # -- opening ------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, config: StoreConfig,
                   metrics: CollectorRegistry | None = None) -> Outbox:
        """Open (creating, migrating or quarantining as needed) and start the writer."""
        self = cls(Path(path), config, metrics)
        loop = asyncio.get_running_loop()
        notes = await loop.run_in_executor(self._executor, self._open_sync)
        for kind, body in notes:
            self._pending_events.append((kind, body, time.time(), loop.create_future()))
        self._writer = loop.create_task(self._write_loop(), name="outbox-writer")
        if self._pending_events:
            self._wake.set()
        return self

    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.config.synchronous.upper()}")
        db.execute("PRAGMA temp_store=MEMORY")
        # checkpoint less often: fewer rewrites of the same pages (SD wear)
        db.execute("PRAGMA wal_autocheckpoint=2000")
        self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        return db

    def _open_sync(self) -> list[tuple[str, dict[str, Any]]]:
        notes: list[tuple[str, dict[str, Any]]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect(self.path)
            self._check_and_load()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc) and not isinstance(exc, OutboxError):
                raise
            notes.append(self._quarantine(str(exc)))
        return notes

    def _check_and_load(self) -> None:
        db = self._db
        assert db is not None
        clean = False
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version:
            row = db.execute("SELECT value FROM meta WHERE key='clean_shutdown'").fetchone()
            clean = bool(row and row[0] == 1)
        small = self.path.stat().st_size <= _ALWAYS_CHECK_BELOW
        if (small or not clean) and version:
            # check every page of small files, and of any file after a crash or power cut;
            # a large file after a clean stop is trusted to keep cold start fast
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({result})")
        migrate(db, MIGRATIONS)
        self._load_state()
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean_shutdown', 0)")

    def _load_state(self) -> None:
        db = self._db
        assert db is not None
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if "epoch" not in meta:
            meta["epoch"] = secrets.token_hex(4)
            db.execute("INSERT INTO meta(key, value) VALUES ('epoch', ?)", (meta["epoch"],))
        self.epoch = str(meta["epoch"])
        self._dropped = int(meta.get("dropped", 0))
        self._dropped_events = int(meta.get("dropped_events", 0))
        for sid, device, metric, unit in db.execute(
                "SELECT id, device, metric, unit FROM series"):
            self._series[(device, metric, unit)] = sid
            self._series_by_id[sid] = (device, metric, unit)
        top = max(
            int(meta.get("next_id", 1)),
            (db.execute("SELECT max(id) FROM telemetry").fetchone()[0] or 0) + 1,
            (db.execute("SELECT max(id) FROM events").fetchone()[0] or 0) + 1,
        )
        self._next_id = top
        self._rows, readings = db.execute("SELECT count(*), total(n) FROM telemetry").fetchone()
        self._readings = int(readings)
        self._events = db.execute("SELECT count(*) FROM events").fetchone()[0]
        self._next_sid = (db.execute("SELECT max(id) FROM series").fetchone()[0] or 0) + 1
        self._dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        self._dead_deleted = int(meta.get("dead_letters_deleted", 0))
        self._refresh_size()
        self._refresh_oldest()

    def _quarantine(self, reason: str) -> tuple[str, dict[str, Any]]:
        """Rename a corrupt file aside, start fresh, salvage what is readable."""
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        self.m_quarantined.inc()
        log.critical("outbox %s is corrupt (%s): moved aside to %s; starting a fresh outbox",
                     self.path, reason, aside)
        self._db = self._connect(self.path)
        migrate(self._db, MIGRATIONS)
        self._load_state()
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean_shutdown', 0)")
        salvaged = self._salvage(aside)
        if salvaged:
            log.warning("outbox: salvaged %d reading(s) from %s", salvaged, aside)
        return ("alert", {
            "rule": "outbox_corrupt", "severity": "critical", "device": None,
            "message": f"outbox file was corrupt ({reason}); moved aside to {aside.name}, "
                       f"{salvaged} reading(s) salvaged",
        })

    def _salvage(self, aside: Path) -> int:
        """Copy every readable telemetry batch out of a quarantined file."""
        try:
            old = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
        except sqlite3.Error:
            return 0
        salvaged = 0
        try:
            series = {sid: (d, m, u) for sid, d, m, u in
                      old.execute("SELECT id, device, metric, unit FROM series")}
            max_id = old.execute("SELECT max(id) FROM telemetry").fetchone()[0] or 0
        except sqlite3.Error:
            old.close()
            return 0
        last = 0
        probes = 0
        jump = 1
        after = 0
        done = False
        try:
            # walk the table in id order; where a page is unreadable, seek past it with
            # growing jumps (ids are the b-tree key, so seeking skips the damaged leaf)
            while not done and after < max_id and probes < 2000:
                batches: list[Sequence[Reading]] = []
                try:
                    for rid, blob in old.execute("SELECT id, blob FROM telemetry WHERE id > ? "
                                                 "ORDER BY id", (after,)):
                        last = after = rid
                        jump = 1
                        try:
                            batches.append(_unpack(blob, series))
                        except (ValueError, TypeError, KeyError, IndexError):
                            continue
                        if len(batches) >= _SALVAGE_CHUNK:
                            break  # commit these, then read on from here
                    else:
                        done = True
                except sqlite3.Error:
                    probes += 1
                    after = last + jump
                    jump *= 2
                if batches:
                    # committed outside the read: an error writing the fresh file is not
                    # damage in the old one
                    self._commit_sync(batches, [], [])
                    salvaged += sum(len(b) for b in batches)
        finally:
            old.close()
        return salvaged

    # -- appending ------------------------------------------------------------------------

    async def append(self, readings: Sequence[Reading]) -> bool:
        """Queue readings; True once committed, False if refused (full or failing store)."""
        if self._closing or self._pending_readings + len(readings) > self.config.max_pending:
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((readings, fut))
        self._pending_readings += len(readings)
        self._wake.set()
        return await fut

    async def append_event(self, kind: str, body: dict[str, Any], ts: float | None = None) -> bool:
        """Queue an event (``alert``, ``status``...) that leaves before any telemetry."""
        if self._closing:
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending_events.append((kind, body, time.time() if ts is None else ts, fut))
        self._wake.set()
        return await fut

    async def flush(self) -> bool:
        """Wait until everything queued before this call (acks included) is committed."""
        if self._closing:
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(((), fut))
        self._wake.set()
        return await fut

    def ack(self, table: str, first: int, last: int) -> None:
        """The cloud confirmed rows ``first..last`` of ``table``: delete them (next commit)."""
        self._acks.append((table, first, last))
        self._wake.set()

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            # space commits out so each one carries more (fewer, larger writes)
            gap = self._last_commit + self.config.commit_interval - time.monotonic()
            if gap > 0 and self._pending_readings < self.config.commit_max_rows \
                    and not self._closing:
                await asyncio.sleep(gap)
            batch, self._pending = self._pending, []
            self._pending_readings = 0
            events, self._pending_events = self._pending_events, []
            acks, self._acks = self._acks, []
            if not (batch or events or acks):
                if self._closing:
                    return
                continue
            self._last_commit = time.monotonic()
            try:
                await loop.run_in_executor(
                    self._executor, self._commit_sync, [b[0] for b in batch],
                    [(e[0], e[1], e[2]) for e in events], acks)
                ok = True
            except Exception as exc:  # noqa: BLE001 - refuse, keep running, retry next time
                ok = False
                self.m_errors.inc()
                log.error("outbox write failed: %s: %s; refusing %d batch(es) (devices will "
                          "retry)", type(exc).__name__, exc, len(batch))
                if _is_corruption(exc):
                    await self._quarantine_at_runtime(str(exc))
                else:
                    self._acks[:0] = acks  # deleting can wait for the next commit
            self.m_commits.inc()
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(ok)
            for *_, fut in events:
                if not fut.done():
                    fut.set_result(ok)
            if ok and (batch or events):
                self.new_data.set()
            if self._closing and not (self._pending or self._pending_events or self._acks):
                return

    async def _quarantine_at_runtime(self, reason: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            kind, body = await loop.run_in_executor(self._executor, self._quarantine, reason)
        except Exception as exc:  # noqa: BLE001 - nothing more to do than say so
            log.critical("outbox: could not replace the corrupt file: %s", exc)
            return
        self._pending_events.append((kind, body, time.time(), loop.create_future()))
        self._wake.set()

    # -- the writer thread ----------------------------------------------------------------
    #
    # A commit is made in two steps. First, outside any transaction, every batch and event
    # is encoded into the row it will be (pure Python, no SQL): whatever goes wrong there is
    # the row's fault, and that row is dead-lettered while the others go on. Then one
    # transaction writes them. If SQLite refuses a row for a reason of its own (a value it
    # cannot bind, a string too big) the rows are written one by one to find it; any other
    # error (disk I/O, disk full, locked, corrupt) refuses the whole commit, to be retried.

    def _new_sid(self, key: _Key, fresh: dict[_Key, int]) -> int:
        """A series id for ``key``, new in this commit; the key is checked so it will bind."""
        device, metric, unit = key
        for part in (device, metric) if unit is None else key:
            if not isinstance(part, str):
                raise TypeError(f"device, metric and unit must be strings, not "
                                f"{type(part).__name__}")
            if len(part) > _MAX_NAME:
                raise ValueError(f"a name of {len(part)} characters (at most {_MAX_NAME})")
            part.encode()  # lone surrogates cannot be stored as text: UnicodeEncodeError
        sid = self._next_sid
        self._next_sid += 1
        fresh[key] = sid
        return sid

    def _encode(self, readings: Sequence[Reading],
                fresh: dict[_Key, int]) -> tuple[str, list[_Key] | None]:
        """One batch as its stored row ``[base_ms, sid, value, dt_ms, ...]``, and the series
        it uses that are new in this commit (None if none)."""
        sid_of = self._series.get
        t0 = readings[0].ts
        base = round(t0 * 1000)
        flat: list[Any] = [base]
        new: list[_Key] | None = None
        for r in readings:
            key = (r.device, r.metric, r.unit)
            sid = sid_of(key)
            if sid is None:
                sid = fresh.get(key) or self._new_sid(key, fresh)
                if new is None:
                    new = []
                new.append(key)
            v: Any = r.value
            if isinstance(v, float) and not math.isfinite(v):
                v = {"f": str(v)}  # JSON has no NaN or infinity: tagged, unambiguous
            ts = r.ts
            flat.extend((sid, v, 0 if ts == t0 else round(ts * 1000) - base))
        return json.dumps(flat, separators=(",", ":")), new

    def _prepare(self, batches: Sequence[Sequence[Reading]],
                 events: list[tuple[str, dict[str, Any], float]]) -> _Plan:
        """Encode every row of a commit before it starts; set aside what cannot be encoded."""
        plan = _Plan()
        rows, sources, fresh, dead = plan.rows, plan.sources, plan.fresh, plan.dead
        encode = self._encode
        next_id = self._next_id
        total = 0
        oldest = None
        for readings in batches:
            if not readings:
                continue
            try:
                blob, new = encode(readings, fresh)
            except MemoryError:
                raise
            except Exception:  # noqa: BLE001 - encoding is pure Python: the row's fault
                kept = self._split(readings, fresh, dead)
                if kept is None:
                    continue
                blob, new, readings = kept
            if new is not None:
                plan.uses[len(rows)] = new
            n = len(readings)
            rows.append((next_id, n, blob))
            sources.append(readings)
            next_id += 1
            total += n
            t0 = readings[0].ts
            if oldest is None or t0 < oldest:
                oldest = t0
        self._next_id = next_id
        plan.readings, plan.oldest = total, oldest
        for kind, body, ts in events:
            try:
                if not isinstance(kind, str):
                    raise TypeError(f"event kind must be a string, not {type(kind).__name__}")
                plan.events.append((kind, float(ts),
                                    json.dumps(body, separators=(",", ":"), default=str)))
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - as above: this event's own fault
                device = body.get("device") if isinstance(body, dict) else None
                dead.append(_dead_letter(exc, _text(device or f"event {_shown(kind)}",
                                                    _DEAD_DEVICE), _excerpt_event(kind, body)))
        return plan

    def _split(self, readings: Sequence[Reading], fresh: dict[_Key, int],
               dead: list[_Dead]) -> tuple[str, list[_Key] | None, list[Reading]] | None:
        """A batch that failed to encode: dead-letter its bad readings, encode the rest."""
        good: list[Reading] = []
        for r in readings:
            try:
                self._encode((r,), fresh)
            except MemoryError:
                raise
            except Exception as one:  # noqa: BLE001 - this reading's own fault
                dead.append(_dead_letter(one, _devices((r,)), _excerpt((r,))))
                continue
            good.append(r)
        if not good:
            return None
        try:
            blob, new = self._encode(good, fresh)
        except MemoryError:
            raise
        except Exception as whole:  # noqa: BLE001 - each encodes alone, not together
            dead.append(_dead_letter(whole, _devices(good), _excerpt(good)))
            return None
        return blob, new, good

    def _write_rows(self, plan: _Plan) -> None:
        """Insert the commit's new series and telemetry rows (ids are already assigned)."""
        db = self._db
        assert db is not None
        db.execute("SAVEPOINT rows")
        try:
            if plan.fresh:
                db.executemany("INSERT INTO series(id, device, metric, unit) VALUES (?, ?, ?, ?)",
                               [(sid, *key) for key, sid in plan.fresh.items()])
            db.executemany("INSERT INTO telemetry(id, n, blob) VALUES (?, ?, ?)", plan.rows)
        except _ROW_SQL_ERRORS as exc:
            if not _row_refused(exc):
                raise
            db.execute("ROLLBACK TO rows")
            db.execute("RELEASE rows")
            self._write_rows_one_by_one(plan)
            return
        db.execute("RELEASE rows")
        plan.stored, plan.written = plan.fresh, len(plan.rows)

    def _write_rows_one_by_one(self, plan: _Plan) -> None:
        """SQLite refused a row of this commit: write each batch alone, set aside the bad."""
        db = self._db
        assert db is not None
        stored: dict[_Key, int] = {}
        failed: dict[_Key, Exception] = {}
        next_id = plan.rows[0][0]  # renumbered: no gap where a row is set aside
        written = total = 0
        oldest: float | None = None
        for i, (_, n, blob) in enumerate(plan.rows):
            readings = plan.sources[i]
            keys = [k for k in dict.fromkeys(plan.uses.get(i, ())) if k not in stored]
            bad = next((failed[k] for k in keys if k in failed), None)
            if bad is not None:  # a series this batch needs could not be stored
                plan.dead.append(_dead_letter(bad, _devices(readings), _excerpt(readings)))
                continue
            db.execute("SAVEPOINT one")
            key: _Key | None = None
            try:
                for key in keys:
                    db.execute("INSERT INTO series(id, device, metric, unit) VALUES (?, ?, ?, ?)",
                               (plan.fresh[key], *key))
                key = None
                db.execute("INSERT INTO telemetry(id, n, blob) VALUES (?, ?, ?)",
                           (next_id, n, blob))
            except _ROW_SQL_ERRORS as exc:
                if not _row_refused(exc):
                    raise
                db.execute("ROLLBACK TO one")
                db.execute("RELEASE one")
                if key is not None:
                    failed[key] = exc
                plan.dead.append(_dead_letter(exc, _devices(readings), _excerpt(readings)))
                continue
            db.execute("RELEASE one")
            stored.update((k, plan.fresh[k]) for k in keys)
            next_id += 1
            written += 1
            total += n
            t0 = readings[0].ts
            if oldest is None or t0 < oldest:
                oldest = t0
        self._next_id = next_id
        plan.stored, plan.written, plan.readings, plan.oldest = stored, written, total, oldest

    def _write_events_sync(self, plan: _Plan) -> None:
        """Insert the commit's events; one SQLite refuses is set aside, the others stay."""
        db = self._db
        assert db is not None
        events = plan.events
        db.execute("SAVEPOINT events")
        try:
            first = self._next_id
            db.executemany("INSERT INTO events(id, kind, ts, body) VALUES (?, ?, ?, ?)",
                           [(first + i, *e) for i, e in enumerate(events)])
            written = len(events)
        except _ROW_SQL_ERRORS as exc:
            if not _row_refused(exc):
                raise
            db.execute("ROLLBACK TO events")
            written = 0
            for kind, ts, body in events:
                try:
                    db.execute("INSERT INTO events(id, kind, ts, body) VALUES (?, ?, ?, ?)",
                               (self._next_id + written, kind, ts, body))
                except _ROW_SQL_ERRORS as one:
                    if not _row_refused(one):
                        raise
                    plan.dead.append(_dead_letter(one, f"event {_text(kind, 100)}",
                                                  _text(f"event({kind!r}, {body})",
                                                        _DEAD_EXCERPT)))
                    continue
                written += 1
        db.execute("RELEASE events")
        self._next_id += written
        self._events += written

    def _write_dead_sync(self, dead: list[_Dead]) -> None:
        """Keep the newest ``dead_letter_max`` dead letters; count the ones deleted."""
        db = self._db
        assert db is not None
        limit = self.config.dead_letter_max
        keep = dead[-limit:]
        db.executemany("INSERT INTO dead_letters(ts, device, reason, reading) VALUES (?, ?, ?, ?)",
                       [d[:4] for d in keep])
        self._dead += len(keep)
        deleted = len(dead) - len(keep)
        over = self._dead - limit
        if over > 0:
            db.execute("DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters "
                       "ORDER BY id LIMIT ?)", (over,))
            self._dead -= over
            deleted += over
        if deleted:
            self._dead_deleted += deleted
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES "
                       "('dead_letters_deleted', ?)", (self._dead_deleted,))

    def _commit_sync(self, batches: Sequence[Sequence[Reading]],
                     events: list[tuple[str, dict[str, Any], float]],
                     acks: list[tuple[str, int, int]]) -> None:
        db = self._db
        assert db is not None
        snapshot = (self._next_id, self._next_sid, self._rows, self._readings, self._events,
                    self._oldest, self._dead, self._dead_deleted)
        try:
            plan = self._prepare(batches, events)
        except BaseException:
            self._next_id, self._next_sid = snapshot[0], snapshot[1]
            raise
        db.execute("BEGIN IMMEDIATE")
        try:
            if plan.rows:
                self._write_rows(plan)
                self._rows += plan.written
                self._readings += plan.readings
                oldest = plan.oldest
                if oldest is not None and (self._oldest is None or oldest < self._oldest):
                    self._oldest = oldest
            if plan.events:
                self._write_events_sync(plan)
            if plan.dead:
                self._write_dead_sync(plan.dead)
            deleted_any = False
            for table, first, last in acks:
                if table == "telemetry":
                    n = db.execute("SELECT count(*), total(n) FROM telemetry WHERE id BETWEEN ? "
                                   "AND ?", (first, last)).fetchone()
                    db.execute("DELETE FROM telemetry WHERE id BETWEEN ? AND ?", (first, last))
                    self._rows -= n[0]
                    self._readings -= int(n[1])
                else:
                    cur = db.execute("DELETE FROM events WHERE id BETWEEN ? AND ?", (first, last))
                    self._events -= cur.rowcount
                deleted_any = True
            dropped = self._enforce_bounds_sync()
            if deleted_any or dropped:
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_id', ?)",
                           (self._next_id,))
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            (self._next_id, self._next_sid, self._rows, self._readings, self._events,
             self._oldest, self._dead, self._dead_deleted) = snapshot
            raise
        for key, sid in plan.stored.items():
            self._series[key] = sid
            self._series_by_id[sid] = key
        if acks or dropped:
            self._refresh_oldest()
        if plan.dead:
            self._report_dead(plan.dead)

    def _report_dead(self, dead: list[_Dead]) -> None:
        """Count committed dead letters by reason; log at most one line a minute."""
        for d in dead:
            self.m_dead.labels(d[4]).inc()
        now = time.monotonic()
        if now - self._dead_logged < _DEAD_LOG_EVERY:
            self._dead_unlogged += len(dead)
            return
        first = dead[0]
        more = len(dead) - 1 + self._dead_unlogged
        self._dead_logged, self._dead_unlogged = now, 0
        log.warning("outbox: a reading of %s cannot be stored (%s): set aside in dead_letters, "
                    "the other readings committed%s; see gateway outbox --dead-letters",
                    first[1], first[2],
                    f" ({more} more set aside since the last such message)" if more else "")

    def _refresh_size(self) -> None:
        assert self._db is not None
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        self._bytes = (pages - free) * self._page_size

    def _refresh_oldest(self) -> None:
        assert self._db is not None
        row = self._db.execute("SELECT blob FROM telemetry ORDER BY id LIMIT 1").fetchone()
        self._oldest = json.loads(row[0])[0] / 1000 if row else None

    def _drop_oldest_sync(self, table: str, rows: int, reason: str,
                          cutoff_ms: float | None = None) -> int:
        """Delete up to ``rows`` oldest rows of ``table``; return the readings dropped."""
        db = self._db
        assert db is not None
        if table == "telemetry":
            ids = db.execute("SELECT id, n, blob FROM telemetry ORDER BY id LIMIT ?",
                             (rows,)).fetchall()
            if cutoff_ms is not None:
                kept = []
                for rid, n, blob in ids:
                    if json.loads(blob)[0] >= cutoff_ms:
                        break
                    kept.append((rid, n, blob))
                ids = kept
            if not ids:
                return 0
            last = ids[-1][0]
            count = sum(r[1] for r in ids)
            db.execute("DELETE FROM telemetry WHERE id <= ?", (last,))
            self._rows -= len(ids)
            self._readings -= count
            self._dropped += count
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('dropped', ?)",
                       (self._dropped,))
            self.m_dropped.labels("telemetry", reason).inc(count)
            return int(count)
        cur = db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id "
                         "LIMIT ?)", (rows,))
        self._events -= cur.rowcount
        self._dropped_events += cur.rowcount
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('dropped_events', ?)",
                   (self._dropped_events,))
        self.m_dropped.labels("events", reason).inc(cur.rowcount)
        return cur.rowcount

    def _enforce_bounds_sync(self) -> int:
        dropped = 0
        # age: readings older than max_age (by their timestamp) are dropped, oldest first
        if self._oldest is not None and self._oldest < time.time() - self.config.max_age:
            cutoff = (time.time() - self.config.max_age) * 1000
            n = self._drop_oldest_sync("telemetry", _DROP_CHUNK, "age", cutoff)
            dropped += n
            if n:
                log.warning("outbox: dropped %d reading(s) older than %.0f s", n,
                            self.config.max_age)
        # bytes: drop the oldest telemetry down to 90 % of the bound (hysteresis)
        self._refresh_size()
        if self._bytes > self.config.max_bytes:
            target = int(self.config.max_bytes * 0.9)
            total_rows = self._rows + self._events
            per_row = max(1.0, self._bytes / max(1, total_rows))
            excess_rows = max(1, math.ceil((self._bytes - target) / per_row))
            table = "telemetry" if self._rows else "events"
            n = self._drop_oldest_sync(table, min(excess_rows, _DROP_CHUNK), "bytes")
            dropped += n
            if n:
                log.warning("outbox full (%d of %d bytes): dropped the %d oldest %s",
                            self._bytes, self.config.max_bytes, n,
                            "reading(s)" if table == "telemetry" else "event(s)")
                self._refresh_size()
        return dropped

    # -- reading (for the uplink) -------------------------------------------------------

    async def _read(self, read: Callable[[], T], empty: T) -> T:
        """Run ``read`` on the outbox thread; a corrupt file is replaced and reads as ``empty``."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, read)
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise
            await self._quarantine_at_runtime(str(exc))
            return empty

    async def read_telemetry(self, after: int, max_readings: int) -> list[TelemetryRow]:
        """Oldest committed telemetry batches with id > ``after``, up to ~``max_readings``."""
        return await self._read(lambda: self._read_telemetry_sync(after, max_readings), [])

    def _read_telemetry_sync(self, after: int, max_readings: int) -> list[TelemetryRow]:
        assert self._db is not None
        cur = self._db.execute("SELECT id, n, blob FROM telemetry WHERE id > ? ORDER BY id",
                               (after,))
        out: list[TelemetryRow] = []
        total = 0
        series = self._series_by_id
        try:
            while total < max_readings:
                chunk = cur.fetchmany(256)
                if not chunk:
                    break
                for rid, n, blob in chunk:
                    if out and total + n > max_readings:
                        return out
                    out.append(TelemetryRow(rid, _unpack(blob, series)))
                    total += n
        finally:
            cur.close()
        return out

    async def read_events(self, after: int, limit: int) -> list[EventRow]:
        """Oldest committed events with id > ``after``."""
        return await self._read(lambda: self._read_events_sync(after, limit), [])

    def _read_events_sync(self, after: int, limit: int) -> list[EventRow]:
        assert self._db is not None
        rows = self._db.execute("SELECT id, kind, body, ts FROM events WHERE id > ? ORDER BY id "
                                "LIMIT ?", (after, limit)).fetchall()
        return [EventRow(rid, kind, json.loads(body), ts) for rid, kind, body, ts in rows]

    async def read_next(self, after_event: int, after_telemetry: int, max_readings: int,
                        max_events: int = 100) -> tuple[list[EventRow], list[TelemetryRow]]:
        """What the uplink sends next: waiting events if any, else the oldest telemetry.

        One trip to the writer thread instead of two keeps latency down.
        """
        def read() -> tuple[list[EventRow], list[TelemetryRow]]:
            events = self._read_events_sync(after_event, max_events)
            if events:
                return events, []
            return [], self._read_telemetry_sync(after_telemetry, max_readings)

        return await self._read(read, ([], []))

    def stats(self) -> OutboxStats:
        return OutboxStats(
            epoch=self.epoch, depth=self._readings, rows=self._rows, events=self._events,
            bytes=self._bytes, oldest_ts=self._oldest, dropped=self._dropped,
            dropped_events=self._dropped_events, last_id=self._next_id - 1,
            pending=self._pending_readings, dead_letters=self._dead,
            dead_letters_deleted=self._dead_deleted,
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The latest readings set aside as unstorable, newest first."""
        def read() -> list[DeadLetter]:
            assert self._db is not None
            rows = self._db.execute("SELECT id, ts, device, reason, reading FROM dead_letters "
                                    "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            return [DeadLetter(*row) for row in rows]

        return await self._read(read, [])

    # -- closing ------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit everything queued, checkpoint, mark a clean shutdown, close."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            try:
                await self._writer
            except Exception as exc:  # noqa: BLE001
                log.error("outbox writer stopped with %s", exc)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._db is None:
            return
        try:
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_id', ?)",
                             (self._next_id,))
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean_shutdown', 1)")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.error("outbox: could not mark clean shutdown: %s", exc)
        finally:
            self._db.close()
            self._db = None


# -- dead letters ---------------------------------------------------------------------------

_repr = reprlib.Repr()
_repr.maxstring = 300
_repr.maxother = 120
_repr.maxlong = 60
_repr.maxlevel = 3


def _shown(value: object) -> str:
    """``repr`` cut short (long strings, deep nesting); never raises."""
    try:
        return _repr.repr(value)
    except Exception:  # noqa: BLE001 - a value that cannot even be shown (e.g. a huge int)
        return f"<{type(value).__name__}>"


def _text(value: object, limit: int) -> str:
    """Storable text of at most ``limit`` characters: strings as they are, else shown."""
    text = value if isinstance(value, str) else _shown(value)
    # lone surrogates cannot be stored as text: escaped
    return str(text[:limit]).encode("utf-8", "backslashreplace").decode()[:limit]


def _excerpt(readings: Sequence[Reading]) -> str:
    """The readings, field by field, at most ``_DEAD_EXCERPT`` characters."""
    parts: list[str] = []
    size = 0
    for r in readings:
        fields = ", ".join(f"{name}={_shown(getattr(r, name, '?'))}" for name in Reading._fields)
        parts.append(f"Reading({fields})")
        size += len(parts[-1]) + 2
        if size > _DEAD_EXCERPT:
            break
    return _text(parts[0] if len(readings) == 1 else "[" + ", ".join(parts) + "]",
                 _DEAD_EXCERPT)


def _excerpt_event(kind: object, body: object) -> str:
    return _text(f"event({_shown(kind)}, {_shown(body)})", _DEAD_EXCERPT)


def _devices(readings: Sequence[Reading]) -> str:
    """The device (or devices, comma-separated) of readings, at most ``_DEAD_DEVICE``."""
    names = dict.fromkeys(_text(getattr(r, "device", "?"), _DEAD_DEVICE) for r in readings)
    return ",".join(names)[:_DEAD_DEVICE]


def _row_refused(exc: Exception) -> bool:
    """Whether SQLite refused a row for the row's own sake (binding, size), not the store's."""
    if isinstance(exc, sqlite3.ProgrammingError):
        return "closed" not in str(exc)  # a closed connection is no row's fault
    return True


def _dead_letter(exc: BaseException, device: str, excerpt: str) -> _Dead:
    name = type(exc).__name__
    try:
        detail = str(exc)
    except Exception:  # noqa: BLE001 - an exception that cannot say what it is
        detail = ""
    reason = _text(f"{name}: {detail}" if detail else name, _DEAD_REASON)
    return (time.time(), _text(device, _DEAD_DEVICE), reason, excerpt,
            name if name in _DEAD_LABELS else "other")


_new_tuple = tuple.__new__  # builds a Reading without NamedTuple's Python-level __new__


def _unpack(blob: str | bytes, series: dict[int, tuple[str, str, str | None]]) -> list[Reading]:
    """One stored batch back into readings (the drain's hot path)."""
    flat = json.loads(blob)
    base = flat[0]
    out: list[Reading] = []
    append = out.append
    for i in range(1, len(flat), 3):
        device, metric, unit = series[flat[i]]
        v = flat[i + 1]
        if v.__class__ is dict:
            v = float(v["f"])
        append(_new_tuple(Reading, (device, metric, v, unit, (base + flat[i + 2]) / 1000)))
    return out
