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
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.1 for SGD, 2e-3 for AdamW)")
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

_EVOLVE_HELP = {
    "generations": "generations of synthesis (the paper ran 15)",
    "population": "offspring per generation; the fittest survives",
    "env_factor": "fixed environmental factor F(E) < 1 at cluster level",
    "target_size_mb": "target mode: reach this dense fp32 size (MB) after the last generation",
    "target_reduction": "target mode: end this many times smaller than the ancestor",
    "target_macs_reduction": "target mode: also end with this many times fewer MACs than the ancestor "
                             "(removal shifts to high-resolution layers; 0: size only)",
    "sharpness": "k in p = exp(k (s / Z - 1)); 1 as in the papers",
    "size_draws": "target mode: offspring drawn per candidate, the one nearest the target size kept (1: plain)",
    "synapse_level": "also sample synapses inside surviving filters (fixed masks; sparse size reported)",
    "synapse_factor": "F(E) at synapse level",
    "min_width": "fewest filters a layer keeps",
    "round_to": "round widths to a multiple of this (1: off)",
    "init": "inherit: surviving weights sliced in; scratch: fresh weights",
    "epochs": "training epochs per generation",
    "holdout": "fraction of train held out for fitness (never val)",
    "fitness": "top1 (held-out top-1) or smallest",
    "max_size_mb": "constraint: largest size in MB (0: none)",
    "max_macs": "constraint: largest MACs (0: none)",
    "min_top1": "constraint: smallest held-out top-1 (0: none)",
}


def add_dataclass_options(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                          helps: dict[str, str] | None = None) -> list[str]:
    """One option per dataclass field (``--field-name``), typed by its default."""
    import dataclasses

    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        h = (helps or {}).get(f.name, "")
        h = f"{h} (default {f.default})" if h else f"default {f.default}"
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=h)
        else:
            p.add_argument(flag, type=type(f.default), default=None, help=h)
        names.append(f.name)
    return names


def _evolve_parser(sub: Any) -> None:
    from .evolve import EvolveConfig

    p = sub.add_parser("evolve", help="generations of evolutionary synthesis from a trained checkpoint")
    p.add_argument("checkpoint", help="the trained ancestor (checkpoint or train run folder)")
    p.add_argument("--out", required=True, help="run folder; the same command resumes it")
    p.add_argument("--config", help="JSON file with defaults for any of these options")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(_evolve_keys=add_dataclass_options(p, EvolveConfig, helps=_EVOLVE_HELP))


_EXTRA_PARSERS.append(_evolve_parser)


_RUN_HELP = {
    "data": "class-per-folder data set (train/ and val/)",
    "image_size": "training and benchmark input size in pixels",
    "target_size_mb": "dense fp32 size (MB) of the last generation",
    "target_macs_reduction": "the last generation has this many times fewer MACs than the ancestor (0: size only)",
    "bench_rounds": "time the lineage this many times, interleaved; figures are medians over rounds",
    "round_to": "widths a multiple of this (16 suits ONNX Runtime on AVX-512 and AVX2; 1: off)",
}


def _product_parsers(sub: Any) -> None:
    from .pipeline import PRESETS, RunConfig

    p = sub.add_parser("bench", help="size, MACs, memory, speed and efficiency of a model or a whole lineage")
    p.add_argument("target", help="registered genome, checkpoint, or evolve run folder (then every generation)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--runs", type=int, default=20, help="timed runs per figure, at least (medians are reported)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per figure, at least")
    p.add_argument("--rounds", type=int, default=1,
                   help="time every model this many times, interleaved; figures are medians over rounds")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--budget-kb", type=int, default=8192, help="on-chip budget for parameters + activations")
    p.add_argument("--classes", type=int, default=10, help="classes, for a registered genome")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("export", help="ONNX export, checked against PyTorch in ONNX Runtime")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", help="file to write (default: CHECKPOINT/model.onnx)")
    p.add_argument("--int8", action="store_true", help="also static int8, calibrated on real training images")
    p.add_argument("--data", help="data for int8 calibration and its val top-1 (default: the checkpoint's)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--cache-dir")

    p = sub.add_parser("report", help="Table 1, CSV/JSON and an HTML page with plots for an evolve run")
    p.add_argument("run", help="evolve run folder")
    p.add_argument("--out", help="folder for the report (default RUN/report)")

    p = sub.add_parser("run", help="the whole job: ancestor, evolution, benchmark, report, export")
    p.add_argument("--out", default="runs/main", help="run folder; the same command resumes it (default runs/main)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="default: 64 px, fits 60 min on 2 cores; paper: 224 px as in the paper, for a GPU")
    p.add_argument("--config", help="JSON file with defaults for any of these options")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(_run_keys=add_dataclass_options(p, RunConfig, helps=_RUN_HELP))


_EXTRA_PARSERS.append(_product_parsers)


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import BenchConfig, bench_target

    if a.rounds < 1:
        raise SquishedError(f"--rounds must be >= 1, got {a.rounds}")
    cfg = BenchConfig(image_size=a.image_size, batch=a.batch, runs=a.runs, threads=a.threads, budget_kb=a.budget_kb,
                      min_time=a.min_time, rounds=a.rounds)
    r = bench_target(a.target, cfg, classes=a.classes, out_json=a.out, progress=not a.json)
    if a.json:
        _emit(r)
        return 0
    print(f"{r['machine']['cpu']}, {r['threads']} threads, fp32 matmul {r['matmul_gflops']:.1f} GFLOP/s"
          f"{'; machine was BUSY' if r['machine_busy'] else ''}; {a.image_size}px")
    print(f"{'model':<34}{'MB':>7}{'MACs (M)':>10}{'eager':>8}{'cl':>8}{'ORT':>8}{'ORT b1 ms':>10}{'ORT eff':>8}"
          f"{'fits KB':>9}")
    for m in r["models"]:
        print(f"{m['name'][:33]:<34}{m['size_mb']:>7.3f}{m['macs'] / 1e6:>10.1f}{m['eager_b32_img_s']:>8.1f}"
              f"{m['cl_b32_img_s']:>8.1f}{m['ort_b32_img_s']:>8.1f}{m['ort_b1_ms']:>10.2f}{m['ort_efficiency']:>8.1%}"
              f"{'yes' if m['fits_budget'] else 'no':>9}")
    print("images/s at batch 32; efficiency = 2 x MACs x images/s / matmul rate")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .checkpoint import resolve_checkpoint
    from .export import export_checkpoint

    out = a.out or str(resolve_checkpoint(a.checkpoint) / "model.onnx")
    info = export_checkpoint(a.checkpoint, out, int8=a.int8, data=a.data, cache_dir=a.cache_dir,
                             image_size=a.image_size)
    print(f"wrote {info['path']} ({info['bytes'] / 1e6:.3f} MB), ONNX Runtime matches PyTorch at batch 1 and 5 "
          f"(max |diff| {info['max_abs_diff']:.2e})")
    if a.int8:
        print(f"wrote {info['int8_path']} ({info['int8_bytes'] / 1e6:.3f} MB); val top-1 fp32 "
              f"{info['fp32_val_top1']:.4f}, int8 {info['int8_val_top1']:.4f} ({info['val_images']} images)")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .report import write_report

    paths = write_report(a.run, a.out)
    print(Path(paths["markdown"]).read_text())
    print(f"HTML report: {paths['html']}")
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from .config import resolve_config
    from .pipeline import PRESETS, RunConfig, run_all

    overrides = {**PRESETS[a.preset], **{k: v for k in a._run_keys if (v := getattr(a, k)) is not None}}
    cfg = resolve_config(RunConfig, a.config, **overrides)
    run_all(cfg, a.out, say=lambda s: print(s, flush=True), progress=not a.no_progress)
    return 0


def cmd_evolve(a: argparse.Namespace) -> int:
    from .config import resolve_config
    from .evolve import EvolveConfig, evolve

    cfg = resolve_config(EvolveConfig, a.config, **{k: getattr(a, k) for k in a._evolve_keys})
    lineage = evolve(a.checkpoint, a.out, cfg, progress=not a.no_progress)
    print(f"{'gen':>4}{'size MB':>10}{'params':>10}{'MACs':>14}{'val top-1':>11}{'held-out':>10}{'F(E)':>8}")
    for e in lineage:
        f = e["env_factor"]
        print(f"{e['generation']:>4}{e['size_mb']:>10.3f}{e['params']:>10,}{e['macs']:>14,}{e['top1']:>11.4f}"
              f"{e['holdout_top1']:>10.4f}{'' if f is None else format(f, '.3f'):>8}")
    print(f"lineage: {Path(a.out) / 'lineage.json'}")
    return 0


def _emit(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _genome_for_info(target: str, classes: int | None):
    from .checkpoint import load_checkpoint
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
    import numpy as np
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
    x = normalize_batch(torch.from_numpy(np.stack(arrays)))
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
            "data": cmd_data, "evolve": cmd_evolve, "bench": cmd_bench, "export": cmd_export, "report": cmd_report,
            "run": cmd_run}


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
