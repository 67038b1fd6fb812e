"""Trainer throughput against a bare training loop, measured in one run.

The bare loop trains the same network (10-class SqueezeNet v1.1 with BN,
channels_last) with the same optimizer on one pre-normalised in-memory batch:
no indexing, no augmentation, no bookkeeping. The trainer runs ``fit`` on
real Imagenette images (uint8 cache, batch augmentation). Rounds alternate
bare / trainer so that machine noise hits both; the ratio of medians is
reported (target >= 0.95).

    python benchmarks/train_throughput.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
from common import write_result

from squishednets.bench import CpuMonitor
from squishednets.data import load_dataset
from squishednets.genome import get_genome
from squishednets.model import build
from squishednets.train import DEFAULT_DATA, TrainConfig, fit, param_groups


def bare_loop(steps: int, batch: int, size: int) -> float:
    torch.manual_seed(0)
    model = build(get_genome("squeezenet1_1", 10, batchnorm=True)).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.05, momentum=0.9, nesterov=True)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def trainer(train, size: int, batch: int, images: int) -> float:
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:images]
    cfg = TrainConfig(image_size=size, epochs=2, batch_size=batch, lr=0.05, threads=2, eval_every=None)
    torch.manual_seed(0)
    model = build(get_genome("squeezenet1_1", 10, batchnorm=True))
    res = fit(model, (train.images[idx], train.labels[idx]), cfg, desc=None)
    return res["history"][-1]["img_s"]  # the second epoch: warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--images", type=int, default=2560, help="images per trainer epoch")
    ap.add_argument("--data", default=DEFAULT_DATA)
    args = ap.parse_args()
    torch.set_num_threads(2)
    train, _ = load_dataset(args.data, args.image_size)
    steps = args.images // args.batch
    bare, ours = [], []
    with CpuMonitor() as mon:
        for r in range(args.rounds):
            bare.append(bare_loop(steps, args.batch, args.image_size))
            ours.append(trainer(train, args.image_size, args.batch, args.images))
            print(f"round {r + 1}: bare {bare[-1]:.1f} img/s, trainer {ours[-1]:.1f} img/s", flush=True)
    ratio = statistics.median(ours) / statistics.median(bare)
    path = write_result("train_throughput", {
        "image_size": args.image_size, "batch": args.batch, "threads": 2, "rounds": args.rounds,
        "bare_img_s": bare, "trainer_img_s": ours, "bare_median": statistics.median(bare),
        "trainer_median": statistics.median(ours), "ratio": ratio, "target_ratio": 0.95,
        "other_cpu_cores": mon.other_cores, "machine_busy": mon.busy,
    })
    print(f"ratio {ratio:.3f} (target >= 0.95); {path}")


if __name__ == "__main__":
    main()
