"""The whole `run` job on tiny data: stages, resume, the three-set rule, presets and flags."""

import json
import random

import pytest

from squishednets.cli import main
from squishednets.pipeline import PRESETS, RunConfig

ARGS = ["--image-size", "32", "--ancestor-epochs", "2", "--generations", "2", "--epochs-per-generation", "1",
        "--target-size-mb", "1.0", "--threads", "1", "--bench-runs", "2", "--bench-min-time", "0",
        "--bench-rounds", "1", "--bench-gemm-sizes", "128", "--no-progress"]


def test_run_whole_job_and_resume(tiny_data, tmp_path, capsys):
    job = tmp_path / "job"
    args = ["run", "--data", str(tiny_data), "--out", str(job), "--int8", "reduce_range", *ARGS]
    assert main(args) == 0
    out = capsys.readouterr().out
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert stage in out
    assert (job / "report" / "report.html").exists() and (job / "export" / "ancestor.onnx").exists()
    exports = json.loads((job / "export" / "export.json").read_text())
    assert exports[0]["name"] == "ancestor" and all(e["selected_by"] == "heldout" for e in exports)
    assert all({"heldout_top1", "test_top1"} <= set(e) for e in exports)
    # int8 when asked for: measured beside fp32, with the mode and the CPU flags, and on the report's page.
    assert all(e["int8_mode"] == "reduce_range" and "avx2" in e["cpu_flags"] and 0 <= e["int8_test_top1"] <= 1
               and (job / e["int8_path"]).is_file() for e in exports)
    assert 'id="exports"' in (job / "report" / "report.html").read_text()
    state = json.loads((job / "config.json").read_text())
    assert state["kind"] == "run" and set(state["stages"]) == {"ancestor", "evolve", "bench", "report", "export"}
    mtime = (job / "evolve" / "gen_02" / "model" / "weights.safetensors").stat().st_mtime_ns
    assert main(args) == 0  # resumes: nothing is trained again
    assert (job / "evolve" / "gen_02" / "model" / "weights.safetensors").stat().st_mtime_ns == mtime
    capsys.readouterr()
    changed = list(args)
    changed[changed.index("--generations") + 1] = "3"
    assert main(changed) == 2
    assert "other settings (evolve.generations)" in capsys.readouterr().err


def test_test_labels_choose_nothing(tiny_data, tmp_path, capsys):
    """Shuffle the val (test) labels: the lineage, the chosen SquishedNets,
    the exports and every held-out figure stay the same; only test figures move."""
    runs = {}
    for name in ("a", "b"):
        data = tmp_path / f"data_{name}"
        import shutil

        shutil.copytree(tiny_data, data)
        if name == "b":  # move every val image to a random class folder
            files = sorted((data / "val").rglob("*.jpg"))
            classes = sorted(p.name for p in (data / "val").iterdir())
            rng = random.Random(0)
            for f in files:
                f.rename(data / "val" / rng.choice(classes) / f"moved_{f.parent.name}_{f.name}")
        job = tmp_path / f"job_{name}"
        assert main(["run", "--data", str(data), "--out", str(job), *ARGS]) == 0
        runs[name] = job
    capsys.readouterr()
    ea = json.loads((runs["a"] / "export" / "export.json").read_text())
    eb = json.loads((runs["b"] / "export" / "export.json").read_text())
    assert [(e["name"], e["generation"], e["size_mb"], e["heldout_top1"]) for e in ea] == \
           [(e["name"], e["generation"], e["size_mb"], e["heldout_top1"]) for e in eb]
    la = json.loads((runs["a"] / "evolve" / "lineage.json").read_text())["generations"]
    lb = json.loads((runs["b"] / "evolve" / "lineage.json").read_text())["generations"]
    assert [(g["widths"], g["heldout_top1"]) for g in la] == [(g["widths"], g["heldout_top1"]) for g in lb]
    ra = json.loads((runs["a"] / "report" / "table1.json").read_text())
    rb = json.loads((runs["b"] / "report" / "table1.json").read_text())
    assert ra["chosen_generations"] == rb["chosen_generations"]


def test_config_file_then_preset_then_flags(tmp_path, capsys):
    """--config FILE < --preset < explicit flags, down to nested fields."""
    from squishednets.config import resolve

    f = tmp_path / "c.json"
    f.write_text(json.dumps({"ancestor": {"epochs": 7, "image_size": 96}, "evolve": {"generations": 4}}))
    cfg = resolve(RunConfig, f)
    assert (cfg.ancestor.epochs, cfg.ancestor.image_size, cfg.evolve.generations) == (7, 96, 4)
    cfg = resolve(RunConfig, f, preset=PRESETS["paper"])
    assert (cfg.ancestor.epochs, cfg.ancestor.image_size, cfg.evolve.generations) == (90, 224, 4)
    assert cfg.evolve.train.epochs == 20 and cfg.evolve.target_macs_reduction is None
    cfg = resolve(RunConfig, f, preset=PRESETS["paper"], flags={"ancestor": {"epochs": 3}})
    assert cfg.ancestor.epochs == 3 and cfg.ancestor.image_size == 224


def test_run_with_bad_data_pins_nothing(tmp_path, capsys):
    job = tmp_path / "job"
    assert main(["run", "--data", str(tmp_path / "nope"), "--out", str(job), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err and not job.exists()


@pytest.mark.parametrize("flags,msg", [
    (["--target-macs-reduction", "0.5"], "--target-macs-reduction must be > 1"),
    (["--round-to", "0"], "--min-width and --round-to must be >= 1"),
    (["--holdout", "1.5"], "holdout must be in (0, 1)"),
    (["--image-size", "big"], "--image-size takes int"),
])
def test_bad_run_options_one_line(tmp_path, tiny_data, capsys, flags, msg):
    job = tmp_path / "job"
    with pytest.raises(SystemExit) if "takes" in msg else _nothing():
        code = main(["run", "--data", str(tiny_data), "--out", str(job), *flags])
        assert code == 2
    assert msg in capsys.readouterr().err and not job.exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
