"""The playbook's exploration on Imagenette at 64 px: one-axis sweeps, then NSGA-II.

Two ``squishednets explore`` runs, each resumable (run the same command
again after an interruption; it trains nothing twice):

1. ``grid`` over every axis of ``explore.AXES``: each axis swept alone around
   SqueezeNet v1.1 (the playbook's sweeps, with pct3x3 and SR the SqueezeNet
   paper's two), giving the saturation points;
2. ``nsga2`` over the metaparameters, the width, pooling placement and
   depthwise expand3x3: held-out top-1 against size and MACs.

The merged points (one entry per design; held-out top-1 chooses, test top-1
is reported), the Pareto front over all of them, the saturation points of the
sweeps and the playbook's constraints (8192 KB SRAM, 30 FPS) go to
``results/explore_imagenette.json``. Each explore run times every point again
at its end, serially, in interleaved rounds (medians): those are the speed
figures here.

    python benchmarks/explore.py --runs-dir runs/explore --trials 36 --workers 2 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from common import write_result

from squishednets.bench import CpuMonitor
from squishednets.executor import ExecConfig
from squishednets.explore import AXES, EXPLORE_TRAIN, ExploreConfig, explore, pareto, violations

FIELDS = ("name", "genome", "design", "size_mb", "params", "macs", "peak_activation_kb", "params_plus_activations_kb",
          "int8_flash_kb", "int8_sram_kb", "heldout_top1", "heldout_top1_sd", "test_top1", "test_top1_sd", "seeds",
          "epochs", "image_size", "ort_b32_img_s", "ort_b1_ms", "fps", "energy_mj", "train_time_s", "machine_busy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs-dir", default="runs/explore")
    ap.add_argument("--data", default=EXPLORE_TRAIN.data)
    ap.add_argument("--image-size", type=int, default=EXPLORE_TRAIN.image_size)
    ap.add_argument("--trials", type=int, default=36, help="NSGA-II design points")
    ap.add_argument("--epochs", type=int, default=EXPLORE_TRAIN.epochs)
    ap.add_argument("--name", default="explore_imagenette")
    ap.add_argument("--stage", choices=("grid", "nsga2", "both"), default="both")
    ap.add_argument("--threads", type=int, default=None, help="training threads per point (off: every core)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each run's final timing")
    ap.add_argument("--workers", type=int, default=1, help="local worker processes (points in parallel)")
    args = ap.parse_args()
    root = Path(args.runs_dir)
    train = dataclasses.replace(EXPLORE_TRAIN, data=args.data, image_size=args.image_size, epochs=args.epochs,
                                threads=args.threads)
    common = dict(train=train, sram_kb=8192, min_fps=30, front_seeds=2, top=3, timing_rounds=args.rounds,
                  executor=ExecConfig(workers=args.workers))
    runs = {
        "grid": ExploreConfig(strategy="grid", axes=tuple(AXES), **common),
        "nsga2": ExploreConfig(strategy="nsga2", trials=args.trials, population=12,
                               axes=("base_e", "incr_e", "freq", "pct3x3", "sr", "width", "pool", "depthwise"),
                               **common),
    }
    docs = {}
    t0 = time.perf_counter()
    with CpuMonitor() as mon:
        for name, cfg in runs.items():
            if args.stage in (name, "both"):
                docs[name] = explore(cfg, root / name, progress=True)
    points: dict[str, dict] = {}
    for name, doc in docs.items():
        for p in doc["points"]:
            if p["name"] not in points or len(p["seeds"]) > len(points[p["name"]]["seeds"]):
                points[p["name"]] = {**{k: p.get(k) for k in FIELDS}, "genome_key": p["key"], "found_by": name}
    cfg = runs["grid"]
    merged = sorted(points.values(), key=lambda p: -p["heldout_top1"])
    front = pareto(merged, cfg.objectives)
    for p in merged:
        p["pareto"] = p["name"] in front
        p["violations"] = violations(p, cfg)
        p["meets_constraints"] = not p["violations"]
    grid = docs.get("grid", {})
    # What one design point costs beside its training (data load, evaluation,
    # ONNX export and the point's own timing): the figure a cluster projection
    # needs. From the seeds of the points shown, trained in one session each
    # (a resumed point's wall time covers its last session only).
    runs_done = [json.loads(f.read_text()) for name, d in docs.items() for p in d["points"]
                 for f in (root / name / "points" / p["key"]).glob("s*/result.json")]
    whole = [r for r in runs_done if r["wall_s"] >= r["train_time_s"]]
    costs = {"points": len(whole), "resumed_left_out": len(runs_done) - len(whole),
             "median_wall_s": statistics.median(r["wall_s"] for r in whole),
             "median_train_s": statistics.median(r["train_time_s"] for r in whole),
             "median_overhead_s": statistics.median(r["wall_s"] - r["train_time_s"] for r in whole),
             "threads_per_point": args.threads, "workers": args.workers}
    write_result(args.name, {
        "data": cfg.train.data, "image_size": cfg.train.image_size, "epochs_per_point": args.epochs,
        "selected_by": "heldout", "objectives": list(cfg.objectives),
        "constraints": {"sram_kb": 8192, "min_fps": 30}, "points": merged, "pareto": front,
        "meets_constraints": [p["name"] for p in merged if p["meets_constraints"]],
        "saturation": grid.get("saturation"), "sweeps": grid.get("sweeps"),
        "seed_noise": grid.get("seed_noise"), "seed_noise_source": grid.get("seed_noise_source"),
        "runs": {k: {"points": len(d["points"]), "executor": d["executor"], "timing": d["timing"],
                     "files": d["files"]} for k, d in docs.items()},
        "point_costs": costs, "wall_s": time.perf_counter() - t0, "other_cpu_cores": mon.other_cores,
        "machine_busy": mon.busy,
    })


if __name__ == "__main__":
    main()
