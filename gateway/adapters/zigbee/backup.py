"""Coordinator backups as Open Coordinator Backup JSON files in the state directory.

zigpy keeps its own backups inside its database; these files are the copy a person can
carry to a new stick: ``backup.json`` is always the latest, ``backup-<UTC time>.json``
the history (the oldest beyond ``backups_kept`` are deleted). On start, a database
without any backup (lost or new) is seeded from ``backup.json``, so a replaced stick
comes up with the old network instead of forming a new one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gateway.core.files import write_atomic

LATEST = "backup.json"


def export(directory: Path, backup: Any, keep: int, now: float | None = None) -> Path:
    """Write ``backup`` (a zigpy ``NetworkBackup``) as OCB JSON; return the dated file."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(backup.as_open_coordinator_json(), indent=2, sort_keys=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    dated = directory / f"backup-{stamp}.json"
    write_atomic(dated, text)
    write_atomic(directory / LATEST, text)
    history = sorted(p for p in directory.glob("backup-*.json"))
    for old in history[:-keep]:
        old.unlink(missing_ok=True)
    return dated


def load_latest(directory: Path) -> Any | None:
    """The latest exported backup as a zigpy ``NetworkBackup``, or None."""
    from zigpy.backups import NetworkBackup

    path = directory / LATEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable backup ({exc})") from None
    try:
        return NetworkBackup.from_open_coordinator_json(data)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an Open Coordinator Backup ({exc})") from None
