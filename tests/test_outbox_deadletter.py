"""The outbox isolates a bad row: good batches of the same group commit are stored, the
reading that cannot be encoded goes to a bounded dead-letter table with its reason."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from gateway.reading import Reading
from gateway.store.config import StoreConfig
from gateway.store.migrations import MIGRATIONS, migrate
from gateway.store.outbox import Outbox
from tests.test_outbox import until_accepting


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


def deep(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


async def test_values_json_or_sqlite_cannot_take_are_dead_lettered_with_their_reason(
        tmp_path: Path) -> None:
    metrics = CollectorRegistry()
    box = await Outbox.open(tmp_path / "o.db", cfg(), metrics)
    try:
        now = time.time()
        # what json, round() or SQLite cannot take; the core's checks are bypassed on purpose
        poison: list[list[Any]] = [
            [Reading("mqtt:obj", "x", object(), None, now)],  # not JSON
            [Reading("mqtt:deep", "x", deep(100_000), None, now)],  # nested too deep
            [Reading("mqtt:huge", "x", 10**5000, None, now)],  # too many digits for JSON
            [Reading("mqtt:\udc80", "x", 1, None, now)],  # cannot be stored as text
            [Reading("mqtt:long", "m" * 10_000, 1, None, now)],  # a name far too long
        ]
        before = box.m_commits._value.get()
        results = await asyncio.gather(
            box.append(good("coap:a", 1)), *(box.append(p) for p in poison),
            box.append(good("coap:b", 2)))
        assert box.m_commits._value.get() - before == 1  # all of them in one group commit
        assert results == [True] * (len(poison) + 2)
        assert [(r.device, r.value) for r in await stored(box)] == [("coap:a", 1), ("coap:b", 2)]
        letters = {d.device: d for d in await box.dead_letters(100)}
        assert set(letters) == {"mqtt:obj", "mqtt:deep", "mqtt:huge", "mqtt:\\udc80",
                                "mqtt:long"}
        assert letters["mqtt:obj"].reason.startswith("TypeError: Object of type object")
        assert letters["mqtt:deep"].reason.startswith("RecursionError")
        assert letters["mqtt:huge"].reason.startswith("ValueError")
        assert letters["mqtt:\\udc80"].reason.startswith("UnicodeEncodeError")
        assert letters["mqtt:long"].reason.startswith("ValueError: a name of 10000 characters")
        for d in letters.values():
            assert len(d.reading) <= 1024 and d.reading.startswith("Reading(device=")
        assert metrics.get_sample_value("gateway_outbox_dead_letters_total",
                                        {"reason": "ValueError"}) == 2
        assert metrics.get_sample_value("gateway_outbox_dead_letter_rows") == 5
        assert metrics.get_sample_value("gateway_outbox_errors_total") == 0
    finally:
        await box.close()


async def test_only_the_bad_readings_of_a_batch_are_set_aside(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg())
    try:
        now = time.time()
        batch = [Reading("mqtt:m", "t0", 1e308, None, 1e308), Reading("mqtt:m", "a", 1, None, now),
                 Reading("mqtt:m", "b", "x" * 50_000, None, math.inf),
                 Reading("mqtt:m", "c", 3, None, now)]
        assert await box.append(batch)
        assert [(r.metric, r.value) for r in await stored(box)] == [("a", 1), ("c", 3)]
        letters = await box.dead_letters(10)
        assert [d.reading.split(",")[1] for d in letters] == [" metric='b'", " metric='t0'"]
        assert all(len(d.reading) <= 1024 for d in letters)  # a long value is cut short
    finally:
        await box.close()


async def test_a_row_sqlite_refuses_is_found_by_writing_the_commit_one_by_one(
        tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg())
    try:
        assert await box.append(good("coap:a", 0))
        # SQLite's length limit refuses a text that encodes fine: too big for the file
        box._db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 3000)  # type: ignore[union-attr]
        now = time.time()
        too_big = [Reading("mqtt:big", "note", "x" * 4000, None, now)]
        long_device = "mqtt:" + "d" * 3100  # its series row is too big, not its telemetry
        results = await asyncio.gather(
            box.append(good("coap:a", 1)), box.append(too_big), box.append(good("coap:new", 2)),
            box.append([Reading(long_device, "x", 1, None, now)]),
            box.append([Reading(long_device, "y", 2, None, now)]),
            box.append(good("coap:a", 3)))
        assert results == [True] * 6
        assert [(r.device, r.value) for r in await stored(box)] == [
            ("coap:a", 0), ("coap:a", 1), ("coap:new", 2), ("coap:a", 3)]
        letters = await box.dead_letters(10)
        assert [d.reason for d in letters] == ["DataError: string or blob too big"] * 3
        assert [d.device[:8] for d in letters] == ["mqtt:ddd", "mqtt:ddd", "mqtt:big"]
        ids = [row.id for row in await box.read_telemetry(0, 100)]
        assert ids == sorted(set(ids)) and len(ids) == 4  # ids are handed out on arrival
        assert await box.append(good("coap:new", 4))
    finally:
        await box.close()
    box = await Outbox.open(tmp_path / "o.db", cfg())  # the new series were stored right
    try:
        assert [(r.device, r.value) for r in await stored(box)][-2:] == [
            ("coap:a", 3), ("coap:new", 4)]
        assert box.stats().dead_letters == 3
    finally:
        await box.close()


async def test_an_event_that_cannot_be_encoded_is_dead_lettered_and_the_rest_commits(
        tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg())
    try:
        body: dict[str, Any] = {"rule": "loop", "device": "mqtt:r"}
        body["self"] = body  # JSON cannot encode a cycle
        results = await asyncio.gather(
            box.append(good("coap:a", 1)), box.append_event("alert", body),
            box.append_event("alert", {"rule": "fine"}))
        assert results == [True, True, True]
        assert [e.body["rule"] for e in await box.read_events(0, 10)] == ["fine"]
        (letter,) = await box.dead_letters(10)
        assert letter.device == "mqtt:r" and letter.reason.startswith("ValueError: Circular")
        assert letter.reading.startswith("event('alert', {")
        assert [r.value for r in await stored(box)] == [1]
    finally:
        await box.close()


async def test_more_poison_in_one_commit_than_the_bound_keeps_the_newest_and_counts_the_rest(
        tmp_path: Path) -> None:
    metrics = CollectorRegistry()
    box = await Outbox.open(tmp_path / "o.db", cfg(dead_letter_max=5), metrics)
    try:
        results = await asyncio.gather(
            *(box.append([Reading(f"mqtt:p{i}", "x", 1, None, math.inf)]) for i in range(20)),
            box.append(good("coap:a", 1)))
        assert all(results)
        st = box.stats()
        assert (st.dead_letters, st.dead_letters_deleted) == (5, 15)
        assert [d.device for d in await box.dead_letters(100)] == [
            f"mqtt:p{i}" for i in range(19, 14, -1)]
        assert metrics.get_sample_value("gateway_outbox_dead_letters_total",
                                        {"reason": "OverflowError"}) == 20
        assert metrics.get_sample_value("gateway_outbox_dead_letter_rows") == 5
    finally:
        await box.close()
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 5
    db.close()
    box = await Outbox.open(tmp_path / "o.db", cfg(dead_letter_max=5))
    try:
        assert box.stats().dead_letters_deleted == 15  # kept in the file
    finally:
        await box.close()


def test_dead_letter_max_is_validated() -> None:
    assert StoreConfig().dead_letter_max == 1000
    for bad in (0, -1, 10**7):
        with pytest.raises(ValidationError):
            StoreConfig.model_validate({"dead_letter_max": bad})


async def test_a_full_disk_refuses_poison_and_good_alike_and_both_go_through_after(
        tmp_path: Path) -> None:
    metrics = CollectorRegistry()
    box = await Outbox.open(tmp_path / "o.db", cfg(max_bytes=10**9), metrics)
    try:
        assert await box.append(good("coap:a", 0))
        # SQLite's page limit stands in for a full disk: the same SQLITE_FULL error
        pages = box._db.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[union-attr]
        box._db.execute(f"PRAGMA max_page_count={pages}")  # type: ignore[union-attr]
        now = time.time()
        big = [Reading("coap:b", f"m{i}", "x" * 200, None, now) for i in range(200)]
        poison = [Reading("mqtt:d", "x", 1, None, math.inf)]
        assert await asyncio.gather(box.append(big), box.append(poison)) == [False, False]
        assert box.stats().dead_letters == 0 and box.stats().depth == 1
        assert metrics.get_sample_value("gateway_outbox_errors_total") == 1
        assert metrics.get_sample_value("gateway_outbox_dead_letters_total",
                                        {"reason": "OverflowError"}) is None
        box._db.execute("PRAGMA max_page_count=1073741823")  # type: ignore[union-attr]
        await until_accepting(box)
        assert await asyncio.gather(box.append(big), box.append(poison)) == [True, True]
        assert box.stats().depth == 201 and box.stats().dead_letters == 1
    finally:
        await box.close()


async def test_a_read_only_store_refuses_rather_than_dead_letters(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg())
    try:
        box._db.execute("PRAGMA query_only=1")  # type: ignore[union-attr]
        poison = [Reading("mqtt:d", "x", 1, None, math.inf)]
        assert await asyncio.gather(box.append(good("coap:a", 1)), box.append(poison)) == [
            False, False]
        assert box.stats().dead_letters == 0
        box._db.execute("PRAGMA query_only=0")  # type: ignore[union-attr]
        assert await box.append(poison)
        assert box.stats().dead_letters == 1
    finally:
        await box.close()


async def test_dead_letters_are_logged_at_most_once_a_minute_with_a_suppressed_count(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.outbox")
    box = await Outbox.open(tmp_path / "o.db", cfg())
    try:
        for i in range(4):
            assert await box.append([Reading(f"mqtt:p{i}", "x", 1, None, math.inf)])
        lines = [r.getMessage() for r in caplog.records if "dead_letters" in r.getMessage()]
        assert len(lines) == 1 and "mqtt:p0" in lines[0] and "OverflowError" in lines[0]
        box._dead_logged -= 61  # a minute later
        assert await box.append([Reading("mqtt:p4", "x", 1, None, math.inf)])
        lines = [r.getMessage() for r in caplog.records if "dead_letters" in r.getMessage()]
        assert len(lines) == 2 and "mqtt:p4" in lines[1] and "(3 more" in lines[1]
    finally:
        await box.close()


async def test_an_event_sqlite_refuses_is_set_aside_and_the_others_commit(
        tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg())
    try:
        box._db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 3000)  # type: ignore[union-attr]
        results = await asyncio.gather(
            box.append_event("alert", {"rule": "a"}),
            box.append_event("alert", {"rule": "big", "message": "m" * 4000}),
            box.append_event("alert", {"rule": "b"}), box.append(good("coap:a", 1)))
        assert results == [True] * 4
        events = await box.read_events(0, 10)
        assert [e.body["rule"] for e in events] == ["a", "b"]
        assert events[1].id > events[0].id  # ids are handed out on arrival
        (letter,) = await box.dead_letters(10)
        assert letter.reason == "DataError: string or blob too big"
        assert letter.reading.startswith("event('alert', {\"rule\":\"big\"")
        assert [r.value for r in await stored(box)] == [1]
    finally:
        await box.close()
