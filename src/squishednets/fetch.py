"""A data set at a URL, fetched once per machine.

``explore`` and ``evolve`` send their design points and candidates to Ray
tasks on nodes that may share no file system with the driver: each task must
read its data "from a path or URL every node can reach". A path is used as
it is; a URL (``http://``, ``https://``, ``file://``) of a ``.tar``,
``.tar.gz``/``.tgz`` or ``.zip`` archive of a class-per-folder data set
(``train/<class>/…`` and ``val/`` or ``test/``, at the top or inside one
folder) is downloaded and unpacked into ``<cache>/datasets/<hash of the
URL>/`` the first time a process on that machine asks for it, and read from
there afterwards.

One process fetches at a time (a lock file beside the copy; the others wait,
then read its copy), a download shorter than its ``Content-Length`` or an
archive without ``train/`` and ``val/``/``test/`` is refused before anything
looks fetched, and the copy appears by one rename only when complete, so a
killed fetch leaves nothing that looks finished (its temporary folder goes
at the next fetch). A URL names one archive for good: publish a changed data
set under a new URL, or delete the cached folder the errors name.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from .errors import DataError, StorageError

__all__ = ["is_url", "local_data", "location"]

SCHEMES = ("http://", "https://", "file://")
ARCHIVES = (".tar", ".tar.gz", ".tgz", ".zip")
_TIMEOUT_S = 60
_IGNORED = ("__MACOSX",)  # what macOS Finder adds beside the data in a zip


def is_url(data: str | Path) -> bool:
    return isinstance(data, str) and data.lower().startswith(SCHEMES)


def location(data: str | Path) -> str:
    """``data`` as a task on another machine or in another folder can use it:
    a URL unchanged, a path made absolute."""
    return str(data) if is_url(data) else str(Path(data).resolve())


def local_data(data: str | Path, cache: Path) -> Path:
    """The local folder of ``data``: ``data`` itself for a path, else the
    unpacked copy of the archive at the URL under ``cache/datasets`` (fetched
    now when this machine has none)."""
    if not is_url(data):
        return Path(data)
    url = str(data)
    name = urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1].lower()
    if not name.endswith(ARCHIVES):
        raise DataError(f"--data {url} is not a .tar, .tar.gz, .tgz or .zip archive; pass the URL of an archive "
                        "of a class-per-folder data set, or a folder")
    final = Path(cache) / "datasets" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if not final.is_dir():
        _fetch(url, final, "archive.zip" if name.endswith(".zip") else "archive.tar")
    root = _data_root(final)
    if root is None:  # only a copy changed by hand after its fetch gets here
        raise DataError(f"the copy of --data {url} in {final} holds no train/ with val/ or test/; delete {final} "
                        "and run the command again")
    return root


def _storage(e: OSError, where: Path) -> StorageError:
    return StorageError(f"cannot write the data cache {where} ({e.strerror or e}); free space there or point "
                        "--cache-dir (or $SQUISHEDNETS_CACHE) at a writable folder")


def _unreachable(url: str, e: BaseException) -> DataError:
    reason = getattr(e, "reason", None) or e
    return DataError(f"cannot fetch --data {url} ({reason}); check the address and the network, or copy the data "
                     "set to a folder this machine can read and pass that folder")


def _fetch(url: str, final: Path, archive_name: str) -> None:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = open(final.with_name(final.name + ".lock"), "a")
    except OSError as e:
        raise _storage(e, final.parent) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the with block closes the file
        if final.is_dir():
            return  # another process fetched it while this one waited
        for old in final.parent.glob(f".{final.name}.*"):  # killed fetches': nobody else fetches now
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        except OSError as e:
            raise _storage(e, final.parent) from None
        try:
            archive = tmp / archive_name
            _download(url, archive, final.parent)
            unpacked = tmp / "data"
            _unpack(url, archive, unpacked, final.parent)
            archive.unlink()
            if _data_root(unpacked) is None:
                raise DataError(f"the archive at --data {url} holds no train/ with val/ or test/ (at its top or "
                                "inside one folder); pack a class-per-folder data set")
            os.rename(unpacked, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _download(url: str, archive: Path, cache: Path) -> None:
    try:
        f = open(archive, "wb")
    except OSError as e:
        raise _storage(e, cache) from None
    with f:
        try:
            r = urllib.request.urlopen(url, timeout=_TIMEOUT_S)
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, OSError, ValueError) as e:
            raise _unreachable(url, e) from None
        with r:
            expected = r.headers.get("Content-Length") if hasattr(r, "headers") else None
            got = 0
            while True:
                try:
                    chunk = r.read(1 << 20)
                except (http.client.HTTPException, OSError) as e:
                    raise _unreachable(url, e) from None
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as e:
                    raise _storage(e, cache) from None
                got += len(chunk)
    if expected is not None and expected.isdigit() and got != int(expected):
        raise DataError(f"--data {url} came back cut short ({got} of {expected} bytes); run the command again")


def _unpack(url: str, archive: Path, out: Path, cache: Path) -> None:
    if archive.suffix == ".tar" and not hasattr(tarfile, "data_filter"):
        raise DataError("this Python's tarfile has no 'data' extraction filter (3.10.12+, 3.11.4+), which keeps an "
                        f"archive's files inside its folder; upgrade Python, or unpack --data {url} yourself and "
                        "pass the folder")
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                z.extractall(out)  # zipfile drops absolute and '..' parts of member names
        else:
            with tarfile.open(archive) as t:
                t.extractall(out, filter="data")  # refuses members that would land outside, links included
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, RuntimeError, NotImplementedError,
            ValueError) as e:
        raise DataError(f"--data {url} is not a readable archive ({type(e).__name__}: {e}); pass the URL of a "
                        ".tar, .tar.gz, .tgz or .zip of a class-per-folder data set") from None
    except OSError as e:
        raise _storage(e, cache) from None


def _has_splits(d: Path) -> bool:
    return (d / "train").is_dir() and ((d / "val").is_dir() or (d / "test").is_dir())


def _data_root(folder: Path) -> Path | None:
    """The data set's folder in an unpacked archive: its top, or the one
    folder in it that holds the splits (macOS's ``__MACOSX`` and hidden
    folders aside)."""
    if _has_splits(folder):
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED]
    found = [p for p in subs if _has_splits(p)]
    return found[0] if len(found) == 1 else None
