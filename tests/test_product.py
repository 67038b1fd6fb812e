"""A small real lineage benchmarked and exported, and the whole `run` job on
tiny data (the unit tests of bench, export and the report are in
test_bench.py, test_export.py and test_report.py)."""

import dataclasses
import json
import shutil

import pytest
from test_bench import BENCH_KEYS

from squishednets.bench import BenchConfig, bench_target
from squishednets.cli import main
from squishednets.evolve import GENERATION_TRAIN, EvolveConfig, evolve
from squishednets.export import export_checkpoint
from squishednets.train import TrainConfig, run_training


@pytest.fixture(scope="module")
def real_lineage(tmp_path_factory):
    """A small real lineage: an ancestor trained on a few real photos, then 3 generations."""
    from conftest import REAL

    if not REAL.is_dir():
        pytest.skip("../shared/datasets/imagenette is not beside the checkout")
    root = tmp_path_factory.mktemp("lineage")
    data = root / "data"
    for split, n in (("train", 16), ("val", 6)):
        for wnid in sorted(p.name for p in (REAL / split).iterdir())[:3]:
            (data / split / wnid).mkdir(parents=True)
            for f in sorted((REAL / split / wnid).iterdir())[:n]:
                shutil.copy(f, data / split / wnid / f.name)
    cfg = TrainConfig(data=str(data), image_size=40, epochs=3, batch_size=12, threads=2, optimizer="adamw", lr=5e-3,
                      holdout=0.25)
    run_training(cfg, root / "anc", progress=False)
    evolve(root / "anc", root / "ev", EvolveConfig(
        generations=4, target_reduction=4.0, round_to=1,
        train=dataclasses.replace(GENERATION_TRAIN, epochs=1, batch_size=12, threads=2)), progress=False)
    return root


def test_bench_a_whole_lineage(real_lineage):
    r = bench_target(real_lineage / "ev", BenchConfig(image_size=40, runs=2, warmup=1, threads=1, min_time=0.0,
                                                      rounds=3, gemm_sizes=(128, 256)))
    assert len(r["models"]) == 5 and [m["generation"] for m in r["models"]] == [0, 1, 2, 3, 4]
    assert all(BENCH_KEYS <= set(m) for m in r["models"])
    for m in r["models"]:  # three interleaved rounds, each figure their median
        assert r["rounds"] == m["rounds"] == 3 and len(m["ort_b32_img_s_rounds"]) == 3
        assert m["ort_b32_img_s"] == sorted(m["ort_b32_img_s_rounds"])[1]
        assert m["ceiling_gflops"] == r["ceiling_gflops"] and 0 < m["ort_efficiency"] <= 1  # one ceiling per run
    assert (real_lineage / "ev" / "bench.json").exists()
    assert r["models"][-1]["size_mb"] < r["models"][0]["size_mb"]


def test_export_command_with_int8(real_lineage, tmp_path, capsys):
    ck = real_lineage / "ev" / "gen_04" / "model"
    info = export_checkpoint(ck, tmp_path / "m.onnx", int8=True, calib_images=32)
    assert info["int8_bytes"] < info["bytes"] and info["int8_mode"] == "reduce_range"
    assert 0 <= info["int8_test_top1"] <= 1 and 0 <= info["fp32_test_top1"] <= 1 and info["test_images"] == 18
    assert info["real_images"] == 18 and 0 <= info["real_top1_agreement"] <= 1  # the lineage's own val photos
    code = main(["export", str(ck), "--out", str(tmp_path / "x.txt")])
    assert code == 2 and "must end in .onnx" in capsys.readouterr().err


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
