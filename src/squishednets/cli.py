"""The ``squishednets`` command: parses arguments and calls the library.

Errors the user can fix print one line, ``error: ...``, and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .errors import SquishedError

__all__ = ["main", "build_parser"]


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    d = TrainConfig()
    p.add_argument("--data", help=f"class-per-folder data set with train/ and val/ (default {d.data})")
    p.add_argument("--model", help=f"registered genome name or genome JSON file (default {d.model})")
    p.add_argument("--image-size", type=int, help=f"training resolution in px (default {d.image_size})")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], help="default sgd (Nesterov)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.2 for SGD, 2e-3 for AdamW)")
    p.add_argument("--weight-decay", type=float, help=f"default {d.weight_decay}")
    p.add_argument("--warmup-epochs", type=float, help=f"default {d.warmup_epochs}")
    p.add_argument("--label-smoothing", type=float, help=f"default {d.label_smoothing}")
    p.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm after each convolution (default on; export folds it away)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    p.add_argument("--seed", type=int, help="seed: the same seed gives the same run (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--cache-dir", help="where decoded images are cached (default ~/.cache/squishednets)")
    p.add_argument("--strict", action="store_true", default=None, help="fail on unreadable images instead of skipping")
    p.add_argument("--config", help="JSON file with defaults for any of these options")


_TRAIN_KEYS = ["data", "model", "image_size", "epochs", "batch_size", "optimizer", "lr", "weight_decay",
               "warmup_epochs", "label_smoothing", "batchnorm", "channels_last", "threads", "seed", "device",
               "cache_dir", "strict"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="squishednets", description="Very small, fast SqueezeNets for few-class tasks.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("info", help="parameters, size, MACs, memory and a per-layer table")
    p.add_argument("target", help="registered genome name, genome JSON file or checkpoint folder")
    p.add_argument("--classes", type=int, help="adapt conv10 to N classes")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("list", help="registered genomes")

    p = sub.add_parser("train", help="train a genome on a class-per-folder data set")
    _add_train_options(p)
    p.add_argument("--out", required=True, help="run folder (holds model/, state/, train.log)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("eval", help="top-1, top-5, per-class accuracy and confusion matrix on a split")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="data set folder (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="val")
    p.add_argument("--image-size", type=int, help="default: the checkpoint's training resolution")
    p.add_argument("--cache-dir")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("predict", help="class and probability for each image")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--top", type=int, default=1)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("data", help="data set tools")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    q = dsub.add_parser("imagenet10", help="cut the paper's ImageNet-10 out of a local ILSVRC2012 tree")
    q.add_argument("--ilsvrc", required=True, help="ILSVRC2012 folder holding train/<wnid>/ and val/")
    q.add_argument("--out", required=True, help="new folder for the class-per-folder ImageNet-10")
    q.add_argument("--val-labels", help="ground truth for a flat val/ folder (LOC_val_solution.csv, 'FILE WNID' lines, "
                                        "or the devkit's integer file with --synsets)")
    q.add_argument("--synsets", help="wnids in ILSVRC2012_ID order, for the devkit's integer ground truth")

    for extra in _EXTRA_PARSERS:
        extra(sub)
    return ap


_EXTRA_PARSERS: list[Any] = []


def _emit(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _genome_for_info(target: str, classes: int | None):
    from .checkpoint import is_checkpoint, load_checkpoint
    from .errors import GenomeError
    from .genome import get_genome, list_genomes, load_genome_file

    if target in list_genomes():
        g = get_genome(target)
    else:
        p = Path(target)
        if p.is_dir():
            g = load_checkpoint(p).genome
        elif p.exists():
            g = load_genome_file(p)
        elif is_checkpoint(p):  # pragma: no cover
            g = load_checkpoint(p).genome
        else:
            raise GenomeError(f"'{target}' is neither a registered genome ({', '.join(list_genomes())}), "
                              f"a genome JSON file nor a checkpoint folder")
    return g.with_classes(classes) if classes else g


def cmd_info(a: argparse.Namespace) -> int:
    from .metrics import profile

    g = _genome_for_info(a.target, a.classes)
    try:
        prof = profile(g, a.image_size)
    except ValueError as e:
        raise SquishedError(f"{e}; use a larger --image-size") from None
    d = {"name": g.name, "num_classes": g.num_classes, "batchnorm": g.batchnorm, **prof.to_dict(),
         "genome": g.to_dict()}
    if a.json:
        _emit(d)
        return 0
    print(f"{g.name}: {g.num_classes} classes, {a.image_size}px input{', BatchNorm' if g.batchnorm else ''}")
    print(f"{'layer':<18}{'kind':<11}{'in':>6}{'out':>6}{'k':>3}{'s':>3}{'out px':>8}{'params':>11}{'MACs':>14}"
          f"{'act KB':>10}")
    for layer in prof.layers:
        print(f"{layer.name:<18}{layer.kind:<11}{layer.cin:>6}{layer.cout:>6}{layer.kernel:>3}{layer.stride:>3}"
              f"{layer.out_hw:>8}{layer.params:>11,}{layer.macs:>14,}{layer.activation_bytes / 1024:>10.1f}")
    print(f"parameters {prof.params:,} ({prof.size_mb:.3f} MB fp32)" +
          (f"; {prof.train_params:,} while training with BatchNorm" if g.batchnorm else ""))
    print(f"convolution MACs {prof.macs:,}; peak activations {prof.peak_activation_bytes / 1024:.1f} KB; "
          f"parameters + activations {prof.on_chip_bytes() / 1024:.1f} KB")
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    from .genome import list_genomes

    for n in list_genomes():
        print(n)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from .config import resolve_config
    from .train import TrainConfig, run_training

    cfg = resolve_config(TrainConfig, a.config, **{k: getattr(a, k) for k in _TRAIN_KEYS})
    m = run_training(cfg, a.out, resume=a.resume, progress=not a.no_progress)
    print(f"val top-1 {m['top1']:.4f}, top-5 {m['top5']:.4f} after {m['epochs']} epochs at {m['image_size']}px; "
          f"checkpoint {Path(a.out) / 'model'}")
    return 0


def _checkpoint_data(ck, data: str | None) -> str:
    d = data or ck.config.get("data")
    if not d:
        raise SquishedError("the checkpoint does not say which data it was trained on; pass --data")
    return d


def cmd_eval(a: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .data import load_split
    from .errors import DataError
    from .train import evaluate

    ck = load_checkpoint(a.checkpoint)
    size = a.image_size or ck.config.get("image_size") or ck.metrics.get("image_size") or 224
    split = load_split(_checkpoint_data(ck, a.data), a.split, size, a.cache_dir)
    classes = ck.metrics.get("classes") or ck.config.get("classes")
    if classes and classes != split.classes:
        raise DataError(f"the data's classes {split.classes[:3]}... differ from the checkpoint's {classes[:3]}...; "
                        "evaluate on data with the same class folders")
    if len(split.classes) != ck.genome.num_classes:
        raise DataError(f"the data has {len(split.classes)} classes but the model has {ck.genome.num_classes}")
    r = evaluate(ck.model, split.images, split.labels, ck.genome.num_classes)
    r["classes"] = split.classes
    r["image_size"] = size
    if a.json:
        _emit(r)
        return 0
    print(f"{a.split}: top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  ({r['n']} images at {size}px)")
    for c, acc in zip(split.classes, r["per_class"]):
        print(f"  {c:<24}{acc:.4f}")
    print("confusion (rows: true class, columns: predicted):")
    for row in r["confusion"]:
        print("  " + " ".join(f"{v:>5}" for v in row))
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_checkpoint
    from .data import decode_image, normalize_batch
    from .errors import DataError

    ck = load_checkpoint(a.checkpoint)
    size = ck.config.get("image_size") or ck.metrics.get("image_size") or 224
    classes = ck.metrics.get("classes") or ck.config.get("classes") or [str(i) for i in range(ck.genome.num_classes)]
    arrays = []
    for img in a.images:
        p = Path(img)
        if not p.is_file():
            raise DataError(f"image {p} does not exist or is not a file")
        try:
            arrays.append(decode_image(p, size))
        except Exception as e:
            raise DataError(f"{p} is not a readable image ({type(e).__name__}); pass JPEG, PNG or another image") from None
    x = normalize_batch(torch.from_numpy(__import__("numpy").stack(arrays)))
    with torch.inference_mode():
        probs = torch.softmax(ck.model(x), 1)
    out = []
    for img, pr in zip(a.images, probs):
        top = pr.topk(min(a.top, len(classes)))
        out.append({"image": img, "predictions": [{"class": classes[i], "probability": float(v)}
                                                   for v, i in zip(top.values.tolist(), top.indices.tolist())]})
    if a.json:
        _emit(out)
    else:
        for o in out:
            print(o["image"] + ": " + ", ".join(f"{q['class']} ({q['probability']:.3f})" for q in o["predictions"]))
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    from .data import make_imagenet10

    counts = make_imagenet10(a.ilsvrc, a.out, a.val_labels, a.synsets)
    print(f"ImageNet-10 written to {a.out}: {sum(counts['train'].values())} train, "
          f"{sum(counts['val'].values())} val images")
    return 0


COMMANDS = {"info": cmd_info, "list": cmd_list, "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict,
            "data": cmd_data}


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return COMMANDS[a.cmd](a)
    except SquishedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command with --resume to continue where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
