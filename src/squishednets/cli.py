"""The ``squishednets`` command: parses arguments and calls the library.

Options of the long commands are generated from their configuration
dataclasses (``config.add_options``): help text and defaults live there once.
Errors the user can fix print one line, ``error: ...``, and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .analysis import AnalyzeConfig
from .analyze import analyze_target, summary
from .bench import BenchConfig, bench_target
from .checkpoint import load_checkpoint, resolve_checkpoint, resolve_genome
from .compare import CompareConfig, compare
from .compare import summary as compare_summary
from .config import add_options, flag_values, resolve
from .data import make_imagenet10
from .errors import ConfigError, SquishedError
from .evolve import INHERITED, EvolveConfig, evolve
from .explore import ExploreConfig, explore
from .explore import summary as explore_summary
from .export import INT8_MODES, export_checkpoint
from .genome import list_genomes
from .metrics import profile
from .pipeline import PRESETS, RUN_FLAGS, RUN_SKIP, RunConfig, run_all
from .predict import predict
from .report import write_report
from .train import TrainConfig, evaluate_checkpoint, run_training

__all__ = ["main", "build_parser"]

# evolve's short flags for the offspring's training recipe (as before the
# configurations were composed).
EVOLVE_FLAGS: dict[str, tuple[str, ...]] = {
    **{k.replace("_", "-"): (f"train.{k}",)
       for k in ("epochs", "lr", "optimizer", "warmup_epochs", "weight_decay", "label_smoothing", "batch_size",
                 "threads", "device", "cache_dir", "distill_temperature", "distill_weight")},
    # where the candidates train (executor.py)
    "workers": ("executor.workers",), "ray-address": ("executor.ray_address",), "retries": ("executor.retries",),
    "gpus": ("executor.gpus",),
}


# explore's short flags for its data, schedule and executor.
EXPLORE_FLAGS: dict[str, tuple[str, ...]] = {
    "data": ("train.data",), "image-size": ("train.image_size",), "epochs": ("train.epochs",),
    "threads": ("train.threads",), "cache-dir": ("train.cache_dir",), "workers": ("executor.workers",),
    "ray-address": ("executor.ray_address",), "retries": ("executor.retries",), "gpus": ("executor.gpus",),
}


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON file with defaults for any of these options (nested like the "
                                    "configuration); explicit flags override it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _analyze_parser(sub: Any) -> None:
    p = sub.add_parser("analyze", help="each layer's role in figures and pictures; for a lineage, what evolution did")
    p.add_argument("target", help="checkpoint (or train run) folder, evolve run folder or run folder")
    add_options(p, AnalyzeConfig)
    p.add_argument("--out", help="folder for analysis.json, analysis.html and the PNGs (default TARGET/analyze; "
                                   "beside TARGET when it is a checkpoint folder itself)")
    p.add_argument("--json", action="store_true", help="print every figure as JSON")
    _config_option(p)


def _parsers(sub: Any) -> None:
    p = sub.add_parser("info", help="parameters, size, MACs, memory and a per-layer table")
    p.add_argument("target", help="registered genome name, genome JSON file or checkpoint folder")
    p.add_argument("--classes", type=int, help="adapt conv10 to N classes")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--json", action="store_true")

    sub.add_parser("list", help="registered genomes")

    p = sub.add_parser("train", help="train a genome on a class-per-folder data set")
    add_options(p, TrainConfig)
    p.add_argument("--out", required=True, help="run folder (holds model/, state/, train.log)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _config_option(p)

    p = sub.add_parser("eval", help="top-1, top-5, per-class accuracy and confusion matrix on a split")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="data set folder (default: the one the checkpoint was trained on)")
    p.add_argument("--split", help="split folder (default: test/ if present, else val/)")
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

    p = sub.add_parser("evolve", help="generations of evolutionary synthesis from a trained checkpoint")
    p.add_argument("checkpoint", help="the trained ancestor (checkpoint or train run folder)")
    p.add_argument("--out", required=True, help="run folder; the same command resumes it")
    add_options(p, EvolveConfig, aliases=EVOLVE_FLAGS, skip=tuple(f"train.{k}" for k in INHERITED + ("teacher",)))
    _config_option(p)

    p = sub.add_parser("bench", help="size, MACs, memory, speed and efficiency of a model or a whole lineage")
    p.add_argument("target", help="registered genome, checkpoint, or evolve run folder (then every generation)")
    add_options(p, BenchConfig)
    p.add_argument("--classes", type=int, default=10, help="classes, for a registered genome")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("export", help="ONNX export, checked against PyTorch in ONNX Runtime")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", help="file to write (default: CHECKPOINT/model.onnx)")
    p.add_argument("--int8", action="store_true", help="also static int8, calibrated on real training images")
    p.add_argument("--int8-mode", choices=sorted(INT8_MODES), default="reduce_range",
                   help="int8 scheme (reduce_range holds on AVX2 CPUs without VNNI)")
    p.add_argument("--data", help="data for the checks and int8 calibration (default: the checkpoint's)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--cache-dir")

    p = sub.add_parser("report", help="Table 1, CSV/JSON and an HTML page with plots for an evolve run")
    p.add_argument("run", help="evolve run folder")
    p.add_argument("--out", help="folder for the report (default RUN/report)")
    p.add_argument("--exports", help="the main job's export.json, to show the exported files and int8 figures "
                                     "(default: RUN/../export/export.json when RUN is a run folder's evolve/)")

    _analyze_parser(sub)

    p = sub.add_parser("explore", help="design-space exploration: sweeps, saturation points, Pareto fronts under "
                                       "device budgets (Optuna study; local processes or Ray)")
    p.add_argument("--out", required=True, help="run folder (study.db, points/, explore.json/.md/.html); the same "
                                                "command resumes it")
    add_options(p, ExploreConfig, aliases=EXPLORE_FLAGS, skip=("train.model", "train.seed"))
    p.add_argument("--json", action="store_true", help="print explore.json")
    _config_option(p)

    p = sub.add_parser("compare", help="the lineage beside Torch-Pruning, scaled SqueezeNets trained from scratch, its "
                                       "own genomes from scratch and distillation, at matched sizes and budgets")
    p.add_argument("run", help="a 'squishednets run' folder or an evolve folder")
    p.add_argument("--out", help="folder for compare.json/.md/.csv/.png (default RUN/compare); the same command "
                                 "resumes it")
    add_options(p, CompareConfig)
    p.add_argument("--json", action="store_true", help="print compare.json")
    _config_option(p)

    p = sub.add_parser("run", help="the whole job: ancestor, evolution, benchmark, report, export")
    p.add_argument("--out", default="runs/main", help="run folder; the same command resumes it (default runs/main)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="default: 64 px, fits 60 min on 2 cores; paper: 224 px as in the paper, for a GPU")
    add_options(p, RunConfig, aliases=RUN_FLAGS, skip=RUN_SKIP)
    _config_option(p)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="squishednets", description="Very small, fast SqueezeNets for few-class tasks.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    _parsers(ap.add_subparsers(dest="cmd", required=True))
    return ap


def _say(a: argparse.Namespace) -> Any:
    """Progress lines on stdout, or nothing when stdout carries --json."""
    return (lambda s: None) if a.json else (lambda s: print(s, flush=True))


def _emit(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def cmd_info(a: argparse.Namespace) -> int:
    g = resolve_genome(a.target, num_classes=a.classes)
    try:
        prof = profile(g, a.image_size)
    except ValueError as e:
        raise SquishedError(f"{e}; use a larger --image-size") from None
    if a.json:
        _emit({"name": g.name, "num_classes": g.num_classes, "batchnorm": g.batchnorm, **prof.to_dict(),
               "genome": g.to_dict()})
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
    for n in list_genomes():
        print(n)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    cfg = resolve(TrainConfig, a.config, flags=flag_values(a))
    m = run_training(cfg, a.out, resume=a.resume, progress=not a.no_progress)
    held = "—" if m["heldout_top1"] is None else f"{m['heldout_top1']:.4f}"
    print(f"held-out top-1 {held}, {m['test_split']} top-1 {m['test_top1']:.4f} (top-5 {m['test_top5']:.4f}) "
          f"after {cfg.epochs} epochs at {cfg.image_size}px; checkpoint {Path(a.out) / 'model'}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    r = evaluate_checkpoint(load_checkpoint(a.checkpoint), a.data, a.split, a.image_size, a.cache_dir)
    if a.json:
        _emit(r)
        return 0
    print(f"{r['split']}: top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  ({r['n']} images at {r['image_size']}px)")
    for c, acc in zip(r["classes"], r["per_class"]):
        print(f"  {c:<24}{acc:.4f}")
    print("confusion (rows: true class, columns: predicted):")
    for row in r["confusion"]:
        print("  " + " ".join(f"{v:>5}" for v in row))
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    out = predict(load_checkpoint(a.checkpoint), a.images, a.top)
    if a.json:
        _emit(out)
        return 0
    for o in out:
        print(o["image"] + ": " + ", ".join(f"{q['class']} ({q['probability']:.3f})" for q in o["predictions"]))
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    counts = make_imagenet10(a.ilsvrc, a.out, a.val_labels, a.synsets)
    print(f"ImageNet-10 written to {a.out}: {sum(counts['train'].values())} train, "
          f"{sum(counts['val'].values())} val images")
    return 0


def cmd_evolve(a: argparse.Namespace) -> int:
    cfg = resolve(EvolveConfig, a.config, flags=flag_values(a))
    lineage = evolve(a.checkpoint, a.out, cfg, progress=not a.no_progress)
    print(f"{'gen':>4}{'size MB':>10}{'params':>10}{'MACs':>14}{'held-out':>10}{'test':>8}{'F(E)':>8}")
    for e in lineage.generations:
        f = "" if e.env_factor is None else format(e.env_factor, ".3f")
        print(f"{e.generation:>4}{e.size_mb:>10.3f}{e.params:>10,}{e.macs:>14,}{e.heldout_top1:>10.4f}"
              f"{e.test_top1:>8.4f}{f:>8}")
    print(f"lineage: {Path(a.out) / 'lineage.json'} (fitness: held-out top-1; test top-1 reported only)")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    cfg = resolve(BenchConfig, flags=flag_values(a))
    r = bench_target(a.target, cfg, classes=a.classes, out_json=a.out, progress=not a.json)
    if a.json:
        _emit(r)
        return 0
    peak = r["theoretical_peak_gflops"]
    print(f"{r['machine']['cpu']}, {r['threads']} threads, efficiency ceiling {r['ceiling_gflops']:.1f} GFLOP/s "
          f"(best fp32 GEMM {r['gemm_ceiling_gflops']:.1f}{', raised: a model was faster' if r['ceiling_exceeded'] else ''}"
          f"; peak {'unknown' if peak is None else format(peak, '.0f')}){'; machine was BUSY' if r['machine_busy'] else ''}; "
          f"{cfg.image_size}px")
    print(f"{'model':<34}{'MB':>7}{'MACs (M)':>10}{'eager':>8}{'cl':>8}{'ORT':>8}{'ORT b1 ms':>10}{'ORT eff':>8}"
          f"{'fits KB':>9}")
    for m in r["models"]:
        print(f"{m['name'][:33]:<34}{m['size_mb']:>7.3f}{m['macs'] / 1e6:>10.1f}{m['eager_b32_img_s']:>8.1f}"
              f"{m['cl_b32_img_s']:>8.1f}{m['ort_b32_img_s']:>8.1f}{m['ort_b1_ms']:>10.2f}{m['ort_efficiency']:>8.1%}"
              f"{'yes' if m['fits_budget'] else 'no':>9}")
    print(f"images/s at batch {cfg.batch}; efficiency = 2 x MACs x images/s / the ceiling (never above 100%)")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    out = a.out or str(resolve_checkpoint(a.checkpoint) / "model.onnx")
    info = export_checkpoint(a.checkpoint, out, int8=a.int8, data=a.data, cache_dir=a.cache_dir,
                             image_size=a.image_size, int8_mode=a.int8_mode)
    print(f"wrote {info['path']} ({info['bytes'] / 1e6:.3f} MB), ONNX Runtime matches PyTorch "
          f"(max |diff| {info['max_abs_diff']:.2e} on noise)")
    if a.int8:
        print(f"wrote {info['int8_path']} ({info['int8_bytes'] / 1e6:.3f} MB, {info['int8_mode']}); test top-1 fp32 "
              f"{info['fp32_test_top1']:.4f}, int8 {info['int8_test_top1']:.4f}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    exports = Path(a.exports) if a.exports else Path(a.run).resolve().parent / "export" / "export.json"
    if a.exports and not exports.is_file():
        raise ConfigError(f"--exports {exports} is not a file; pass the export.json that 'squishednets run' wrote")
    paths = write_report(a.run, a.out, exports=json.loads(exports.read_text()) if exports.is_file() else None)
    print(Path(paths["markdown"]).read_text())
    print(f"HTML report: {paths['html']}")
    return 0


def cmd_analyze(a: argparse.Namespace) -> int:
    cfg = resolve(AnalyzeConfig, a.config, flags=flag_values(a))
    doc = analyze_target(a.target, cfg, a.out, progress=not (a.no_progress or a.json))
    if a.json:
        _emit(doc)
        return 0
    print(summary(doc))
    return 0


def cmd_explore(a: argparse.Namespace) -> int:
    cfg = resolve(ExploreConfig, a.config, flags=flag_values(a))
    doc = explore(cfg, a.out, progress=not (a.no_progress or a.json), say=_say(a))
    if a.json:
        _emit(doc)
    else:
        print(explore_summary(doc))
    if doc["failed"]:
        print(f"error: {len(doc['failed'])} design point(s) failed ({doc['failed'][0]['name']}: "
              f"{doc['failed'][0]['error']}); fix the cause and run the same command again", file=sys.stderr)
        return 1
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    cfg = resolve(CompareConfig, a.config, flags=flag_values(a))
    doc = compare(a.run, cfg, a.out, progress=not (a.no_progress or a.json), say=_say(a))
    if a.json:
        _emit(doc)
    else:
        print(compare_summary(doc))
    if doc["errors"]:
        print(f"error: {'; '.join(f'{m}: {e}' for m, e in doc['errors'].items())}", file=sys.stderr)
        return 1
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    cfg = resolve(RunConfig, a.config, preset=PRESETS[a.preset], flags=flag_values(a))
    run_all(cfg, a.out, say=lambda s: print(s, flush=True), progress=not a.no_progress)
    return 0


COMMANDS = {"info": cmd_info, "list": cmd_list, "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict,
            "data": cmd_data, "evolve": cmd_evolve, "bench": cmd_bench, "export": cmd_export, "report": cmd_report,
            "analyze": cmd_analyze, "explore": cmd_explore, "compare": cmd_compare, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    # The console shows warnings (details with -v); train.log gets everything.
    for h in logging.getLogger().handlers:
        h.setLevel(logging.INFO if a.verbose else logging.WARNING)
    try:
        return COMMANDS[a.cmd](a)
    except SquishedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again (train: with --resume) to continue where it stopped",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
