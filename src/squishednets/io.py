"""Atomic files and folders: a long run never leaves a half-written result.

A file is written to a temporary sibling, flushed to disk and renamed over
the target; a folder (a checkpoint) is written whole under a temporary name
and swapped in, so the previous version survives any interruption. A write
that fails for any reason removes its temporary file or folder, and a full,
over-quota or read-only device becomes a ``StorageError`` with a one-line
message instead of a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .errors import SquishedError, StorageError

__all__ = ["atomic_write_file", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_dir",
           "recover_dir", "read_json_object"]

# Errors the user fixes by making room or writing elsewhere, not by changing
# the command: each with the words and the fix its message gives.
_STORAGE_ERRNOS = {
    errno.ENOSPC: ("no space left on the device", "free space on the device or choose another --out"),
    errno.EDQUOT: ("disk quota exceeded", "free space on the device or choose another --out"),
    errno.EROFS: ("the file system is read-only", "choose another --out"),
}


def _storage_error(e: BaseException, path: Path) -> BaseException:
    """``e`` as a ``StorageError`` when it is a storage failure, else ``e``."""
    if isinstance(e, StorageError) or not isinstance(e, OSError) or e.errno not in _STORAGE_ERRNOS:
        return e
    what, fix = _STORAGE_ERRNOS[e.errno]
    return StorageError(f"cannot write {path}: {what}; {fix}", e.errno, str(path))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def atomic_write_file(path: str | Path, fill: Callable[[Path], None]) -> None:
    """Create or replace file ``path`` atomically: ``fill`` writes the whole
    file at the temporary path it is given (a sibling, so the rename stays on
    one device), which then takes the place of ``path``. If ``fill`` or the
    flush fails, the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _storage_error(e, path) from e
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fill(tmp)
        # Full devices often report ENOSPC only when the data is flushed.
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        err = _storage_error(e, path)
        if err is e:
            raise
        raise err from e
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write_file(path, fill)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json_object(path: str | Path, error: type[SquishedError], fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; anything else raises ``error`` with a
    one-line message naming the file and ending in ``fix``."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(d, dict):
        raise error(f"{path} does not hold a JSON object; {fix}")
    return d


def atomic_dir(path: str | Path, fill: Callable[[Path], None]) -> None:
    """Create or replace folder ``path`` atomically: ``fill`` writes into a
    temporary folder, which then takes the place of ``path``. If ``fill``
    raises or the process dies, ``path`` still holds its previous contents
    and no temporary folder is left behind."""
    path = Path(path)
    # One writer per folder; a fixed temporary name means a leftover from a
    # killed run is found and removed here rather than piling up.
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        fill(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                _fsync_file(f)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = _storage_error(e, path)
        if err is e:
            raise
        raise err from e
    # The swap only renames, so it needs no space; a crash between the two
    # renames leaves ``.old``, which ``recover_dir`` puts back.
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: str | Path) -> None:
    """After a crash between the two renames of ``atomic_dir``, only the
    ``.old`` folder exists: put it back."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.exists():
        os.replace(old, path)
