"""Distillation in the default evolution: its settings chosen on held-out, then
test top-1 of every generation with and without a teacher.

``--probe``: from seed 0's ancestor of ``benchmarks/seeds.py`` (the default
run's ancestor), the default evolution (``RunConfig().evolve``) with
``--distill ancestor`` for the first ``--probe-generations`` generations, once
per (temperature, weight) in the grid. Each setting's score is its mean
held-out top-1 over those generations; the plain lineage of the same seed
(same draws in generation 1) is the reference. The rule, as for the recipe
probes: a challenger replaces the default only if it beats it by more than one
run's held-out noise (the binomial sd of one generation's held-out top-1).
Writes results/distill_probe.json.

Default: the whole default evolution with ``--distill ancestor`` from each
seed's ancestor (``--seeds``; the ancestor and the plain lineage are
``benchmarks/seeds.py``'s in ``--seed-runs``, trained there when missing),
then results/distill.json with test top-1 per generation with and without
distillation, and the goal: the smallest generation (<= 0.49 MB) loses at
most 0.5 points of test top-1 to its ancestor, mean over seeds. Each seed is
committed as results/distill_parts/seed{S}.json when done; a later run skips
the committed seeds, so the benchmark can span sessions on new machines.

    python benchmarks/distill.py --probe --seed-runs runs/seeds --runs-dir runs/distill
    python benchmarks/distill.py --seeds 0,1 --seed-runs runs/seeds --runs-dir runs/distill
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

from common import RESULTS, stats, write_result
from seeds import train_and_evolve

from squishednets.checkpoint import weights_digest
from squishednets.evolve import evolve
from squishednets.pipeline import RunConfig
from squishednets.records import Lineage

GRID = [(4.0, 0.5), (2.0, 0.5), (4.0, 0.9)]  # (temperature, weight); the first is the default


class _Enough(Exception):
    pass


def _distilled(ancestor: Path, out: Path, seed: int, t: float, w: float, threads: int | None,
               generations: int | None = None) -> Lineage:
    cfg = RunConfig().evolve
    cfg = dataclasses.replace(cfg, seed=seed, distill="ancestor",
                              train=dataclasses.replace(cfg.train, distill_temperature=t, distill_weight=w,
                                                        threads=threads))
    if generations is not None and (out / "lineage.json").is_file():
        lin = Lineage.load(out)
        if len(lin.generations) > generations:
            return lin

    def stop(r) -> None:
        if generations is not None and r.generation >= generations:
            raise _Enough

    try:
        return evolve(ancestor, out, cfg, progress=sys.stderr.isatty(), on_generation=stop)
    except _Enough:
        return Lineage.load(out)


def probe(seed_runs: Path, runs: Path, gens: int, threads: int | None) -> None:
    plain = Lineage.load(seed_runs / "seed0" / "evolve")
    ref = plain.generations[1:gens + 1]
    held_n = None
    rows = []
    for t, w in GRID:
        lin = _distilled(seed_runs / "seed0" / "ancestor" / "model", runs / f"probe_T{t:g}_w{w:g}", 0, t, w,
                         threads, gens)
        g = lin.generations[1:gens + 1]
        rows.append({"temperature": t, "weight": w, "heldout_top1": [e.heldout_top1 for e in g],
                     "score": statistics.mean(e.heldout_top1 for e in g), "size_mb": [e.size_mb for e in g]})
        print(rows[-1], flush=True)
    from squishednets.checkpoint import load_checkpoint
    held_n = load_checkpoint(seed_runs / "seed0" / "evolve" / plain.generations[0].path).metrics["heldout_images"]
    p = statistics.mean(r["score"] for r in rows)
    noise = math.sqrt(p * (1 - p) / held_n)
    default = rows[0]
    best = max(rows, key=lambda r: r["score"])
    chosen = best if best["score"] - default["score"] > noise else default
    write_result("distill_probe", {
        "seed": 0, "generations": gens, "teacher": "ancestor", "selected_by": "heldout",
        "plain": {"heldout_top1": [e.heldout_top1 for e in ref],
                  "score": statistics.mean(e.heldout_top1 for e in ref)},
        "grid": rows, "heldout_images": held_n, "noise_sd": noise,
        "rule": "a challenger replaces the default (first row) only if its score beats the default's by more "
                "than noise_sd",
        "chosen": {"temperature": chosen["temperature"], "weight": chosen["weight"]}})


def part_path(seed: int) -> Path:
    return RESULTS / "distill_parts" / f"seed{seed}.json"


def one_seed(s: int, seed_runs: Path, runs: Path, t: float, w: float, threads: int | None) -> dict:
    """Seed ``s``: the default ancestor and plain lineage (``benchmarks/seeds.py``'s,
    trained here when missing), then the distilled lineage from the same ancestor."""
    root = seed_runs / f"seed{s}"
    gens = RunConfig().evolve.generations + 1  # the ancestor's record and every generation's
    # lineage.json is rewritten after every generation: an interrupted
    # evolution leaves one too, and it resumes where it stopped
    if not (root / "evolve" / "lineage.json").is_file() or len(Lineage.load(root / "evolve").generations) < gens:
        train_and_evolve(s, root)
    plain = Lineage.load(root / "evolve")
    lin = _distilled(root / "ancestor" / "model", runs / f"seed{s}", s, t, w, threads)
    if not len(lin.generations) == len(plain.generations) == gens:
        sys.exit(f"error: seed {s}'s lineages have {len(plain.generations)} (plain) and {len(lin.generations)} "
                 f"(distilled) records, not {gens}; delete {root} and {runs / f'seed{s}'} and run again")
    anc, last = lin.generations[0], lin.generations[-1]
    return {
        "seed": s, "temperature": t, "weight": w,
        "generations": [{"generation": a.generation, "size_mb": a.size_mb, "test_top1_distill": a.test_top1,
                         "test_top1_plain": b.test_top1, "heldout_top1_distill": a.heldout_top1,
                         "heldout_top1_plain": b.heldout_top1, "size_mb_plain": b.size_mb}
                        for a, b in zip(lin.generations, plain.generations)],
        "ancestor_weights": weights_digest(root / "evolve" / plain.generations[0].path),
        "final_size_mb": last.size_mb,
        "final_drop_points_distill": (anc.test_top1 - last.test_top1) * 100,
        "final_drop_points_plain": (anc.test_top1 - plain.generations[-1].test_top1) * 100,
    }


def lineages(seeds: list[int], seed_runs: Path, runs: Path, t: float, w: float, threads: int | None) -> None:
    """Every seed is committed as results/distill_parts/seed{S}.json when done
    (one seed takes about 1.5 hours of both cores, and run folders do not
    outlive the machine); results/distill.json is rewritten after each seed
    over the seeds done so far, ``complete`` saying whether all are in."""
    per_seed = []
    for s in seeds:
        path = part_path(s)
        if path.is_file():
            p = json.loads(path.read_text())
            if (p["temperature"], p["weight"]) != (t, w):
                sys.exit(f"error: {path} was measured with T = {p['temperature']}, w = {p['weight']}; delete it "
                         f"to measure seed {s} with T = {t}, w = {w}")
        else:
            p = one_seed(s, seed_runs, runs, t, w, threads)
            write_result(f"distill_parts/seed{s}", p)
        per_seed.append(p)
        print({k: v for k, v in p.items() if k not in ("generations", "command", "machine", "cpu_flags")}, flush=True)
        drop = [p["final_drop_points_distill"] for p in per_seed]
        gens = range(len(per_seed[0]["generations"]))
        write_result("distill", {
            "seeds": [p["seed"] for p in per_seed], "seeds_planned": seeds, "complete": len(per_seed) == len(seeds),
            "teacher": "ancestor", "temperature": t, "weight": w, "selected_by": "heldout",
            "test_split": "val", "per_seed": per_seed,
            "per_generation": [{"generation": g, "size_mb": stats([p["generations"][g]["size_mb"] for p in per_seed]),
                                "test_top1_distill": stats([p["generations"][g]["test_top1_distill"]
                                                            for p in per_seed]),
                                "test_top1_plain": stats([p["generations"][g]["test_top1_plain"] for p in per_seed])}
                               for g in gens],
            "summary": {"final_drop_points_distill": stats(drop),
                        "final_drop_points_plain": stats([p["final_drop_points_plain"] for p in per_seed]),
                        # judged only once every planned seed is in
                        "goal_final_le_0.49mb_drop_le_0.5": len(per_seed) == len(seeds)
                        and max(p["final_size_mb"] for p in per_seed) <= 0.49 and statistics.mean(drop) <= 0.5},
            "goal": "the smallest generation (<= 0.49 MB) loses at most 0.5 points of test top-1 to its ancestor, "
                    "mean over seeds"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--seed-runs", default="runs/seeds", help="benchmarks/seeds.py's runs (ancestors, plain lineages)")
    ap.add_argument("--runs-dir", default="runs/distill")
    ap.add_argument("--probe", action="store_true", help="choose temperature and weight on held-out")
    ap.add_argument("--probe-generations", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=GRID[0][0])
    ap.add_argument("--weight", type=float, default=GRID[0][1])
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.probe:
        probe(Path(a.seed_runs), Path(a.runs_dir), a.probe_generations, a.threads)
    else:
        lineages([int(s) for s in a.seeds.split(",")], Path(a.seed_runs), Path(a.runs_dir), a.temperature, a.weight,
                 a.threads)


if __name__ == "__main__":
    main()
