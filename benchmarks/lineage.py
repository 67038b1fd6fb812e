"""Benchmark JSON for a finished main-job run (or a seed's run of
benchmarks/seeds.py): the evolution lineage and the speed of the ancestor and
the chosen SquishedNets.

Writes
- results/evolve_imagenette.json: one entry per generation (the ancestor as 0)
  with generation, params, size_mb, macs, heldout_top1 (chooses), test_top1
  (reported only), wall_s, F(E), and the run's configuration and command;
- results/bench_lineage.json: `squishednets bench` figures (eager,
  channels_last, ONNX Runtime; batch 32 and 1) of the ancestor and the
  SquishedNets chosen by held-out top-1, at the training resolution and at
  224 px, efficiency against the best-GEMM ceiling measured once in the run;
- results/accuracy_default.json: the ancestor's held-out and test top-1, epochs and time.

    python benchmarks/lineage.py --run runs/main
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import write_result

from squishednets.bench import BenchConfig, bench_model, gemm_ceiling, merge_rounds
from squishednets.checkpoint import load_checkpoint
from squishednets.records import SELECTED_BY, Lineage
from squishednets.report import choose_squishednets
from squishednets.train import train_config_of

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
    state = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    lin = Lineage.load(run / "evolve")
    lineage = lin.generations
    keys = ("generation", "name", "params", "size_mb", "macs", "heldout_top1", "test_top1", "selected_by", "wall_s",
            "target_size_mb", "target_macs", "env_factor", "sharpness", "mac_pressure", "widths", "seed")
    entries = [{k: getattr(e, k) for k in keys} for e in lineage]
    anc = lineage[0]
    final = lineage[-1]
    # Which generations count as "within 1 point" is a choice: held-out decides it.
    within1 = [e for e in lineage[1:] if e.heldout_top1 >= anc.heldout_top1 - 0.01]
    evolve_wall = sum(e.wall_s for e in lineage[1:])
    drop = (anc.test_top1 - final.test_top1) * 100
    goals = {
        "final_size_mb": final.size_mb,
        "final_test_top1_drop_points": drop,
        "final_heldout_top1_drop_points": (anc.heldout_top1 - final.heldout_top1) * 100,
        "goal_final_le_0.49mb_and_test_drop_le_1": final.size_mb <= 0.49 and drop <= 1.0,
        "largest_reduction_within_1_heldout_point": max((anc.size_mb / e.size_mb for e in within1), default=None),
        "final_macs_reduction": anc.macs / final.macs,
        "evolve_wall_min": evolve_wall / 60,
    }
    write_result("evolve_imagenette", {"run_command": args.main_command, "selected_by": SELECTED_BY,
                                       "config": lin.config, "stages": state.get("stages"), "goals": goals,
                                       "generations": entries})
    ack = load_checkpoint(run / "ancestor" / "model")
    am, (tcfg, _) = ack.metrics, train_config_of(ack)
    write_result("accuracy_default", {
        "run_command": args.main_command, "data": tcfg.data, "test_split": am["test_split"], "seeds": [tcfg.seed],
        "runs": 1, "image_size": tcfg.image_size, "epochs": tcfg.epochs, "holdout": tcfg.holdout,
        "heldout_top1": am["heldout_top1"], "test_top1": am["test_top1"], "test_top5": am["test_top5"],
        "train_time_s": am["train_time_s"], "train_img_s": am["train_img_s"], "per_class": am["test"]["per_class"],
    })
    if args.skip_bench:
        return
    chosen = choose_squishednets(lineage)
    picks = [("ancestor", anc)] + [(f"SquishedNet-{i + 1}", e) for i, e in enumerate(chosen)]
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else sorted({lin.config["image_size"], 224})
    # One best-GEMM ceiling for the whole run, so that efficiencies compare across models.
    backends = tuple(args.backends.split(","))
    prefixes = [{"eager": "eager", "channels_last": "cl", "ort": "ort"}[b] for b in backends]
    ceiling = gemm_ceiling()
    # The host's speed drifts by tens of percent over minutes, so models are
    # timed in interleaved rounds (every model once per round) and each
    # figure is the median over rounds; speed-ups are medians of per-round
    # ratios, so that a slow minute hits both sides of a ratio.
    models = []
    goals: dict[str, float] = {}
    per_round: dict[str, list[float]] = {}
    for size in sizes:
        cks = [(name, e, load_checkpoint(run / "evolve" / e.path)) for name, e in picks]
        rounds: list[list[dict]] = []
        for r_i in range(args.rounds):
            row = []
            for name, e, ck in cks:
                r = bench_model(ck.model, BenchConfig(image_size=size, runs=args.runs, min_time=args.min_time,
                                                      backends=backends), matmul_rate=ceiling)
                row.append(r)
                print(f"{size}px round {r_i + 1} {name}: ORT {r['ort_b32_img_s']:.1f} img/s, "
                      f"eff {r['ort_efficiency']:.1%}", flush=True)
            rounds.append(row)
        for i, (name, e, _) in enumerate(cks):
            med = merge_rounds([row[i] for row in rounds])
            models.append({"name": name, "generation": e.generation, "heldout_top1": e.heldout_top1,
                           "test_top1": e.test_top1, "selected_by": SELECTED_BY, **med})
        smallest = 1 + min(range(len(cks) - 1), key=lambda j: cks[j + 1][1].size_mb) if len(cks) > 1 else 0
        for k in prefixes:
            ratios = [row[smallest][f"{k}_b32_img_s"] / row[0][f"{k}_b32_img_s"] for row in rounds]
            per_round[f"{k}_speedup_smallest_vs_ancestor_{size}px"] = ratios
            goals[f"{k}_speedup_smallest_vs_ancestor_{size}px"] = statistics.median(ratios)
            goals[f"{k}_efficiency_ancestor_{size}px"] = statistics.median(row[0][f"{k}_efficiency"] for row in rounds)
    if "ort" in prefixes:
        goals["goal_ort_speedup_ge_4"] = all(goals[f"ort_speedup_smallest_vs_ancestor_{s}px"] >= 4 for s in sizes)
        goals["goal_ort_efficiency_224px_ge_0.75"] = goals.get("ort_efficiency_ancestor_224px", 0.0) >= 0.75
    write_result(args.name, {"run": str(run), "sizes": sizes, "gemm_ceiling_gflops": ceiling.gflops,
                             "gemm_sizes": list(ceiling.sizes), "gemm_size_gflops": list(ceiling.size_gflops),
                                   "goals": goals, "speedups_per_round": per_round, "models": models,
                                   "machine_busy": any(m["machine_busy"] for m in models)})


if __name__ == "__main__":
    main()
