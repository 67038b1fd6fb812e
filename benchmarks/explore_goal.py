"""Explore, then squish: does an explored design, evolved to the default run's
budget, beat the squished SqueezeNet v1.1 lineage at the same size?

Takes the design that ``benchmarks/explore.py`` ranks best on held-out top-1
among the dense designs (evolution shrinks dense genomes only) meeting the
playbook's constraints, and for each seed does what ``squishednets run
--from-design GENOME.json --seed S`` does before its bench stage, on the short
recipe that ``benchmarks/peers.py`` uses (``common.lineage``: the ancestor
trained 30 epochs, each of the 15 generations 4, the main job's evolution to
0.49 MB and 6x fewer MACs). The SqueezeNet v1.1 lineage of the same seed and
recipe comes from ``--v11-runs`` (the peers benchmark's folders; trained there
when missing, so the two benchmarks share it). Then each seed's two final
networks are timed in ONNX Runtime at 64 px, batch 32, in interleaved rounds.

Goal: at <= 0.49 MB the explored lineage's final network has a higher mean
test top-1 than the v1.1 lineage's, or more ORT images/s at equal top-1 (within
one run's held-out noise). Writes results/explore_goal.json after every seed
(``complete`` says whether all the planned seeds are in); rerun to resume.

    python benchmarks/explore_goal.py --seeds 0,1 --v11-runs runs/peers --runs-dir runs/explore_goal
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from common import ANCESTOR_EPOCHS, GENERATION_EPOCHS, RESULTS, lineage, stats, write_result

from squishednets.bench import BenchConfig, bench_model, gemm_ceiling
from squishednets.checkpoint import load_checkpoint
from squishednets.io import atomic_write_text


def choose(explore: dict) -> dict:
    """The best dense design meeting the constraints, by held-out top-1 (smaller size breaks ties)."""
    ok = [p for p in explore["points"] if p["meets_constraints"] and not p["genome"].get("depthwise")
          and p["genome"].get("groups", 1) == 1]
    if not ok:
        sys.exit("error: no dense design meets the constraints in the explore results; run benchmarks/explore.py")
    return max(ok, key=lambda p: (p["heldout_top1"], -p["size_mb"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--v11-runs", default="runs/peers",
                    help="the SqueezeNet v1.1 lineages, one per seed (benchmarks/peers.py's --runs-dir); "
                         "trained there when missing")
    ap.add_argument("--runs-dir", default="runs/explore_goal")
    ap.add_argument("--explore", default=str(RESULTS / "explore_imagenette.json"))
    ap.add_argument("--threads", type=int)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ancestor-epochs", type=int, default=ANCESTOR_EPOCHS)
    ap.add_argument("--generation-epochs", type=int, default=GENERATION_EPOCHS)
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    design = choose(json.loads(Path(a.explore).read_text()))
    runs = Path(a.runs_dir)
    gpath = runs / "design.json"
    if not gpath.is_file():
        atomic_write_text(gpath, json.dumps(design["genome"], indent=2))
    print(f"design {design['name']}: held-out {design['heldout_top1']:.4f} at {design['size_mb']:.3f} MB", flush=True)
    # A committed result for the same design and recipe counts its seeds as
    # done: the run folders live outside the repository and may be gone (a new
    # machine), and a finished seed is never trained twice.
    prior = {}
    committed = RESULTS / "explore_goal.json"
    if committed.is_file():
        old = json.loads(committed.read_text())
        if (old["design"]["genome"], old["ancestor_epochs"], old["generation_epochs"]) == \
                (design["genome"], a.ancestor_epochs, a.generation_epochs):
            prior = {p["seed"]: p for p in old["per_seed"]}
            if set(prior) - set(seeds):
                sys.exit(f"error: {committed} holds seeds {sorted(prior)}; list them all in --seeds (or move the "
                         "file away) so that none is dropped from the rewritten result")
    per_seed = []
    ceiling = None
    current = False  # whether explore_goal.json already holds every seed in per_seed
    for s in seeds:
        # Each seed's comparison is kept in its folder, and the JSON is
        # rewritten after every seed: a session that ends mid-way keeps the
        # seeds it finished, and the next run picks up from the first missing one.
        done = runs / f"seed{s}" / "goal.json"
        if not done.is_file() and s in prior:
            atomic_write_text(done, json.dumps(prior[s], indent=2))
        if done.is_file():
            per_seed.append(json.loads(done.read_text()))
            print(per_seed[-1], flush=True)
            current = False
            continue
        recipe = (a.ancestor_epochs, a.generation_epochs, a.threads)
        v11 = lineage(s, Path(a.v11_runs) / f"seed{s}", *recipe)
        lin = lineage(s, runs / f"seed{s}", *recipe, model=str(gpath.resolve()))
        ours, theirs = lin.generations[-1], v11.generations[-1]
        ceiling = ceiling or gemm_ceiling()
        m_ours = load_checkpoint(runs / f"seed{s}" / "evolve" / ours.path).model
        m_v11 = load_checkpoint(Path(a.v11_runs) / f"seed{s}" / "evolve" / theirs.path).model
        bc = BenchConfig(image_size=64, backends=("ort",))
        ratios, busy = [], []
        for _ in range(a.rounds):
            x, y = bench_model(m_ours, bc, matmul_rate=ceiling), bench_model(m_v11, bc, matmul_rate=ceiling)
            ratios.append(x["ort_b32_img_s"] / y["ort_b32_img_s"])
            busy += [x["machine_busy"], y["machine_busy"]]
        held_n = load_checkpoint(runs / f"seed{s}" / "evolve" / lin.generations[0].path).metrics["heldout_images"]
        per_seed.append({"seed": s, "explored": {"size_mb": ours.size_mb, "macs": ours.macs,
                                                 "heldout_top1": ours.heldout_top1, "test_top1": ours.test_top1,
                                                 "ancestor_test_top1": lin.generations[0].test_top1},
                         "v11": {"size_mb": theirs.size_mb, "macs": theirs.macs, "heldout_top1": theirs.heldout_top1,
                                 "test_top1": theirs.test_top1, "ancestor_test_top1": v11.generations[0].test_top1},
                         "ort_64px_speed_ratio": {"median": statistics.median(ratios), "min": min(ratios),
                                                  "max": max(ratios)},
                         "machine_busy": any(busy), "heldout_images": held_n})
        atomic_write_text(done, json.dumps(per_seed[-1], indent=2))
        print(per_seed[-1], flush=True)
        summarize(a, design, seeds, per_seed)
        current = True
    if per_seed and not current:
        summarize(a, design, seeds, per_seed)  # seeds taken from their folders after the last one trained


def summarize(a: argparse.Namespace, design: dict, planned: list[int], per_seed: list[dict]) -> None:
    """Write results/explore_goal.json over the seeds finished so far."""
    mean = lambda k, side: statistics.mean(p[side][k] for p in per_seed)  # noqa: E731
    noise = math.sqrt(0.8 * 0.2 / per_seed[0]["heldout_images"])
    better_top1 = mean("test_top1", "explored") > mean("test_top1", "v11")
    equal_top1 = abs(mean("test_top1", "explored") - mean("test_top1", "v11")) <= noise
    faster = statistics.mean(p["ort_64px_speed_ratio"]["median"] for p in per_seed) > 1
    write_result("explore_goal", {
        "design": {k: design[k] for k in ("name", "design", "genome", "size_mb", "macs", "heldout_top1", "test_top1")},
        "rule": "the best dense design meeting the constraints by held-out top-1",
        "seeds": [p["seed"] for p in per_seed], "seeds_planned": planned,
        "complete": len(per_seed) == len(planned),
        "ancestor_epochs": a.ancestor_epochs, "generation_epochs": a.generation_epochs, "image_size": 64,
        "per_seed": per_seed, "noise_sd": noise,
        "test_top1": {side: stats([p[side]["test_top1"] for p in per_seed]) for side in ("explored", "v11")},
        "goal_met": max(p["explored"]["size_mb"] for p in per_seed) <= 0.49 and (better_top1 or (equal_top1 and faster)),
        "goal": "at <= 0.49 MB, higher mean test top-1 than the squished v1.1 lineage, or more ORT images/s at "
                "equal top-1 (within one run's held-out noise)"})

if __name__ == "__main__":
    main()
