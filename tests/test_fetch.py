"""A data set at a URL (``fetch``): what a Ray task on a node without the
driver's file system reads."""

from __future__ import annotations

import concurrent.futures
import functools
import http.server
import io
import shutil
import tarfile
import threading
import urllib.request
import zipfile

import pytest

from squishednets.data import check_dataset, load_splits
from squishednets.errors import DataError
from squishednets.fetch import is_url, local_data, location


def _tgz(folder, out, top="imagenette_tiny"):
    with tarfile.open(out, "w:gz") as t:
        t.add(folder, arcname=top)
    return out


@pytest.fixture
def served(tmp_path):
    """An HTTP server over tmp_path/www (a thread; stopped after the test)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_paths_stay_paths_and_urls_stay_urls(tmp_path):
    assert not is_url(str(tmp_path)) and is_url("https://example.org/d.tgz") and is_url("file:///x/d.zip")
    assert location("https://example.org/d.tgz") == "https://example.org/d.tgz"
    assert location("rel/data") == str((tmp_path.cwd() / "rel" / "data").resolve())
    assert local_data(tmp_path / "data", tmp_path / "cache") == tmp_path / "data"


def test_http_archive_is_fetched_once_and_loads_like_the_folder(tiny_data, tmp_path, served, monkeypatch):
    www, base = served
    _tgz(tiny_data, www / "tiny.tgz")
    url = f"{base}/tiny.tgz"
    cache = tmp_path / "cache"
    root = local_data(url, cache)
    assert root.parent.parent == cache / "datasets" and (root / "train").is_dir()
    # The second ask reads the copy: no request goes out.
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("fetched twice"))
    assert local_data(url, cache) == root
    monkeypatch.undo()
    # Through the data layer (its cache is $SQUISHEDNETS_CACHE): same classes and images as the folder.
    assert check_dataset(url) == check_dataset(tiny_data)
    a, b = load_splits(url, 32, 0.34, 0), load_splits(tiny_data, 32, 0.34, 0)
    assert a.classes == b.classes and a.train.images.equal(b.train.images) and a.test.images.equal(b.test.images)


def test_zip_over_file_url_at_the_top_or_beside_macos_folders(tiny_data, tmp_path):
    z = tmp_path / "tiny.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in sorted(tiny_data.rglob("*")):
            f.write(p, p.relative_to(tiny_data))
    root = local_data(z.as_uri(), tmp_path / "cache")
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]
    mac = tmp_path / "finder.zip"  # what macOS Finder's "Compress" makes
    with zipfile.ZipFile(mac, "w") as f:
        for p in sorted(tiny_data.rglob("*")):
            f.write(p, "tiny/" + str(p.relative_to(tiny_data)))
        f.writestr("__MACOSX/tiny/._train", b"resource fork")
    assert local_data(mac.as_uri(), tmp_path / "cache").name == "tiny"


def test_the_copy_lands_in_the_cache_it_is_given_and_one_process_fetches(tiny_data, tmp_path, served):
    www, base = served
    _tgz(tiny_data, www / "tiny.tgz")
    url = f"{base}/tiny.tgz"
    mine = tmp_path / "my_cache"
    assert check_dataset(url, mine) == check_dataset(tiny_data)
    assert (mine / "datasets").is_dir()
    # Several fetching at once: one downloads, the others wait for its copy.
    calls = []
    real = urllib.request.urlopen

    def counted(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    shared = tmp_path / "shared_cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(urllib.request, "urlopen", counted)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            roots = list(pool.map(lambda _: local_data(url, shared), range(4)))
    assert len(set(roots)) == 1 and len(calls) == 1


def test_unreachable_or_wrong_urls_fail_clearly_and_leave_nothing(tiny_data, tmp_path, served):
    www, base = served
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="cannot fetch --data .*copy the data set to a folder"):
        local_data(f"{base}/missing.tgz", cache)  # 404
    with pytest.raises(DataError, match="cannot fetch"):
        local_data("http://127.0.0.1:9/none.tgz", cache)  # nothing listens on the discard port
    with pytest.raises(DataError, match="not a .tar, .tar.gz, .tgz or .zip archive"):
        local_data(f"{base}/data/", cache)
    (www / "broken.tgz").write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match="not a readable archive"):
        local_data(f"{base}/broken.tgz", cache)
    (tiny_data / "train").rename(tiny_data / "training")
    _tgz(tiny_data, www / "notrain.tgz")
    with pytest.raises(DataError, match="holds no train/ with val/ or test/"):
        local_data(f"{base}/notrain.tgz", cache)
    # A member that would land outside the folder is refused by tarfile's data filter.
    evil = www / "evil.tar"
    with tarfile.open(evil, "w") as t:
        info = tarfile.TarInfo("../../../../escaped.txt")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError, match="not a readable archive"):
        local_data(f"{base}/evil.tar", cache)
    assert not any(p.exists() for p in (cache / "escaped.txt", cache / "datasets" / "escaped.txt",
                                       cache.parent / "escaped.txt", cache.parent.parent / "escaped.txt"))
    # A truncated download of a good archive, and one without val/ or test/.
    good = _tgz(tiny_data, www / "good.tgz").read_bytes()
    (www / "truncated.tgz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="not a readable archive"):
        local_data(f"{base}/truncated.tgz", cache)
    shutil.rmtree(tiny_data / "val")
    (tiny_data / "training").rename(tiny_data / "train")
    _tgz(tiny_data, www / "noval.tgz")
    with pytest.raises(DataError, match="holds no train/ with val/ or test/"):
        local_data(f"{base}/noval.tgz", cache)
    # Nothing half-fetched stays behind to be taken for a copy (only the lock file).
    assert [p.name for p in (cache / "datasets").iterdir() if not p.name.endswith(".lock")] == []


def test_train_reads_a_url(tiny_data, tmp_path, served):
    from squishednets.cli import main

    www, base = served
    _tgz(tiny_data, www / "tiny.tar.gz")
    shutil.rmtree(tiny_data)  # only the URL is left
    out = tmp_path / "run"
    assert main(["train", "--data", f"{base}/tiny.tar.gz", "--out", str(out), "--epochs", "1", "--image-size", "32",
                 "--batch-size", "8", "--threads", "1", "--holdout", "0.34", "--no-progress"]) == 0
    assert (out / "model" / "metrics.json").is_file()
