"""Atomic writers: whole files or nothing, no temporary leftovers, and a full
or read-only device as a one-line StorageError (monkeypatched: tests have no
small file system to fill)."""

import errno
import json
import os

import pytest

from squishednets import io as sio
from squishednets.errors import SquishedError, StorageError

FULL = "free space on the device or choose another --out"


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _raise(code):
    def f(*a, **k):
        raise OSError(code, os.strerror(code))

    return f


def test_atomic_write_replaces_the_whole_file(tmp_path):
    p = tmp_path / "sub" / "x.json"
    sio.atomic_write_json(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    sio.atomic_write_text(p, "two")
    assert p.read_text() == "two" and _hidden(p.parent) == []


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, FULL), (errno.EDQUOT, FULL),
                                         (errno.EROFS, "read-only; choose another --out")])
def test_full_device_in_a_file_write(tmp_path, monkeypatch, code, words):
    p = tmp_path / "x.bin"
    p.write_bytes(b"old")
    monkeypatch.setattr(sio.os, "fsync", _raise(code))  # full devices often fail at the flush
    with pytest.raises(StorageError) as ei:
        sio.atomic_write_bytes(p, b"new" * 1000)
    msg = str(ei.value)
    assert msg.startswith(f"cannot write {p}: ") and words in msg and "\n" not in msg
    assert isinstance(ei.value, SquishedError) and isinstance(ei.value, OSError) and ei.value.errno == code
    assert p.read_bytes() == b"old" and _hidden(tmp_path) == []


def test_failure_inside_the_writer_leaves_no_partial_file(tmp_path):
    p = tmp_path / "m.onnx"

    def fill(tmp):
        tmp.write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match=FULL):
        sio.atomic_write_file(p, fill)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc, kind", [(RuntimeError("boom"), RuntimeError),
                                       (OSError(errno.EACCES, "Permission denied"), PermissionError)])
def test_other_errors_pass_through_and_clean_up(tmp_path, exc, kind):
    def fill(tmp):
        tmp.write_bytes(b"x")
        raise exc

    with pytest.raises(kind) as ei:
        sio.atomic_write_file(tmp_path / "f", fill)
    assert not isinstance(ei.value, StorageError) and list(tmp_path.iterdir()) == []


def test_full_device_in_a_folder_write_keeps_the_old_folder(tmp_path):
    ck = tmp_path / "ck"
    sio.atomic_dir(ck, lambda t: (t / "a.txt").write_text("old"))

    def fill(t):
        (t / "a.txt").write_text("new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match=f"cannot write {ck}: no space left on the device; {FULL}"):
        sio.atomic_dir(ck, fill)
    assert (ck / "a.txt").read_text() == "old" and _hidden(tmp_path) == []


def test_checkpoint_save_on_a_full_device(tmp_path, monkeypatch):
    """Training saves through atomic_dir: a full disk is a StorageError and
    the previous checkpoint survives."""
    from squishednets import checkpoint
    from squishednets.genome import get_genome
    from squishednets.model import build

    m = build(get_genome("squeezenet1_1", 3))
    checkpoint.save_checkpoint(tmp_path / "model", m, {"top1": 0.5})
    real = checkpoint.save_file

    def half_then_full(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", half_then_full)
    with pytest.raises(StorageError, match=FULL):
        checkpoint.save_checkpoint(tmp_path / "model", m, {"top1": 0.9})
    assert checkpoint.load_checkpoint(tmp_path / "model").metrics == {"top1": 0.5}
    assert _hidden(tmp_path) == []


def test_read_json_object_names_the_file_and_the_fix(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"a": 1}')
    assert sio.read_json_object(f, StorageError, "fix it") == {"a": 1}
    for text, what in (("{not json", "is not valid JSON"), ("[1, 2]", "does not hold a JSON object")):
        f.write_text(text)
        with pytest.raises(StorageError, match=f"{what}.*; fix it$") as e:
            sio.read_json_object(f, StorageError, "fix it")
        assert str(f) in str(e.value) and "\n" not in str(e.value)
