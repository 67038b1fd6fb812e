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

from squishednets.bench import BenchConfig, bench_model, matmul_gflops, merge_rounds
from squishednets.checkpoint import load_checkpoint
from squishednets.report import choose_squishednets

MAIN_COMMAND = "bash scripts/main.sh  (squishednets run --out runs/main, default settings)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default="runs/main")
    ap.add_argument("--sizes", default="", help="comma-separated input sizes (default: training size and 224)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per figure, at least")
    ap.add_argument("--backends", default="eager,channels_last,ort", help="comma-separated: eager, channels_last, ort")
    ap.add_argument("--name", default="bench_lineage", help="result file name (benchmarks/results/NAME.json)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; figures are medians over them")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--main-command", default=MAIN_COMMAND, help="the command that made RUN, for the JSON")
    args = ap.parse_args()
    run = Path(args.run)
    state = json.loads((run / "run.json").read_text())
    doc = json.loads((run / "evolve" / "lineage.json").read_text())
    lineage = doc["generations"]
    keys = ("generation", "name", "params", "size_mb", "reduction_vs_squeezenet11", "macs", "top1", "holdout_top1",
            "wall_s", "target_size_mb", "target_macs", "env_factor", "sharpness", "mac_pressure", "widths", "seed")
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
        "smallest_macs_reduction": anc["macs"] / small["macs"],
        "evolve_wall_min": evolve_wall / 60,
        "goal_wall_le_60min": evolve_wall / 60 <= 60,
    }
    write_result("evolve_imagenette", {"run_command": args.main_command, "config": doc["config"],
                                       "stages": state["stages"], "goals": goals, "generations": entries})
    am = load_checkpoint(run / "ancestor" / "model").metrics
    write_result("accuracy_default", {
        "run_command": args.main_command, "data": doc["config"]["data"], "split": "val", "seeds": [0], "runs": 1,
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
    backends = tuple(args.backends.split(","))
    prefixes = [{"eager": "eager", "channels_last": "cl", "ort": "ort"}[b] for b in backends]
    rates = [matmul_gflops() for _ in range(5)]
    rate = statistics.median(rates)
    # The host's speed drifts by tens of percent over minutes, so models are
    # timed in interleaved rounds (every model once per round) and each
    # figure is the median over rounds; speed-ups are medians of per-round
    # ratios, so that a slow minute hits both sides of a ratio.
    models = []
    goals: dict[str, float] = {}
    per_round: dict[str, list[float]] = {}
    for size in sizes:
        cks = [(name, e, load_checkpoint(run / "evolve" / e["path"])) for name, e in picks]
        rounds: list[list[dict]] = []
        for r_i in range(args.rounds):
            row = []
            for name, e, ck in cks:
                r = bench_model(ck.model, BenchConfig(image_size=size, runs=args.runs, min_time=args.min_time,
                                                      backends=backends), matmul_rate=rate)
                row.append(r)
                print(f"{size}px round {r_i + 1} {name}: ORT {r['ort_b32_img_s']:.1f} img/s, "
                      f"eff {r['ort_efficiency']:.1%}", flush=True)
            rounds.append(row)
        for i, (name, e, _) in enumerate(cks):
            med = merge_rounds([row[i] for row in rounds])
            models.append({"name": name, "generation": e["generation"], "top1": e["top1"], **med})
        smallest = 1 + min(range(len(cks) - 1), key=lambda j: cks[j + 1][1]["size_mb"]) if len(cks) > 1 else 0
        for k in prefixes:
            ratios = [row[smallest][f"{k}_b32_img_s"] / row[0][f"{k}_b32_img_s"] for row in rounds]
            per_round[f"{k}_speedup_smallest_vs_ancestor_{size}px"] = ratios
            goals[f"{k}_speedup_smallest_vs_ancestor_{size}px"] = statistics.median(ratios)
            goals[f"{k}_efficiency_ancestor_{size}px"] = statistics.median(row[0][f"{k}_efficiency"] for row in rounds)
    if "ort" in prefixes:
        goals["goal_ort_speedup_ge_4"] = all(goals[f"ort_speedup_smallest_vs_ancestor_{s}px"] >= 4 for s in sizes)
        goals["goal_ort_efficiency_224px_ge_0.7"] = goals.get("ort_efficiency_ancestor_224px", 0.0) >= 0.7
    write_result(args.name, {"run": str(run), "sizes": sizes, "matmul_gflops_runs": rates, "matmul_gflops": rate,
                                   "goals": goals, "speedups_per_round": per_round, "models": models,
                                   "machine_busy": any(m["machine_busy"] for m in models)})


if __name__ == "__main__":
    main()
