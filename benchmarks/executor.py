"""Design points per hour: in this process against 2 local Ray workers (and 2 local processes).

The playbook (section 3) and the SqueezeNet paper (section 5) explored their
design spaces as one training job per point on 128-GPU clusters; ``explore``
sends its points through one executor (``executor.py``), in this process,
in local processes (``--workers``) or as Ray tasks (``--ray-address``). This
script runs the same small random exploration three ways, each in a fresh
folder, one after the other on this machine:

* ``in_process``: points one after another, each training on every core;
* ``processes_2``: 2 local worker processes, one thread each;
* ``ray_local_2``: a Ray instance started here with 2 CPUs, one thread per task.

Each point is a real, short training on a class-balanced sample of Imagenette
(copied once into the runs folder) plus its ONNX export and speed figures, so
the per-point overheads (process start, Ray start, data cache reads, export)
are in the figure, not only training. Points per hour count the search phase
(every point trained and measured); the final serial timing pass, the same in
every mode, is reported apart. Before each mode the other processes' CPU use
is sampled for a few seconds: the comparison only means something when that
is near zero (``quiet``). On 2 cores, 2 workers can at best double the rate of
a 1-thread point, and a 2-thread in-process point is already faster than a
1-thread one, so the ratio shows the executor's overhead and how well 2 cores
split, not a cluster's speed-up.

    python benchmarks/executor.py --runs-dir runs/executor
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import time
from pathlib import Path

from common import write_result

from squishednets.bench import CpuMonitor
from squishednets.executor import ExecConfig
from squishednets.explore import EXPLORE_TRAIN, ExploreConfig, explore
from squishednets.train import DEFAULT_DATA

MODES = {
    "in_process": (ExecConfig(), None),
    "processes_2": (ExecConfig(workers=2), 1),
    "ray_local_2": (ExecConfig(workers=2, ray_address="local"), 1),
}


def sample(src: Path, dst: Path, n_train: int, n_val: int) -> Path:
    """A class-balanced copy of the first ``n_train``/``n_val`` images of every class (done once)."""
    if (dst / "DONE").is_file():
        return dst
    if dst.exists():
        shutil.rmtree(dst)
    for split, n in (("train", n_train), ("val", n_val)):
        for cls in sorted(p.name for p in (src / split).iterdir() if p.is_dir()):
            d = dst / split / cls
            d.mkdir(parents=True)
            for f in sorted((src / split / cls).iterdir())[:n]:
                shutil.copy(f, d / f.name)
    (dst / "DONE").write_text("")
    return dst


def other_cores(seconds: float = 5.0) -> float | None:
    """Cores used by other processes while this one sleeps."""
    with CpuMonitor() as mon:
        time.sleep(seconds)
    return mon.other_cores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default="runs/executor")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--train-per-class", type=int, default=150)
    ap.add_argument("--val-per-class", type=int, default=30)
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds of every mode (medians and ranges are reported)")
    a = ap.parse_args()
    root = Path(a.runs_dir)
    data = sample(Path(a.data), root / "data", a.train_per_class, a.val_per_class)
    modes = a.modes.split(",")
    rounds: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(a.rounds):
        # Rotated each round: no mode always goes first (the decoded-image
        # cache is cold only for the very first point of the first round).
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
            rounds[mode].append(run_mode(mode, root, data, a))
            print(f"round {r + 1}: {mode}: {rounds[mode][-1]['points']} points in {rounds[mode][-1]['search_s']:.0f} s"
                  f" = {rounds[mode][-1]['points_per_hour']:.0f} points/h (other cores before: "
                  f"{rounds[mode][-1]['other_cores_before']})", flush=True)
    results = {}
    for mode, rs in rounds.items():
        trains = [r["median_point_train_s"] for r in rs if r["median_point_train_s"] is not None]
        pph = [r["points_per_hour"] for r in rs]
        results[mode] = {**{k: rs[0][k] for k in ("executor", "threads_per_point", "points")},
                         "points_per_hour": statistics.median(pph), "points_per_hour_range": [min(pph), max(pph)],
                         "search_s": statistics.median(r["search_s"] for r in rs),
                         "timing_pass_s": statistics.median(r["timing_pass_s"] for r in rs),
                         "median_point_train_s": statistics.median(trains) if trains else None,
                         "quiet": all(r["quiet"] for r in rs), "rounds": rs}
    for mode, r in results.items():
        r["vs_in_process"] = None  # without an in-process mode to compare with
        if "in_process" in rounds:
            ratios = [x["points_per_hour"] / b["points_per_hour"] for x, b in zip(rounds[mode], rounds["in_process"])]
            r["vs_in_process"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    write_result("executor", {
        "data": str(a.data), "train_per_class": a.train_per_class, "val_per_class": a.val_per_class,
        "epochs_per_point": a.epochs, "image_size": a.image_size, "strategy": "random", "rounds": a.rounds,
        "modes": results, "quiet": all(r["quiet"] for r in results.values()),
    })


def run_mode(mode: str, root: Path, data: Path, a: argparse.Namespace) -> dict:
    """One fresh exploration on ``mode``'s executor: its search and timing-pass times."""
    ex, threads = MODES[mode]
    out = root / mode
    if out.exists():
        shutil.rmtree(out)  # a fresh folder: a resumed run would time nothing
    train = dataclasses.replace(EXPLORE_TRAIN, data=str(data), epochs=a.epochs, image_size=a.image_size,
                                threads=threads, cache_dir=str(root / "cache"))
    cfg = ExploreConfig(strategy="random", trials=a.points, front_seeds=1, timing_rounds=1, train=train,
                        executor=ex)
    load = other_cores()
    marks: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    doc = explore(cfg, out, progress=False, say=lambda m: marks.append((time.perf_counter(), m)))
    wall = time.perf_counter() - t0
    t_timing = next(t for t, m in marks if m.lstrip().startswith("timing every point"))
    search_s = t_timing - t0
    points = len(doc["points"])
    train_s = [p["train_time_s"] for p in doc["points"] if p.get("train_time_s")]
    return {
        "executor": doc["executor"], "threads_per_point": threads or "every core", "points": points,
        "search_s": search_s, "timing_pass_s": wall - search_s, "wall_s": wall,
        "points_per_hour": points * 3600 / search_s,
        "median_point_train_s": statistics.median(train_s) if train_s else None,
        "other_cores_before": load, "quiet": load is not None and load < 0.2,
        "log": [[round(t - t0, 1), m.strip()] for t, m in marks],
    }


if __name__ == "__main__":
    main()
