import json

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


def test_a_new_folder_appears_only_with_its_config(tmp_path, monkeypatch):
    # kill -9 while a folder is made (the CI failure of explore's kill test) can
    # only leave the sibling temporary folder: the run folder itself is absent,
    # and the same command starts it and clears the leftover.
    root = tmp_path / "r"
    (tmp_path / ".r.tmp").mkdir()
    (tmp_path / ".r.tmp" / ".config.json.tmp4242").write_text("{half")
    rd = RunDir.open(root, TrainConfig(), "train")
    assert not rd.resumed and sorted(p.name for p in root.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    # A failure while writing the config leaves no run folder behind.
    import squishednets.rundir as rundir

    def boom(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "atomic_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        RunDir.open(tmp_path / "s", TrainConfig(), "train")
    assert not (tmp_path / "s").exists() and not (tmp_path / ".s.tmp").exists()
    monkeypatch.undo()
    # An empty folder the user made is started in place.
    (tmp_path / "empty").mkdir()
    assert not RunDir.open(tmp_path / "empty", TrainConfig(), "train").resumed
    assert (tmp_path / "empty" / "config.json").is_file()
    # Anything else in the folder is somebody's: refused and left untouched.
    for name, make in ((".notes.old", "dir"), (".thesis.tex.tmp", "file"), (".config.json.tmp1", "file")):
        d = tmp_path / name.strip(".").replace(".", "_")
        d.mkdir()
        (d / name).mkdir() if make == "dir" else (d / name).write_text("keep")
        with pytest.raises(ConfigError, match="not a 'train' run folder"):
            RunDir.open(d, TrainConfig(), "train")
        assert (d / name).exists()
