"""Accuracy against time for the 10-class SqueezeNet v1.1 ancestor on Imagenette.

Each run trains from scratch with the library's trainer and reports val top-1,
epochs and wall time; runs of one invocation are meant to have about equal
time budgets, so that the resolution/epochs trade-off can be read off.

    python benchmarks/accuracy.py --runs 64:24,96:11,128:6 --name accuracy_sweep
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import write_result

from squishednets.bench import CpuMonitor
from squishednets.train import DEFAULT_DATA, TrainConfig, run_training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", required=True, help="comma-separated SIZE:EPOCHS pairs")
    ap.add_argument("--name", default="accuracy_sweep")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default="runs/bench-accuracy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[],
                    help="extra TrainConfig field for every run, KEY=VALUE (e.g. min_scale=0.7); repeatable")
    args = ap.parse_args()
    extra = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        extra[k] = type(getattr(TrainConfig(), k))(v)
    tag = "".join(f"-{k}{v}" for k, v in extra.items())
    results = []
    for spec in args.runs.split(","):
        size, epochs = (int(v) for v in spec.split(":"))
        out = Path(args.out) / f"{size}px-{epochs}ep-s{args.seed}{tag}"
        if out.exists():
            shutil.rmtree(out)
        cfg = TrainConfig(data=args.data, image_size=size, epochs=epochs, seed=args.seed, eval_every=0, **extra)
        t0 = time.perf_counter()
        with CpuMonitor() as mon:
            m = run_training(cfg, out, progress=False)
        wall = time.perf_counter() - t0
        results.append({"image_size": size, "epochs": epochs, "seed": args.seed, **extra, "top1": m["top1"], "top5": m["top5"],
                        "wall_s": wall, "train_time_s": m["train_time_s"], "train_img_s": m["train_img_s"],
                        "other_cpu_cores": mon.other_cores, "machine_busy": mon.busy,
                        "checkpoint": str(out / "model")})
        print(results[-1], flush=True)
        write_result(args.name, {"data": args.data, "split": "val", "runs": results})


if __name__ == "__main__":
    main()
