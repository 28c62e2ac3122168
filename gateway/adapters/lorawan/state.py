"""Per-device progress that must survive restarts: stream cursor, recent dedup ids, frame counter.

Progress is recorded only after the readings it covers were accepted, so a replay after a
crash starts no later than the first reading that is not yet durable, and the remembered
deduplication ids keep what was already accepted from being accepted twice.

On disk: a snapshot (``lorawan-<name>.json``, replaced atomically) plus a journal of
changes since (``lorawan-<name>.journal``, one JSON line of ~100 bytes per accepted
event). Appending a line instead of rewriting the snapshot keeps SD-card writes small;
the journal is folded into a new snapshot at stop, and once it holds ``compact_after``
lines and outweighs the snapshot (so a snapshot rewrite costs at most a line per event). The
journal is not fsync'd per event unless ``fsync`` is set: a killed process loses nothing
(the page cache survives it), a power cut may lose the last seconds of progress, which
then come again from ChirpStack's history and may be accepted a second time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gateway.core.files import set_aside, write_atomic

log = logging.getLogger("gateway.adapter.lorawan")

VERSION = 2


def cursor_key(cursor: str) -> tuple[int, int] | None:
    """ChirpStack's LogItem ids are Redis stream ids ``<ms>-<seq>``: order them as numbers."""
    ms, sep, seq = cursor.partition("-")
    try:
        return int(ms), int(seq) if sep else 0
    except ValueError:
        return None


@dataclass
class DeviceProgress:
    """What the adapter remembers about one device."""

    cursor: str = ""
    f_cnt: int | None = None
    dedup: deque[str] = field(default_factory=deque)
    info: dict[str, str] = field(default_factory=dict)


class DeviceStateStore:
    """Cursors, dedup memory and known devices: a snapshot plus an append-only journal."""

    def __init__(self, path: Path, dedup_memory: int = 16, *, fsync: bool = False,
                 compact_after: int = 2000) -> None:
        self.path = path
        self.journal_path = path.with_suffix(".journal")
        self.dedup_memory = dedup_memory
        self.fsync = fsync
        self.compact_after = compact_after
        self.devices: dict[str, DeviceProgress] = {}
        self._seq = 0
        self._pending: list[dict[str, Any]] = []
        self._journal_lines = 0
        self._journal_bytes = 0
        self._snapshot_bytes = 0
        self._journal: TextIO | None = None
        self._lock = asyncio.Lock()

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        """Read snapshot and journal; an unreadable snapshot is set aside, not fatal."""
        snapshot_seq = 0
        try:
            text = self.path.read_text(encoding="utf-8")
            self._snapshot_bytes = len(text)
            raw = json.loads(text)
            snapshot_seq = int(raw.get("seq", 0))
            for eui, d in raw["devices"].items():
                self.devices[eui] = DeviceProgress(
                    cursor=str(d.get("cursor", "")),
                    f_cnt=d.get("f_cnt"),
                    dedup=deque((str(x) for x in d.get("dedup", [])), maxlen=self.dedup_memory),
                    info={str(k): str(v) for k, v in (d.get("info") or {}).items()},
                )
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._set_aside(self.path, exc)
            self.devices.clear()
        self._seq = snapshot_seq
        try:
            lines = self.journal_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        except (OSError, ValueError) as exc:
            self._set_aside(self.journal_path, exc)
            lines = []
        for i, line in enumerate(lines):
            try:
                entry = json.loads(line)
                n = int(entry["n"])
            except (ValueError, KeyError, TypeError):
                if i < len(lines) - 1:
                    log.warning("%s: line %d unreadable; later progress ignored (a replay may "
                                "repeat a few events)", self.journal_path, i + 1)
                break  # a torn last line from a crash mid-append
            if n <= snapshot_seq:
                continue  # already folded into the snapshot
            self._apply(entry)
            self._seq = max(self._seq, n)
            self._journal_lines += 1
            self._journal_bytes += len(line) + 1

    def _set_aside(self, path: Path, exc: BaseException) -> None:
        aside: Path | str | None
        try:
            aside = set_aside(path, "bad", stamp=False)
        except OSError as err:
            aside = f"nowhere ({err})"
        log.error("unreadable LoRaWAN state %s (%s): moved to %s; streams replay "
                  "ChirpStack's history and rely on deduplication", path, exc, aside)

    # -- queries ---------------------------------------------------------------------------

    def device(self, dev_eui: str) -> DeviceProgress:
        """The progress of ``dev_eui``, created empty if unknown."""
        d = self.devices.get(dev_eui)
        if d is None:
            d = self.devices[dev_eui] = DeviceProgress(dedup=deque(maxlen=self.dedup_memory))
        return d

    def already_seen(self, dev_eui: str, cursor: str) -> bool:
        """Whether a LogItem id is at or before the device's saved cursor (a replay)."""
        d = self.devices.get(dev_eui)
        if d is None or not d.cursor:
            return False
        new, old = cursor_key(cursor), cursor_key(d.cursor)
        if new is None or old is None:
            return False  # not ChirpStack's id format: fall back to deduplication ids
        return new <= old

    def is_duplicate(self, dev_eui: str, dedup_id: str) -> bool:
        """Whether an event with this deduplication id was already accepted."""
        d = self.devices.get(dev_eui)
        return bool(dedup_id) and d is not None and dedup_id in d.dedup

    # -- changes -----------------------------------------------------------------------------

    def _apply(self, e: dict[str, Any]) -> None:
        eui = str(e["d"])
        if e.get("forget"):
            self.devices.pop(eui, None)
            return
        d = self.device(eui)
        cursor = str(e.get("c") or "")
        if cursor:
            key, old = cursor_key(cursor), cursor_key(d.cursor) if d.cursor else None
            if old is None or key is None or key > old:
                d.cursor = cursor
        dedup_id = str(e.get("x") or "")
        if dedup_id and dedup_id not in d.dedup:
            d.dedup.append(dedup_id)
        if e.get("f") is not None:
            d.f_cnt = int(e["f"])
        if "i" in e:
            d.info = {str(k): str(v) for k, v in e["i"].items()}

    def _change(self, entry: dict[str, Any]) -> None:
        self._seq += 1
        entry["n"] = self._seq
        self._apply(entry)
        self._pending.append(entry)

    def record(self, dev_eui: str, *, cursor: str = "", dedup_id: str = "",
               f_cnt: int | None = None) -> None:
        """Note progress in memory; :meth:`save` writes it."""
        entry: dict[str, Any] = {"d": dev_eui}
        if cursor:
            entry["c"] = cursor
        if dedup_id:
            entry["x"] = dedup_id
        if f_cnt is not None:
            entry["f"] = f_cnt
        if len(entry) > 1:
            self._change(entry)

    def set_info(self, dev_eui: str, info: dict[str, str]) -> None:
        """Remember what discovery said about a device (used when ChirpStack is away)."""
        if self.device(dev_eui).info != info:
            self._change({"d": dev_eui, "i": dict(info)})

    def forget(self, dev_eui: str) -> None:
        """Drop a device that ChirpStack no longer has."""
        if dev_eui in self.devices:
            self._change({"d": dev_eui, "forget": True})

    # -- writing -----------------------------------------------------------------------------

    def _snapshot(self) -> str:
        devices: dict[str, Any] = {}
        for eui, d in self.devices.items():
            devices[eui] = {"cursor": d.cursor, "f_cnt": d.f_cnt, "dedup": list(d.dedup),
                            "info": d.info}
        return json.dumps({"version": VERSION, "seq": self._seq, "devices": devices},
                          separators=(",", ":"))

    def _append(self, text: str, sync: bool) -> None:
        f = self._journal
        if f is None:
            # kept open: opening the file per event costs more than writing the line
            f = self._journal = open(self.journal_path, "a", encoding="utf-8")  # noqa: SIM115
        f.write(text)
        f.flush()
        if sync:
            os.fdatasync(f.fileno())

    def close(self) -> None:
        """Close the journal (call after a final :meth:`save`)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def _compact(self, text: str) -> None:
        write_atomic(self.path, text)
        # the snapshot holds everything up to its seq: journal lines at or below it are
        # skipped at load, so a crash between these two steps loses nothing
        self.close()
        with open(self.journal_path, "w", encoding="utf-8"):
            pass

    async def save(self, *, compact: bool = False) -> None:
        """Write what was recorded so far; concurrent callers share one write."""
        async with self._lock:
            if self._pending:
                lines, self._pending = self._pending, []
                text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in lines)
                if self.fsync:
                    await asyncio.to_thread(self._append, text, True)
                else:
                    # ~100 bytes into the page cache: cheaper than a hop to a thread
                    self._append(text, False)
                self._journal_lines += len(lines)
                self._journal_bytes += len(text)
            # fold only once the journal outweighs the snapshot too, so that rewriting the
            # snapshot (large with many devices) costs no more per event than the journal
            due = (self._journal_lines >= self.compact_after
                   and self._journal_bytes >= self._snapshot_bytes)
            if self._journal_lines and (compact or due):
                text = self._snapshot()
                await asyncio.to_thread(self._compact, text)
                self._journal_lines = 0
                self._journal_bytes = 0
                self._snapshot_bytes = len(text)
