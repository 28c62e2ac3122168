"""State files: atomic replacement, and setting aside a file that cannot be read.

Every file the gateway keeps in its state directory (device registry, rule state,
LoRaWAN progress, Zigbee backups, ...) is written through :func:`write_atomic` or
:func:`write_json_atomic`, so a crash or a power cut at any moment leaves either the
old content or the new one, never a torn file:

1. the bytes go to a new temporary file in the same directory (a unique name created
   with ``O_EXCL``, so two writers never share it; removed again on any error),
2. that file is fsync'd, so its data is on the disk before its name is,
3. it is renamed over the target (``os.replace``, atomic on POSIX filesystems),
4. the directory is fsync'd, so the rename itself survives a power cut.

See rename(2) and fsync(2) ("calling fsync() does not necessarily ensure that the
entry in the directory containing the file has also reached disk. For that an
explicit fsync() on a file descriptor for the directory is also needed"):
https://man7.org/linux/man-pages/man2/fsync.2.html

A file that exists but cannot be read is not deleted: :func:`set_aside` renames it to
``<name>.<reason>-<UTC stamp>`` (never over an earlier one) for a person to look at,
so the component can start afresh. SQLite databases move together with their
``-wal``/``-shm`` companions (https://www.sqlite.org/tempfiles.html), which keep the
same relation to the new name, so SQLite can still open the copy set aside.

All functions block (small files, or a rename): callers on the event loop run them in
a thread as they did before.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeAlias

log = logging.getLogger("gateway.files")

#: permission bits of a new file before the umask, as ``open(path, "w")`` gives
DEFAULT_MODE = 0o666
#: how many unique temporary or set-aside names are tried before giving up
_ATTEMPTS = 100
#: errors of a directory fsync that mean "this filesystem cannot", not "the disk failed"
_DIR_SYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})

StrPath: TypeAlias = "str | os.PathLike[str]"


def fsync_directory(directory: StrPath) -> None:
    """Flush ``directory``'s entries (new, renamed, removed names) to the disk.

    A filesystem that cannot sync a directory (``EINVAL``/``EOPNOTSUPP``, some FUSE and
    network filesystems) is accepted silently; any other error is raised.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_SYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _create_temp(path: Path, mode: int) -> tuple[int, Path]:
    """A new, empty, exclusively created file beside ``path``: its descriptor and name."""
    for _ in range(_ATTEMPTS):
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
        return fd, tmp
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_atomic(path: StrPath, data: bytes | str, *, mode: int = DEFAULT_MODE) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    ``str`` data is written as UTF-8. ``mode`` is the permission of the new file before
    the umask (the default, ``0o666``, gives what ``open(path, "w")`` gives; pass
    ``0o600`` for a file only the gateway's user may read). On any error the temporary
    file is removed, ``path`` keeps its old content and the error is raised; an error
    of the final directory fsync is raised after ``path`` was already replaced.
    """
    target = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = _create_temp(target, mode)
    try:
        try:
            _write_all(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(target.parent)


def write_json_atomic(path: StrPath, obj: Any, *, mode: int = DEFAULT_MODE,
                      **json_kwargs: Any) -> None:
    """:func:`write_atomic` of ``json.dumps(obj, **json_kwargs)``.

    The object is serialised before any file is created: one that JSON cannot represent
    raises ``TypeError``/``ValueError`` and leaves the directory untouched.
    """
    write_atomic(path, json.dumps(obj, **json_kwargs), mode=mode)


def _stamp(now: float | None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def _free_name(path: Path, base: str, suffixes: tuple[str, ...]) -> Path:
    """``base`` or ``base-<n>`` beside ``path``, free for the main file and each suffix."""
    for n in range(_ATTEMPTS):
        name = base if n == 0 else f"{base}-{n}"
        aside = path.with_name(name)
        if not any(os.path.lexists(f"{aside}{suffix}") for suffix in ("", *suffixes)):
            return aside
    raise FileExistsError(errno.EEXIST, f"no free name to set {path} aside as {base}-<n>")


def set_aside(path: StrPath, reason: str = "corrupt", *, suffixes: Iterable[str] = (),
              stamp: bool = True, now: float | None = None) -> Path | None:
    """Rename an unreadable file out of the way; return its new path, or None if absent.

    The new name is ``<name>.<reason>-<UTC stamp>`` (``20240131T235959Z``; with
    ``stamp=False`` just ``<name>.<reason>``); if that is taken, ``-1``, ``-2``, ... is
    appended, so an earlier file set aside is never overwritten. Each of ``suffixes``
    names a companion file (``path`` + suffix, e.g. SQLite's ``"-wal"``, ``"-shm"``)
    that, if present, moves to the new name + the same suffix. Logs one WARNING naming
    the old and new paths, then fsyncs the directory. A failed rename raises
    ``OSError`` (companions moved before it stay moved).
    """
    src = Path(path)
    extra = tuple(suffixes)
    present = [s for s in ("", *extra) if os.path.lexists(f"{src}{s}")]
    if not present:
        return None
    base = f"{src.name}.{reason}-{_stamp(now)}" if stamp else f"{src.name}.{reason}"
    aside = _free_name(src, base, extra)
    for suffix in present:
        os.replace(f"{src}{suffix}", f"{aside}{suffix}")
    companions = ", ".join(s for s in present if s)
    log.warning("set aside %s as %s%s", src, aside, f" (with {companions})" if companions else "")
    fsync_directory(src.parent)
    return aside
