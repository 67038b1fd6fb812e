"""The main job: train the ancestor, evolve, benchmark, report, export.

``squishednets run`` chains the stages of the SquishedNets paper (section 2's
few-class ancestor, section 3's evolutionary synthesis, Table 1) in one run
folder::

    RUN/config.json   resolved configuration and finished stages (rundir.RunDir)
    RUN/ancestor/     the training run of the 10-class SqueezeNet v1.1
    RUN/evolve/       the lineage (see evolve.py), bench.json
    RUN/report/       Table 1 (Markdown, CSV, JSON) and report.html
    RUN/export/       ONNX files of the ancestor and the chosen SquishedNets

The ancestor trains on the training folder minus its held-out part; every
choice after it (fitness, SquishedNet-1…4, what is exported) uses held-out
top-1, and test top-1 is reported only. Every stage resumes: run the same
command again after an interruption.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .bench import BenchConfig, bench_target
from .checkpoint import resolve_genome
from .config import option
from .data import check_dataset
from .errors import ConfigError
from .evolve import GENERATION_TRAIN, INHERITED, EvolveConfig, evolve
from .export import INT8_MODES, export_checkpoint
from .io import atomic_write_json
from .records import SELECTED_BY, GenerationRecord, Lineage
from .report import choose_squishednets, write_report
from .rundir import RunDir
from .synthesis import check_evolvable
from .train import TrainConfig, run_training

__all__ = ["RunConfig", "PRESETS", "RUN_FLAGS", "RUN_SKIP", "run_all"]


@dataclass(frozen=True)
class RunConfig:
    """The main job: the ancestor's training, the evolution and the benchmark."""

    ancestor: TrainConfig = option(default_factory=TrainConfig, help="training of the ancestor")
    # Size alone leaves the compute in the high-resolution layers; a MAC
    # target moves removal there (BENCHMARKS.md has both lineages).
    evolve: EvolveConfig = option(
        default_factory=lambda: EvolveConfig(target_size_mb=0.49, target_macs_reduction=6.0),
        help="evolutionary synthesis")
    # Models are timed in interleaved rounds: the host's speed drifts.
    bench: BenchConfig = option(default_factory=lambda: BenchConfig(rounds=3), help="benchmark of the lineage")
    # Off by default: int8 accuracy depends on the CPU's kernels, so it is
    # measured, and reported, only when asked for.
    int8: str | None = option(None, help="also export static int8 ONNX in this mode and measure its test top-1 and "
                                         "speed beside fp32 (reduce_range holds on AVX2 CPUs without VNNI)",
                              choices=tuple(INT8_MODES))

    def __post_init__(self) -> None:
        if self.evolve.target_size_mb is None:
            raise ConfigError("the main job needs --target-size-mb")


# The paper's setting: 224 px input and 15 generations, meant for a machine
# with a GPU (about 12x the compute of the 64 px default).
PRESETS: dict[str, RunConfig] = {
    "default": RunConfig(),
    "paper": RunConfig(
        ancestor=TrainConfig(image_size=224, epochs=90),
        evolve=EvolveConfig(target_size_mb=0.49, train=dataclasses.replace(GENERATION_TRAIN, epochs=20))),
}

# The main job's short flags: one flag may set a value in several stages.
RUN_FLAGS: dict[str, tuple[str, ...]] = {
    "data": ("ancestor.data",),
    # An explored design (squishednets explore --top K) as the ancestor: explore, then squish.
    "from-design": ("ancestor.model",),
    "image-size": ("ancestor.image_size",),
    "holdout": ("ancestor.holdout",),
    "lr": ("ancestor.lr",),
    "generations": ("evolve.generations",),
    "epochs-per-generation": ("evolve.train.epochs",),
    "generation-lr": ("evolve.train.lr",),
    "target-size-mb": ("evolve.target_size_mb",),
    "target-macs-reduction": ("evolve.target_macs_reduction",),
    "round-to": ("evolve.round_to",),
    "population": ("evolve.population",),
    "distill": ("evolve.distill",),
    "workers": ("evolve.executor.workers",),
    "ray-address": ("evolve.executor.ray_address",),
    "gpus": ("evolve.executor.gpus",),
    "seed": ("ancestor.seed", "evolve.seed"),
    "threads": ("ancestor.threads", "evolve.train.threads", "bench.threads"),
    "device": ("ancestor.device", "evolve.train.device"),
    "cache-dir": ("ancestor.cache_dir", "evolve.train.cache_dir"),
}
# Set by the run itself: the offspring inherit the ancestor's data and recipe,
# and the benchmark runs at the training resolution.
RUN_SKIP = tuple(f"evolve.train.{k}" for k in INHERITED + ("teacher",)) + ("evolve.data", "bench.image_size")


def _ancestor(rd: RunDir, cfg: RunConfig, say: Callable[[str], None], progress: bool) -> None:
    a = cfg.ancestor
    say(f"[1/5] training the ancestor: {a.model}, {a.epochs} epochs at {a.image_size}px on train minus "
        f"{a.holdout or 0:.0%} held out")
    t0 = time.perf_counter()
    m = run_training(a, rd.path("ancestor"), resume=True, progress=progress)
    rd.finish("ancestor", {"heldout_top1": m["heldout_top1"], "test_top1": m["test_top1"],
                           "wall_s": time.perf_counter() - t0})
    say(f"      ancestor held-out top-1 {m['heldout_top1']:.4f}, test top-1 {m['test_top1']:.4f}")


def _evolve(rd: RunDir, cfg: RunConfig, say: Callable[[str], None], progress: bool) -> Lineage:
    e = cfg.evolve
    macs_goal = f" and {e.target_macs_reduction:g}x fewer MACs" if e.target_macs_reduction else ""
    say(f"[2/5] evolving {e.generations} generations towards {e.target_size_mb} MB{macs_goal}")
    t0 = time.perf_counter()

    def on_gen(r: GenerationRecord) -> None:
        say(f"      generation {r.generation:>2}: {r.size_mb:.3f} MB, {r.macs / 1e6:.1f}M MACs, "
            f"held-out top-1 {r.heldout_top1:.4f}")

    lineage = evolve(rd.path("ancestor/model"), rd.path("evolve"), e, progress=progress, on_generation=on_gen)
    rd.finish("evolve", {"generations": len(lineage.generations) - 1,
                         "final_size_mb": lineage.generations[-1].size_mb, "wall_s": time.perf_counter() - t0})
    return lineage


def _bench(rd: RunDir, cfg: RunConfig, lineage: Lineage, say: Callable[[str], None], progress: bool) -> None:
    b = dataclasses.replace(cfg.bench, image_size=cfg.ancestor.image_size)
    say(f"[3/5] benchmarking {len(lineage.generations)} networks at {b.image_size}px (batch {b.batch} and 1; "
        f"{', '.join(b.backends)}; {b.rounds} interleaved round{'s' if b.rounds > 1 else ''})")
    if not rd.done("bench"):
        bench_target(rd.path("evolve"), b, progress=progress)
    rd.finish("bench", {"path": "evolve/bench.json"})


def _export(rd: RunDir, cfg: RunConfig, lineage: Lineage, say: Callable[[str], None]) -> list[dict[str, Any]]:
    int8 = f" (and int8, {cfg.int8})" if cfg.int8 else ""
    say(f"[4/5] exporting the ancestor and the SquishedNets chosen by {SELECTED_BY} top-1 to ONNX{int8}")
    chosen = choose_squishednets(lineage.generations)
    exports = []
    for i, e in enumerate([lineage.generations[0]] + chosen):
        name = "ancestor" if i == 0 else f"squishednet-{i}"
        # Checked against PyTorch on noise and on real images of the test split.
        info = export_checkpoint(rd.path("evolve") / e.path, rd.path("export") / f"{name}.onnx",
                                 cache_dir=cfg.ancestor.cache_dir, int8=cfg.int8 is not None,
                                 int8_mode=cfg.int8 or "reduce_range", threads=cfg.bench.threads or 0)
        if info.get("int8_path"):
            info["int8_path"] = rd.rel(info["int8_path"])
        exports.append({"name": name, "generation": e.generation, "size_mb": e.size_mb,
                        "heldout_top1": e.heldout_top1, "test_top1": e.test_top1, "selected_by": SELECTED_BY,
                        **info, "path": rd.rel(info["path"])})
    atomic_write_json(rd.path("export/export.json"), exports)
    rd.finish("export", {"files": [x["path"] for x in exports]})
    return exports


def run_all(cfg: RunConfig, out: str | Path, say: Callable[[str], None] = print, progress: bool = True,
            ) -> RunDir:
    """Run (or resume) every stage of the main job in ``out``."""
    # Bad data fails here, before the run folder pins the configuration.
    check_dataset(cfg.ancestor.data, cfg.ancestor.cache_dir)
    # An explored design that evolution cannot shrink fails now, not after the ancestor's training.
    check_evolvable(resolve_genome(cfg.ancestor.model, batchnorm=cfg.ancestor.batchnorm))
    rd = RunDir.open(out, cfg, "run")
    t0 = time.perf_counter()
    _ancestor(rd, cfg, say, progress)
    lineage = _evolve(rd, cfg, say, progress)
    _bench(rd, cfg, lineage, say, progress)
    # Export before the report: the report shows the exported files' checks
    # and, when measured, int8 accuracy and its warning.
    exports = _export(rd, cfg, lineage, say)
    say("[5/5] writing the report")
    paths = write_report(rd.path("evolve"), rd.path("report"), exports=exports)
    rd.finish("report", {k: rd.rel(v) for k, v in paths.items()})
    say(f"done in {(time.perf_counter() - t0) / 60:.1f} min this session: report {paths['html']}, "
        f"table {paths['markdown']}, models in {rd.path('export')}")
    return rd
