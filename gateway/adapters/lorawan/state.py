"""Per-device progress that must survive restarts: stream cursor, recent dedup ids, frame counter.

One small JSON file per adapter in the state directory, replaced atomically. It is written
only after the readings it covers were accepted, so a replay after a crash starts no
later than the first reading that is not yet durable, and the remembered deduplication
ids keep what was already accepted from being accepted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway.adapter.lorawan")

VERSION = 1


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
    """Cursors and dedup memory of every device, saved as one JSON file."""

    def __init__(self, path: Path, dedup_memory: int = 16) -> None:
        self.path = path
        self.dedup_memory = dedup_memory
        self.devices: dict[str, DeviceProgress] = {}
        self._lock = asyncio.Lock()
        self._generation = 0
        self._saved_generation = 0

    def load(self) -> None:
        """Read the file if there is one; an unreadable file is set aside, not fatal."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            devices = raw["devices"]
            for eui, d in devices.items():
                self.devices[eui] = DeviceProgress(
                    cursor=str(d.get("cursor", "")),
                    f_cnt=d.get("f_cnt"),
                    dedup=deque((str(x) for x in d.get("dedup", [])), maxlen=self.dedup_memory),
                    info={str(k): str(v) for k, v in (d.get("info") or {}).items()},
                )
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_suffix(".bad")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.error("unreadable LoRaWAN state %s (%s): moved to %s; streams replay "
                      "ChirpStack's history and rely on deduplication", self.path, exc, aside)
            self.devices.clear()

    def device(self, dev_eui: str) -> DeviceProgress:
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
        d = self.devices.get(dev_eui)
        return bool(dedup_id) and d is not None and dedup_id in d.dedup

    def record(self, dev_eui: str, *, cursor: str = "", dedup_id: str = "",
               f_cnt: int | None = None) -> None:
        """Note progress in memory; :meth:`save` makes it durable."""
        d = self.device(dev_eui)
        if cursor:
            key, old = cursor_key(cursor), cursor_key(d.cursor) if d.cursor else None
            if old is None or key is None or key > old:
                d.cursor = cursor
        if dedup_id and dedup_id not in d.dedup:
            d.dedup.append(dedup_id)
        if f_cnt is not None:
            d.f_cnt = f_cnt
        self._generation += 1

    def set_info(self, dev_eui: str, info: dict[str, str]) -> None:
        d = self.device(dev_eui)
        if d.info != info:
            d.info = info
            self._generation += 1

    def forget(self, dev_eui: str) -> None:
        if self.devices.pop(dev_eui, None) is not None:
            self._generation += 1

    def _snapshot(self) -> str:
        devices: dict[str, Any] = {}
        for eui, d in self.devices.items():
            devices[eui] = {"cursor": d.cursor, "f_cnt": d.f_cnt, "dedup": list(d.dedup),
                            "info": d.info}
        return json.dumps({"version": VERSION, "devices": devices}, separators=(",", ":"))

    def _write(self, text: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    async def save(self) -> None:
        """Write everything recorded so far; concurrent callers share one write."""
        target = self._generation
        async with self._lock:
            if self._saved_generation >= target:
                return
            generation = self._generation
            text = self._snapshot()
            await asyncio.to_thread(self._write, text)
            self._saved_generation = generation
