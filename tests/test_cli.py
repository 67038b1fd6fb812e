import json
import subprocess
import sys

import pytest

from squishednets.cli import main
from squishednets.genome import get_genome


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_reference(capsys):
    code, out, _ = run(capsys, "info", "squeezenet1_1", "--classes", "10", "--json")
    d = json.loads(out)
    assert code == 0 and d["params"] == 727_626 and d["macs"] == 263_489_216
    assert d["size_mb"] == pytest.approx(2.910504)
    assert {"peak_activation_bytes", "layers"} <= set(d) and len(d["layers"]) > 20


def test_info_table_and_genome_file(capsys, tmp_path):
    f = tmp_path / "g.json"
    f.write_text(get_genome("squeezenet1_0", 4).to_json())
    code, out, _ = run(capsys, "info", f, "--image-size", "96")
    assert code == 0 and "fire9.expand3x3" in out and "parameters" in out and "96px" in out


def test_info_bad_genome_one_line(capsys, tmp_path):
    d = get_genome("squeezenet1_1", 10).to_dict()
    d["fires"][0]["squeeze"] = -1
    f = tmp_path / "g.json"
    f.write_text(json.dumps(d))
    code, out, err = run(capsys, "info", f)
    assert code == 2 and err.count("\n") == 1 and "squeeze must be >= 1" in err and err.startswith("error: ")


@pytest.mark.parametrize("target,msg", [("nothing-here", "neither a registered genome"),])
def test_info_unknown_target(capsys, target, msg):
    code, _, err = run(capsys, "info", target)
    assert code == 2 and msg in err


def test_train_eval_predict(capsys, tiny_data, tmp_path):
    out = tmp_path / "run"
    code, o, e = run(capsys, "train", "--data", tiny_data, "--out", out, "--image-size", "32", "--epochs", "2",
                     "--batch-size", "8", "--no-progress")
    assert code == 0, e
    assert "val top-1" in o and (out / "model" / "weights.safetensors").exists()
    code, o, _ = run(capsys, "eval", out, "--json")
    r = json.loads(o)
    assert code == 0 and r["n"] == 9 and len(r["per_class"]) == 3
    code, o, _ = run(capsys, "eval", out)
    assert "confusion" in o and "top-1" in o
    img = tiny_data / "val" / "b" / "b_0.jpg"
    code, o, _ = run(capsys, "predict", out, img, "--json", "--top", "2")
    p = json.loads(o)
    assert code == 0 and len(p[0]["predictions"]) == 2
    assert sum(q["probability"] for q in p[0]["predictions"]) <= 1.0 + 1e-6
    assert p[0]["predictions"][0]["class"] in ("a", "b", "c")
    # Training into the same folder again without --resume is refused, nothing lost.
    code, _, e = run(capsys, "train", "--data", tiny_data, "--out", out, "--image-size", "32", "--epochs", "2")
    assert code == 2 and "--resume" in e and (out / "model" / "weights.safetensors").exists()
    # --resume on a finished run returns its metrics at once.
    code, o, _ = run(capsys, "train", "--data", tiny_data, "--out", out, "--image-size", "32", "--epochs", "2",
                     "--batch-size", "8", "--resume", "--no-progress")
    assert code == 0 and "val top-1" in o


def test_predict_bad_image(capsys, tiny_data, tmp_path):
    from squishednets.checkpoint import save_checkpoint
    from squishednets.model import build

    from squishednets.train import TrainConfig, checkpoint_config

    save_checkpoint(tmp_path / "ck", build(get_genome("squeezenet1_1", 3)), {},
                    checkpoint_config(TrainConfig(image_size=32), ["a", "b", "c"]))
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    code, _, e = run(capsys, "predict", tmp_path / "ck", bad)
    assert code == 2 and "not a readable image" in e


@pytest.mark.parametrize("setup,msg", [
    ("missing", "does not exist"),
    ("file", "is a file"),
    ("empty", "is missing"),
])
def test_train_bad_data_one_line(capsys, tmp_path, setup, msg):
    p = tmp_path / "d"
    if setup == "file":
        p.write_text("x")
    elif setup == "empty":
        p.mkdir()
    code, _, e = run(capsys, "train", "--data", p, "--out", tmp_path / "run", "--no-progress")
    assert code == 2 and msg in e and e.count("\n") == 1


def test_config_file_unknown_key(capsys, tmp_path, tiny_data):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"epochs": 1, "learning_rate": 3}))
    code, _, e = run(capsys, "train", "--config", cfg, "--out", tmp_path / "r", "--data", tiny_data)
    assert code == 2 and "unknown key(s) ['learning_rate']" in e


def test_imagenet10_bad_input(capsys, tmp_path):
    code, _, e = run(capsys, "data", "imagenet10", "--ilsvrc", tmp_path / "none", "--out", tmp_path / "o")
    assert code == 2 and "does not exist" in e


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "squishednets.cli", "info", "squeezenet1_0", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["params"] == 1_248_424


def _bad_data(kind, tmp_path, tiny_data):
    """Make the bad input ``kind``; return (argv for `train`, expected message)."""
    out = ["--out", str(tmp_path / "run"), "--no-progress", "--image-size", "32", "--epochs", "1"]
    if kind == "missing":
        return ["--data", str(tmp_path / "nope")] + out, "does not exist"
    if kind == "file_for_folder":
        (tmp_path / "f").write_text("x")
        return ["--data", str(tmp_path / "f")] + out, "is a file, not a folder"
    if kind == "empty_folder":
        (tmp_path / "e" / "train").mkdir(parents=True)
        (tmp_path / "e" / "val").mkdir()
        return ["--data", str(tmp_path / "e")] + out, "has no class folders"
    if kind == "empty_class":
        (tiny_data / "train" / "zz").mkdir()
        return ["--data", str(tiny_data)] + out, "class 'zz'"
    if kind == "corrupt_jpeg":
        good = (tiny_data / "train" / "a" / "a_0.jpg").read_bytes()
        (tiny_data / "train" / "a" / "cut.jpg").write_bytes(good[:200])
        return ["--data", str(tiny_data), "--strict"] + out, "cut.jpg"
    if kind == "text_as_jpg":
        (tiny_data / "val" / "b" / "readme.jpg").write_text("not an image")
        return ["--data", str(tiny_data), "--strict"] + out, "readme.jpg"
    if kind == "class_mismatch":
        (tiny_data / "val" / "c").rename(tiny_data / "val" / "q")
        return ["--data", str(tiny_data)] + out, "different classes"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "file_for_folder", "empty_folder", "empty_class", "corrupt_jpeg",
                                  "text_as_jpg", "class_mismatch"])
def test_bad_data_through_the_cli(capsys, tmp_path, tiny_data, kind):
    argv, msg = _bad_data(kind, tmp_path, tiny_data)
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    code, out, err = run(capsys, "train", *argv)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and msg in err
    # No run folder was left behind to block the corrected command, and no input was touched.
    assert not (tmp_path / "run").exists()
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before


@pytest.mark.parametrize("change,msg", [
    (lambda d: d["fires"][1].update(expand1x1=-8), "expand1x1 must be >= 0"),
    (lambda d: d.update(width=2), "unknown key(s) ['width']"),
    (lambda d: d.update(version=0), "version 0 is not supported"),
])
def test_bad_genome_json_through_the_cli(capsys, tmp_path, change, msg):
    d = get_genome("squeezenet1_1", 10).to_dict()
    change(d)
    f = tmp_path / "g.json"
    f.write_text(json.dumps(d))
    code, _, err = run(capsys, "info", f)
    assert code == 2 and err.count("\n") == 1 and msg in err


def test_checkpoint_that_does_not_fit_through_the_cli(capsys, tmp_path):
    from safetensors.torch import load_file, save_file

    from squishednets.checkpoint import save_checkpoint
    from squishednets.model import build

    save_checkpoint(tmp_path / "ck", build(get_genome("squeezenet1_1", 3)), {}, {"image_size": 32})
    w = load_file(str(tmp_path / "ck" / "weights.safetensors"))
    del w["conv10.bias"]
    save_file(w, str(tmp_path / "ck" / "weights.safetensors"))
    code, _, err = run(capsys, "info", tmp_path / "ck")
    assert code == 2 and "weights do not fit the genome" in err and "conv10.bias" in err and err.count("\n") == 1


@pytest.mark.slow
def test_cli_bench_and_report(real_lineage, tmp_path, capsys):
    assert main(["bench", "squeezenet1_1", "--image-size", "48", "--runs", "2", "--min-time", "0", "--threads", "1",
                 "--gemm-sizes", "128,256", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["models"][0]["params"] == 727_626 and d["gemm_sizes"] == [128, 256]
    assert main(["bench", "squeezenet1_1", "--rounds", "0"]) == 2
    assert "rounds must be >= 1" in capsys.readouterr().err
    assert main(["report", str(real_lineage / "ev"), "--out", str(tmp_path / "r")]) == 0
    assert "Table 1" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 2
    assert "no lineage.json" in capsys.readouterr().err


def test_distillation_flags_reach_the_configurations(capsys):
    from squishednets.cli import build_parser
    from squishednets.config import flag_values
    ap = build_parser()
    ev = flag_values(ap.parse_args(["evolve", "ck", "--out", "o", "--distill", "parent", "--distill-temperature",
                                    "2", "--distill-weight", "0.9"]))
    assert ev == {"distill": "parent", "train": {"distill_temperature": 2.0, "distill_weight": 0.9}}
    assert flag_values(ap.parse_args(["run", "--distill", "ancestor"])) == {"evolve": {"distill": "ancestor"}}
    assert flag_values(ap.parse_args(["train", "--out", "o", "--teacher", "t"]))["teacher"] == "t"
    with pytest.raises(SystemExit):  # offspring are taught by --distill, not by a checkpoint flag
        ap.parse_args(["evolve", "ck", "--out", "o", "--train-teacher", "t"])
    with pytest.raises(SystemExit):
        ap.parse_args(["evolve", "ck", "--out", "o", "--distill", "teacher"])
    capsys.readouterr()
