import json
import os
import subprocess
import sys

import pytest

from squishednets.errors import ConfigError
from squishednets.rundir import CONFIG_VERSION, RunDir
from squishednets.train import TrainConfig


def test_start_then_resume_with_one_rule(tmp_path):
    rd = RunDir.open(tmp_path / "r", TrainConfig(epochs=3), "train", extra={"x": 1}, check_extra=("x",))
    rd.finish("a", {"path": rd.rel(tmp_path / "r" / "sub" / "f.json")})
    doc = json.loads((tmp_path / "r" / "config.json").read_text())
    assert doc["config_version"] == CONFIG_VERSION and doc["stages"]["a"]["path"] == "sub/f.json"
    again = RunDir.open(tmp_path / "r", TrainConfig(epochs=3, threads=1), "train", extra={"x": 1}, check_extra=("x",))
    assert again.resumed and again.done("a")
    with pytest.raises(ConfigError, match=r"other settings \(epochs\)"):
        RunDir.open(tmp_path / "r", TrainConfig(epochs=4), "train")
    with pytest.raises(ConfigError, match=r"other settings \(x\)"):
        RunDir.open(tmp_path / "r", TrainConfig(epochs=3), "train", extra={"x": 2}, check_extra=("x",))


def test_refuses_other_kinds_versions_files_and_foreign_folders(tmp_path):
    RunDir.open(tmp_path / "r", TrainConfig(), "train")
    with pytest.raises(ConfigError, match="'train' folder"):
        RunDir.open(tmp_path / "r", TrainConfig(), "evolve")
    f = tmp_path / "r" / "config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "config_version": 1}))
    with pytest.raises(ConfigError, match="config version 1"):
        RunDir.open(tmp_path / "r", TrainConfig(), "train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunDir.open(tmp_path / "file", TrainConfig(), "train")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a 'train' run folder"):
        RunDir.open(tmp_path / "other", TrainConfig(), "train")
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep"


def test_a_folder_killed_before_its_first_config_landed_is_started(tmp_path):
    # kill -9 between mkdir and the rename of the first config.json leaves only
    # the atomic write's temporary file (the CI failure of explore's kill test).
    root = tmp_path / "r"
    root.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid no process has now
    (root / f".config.json.tmp{dead.pid}").write_text("{half")
    rd = RunDir.open(root, TrainConfig(), "train")
    assert not rd.resumed and sorted(p.name for p in root.iterdir()) == ["config.json"]
    # A leftover beside anything else is still somebody's folder: refused, untouched.
    other = tmp_path / "o"
    other.mkdir()
    (other / ".config.json.tmp1").write_text("x")
    (other / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a 'train' run folder"):
        RunDir.open(other, TrainConfig(), "train")
    assert sorted(p.name for p in other.iterdir()) == [".config.json.tmp1", "precious.txt"]
    # Hidden files that merely look temporary are the user's, and a live writer's file is left to it.
    for name, make in ((".notes.old", "dir"), (".thesis.tex.tmp", "file"), (f".config.json.tmp{os.getpid()}", "file")):
        d = tmp_path / name.strip(".").replace(".", "_")
        d.mkdir()
        (d / name).mkdir() if make == "dir" else (d / name).write_text("keep")
        with pytest.raises(ConfigError, match="not a 'train' run folder"):
            RunDir.open(d, TrainConfig(), "train")
        assert (d / name).exists()
