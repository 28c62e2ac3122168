"""The outbox isolates a bad row: good batches of the same group commit are stored, the
reading that cannot be encoded goes to a bounded dead-letter table with its reason."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.reading import Reading
from gateway.store.config import StoreConfig
from gateway.store.migrations import MIGRATIONS, migrate
from gateway.store.outbox import Outbox


def cfg(**kw: object) -> StoreConfig:
    return StoreConfig.model_validate({"commit_interval": 0.05, **kw})


def good(device: str, seq: int) -> list[Reading]:
    return [Reading(device, "seq", seq, None, time.time())]


async def stored(box: Outbox) -> list[Reading]:
    return [r for row in await box.read_telemetry(0, 10**9) for r in row.readings]


async def test_poison_readings_are_dead_lettered_and_other_devices_commit_in_the_same_commit(
        tmp_path: Path) -> None:
    metrics = CollectorRegistry()
    box = await Outbox.open(tmp_path / "o.db", cfg(), metrics)
    try:
        now = time.time()
        # bypassing the core's Reading checks on purpose: the outbox must hold on its own
        poison_inf = [Reading("mqtt:d", "x", 1, None, math.inf)]
        poison_nan = [Reading("mqtt:e", "x", 1, None, math.nan)]
        mixed = [Reading("mqtt:f", "ok", 1, None, now), Reading("mqtt:f", "bad", 2, None, 1e308),
                 Reading("mqtt:g", "ok", 3, None, now)]
        results = await asyncio.gather(
            box.append(good("coap:a", 1)), box.append(poison_inf), box.append(good("coap:b", 2)),
            box.append(poison_nan), box.append(mixed))
        assert results == [True] * 5  # nobody retries what can never be stored
        got = await stored(box)
        assert [(r.device, r.value) for r in got] == [
            ("coap:a", 1), ("coap:b", 2), ("mqtt:f", 1), ("mqtt:g", 3)]
        assert box.stats().dead_letters == 3
        letters = await box.dead_letters(10)
        assert [d.device for d in letters] == ["mqtt:f", "mqtt:e", "mqtt:d"]
        assert all("OverflowError" in d.reason or "ValueError" in d.reason for d in letters)
        assert "1e+308" in letters[0].reading
        assert metrics.get_sample_value("gateway_outbox_dead_letters_total",
                                        {"reason": "OverflowError"}) == 2
        assert metrics.get_sample_value("gateway_outbox_errors_total") == 0
    finally:
        await box.close()
    # durable: still there after reopening
    box = await Outbox.open(tmp_path / "o.db", cfg())
    try:
        assert box.stats().dead_letters == 3
    finally:
        await box.close()


async def test_dead_letters_are_bounded_oldest_first(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg(dead_letter_max=5))
    try:
        for i in range(12):
            assert await box.append([Reading(f"mqtt:p{i}", "x", 1, None, math.inf)])
        assert await box.append(good("coap:a", 1))
        assert box.stats().dead_letters == 5
        assert [d.device for d in await box.dead_letters(100)] == [
            f"mqtt:p{i}" for i in range(11, 6, -1)]
        assert [r.device for r in await stored(box)] == ["coap:a"]
    finally:
        await box.close()


async def test_a_store_error_still_refuses_rather_than_dead_letters(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg())
    try:
        assert await box.append(good("coap:a", 1))
        # another connection holds the write lock: a store problem, not a row problem
        other = sqlite3.connect(tmp_path / "o.db", timeout=0, isolation_level=None)
        box._db.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]
        other.execute("BEGIN IMMEDIATE")
        try:
            assert await box.append(good("coap:b", 2)) is False
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert box.stats().dead_letters == 0
        assert await box.append(good("coap:b", 2))
        assert [r.value for r in await stored(box)] == [1, 2]
    finally:
        await box.close()


async def test_a_version_2_file_migrates_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, MIGRATIONS[:2])
    db.execute("INSERT INTO series(id, device, metric, unit) VALUES (1, 'mqtt:a', 'seq', NULL)")
    db.execute("INSERT INTO telemetry(id, n, blob) VALUES (1, 1, ?)",
               (f"[{round(time.time() * 1000)},1,7,0]",))
    db.close()
    box = await Outbox.open(path, cfg())
    try:
        assert [r.value for r in await stored(box)] == [7]
        assert box.stats().dead_letters == 0
        assert await box.append([Reading("mqtt:a", "x", 1, None, math.inf)])
        assert box.stats().dead_letters == 1
    finally:
        await box.close()
