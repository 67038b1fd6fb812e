"""Evolution against what users would pick instead, at matched sizes and budgets.

For each seed: a short version of the main job (``RunConfig()`` with the
ancestor trained ``--ancestor-epochs`` and each of the 15 generations
``--generation-epochs``; the default run's 60 and 12 would take the peers
trained from scratch about 15 hours per seed on 2 cores), then ``squishednets
compare`` on it, one method at a time. The budgets stay matched inside each
seed: a network trained from scratch gets the epochs the lineage spent to reach
its size.

The matched sizes are those of generations 3, 6, 9, 12 and 15 (``--generations``):
evenly spaced generations, whose sizes are about evenly spaced in log scale
(2.0, 1.4, 1.0, 0.69 and 0.49 MB). ``compare``'s default, SquishedNet-1..4 from
the held-out Pareto front plus the last generation, gives only two sizes on
this short recipe: held-out top-1 still rises with the generations' extra
epochs, so one late generation dominates every larger one.

One seed takes about 3.5 hours of both cores, more than one working session
here, and run folders do not outlive the machine. So each (seed, method) is a
part of its own, committed as results/peers_parts/seed{S}_{METHOD}.json as soon
as it is done (one part per size, seed{S}_{METHOD}_g{GG}.json, for the methods
trained from scratch, whose networks are independent): its rows, the ancestor
timed in the same ONNX Runtime pass (``ort_speedup_64px`` is a ratio from one
pass, comparable across parts timed on other days), and the lineage's fingerprint (weights digests of the
ancestor and every matched generation). A later run skips the committed parts;
on a new machine it trains the seed's lineage again (deterministic on the CPU
for a given seed, which the fingerprint checks) and refuses to mix parts
measured on another lineage.

``--summarize`` writes results/peers.json from the parts: per method, per
target generation, per seed: size_mb, macs, heldout_top1, test_top1,
ort_b32_img_s at 64 px (and 224 px), train_wall_s, epochs, and the
Torch-Pruning version; means and sd over seeds per method and target; and the
goal: at every matched size the better of evolution and evolution_distill has a
higher mean test top-1 than every peer at equal or fewer total epochs (the
variant chosen on held-out top-1, judged on test top-1).

    python benchmarks/peers.py --seeds 0,1 --runs-dir runs/peers [--methods torch_pruning,...]
    python benchmarks/peers.py --seeds 0,1 --runs-dir runs/peers --retime   # on a quiet machine
    python benchmarks/peers.py --seeds 0,1 --summarize
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import ANCESTOR_EPOCHS, GENERATION_EPOCHS, RESULTS, lineage, stats, write_result

from squishednets.checkpoint import weights_digest
from squishednets.compare import METHODS, CompareConfig, compare, goal, net_key, targets_of
from squishednets.records import Lineage
from squishednets.report import compare_dir

PARTS = "peers_parts"
# The lineage's training threads, fixed so that a later session (any --threads)
# retrains the very weights the committed parts were matched to. 2: the cores
# of the machines this benchmark has run on, and what trained the existing parts.
LINEAGE_THREADS = 2


# Methods trained from scratch train one network per matched size, each on its
# own: their parts are one size each, so a session that ends mid-method keeps
# the networks it finished. The others grow one lineage through every size.
SCRATCH = ("lineage_from_scratch", "scaled_width", "scaled_design")


def units(methods, recipe: dict) -> list[tuple[str, int | None]]:
    """The parts of ``methods``: (method, generation) per size, or (method, None) for all sizes at once."""
    return [(m, g) for m in methods for g in (recipe["generations"] if m in SCRATCH else [None])]


def part_name(seed: int, method: str, gen: int | None = None) -> str:
    """The part's name for ``write_result``: peers_parts/seed{S}_{METHOD}[_g{GG}]."""
    return f"{PARTS}/seed{seed}_{method}" + ("" if gen is None else f"_g{gen:02d}")


def part_path(seed: int, method: str, gen: int | None = None) -> Path:
    return RESULTS / f"{part_name(seed, method, gen)}.json"


def fingerprint(evolve_dir: Path, lin, generations: tuple[int, ...]) -> dict:
    """What makes two lineages the same: the weights of the ancestor and of
    every generation a peer is matched to (and so their sizes)."""
    gens = [lin.generations[0], *targets_of(lin, generations)]
    return {"weights": {str(e.generation): weights_digest(evolve_dir / e.path) for e in gens},
            "params": {str(e.generation): e.params for e in gens}}


def run_part(seed: int, method: str, gen: int | None, root: Path, lin, fp: dict, recipe: dict,
             threads: int | None, expect_weights: list[str] | None = None) -> None:
    """``compare`` with one method (at one size, or all), then its rows
    committed as a part (with ``expect_weights``, only if its networks are those)."""
    gens = tuple(recipe["generations"]) if gen is None else (gen,)
    doc = compare(root / "evolve", CompareConfig(methods=(method,), generations=gens, threads=threads),
                  progress=sys.stderr.isatty(), say=lambda s: print(s, flush=True))
    anc = doc["ancestor"]
    rows = [{**r, "ort_speedup_64px": r["ort_b32_img_s_64px"] / anc["ort_b32_img_s_64px"]} for r in doc["rows"]]
    if expect_weights is not None and [r["weights"] for r in rows] != expect_weights:
        sys.exit(f"error: the networks of {part_path(seed, method, gen)} are not those in {root}; not rewritten")
    write_result(part_name(seed, method, gen), {
        "seed": seed, "method": method, "generation": gen, "recipe": recipe, "fingerprint": fp, "train_threads": threads,
        "torch_pruning_version": doc["torch_pruning_version"],
        "test_split": doc["test_split"], "targets": doc["targets"], "ancestor": anc, "rows": rows,
        "timing": doc["timing"], "notes": doc["notes"], "errors": doc["errors"],
        "lineage": {"ancestor_test_top1": lin.generations[0].test_top1,
                    "final_size_mb": lin.generations[-1].size_mb, "final_test_top1": lin.generations[-1].test_top1}})
    print(f"seed {seed} {method}: {len(rows)} rows -> {part_path(seed, method, gen)}", flush=True)


def _check(s: int, root: Path, fp: dict, recipe: dict) -> None:
    """Every committed part of seed ``s`` (any method) was measured on this lineage and recipe."""
    for path in sorted((RESULTS / PARTS).glob(f"seed{s}_*.json")):
        old = json.loads(path.read_text())
        if old["recipe"] != recipe:
            sys.exit(f"error: {path} was measured with {old['recipe']}, this run asks for {recipe}; use its "
                     "options or delete the seed's parts")
        if old["fingerprint"] != fp:
            sys.exit(f"error: {path} was measured on another seed-{s} lineage than {root} holds (weights "
                     "differ); delete the seed's parts to measure them all on this one")


def run(seeds: list[int], methods: list[str], runs_dir: Path, recipe: dict, threads: int | None) -> None:
    for s in seeds:
        todo = [u for u in units(methods, recipe) if not part_path(s, *u).is_file()]
        if not todo:
            print(f"seed {s}: every part is committed", flush=True)
            continue
        root = runs_dir / f"seed{s}"
        # The lineage always trains on LINEAGE_THREADS, whatever --threads
        # says: the parts of other sessions were matched to its weights, and a
        # reduction split over another thread count need not give the same bits.
        lin = lineage(s, root, recipe["ancestor_epochs"], recipe["generation_epochs"], recipe["lineage_threads"])
        fp = fingerprint(root / "evolve", lin, tuple(recipe["generations"]))
        _check(s, root, fp, recipe)
        for m, g in todo:
            run_part(s, m, g, root, lin, fp, recipe, threads)


def retime(seeds: list[int], methods: list[str], runs_dir: Path, recipe: dict) -> None:
    """Time again the committed parts whose ONNX Runtime pass found the machine
    busy (parts trained side by side), where their networks are still in
    ``runs_dir``: nothing trains, the part is rewritten with the new pass."""
    for s in seeds:
        root = runs_dir / f"seed{s}"
        cdir = compare_dir(root / "evolve")
        checked = None  # the lineage's (Lineage, fingerprint), read and checked once per seed
        for m, g in units(methods, recipe):
            path = part_path(s, m, g)
            part = json.loads(path.read_text()) if path.is_file() else None
            if part is None or not part["timing"]["machine_busy"]:
                continue
            nets = [cdir / net_key(m, r["seed"], r["generation"]) / "result.json" for r in part["rows"]]
            if not (root / "evolve" / "lineage.json").is_file() or not all(n.is_file() for n in nets):
                print(f"seed {s} {m}: timed while busy, and its networks are not in {cdir}; left as it is", flush=True)
                continue
            if checked is None:
                lin = Lineage.load(root / "evolve")
                checked = lin, fingerprint(root / "evolve", lin, tuple(recipe["generations"]))
                _check(s, root, checked[1], recipe)
            lin, fp = checked
            (cdir / "timing.json").unlink(missing_ok=True)  # a cache keyed by the networks, not by the machine's load
            run_part(s, m, g, root, lin, fp, recipe, None, expect_weights=[r["weights"] for r in part["rows"]])


def summarize(seeds: list[int], recipe: dict) -> None:
    rows, versions, targets, splits, timing, notes, errors = [], set(), {}, set(), [], [], {}
    all_units = units(METHODS, recipe)
    missing = [str(part_path(s, *u)) for s in seeds for u in all_units if not part_path(s, *u).is_file()]
    if missing:
        sys.exit(f"error: {len(missing)} parts are not measured yet ({', '.join(missing)}); run this script "
                 "without --summarize first")
    recipes = []
    for s in seeds:
        parts = [json.loads(part_path(s, *u).read_text()) for u in all_units]
        if any(p["fingerprint"] != parts[0]["fingerprint"] for p in parts):
            sys.exit(f"error: seed {s}'s parts were measured on different lineages; delete them and run again")
        recipes += [p["recipe"] for p in parts]
        targets[s] = [t["generation"] for t in parts[0]["targets"]]  # the first part is evolution's: every size
        for p in parts:
            versions.add(p["torch_pruning_version"])
            splits.add(p["test_split"])
            notes = list(dict.fromkeys(notes + p["notes"]))  # the per-network ones name their seed
            errors.update({f"seed {s} {k}": v for k, v in p["errors"].items()})
            timing.append({"seed": s, "method": p["method"], "generation": p.get("generation"), "date": p["date"],
                           **p["timing"]})
            for r in p["rows"]:
                rows.append({"run_seed": s, "method": r["method"], "seed": r["seed"], "generation": r["generation"],
                             "target_size_mb": r["target_size_mb"], "size_mb": r["size_mb"], "macs": r["macs"],
                             "heldout_top1": r["heldout_top1"], "test_top1": r["test_top1"],
                             "ort_b32_img_s": r["ort_b32_img_s_64px"], "ort_b32_img_s_224px": r["ort_b32_img_s_224px"],
                             "ort_speedup_64px": r["ort_speedup_64px"], "train_wall_s": r["train_wall_s"],
                             "epochs": r["epochs"], "within_tolerance": r["within_tolerance"],
                             "unpruned_layers": r.get("unpruned_layers", [])})
    if any(r != recipes[0] for r in recipes):
        sys.exit("error: the parts were measured with different recipes (epochs, generations or lineage threads); "
                 "delete the odd ones and run again")
    # Targets are matched by rank: every part has the same --generations, and
    # the ranks stay right if a lineage ever has fewer generations.
    by: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        rank = targets[r["run_seed"]].index(r["generation"])
        by.setdefault(r["method"], {}).setdefault(rank, []).append(r)
    summary = {m: {str(k): {"size_mb": stats([r["size_mb"] for r in v]),
                            "test_top1": stats([r["test_top1"] for r in v]),
                            "heldout_top1": stats([r["heldout_top1"] for r in v]),
                            "ort_b32_img_s": stats([r["ort_b32_img_s"] for r in v]),
                            "ort_speedup_64px": stats([r["ort_speedup_64px"] for r in v]),
                            # a ratio that swings between passes (the same genome gave 0.99x and
                            # 1.48x in two): quoted with its range over seeds
                            "ort_speedup_64px_range": [min(r["ort_speedup_64px"] for r in v),
                                                       max(r["ort_speedup_64px"] for r in v)],
                            "train_wall_s": stats([r["train_wall_s"] for r in v]),
                            "epochs": max(r["epochs"] for r in v),
                            "all_within_tolerance": all(r["within_tolerance"] for r in v)}
                    for k, v in sorted(ranks.items())}
               for m, ranks in by.items()}
    verdict = goal(summary, sorted({k for ranks in summary.values() for k in ranks}, key=int))
    # A method that failed on a seed (no rows) must not drop out of the verdict.
    full = not errors and all(len(summary.get(m, {})) == len(recipes[0]["generations"])
                              and all(v["test_top1"]["n"] == len(seeds) for v in summary[m].values())
                              for m in METHODS)
    path = write_result("peers", {
        "seeds": seeds, "methods": list(METHODS), "torch_pruning_version": sorted(v for v in versions if v),
        **recipes[0], "image_size": 64, "selected_by": "heldout",
        "test_split": sorted(splits), "targets": {str(s): t for s, t in targets.items()}, "rows": rows,
        "summary": summary, "goal_per_target": verdict["per_generation"], "goal_met": verdict["met"] and full,
        "every_method_on_every_seed_and_size": full,
        "goal": verdict["rule"], "targets_matched_by": "rank of the --generations list (generation numbers per seed in targets)",
        "timing": timing, "notes": notes, "errors": errors,
        "speed_note": "ort_b32_img_s comes from each part's own ONNX Runtime pass (parts may be timed on other "
                      "days); ort_speedup_64px divides it by the ancestor's figure from the same pass"})
    print(table(summary, list(METHODS)), flush=True)
    print(f"goal met: {verdict['met'] and full} -> {path}", flush=True)


def table(summary: dict, methods: list[str]) -> str:
    """The Markdown table BENCHMARKS.md quotes: per matched size, each
    method's test top-1 (mean ± sd over seeds, n) and its ORT speed over the
    ancestor at 64 px (the range over seeds)."""
    ranks = sorted({k for m in summary.values() for k in m}, key=int)
    out = ["| size (MB) | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for k in ranks:
        sizes = [summary[m][k]["size_mb"]["mean"] for m in methods if k in summary.get(m, {})]
        cells = []
        for m in methods:
            v = summary.get(m, {}).get(k)
            if v is None:
                cells.append("—")
                continue
            lo, hi = v["ort_speedup_64px_range"]
            t = v["test_top1"]
            cells.append(f"{100 * t['mean']:.1f} ± {100 * t['sd']:.1f} (n={t['n']}; {lo:.2f}–{hi:.2f}×)")
        out.append(f"| {min(sizes):.2f}–{max(sizes):.2f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, some of " + ",".join(METHODS))
    ap.add_argument("--runs-dir", default="runs/peers")
    ap.add_argument("--ancestor-epochs", type=int, default=ANCESTOR_EPOCHS)
    ap.add_argument("--generation-epochs", type=int, default=GENERATION_EPOCHS)
    ap.add_argument("--generations", default="3,6,9,12,15",
                    help="the lineage's generations whose sizes the peers match (see the module docstring)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--summarize", action="store_true")
    ap.add_argument("--retime", action="store_true",
                    help="time again the parts timed on a busy machine whose networks are still in --runs-dir")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    methods = [m for m in a.methods.split(",") if m]
    if not methods or set(methods) - set(METHODS):
        ap.error(f"--methods must be some of {','.join(METHODS)}, got {a.methods}")
    try:
        generations = sorted({int(g) for g in a.generations.split(",")})
    except ValueError:
        ap.error(f"--generations must list generation numbers, e.g. 3,6,9,12,15, got {a.generations}")
    if not generations or generations[0] < 1:
        ap.error(f"--generations must list evolved generations (1 or more), got {a.generations}")
    recipe = {"ancestor_epochs": a.ancestor_epochs, "generation_epochs": a.generation_epochs,
              "generations": generations, "lineage_threads": LINEAGE_THREADS}
    if a.summarize:
        summarize(seeds, recipe)
    elif a.retime:
        retime(seeds, methods, Path(a.runs_dir), recipe)
    else:
        run(seeds, methods, Path(a.runs_dir), recipe, a.threads)


if __name__ == "__main__":
    main()
