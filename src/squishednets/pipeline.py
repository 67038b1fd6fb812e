"""The main job: train the ancestor, evolve, benchmark, report, export.

``squishednets run`` chains the stages of the SquishedNets paper (section 2's
few-class ancestor, section 3's evolutionary synthesis, Table 1) in one run
folder::

    RUN/run.json      resolved configuration and finished stages
    RUN/ancestor/     the training run of the 10-class SqueezeNet v1.1
    RUN/evolve/       the lineage (see evolve.py), bench.json
    RUN/report/       Table 1 (Markdown, CSV, JSON) and report.html
    RUN/export/       ONNX files of the ancestor and the chosen SquishedNets

Every stage resumes: run the same command again after an interruption.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError
from .io import atomic_write_json
from .train import DEFAULT_DATA

__all__ = ["RunConfig", "PRESETS", "LEGACY", "run_all"]


@dataclass
class RunConfig:
    data: str = DEFAULT_DATA
    image_size: int = 64
    ancestor_epochs: int = 60
    generations: int = 15
    epochs_per_generation: int = 12
    target_size_mb: float = 0.49
    # Size alone leaves the compute in the high-resolution layers (at 0.47 MB
    # the lineage had only 4.2x fewer MACs at 224 px and ran 3.9x faster in
    # ONNX Runtime); a MAC target moves removal there. BENCHMARKS.md has both.
    target_macs_reduction: float = 6.0
    round_to: int = 16
    population: int = 1
    lr: float = 0.1
    generation_lr: float = 0.05
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    bench_runs: int = 20
    bench_min_time: float = 1.0
    bench_rounds: int = 3

    def __post_init__(self) -> None:
        if self.target_size_mb <= 0:
            raise ConfigError("--target-size-mb must be > 0")
        if self.target_macs_reduction and self.target_macs_reduction <= 1:
            raise ConfigError(f"--target-macs-reduction must be > 1 or 0 (off), got {self.target_macs_reduction}")
        for k in ("image_size", "ancestor_epochs", "generations", "population", "bench_runs", "round_to",
                  "bench_rounds"):
            if getattr(self, k) < 1:
                raise ConfigError(f"--{k.replace('_', '-')} must be >= 1")


# The paper's setting: 224 px ImageNet-style input and 15 generations, meant
# for a machine with a GPU (about 12x the compute of the 64 px default).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {"image_size": 224, "ancestor_epochs": 90, "generations": 15, "epochs_per_generation": 20,
              "target_macs_reduction": 0.0},
}

# Values that reproduce what runs made before an option existed did: a run
# folder whose run.json lacks the key is compared against these, not against
# today's defaults.
LEGACY: dict[str, Any] = {"target_macs_reduction": 0.0, "round_to": 8, "bench_rounds": 1}


def run_all(cfg: RunConfig, out: str | Path, say: Callable[[str], None] = print, progress: bool = True,
            ) -> dict[str, Any]:
    from .bench import BenchConfig, bench_target
    from .evolve import EvolveConfig, evolve
    from .export import export_onnx
    from .checkpoint import load_checkpoint
    from .report import choose_squishednets, write_report
    from .train import TrainConfig, run_training

    from .data import check_dataset

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; choose a folder for the run")
    # Bad data fails here, before run.json pins the configuration.
    check_dataset(cfg.data)
    state_path = out / "run.json"
    resolved = asdict(cfg)
    state: dict[str, Any] = {"config": resolved, "stages": {}}
    if state_path.exists():
        old = json.loads(state_path.read_text())
        # Options added in later versions count, in older runs, as the value
        # that reproduces them (LEGACY) or else as their defaults.
        old_cfg = {**asdict(RunConfig()), **LEGACY, **old["config"]}
        diff = sorted(k for k in resolved if k not in ("threads", "device") and old_cfg.get(k) != resolved[k])
        if diff:
            raise ConfigError(f"{out} was started with other settings ({', '.join(diff)}); "
                              "run again with the same options to resume, or choose a new --out")
        state["stages"] = old.get("stages", {})
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a 'squishednets run' folder; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state_path, state)

    def done(stage: str, info: dict[str, Any]) -> None:
        state["stages"][stage] = {**info, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(state_path, state)

    t0 = time.perf_counter()
    say(f"[1/5] training the ancestor: SqueezeNet v1.1, {cfg.ancestor_epochs} epochs at {cfg.image_size}px")
    tcfg = TrainConfig(data=cfg.data, image_size=cfg.image_size, epochs=cfg.ancestor_epochs, lr=cfg.lr, seed=cfg.seed,
                       threads=cfg.threads, device=cfg.device)
    m = run_training(tcfg, out / "ancestor", resume=True, progress=progress)
    done("ancestor", {"top1": m["top1"], "wall_s": time.perf_counter() - t0})
    say(f"      ancestor val top-1 {m['top1']:.4f}")

    t1 = time.perf_counter()
    macs_goal = f" and {cfg.target_macs_reduction:g}x fewer MACs" if cfg.target_macs_reduction else ""
    say(f"[2/5] evolving {cfg.generations} generations towards {cfg.target_size_mb} MB{macs_goal}")
    ecfg = EvolveConfig(generations=cfg.generations, population=cfg.population, target_size_mb=cfg.target_size_mb,
                        target_macs_reduction=cfg.target_macs_reduction, round_to=cfg.round_to,
                        epochs=cfg.epochs_per_generation, lr=cfg.generation_lr, seed=cfg.seed, threads=cfg.threads,
                        device=cfg.device)

    def on_gen(e: dict[str, Any]) -> None:
        say(f"      generation {e['generation']:>2}: {e['size_mb']:.3f} MB, {e['macs'] / 1e6:.1f}M MACs, "
            f"val top-1 {e['top1']:.4f}")

    lineage = evolve(out / "ancestor" / "model", out / "evolve", ecfg, progress=progress, on_generation=on_gen)
    done("evolve", {"generations": len(lineage) - 1, "final_size_mb": lineage[-1]["size_mb"],
                    "wall_s": time.perf_counter() - t1})

    say(f"[3/5] benchmarking {len(lineage)} networks at {cfg.image_size}px (batch 32 and 1; eager, channels_last, "
        f"ONNX Runtime; {cfg.bench_rounds} interleaved round{'s' if cfg.bench_rounds > 1 else ''})")
    bench_path = out / "evolve" / "bench.json"
    fresh = bench_path.exists() and len(json.loads(bench_path.read_text())["models"]) == len(lineage)
    if not fresh:
        bench_target(out / "evolve", BenchConfig(image_size=cfg.image_size, runs=cfg.bench_runs,
                                                 min_time=cfg.bench_min_time, threads=cfg.threads,
                                                 rounds=cfg.bench_rounds), progress=progress)
    done("bench", {"path": str(bench_path)})

    say("[4/5] writing the report")
    paths = write_report(out / "evolve", out / "report")
    done("report", {k: str(v) for k, v in paths.items()})

    say("[5/5] exporting the ancestor and the chosen SquishedNets to ONNX")
    chosen = choose_squishednets(lineage)
    exports = []
    for i, e in enumerate([lineage[0]] + chosen):
        name = "ancestor" if i == 0 else f"squishednet-{i}"
        ck = load_checkpoint(out / "evolve" / e["path"])
        info = export_onnx(ck.model, out / "export" / f"{name}.onnx", cfg.image_size)
        exports.append({"name": name, "generation": e["generation"], "size_mb": e["size_mb"], "top1": e["top1"],
                        **info})
    atomic_write_json(out / "export" / "export.json", exports)
    done("export", {"files": [x["path"] for x in exports]})
    say(f"done in {(time.perf_counter() - t0) / 60:.1f} min this session: report {paths['html']}, "
        f"table {paths['markdown']}, models in {out / 'export'}")
    return state

