"""Generations of evolutionary synthesis (SquishedNets paper, section 3).

From a trained ancestor, each generation samples K offspring from the
parent's synaptic probability models under the environmental factor F(E),
trains them, and keeps the fittest under the constraints ("natural
selection"), which parents the next generation. The paper ran 15 generations.

The run folder holds the lineage::

    RUN/config.json              resolved configuration
    RUN/gen_00/model/            the ancestor (generation 0)
    RUN/gen_NN/cand_K/state/     resumable training state of offspring K
    RUN/gen_NN/cand_K/model/     offspring K, trained, with its metrics
    RUN/gen_NN/model/            the selected offspring: next generation's parent
    RUN/lineage.json             one entry per generation

Everything random comes from (seed, generation, candidate), and every result
is written atomically, so a run killed at any moment (even ``kill -9``) and
started again with the same command recomputes nothing that was finished and
ends with the same lineage as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .errors import ConfigError
from .io import atomic_write_json
from .metrics import SQUEEZENET11_MB, profile
from .synthesis import encode, solve_environment, sparse_bytes, synthesize
from .train import TrainConfig, evaluate, fit

__all__ = ["EvolveConfig", "Fitness", "HoldoutTop1", "SmallestFit", "FITNESS", "select", "evolve", "size_path"]

log = logging.getLogger(__name__)


@dataclass
class EvolveConfig:
    """Settings of ``squishednets evolve`` (written to ``RUN/config.json``)."""

    generations: int = 15
    population: int = 1  # offspring per generation (K)
    env_factor: float = 0.0  # fixed F(E) at cluster level; 0: target mode
    target_size_mb: float = 0.0  # target mode: final dense fp32 size
    target_reduction: float = 0.0  # target mode: final size = ancestor / this
    target_macs_reduction: float = 0.0  # target mode: final MACs at most ancestor's / this (0: size only)
    sharpness: float = 1.0  # k in p = exp(k (s / Z - 1)); the papers use 1
    size_draws: int = 16  # target mode: offspring drawn per candidate, the nearest the target kept
    synapse_level: bool = False
    synapse_factor: float = 0.98  # F(E) at synapse level, when synapse_level
    min_width: int = 1
    # Widths rounded to a multiple: ONNX Runtime's blocked (NCHWc) convolutions
    # take 16 channels at a time on AVX-512 and 8 on AVX2, and other widths
    # add layout reorders and slow paths (BENCHMARKS.md measures it). 16 suits
    # both; 1 turns rounding off.
    round_to: int = 16
    init: str = "inherit"  # inherit | scratch
    epochs: int = 10  # training epochs per generation
    lr: float = 0.05
    optimizer: str = "sgd"
    warmup_epochs: float = 0.5
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    batch_size: int = 128
    holdout: float = 0.1  # fraction of train held out for fitness (never val)
    fitness: str = "top1"  # top1 | smallest
    max_size_mb: float = 0.0  # constraints, 0 = none
    max_macs: int = 0
    min_top1: float = 0.0
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    cache_dir: str = ""
    data: str = ""  # default: the ancestor's data

    def __post_init__(self) -> None:
        if self.generations < 1 or self.population < 1:
            raise ConfigError("generations and population must be >= 1")
        modes = [self.env_factor > 0, self.target_size_mb > 0, self.target_reduction > 0]
        if sum(modes) > 1:
            raise ConfigError("give one of --env-factor, --target-size-mb and --target-reduction, not several")
        if sum(modes) == 0:
            raise ConfigError("give --env-factor F (0 < F < 1) or a target: --target-size-mb or --target-reduction")
        if self.env_factor > 0 and not self.env_factor < 1:
            raise ConfigError(f"--env-factor must be below 1 (a resource-starved environment), got {self.env_factor}")
        if self.target_reduction and self.target_reduction <= 1:
            raise ConfigError(f"--target-reduction must be > 1 (times smaller than the ancestor), got {self.target_reduction}")
        if self.target_macs_reduction:
            if self.target_macs_reduction <= 1:
                raise ConfigError(f"--target-macs-reduction must be > 1 (times fewer MACs than the ancestor), "
                                  f"got {self.target_macs_reduction}")
            if self.env_factor > 0:
                raise ConfigError("--target-macs-reduction works in target mode: give --target-size-mb or "
                                  "--target-reduction instead of --env-factor")
        if self.size_draws < 1:
            raise ConfigError("--size-draws must be >= 1")
        if not 0 < self.synapse_factor <= 1:
            raise ConfigError("--synapse-factor must be in (0, 1]")
        if self.init not in ("inherit", "scratch"):
            raise ConfigError(f"--init must be inherit or scratch, got {self.init}")
        if self.fitness not in FITNESS:
            raise ConfigError(f"--fitness must be one of {sorted(FITNESS)}, got {self.fitness}")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"--holdout must be in (0, 1), got {self.holdout}")
        if self.min_width < 1 or self.round_to < 1 or self.epochs < 0:
            raise ConfigError("--min-width and --round-to must be >= 1 and --epochs >= 0")


# Values of options added after the first release that reproduce what runs
# made before them did; a config.json without the key is compared with these.
_LEGACY: dict[str, Any] = {"target_macs_reduction": 0.0}


# -- fitness and selection -------------------------------------------------------------
class Fitness(Protocol):
    """Scores a trained candidate (its metrics dict); higher is fitter."""

    def __call__(self, m: dict[str, Any]) -> float: ...


class HoldoutTop1:
    """Top-1 on the held-out part of the training set."""

    def __call__(self, m: dict[str, Any]) -> float:
        return m["holdout_top1"]


class SmallestFit:
    """The smallest candidate; held-out top-1 breaks ties."""

    def __call__(self, m: dict[str, Any]) -> float:
        return -m["size_mb"] + 1e-6 * m["holdout_top1"]


FITNESS: dict[str, Callable[[], Fitness]] = {"top1": HoldoutTop1, "smallest": SmallestFit}


def violations(m: dict[str, Any], cfg: EvolveConfig) -> list[str]:
    v = []
    if cfg.max_size_mb and m["size_mb"] > cfg.max_size_mb:
        v.append(f"size {m['size_mb']:.3f} MB > {cfg.max_size_mb}")
    if cfg.max_macs and m["macs"] > cfg.max_macs:
        v.append(f"MACs {m['macs']} > {cfg.max_macs}")
    if cfg.min_top1 and m["holdout_top1"] < cfg.min_top1:
        v.append(f"held-out top-1 {m['holdout_top1']:.3f} < {cfg.min_top1}")
    return v


def select(cands: list[dict[str, Any]], cfg: EvolveConfig) -> tuple[int, bool]:
    """Index of the fittest candidate among those meeting the constraints (or,
    if none does, among all, reported as such) and whether it met them."""
    score = FITNESS[cfg.fitness]()
    ok = [i for i, m in enumerate(cands) if not violations(m, cfg)]
    pool = ok or list(range(len(cands)))
    best = max(pool, key=lambda i: (score(cands[i]), -i))
    return best, bool(ok)


def size_path(start_params: float, target_params: float, generations: int, g: int) -> float:
    """Geometric path of expected sizes from the ancestor to the target."""
    return start_params * (target_params / start_params) ** (g / generations)


def _target_error(prof: Any, want: float | None, want_macs: float | None) -> float:
    """How far a drawn offspring lands from the generation's targets: the
    relative size error, counted three times when above the target (a target
    is a budget: users expect the last generation to fit it), plus the
    relative MAC excess when MACs have a target (fewer is no fault)."""
    if want is None:
        return 0.0
    err = abs(prof.params - want) / want + 2 * max(0.0, prof.params - want) / want
    if want_macs:
        err += max(0.0, prof.macs - want_macs) / want_macs
    return err


# -- the loop -------------------------------------------------------------------------
def _gen_dir(run: Path, g: int) -> Path:
    return run / f"gen_{g:02d}"


def _entry(g: int, ck: Checkpoint, image_size: int, run: Path) -> dict[str, Any]:
    m = ck.metrics
    prof = profile(ck.genome, image_size)
    return {
        "generation": g,
        "name": ck.genome.name,
        "params": prof.params,
        "size_mb": prof.size_mb,
        "reduction_vs_squeezenet11": SQUEEZENET11_MB / prof.size_mb,
        "macs": prof.macs,
        "top1": m.get("top1"),
        "holdout_top1": m.get("holdout_top1"),
        "nonzero_params": m.get("nonzero_params", prof.params),
        "sparse_bytes": m.get("sparse_bytes"),
        "wall_s": m.get("wall_s"),
        "seed": m.get("seed"),
        "parent": m.get("parent"),
        "env_factor": m.get("env_factor"),
        "target_size_mb": m["target_params"] * 4 / 1e6 if m.get("target_params") else None,
        "sharpness": m.get("sharpness"),
        "mac_pressure": m.get("mac_pressure"),
        "target_macs": m.get("target_macs"),
        "synapse_factor": m.get("synapse_factor"),
        "candidates": m.get("candidates"),
        "constraints_met": m.get("constraints_met"),
        "widths": ck.genome.widths(),
        "history": m.get("history"),
        "path": str(ck.path.relative_to(run)),  # relative: the run folder can move
    }


def evolve(
    ancestor: str | Path,
    run: str | Path,
    cfg: EvolveConfig,
    progress: bool = True,
    on_generation: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the generations; return the lineage."""
    from .data import holdout_indices, load_dataset

    run = Path(run)
    anc = load_checkpoint(ancestor)
    image_size = int(anc.config.get("image_size") or anc.metrics.get("image_size") or 0)
    if not image_size:
        raise ConfigError(f"{anc.path} does not record its training resolution (config.json image_size)")
    data = cfg.data or anc.config.get("data")
    if not data:
        raise ConfigError("the ancestor does not say which data it was trained on; pass --data")
    resolved = {**asdict(cfg), "data": data, "ancestor": str(Path(ancestor).resolve()), "image_size": image_size}
    cfg_path = run / "config.json"
    if cfg_path.exists():
        # Keys added later count as the values that reproduce older runs.
        old = {**_LEGACY, **json.loads(cfg_path.read_text())}
        diff = sorted(k for k in resolved if k not in ("threads", "device", "cache_dir") and old.get(k) != resolved[k])
        if diff:
            raise ConfigError(f"run folder {run} was started with other settings ({', '.join(diff)}); "
                              "use the same options to resume or choose a new run folder")
    elif run.exists() and any(run.iterdir()):
        raise ConfigError(f"{run} exists and is not an evolve run; choose a new run folder")
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_path, resolved)

    train, val = load_dataset(data, image_size, cfg.cache_dir or None, progress=progress)
    classes = anc.metrics.get("classes") or anc.config.get("classes")
    if classes and classes != train.classes:
        raise ConfigError("the data's classes differ from the ancestor's; evolve on the data it was trained on")
    fit_idx, held_idx = holdout_indices(train.labels, cfg.holdout, cfg.seed)
    fit_x, fit_y = train.images[fit_idx], train.labels[fit_idx]
    held_x, held_y = train.images[held_idx], train.labels[held_idx]
    n_classes = anc.genome.num_classes
    tcfg = TrainConfig(data=data, image_size=image_size, epochs=max(1, cfg.epochs), batch_size=cfg.batch_size,
                       optimizer=cfg.optimizer, lr=cfg.lr, warmup_epochs=cfg.warmup_epochs,
                       weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing,
                       min_scale=float(anc.config.get("min_scale", TrainConfig.min_scale)), threads=cfg.threads, device=cfg.device,
                       eval_every=0, channels_last=True)

    # Generation 0: the ancestor, measured the same way as its offspring.
    g0 = _gen_dir(run, 0) / "model"
    if not (g0 / "metrics.json").exists() or "holdout_top1" not in json.loads((g0 / "metrics.json").read_text()):
        t0 = time.perf_counter()
        hold = evaluate(anc.model, held_x, held_y, n_classes)["top1"]
        vr = evaluate(anc.model, val.images, val.labels, n_classes)
        nnz, sb = sparse_bytes(anc.model, anc.masks)
        m0 = {"top1": vr["top1"], "top5": vr["top5"], "val": vr, "holdout_top1": hold,
              "classes": train.classes, "image_size": image_size, "seed": cfg.seed, "parent": None,
              "wall_s": anc.metrics.get("train_time_s", 0.0) + time.perf_counter() - t0,
              "nonzero_params": nnz, "sparse_bytes": sb, "history": anc.metrics.get("history"),
              "note": "the ancestor trained on all of train, the held-out part included"}
        save_checkpoint(g0, anc.model, m0, {**anc.config, "image_size": image_size}, anc.masks)
    parent = load_checkpoint(g0)
    lineage = [_entry(0, parent, image_size, run)]
    atomic_write_json(run / "lineage.json", {"config": resolved, "generations": lineage})
    start_params = lineage[0]["params"]
    start_macs = lineage[0]["macs"]
    if cfg.target_size_mb:
        target_params = cfg.target_size_mb * 1e6 / 4
    elif cfg.target_reduction:
        target_params = start_params / cfg.target_reduction
    else:
        target_params = None

    for g in range(1, cfg.generations + 1):
        gdir = _gen_dir(run, g)
        if (gdir / "model" / "metrics.json").exists():
            parent = load_checkpoint(gdir / "model")
            lineage.append(_entry(g, parent, image_size, run))
            continue
        prof_parent = profile(parent.genome, image_size)
        want_macs = None
        weights = None
        pressure = 0.0
        if target_params is not None:
            want = size_path(start_params, target_params, cfg.generations, g)
            if cfg.target_macs_reduction:
                want_macs = size_path(start_macs, start_macs / cfg.target_macs_reduction, cfg.generations, g)
            env = solve_environment(parent.model, want, cfg.sharpness, cfg.min_width, target_macs=want_macs,
                                    image_size=image_size, divisor=cfg.round_to)
            factor, sharp, pressure, weights = env.factor, env.sharpness, env.pressure, env.weights
        else:
            want, factor, sharp = None, cfg.env_factor, cfg.sharpness
        enc = encode(parent.model, sharp, weights=weights)  # the parent's DNA, shared by every draw
        cands = []
        for k in range(cfg.population):
            cdir = gdir / f"cand_{k}"
            if (cdir / "model" / "metrics.json").exists():
                cands.append(load_checkpoint(cdir / "model").metrics)
                continue
            t0 = time.perf_counter()
            seed = cfg.seed * 1_000_003 + g * 1_009 + k
            gen = torch.Generator().manual_seed(seed)
            # Widths rounded to multiples of 8 are coarse in thin layers, so one
            # draw can land well off the generation's target. In target mode
            # several offspring are drawn (cheap: no training) and the one
            # nearest the target size lives; all draws come from the seed.
            off, off_err = None, float("inf")
            for _ in range(cfg.size_draws if want is not None else 1):
                o = synthesize(parent.model, factor, gen, sharpness=sharp, min_width=cfg.min_width,
                               divisor=cfg.round_to, name=f"{anc.genome.name}-gen{g:02d}", init=cfg.init,
                               synapse_factor=cfg.synapse_factor if cfg.synapse_level else None,
                               parent_masks=parent.masks, encoding=enc)
                err = _target_error(profile(o.model.genome, image_size), want, want_macs)
                if err < off_err:
                    off, off_err = o, err
            assert off is not None
            child = off.model
            synth_s = time.perf_counter() - t0
            ccfg = dataclasses.replace(tcfg, seed=seed)
            res: dict[str, Any] = {"history": [], "train_time_s": 0.0}
            if cfg.epochs > 0:
                res = fit(child, fit_x, fit_y, ccfg, state_dir=cdir / "state", masks=off.masks, progress=progress,
                          desc=f"gen {g}/{cfg.generations} cand {k + 1}/{cfg.population}",
                          fingerprint_extra={"genome": child.genome.to_dict(), "generation": g})
            t1 = time.perf_counter()
            child.cpu()
            hold = evaluate(child, held_x, held_y, n_classes)["top1"]
            prof = profile(child.genome, image_size)
            nnz, sb = sparse_bytes(child, off.masks)
            metrics = {
                "holdout_top1": hold, "size_mb": prof.size_mb, "params": prof.params, "macs": prof.macs,
                "nonzero_params": nnz, "sparse_bytes": sb, "classes": train.classes, "image_size": image_size,
                "seed": seed, "parent": str(parent.path.relative_to(run)), "env_factor": factor,
                "sharpness": sharp, "mac_pressure": pressure, "target_macs": want_macs,
                "synapse_factor": cfg.synapse_factor if cfg.synapse_level else None,
                "target_params": want, "expected_from": prof_parent.params, "keep": off.keep,
                "history": res["history"], "train_time_s": res["train_time_s"],
                "wall_s": synth_s + res["train_time_s"] + (time.perf_counter() - t1),
            }
            save_checkpoint(cdir / "model", child, metrics, {**asdict(ccfg), "classes": train.classes}, off.masks)
            cands.append(metrics)
        best, met = select(cands, cfg)
        chosen = load_checkpoint(gdir / f"cand_{best}" / "model")
        vr = evaluate(chosen.model, val.images, val.labels, n_classes)
        m = {**chosen.metrics, "top1": vr["top1"], "top5": vr["top5"], "val": vr, "selected": best,
             "constraints_met": met, "wall_s": sum(c["wall_s"] for c in cands),
             "candidates": [{"holdout_top1": c["holdout_top1"], "size_mb": c["size_mb"], "macs": c["macs"]}
                            for c in cands]}
        save_checkpoint(gdir / "model", chosen.model, m, chosen.config, chosen.masks)
        parent = load_checkpoint(gdir / "model")
        lineage.append(_entry(g, parent, image_size, run))
        atomic_write_json(run / "lineage.json", {"config": resolved, "generations": lineage})
        log.info("generation %d: %.3f MB, val top-1 %.4f, held-out %.4f, F(E)=%.4f k=%.3f MAC pressure %.2f", g,
                 lineage[-1]["size_mb"], vr["top1"], m["holdout_top1"], factor, sharp, pressure)
        if on_generation is not None:
            on_generation(lineage[-1])
    atomic_write_json(run / "lineage.json", {"config": resolved, "generations": lineage})
    return lineage
