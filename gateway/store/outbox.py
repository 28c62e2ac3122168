"""The outbox: a durable, ordered, bounded store-and-forward queue in SQLite.

- A reading is **accepted** (``append`` returns True) once it is durable: committed to
  the file with the configured ``synchronous`` level, or acknowledged by the cloud
  broker, whichever comes first. While the cloud keeps up, most batches are acknowledged
  before their commit is due and never touch the disk; when it does not (outage, slow
  link), every batch is committed within ``commit_interval`` of its arrival.
- Each batch gets its id when it arrives, and the uplink may send it at once, before its
  commit: the cloud, the rules and the device never wait for the disk, and commits can be
  spaced out (an SD card sees few, large writes). Ids are handed out from a block
  reserved in the file beforehand, so an id is never reused within an epoch (the random
  id of the file), even after a crash; the cloud de-duplicates on ``(epoch, seq)``.
- Telemetry rows hold one batch each, packed compactly (series are interned), each with
  a CRC so a salvage from the raw file keeps only intact rows. Events (alerts, device
  status) live in their own table, are always committed, and leave first.
- Bounded by bytes (main file and write-ahead log together) and by age: at the bound the
  oldest telemetry is dropped first (events last); every dropped reading is counted, in a
  metric and in the file. When the disk itself is full, new readings are refused (the
  devices send them again), uploads and deletes go on with the help of a reserve file,
  and ingest resumes as soon as there is room again.
- One bad row never refuses the others. A reading (or event) that cannot be encoded or
  bound (its own problem, not the disk's) is set aside in a bounded ``dead_letters``
  table with its reason, and the rest of its batch and of its group commit is stored. Its
  ``append`` answers True: it has been kept, and sending it again cannot help. Disk, lock
  and corruption errors still refuse the whole commit, to be retried.
- A corrupt file at start is renamed aside, a fresh one started, what can be read is
  salvaged into it (through SQLite, and from the raw bytes where SQLite cannot read
  them), and an alert is queued.
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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.core.files import set_aside
from gateway.core.tasks import Fanout
from gateway.reading import Reading
from gateway.store.checksum import series_crc, telemetry_crc
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
#: at most one log line about dead letters, failed commits or a full disk this often (s)
_LOG_EVERY = 60.0
#: salvaged batches committed per transaction
_SALVAGE_CHUNK = 1000
#: files up to this size get a full quick_check at every start (well under a second)
_ALWAYS_CHECK_BELOW = 64 * 1024**2
#: ids reserved in the file at a time; a new block is reserved when half is used
_ID_BLOCK = 1_000_000
#: while the disk is full, how often the writer tries to make room and resume (s)
_FULL_PROBE = 1.0
#: the write-ahead log's bound: a 16th of the smaller of ``max_bytes`` and the
#: filesystem, within these limits (up to a quarter of a tiny bound); the reserve file
#: is a quarter bigger than that
_WAL_MIN, _WAL_MAX = 64 * 1024, 4 * 1024**2


class TelemetryRow(NamedTuple):
    """One accepted batch: its outbox id and its readings."""

    id: int
    readings: Sequence[Reading]


class EventRow(NamedTuple):
    """One event (``alert``, ``status``...) and its JSON body."""

    id: int
    kind: str
    body: dict[str, Any]
    ts: float


@dataclass
class OutboxStats:
    epoch: str
    depth: int  # readings waiting (telemetry), committed or not yet
    rows: int
    events: int
    bytes: int  # main file and write-ahead log on disk
    oldest_ts: float | None
    dropped: int
    dropped_events: int
    last_id: int
    pending: int  # readings accepted into memory, not yet committed nor acknowledged
    dead_letters: int = 0  # rows in the dead-letter table
    dead_letters_deleted: int = 0  # deleted beyond ``dead_letter_max``, since the file began
    disk_full: bool = False  # new readings are refused until there is room again


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


#: state updates: key → (order of the update, JSON text or None to delete)
_State = dict[str, tuple[int, "str | None"]]


@dataclass(slots=True, eq=False)
class _Row:
    """A telemetry batch accepted into memory: sent to the cloud at once, committed by
    ``commit_interval`` unless the cloud acknowledges it first."""

    id: int
    readings: Sequence[Reading]
    blob: str
    crc: int
    new: list[tuple[_Key, int]] | None  # series it uses that were not yet written
    fut: asyncio.Future[bool] | None
    since: float  # loop time of arrival
    #: durable state that must commit with this batch (see Outbox.submit)
    state: _State | None = None


@dataclass(slots=True, eq=False)
class _Event:
    id: int
    kind: str
    ts: float
    body: str
    fut: asyncio.Future[bool] | None


@dataclass(slots=True)
class _Work:
    """One commit's worth of changes, taken from the event loop's side."""

    rows: list[_Row] = field(default_factory=list)
    series: dict[_Key, int] = field(default_factory=dict)  # not yet written
    events: list[_Event] = field(default_factory=list)
    dead: list[tuple[_Dead, asyncio.Future[bool] | None]] = field(default_factory=list)
    acks: list[tuple[str, int, int]] = field(default_factory=list)  # rows to delete
    reserve_ids: int | None = None  # a new upper bound of ids to reserve
    flushes: list[asyncio.Future[bool]] = field(default_factory=list)
    state: dict[str, str | None] = field(default_factory=dict)
    state_futs: list[asyncio.Future[bool]] = field(default_factory=list)
    # filled in by the writer thread
    written: list[_Row] = field(default_factory=list)
    stored_series: dict[_Key, int] = field(default_factory=dict)
    set_aside: list[tuple[_Dead, asyncio.Future[bool] | None]] = field(default_factory=list)
    no_room: bool = False  # committed, but the log could not be checkpointed: disk full

    def __bool__(self) -> bool:
        return bool(self.rows or self.series or self.events or self.dead or self.acks
                    or self.reserve_ids or self.flushes or self.state or self.state_futs)


def _is_corruption(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text or "corrupt" in text
        or "file is encrypted" in text
    )


def _is_disk_full(exc: BaseException, free: int, headroom: int) -> bool:
    """SQLITE_FULL, or an I/O error while the filesystem has less than ``headroom`` free."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in text:
        return True
    return "i/o error" in text and free < headroom


class Outbox:
    """Durable queue between the core and the uplink. Create with :meth:`open`."""

    def __init__(self, path: Path, config: StoreConfig, metrics: CollectorRegistry | None) -> None:
        self.path = path
        self.config = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None
        self.epoch = ""
        self._series: dict[_Key, int] = {}
        self._series_by_id: dict[int, _Key] = {}
        self._next_sid = 1
        # the id space, shared by telemetry and events: handed out on the event loop
        self._next_id = 1
        self._ids_reserved = 0  # ids below this are reserved in the file (durable)
        self._reserve_wanted: int | None = None  # a bound to reserve with the next commit
        # what the file holds (kept by the writer thread)
        self._rows = 0
        self._readings = 0
        self._events = 0
        self._bytes = 0  # used pages and write-ahead log: what max_bytes bounds
        self._disk_bytes = 0  # main file and write-ahead log as they lie on disk
        self._wal_bytes = 0  # the write-ahead log, as last seen
        self._oldest: float | None = None
        self._dropped = 0
        self._dropped_events = 0
        self._dead = 0  # rows in dead_letters
        self._dead_deleted = 0
        self._committed_last = 0  # the highest telemetry id committed
        self._events_last = 0  # the highest event id committed
        # accepted, not yet committed (event loop side): the tail the uplink sends from
        self._pending: dict[int, _Row] = {}  # waiting for their commit
        self._committing: dict[int, _Row] = {}  # in the commit being written
        self._tail_readings = 0  # readings in both, not yet acknowledged nor committed
        self._pending_readings = 0  # of which in _pending
        self._handed = 0  # the highest id handed to the writer
        self._new_series: dict[_Key, int] = {}  # interned, not yet written
        self._bad_sids: dict[int, Exception] = {}  # series SQLite refused to store
        self._pending_events: list[_Event] = []
        self._dead_pending: list[tuple[_Dead, asyncio.Future[bool] | None]] = []
        self._acks: list[tuple[str, int, int]] = []
        self._flushes: list[asyncio.Future[bool]] = []
        #: durable state: as committed, updates not yet taken, futures of those updates
        self._state: dict[str, str] = {}
        self._state_pending: _State = {}
        self._state_futs: list[asyncio.Future[bool]] = []
        self._state_seq = 0
        self._other_since: float | None = None  # when events, dead letters or acks came
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._quarantining = False
        self._writer: asyncio.Task[None] | None = None
        #: set whenever there is something new to send; the uplink waits on it
        self.new_data = Fanout()
        # disk full
        self._full = False
        self._full_since = 0.0
        self._refused_full = 0
        self._wal_bound = _WAL_MAX
        self._reserve_size = _WAL_MAX + _WAL_MAX // 4
        self._reserve_path = path.with_name(path.name + ".reserve")
        # bounded logging
        self._dead_logged = -math.inf
        self._dead_unlogged = 0
        self._error_logged = -math.inf
        self._error_unlogged = 0
        self._refusal_logged = -math.inf
        self._page_size = 4096
        reg = metrics or CollectorRegistry()
        self.m_depth = Gauge("gateway_outbox_depth", "Readings waiting in the outbox", registry=reg)
        self.m_bytes = Gauge("gateway_outbox_bytes",
                             "Bytes the outbox uses on disk (database and write-ahead log)",
                             registry=reg)
        self.m_oldest = Gauge("gateway_outbox_oldest_age_seconds",
                              "Age of the oldest waiting reading", registry=reg)
        self.m_dropped = Counter("gateway_outbox_dropped",
                                 "Readings dropped at the outbox bound (oldest first)",
                                 ["kind", "reason"], registry=reg)
        self.m_commits = Counter("gateway_outbox_commits", "Outbox transactions committed",
                                 registry=reg)
        self.m_unwritten = Counter("gateway_outbox_acked_before_commit",
                                   "Readings the cloud acknowledged before their commit was "
                                   "due (never written to disk)", registry=reg)
        self.m_errors = Counter("gateway_outbox_errors",
                                "Outbox transactions that failed (store errors)", registry=reg)
        self.m_full = Gauge("gateway_outbox_disk_full",
                            "1 while the disk is full and new readings are refused",
                            registry=reg)
        self.m_refused = Counter("gateway_outbox_refused",
                                 "Readings refused (disk full, store failing, too many pending)",
                                 ["reason"], registry=reg)
        self.m_dead = Counter("gateway_outbox_dead_letters",
                              "Readings set aside because they cannot be stored", ["reason"],
                              registry=reg)
        self.m_dead_rows = Gauge("gateway_outbox_dead_letter_rows",
                                 "Rows in the outbox's dead-letter table", registry=reg)
        self.m_quarantined = Counter("gateway_outbox_quarantined",
                                     "Corrupt outbox files renamed aside", registry=reg)
        self.m_depth.set_function(lambda: self._readings + self._tail_readings)
        self.m_dead_rows.set_function(lambda: self._dead)
        self.m_bytes.set_function(lambda: self._disk_bytes)
        self.m_full.set_function(lambda: 1 if self._full else 0)
        self.m_oldest.set_function(self._oldest_age)

    def _oldest_age(self) -> float:
        oldest = self._oldest
        for rows in (self._committing, self._pending):
            for row in rows.values():
                if row.fut is not None and row.readings:
                    t0 = row.readings[0].ts
                    oldest = t0 if oldest is None else min(oldest, t0)
                    break
        return max(0.0, time.time() - oldest) if oldest else 0.0

    # -- opening ------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, config: StoreConfig,
                   metrics: CollectorRegistry | None = None) -> Outbox:
        """Open (creating, migrating or quarantining as needed) and start the writer."""
        self = cls(Path(path), config, metrics)
        loop = asyncio.get_running_loop()
        notes = await loop.run_in_executor(self._executor, self._open_sync)
        for kind, body in notes:
            self._queue_event(kind, body, time.time(), None)
        self._writer = loop.create_task(self._write_loop(), name="outbox-writer")
        if self._pending_events:
            await self.flush()  # the alert about a quarantined file is stored before ingest
        return self

    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if db.execute("PRAGMA page_count").fetchone()[0] == 0:
            # a new file keeps the map that lets free pages go back to the filesystem,
            # which a full disk needs (files made before this cannot give space back)
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.config.synchronous.upper()}")
        db.execute("PRAGMA temp_store=MEMORY")
        self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        # the write-ahead log is bounded and counted in max_bytes: checkpoint when it
        # reaches a 16th of the smaller of max_bytes and the filesystem, and cut it back
        # to that size afterwards; a reserve file of about the same size is kept to be
        # released when the disk fills, so deletes and checkpoints still find room
        try:
            st = os.statvfs(path.parent)
            disk = st.f_blocks * st.f_frsize
        except OSError:
            disk = self.config.max_bytes
        room = min(self.config.max_bytes, disk or self.config.max_bytes)
        self._wal_bound = max(min(_WAL_MAX, room // 16), min(_WAL_MIN, room // 4))
        # the reserve covers what a checkpoint of a full log may add to the main file
        self._reserve_size = self._wal_bound + self._wal_bound // 4
        frames = max(4, self._wal_bound // (self._page_size + 24))
        db.execute(f"PRAGMA wal_autocheckpoint={frames}")
        db.execute(f"PRAGMA journal_size_limit={self._wal_bound}")
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
        self._reserve_ids_now()
        if not self._make_reserve():
            log.warning("outbox: no room for the %d-byte reserve file %s; a full disk will be "
                        "harder to recover from", self._reserve_size, self._reserve_path)
        return notes

    def _reserve_ids_now(self) -> None:
        """Reserve the next block of ids before any is handed out (writer thread, at open)."""
        db = self._db
        assert db is not None
        bound = self._next_id + _ID_BLOCK
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('ids_reserved', ?)",
                   (bound,))
        self._ids_reserved = bound

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
        self._load_state(clean)
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean_shutdown', 0)")

    def _load_state(self, clean: bool = True) -> None:
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
        max_t = db.execute("SELECT max(id) FROM telemetry").fetchone()[0] or 0
        max_e = db.execute("SELECT max(id) FROM events").fetchone()[0] or 0
        # after a crash, ids may have been handed out (and sent) up to the reserved bound
        top = max(int(meta.get("next_id", 1)), max_t + 1, max_e + 1, self._next_id)
        if not clean:
            top = max(top, int(meta.get("ids_reserved", 0)))
        self._next_id = top
        self._committed_last, self._events_last = max_t, max_e
        self._handed = max(self._handed, max_t, max_e)  # in the file: deleted when acknowledged
        self._rows, readings = db.execute("SELECT count(*), total(n) FROM telemetry").fetchone()
        self._readings = int(readings)
        self._events = db.execute("SELECT count(*) FROM events").fetchone()[0]
        self._next_sid = max(self._next_sid,
                             (db.execute("SELECT max(id) FROM series").fetchone()[0] or 0) + 1)
        self._dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        self._dead_deleted = int(meta.get("dead_letters_deleted", 0))
        self._state = dict(db.execute("SELECT key, value FROM state").fetchall())
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
        # the log and shared-memory files move with it: SQLite can still read the copy
        aside = set_aside(self.path, "corrupt", suffixes=("-wal", "-shm"))
        self.m_quarantined.inc()
        log.critical("outbox %s is corrupt (%s): moved aside to %s; starting a fresh outbox",
                     self.path, reason, aside or "nowhere (the file was gone)")
        # series interned so far stay (batches in memory use them): all written afresh
        self._db = self._connect(self.path)
        migrate(self._db, MIGRATIONS)
        self._load_state()
        self._new_series = dict(self._series)
        self._bad_sids.clear()
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean_shutdown', 0)")
        self._reserve_ids_now()
        salvaged = self._salvage(aside) if aside is not None else 0
        if salvaged:
            log.warning("outbox: salvaged %d reading(s) from %s", salvaged, aside)
        return ("alert", {
            "rule": "outbox_corrupt", "severity": "critical", "device": None,
            "message": f"outbox file was corrupt ({reason}); moved aside to "
                       f"{aside.name if aside is not None else 'nowhere (the file was gone)'}, "
                       f"{salvaged} reading(s) salvaged",
        })

    def _salvage(self, aside: Path) -> int:
        """Copy every intact telemetry batch out of a quarantined file, oldest first:
        what SQLite can still read, and what a scan of the raw bytes finds intact (CRC)."""
        found = self._salvage_sqlite(aside)
        try:
            from gateway.store import salvage
            raw = salvage.scan(aside)
            for rid, (_, blob) in raw.batches.items():
                if rid not in found:
                    try:
                        found[rid] = _unpack(blob, raw.series)
                    except (ValueError, TypeError, KeyError, IndexError):
                        continue
        except Exception as exc:  # noqa: BLE001 - a salvage must never stop the start
            log.warning("outbox: raw scan of %s failed: %s", aside, exc)
        salvaged = 0
        ids = sorted(found)
        for at in range(0, len(ids), _SALVAGE_CHUNK):
            work = _Work()
            for rid in ids[at:at + _SALVAGE_CHUNK]:
                row = self._encode_row(found.pop(rid), None, work.dead)
                if row is not None:
                    work.rows.append(row)
            work.series = dict(self._new_series)
            self._commit_sync(work)
            self._after_commit_series(work)
            salvaged += sum(len(r.readings) for r in work.written)
            if work.written:  # in the file now: sent from there, deleted when acknowledged
                top = work.written[-1].id
                self._committed_last = max(self._committed_last, top)
                self._handed = max(self._handed, top)
        return salvaged

    def _salvage_sqlite(self, aside: Path) -> dict[int, Sequence[Reading]]:
        """The batches SQLite can still read from a quarantined file, by their old id."""
        found: dict[int, Sequence[Reading]] = {}
        try:
            old = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
        except sqlite3.Error:
            return found
        try:
            series = {sid: (d, m, u) for sid, d, m, u in
                      old.execute("SELECT id, device, metric, unit FROM series")}
            max_id = old.execute("SELECT max(id) FROM telemetry").fetchone()[0] or 0
        except sqlite3.Error:
            old.close()
            return found
        last = after = probes = 0
        jump = 1
        done = False
        try:
            # walk the table in id order; where a page is unreadable, seek past it with
            # growing jumps (ids are the b-tree key, so seeking skips the damaged leaf)
            while not done and after < max_id and probes < 2000:
                try:
                    for rid, blob in old.execute("SELECT id, blob FROM telemetry WHERE id > ? "
                                                 "ORDER BY id", (after,)):
                        last = after = rid
                        jump = 1
                        try:
                            found[rid] = _unpack(blob, series)
                        except (ValueError, TypeError, KeyError, IndexError):
                            continue
                    done = True
                except sqlite3.Error:
                    probes += 1
                    after = last + jump
                    jump *= 2
        finally:
            old.close()
        return found

    # -- accepting (event loop side) -----------------------------------------------------

    def submit(self, readings: Sequence[Reading],
               state: Mapping[str, str | None] | None = None) -> asyncio.Future[bool] | None:
        """Take readings into the outbox at once; None if refused (full, failing, closing).

        The returned future answers True when they are durable (committed, or acknowledged
        by the cloud), False if their commit failed. They are visible to the uplink now.

        ``state`` (key → text, None deletes the key) commits in the same transaction as
        the readings, or on its own if the cloud acknowledges them first; the future then
        answers only once the state is committed. Later updates of a key win.
        """
        if self._closing or self._quarantining:
            return None
        n = len(readings)
        if self._full:
            self._refuse("disk_full", n)
            return None
        if self._tail_readings + n > self.config.max_pending:
            self.m_refused.labels("pending").inc(n)
            return None
        stamped = self._stamp(state) if state else None
        if not n:
            if stamped:
                return self._put_state(stamped)
            fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            fut.set_result(True)
            return fut
        fut = asyncio.get_running_loop().create_future()
        # encoded only if its commit comes: most batches are acknowledged by the cloud first
        row = _Row(self._take_id(), readings, "", 0, None, fut, time.monotonic(), stamped)
        if not self._pending:
            self._due_in(self.config.commit_interval)
        self._pending[row.id] = row
        self._tail_readings += n
        self._pending_readings += n
        if self._pending_readings >= self.config.commit_max_rows:
            self._wake.set()
        self.new_data.set()
        return fut

    async def append(self, readings: Sequence[Reading],
                     state: Mapping[str, str | None] | None = None) -> bool:
        """Queue readings; True once durable, False if refused (full or failing store)."""
        fut = self.submit(readings, state)
        if fut is None:
            return False
        return await fut

    def state(self, prefix: str = "") -> dict[str, str]:
        """The durable state whose keys start with ``prefix``, latest updates included."""
        out = {k: v for k, v in self._state.items() if k.startswith(prefix)}
        for k, (_, v) in sorted(self._state_pending.items(), key=lambda kv: kv[1][0]):
            if k.startswith(prefix):
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = v
        return out

    def _stamp(self, state: Mapping[str, str | None]) -> _State:
        self._state_seq += 1
        seq = self._state_seq
        return {k: (seq, v) for k, v in state.items()}

    @staticmethod
    def _merge_state(into: _State, updates: _State) -> None:
        for k, sv in updates.items():
            old = into.get(k)
            if old is None or old[0] <= sv[0]:
                into[k] = sv

    def _put_state(self, stamped: _State,
                   fut: asyncio.Future[bool] | None = None) -> asyncio.Future[bool]:
        """State to commit on its own (within ``commit_interval``)."""
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
        self._merge_state(self._state_pending, stamped)
        self._state_futs.append(fut)
        self._other_came()
        return fut

    def _take_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        if self._next_id > self._ids_reserved - _ID_BLOCK // 2 and self._reserve_wanted is None:
            self._reserve_wanted = self._ids_reserved + _ID_BLOCK
            self._other_came()
        return rid

    def _encode_row(self, readings: Sequence[Reading], fut: asyncio.Future[bool] | None,
                    dead: list[tuple[_Dead, asyncio.Future[bool] | None]]) -> _Row | None:
        """A batch as the row it will be, with a new id (salvage)."""
        row = _Row(self._take_id(), readings, "", 0, None, fut, time.monotonic())
        return row if self._pack(row, dead) else None

    def _pack(self, row: _Row, dead: list[tuple[_Dead, asyncio.Future[bool] | None]]) -> bool:
        """Encode a batch into its stored row; what cannot be encoded goes to ``dead``.
        False if nothing of it can be stored."""
        readings = row.readings
        try:
            blob, new = self._encode(readings)
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - encoding is pure Python: the row's fault
            kept = self._split(readings, dead, row.fut)
            if kept is None:
                return False
            blob, new, readings = kept
            row.readings = readings
        row.blob, row.new = blob, new
        row.crc = telemetry_crc(row.id, len(readings), blob)
        return True

    def append_event(self, kind: str, body: dict[str, Any],
                     ts: float | None = None) -> asyncio.Future[bool]:
        """Queue an event (``alert``, ``status``...) that leaves before any telemetry;
        the future (which may be awaited or ignored) answers once it is committed."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._closing:
            fut.set_result(False)
            return fut
        self._queue_event(kind, body, time.time() if ts is None else ts, fut)
        self._other_came()
        return fut

    def _queue_event(self, kind: str, body: dict[str, Any], ts: float,
                     fut: asyncio.Future[bool] | None) -> None:
        try:
            if not isinstance(kind, str):
                raise TypeError(f"event kind must be a string, not {type(kind).__name__}")
            text = json.dumps(body, separators=(",", ":"), default=str)
            self._pending_events.append(_Event(self._take_id(), kind, float(ts), text, fut))
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - this event's own fault
            device = body.get("device") if isinstance(body, dict) else None
            self._dead_pending.append((_dead_letter(
                exc, _text(device or f"event {_shown(kind)}", _DEAD_DEVICE),
                _excerpt_event(kind, body)), fut))

    async def flush(self) -> bool:
        """Commit everything queued before this call (acks included) now."""
        if self._closing:
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._flushes.append(fut)
        self._wake.set()
        return await fut

    def ack(self, table: str, first: int, last: int) -> None:
        """The cloud confirmed rows ``first..last`` of ``table``: they are durable there.

        Batches not yet committed are answered at once and never written; committed ones
        are deleted with the next commit.
        """
        if table == "telemetry":
            for rows in (self._committing, self._pending):
                if not rows:
                    continue
                lo, hi = max(first, next(iter(rows))), min(last, next(reversed(rows)))
                if rows is self._pending:
                    unwritten = 0
                    for rid in range(lo, hi + 1):
                        row = rows.pop(rid, None)
                        if row is not None and row.fut is not None:
                            unwritten += len(row.readings)
                            if row.state:
                                # the readings are safe in the cloud; their state is not
                                # committed yet: answer once it is
                                fut, row.fut = row.fut, None
                                self._tail_readings -= len(row.readings)
                                self._put_state(row.state, fut)
                            else:
                                self._resolve(row, True)
                    self._pending_readings -= unwritten
                    self.m_unwritten.inc(unwritten)
                else:
                    for rid in range(lo, hi + 1):
                        row = rows.get(rid)
                        if row is not None and not row.state:  # with state: at its commit
                            self._resolve(row, True)
            if first > self._handed:
                return  # nothing of it was ever handed to the writer: nothing to delete
            last = min(last, self._handed)
        self._acks.append((table, first, last))
        self._other_came()

    def _resolve(self, row: _Row, ok: bool) -> None:
        fut = row.fut
        if fut is None:
            return
        row.fut = None
        self._tail_readings -= len(row.readings)
        if not fut.done():
            fut.set_result(ok)

    def _refuse(self, reason: str, n: int) -> None:
        self.m_refused.labels(reason).inc(n)
        self._refused_full += n
        now = time.monotonic()
        if now - self._refusal_logged >= _LOG_EVERY:
            self._refusal_logged = now
            log.warning("outbox: the disk is full: refusing new readings (%d so far; devices "
                        "send them again), uploads go on", self._refused_full)

    # -- when to commit ------------------------------------------------------------------

    def _other_came(self) -> None:
        """Events, dead letters, deletes or an id reservation wait: commit within
        ``commit_interval``."""
        if self._other_since is None:
            self._other_since = time.monotonic()
            self._due_in(self.config.commit_interval)

    def _due_in(self, delay: float) -> None:
        """Make sure the writer looks again within ``delay`` seconds."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = loop.call_at(when, self._wake.set)

    def _next_due(self, now: float) -> float | None:
        """When the next commit is due (monotonic time), None if nothing waits."""
        if self._closing or self._flushes:
            return now
        due: float | None = None
        if self._pending:
            if self._pending_readings >= self.config.commit_max_rows:
                return now
            due = next(iter(self._pending.values())).since + self.config.commit_interval
        if self._other_since is not None:
            other = self._other_since + self.config.commit_interval
            due = other if due is None else min(due, other)
        return due

    def _take_work(self) -> _Work:
        work = _Work()
        # every waiting batch once the oldest is due (they share the commit); none when
        # the commit is for events or deletes alone: young batches the cloud is about to
        # acknowledge would each need a delete, and that delete a commit taking the next
        oldest = next(iter(self._pending.values()), None)
        if self._closing or self._flushes or \
                self._pending_readings >= self.config.commit_max_rows or (
                    oldest is not None and oldest.since + self.config.commit_interval
                    <= time.monotonic() + 0.001):
            taken, self._pending = self._pending, {}
            self._pending_readings = 0
        else:
            taken = {}
        state: _State = {}
        for row in taken.values():
            if row.state:
                self._merge_state(state, row.state)
            if row.blob or self._pack(row, work.dead):
                work.rows.append(row)
        self._merge_state(state, self._state_pending)
        self._state_pending = {}
        work.state = {k: v for k, (_, v) in state.items()}
        work.state_futs, self._state_futs = self._state_futs, []
        self._committing = taken
        work.series = dict(self._new_series)
        work.events, self._pending_events = self._pending_events, []
        work.dead[:0], self._dead_pending = self._dead_pending, []
        work.acks, self._acks = self._acks, []
        work.reserve_ids = self._reserve_wanted
        work.flushes, self._flushes = self._flushes, []
        self._other_since = None
        if self._committing:
            self._handed = max(self._handed, next(reversed(self._committing)))
        return work

    def _left(self) -> bool:
        return bool(self._pending or self._pending_events or self._dead_pending or self._acks
                    or self._flushes or self._reserve_wanted or self._state_pending
                    or self._state_futs)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._timer is not None and self._timer.when() <= loop.time():
                self._timer = None
            if self._full and not self._closing:
                await self._probe_room()
                if self._full:
                    self._due_in(_FULL_PROBE)
                    continue
            now = time.monotonic()
            due = self._next_due(now)
            if due is None:
                if self._closing:
                    return
                continue
            if due > now:
                self._due_in(due - now)
                continue
            work = self._take_work()
            if work:
                await self._commit(work)
            if self._closing:
                if not self._left():
                    return
                self._wake.set()
                continue
            due = self._next_due(time.monotonic())
            if due is not None:
                self._due_in(due - time.monotonic())

    async def _commit(self, work: _Work) -> bool:
        """Write ``work`` in one transaction and answer everyone waiting on it."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._commit_sync, work)
            ok = True
        except Exception as exc:  # noqa: BLE001 - refuse, keep running, retry next time
            ok = False
            self.m_errors.inc()
            await self._failed(exc, work)
        self.m_commits.inc()
        for row in self._committing.values():  # stored, set aside or refused alike
            self._resolve(row, ok)
        self._committing = {}
        for event in work.events:
            if event.fut is not None and not event.fut.done():
                event.fut.set_result(ok)
        for _, fut in work.dead:
            if fut is not None and not fut.done():
                fut.set_result(ok)
        for fut in work.flushes + work.state_futs:
            if not fut.done():
                fut.set_result(ok)
        if ok:
            for key, value in work.state.items():
                if value is None:
                    self._state.pop(key, None)
                else:
                    self._state[key] = value
            if work.written:
                self._committed_last = max(self._committed_last, work.written[-1].id)
            if work.events:
                self._events_last = max(self._events_last, work.events[-1].id)
                self.new_data.set()
            if work.reserve_ids:
                self._ids_reserved = max(self._ids_reserved, work.reserve_ids)
                if self._reserve_wanted == work.reserve_ids:
                    self._reserve_wanted = None
            self._after_commit_series(work)
            if work.set_aside:
                self._report_dead([d for d, _ in work.set_aside])
            if work.no_room:
                self._enter_full()
        return ok

    def _after_commit_series(self, work: _Work) -> None:
        for key, sid in work.stored_series.items():
            if self._new_series.get(key) == sid:
                del self._new_series[key]
        for sid in self._bad_sids:
            bad = self._series_by_id.pop(sid, None)
            if bad is not None:
                if self._series.get(bad) == sid:
                    del self._series[bad]
                if self._new_series.get(bad) == sid:
                    del self._new_series[bad]

    async def _failed(self, exc: Exception, work: _Work) -> None:
        """A commit failed: say so (at a bounded rate) and keep what can wait."""
        disk_full = _is_disk_full(exc, self._free_bytes(), self._wal_bound)
        now = time.monotonic()
        if now - self._error_logged >= _LOG_EVERY:
            more = self._error_unlogged
            self._error_logged, self._error_unlogged = now, 0
            log.error("outbox write failed: %s: %s; refusing %d batch(es) (devices will "
                      "retry)%s", type(exc).__name__, exc, len(work.rows),
                      f"; {more} more failed commit(s) since the last such message"
                      if more else "")
        else:
            self._error_unlogged += 1
        if _is_corruption(exc):
            await self._quarantine_at_runtime(str(exc))
            return
        self._acks[:0] = work.acks  # deleting can wait for the next commit
        if work.acks:
            self._other_came()
        if disk_full:
            self._enter_full()

    # -- a full disk ---------------------------------------------------------------------

    def _free_bytes(self) -> int:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def _enter_full(self) -> None:
        if not self._full:
            self._full = True
            self._full_since = time.monotonic()
            self._refused_full = 0
            log.error("outbox: the disk holding %s is full: refusing new readings until there "
                      "is room (devices keep them and send them again); uploads and deletes "
                      "go on", self.path)
        for row in list(self._pending.values()):
            self._resolve(row, False)
        self._pending.clear()
        self._pending_readings = 0
        try:
            self._reserve_path.unlink(missing_ok=True)  # room for deletes and checkpoints
        except OSError:
            pass
        self._due_in(_FULL_PROBE)

    async def _probe_room(self) -> None:
        """While the disk is full: delete what the cloud acknowledged, checkpoint, and
        resume once the reserve file fits again with room to spare."""
        loop = asyncio.get_running_loop()
        # checkpoint first, with the reserve's room: the log's space comes back for deletes
        await loop.run_in_executor(self._executor, self._checkpoint_sync)
        if self._acks or self._pending_events or self._dead_pending or self._flushes:
            work = self._take_work()
            if not await self._commit(work):
                return
        if await loop.run_in_executor(self._executor, self._room_again):
            self._full = False
            log.warning("outbox: room on disk again after %.0f s: accepting readings "
                        "(%d refused meanwhile)", time.monotonic() - self._full_since,
                        self._refused_full)

    def _checkpoint_sync(self) -> bool:
        """Checkpoint and cut the log back to nothing; False if it could not."""
        if self._db is None:
            return False
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._refresh_size()
            return True
        except sqlite3.Error:
            return False

    def _room_again(self) -> bool:
        """Writer thread: cut the write-ahead log back and see whether there is room."""
        db = self._db
        if db is None:
            return False
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                # give the pages the deletes freed back to the filesystem, a few at a time
                # (each step goes through the log, which has only the reserve's room)
                step = max(16, self._reserve_size // self._page_size // 4)
                for _ in range(10_000):
                    if not db.execute("PRAGMA freelist_count").fetchone()[0]:
                        break
                    db.execute(f"PRAGMA incremental_vacuum({step})")
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._refresh_size()
        except sqlite3.Error:
            return False
        if not self._make_reserve():
            return False
        return self._free_bytes() >= self._wal_bound  # the log can reach its bound

    def _make_reserve(self) -> bool:
        """Keep ``reserve_size`` bytes allocated beside the file (not written: allocated)."""
        try:
            if self._reserve_path.exists() and \
                    self._reserve_path.stat().st_size >= self._reserve_size:
                return True
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, self._reserve_size)
                except OSError as exc:
                    if exc.errno not in (95, 22):  # EOPNOTSUPP, EINVAL: no fallocate here
                        raise
                    os.pwrite(fd, bytes(self._reserve_size), 0)
                    os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError:
            try:
                self._reserve_path.unlink(missing_ok=True)
            except OSError:
                pass
            return False

    async def _quarantine_at_runtime(self, reason: str) -> None:
        loop = asyncio.get_running_loop()
        self._quarantining = True
        try:
            kind, body = await loop.run_in_executor(self._executor, self._quarantine, reason)
        except Exception as exc:  # noqa: BLE001 - nothing more to do than say so
            log.critical("outbox: could not replace the corrupt file: %s", exc)
            return
        finally:
            self._quarantining = False
        self._queue_event(kind, body, time.time(), None)
        self._other_came()
        self.new_data.set()

    # -- the writer thread ----------------------------------------------------------------
    #
    # Every batch and event is encoded into the row it will be on the event loop, when it
    # arrives (pure Python, no SQL): whatever goes wrong there is the row's fault, and that
    # row is dead-lettered while the others go on. A commit then writes them in one
    # transaction. If SQLite refuses a row for a reason of its own (a value it cannot
    # bind, a string too big) the rows are written one by one to find it; any other error
    # (disk I/O, disk full, locked, corrupt) refuses the whole commit, to be retried.

    def _new_sid(self, key: _Key) -> int:
        """A series id for ``key``; the key is checked so it will bind."""
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
        self._series[key] = sid
        self._series_by_id[sid] = key
        self._new_series[key] = sid
        return sid

    def _encode(self, readings: Sequence[Reading]) -> tuple[str, list[tuple[_Key, int]] | None]:
        """One batch as its stored row ``[base_ms, sid, value, dt_ms, ...]``, and the series
        it uses that are not written yet (None if none)."""
        sid_of = self._series.get
        unwritten = self._new_series
        t0 = readings[0].ts
        base = round(t0 * 1000)
        flat: list[Any] = [base]
        new: list[tuple[_Key, int]] | None = None
        for r in readings:
            key = (r.device, r.metric, r.unit)
            sid = sid_of(key)
            if sid is None:
                sid = self._new_sid(key)
            if unwritten and key in unwritten:
                if new is None:
                    new = []
                new.append((key, sid))
            v: Any = r.value
            if isinstance(v, float) and not math.isfinite(v):
                v = {"f": str(v)}  # JSON has no NaN or infinity: tagged, unambiguous
            ts = r.ts
            flat.extend((sid, v, 0 if ts == t0 else round(ts * 1000) - base))
        return json.dumps(flat, separators=(",", ":")), new

    def _split(self, readings: Sequence[Reading],
               dead: list[tuple[_Dead, asyncio.Future[bool] | None]],
               fut: asyncio.Future[bool] | None,
               ) -> tuple[str, list[tuple[_Key, int]] | None, list[Reading]] | None:
        """A batch that failed to encode: dead-letter its bad readings, encode the rest."""
        good: list[Reading] = []
        for r in readings:
            try:
                self._encode((r,))
            except MemoryError:
                raise
            except Exception as one:  # noqa: BLE001 - this reading's own fault
                dead.append((_dead_letter(one, _devices((r,)), _excerpt((r,))), fut))
                continue
            good.append(r)
        if not good:
            return None
        try:
            blob, new = self._encode(good)
        except MemoryError:
            raise
        except Exception as whole:  # noqa: BLE001 - each encodes alone, not together
            dead.append((_dead_letter(whole, _devices(good), _excerpt(good)), fut))
            return None
        return blob, new, good

    def _write_rows(self, work: _Work) -> None:
        """Insert the commit's unwritten series and its telemetry rows."""
        db = self._db
        assert db is not None
        bad = self._bad_sids
        if bad and any(sid in bad for row in work.rows for _, sid in row.new or ()):
            self._write_rows_one_by_one(work)
            return
        db.execute("SAVEPOINT rows")
        try:
            if work.series:
                db.executemany(
                    "INSERT INTO series(id, device, metric, unit, crc) VALUES (?, ?, ?, ?, ?)",
                    [(sid, *key, series_crc(sid, *key)) for key, sid in work.series.items()])
            db.executemany("INSERT INTO telemetry(id, n, blob, crc) VALUES (?, ?, ?, ?)",
                           [(r.id, len(r.readings), r.blob, r.crc) for r in work.rows])
        except _ROW_SQL_ERRORS as exc:
            if not _row_refused(exc):
                raise
            db.execute("ROLLBACK TO rows")
            db.execute("RELEASE rows")
            self._write_rows_one_by_one(work)
            return
        db.execute("RELEASE rows")
        work.stored_series, work.written = work.series, work.rows

    def _write_rows_one_by_one(self, work: _Work) -> None:
        """SQLite refused a row of this commit: write each batch alone, set aside the bad."""
        db = self._db
        assert db is not None
        stored: dict[_Key, int] = {}
        failed: dict[int, Exception] = dict(self._bad_sids)
        written: list[_Row] = []

        def store_series(key: _Key, sid: int) -> None:
            db.execute("INSERT INTO series(id, device, metric, unit, crc) VALUES (?, ?, ?, ?, ?)",
                       (sid, *key, series_crc(sid, *key)))

        for row in work.rows:
            # the series this batch needs that are not written yet, and any known refused
            keys = [(k, sid) for k, sid in dict.fromkeys(row.new or ())
                    if sid in failed or (k not in stored and work.series.get(k) == sid)]
            bad = next((failed[sid] for _, sid in keys if sid in failed), None)
            if bad is not None:  # a series this batch needs could not be stored
                work.set_aside.append((_dead_letter(bad, _devices(row.readings),
                                                    _excerpt(row.readings)), row.fut))
                continue
            db.execute("SAVEPOINT one")
            current: tuple[_Key, int] | None = None
            try:
                for current in keys:
                    store_series(*current)
                current = None
                db.execute("INSERT INTO telemetry(id, n, blob, crc) VALUES (?, ?, ?, ?)",
                           (row.id, len(row.readings), row.blob, row.crc))
            except _ROW_SQL_ERRORS as exc:
                if not _row_refused(exc):
                    raise
                db.execute("ROLLBACK TO one")
                db.execute("RELEASE one")
                if current is not None:
                    failed[current[1]] = exc
                work.set_aside.append((_dead_letter(exc, _devices(row.readings),
                                                    _excerpt(row.readings)), row.fut))
                continue
            db.execute("RELEASE one")
            stored.update(keys)
            written.append(row)
        for key, sid in work.series.items():  # series no row of this commit needed
            if key in stored or sid in failed:
                continue
            db.execute("SAVEPOINT one")
            try:
                store_series(key, sid)
            except _ROW_SQL_ERRORS as exc:
                if not _row_refused(exc):
                    raise
                db.execute("ROLLBACK TO one")
                failed[sid] = exc
            else:
                stored[key] = sid
            db.execute("RELEASE one")
        self._bad_sids.update(failed)
        work.stored_series, work.written = stored, written
        if work.set_aside:
            self._write_dead_sync([d for d, _ in work.set_aside])

    def _write_events_sync(self, events: list[_Event],
                           dead: list[tuple[_Dead, asyncio.Future[bool] | None]]) -> int:
        """Insert the commit's events; one SQLite refuses is set aside, the others stay."""
        db = self._db
        assert db is not None
        db.execute("SAVEPOINT events")
        try:
            db.executemany("INSERT INTO events(id, kind, ts, body) VALUES (?, ?, ?, ?)",
                           [(e.id, e.kind, e.ts, e.body) for e in events])
            written = len(events)
        except _ROW_SQL_ERRORS as exc:
            if not _row_refused(exc):
                raise
            db.execute("ROLLBACK TO events")
            written = 0
            for e in events:
                try:
                    db.execute("INSERT INTO events(id, kind, ts, body) VALUES (?, ?, ?, ?)",
                               (e.id, e.kind, e.ts, e.body))
                except _ROW_SQL_ERRORS as one:
                    if not _row_refused(one):
                        raise
                    dead.append((_dead_letter(one, f"event {_text(e.kind, 100)}",
                                              _text(f"event({e.kind!r}, {e.body})",
                                                    _DEAD_EXCERPT)), e.fut))
                    continue
                written += 1
        db.execute("RELEASE events")
        return written

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

    def _commit_sync(self, work: _Work) -> None:
        db = self._db
        assert db is not None
        snapshot = (self._rows, self._readings, self._events, self._oldest, self._dead,
                    self._dead_deleted, dict(self._bad_sids))
        work.written, work.stored_series, work.set_aside = [], {}, []
        db.execute("BEGIN IMMEDIATE")
        try:
            deleted_any = self._delete_acked_sync(work.acks)
            # make room first, so that the rows about to be written fit in the bound
            # without growing the file past it
            incoming = sum(len(r.blob) + 16 for r in work.rows)
            dropped = self._enforce_bounds_sync(incoming)
            if work.rows or work.series:
                self._write_rows(work)
                written = work.written
                if written:
                    self._rows += len(written)
                    self._readings += sum(len(r.readings) for r in written)
                    oldest = min(r.readings[0].ts for r in written)
                    if self._oldest is None or oldest < self._oldest:
                        self._oldest = oldest
            event_dead: list[tuple[_Dead, asyncio.Future[bool] | None]] = []
            if work.events:
                self._events += self._write_events_sync(work.events, event_dead)
            dead = [d for d, _ in work.dead] + [d for d, _ in event_dead]
            if dead:
                self._write_dead_sync(dead)
            work.set_aside.extend(work.dead)
            work.set_aside.extend(event_dead)
            if work.reserve_ids:
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('ids_reserved', ?)",
                           (work.reserve_ids,))
            if work.state:
                db.executemany("DELETE FROM state WHERE key=?",
                               [(k,) for k, v in work.state.items() if v is None])
                db.executemany("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)",
                               [(k, v) for k, v in work.state.items() if v is not None])
            if deleted_any or dropped:
                # every telemetry id below this is gone: a raw salvage must not bring it back
                low = db.execute("SELECT min(id) FROM telemetry").fetchone()[0]
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('deleted_below', ?)",
                           (low if low is not None else self._handed + 1,))
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            (self._rows, self._readings, self._events, self._oldest, self._dead,
             self._dead_deleted, self._bad_sids) = snapshot
            raise
        # committed: nothing from here on may fail the commit
        try:
            if work.acks or dropped:
                self._refresh_oldest()
            else:
                self._refresh_size()
            if self._wal_bytes > self._wal_bound:
                # a commit bigger than the log's bound: checkpoint and cut the log back now
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._refresh_size()
        except sqlite3.Error as exc:  # e.g. no room to checkpoint: the next commit retries
            log.debug("outbox: after a commit: %s", exc)
            # a log that cannot be checkpointed only grows: stop taking readings now, while
            # the reserve still covers the checkpoint
            work.no_room = _is_disk_full(exc, self._free_bytes(), self._wal_bound)

    def _delete_acked_sync(self, acks: list[tuple[str, int, int]]) -> bool:
        """Delete the rows the cloud acknowledged; True if telemetry was deleted."""
        db = self._db
        assert db is not None
        deleted_any = False
        for table, first, last in acks:
            if table == "telemetry":
                n = db.execute("SELECT count(*), total(n) FROM telemetry WHERE id BETWEEN ? "
                               "AND ?", (first, last)).fetchone()
                if n[0]:
                    db.execute("DELETE FROM telemetry WHERE id BETWEEN ? AND ?", (first, last))
                    self._rows -= n[0]
                    self._readings -= int(n[1])
                    deleted_any = True
            else:
                cur = db.execute("DELETE FROM events WHERE id BETWEEN ? AND ?", (first, last))
                self._events -= cur.rowcount
        return deleted_any

    def _report_dead(self, dead: list[_Dead]) -> None:
        """Count committed dead letters by reason; log at most one line a minute."""
        for d in dead:
            self.m_dead.labels(d[4]).inc()
        now = time.monotonic()
        if now - self._dead_logged < _LOG_EVERY:
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
        self._wal_bytes = wal = self._wal_size()
        self._bytes = (pages - free) * self._page_size + wal
        self._disk_bytes = pages * self._page_size + wal

    def _refresh_oldest(self) -> None:
        assert self._db is not None
        row = self._db.execute("SELECT blob FROM telemetry ORDER BY id LIMIT 1").fetchone()
        self._oldest = json.loads(row[0])[0] / 1000 if row else None
        self._refresh_size()

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

    def _enforce_bounds_sync(self, incoming: int = 0) -> int:
        """Drop the oldest telemetry past ``max_age``, and past ``max_bytes`` once
        ``incoming`` more bytes are written; return the readings dropped."""
        dropped = 0
        # age: readings older than max_age (by their timestamp) are dropped, oldest first
        if self._oldest is not None and self._oldest < time.time() - self.config.max_age:
            cutoff = (time.time() - self.config.max_age) * 1000
            n = self._drop_oldest_sync("telemetry", _DROP_CHUNK, "age", cutoff)
            dropped += n
            if n:
                log.warning("outbox: dropped %d reading(s) older than %.0f s", n,
                            self.config.max_age)
        # bytes: the used pages and the write-ahead log's bound stay within max_bytes;
        # drop the oldest telemetry down to 90 % of it (hysteresis)
        self._refresh_size()
        limit = max(self._page_size * 8, self.config.max_bytes - self._wal_bound)
        used = self._bytes - self._wal_bytes + incoming
        if used > limit and self._rows + self._events:
            target = int(limit * 0.9)
            total_rows = self._rows + self._events
            per_row = max(1.0, used / max(1, total_rows))
            excess_rows = max(1, math.ceil((used - target) / per_row))
            table = "telemetry" if self._rows else "events"
            n = self._drop_oldest_sync(table, min(excess_rows, _DROP_CHUNK), "bytes")
            dropped += n
            if n:
                log.warning("outbox full (%d of %d bytes): dropped the %d oldest %s",
                            used, limit, n,
                            "reading(s)" if table == "telemetry" else "event(s)")
                self._refresh_size()
        return dropped

    def _wal_size(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

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

    def _tail(self, after: int, max_readings: int, out: list[TelemetryRow] | None = None,
              ) -> list[TelemetryRow]:
        """Batches in memory (not yet committed nor acknowledged) with id > ``after``."""
        out = [] if out is None else out
        total = sum(len(r.readings) for r in out)
        limit = self._ids_reserved
        for rows in (self._committing, self._pending):
            for row in rows.values():
                if row.id <= after or row.fut is None:
                    continue
                n = len(row.readings)
                if row.id >= limit or (out and total + n > max_readings):
                    return out
                out.append(TelemetryRow(row.id, row.readings))
                total += n
        return out

    def waiting(self, after_event: int, after_telemetry: int, max_readings: int) -> int:
        """What follows these cursors: -1 if a backlog, events or a full batch wait (send
        now), else the readings that arrived in memory since (0: nothing)."""
        if after_event < self._events_last or after_telemetry < self._committed_last:
            return -1
        total = 0
        for rows in (self._committing, self._pending):
            for row in rows.values():
                if row.id > after_telemetry and row.fut is not None:
                    total += len(row.readings)
                    if total >= max_readings:
                        return -1
        return total

    async def read_telemetry(self, after: int, max_readings: int) -> list[TelemetryRow]:
        """Oldest telemetry batches with id > ``after``, up to ~``max_readings``: the
        committed ones, then those still in memory."""
        empty: list[TelemetryRow] = []
        rows = await self._read(lambda: self._read_telemetry_sync(after, max_readings), empty)
        total = sum(len(r.readings) for r in rows)
        if total < max_readings:
            rows = self._tail(max(after, rows[-1].id if rows else 0), max_readings, rows)
        return rows

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

        Only a backlog needs a trip to the writer thread; batches that arrived since the
        last commit are taken from memory.
        """
        if after_event < self._events_last or after_telemetry < self._committed_last:
            def read() -> tuple[list[EventRow], list[TelemetryRow]]:
                events = self._read_events_sync(after_event, max_events)
                if events:
                    return events, []
                return [], self._read_telemetry_sync(after_telemetry, max_readings)

            nothing: tuple[list[EventRow], list[TelemetryRow]] = ([], [])
            events, rows = await self._read(read, nothing)
            if events or rows:
                return events, rows
        return [], self._tail(after_telemetry, max_readings)

    def stats(self) -> OutboxStats:
        return OutboxStats(
            epoch=self.epoch, depth=self._readings + self._tail_readings, rows=self._rows,
            events=self._events, bytes=self._disk_bytes, oldest_ts=self._oldest,
            dropped=self._dropped, dropped_events=self._dropped_events,
            last_id=self._next_id - 1,
            pending=self._pending_readings,
            dead_letters=self._dead, dead_letters_deleted=self._dead_deleted,
            disk_full=self._full,
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
        if self._timer is not None:
            self._timer.cancel()
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
