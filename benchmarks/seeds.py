"""The default evolution from several seeds: a different ancestor per seed.

For each seed, trains the main job's ancestor (``RunConfig().ancestor`` with
that seed: SqueezeNet v1.1, 64 px, on train minus its 10% held-out part) and
evolves it with the main job's evolution (``RunConfig().evolve``, same seed),
exactly what ``squishednets run --seed S`` does before its bench stage. Every
step resumes: run the same command again after an interruption.

``--summarize`` then times each seed's ancestor and final generation in ONNX
Runtime at 64 and 224 px (batch 32, interleaved rounds, the median of the
per-round ratios) and writes results/seeds.json with, per seed, the
ancestor's and the final generation's size_mb, heldout_top1, test_top1 and the
ORT speed-ups, plus mean and standard deviation over seeds.

    python benchmarks/seeds.py --seeds 0,1,2 --runs-dir runs/seeds            # train + evolve
    python benchmarks/seeds.py --seeds 0,1,2 --runs-dir runs/seeds --summarize
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from pathlib import Path

from common import stats, write_result

from squishednets.bench import BenchConfig, GemmCeiling, bench_model, gemm_ceiling
from squishednets.checkpoint import load_checkpoint
from squishednets.evolve import evolve
from squishednets.pipeline import RunConfig
from squishednets.records import Lineage
from squishednets.train import run_training


def train_and_evolve(seed: int, root: Path) -> None:
    cfg = RunConfig()
    anc = dataclasses.replace(cfg.ancestor, seed=seed)
    print(f"seed {seed}: ancestor", flush=True)
    m = run_training(anc, root / "ancestor", resume=True, progress=sys.stderr.isatty())
    print(f"seed {seed}: ancestor held-out {m['heldout_top1']:.4f} test {m['test_top1']:.4f}", flush=True)
    lin = evolve(root / "ancestor" / "model", root / "evolve", dataclasses.replace(cfg.evolve, seed=seed),
                 progress=sys.stderr.isatty())
    last = lin.generations[-1]
    print(f"seed {seed}: final {last.size_mb:.3f} MB held-out {last.heldout_top1:.4f} test {last.test_top1:.4f}",
          flush=True)


def speedups(root: Path, lin: Lineage, sizes: list[int], rounds: int,
             ceiling: GemmCeiling) -> dict[str, dict[str, float]]:
    """ORT images/s of the final generation over the ancestor's, per round,
    interleaved; and the ancestor's ORT efficiency against the best-GEMM
    ``ceiling`` (median over rounds)."""
    anc = load_checkpoint(root / "evolve" / lin.generations[0].path).model
    fin = load_checkpoint(root / "evolve" / lin.generations[-1].path).model
    out = {}
    for size in sizes:
        cfg = BenchConfig(image_size=size, backends=("ort",))
        ratios, eff, busy = [], [], []
        for _ in range(rounds):
            a = bench_model(anc, cfg, matmul_rate=ceiling)
            b = bench_model(fin, cfg, matmul_rate=ceiling)
            ratios.append(b["ort_b32_img_s"] / a["ort_b32_img_s"])
            eff.append(a["ort_efficiency"])
            busy += [a["machine_busy"], b["machine_busy"]]
        out[f"{size}px"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                            "rounds": ratios, "ancestor_ort_efficiency": statistics.median(eff),
                            "machine_busy": any(busy)}
    return out



def summarize(seeds: list[int], runs_dir: Path, rounds: int) -> None:
    ceiling = gemm_ceiling(threads=os.cpu_count() or 1)  # the threads bench_model times with
    per_seed = []
    for s in seeds:
        root = runs_dir / f"seed{s}"
        lin = Lineage.load(root / "evolve")
        a, f = lin.generations[0], lin.generations[-1]
        sp = speedups(root, lin, [64, 224], rounds, ceiling)
        per_seed.append({
            "seed": s,
            "ancestor": {"size_mb": a.size_mb, "heldout_top1": a.heldout_top1, "test_top1": a.test_top1},
            "final": {"generation": f.generation, "size_mb": f.size_mb, "heldout_top1": f.heldout_top1,
                      "test_top1": f.test_top1, "macs_reduction": a.macs / f.macs},
            "test_top1_drop_points": (a.test_top1 - f.test_top1) * 100,
            "ort_speedup_64px": sp["64px"], "ort_speedup_224px": sp["224px"],
            "ancestor_ort_224px_efficiency": sp["224px"]["ancestor_ort_efficiency"],
        })
        print(per_seed[-1], flush=True)
    summary = {
        "final_size_mb": stats([p["final"]["size_mb"] for p in per_seed]),
        "ancestor_test_top1": stats([p["ancestor"]["test_top1"] for p in per_seed]),
        "final_test_top1": stats([p["final"]["test_top1"] for p in per_seed]),
        "test_top1_drop_points": stats([p["test_top1_drop_points"] for p in per_seed]),
        "ancestor_heldout_top1": stats([p["ancestor"]["heldout_top1"] for p in per_seed]),
        "final_heldout_top1": stats([p["final"]["heldout_top1"] for p in per_seed]),
        "ort_speedup_64px": stats([p["ort_speedup_64px"]["median"] for p in per_seed]),
        "ort_speedup_224px": stats([p["ort_speedup_224px"]["median"] for p in per_seed]),
        "ancestor_ort_224px_efficiency": stats([p["ancestor_ort_224px_efficiency"] for p in per_seed]),
    }
    summary["goal_final_le_0.49mb_and_drop_le_1"] = (max(p["final"]["size_mb"] for p in per_seed) <= 0.49
                                                     and summary["test_top1_drop_points"]["mean"] <= 1.0)
    summary["goal_ancestor_ort_224px_efficiency_ge_0.75"] = summary["ancestor_ort_224px_efficiency"]["mean"] >= 0.75
    write_result("seeds", {"seeds": seeds, "selected_by": "heldout", "test_split": "val",
                           "gemm_ceiling_gflops": ceiling.gflops, "gemm_sizes": list(ceiling.sizes),
                           "per_seed": per_seed, "summary": summary})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--runs-dir", default="runs/seeds")
    ap.add_argument("--summarize", action="store_true", help="time and summarize the finished seeds")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per size")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs_dir = Path(args.runs_dir)
    if args.summarize:
        summarize(seeds, runs_dir, args.rounds)
        return
    for s in seeds:
        train_and_evolve(s, runs_dir / f"seed{s}")


if __name__ == "__main__":
    main()
