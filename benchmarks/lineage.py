"""Benchmark JSON for a finished main-job run: the evolution lineage and the
speed of the ancestor and the chosen SquishedNets.

Writes
- results/evolve_imagenette.json: one entry per generation (the ancestor as 0)
  with generation, params, size_mb, macs, top1 (val), holdout_top1, wall_s,
  F(E), and the run's configuration and command;
- results/bench_lineage.json: `squishednets bench` figures (eager,
  channels_last, ONNX Runtime; batch 32 and 1) of the ancestor and the chosen
  SquishedNets at the training resolution and at 224 px, with the goals;
- results/accuracy_default.json: the ancestor's val top-1, epochs and time.

    python benchmarks/lineage.py --run runs/main
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import write_result

from squishednets.bench import BenchConfig, bench_model, matmul_gflops
from squishednets.checkpoint import load_checkpoint
from squishednets.report import choose_squishednets

MAIN_COMMAND = "bash scripts/main.sh  (squishednets run --out runs/main, default settings)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default="runs/main")
    ap.add_argument("--sizes", default="", help="comma-separated input sizes (default: training size and 224)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--skip-bench", action="store_true")
    args = ap.parse_args()
    run = Path(args.run)
    state = json.loads((run / "run.json").read_text())
    doc = json.loads((run / "evolve" / "lineage.json").read_text())
    lineage = doc["generations"]
    keys = ("generation", "name", "params", "size_mb", "reduction_vs_squeezenet11", "macs", "top1", "holdout_top1",
            "wall_s", "target_size_mb", "env_factor", "sharpness", "widths", "seed")
    entries = [{k: e.get(k) for k in keys} for e in lineage]
    anc = lineage[0]
    small = min(lineage, key=lambda e: e["size_mb"])
    within1 = [e for e in lineage[1:] if e["top1"] >= anc["top1"] - 0.01]
    evolve_wall = sum(e["wall_s"] for e in lineage[1:])
    goals = {
        "smallest_size_mb": small["size_mb"],
        "smallest_top1_drop_points": (anc["top1"] - small["top1"]) * 100,
        "goal_size_le_0.49mb_and_drop_le_4": small["size_mb"] <= 0.49 and (anc["top1"] - small["top1"]) * 100 <= 4,
        "largest_reduction_within_1_point": max((lineage[0]["size_mb"] / e["size_mb"] for e in within1), default=None),
        "evolve_wall_min": evolve_wall / 60,
        "goal_wall_le_60min": evolve_wall / 60 <= 60,
    }
    write_result("evolve_imagenette", {"run_command": MAIN_COMMAND, "config": doc["config"],
                                       "stages": state["stages"], "goals": goals, "generations": entries})
    am = load_checkpoint(run / "ancestor" / "model").metrics
    write_result("accuracy_default", {
        "run_command": MAIN_COMMAND, "data": doc["config"]["data"], "split": "val", "seeds": [0], "runs": 1,
        "image_size": am["image_size"], "epochs": am["epochs"], "top1": am["top1"], "top5": am["top5"],
        "train_time_s": am["train_time_s"], "train_img_s": am["train_img_s"], "per_class": am["val"]["per_class"],
    })
    if args.skip_bench:
        return
    chosen = choose_squishednets(lineage)
    picks = [("ancestor", anc)] + [(f"SquishedNet-{i + 1}", e) for i, e in enumerate(chosen)]
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else sorted({doc["config"]["image_size"], 224})
    # One matmul rate for the whole run (median of 5), so that efficiencies
    # are comparable across models and not at the mercy of one noisy timing.
    rates = [matmul_gflops() for _ in range(5)]
    rate = statistics.median(rates)
    models = []
    for size in sizes:
        for name, e in picks:
            ck = load_checkpoint(run / "evolve" / e["path"])
            r = bench_model(ck.model, BenchConfig(image_size=size, runs=args.runs), matmul_rate=rate)
            models.append({"name": name, "generation": e["generation"], "top1": e["top1"], **r})
            print(f"{size}px {name}: ORT {r['ort_b32_img_s']:.1f} img/s, eff {r['ort_efficiency']:.1%}", flush=True)
    goals = {}
    for size in sizes:
        at = [m for m in models if m["image_size"] == size]
        a, s = at[0], min(at[1:], key=lambda m: m["size_mb"]) if len(at) > 1 else at[0]
        for k in ("eager", "cl", "ort"):
            goals[f"{k}_speedup_smallest_vs_ancestor_{size}px"] = s[f"{k}_b32_img_s"] / a[f"{k}_b32_img_s"]
            goals[f"{k}_efficiency_ancestor_{size}px"] = a[f"{k}_efficiency"]
    write_result("bench_lineage", {"run": str(run), "sizes": sizes, "matmul_gflops_runs": rates, "matmul_gflops": rate,
                                   "goals": goals, "models": models,
                                   "machine_busy": any(m["machine_busy"] for m in models)})


if __name__ == "__main__":
    main()
