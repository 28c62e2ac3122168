"""The outbox against its contract: durable, ordered, bounded, versioned, self-healing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.reading import Reading
from gateway.store.config import StoreConfig
from gateway.store.migrations import MIGRATIONS, migrate
from gateway.store.outbox import Outbox
from tests.waiting import eventually


def cfg(**kw: object) -> StoreConfig:
    return StoreConfig.model_validate({"commit_interval": 0.005, **kw})


def batch(device: str, seq: int, ts: float | None = None) -> list[Reading]:
    ts = time.time() if ts is None else ts
    return [Reading(device, "seq", seq, None, ts),
            Reading(device, "temperature", 20.0 + seq / 100, "Cel", ts),
            Reading(device, "door_open", seq % 2 == 0, None, ts)]


async def until_accepting(box: Outbox, within: float = 10.0) -> None:
    """Wait until the outbox takes readings again after a full disk."""
    await eventually(lambda: not box.stats().disk_full, within, "the outbox resuming")


async def all_readings(box: Outbox) -> list[Reading]:
    out: list[Reading] = []
    for row in await box.read_telemetry(0, 10**9):
        out.extend(row.readings)
    return out


async def test_appended_readings_come_back_in_order_with_types_and_units(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg())
    t0 = int(time.time()) - 100 + 0.125
    for i in range(20):
        assert await box.append(batch("mqtt:a", i, t0 + i))
    got = await all_readings(box)
    assert [r.value for r in got if r.metric == "seq"] == list(range(20))
    assert got[0] == Reading("mqtt:a", "seq", 0, None, t0)
    assert got[1] == Reading("mqtt:a", "temperature", 20.0, "Cel", t0)
    assert got[2].value is True and got[5].value is False
    assert box.stats().depth == 60
    await box.close()


async def test_acknowledged_rows_leave_and_ids_are_never_reused(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg())
    for i in range(5):
        await box.append(batch("mqtt:a", i))
    rows = await box.read_telemetry(0, 10**9)
    box.ack("telemetry", rows[0].id, rows[-1].id)
    await box.flush()
    assert box.stats().depth == 0
    last = rows[-1].id
    epoch = box.epoch
    await box.close()
    # reopen the emptied file: ids continue, the epoch stays
    box = await Outbox.open(tmp_path / "o.db", cfg())
    await box.append(batch("mqtt:a", 9))
    new = await box.read_telemetry(0, 10)
    assert new[0].id > last
    assert box.epoch == epoch
    await box.close()


async def test_events_are_kept_apart_and_read_first(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg())
    await box.append(batch("mqtt:a", 1))
    assert await box.append_event("alert", {"rule": "too_hot", "severity": "critical"})
    events = await box.read_events(0, 10)
    assert [(e.kind, e.body["rule"]) for e in events] == [("alert", "too_hot")]
    assert box.stats().events == 1
    await box.close()


async def test_appends_beyond_max_pending_are_refused_not_dropped(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg(max_pending=5))
    assert await box.append(batch("mqtt:a", 1))  # 3 readings
    assert not await box.append(batch("mqtt:a", 2) + batch("mqtt:a", 3))  # 6 > 5
    assert box.stats().depth == 3
    await box.close()


async def test_a_failing_store_refuses_and_recovers(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg(max_bytes=10**9))
    assert await box.append(batch("mqtt:a", 0))
    # SQLite's own page limit stands in for a full disk: the same SQLITE_FULL error
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[union-attr]
    box._db.execute(f"PRAGMA max_page_count={pages}")  # type: ignore[union-attr]
    big = [Reading("mqtt:a", f"m{i}", "x" * 200, None, time.time()) for i in range(200)]
    assert not await box.append(big)
    assert box.m_errors._value.get() >= 1
    box._db.execute("PRAGMA max_page_count=1073741823")  # type: ignore[union-attr]
    # a full disk refuses new readings at once until the writer finds room again
    assert box.stats().disk_full
    await until_accepting(box)
    assert await box.append(big)
    assert box.stats().depth == 3 + 200
    await box.close()


async def test_at_the_byte_bound_the_oldest_are_dropped_and_counted_exactly(
        tmp_path: Path) -> None:
    reg = CollectorRegistry()
    box = await Outbox.open(tmp_path / "o.db", cfg(max_bytes=96 * 1024), metrics=reg)
    total = 0
    for chunk in range(30):
        oks = await asyncio.gather(*(box.append(batch(f"mqtt:d{i % 7}", i))
                                     for i in range(chunk * 100, chunk * 100 + 100)))
        assert all(oks)
        total += 300
    st = box.stats()
    assert st.dropped > 0
    assert st.bytes <= 96 * 1024
    left = await all_readings(box)
    assert len(left) + st.dropped == total  # every reading is either here or counted
    seqs = [r.value for r in left if r.metric == "seq"]
    assert seqs == sorted(seqs) and seqs[-1] == 2999  # the newest stayed, the oldest left
    assert reg.get_sample_value("gateway_outbox_dropped_total",
                                {"kind": "telemetry", "reason": "bytes"}) == st.dropped
    await box.close()
    box = await Outbox.open(tmp_path / "o.db", cfg(max_bytes=96 * 1024))
    assert box.stats().dropped == st.dropped  # the count survives a restart
    await box.close()


async def test_readings_older_than_max_age_are_dropped_and_counted(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg(max_age=3600))
    old = time.time() - 7200
    for i in range(10):
        await box.append(batch("mqtt:a", i, old + i))
    for i in range(10, 15):
        await box.append(batch("mqtt:a", i))
    left = await all_readings(box)
    assert sorted({r.value for r in left if r.metric == "seq"}) == list(range(10, 15))
    assert box.stats().dropped == 30
    await box.close()


async def test_a_version_1_file_migrates_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, MIGRATIONS[:1])
    db.execute("INSERT INTO meta VALUES ('epoch', 'cafe0001')")
    db.execute("INSERT INTO series(id, device, metric, unit) VALUES (1, 'mqtt:a', 't', 'Cel')")
    t0 = int(time.time()) * 1000
    db.execute("INSERT INTO telemetry VALUES (7, 1, ?)", (json.dumps([t0, 1, 21.5, 0]),))
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()
    box = await Outbox.open(path, cfg())
    assert await all_readings(box) == [Reading("mqtt:a", "t", 21.5, "Cel", t0 / 1000)]
    assert box.epoch == "cafe0001"
    await box.append(batch("mqtt:a", 1))
    assert (await box.read_telemetry(7, 10))[0].id > 7
    await box.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    db.close()


async def test_a_garbage_file_is_quarantined_and_a_fresh_outbox_raises_an_alert(
        tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(os.urandom(64 * 1024))
    box = await Outbox.open(path, cfg())
    assert await box.append(batch("mqtt:a", 1))
    await box.flush()
    events = await box.read_events(0, 10)
    assert events and events[0].kind == "alert" and events[0].body["rule"] == "outbox_corrupt"
    aside = list(tmp_path.glob("o.db.corrupt-*"))  # noqa: ASYNC240 - a test's own tmp dir
    assert len(aside) == 1 and aside[0].stat().st_size == 64 * 1024
    await box.close()


async def test_a_damaged_file_is_salvaged_into_the_fresh_one(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = await Outbox.open(path, cfg())
    await asyncio.gather(*(box.append([Reading("mqtt:a", "seq", i, None, time.time()),
                                       Reading("mqtt:a", "note", "n" * 300, None, time.time())])
                           for i in range(400)))
    await box.close()
    # break the b-tree page holding reading 300: rows before it stay readable
    data = bytearray(path.read_bytes())
    page = 4096
    at = data.index(b',1,300,0,2,"')
    start = at // page * page
    data[start:start + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    box = await Outbox.open(path, cfg())
    seqs = [r.value for r in await all_readings(box) if r.metric == "seq"]
    assert 0 < len(seqs) < 400
    assert seqs == sorted(seqs)
    events = await box.read_events(0, 10)
    assert "salvaged" in events[0].body["message"]
    await box.close()


WRITER = textwrap.dedent("""
    import asyncio, sys, time
    from gateway.reading import Reading
    from gateway.store.config import StoreConfig
    from gateway.store.outbox import Outbox

    async def main():
        box = await Outbox.open(sys.argv[1], StoreConfig(commit_interval=0.01))
        i = 0
        while True:
            ok = await box.append([Reading("mqtt:k", "seq", i, None, time.time())])
            if ok:
                print(i, flush=True)  # printed only once durable
            i += 1

    asyncio.run(main())
""")


def test_every_accepted_reading_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    accepted: list[int] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while len(accepted) < 300 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        accepted.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert len(accepted) >= 300
    db = sqlite3.connect(path)
    seqs = set()
    for (blob,) in db.execute("SELECT blob FROM telemetry"):
        flat = json.loads(blob)
        seqs.update(flat[2::3])
    db.close()
    assert set(accepted) <= seqs


@pytest.mark.parametrize("sync", ["full", "normal"])
async def test_group_commit_puts_concurrent_appends_in_few_transactions(
        tmp_path: Path, sync: str) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg(commit_interval=0.05, synchronous=sync))
    before = box.m_commits._value.get()
    results = await asyncio.gather(*(box.append(batch(f"mqtt:d{i}", i)) for i in range(500)))
    assert all(results)
    assert box.m_commits._value.get() - before <= 3
    await box.close()


async def test_non_finite_floats_and_look_alike_strings_keep_their_types(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", cfg())
    now = time.time()
    await box.append([Reading("a:1", "x", float("inf"), None, now),
                      Reading("a:1", "label", "nan", None, now)])
    got = await all_readings(box)
    assert got[0].value == float("inf") and got[1].value == "nan"
    await box.close()


async def test_batches_the_cloud_acknowledges_in_time_are_never_written(tmp_path: Path) -> None:
    """A steady stream the cloud acknowledges within milliseconds, with an event (and its
    delete) in the middle: no batch is committed, so the commits are the event's two."""
    box = await Outbox.open(tmp_path / "o.db", cfg(commit_interval=0.05))
    before = box.m_commits._value.get()
    try:
        sent = sent_event = 0
        futs = []
        for i in range(400):
            # the uplink's view: send what waits, and the cloud acknowledges it a loop turn
            # later, so the newest batch always waits in memory, as at a steady rate
            while True:
                events, rows = await box.read_next(sent_event, sent, 10_000)
                if not events and not rows:
                    break
                for e in events:
                    box.ack("events", e.id, e.id)
                    sent_event = e.id
                if rows:
                    box.ack("telemetry", rows[0].id, rows[-1].id)
                    sent = rows[-1].id
            fut = box.submit(batch("mqtt:a", i))
            assert fut is not None
            futs.append(fut)
            if i == 50:
                event = box.append_event("status", {"device": "mqtt:a", "online": True})
            await asyncio.sleep(0.002)
        _, rows = await box.read_next(sent_event, sent, 10_000)
        box.ack("telemetry", rows[0].id, rows[-1].id)
        assert all(await asyncio.gather(*futs))  # durable: acknowledged by the cloud
        assert await event
        assert sent_event  # the event went out and was acknowledged
        assert await box.flush()
        assert box.stats().rows == 0
        # the event and its delete (and the flush); a commit taking young batches would
        # have started a cycle of one batch written and deleted per commit_interval
        assert box.m_commits._value.get() - before <= 4
        assert box.m_unwritten._value.get() == 400 * 3
    finally:
        await box.close()


async def test_a_steady_stream_with_no_cloud_shares_one_commit_per_interval(
        tmp_path: Path) -> None:
    """Nothing acknowledges: every batch is committed, the waiting ones together, about
    once per commit_interval (not once per batch)."""
    interval = 0.1
    box = await Outbox.open(tmp_path / "o.db", cfg(commit_interval=interval))
    before = box.m_commits._value.get()
    try:
        t0 = time.monotonic()
        futs = []
        for i in range(200):
            fut = box.submit(batch("mqtt:a", i))
            assert fut is not None
            futs.append(fut)
            await asyncio.sleep(0.002)
        assert all(await asyncio.gather(*futs))
        elapsed = time.monotonic() - t0
        commits = box.m_commits._value.get() - before
        assert box.stats().rows == 200
        assert commits <= elapsed / interval + 2, (commits, elapsed)
    finally:
        await box.close()
