"""Evolution against what users would pick instead, at matched sizes and budgets.

For each seed: a short version of the main job (``RunConfig()`` with the
ancestor trained ``--ancestor-epochs`` and each of the 15 generations
``--generation-epochs``; the default run's 60 and 12 would take the peers
trained from scratch about 15 hours per seed on 2 cores), then ``squishednets
compare`` on it with every method. The budgets stay matched inside each seed:
a network trained from scratch gets the epochs the lineage spent to reach its
size. Every step resumes.

``--summarize`` writes results/peers.json: per method, per target generation,
per seed: size_mb, macs, heldout_top1, test_top1, ort_b32_img_s at 64 px (and
224 px), train_wall_s, epochs, and the Torch-Pruning version; means and sd
over seeds per method and target; and the goal: at every matched size the
better of evolution and evolution_distill has a higher mean test top-1 than
every peer at equal or fewer total epochs (the variant chosen on held-out
top-1, judged on test top-1).

    python benchmarks/peers.py --seeds 0,1 --runs-dir runs/peers
    python benchmarks/peers.py --seeds 0,1 --runs-dir runs/peers --summarize
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import ANCESTOR_EPOCHS, GENERATION_EPOCHS, lineage, stats, write_result

from squishednets.compare import METHODS, CompareConfig, compare, goal
from squishednets.report import compare_dir


def run_compare(root: Path, threads: int | None) -> dict:
    doc = compare(root / "evolve", CompareConfig(threads=threads), progress=sys.stderr.isatty(),
                  say=lambda s: print(s, flush=True))
    return doc


def summarize(seeds: list[int], runs_dir: Path, anc_epochs: int, gen_epochs: int) -> None:
    rows, versions, targets, splits = [], set(), {}, set()
    for s in seeds:
        doc = json.loads((compare_dir(runs_dir / f"seed{s}" / "evolve") / "compare.json").read_text())
        versions.add(doc["torch_pruning_version"])
        splits.add(doc["test_split"])
        targets[s] = [t["generation"] for t in doc["targets"]]
        for r in doc["rows"]:
            rows.append({"run_seed": s, "method": r["method"], "seed": r["seed"], "generation": r["generation"],
                         "target_size_mb": r["target_size_mb"], "size_mb": r["size_mb"], "macs": r["macs"],
                         "heldout_top1": r["heldout_top1"], "test_top1": r["test_top1"],
                         "ort_b32_img_s": r["ort_b32_img_s_64px"], "ort_b32_img_s_224px": r["ort_b32_img_s_224px"],
                         "train_wall_s": r["train_wall_s"], "epochs": r["epochs"],
                         "within_tolerance": r["within_tolerance"]})
    # Targets are matched by rank (SquishedNet-1..4, then the last generation): seeds may choose other generations.
    by: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        rank = targets[r["run_seed"]].index(r["generation"])
        by.setdefault(r["method"], {}).setdefault(rank, []).append(r)
    summary = {m: {str(k): {"size_mb": stats([r["size_mb"] for r in v]),
                            "test_top1": stats([r["test_top1"] for r in v]),
                            "heldout_top1": stats([r["heldout_top1"] for r in v]),
                            "ort_b32_img_s": stats([r["ort_b32_img_s"] for r in v]),
                            "epochs": max(r["epochs"] for r in v),
                            "all_within_tolerance": all(r["within_tolerance"] for r in v)}
                    for k, v in sorted(ranks.items())}
               for m, ranks in by.items()}
    verdict = goal(summary, sorted({k for ranks in summary.values() for k in ranks}, key=int))
    write_result("peers", {
        "seeds": seeds, "methods": list(METHODS), "torch_pruning_version": sorted(v for v in versions if v),
        "ancestor_epochs": anc_epochs, "generation_epochs": gen_epochs, "image_size": 64, "selected_by": "heldout",
        "test_split": sorted(splits), "targets": {str(s): t for s, t in targets.items()}, "rows": rows,
        "summary": summary, "goal_per_target": verdict["per_generation"], "goal_met": verdict["met"],
        "goal": verdict["rule"], "targets_matched_by": "rank: SquishedNet-1..4 (held-out), then the last generation"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--runs-dir", default="runs/peers")
    ap.add_argument("--ancestor-epochs", type=int, default=ANCESTOR_EPOCHS)
    ap.add_argument("--generation-epochs", type=int, default=GENERATION_EPOCHS)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--summarize", action="store_true")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.summarize:
        summarize(seeds, Path(a.runs_dir), a.ancestor_epochs, a.generation_epochs)
        return
    for s in seeds:
        root = Path(a.runs_dir) / f"seed{s}"
        lineage(s, root, a.ancestor_epochs, a.generation_epochs, a.threads)
        run_compare(root, a.threads)


if __name__ == "__main__":
    main()
