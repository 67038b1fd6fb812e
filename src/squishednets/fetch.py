"""A data set at a URL, fetched once per machine.

``explore`` and ``evolve`` send their design points and candidates to Ray
tasks on nodes that may share no file system with the driver: each task must
read its data "from a path or URL every node can reach". A path is used as
it is; a URL (``http://``, ``https://``, ``file://``) of a ``.tar``,
``.tar.gz``/``.tgz`` or ``.zip`` archive of a class-per-folder data set
(``train/<class>/…`` and ``val/`` or ``test/``, at the top or inside one
folder) is downloaded and unpacked into ``<cache>/datasets/<hash of the
URL>/`` the first time a process on that machine asks for it, and read from
there afterwards. The folder appears by one rename only when complete, so a
killed fetch leaves nothing that looks finished and two tasks fetching at
once both end up reading the same complete copy. A URL names one archive
for good: publish a changed data set under a new URL (or delete the cached
folder).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .errors import DataError

__all__ = ["is_url", "local_data", "location"]

SCHEMES = ("http://", "https://", "file://")
_TIMEOUT_S = 60


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
    final = cache / "datasets" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if not final.is_dir():
        _fetch(url, final)
    return _data_root(final, url)


def _fetch(url: str, final: Path) -> None:
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0].lower()
    if not name.endswith((".tar", ".tar.gz", ".tgz", ".zip")):
        raise DataError(f"--data {url} is not a .tar, .tar.gz, .tgz or .zip archive; pass the URL of an archive "
                        "of a class-per-folder data set, or a folder")
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        archive = tmp / ("archive.zip" if name.endswith(".zip") else "archive.tar")
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(f"cannot fetch --data {url} ({reason}); check the address and the network, or copy "
                            "the data set to a folder this machine can read and pass that folder") from None
        unpacked = tmp / "data"
        try:
            if archive.suffix == ".zip":
                with zipfile.ZipFile(archive) as z:
                    z.extractall(unpacked)  # zipfile drops absolute and '..' parts of member names
            else:
                with tarfile.open(archive) as t:
                    t.extractall(unpacked, filter="data")  # refuses members that would land outside
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
            raise DataError(f"--data {url} is not a readable archive ({e}); pass the URL of a .tar, .tar.gz, "
                            ".tgz or .zip of a class-per-folder data set") from None
        archive.unlink()
        _data_root(unpacked, url)  # a wrong archive is refused before anything looks fetched
        try:
            os.rename(unpacked, final)
        except OSError:
            if not final.is_dir():  # another process's complete copy won the race otherwise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _data_root(folder: Path, url: str) -> Path:
    if (folder / "train").is_dir():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subs) == 1 and (subs[0] / "train").is_dir():
        return subs[0]
    raise DataError(f"the archive at --data {url} holds no train/ folder (at its top or inside one folder); "
                    "pack a class-per-folder data set with train/ and val/ (or test/)")
