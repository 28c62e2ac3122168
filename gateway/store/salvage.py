"""Salvage from the raw bytes of an outbox file that SQLite itself cannot open.

When the file is truncated, has flipped bytes or a destroyed header, SQLite refuses it
whole, yet most of its pages usually still hold intact rows. :func:`scan` reads the file
format directly (https://www.sqlite.org/fileformat2.html), page by page:

- The page size is the one (512 to 65536) under which most pages parse as b-tree pages;
  the size the 100-byte header states, when it can be read, only breaks ties, so a
  destroyed or altered header cannot mislead the scan.
- Every page is taken as a possible b-tree page: table leaves (0x0D) hold ``series`` and
  ``telemetry`` rows, index pages (0x0A, 0x02) the ``meta`` table (WITHOUT ROWID). No
  page is trusted to point at another, so a damaged interior page or schema loses
  nothing; only overflow chains are followed, and a cell whose chain is not in the file
  is skipped.
- The ``-wal`` file beside it is read too: for each page, its newest committed frame whose
  checksum verifies is read instead of the main file's copy, as SQLite would; and where a
  newer frame of the same WAL generation cannot be verified (the checksum chain breaks at
  the first damaged frame, but the frames after it hold newer pages), it is read as well.
- A row is kept only when its ``crc`` column matches (gateway/store/checksum.py), so a
  damaged or half-overwritten row is refused, never returned altered. Rows are told apart
  by their shape (column count and types) and then by their CRC.
- Batches below ``meta.deleted_below`` were uploaded or dropped already; their bytes may
  still lie in freed pages and are not sent again. A batch is kept only when every series
  it names was recovered and it unpacks.

The work is bounded: one page is read at a time (plus the WAL's page index), overflow
chains are followed for at most about twice as many pages as the file has, and no input
bytes make :func:`scan` raise. What it recovers is returned whole, in memory.
"""

from __future__ import annotations

import itertools
import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gateway.store.checksum import series_crc, telemetry_crc

log = logging.getLogger("gateway.outbox")

_MAGIC = b"SQLite format 3\x00"
_PAGE_SIZES = tuple(1 << k for k in range(9, 17))  # 512 .. 65536, the sizes SQLite allows
#: the page-size guess reads this many aligned chunks of this size, spread over the file
_GUESS_CHUNK, _GUESS_CHUNKS = 65536, 64
#: b-tree page types (first byte of a page's b-tree header)
_INDEX_INTERIOR, _TABLE_INTERIOR, _INDEX_LEAF, _TABLE_LEAF = 0x02, 0x05, 0x0A, 0x0D
_WAL_MAGIC = (0x377F0682, 0x377F0683)  # the low bit says the checksums are big-endian
_WAL_HEADER, _WAL_FRAME_HEADER = 32, 24
#: content sizes of serial types 0..11 (10 and 11 are reserved: never in a valid record)
_FIXED_SIZES = (0, 1, 2, 3, 4, 6, 8, 8, 0, 0, -1, -1)
#: the most columns any salvaged table has; a longer record header is someone else's row
_MAX_COLUMNS = 5
_DELETED_BELOW = "deleted_below"
_TEXT_ENCODINGS = {1: "utf-8", 2: "utf-16-le", 3: "utf-16-be"}

_Series = tuple[str, str, str | None]


@dataclass
class Salvage:
    """What :func:`scan` recovered from a raw outbox file, and what it refused."""

    #: series id -> (device, metric, unit), every one with a matching CRC
    series: dict[int, _Series] = field(default_factory=dict)
    #: telemetry id -> (number of readings, packed batch): CRC-valid, not deleted, every
    #: series known, unpacks
    batches: dict[int, tuple[int, str]] = field(default_factory=dict)
    #: every telemetry id below this had been deleted (largest meta value found)
    deleted_below: int = 0
    page_size: int = 0  # detected or guessed
    pages_read: int = 0  # pages walked, from the main file and the WAL
    pages_unreadable: int = 0  # pages the operating system could not read (I/O error)
    wal_frames: int = 0  # verified, committed WAL frames read (the newest of each page)
    wal_unverified: int = 0  # newer WAL frames read whose checksum could not be verified
    crc_failed: int = 0  # series or telemetry cells refused: CRC mismatch or cut short
    crc_missing: int = 0  # rows written without a CRC (before schema 4, or NULL): ignored
    overflow_missing: int = 0  # cells whose overflow chain is not in the file
    below_deleted: int = 0  # CRC-valid batches with an id below ``deleted_below``
    series_missing: int = 0  # CRC-valid batches naming a series not recovered
    undecodable: int = 0  # CRC-valid batches whose packed readings do not unpack


class _Damaged(Exception):
    """Bytes that do not decode as what they should be (internal: never leaves the module)."""


def scan(path: Path) -> Salvage:
    """Recover series and telemetry batches from the raw bytes of ``path`` and its WAL."""
    out = Salvage()
    wal_path = Path(f"{path}-wal")
    with _open(path) as main, _open(wal_path) as wal:
        header = _read_at(main, 0, 100) if main else b""
        intact = header[:16] == _MAGIC
        reserved = header[20] if intact and len(header) > 20 else 0
        encoding = "utf-8"
        if intact and len(header) >= 60:
            encoding = _TEXT_ENCODINGS.get(_u32(header, 56), "utf-8")
        wal_header = _WalHeader.read(wal)
        main_size = _size(main)
        stated = _stated_page_size(header) if intact else None
        page_size = _guess_page_size(main, main_size, reserved,
                                     (stated, wal_header.page_size, 4096))
        wal_size = wal_header.page_size or page_size
        trusted, unverified = _wal_index(wal, wal_header, wal_size) if wal else ({}, {})
        if reserved and page_size - reserved < 480:
            reserved = 0  # SQLite never leaves less than 480 usable bytes: a damaged header
        pages = _Pages(main, main_size, page_size, wal, trusted, unverified, wal_size, reserved)
        out.page_size = page_size
        out.wal_frames, out.wal_unverified = len(trusted), len(unverified)
        reader = _Reader(pages, encoding, out)
        main_pages = -(-main_size // page_size)
        beyond = sorted({p for p in (*trusted, *unverified) if p > main_pages})
        for pgno in itertools.chain(range(1, main_pages + 1), beyond):
            reader.page(pgno, pages.get(pgno, newest=False))
            if pgno in unverified:
                reader.page(pgno, pages.get(pgno))
        out.pages_unreadable = pages.unreadable
    _keep_sendable(reader.telemetry, out)
    return out


# -- the WAL ----------------------------------------------------------------------------


@dataclass
class _WalHeader:
    """The 32-byte WAL header; ``valid`` only when its magic and checksum are right."""

    valid: bool = False
    big_endian: bool = False
    page_size: int | None = None
    salts: tuple[int, int] | None = None
    checksum: tuple[int, int] = (0, 0)

    @classmethod
    def read(cls, wal: BinaryIO | None) -> _WalHeader:
        raw = _read_at(wal, 0, _WAL_HEADER) if wal else b""
        if len(raw) < _WAL_HEADER:
            return cls()
        magic, _version, size, _ckpt, salt1, salt2, sum1, sum2 = struct.unpack(">8I", raw)
        if magic not in _WAL_MAGIC:
            return cls()
        big = bool(magic & 1)
        if size == 1:
            size = 65536
        if size not in _PAGE_SIZES or _wal_checksum(raw[:24], big, 0, 0) != (sum1, sum2):
            return cls()
        return cls(True, big, size, (salt1, salt2), (sum1, sum2))


def _wal_checksum(data: bytes, big: bool, s0: int, s1: int) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes), continued from s0, s1."""
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words) - 1, 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _wal_index(wal: BinaryIO, header: _WalHeader,
               page_size: int) -> tuple[dict[int, int], dict[int, int]]:
    """Where the newest copy of each page lies in the WAL: page number -> offset, for the
    frames SQLite would use (checksum chain intact, up to its last commit), and for the
    newer frames it would not (chain broken, or no commit after them).

    Every frame past a break is newer than every frame before it, and those of the same
    WAL generation (same salts) usually are committed transactions written after the
    damaged frame: a row's own CRC still guards their bytes. Frames of an older generation
    were checkpointed into the main file before the WAL restarted, so they are older than
    it and are left out.
    """
    committed: dict[int, int] = {}
    pending: dict[int, int] = {}  # verified frames after the last commit seen
    unverified: dict[int, int] = {}
    chain = header.checksum if header.valid else None
    salts = header.salts
    frame = _WAL_FRAME_HEADER + page_size
    offset = _WAL_HEADER
    while True:
        raw = _read_at(wal, offset, frame)
        if len(raw) < frame:
            break  # the last frame was cut short: its page is incomplete
        pgno, commit, salt1, salt2, sum1, sum2 = struct.unpack_from(">6I", raw)
        if salts is None:
            salts = (salt1, salt2)  # header unreadable: the first frame's generation
        at = offset + _WAL_FRAME_HEADER
        offset += frame
        if (salt1, salt2) != salts or pgno == 0:
            chain = None
            continue
        if chain is not None:
            chain = _wal_checksum(raw[:8] + raw[_WAL_FRAME_HEADER:], header.big_endian,
                                  *chain)
            if chain != (sum1, sum2):
                chain = None
        if chain is None:
            unverified[pgno] = at
            continue
        pending[pgno] = at
        if commit:
            committed.update(pending)
            pending.clear()
    # frames verified but with no commit after them are as unsure as the unverified ones
    return committed, {**pending, **unverified}


# -- pages ------------------------------------------------------------------------------


class _Pages:
    """Pages by number, from the WAL where it has them, else from the main file."""

    def __init__(self, main: BinaryIO | None, main_size: int, page_size: int,
                 wal: BinaryIO | None, trusted: dict[int, int], unverified: dict[int, int],
                 wal_page_size: int, reserved: int) -> None:
        self.main, self.main_size, self.page_size = main, main_size, page_size
        self.wal, self.wal_page_size = wal, wal_page_size
        self.trusted, self.unverified = trusted, unverified
        self.usable = page_size - reserved
        # at most this many distinct pages exist
        self.count = -(-main_size // page_size) + len(trusted) + len(unverified)
        self.unreadable = 0

    def get(self, pgno: int, newest: bool = True) -> bytes | None:
        """Page ``pgno`` (shorter where the file was cut), or None if absent or unreadable:
        its newest copy, or with ``newest=False`` the newest that SQLite would trust."""
        try:
            at = (self.unverified.get(pgno) if newest else None) or self.trusted.get(pgno)
            if at is not None and self.wal is not None:
                self.wal.seek(at)
                return self.wal.read(self.wal_page_size)
            start = (pgno - 1) * self.page_size
            if self.main is None or pgno < 1 or start >= self.main_size:
                return None
            self.main.seek(start)
            return self.main.read(self.page_size)
        except OSError as exc:  # a failing card: this page is lost, the others are not
            self.unreadable += 1
            if self.unreadable == 1:
                log.warning("outbox salvage: cannot read page %d: %s", pgno, exc)
            return None


def _btree_cells(page: bytes | memoryview, hdr: int,
                 usable: int) -> tuple[int, int, list[int]] | None:
    """A b-tree page's type, start of its cell content area and cell offsets, or None if
    its header does not fit a b-tree page.

    ``hdr`` is where its b-tree header starts (100 on page 1, after the file header).
    """
    if len(page) < hdr + 8:
        return None
    kind = page[hdr]
    if kind not in (_INDEX_INTERIOR, _TABLE_INTERIOR, _INDEX_LEAF, _TABLE_LEAF):
        return None
    ncells = (page[hdr + 3] << 8) | page[hdr + 4]
    content = ((page[hdr + 5] << 8) | page[hdr + 6]) or 65536
    pointers = hdr + (8 if kind in (_INDEX_LEAF, _TABLE_LEAF) else 12)
    end = pointers + 2 * ncells
    if end > min(usable, len(page)) or not end <= content <= usable:
        return None
    offsets = list(struct.unpack_from(f">{ncells}H", page, pointers))
    return kind, content, offsets


def _guess_page_size(main: BinaryIO | None, size: int, reserved: int,
                     hints: tuple[int | None, ...]) -> int:
    """The page size under which most pages parse as b-tree pages.

    Scored on chunks spread over the file, so the work does not grow with its size. Ties
    go to the sizes stated in the headers, then to SQLite's default.
    """
    scores = dict.fromkeys(_PAGE_SIZES, 0)
    chunks = -(-size // _GUESS_CHUNK)
    step = max(1, chunks // _GUESS_CHUNKS)
    for index in range(0, chunks, step)[:_GUESS_CHUNKS]:
        base = index * _GUESS_CHUNK
        chunk = memoryview(_read_at(main, base, _GUESS_CHUNK)) if main else memoryview(b"")
        for page_size in _PAGE_SIZES:
            usable = page_size - reserved if page_size - reserved >= 480 else page_size
            for at in range(0, len(chunk), page_size):
                page = chunk[at:at + page_size]
                parsed = _btree_cells(page, 100 if base + at == 0 else 0, usable)
                if parsed is not None and all(
                        parsed[1] <= off < usable for off in parsed[2]):
                    scores[page_size] += 1
    hinted = [h for h in hints if h in scores]
    return max(_PAGE_SIZES, key=lambda p: (scores[p], *(p == h for h in hinted)))


def _stated_page_size(header: bytes) -> int | None:
    if len(header) < 18:
        return None
    size = (header[16] << 8) | header[17]
    size = 65536 if size == 1 else size
    return size if size in _PAGE_SIZES else None


# -- cells and records --------------------------------------------------------------------


class _Reader:
    """Decodes the cells of each page into the salvage."""

    def __init__(self, pages: _Pages, encoding: str, out: Salvage) -> None:
        self.pages, self.encoding, self.out = pages, encoding, out
        usable = pages.usable
        self.table_max_local = usable - 35
        self.index_max_local = (usable - 12) * 64 // 255 - 23
        self.min_local = (usable - 12) * 32 // 255 - 23
        # no payload is longer than the pages there are, no chain visits a page twice, and
        # all chains together visit each page about once (twice leaves room for stale
        # copies): a crafted file cannot make the work grow as cells times pages
        self.max_payload = pages.count * usable
        self.overflow_budget = 2 * pages.count + 64
        # the serial type of the text 'deleted_below' in this file's encoding
        self.deleted_below_type = 13 + 2 * len(_DELETED_BELOW.encode(encoding))
        self.telemetry: dict[int, tuple[int, str]] = {}

    def page(self, pgno: int, page: bytes | None) -> None:
        """Decode every cell of page ``pgno`` that is a row the salvage wants."""
        if page is None:
            return
        self.out.pages_read += 1
        parsed = _btree_cells(page, 100 if pgno == 1 else 0, self.pages.usable)
        if parsed is None:
            return
        kind, _, offsets = parsed
        for offset in offsets:
            try:
                if kind == _TABLE_LEAF:
                    self.table_cell(page, offset)
                elif kind in (_INDEX_LEAF, _INDEX_INTERIOR):
                    # an interior index cell is a leaf cell behind its 4-byte child pointer
                    self.index_cell(page, offset + (4 if kind == _INDEX_INTERIOR else 0))
            except (_Damaged, ValueError):
                # ValueError: text that does not decode; these bytes are not a row of ours
                continue

    def _cell(self, page: bytes, pos: int, end: int, total: int,
              max_local: int) -> tuple[bytes, int]:
        """The local part of a cell's payload and its first overflow page (0 if none)."""
        if total > self.max_payload:
            raise _Damaged
        if total <= max_local:
            local, overflow = total, 0
        else:
            local = self.min_local + (total - self.min_local) % (self.pages.usable - 4)
            if local > max_local:
                local = self.min_local
            if pos + local + 4 > end:
                raise _Damaged
            overflow = _u32(page, pos + local)
        if pos + local > end:
            raise _Damaged
        return page[pos:pos + local], overflow

    def _payload(self, local: bytes, total: int, overflow: int) -> bytes | None:
        """The whole payload: the local part and its overflow chain; None if not in the file."""
        parts = [local]
        have = len(local)
        seen: set[int] = set()
        room = self.pages.usable - 4
        while have < total:
            if overflow in seen or self.overflow_budget <= 0:
                return None
            seen.add(overflow)
            self.overflow_budget -= 1
            page = self.pages.get(overflow)
            want = min(room, total - have)
            if page is None or len(page) < 4 + want:
                return None
            parts.append(page[4:4 + want])
            have += want
            overflow = _u32(page, 0)
        return b"".join(parts)

    def table_cell(self, page: bytes, offset: int) -> None:
        end = min(len(page), self.pages.usable)
        total, pos = _varint(page, offset, end)
        rowid, pos = _varint(page, pos, end)
        if rowid >= 1 << 63:
            rowid -= 1 << 64
        local, overflow = self._cell(page, pos, end, total, self.table_max_local)
        parsed = _record_header(local, total)
        if parsed is None:
            return
        types, body = parsed
        shape = _shape(types)
        if shape is None:
            return
        if shape == "none":
            self.out.crc_missing += 1
            return
        payload = local if overflow == 0 else self._payload(local, total, overflow)
        if payload is None:
            self.out.overflow_missing += 1
            return
        try:
            values = _values(payload, types, body, self.encoding)
        except (_Damaged, ValueError):
            self.out.crc_failed += 1
            return
        # the same row can lie in more than one page (a stale copy in a freed page): ids
        # are never reused, so every copy that passes its CRC is the same row
        if shape == "telemetry":
            _, n, blob, crc = values
            if isinstance(n, int) and isinstance(blob, str) and \
                    telemetry_crc(rowid, n, blob) == crc:
                self.telemetry.setdefault(rowid, (n, blob))
                return
        else:
            _, device, metric, unit, crc = values
            if isinstance(device, str) and isinstance(metric, str) and \
                    not isinstance(unit, int) and series_crc(rowid, device, metric, unit) == crc:
                self.out.series.setdefault(rowid, (device, metric, unit))
                return
        self.out.crc_failed += 1

    def index_cell(self, page: bytes, offset: int) -> None:
        end = min(len(page), self.pages.usable)
        total, pos = _varint(page, offset, end)
        local, overflow = self._cell(page, pos, end, total, self.index_max_local)
        parsed = _record_header(local, total)
        if parsed is None:
            return
        types, body = parsed
        # meta (key TEXT PRIMARY KEY, value): only the 'deleted_below' key matters here
        if len(types) != 2 or types[0] != self.deleted_below_type or not _is_int(types[1]):
            return
        payload = local if overflow == 0 else self._payload(local, total, overflow)
        if payload is None:
            return
        key, value = _values(payload, types, body, self.encoding)
        if key == _DELETED_BELOW and isinstance(value, int):
            self.out.deleted_below = max(self.out.deleted_below, value)


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """The SQLite varint at ``pos`` (1 to 9 bytes, big-endian) and the position after it."""
    value = 0
    for i in range(pos, min(pos + 8, end)):
        byte = buf[i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, i + 1
    if pos + 8 >= end:
        raise _Damaged
    return (value << 8) | buf[pos + 8], pos + 9


def _serial_size(kind: int) -> int:
    if kind >= 12:
        return (kind - 12) >> 1
    size = _FIXED_SIZES[kind]
    if size < 0:
        raise _Damaged
    return size


def _record_header(local: bytes, total: int) -> tuple[list[int], int] | None:
    """A record's serial types and where its body starts; None if not one of our rows.

    Raises _Damaged when the header does not add up to the payload size.
    """
    size, pos = _varint(local, 0, len(local))
    if size > len(local):
        return None  # a header this long is no row of the salvaged tables
    types: list[int] = []
    while pos < size:
        kind, pos = _varint(local, pos, size)
        types.append(kind)
        if len(types) > _MAX_COLUMNS:
            return None
    if pos != size or size + sum(_serial_size(t) for t in types) != total:
        raise _Damaged
    return types, size


def _is_int(kind: int) -> bool:
    return 1 <= kind <= 6 or kind in (8, 9)


def _is_text(kind: int) -> bool:
    return kind >= 13 and kind & 1 == 1


def _shape(types: list[int]) -> str | None:
    """'telemetry' or 'series' for a row of that table with a CRC, 'none' for one without,
    None for a row of another table.

    The id column is the rowid and stored as NULL; rows written before the CRC column
    was added have one column less.
    """
    if not types or types[0] != 0:
        return None
    cols = types[1:]
    if len(cols) in (2, 3) and _is_int(cols[0]) and _is_text(cols[1]):
        if len(cols) == 2 or cols[2] == 0:
            return "none"
        return "telemetry" if _is_int(cols[2]) else None
    if len(cols) in (3, 4) and _is_text(cols[0]) and _is_text(cols[1]) and \
            (cols[2] == 0 or _is_text(cols[2])):
        if len(cols) == 3 or cols[3] == 0:
            return "none"
        return "series" if _is_int(cols[3]) else None
    return None


def _values(payload: bytes, types: list[int], at: int,
            encoding: str) -> list[int | str | None]:
    """A record's column values (integers, text and NULL: all our rows hold)."""
    out: list[int | str | None] = []
    for kind in types:
        size = _serial_size(kind)
        raw = payload[at:at + size]
        if len(raw) != size:
            raise _Damaged
        at += size
        if kind == 0:
            out.append(None)
        elif kind in (8, 9):
            out.append(kind - 8)
        elif _is_int(kind):
            out.append(int.from_bytes(raw, "big", signed=True))
        elif _is_text(kind):
            out.append(raw.decode(encoding))
        else:
            raise _Damaged  # a float or blob where none of our columns has one
    return out


# -- what is kept -------------------------------------------------------------------------


def _keep_sendable(found: dict[int, tuple[int, str]], out: Salvage) -> None:
    """Keep the batches not yet deleted whose series are all known and which unpack."""
    # imported here: the outbox imports this module to salvage with it
    from gateway.store.outbox import _unpack

    for rid in sorted(found):
        n, blob = found[rid]
        if rid < out.deleted_below:
            out.below_deleted += 1
            continue
        try:
            _unpack(blob, out.series)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
            if _names_unknown_series(blob, out.series):
                out.series_missing += 1
            else:
                out.undecodable += 1
            continue
        out.batches[rid] = (n, blob)


def _names_unknown_series(blob: str, series: dict[int, _Series]) -> bool:
    """Whether a packed batch that does not unpack names a series that was not recovered."""
    try:
        flat = json.loads(blob)
        return isinstance(flat, list) and any(
            not isinstance(sid, int) or sid not in series for sid in flat[1::3])
    except (ValueError, RecursionError):
        return False


# -- files --------------------------------------------------------------------------------


class _Absent:
    """Stands in for a file that does not exist (or cannot be opened)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _open(path: Path) -> BinaryIO | _Absent:
    try:
        return path.open("rb")
    except OSError:
        return _Absent()


def _read_at(f: BinaryIO | None, offset: int, size: int) -> bytes:
    if f is None:
        return b""
    try:
        f.seek(offset)
        return f.read(size)
    except OSError:
        return b""


def _size(f: BinaryIO | None) -> int:
    if f is None:
        return 0
    try:
        return f.seek(0, 2)
    except OSError:
        return 0


def _u32(buf: bytes, at: int) -> int:
    value: int = struct.unpack_from(">I", buf, at)[0]
    return value
