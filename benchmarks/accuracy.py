"""Accuracy against time for the 10-class SqueezeNet v1.1 ancestor on Imagenette.

Each run trains from scratch with the library's trainer on train minus its
held-out part and reports held-out top-1 (what a choice of default may read),
test top-1 (reported only), epochs and wall time; runs of one invocation are
meant to have about equal time budgets, so that the resolution/epochs
trade-off can be read off.

    python benchmarks/accuracy.py --runs 64:24,96:11,128:6 --name accuracy_sweep
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import write_result

from squishednets.bench import CpuMonitor
from squishednets.config import apply
from squishednets.errors import ConfigError
from squishednets.records import SELECTED_BY
from squishednets.train import DEFAULT_DATA, TrainConfig, run_training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", required=True, help="comma-separated SIZE:EPOCHS pairs")
    ap.add_argument("--name", default="accuracy_sweep")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default="runs/bench-accuracy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[],
                    help="extra TrainConfig field for every run, KEY=VALUE (e.g. min_scale=0.7, a JSON value); "
                         "repeatable")
    args = ap.parse_args()
    extra = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        try:
            extra[k] = json.loads(v)
        except json.JSONDecodeError:
            extra[k] = v  # a plain string
    try:
        apply(TrainConfig(), extra, "--set")  # unknown keys and bad values fail before any training
    except ConfigError as e:
        ap.error(str(e))
    tag = "".join(f"-{k}{v}" for k, v in extra.items())
    results = []
    for spec in args.runs.split(","):
        size, epochs = (int(v) for v in spec.split(":"))
        out = Path(args.out) / f"{size}px-{epochs}ep-s{args.seed}{tag}"
        if out.exists():
            shutil.rmtree(out)
        cfg = apply(TrainConfig(data=args.data, image_size=size, epochs=epochs, seed=args.seed, eval_every=None),
                    extra, "--set")
        t0 = time.perf_counter()
        with CpuMonitor() as mon:
            m = run_training(cfg, out, progress=False)
        wall = time.perf_counter() - t0
        results.append({"image_size": size, "epochs": epochs, "seed": args.seed, **extra,
                        "heldout_top1": m["heldout_top1"], "test_top1": m["test_top1"], "test_top5": m["test_top5"],
                        "wall_s": wall, "train_time_s": m["train_time_s"], "train_img_s": m["train_img_s"],
                        "other_cpu_cores": mon.other_cores, "machine_busy": mon.busy,
                        "checkpoint": str(out / "model")})
        print(results[-1], flush=True)
        write_result(args.name, {"data": args.data, "selected_by": SELECTED_BY, "holdout": cfg.holdout,
                                 "test_split": m["test_split"], "runs": results})


if __name__ == "__main__":
    main()
