"""The benchmark runner: the JSON schema, the best-GEMM ceiling and the rule
that no efficiency exceeds 100%, the theoretical peak, rounds, and the
command line that benchmark scripts record. No timing thresholds: only
relations that hold on any CPU."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from conftest import bn_model
from squishednets.bench import (CPU_FLAGS, BenchConfig, _apply_ceiling, bench_model, bench_target, clock_mhz,
                                gemm_ceiling, machine_info, merge_rounds, theoretical_peak_gflops)
from squishednets.errors import ConfigError

BENCH_KEYS = {"params", "size_mb", "macs", "peak_activation_bytes", "params_plus_activations_kb", "fits_budget",
              "eager_b32_img_s", "cl_b32_img_s", "ort_b32_img_s", "eager_b1_ms", "cl_b1_ms", "ort_b1_ms",
              "ort_efficiency", "ort_peak_efficiency", "ort_gflops", "matmul_gflops", "gemm_ceiling_gflops",
              "ceiling_gflops", "ceiling_exceeded", "theoretical_peak_gflops", "peak_exceeded", "gemm_sizes",
              "threads", "machine_busy", "onnx_bytes", "image_size"}
QUICK = dict(image_size=48, runs=3, warmup=1, threads=1, min_time=0.0, gemm_sizes=(96, 128), gemm_repeats=2)
ROOT = Path(__file__).resolve().parents[1]


def _efficiencies(r):
    return [r[f"{p}_efficiency"] for p in ("eager", "cl", "ort") if f"{p}_efficiency" in r]


@pytest.mark.parametrize("bad, words", [(dict(rounds=0), "rounds must be >= 1, got 0"),
                                        (dict(threads=0), "threads must be >= 1 or off"),
                                        (dict(backends=("tvm",)), "backends must be some of eager"),
                                        (dict(gemm_sizes=()), "gemm_sizes must be positive")])
def test_bench_config_is_checked(bad, words):
    with pytest.raises(ConfigError, match=words):
        BenchConfig(**bad)


def test_machine_info_has_cpu_flags():
    info = machine_info()
    assert set(info["cpu_flags"]) == set(CPU_FLAGS) and all(isinstance(v, bool) for v in info["cpu_flags"].values())


def test_clock_prefers_cpufreq_max(tmp_path):
    f = tmp_path / "cpuinfo_max_freq"
    f.write_text("3500000\n")  # kHz
    text = "cpu MHz\t\t: 2445.404\ncpu MHz\t\t: 2600.0\n"
    assert clock_mhz(text, f) == 3500.0
    assert clock_mhz(text, tmp_path / "missing") == 2600.0
    assert clock_mhz("flags : avx2\n", tmp_path / "missing") is None


def test_theoretical_peak():
    avx512 = {"avx2": True, "avx512f": True, "fma": True}
    avx2 = {"avx2": True, "avx512f": False, "fma": True}
    assert theoretical_peak_gflops(avx512, 2000.0, 4) == 32 * 2 * 2.0 * 4
    assert theoretical_peak_gflops(avx2, 2000.0, 4) == 16 * 2 * 2.0 * 4
    assert theoretical_peak_gflops({"avx2": True, "fma": False}, 2000.0, 4) is None  # no FMA: not modelled
    assert theoretical_peak_gflops({}, 2000.0, 4) is None
    assert theoretical_peak_gflops(avx2, None, 4) is None


def test_gemm_ceiling_is_the_best_over_sizes():
    before = torch.get_num_threads()
    c = gemm_ceiling((64, 96, 128), repeats=2, threads=1)
    assert c.sizes == (64, 96, 128) and len(c.size_gflops) == 3 and c.threads == 1
    assert c.gflops == max(c.size_gflops) and all(r > 0 and math.isfinite(r) for r in c.size_gflops)
    assert torch.get_num_threads() == before


def test_bench_schema():
    r = bench_model(bn_model(), BenchConfig(**QUICK))
    assert BENCH_KEYS <= set(r)
    assert r["gemm_sizes"] == [96, 128]
    assert r["ort_gflops"] == pytest.approx(2 * r["macs"] * r["ort_b32_img_s"] / 1e9)
    assert r["ort_efficiency"] == pytest.approx(r["ort_gflops"] / r["ceiling_gflops"])
    assert r["matmul_gflops"] == r["ceiling_gflops"] >= r["gemm_ceiling_gflops"] > 0
    assert all(0 < e <= 1 for e in _efficiencies(r))
    assert r["ceiling_exceeded"] == (max(r[f"{p}_gflops"] for p in ("eager", "cl", "ort")) > r["gemm_ceiling_gflops"])
    if r["theoretical_peak_gflops"] is not None:
        assert 0 < r["ort_peak_efficiency"] <= 1
    else:
        assert r["ort_peak_efficiency"] is None
    assert r["fits_budget"] == (r["params_plus_activations_kb"] <= 8192)
    assert isinstance(r["machine_busy"], bool)


def test_a_model_faster_than_the_ceiling_raises_it():
    """A ceiling below a measured rate is wrong: it becomes the best rate
    seen, flagged, and no efficiency passes 100%."""
    r = bench_model(bn_model(), BenchConfig(**QUICK), matmul_rate=1e-6)
    best = max(r[f"{p}_gflops"] for p in ("eager", "cl", "ort"))
    assert r["ceiling_exceeded"] is True and r["gemm_ceiling_gflops"] == 1e-6 and r["gemm_sizes"] is None
    assert r["ceiling_gflops"] == r["matmul_gflops"] == best
    assert max(_efficiencies(r)) == 1.0 and all(0 < e <= 1 for e in _efficiencies(r))
    r = bench_model(bn_model(), BenchConfig(**QUICK, backends=("ort",)), matmul_rate=1e12)
    assert r["ceiling_exceeded"] is False and r["ceiling_gflops"] == 1e12 and 0 < r["ort_efficiency"] < 1


def test_ceiling_and_peak_rule():
    rows = [{"ort_gflops": 150.0, "eager_gflops": 50.0}]
    info = _apply_ceiling(rows, 100.0, 120.0, [150.0, 50.0])
    assert info["ceiling_gflops"] == info["matmul_gflops"] == 150.0 and info["ceiling_exceeded"] is True
    assert info["peak_exceeded"] is True  # a clock read too low: the peak is raised the same way
    assert rows[0]["ort_efficiency"] == 1.0 and rows[0]["eager_efficiency"] == pytest.approx(1 / 3)
    assert rows[0]["ort_peak_efficiency"] == 1.0
    rows = [{"ort_gflops": 60.0}]
    info = _apply_ceiling(rows, 100.0, 300.0, [60.0])
    assert info["ceiling_gflops"] == 100.0 and not info["ceiling_exceeded"] and not info["peak_exceeded"]
    assert rows[0]["ort_efficiency"] == 0.6 and rows[0]["ort_peak_efficiency"] == 0.2
    rows = [{"ort_gflops": 60.0}]
    assert _apply_ceiling(rows, 100.0, None, [60.0])["theoretical_peak_gflops"] is None
    assert rows[0]["ort_peak_efficiency"] is None


def test_merge_rounds_takes_medians_of_timings_only():
    rounds = [{"params": 10, "size_mb": 0.5, "ort_b32_img_s": v, "ort_b1_ms": 1.0 / v, "ort_efficiency": v / 100,
               "other_cpu_cores": c, "machine_busy": c > 0.2} for v, c in ((100.0, 0.0), (300.0, 0.5), (200.0, 0.1))]
    m = merge_rounds(rounds)
    assert m["ort_b32_img_s"] == 200.0 and m["ort_b32_img_s_rounds"] == [100.0, 300.0, 200.0]
    assert m["ort_b1_ms"] == pytest.approx(1 / 200) and m["ort_efficiency"] == 2.0
    assert m["params"] == 10 and m["size_mb"] == 0.5 and m["rounds"] == 3
    assert m["machine_busy"] is True and m["other_cpu_cores"] == 0.5  # busy in any round: busy


def test_merge_rounds_uses_one_ceiling_for_all_rounds():
    """A round faster than the GEMM raises the ceiling for the merged figure."""
    rounds = []
    for v in (40.0, 120.0, 80.0):
        r = {"macs": 1, "ort_b32_img_s": v, "ort_gflops": v, "other_cpu_cores": 0.0, "machine_busy": False}
        _apply_ceiling([r], 100.0, None, [v])
        rounds.append(r)
    m = merge_rounds(rounds)
    assert m["ort_gflops"] == 80.0 and m["ceiling_gflops"] == 120.0 and m["ceiling_exceeded"] is True
    assert m["ort_efficiency"] == pytest.approx(80 / 120)


def test_bench_target_json(tmp_path):
    cfg = BenchConfig(image_size=48, runs=2, warmup=1, threads=1, min_time=0.0, backends=("eager", "ort"),
                      gemm_sizes=(96, 128), gemm_repeats=2, rounds=3)
    r = bench_target("squeezenet1_1", cfg, classes=3, out_json=tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text()) == json.loads(json.dumps(r))
    assert r["gemm_sizes"] == [96, 128] and len(r["gemm_size_gflops"]) == 2
    assert r["gemm_ceiling_gflops"] == max(r["gemm_size_gflops"])
    assert r["matmul_gflops"] == r["ceiling_gflops"] >= r["gemm_ceiling_gflops"]
    assert set(r["cpu_flags"]) == set(CPU_FLAGS) and r["machine"]["cpu_flags"] == r["cpu_flags"]
    assert r["theoretical_peak_gflops"] is None or r["theoretical_peak_gflops"] > 0
    (m,) = r["models"]
    seen = max(x for p in ("eager", "ort") for x in m[f"{p}_b32_img_s_rounds"]) * 2 * m["macs"] / 1e9
    assert r["ceiling_gflops"] == pytest.approx(max(r["gemm_ceiling_gflops"], seen))
    assert r["ceiling_exceeded"] == (seen > r["gemm_ceiling_gflops"])
    assert m["ceiling_gflops"] == r["ceiling_gflops"] and 0 < m["ort_efficiency"] <= 1 and 0 < m["eager_efficiency"] <= 1
    assert m["ort_efficiency"] == pytest.approx(m["ort_gflops"] / r["ceiling_gflops"])


def _common():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_json_records_the_command_and_cpu_flags(tmp_path, monkeypatch):
    common = _common()
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "x.py"), "--run", "runs/main4", "--note", "a b"])
    d = json.loads(common.write_result("x", {"k": 1}).read_text())
    assert d["command"] == "python benchmarks/x.py --run runs/main4 --note 'a b'"
    assert set(d["cpu_flags"]) == set(CPU_FLAGS) and d["machine"]["cpu_flags"] == d["cpu_flags"] and d["k"] == 1
    assert common.command_line(["/elsewhere/y.py", "-v"], cwd=ROOT) == "python /elsewhere/y.py -v"
    assert common.command_line(["benchmarks/y.py"], cwd=ROOT) == "python benchmarks/y.py"


@pytest.mark.slow
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
