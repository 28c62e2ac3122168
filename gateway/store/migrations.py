"""Numbered schema migrations for the outbox, applied by ``PRAGMA user_version``.

Never edit a released migration: add the next one. Tests open files made at every
older version and check that they migrate with their rows intact.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 1: telemetry batches (series interned) and metadata
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
    CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        metric TEXT NOT NULL,
        unit TEXT
    );
    CREATE TABLE telemetry (
        id INTEGER PRIMARY KEY,   -- monotonic, never reused within an epoch
        n INTEGER NOT NULL,       -- readings in this batch
        blob TEXT NOT NULL        -- [base_ms, series_id, value, dt_ms, ...]
    );
    """,
    # 2: events (alerts, device status) that leave ahead of telemetry
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        ts REAL NOT NULL,
        body TEXT NOT NULL
    );
    """,
    # 3: readings that could not be stored, kept aside with the reason (bounded)
    """
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,          -- when it was set aside
        device TEXT NOT NULL,
        reason TEXT NOT NULL,
        reading TEXT NOT NULL      -- repr of the reading, at most 1 KB
    );
    """,
    # 4: a CRC-32 beside each telemetry and series row (gateway/store/checksum.py), so a
    # salvage from the raw file accepts only rows whose bytes are intact; NULL in rows
    # written before it
    """
    ALTER TABLE telemetry ADD COLUMN crc INTEGER;
    ALTER TABLE series ADD COLUMN crc INTEGER;
    """,
    # 5: small durable state committed with the readings it belongs to (the open windows
    # of aggregate filters): key → JSON text
    """
    CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    """,
]


def migrate(db: sqlite3.Connection, migrations: list[str]) -> int:
    """Bring ``db`` to ``len(migrations)``; return the version it was at."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise sqlite3.DatabaseError(
            f"outbox schema version {version} is newer than this gateway knows "
            f"({len(migrations)}); upgrade the gateway or move the file aside")
    for number in range(version + 1, len(migrations) + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[number - 1].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return version
