"""The history file: batched writes, raw and bucketed answers, roll-ups, pruning, restart,
a corrupt file set aside. The store is driven with explicit times (no waiting)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.history.config import HistoryConfig
from gateway.history.query import Query
from gateway.history.store import HistoryStore, Metrics
from gateway.reading import Reading

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, an hour and a day boundary


def make(tmp_path: Path, **cfg: Any) -> HistoryStore:
    store = HistoryStore(HistoryConfig(**cfg), tmp_path / "history.db",
                         Metrics(CollectorRegistry()))
    store.open_sync()
    return store


def readings(device: str, metric: str, start: float, n: int, every: float,
             value: Any = None) -> list[Reading]:
    return [Reading(device, metric, float(i) if value is None else value, "Cel",
                    start + i * every) for i in range(n)]


def feed(store: HistoryStore, batch: list[Reading], now: float) -> None:
    store.observe(batch)
    store.flush_sync(store.take(), now=now)


def test_observing_writes_nothing_and_a_flush_is_one_transaction(tmp_path: Path) -> None:
    store = make(tmp_path)
    assert store._wdb is not None
    statements: list[str] = []
    store._wdb.set_trace_callback(statements.append)
    store.observe(readings("sim:a", "t", T0, 30, 1.0))
    store.observe(readings("sim:b", "t", T0, 30, 1.0))
    assert statements == []  # the observer only appends to a list
    store.flush_sync(store.take(), now=T0 + 60)
    assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT")] == [
        "BEGIN IMMEDIATE", "COMMIT"]
    assert store.flush_count == 1
    assert store.status_sync()["flushes"] == 1


def test_raw_readings_and_minute_buckets_answer_the_same_values(tmp_path: Path) -> None:
    store = make(tmp_path)
    feed(store, readings("sim:a", "t", T0, 120, 1.0), now=T0 + 120)  # 0..119, one a second
    raw = store.query_sync("sim:a", "t", Query(T0, T0 + 120, None))
    assert [p[1] for p in raw["metrics"]["t"]["points"]] == [float(i) for i in range(120)]
    assert raw["metrics"]["t"]["unit"] == "Cel"
    buckets = store.query_sync("sim:a", "t", Query(T0, T0 + 119, 60))["metrics"]["t"]
    assert buckets["buckets"] == [[T0, 0.0, 29.5, 59.0, 60], [T0 + 60, 60.0, 89.5, 119.0, 60]]
    # two hours later the hour is rolled up into a chunk: the same buckets come from it
    feed(store, readings("sim:a", "t", T0 + 7200, 1, 1.0), now=T0 + 7300)
    assert store._wdb is not None
    chunks = store._wdb.execute("SELECT count(*) FROM chunks WHERE step = 60").fetchone()[0]
    assert chunks == 1
    again = store.query_sync("sim:a", "t", Query(T0, T0 + 119, 60))["metrics"]["t"]
    assert again["buckets"] == buckets["buckets"]
    five = store.query_sync("sim:a", "t", Query(T0, T0 + 119, 300))["metrics"]["t"]
    assert five["buckets"] == [[T0, 0.0, 59.5, 119.0, 120]]


def test_above_raw_max_rate_only_buckets_are_kept(tmp_path: Path) -> None:
    store = make(tmp_path, raw_max_rate=1)
    feed(store, readings("sim:a", "t", T0, 600, 0.1), now=T0 + 60)  # 10 values/s
    assert store.query_sync("sim:a", "t", Query(T0, T0 + 60, None))["metrics"]["t"][
        "points"] == []
    got = store.query_sync("sim:a", "t", Query(T0, T0 + 59, 60))["metrics"]["t"]["buckets"]
    assert got == [[T0, 0.0, 299.5, 599.0, 600]]


def test_text_is_skipped_and_bools_are_zero_or_one(tmp_path: Path) -> None:
    store = make(tmp_path)
    feed(store, [Reading("sim:a", "state", "on", None, T0),
                 Reading("sim:a", "on", True, None, T0), Reading("sim:a", "on", False, None,
                                                                 T0 + 1)], now=T0 + 60)
    answer = store.query_sync("sim:a", None, Query(T0, T0 + 60, None))
    assert list(answer["metrics"]) == ["on"]
    assert answer["metrics"]["on"]["points"] == [[T0, 1.0], [T0 + 1, 0.0]]
    assert store.skipped == {"text": 1}


def test_a_day_rolls_up_into_quarter_hours_and_old_data_is_pruned_by_age(
        tmp_path: Path) -> None:
    store = make(tmp_path, fine_span="1d", max_age="1d")
    for h in range(24):
        feed(store, readings("sim:a", "t", T0 + h * 3600, 60, 60.0, value=float(h)),
             now=T0 + h * 3600 + 3599)
    feed(store, readings("sim:a", "t", T0 + 86400 + 7200, 1, 1.0), now=T0 + 86400 + 7300)
    day = store.query_sync("sim:a", "t", Query(T0, T0 + 86399, 3600))["metrics"]["t"]
    assert [b[2] for b in day["buckets"]] == [float(h) for h in range(24)]
    assert all(b[4] == 60 for b in day["buckets"])
    assert store.pruned.get("raw:age", 0) > 0  # raw rows past their span, after the roll-up
    # past fine_span the 1-minute chunks go, the quarter hours answer; past max_age all go
    feed(store, readings("sim:a", "t", T0 + 86400 + 5 * 3600, 1, 1.0),
         now=T0 + 86400 + 5 * 3600 + 10)
    coarse = store.query_sync("sim:a", "t", Query(T0 + 3 * 3600, T0 + 86399, 3600))
    assert coarse["metrics"]["t"]["resolution"] == "15m"
    assert [b[2] for b in coarse["metrics"]["t"]["buckets"]] == [float(h) for h in
                                                                 range(3, 24)]
    assert store.pruned.get("1m:age", 0) >= 60
    feed(store, readings("sim:a", "t", T0 + 3 * 86400, 1, 1.0), now=T0 + 3 * 86400 + 10)
    gone = store.query_sync("sim:a", "t", Query(T0, T0 + 86399, 3600))["metrics"]["t"]
    assert gone["buckets"] == []
    assert store.pruned.get("15m:age", 0) == 96
    status = store.status_sync()
    assert status["pruned"] == store.pruned


def test_beyond_max_bytes_the_oldest_goes_first_counted(tmp_path: Path) -> None:
    store = make(tmp_path, max_bytes="1MiB", raw_span="7d")
    for i in range(40):  # 40 flushes of 2,000 readings: about 1.3 MB of raw pairs
        batch = [Reading(f"sim:d{j}", "t", float(i), None, T0 + i * 60 + j * 0.01)
                 for j in range(2000)]
        feed(store, batch, now=T0 + i * 60 + 59)
    status = store.status_sync()
    assert status["bytes"] <= 1024**2
    assert store.pruned.get("raw:size", 0) > 0
    # the newest flush is still there
    newest = store.query_sync("sim:d0", "t", Query(T0 + 39 * 60, T0 + 40 * 60, None))
    assert newest["metrics"]["t"]["points"] == [[T0 + 39 * 60, 39.0]]


def test_history_survives_a_restart(tmp_path: Path) -> None:
    store = make(tmp_path)
    feed(store, readings("sim:a", "t", T0, 10, 1.0), now=T0 + 60)
    store.close_sync()
    again = make(tmp_path)
    points = again.query_sync("sim:a", "t", Query(T0, T0 + 60, None))["metrics"]["t"]["points"]
    assert len(points) == 10
    feed(again, readings("sim:a", "t", T0 + 60, 10, 1.0), now=T0 + 120)
    assert len(again.query_sync("sim:a", "t", Query(T0, T0 + 120, None))["metrics"]["t"][
        "points"]) == 20


def test_a_corrupt_file_is_set_aside_and_history_starts_empty(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "history.db").write_bytes(b"this is not a database" * 500)
    with caplog.at_level(logging.WARNING):
        store = make(tmp_path)
    assert store.set_aside_as is not None and store.set_aside_as.exists()
    assert store.set_aside_as.read_bytes().startswith(b"this is not a database")
    assert [r for r in caplog.records if r.levelno == logging.ERROR
            and "cannot be read" in r.getMessage()].__len__() == 1
    feed(store, readings("sim:a", "t", T0, 3, 1.0), now=T0 + 60)
    assert store.status_sync()["series"] == 1
    sqlite3.connect(tmp_path / "history.db").execute("PRAGMA integrity_check").fetchone()


def test_more_than_max_pending_is_dropped_and_counted(tmp_path: Path) -> None:
    store = make(tmp_path, max_pending=1000)
    store.observe(readings("sim:a", "t", T0, 1000, 0.01))
    store.observe(readings("sim:a", "t", T0 + 10, 5, 0.01))
    assert len(store.take()) == 1000
    assert store.skipped == {"overflow": 5}
