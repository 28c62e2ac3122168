"""gateway.core.files: atomic state-file writes and setting unreadable files aside."""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import pytest

from gateway.core.files import fsync_directory, set_aside, write_atomic, write_json_atomic

STAMP = 1_706_745_599.0  # 2024-01-31T23:59:59Z
STAMPED = "20240131T235959Z"


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def umask_022() -> Any:
    old = os.umask(0o022)
    yield
    os.umask(old)


# -- write_atomic ----------------------------------------------------------------------------


def test_write_creates_the_file_with_exactly_the_bytes_and_nothing_else(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a.bin", b"\x00\xffabc")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\xffabc"
    assert names(tmp_path) == ["a.bin"]


def test_write_replaces_an_existing_file_and_writes_text_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("old old old old")
    write_atomic(path, "température")
    assert path.read_bytes() == "température".encode()
    assert names(tmp_path) == ["s.json"]


def test_write_of_a_large_payload_is_complete(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    write_atomic(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


def test_default_mode_is_what_open_w_gives(tmp_path: Path, umask_022: None) -> None:
    write_atomic(tmp_path / "a", b"x")
    with open(tmp_path / "b", "w"):
        pass
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o644


def test_mode_is_a_parameter_and_replaces_the_old_files_mode(tmp_path: Path,
                                                               umask_022: None) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    write_atomic(path, b"key", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"key"


def test_a_failed_fsync_leaves_the_old_content_and_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.json"
    path.write_text("old")

    def broken_fsync(fd: int) -> None:  # the simulated part: the disk refuses the flush
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert names(tmp_path) == ["s.json"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(fd: int, data: Any) -> int:  # the simulated part: ENOSPC mid-write
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "s.json", b"x" * 100)
    assert names(tmp_path) == []


def test_a_short_write_is_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def three_bytes_at_a_time(fd: int, data: Any) -> int:  # the simulated part: short writes
        return real_write(fd, bytes(data[:3]))

    monkeypatch.setattr(os, "write", three_bytes_at_a_time)
    write_atomic(tmp_path / "s", b"0123456789")
    assert (tmp_path / "s").read_bytes() == b"0123456789"


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "target", b"x")
    assert names(tmp_path) == ["target"]


def test_an_interrupt_mid_write_also_removes_the_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(fd: int) -> None:  # the simulated part: Ctrl-C during the fsync
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "s", b"x")
    assert names(tmp_path) == []


def test_the_temporary_name_is_unique_and_never_reuses_an_existing_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.json"
    # a leftover of a crash under the first name the (spied) generator proposes
    tokens = iter(["deadbeef", "deadbeef", "cafef00d"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(tokens))
    (tmp_path / "s.json.deadbeef.tmp").write_text("someone else's")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert (tmp_path / "s.json.deadbeef.tmp").read_text() == "someone else's"
    assert names(tmp_path) == ["s.json", "s.json.deadbeef.tmp"]


def test_the_file_and_then_its_directory_are_fsynced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bool, int]] = []  # a spy: (is a directory, inode) per fsync'd fd
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        seen.append((stat.S_ISDIR(st.st_mode), st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    path = tmp_path / "s.json"
    write_atomic(path, b"x")
    assert seen == [(False, path.stat().st_ino), (True, tmp_path.stat().st_ino)]


def test_a_filesystem_that_cannot_sync_directories_is_accepted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def no_dir_sync(fd: int) -> None:  # the simulated part: EINVAL for a directory fd
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_dir_sync)
    write_atomic(tmp_path / "s", b"x")
    assert (tmp_path / "s").read_bytes() == b"x"


def test_a_directory_fsync_io_error_is_raised(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def eio(fd: int) -> None:  # the simulated part: the disk fails the directory flush
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(OSError, match="Input/output"):
        fsync_directory(tmp_path)


# -- write_json_atomic -----------------------------------------------------------------------


def test_json_write_passes_the_json_options(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    write_json_atomic(path, {"b": [1, 2], "a": "é"}, separators=(",", ":"), sort_keys=True)
    assert path.read_text(encoding="utf-8") == '{"a":"\\u00e9","b":[1,2]}'
    write_json_atomic(path, {"a": "é"}, ensure_ascii=False)
    assert path.read_text(encoding="utf-8") == '{"a": "é"}'
    assert names(tmp_path) == ["s.json"]


def test_an_object_json_cannot_represent_leaves_the_old_file_and_no_temporary(
        tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"old":1}')
    with pytest.raises(TypeError):
        write_json_atomic(path, {"when": object()})
    with pytest.raises(ValueError):
        write_json_atomic(path, float("nan"), allow_nan=False)
    assert path.read_text() == '{"old":1}'
    assert names(tmp_path) == ["s.json"]


def test_json_write_takes_a_mode(tmp_path: Path, umask_022: None) -> None:
    write_json_atomic(tmp_path / "s.json", [1], mode=0o600)
    assert stat.S_IMODE((tmp_path / "s.json").stat().st_mode) == 0o600
    assert json.loads((tmp_path / "s.json").read_text()) == [1]


# -- set_aside -------------------------------------------------------------------------------


def test_set_aside_renames_with_reason_and_utc_stamp_and_logs_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "devices.json"
    path.write_text("{garbage")
    with caplog.at_level(logging.DEBUG, logger="gateway.files"):
        aside = set_aside(path, now=STAMP)
    assert aside == tmp_path / f"devices.json.corrupt-{STAMPED}"
    assert aside.read_text() == "{garbage"
    assert names(tmp_path) == [aside.name]
    records = [r for r in caplog.records if r.name == "gateway.files"]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("WARNING", f"set aside {path} as {aside}")]


def test_set_aside_twice_in_the_same_second_keeps_both(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("first")
    one = set_aside(path, now=STAMP)
    path.write_text("second")
    two = set_aside(path, now=STAMP)
    path.write_text("third")
    three = set_aside(path, now=STAMP)
    assert one is not None and two is not None and three is not None
    assert [one.name, two.name, three.name] == [
        f"s.json.corrupt-{STAMPED}", f"s.json.corrupt-{STAMPED}-1", f"s.json.corrupt-{STAMPED}-2"]
    assert [one.read_text(), two.read_text(), three.read_text()] == ["first", "second", "third"]


def test_set_aside_without_stamp_uses_the_bare_reason_then_numbers(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("first")
    one = set_aside(path, "bad", stamp=False)
    path.write_text("second")
    two = set_aside(path, "bad", stamp=False)
    assert one == tmp_path / "s.json.bad" and one.read_text() == "first"
    assert two == tmp_path / "s.json.bad-1" and two.read_text() == "second"


def test_set_aside_of_a_missing_file_does_nothing(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="gateway.files"):
        assert set_aside(tmp_path / "nothing.db", suffixes=("-wal", "-shm")) is None
    assert names(tmp_path) == []
    assert not [r for r in caplog.records if r.name == "gateway.files"]


def test_set_aside_moves_sqlite_companions_under_the_same_new_name(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "o.db"
    db.write_bytes(b"main")
    (tmp_path / "o.db-wal").write_bytes(b"log")
    (tmp_path / "o.db-shm").write_bytes(b"shm")
    (tmp_path / "other").write_bytes(b"untouched")
    with caplog.at_level(logging.WARNING, logger="gateway.files"):
        aside = set_aside(db, suffixes=("-wal", "-shm"), now=STAMP)
    base = f"o.db.corrupt-{STAMPED}"
    assert aside == tmp_path / base
    assert names(tmp_path) == sorted([base, f"{base}-shm", f"{base}-wal", "other"])
    assert (tmp_path / f"{base}-wal").read_bytes() == b"log"
    assert (tmp_path / f"{base}-shm").read_bytes() == b"shm"
    assert [r.getMessage() for r in caplog.records if r.name == "gateway.files"] == [
        f"set aside {db} as {aside} (with -wal, -shm)"]


def test_set_aside_never_splits_a_database_from_an_earlier_companion(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    base = f"o.db.corrupt-{STAMPED}"
    (tmp_path / f"{base}-wal").write_bytes(b"earlier log")  # only the companion of an earlier
    db.write_bytes(b"main")
    (tmp_path / "o.db-wal").write_bytes(b"log")
    aside = set_aside(db, suffixes=("-wal", "-shm"), now=STAMP)
    assert aside == tmp_path / f"{base}-1"
    assert (tmp_path / f"{base}-wal").read_bytes() == b"earlier log"
    assert (tmp_path / f"{base}-1-wal").read_bytes() == b"log"


def test_set_aside_moves_companions_even_without_the_main_file(tmp_path: Path) -> None:
    (tmp_path / "o.db-wal").write_bytes(b"log")
    aside = set_aside(tmp_path / "o.db", suffixes=("-wal", "-shm"), now=STAMP)
    assert aside == tmp_path / f"o.db.corrupt-{STAMPED}"
    assert names(tmp_path) == [f"o.db.corrupt-{STAMPED}-wal"]


def test_set_aside_fsyncs_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []  # a spy: inodes of the directories fsync'd
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append(st.st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    (tmp_path / "s").write_text("x")
    set_aside(tmp_path / "s")
    assert synced == [tmp_path.stat().st_ino]


def test_set_aside_of_a_sqlite_database_keeps_it_readable(tmp_path: Path) -> None:
    import shutil
    import sqlite3

    live = tmp_path / "live"
    live.mkdir()
    con = sqlite3.connect(live / "o.db")
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA wal_autocheckpoint=0")
        con.execute("CREATE TABLE t(x)")
        con.execute("INSERT INTO t VALUES (42)")
        con.commit()
        # the files as a crash leaves them: the row only in the log
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        for name in ("o.db", "o.db-wal", "o.db-shm"):
            shutil.copyfile(live / name, crashed / name)
    finally:
        con.close()
    assert (crashed / "o.db-wal").stat().st_size > 0
    aside = set_aside(crashed / "o.db", suffixes=("-wal", "-shm"))
    assert aside is not None and not (crashed / "o.db-wal").exists()
    old = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
    try:
        assert old.execute("SELECT x FROM t").fetchall() == [(42,)]
    finally:
        old.close()
