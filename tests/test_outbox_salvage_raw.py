"""Salvage from the raw bytes of outbox files SQLite cannot open: truncated, with flipped
bytes, with a destroyed header, with rows already deleted, with the newest rows only in
the WAL. Files are made by the real Outbox; what must come back is worked out from
SQLite's own page map of the intact file (the dbstat table), not from the scanner.
"""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import sqlite3
import tempfile
import time
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.reading import Reading
from gateway.store.checksum import series_crc, telemetry_crc
from gateway.store.config import StoreConfig
from gateway.store.migrations import MIGRATIONS, migrate
from gateway.store.outbox import Outbox
from gateway.store.salvage import Salvage, scan

Rows = dict[int, tuple[int, str]]
#: readings an hour old: well inside the outbox's age bound
T0 = float(int(time.time()) - 3600)


def cfg() -> StoreConfig:
    return StoreConfig.model_validate({"commit_interval": 0.005})


def batch(seq: int, big: bool = False) -> list[Reading]:
    """A batch of mixed readings; ``big`` ones need overflow pages at any page size."""
    ts = T0 + seq
    out = [Reading(f"mqtt:dev{seq % 7}", "seq", seq, None, ts),
           Reading(f"mqtt:dev{seq % 7}", "temperature", 20.0 + seq / 100, "Cel", ts + 0.25),
           Reading("zigbee:00:12:4b:00:01:02:03:04", "door_open", seq % 2 == 0, None, ts),
           Reading("coap:meter", "state", f"s{seq}", None, ts)]
    if seq % 11 == 3:
        out.append(Reading("coap:meter", "power", math.nan, "W", ts))
        out.append(Reading("coap:meter", "energy", -math.inf, "Wh", ts))
    if big:
        out += [Reading(f"lorawan:{i % 13}", "rssi", -seq - i, "dBm", ts + i / 1000)
                for i in range(1500)]
    return out


async def write_outbox(path: Path, first: int, count: int, *, page_size: int | None = None,
                       big_every: int = 25) -> Outbox:
    """Append ``count`` batches (every ``big_every``-th one big) to a real Outbox; left open."""
    if page_size is not None:
        create(path, page_size)
    box = await Outbox.open(path, cfg())
    for seq in range(first, first + count):
        assert await box.append(batch(seq, big=seq % big_every == big_every - 1))
    assert await box.flush()
    return box


def create(path: Path, page_size: int) -> None:
    """A new outbox file with a page size of its own (SQLite's default is 4096)."""
    if path.exists():
        return
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA page_size={page_size}")
    db.execute("PRAGMA journal_mode=WAL")
    migrate(db, MIGRATIONS)
    db.close()


def size_of(path: Path) -> int:
    return path.stat().st_size


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def fill_crc(db: sqlite3.Connection) -> None:
    """Write the CRC columns the way the outbox does (a no-op where it already has)."""
    db.create_function("tcrc", 3, telemetry_crc, deterministic=True)
    db.create_function("scrc", 4, series_crc, deterministic=True)
    db.execute("UPDATE telemetry SET crc = tcrc(id, n, blob) WHERE crc IS NULL")
    db.execute("UPDATE series SET crc = scrc(id, device, metric, unit) WHERE crc IS NULL")


def finish(path: Path) -> tuple[Rows, dict[int, tuple[str, str, str | None]]]:
    """Fill the CRCs, checkpoint everything into the main file; the rows and series."""
    db = sqlite3.connect(path, isolation_level=None)
    fill_crc(db)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    rows = {rid: (n, blob) for rid, n, blob in db.execute("SELECT id, n, blob FROM telemetry")}
    series = {sid: (d, m, u) for sid, d, m, u in
              db.execute("SELECT id, device, metric, unit FROM series")}
    db.close()
    return rows, series


async def make_file(path: Path, count: int, *, page_size: int | None = None,
                    big_every: int = 25) -> tuple[Rows, dict[int, tuple[str, str, str | None]]]:
    """A closed outbox file of ``count`` batches, CRCs filled, all in the main file."""
    box = await write_outbox(path, 0, count, page_size=page_size, big_every=big_every)
    await box.close()
    return finish(path)


def page_map(path: Path, table: str = "telemetry") -> dict[int, list[int]]:
    """Row id -> the pages its cell lies in, leaf first, then overflow, from SQLite's dbstat.

    dbstat lists a table's pages in b-tree order; the n-th cell of the leaves in that
    order is the n-th smallest id, and an overflow page's path names its leaf and cell.
    """
    db = sqlite3.connect(path)
    ids = iter([r[0] for r in db.execute(f"SELECT id FROM {table} ORDER BY id")])
    stat = db.execute("SELECT path, pageno, pagetype, ncell FROM dbstat WHERE name = ? "
                      "ORDER BY path", (table,)).fetchall()
    db.close()
    pages: dict[int, list[int]] = {}
    by_cell: dict[tuple[str, int], int] = {}
    for where, pageno, kind, ncell in stat:
        if kind == "leaf":
            for cell in range(ncell):
                rid = next(ids)
                pages[rid] = [pageno]
                by_cell[(where, cell)] = rid
        elif kind == "overflow":
            owner = where.split("+")[0]
            leaf, cell = owner[:owner.rindex("/") + 1], int(owner[owner.rindex("/") + 1:], 16)
            pages[by_cell[(leaf, cell)]].append(pageno)
    return pages


def page_size_of(path: Path) -> int:
    db = sqlite3.connect(path)
    size = int(db.execute("PRAGMA page_size").fetchone()[0])
    db.close()
    return size


def unopenable(path: Path) -> bool:
    """Whether SQLite refuses the file (what sends the outbox to a raw salvage)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            db.execute("PRAGMA quick_check").fetchall()
            db.execute("SELECT count(*) FROM telemetry").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return True
    return False


def only_written(got: Salvage, rows: Rows, series: dict[int, tuple[str, str, str | None]],
                 ) -> None:
    """Everything salvaged is exactly what was written."""
    for rid, row in got.batches.items():
        assert rows.get(rid) == row, rid
    for sid, names in got.series.items():
        assert series.get(sid) == names, sid


def crc_size(value: int) -> int:
    """Bytes SQLite stores an integer in (serial types 8 and 9 hold 0 and 1 in none)."""
    if value in (0, 1):
        return 0
    return next(n for n in (1, 2, 3, 4, 6, 8) if -(1 << (8 * n - 1)) <= value < 1 << (8 * n - 1))


async def test_a_file_cut_in_half_gives_back_exactly_the_rows_wholly_before_the_cut(
        tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    rows, series = await make_file(path, 600)
    pages = page_map(path)
    size = page_size_of(path)
    data = path.read_bytes()
    series_pages = {pg for where in page_map(path, "series").values() for pg in where}
    # cut inside the leaf page nearest half the file (one without overflow cells), between
    # its cells: each cell is the record's header, n, the packed batch, then the CRC
    by_page: dict[int, list[int]] = {}
    for rid, where in pages.items():
        by_page.setdefault(where[0], []).append(rid)
    half = len(data) // size // 2
    leaf = min((pg for pg, ids in by_page.items()
                if len(ids) >= 10 and all(len(pages[rid]) == 1 for rid in ids)),
               key=lambda pg: abs(pg - half))
    start = (leaf - 1) * size
    ends = {}
    for rid in by_page[leaf]:
        n, blob = rows[rid]
        at = data.index(blob.encode(), start, start + size)
        ends[rid] = at + len(blob) + crc_size(telemetry_crc(rid, n, blob))
    cut = sorted(ends.values())[len(ends) // 2]
    assert max(series_pages) < leaf
    (tmp_path / "cut.db").write_bytes(data[:cut])
    expected = {rid for rid, where in pages.items() if max(where) < leaf}
    expected |= {rid for rid, end in ends.items() if end <= cut}
    assert unopenable(tmp_path / "cut.db")
    assert 0 < len(expected) < len(rows)
    assert 0 < len(expected & set(ends)) < len(ends)

    got = scan(tmp_path / "cut.db")

    assert set(got.batches) == expected
    assert len(got.batches) == len(expected)
    assert got.series == series
    only_written(got, rows, series)
    assert got.page_size == size
    assert got.pages_read == leaf


@pytest.mark.parametrize("page_size", [1024, 4096, 8192])
async def test_a_file_with_its_header_destroyed_gives_back_every_row(
        tmp_path: Path, page_size: int) -> None:
    path = tmp_path / "o.db"
    rows, series = await make_file(path, 300, page_size=page_size)
    assert page_size_of(path) == page_size
    data = bytearray(path.read_bytes())
    data[:100] = random.Random(1).randbytes(100)
    path.write_bytes(bytes(data))
    assert unopenable(path)

    got = scan(path)

    assert got.page_size == page_size  # guessed: the header that said so is gone
    assert got.batches == rows and len(got.batches) == 300
    assert got.series == series
    assert got.crc_failed == got.crc_missing == got.series_missing == got.undecodable == 0
    assert got.overflow_missing == 0
    assert sum(1 for rid in rows if len(rows[rid][1]) > page_size) >= 10  # overflow chains


async def test_flipped_bytes_lose_only_the_damaged_rows_and_never_return_them_altered(
        tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    rows, series = await make_file(path, 600)
    pages = page_map(path)
    size = page_size_of(path)
    data = bytearray(path.read_bytes())
    rnd = random.Random(7)
    by_page: dict[int, list[int]] = {}
    for rid, where in pages.items():
        by_page.setdefault(where[0], []).append(rid)
    leaves = sorted(pg for pg, ids in by_page.items()
                    if all(len(pages[rid]) == 1 for rid in ids))
    # one digit changed inside the packed batch of one row in each of five pages: still
    # valid JSON, so only the CRC can tell
    damaged = []
    for pg in rnd.sample(leaves, 5):
        rid = rnd.choice(by_page[pg])
        blob = rows[rid][1].encode()
        at = data.index(blob, (pg - 1) * size, pg * size) + len(blob) // 2
        while not chr(data[at]).isdigit():
            at += 1
        data[at] ^= 0x01
        damaged.append(rid)
    # and random bytes anywhere in three other pages (an overflow page among them)
    overflow = rnd.choice([pg for where in pages.values() for pg in where[1:]])
    scrambled = {overflow, *rnd.sample([pg for pg in by_page if pg not in
                                        {pages[rid][0] for rid in damaged}], 2)}
    for pg in scrambled:
        for _ in range(20):
            data[(pg - 1) * size + rnd.randrange(size)] ^= rnd.randrange(1, 256)
    data[:100] = bytes(100)
    path.write_bytes(bytes(data))
    touched = {pages[rid][0] for rid in damaged} | scrambled
    intact = {rid for rid, where in pages.items() if not touched.intersection(where)}
    assert unopenable(path)

    got = scan(path)

    only_written(got, rows, series)
    assert intact <= set(got.batches)
    assert not set(damaged) & set(got.batches)
    assert got.crc_failed >= len(damaged)
    assert got.series == series
    # what was lost lies in the pages that were touched, and not all of those rows
    lost = set(rows) - set(got.batches)
    assert lost and all(touched.intersection(pages[rid]) for rid in lost)


async def test_batches_whose_series_are_lost_are_not_returned(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    rows, _ = await make_file(path, 100)
    size = page_size_of(path)
    series_pages = {pg for where in page_map(path, "series").values() for pg in where}
    data = bytearray(path.read_bytes())
    for pg in series_pages:
        data[(pg - 1) * size:pg * size] = bytes(size)
    path.write_bytes(bytes(data))

    got = scan(path)

    assert got.series == {} and got.batches == {}
    assert got.series_missing == len(rows)


async def test_rows_deleted_before_the_scan_are_not_returned_though_their_bytes_remain(
        tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    rows, series = await make_file(path, 400)
    # as the outbox does once the cloud acknowledges them, but leaving the bytes in place
    # (secure_delete off) as a file system or another SQLite build may
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA secure_delete=OFF")
    db.execute("BEGIN")
    db.execute("DELETE FROM telemetry WHERE id < 300")
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('deleted_below', 300)")
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    gone = [rid for rid in rows if rid < 300]
    assert sum(rows[rid][1].encode() in data for rid in gone) > 100  # still on disk
    data[:100] = bytes(100)
    path.write_bytes(bytes(data))
    assert unopenable(path)

    got = scan(path)

    assert got.deleted_below == 300
    assert got.batches == {rid: row for rid, row in rows.items() if rid >= 300}
    assert got.below_deleted > 100  # seen in the freed pages, and left out
    only_written(got, rows, series)


async def test_the_newest_rows_are_salvaged_from_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    old, _ = await make_file(path, 100)
    # reopen: the next rows are committed to the WAL only (no checkpoint before the copy)
    box = await write_outbox(path, 100, 60)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA wal_autocheckpoint=0")
    fill_crc(db)
    rows = {rid: (n, blob) for rid, n, blob in db.execute("SELECT id, n, blob FROM telemetry")}
    series = {sid: (d, m, u) for sid, d, m, u in
              db.execute("SELECT id, device, metric, unit FROM series")}
    copy = tmp_path / "copy"
    copy.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{path}{suffix}", f"{copy / 'o.db'}{suffix}")
    db.close()
    await box.close()
    main = copy / "o.db"
    data = bytearray(main.read_bytes())
    data[:100] = bytes(100)
    main.write_bytes(bytes(data))
    assert len(rows) == 160 and (copy / "o.db-wal").stat().st_size > 0

    got = scan(main)

    assert got.batches == rows
    assert got.series == series
    assert got.wal_frames > 0 and got.wal_unverified == 0
    # without its WAL the main file holds only the rows from before the reopen
    (copy / "o.db-wal").rename(copy / "aside-wal")
    assert scan(main).batches == old


async def test_frames_after_a_damaged_wal_frame_are_still_used(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    await make_file(path, 20)
    box = await write_outbox(path, 20, 1)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA wal_autocheckpoint=0")
    fill_crc(db)
    first_wal = size_of(Path(f"{path}-wal"))
    db.close()
    for seq in range(21, 80):  # many more commits, each its own WAL frames
        assert await box.append(batch(seq))
        assert await box.flush()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA wal_autocheckpoint=0")
    fill_crc(db)
    rows = {rid: (n, blob) for rid, n, blob in db.execute("SELECT id, n, blob FROM telemetry")}
    copy = tmp_path / "copy.db"
    shutil.copyfile(path, copy)
    shutil.copyfile(f"{path}-wal", f"{copy}-wal")
    db.close()
    await box.close()
    flip(Path(f"{copy}-wal"), first_wal - 100)  # in a frame written early: the chain breaks

    got = scan(copy)

    assert got.wal_unverified > 0  # the newest rows lie past the broken frame
    assert got.batches == rows


def test_nothing_at_all_or_no_such_file_gives_an_empty_salvage(tmp_path: Path) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    for path in (tmp_path / "empty.db", tmp_path / "missing.db", tmp_path):
        got = scan(path)
        assert got.batches == {} and got.series == {} and got.pages_read == 0


# -- fuzzing ------------------------------------------------------------------------------------


@cache
def sample() -> tuple[bytes, bytes, Rows, dict[int, tuple[str, str, str | None]]]:
    """A real outbox file with rows in both the main file and the WAL: bytes and rows."""
    async def build(where: Path) -> tuple[bytes, bytes, Rows,
                                          dict[int, tuple[str, str, str | None]]]:
        path = where / "o.db"
        await make_file(path, 60, page_size=1024, big_every=20)
        box = await write_outbox(path, 60, 20, big_every=20)
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA wal_autocheckpoint=0")
        fill_crc(db)
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('deleted_below', 5)")
        rows = {rid: (n, blob) for rid, n, blob in
                db.execute("SELECT id, n, blob FROM telemetry")}
        series = {sid: (d, m, u) for sid, d, m, u in
                  db.execute("SELECT id, device, metric, unit FROM series")}
        db.close()
        main, wal = read_both(path)
        await box.close()
        return main, wal, rows, series

    with tempfile.TemporaryDirectory() as where:
        return asyncio.run(build(Path(where)))


FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def read_both(path: Path) -> tuple[bytes, bytes]:
    return path.read_bytes(), Path(f"{path}-wal").read_bytes()


def scan_bytes(where: Path, main: bytes, wal: bytes | None) -> Salvage:
    path = where / f"f{time.monotonic_ns()}.db"
    path.write_bytes(main)
    if wal is not None:
        Path(f"{path}-wal").write_bytes(wal)
    try:
        return scan(path)
    finally:
        path.unlink()
        Path(f"{path}-wal").unlink(missing_ok=True)


@FUZZ
@given(main=st.binary(max_size=20_000), wal=st.none() | st.binary(max_size=6_000))
def test_random_bytes_never_raise_and_give_nothing(tmp_path: Path, main: bytes,
                                                   wal: bytes | None) -> None:
    got = scan_bytes(tmp_path, main, wal)
    assert got.batches == {} and got.series == {}


_edits = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255),
                            st.sampled_from(["set", "xor", "insert", "delete", "zero"])),
                  max_size=40)


def mutate(data: bytes, edits: list[tuple[float, int, str]], cut: float | None) -> bytes:
    out = bytearray(data)
    for where, value, how in edits:
        if not out:
            break
        at = int(where * len(out))
        if how == "set":
            out[at] = value
        elif how == "xor":
            out[at] ^= value or 1
        elif how == "insert":
            out[at:at] = bytes([value]) * (value % 7 + 1)
        elif how == "delete":
            del out[at:at + value % 9 + 1]
        else:
            out[at:at + 512] = bytes(min(512, len(out) - at))
    return bytes(out[:int(len(out) * cut)] if cut is not None else out)


@FUZZ
@given(main_edits=_edits, wal_edits=_edits,
       main_cut=st.none() | st.floats(0, 1), wal_cut=st.none() | st.floats(0, 1),
       drop_wal=st.booleans())
def test_a_mutated_real_file_never_raises_and_gives_only_rows_as_written(
        tmp_path: Path, main_edits: list[tuple[float, int, str]],
        wal_edits: list[tuple[float, int, str]], main_cut: float | None,
        wal_cut: float | None, drop_wal: bool) -> None:
    main, wal, rows, series = sample()
    got = scan_bytes(tmp_path, mutate(main, main_edits, main_cut),
                     None if drop_wal else mutate(wal, wal_edits, wal_cut))
    only_written(got, rows, series)
    if not (main_edits or wal_edits or main_cut is not None or wal_cut is not None
            or drop_wal):
        assert got.batches == {rid: row for rid, row in rows.items() if rid >= 5}


# -- through Outbox.open: a file SQLite cannot open is quarantined and salvaged -------------

def readings_of(rows: Rows, series: dict[int, tuple[str, str, str | None]],
                ids: set[int]) -> list[Reading]:
    from gateway.store.outbox import _unpack
    return [r for rid in sorted(ids) for r in _unpack(rows[rid][1], series)]


async def salvaged_by_outbox(path: Path) -> tuple[list[Reading], str]:
    box = await Outbox.open(path, cfg())
    try:
        # read as the uplink does: events first, then telemetry, cursor by cursor
        got: list[Reading] = []
        events = []
        after_event = after_telemetry = 0
        for _ in range(10_000):
            new_events, rows = await box.read_next(after_event, after_telemetry, 500)
            if not new_events and not rows:
                break
            events += new_events
            if new_events:
                after_event = new_events[-1].id
            if rows:
                after_telemetry = rows[-1].id
                got += [r for row in rows for r in row.readings]
    finally:
        await box.close()
    assert events and events[0].body["rule"] == "outbox_corrupt"
    return got, events[0].body["message"]


@pytest.mark.parametrize("damage", ["header", "truncated", "flipped"])
async def test_the_outbox_salvages_every_intact_batch_and_nothing_altered(
        tmp_path: Path, damage: str) -> None:
    path = tmp_path / "o.db"
    rows, series = await make_file(path, 400)
    pages = page_map(path)
    size = page_size_of(path)
    data = bytearray(path.read_bytes())
    if damage == "header":
        data[:100] = random.Random(3).randbytes(100)
        intact = set(rows)
    elif damage == "truncated":
        # cut at a page boundary half way: the rows wholly in the pages before it survive
        cut_page = len(data) // size // 2
        data = data[:cut_page * size]
        intact = {rid for rid, where in pages.items() if max(where) <= cut_page}
    else:
        # one digit changed in the packed batch of ten rows (still valid JSON: only the
        # CRC can tell), and the header destroyed so SQLite cannot open the file
        rnd = random.Random(11)
        damaged = set(rnd.sample([rid for rid, where in pages.items() if len(where) == 1], 10))
        for rid in damaged:
            pg = pages[rid][0]
            blob = rows[rid][1].encode()
            at = data.index(blob, (pg - 1) * size, pg * size) + len(blob) // 2
            while not chr(data[at]).isdigit():
                at += 1
            data[at] ^= 0x01
        data[:100] = bytes(100)
        intact = set(rows) - damaged
    path.write_bytes(bytes(data))
    assert unopenable(path)
    assert intact and (damage == "header" or intact < set(rows))

    got, message = await salvaged_by_outbox(path)

    expected = readings_of(rows, series, intact)
    assert len(got) == len(expected)
    assert [(r.device, r.metric, r.unit, r.ts) for r in got] == \
        [(r.device, r.metric, r.unit, r.ts) for r in expected]
    for a, b in zip(got, expected, strict=True):  # the same values, NaN included
        assert a.value == b.value or (a.value != a.value and b.value != b.value)
    assert f"{len(expected)} reading(s) salvaged" in message
