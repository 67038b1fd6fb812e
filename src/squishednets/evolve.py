"""Generations of evolutionary synthesis (SquishedNets paper, section 3).

From a trained ancestor, each generation samples K offspring from the
parent's synaptic probability models under the environmental factor F(E),
trains them, and keeps the fittest under the constraints ("natural
selection"), which parents the next generation. The paper ran 15 generations.

Fitness and every other choice use held-out top-1: the images the ancestor
held out of its training folder (its ``holdout`` and ``split_seed``), which no
generation trains on. Test top-1 (``test/`` or else ``val/``) is recorded for
the report and chooses nothing.

The run folder holds the lineage::

    RUN/config.json              resolved configuration (rundir.RunDir)
    RUN/gen_00/model/            the ancestor (generation 0)
    RUN/gen_NN/cand_K/state/     resumable training state of offspring K
    RUN/gen_NN/cand_K/model/     offspring K, trained, with its metrics
    RUN/gen_NN/model/            the selected offspring: next generation's parent
    RUN/lineage.json             records.Lineage, one entry per generation

Everything random comes from (seed, generation, candidate), and every result
is written atomically, so a run killed at any moment (even ``kill -9``) and
started again with the same command recomputes nothing that was finished and
ends with the same lineage as an uninterrupted run.

Each candidate is one task of an executor (``executor.py``; by default in
this process; ``executor.workers`` N trains N candidates at once in local
processes, ``executor.ray_address`` on a Ray cluster): its arguments are
paths and plain dicts (the run folder, the parent's checkpoint, the resolved
configurations), it loads the parent and the data itself, writes
``cand_K/model`` atomically and returns the one already written if there is
one. The driver alone selects and records, in candidate order, so where and
in which order candidates train changes nothing in the lineage, and a run may
resume under other executor settings.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from tqdm import tqdm

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint, weights_digest
from .config import from_dict, option, to_dict
from .data import Splits, load_splits
from .fetch import location
from .errors import ConfigError
from .executor import IN_PROCESS, ExecConfig, Executor, make_executor
from .metrics import BYTES_FP32, profile
from .records import Candidate, GenerationRecord, Lineage
from .rundir import RunDir
from .seeds import offspring_seed
from .synthesis import (Encoding, Environment, Offspring, check_evolvable, encode, solve_environment, sparse_bytes,
                        synthesize)
from .train import Resumable, TrainConfig, accuracy_metrics, checkpoint_config, fit, train_config_of

__all__ = ["EvolveConfig", "GENERATION_TRAIN", "INHERITED", "Fitness", "HoldoutTop1", "SmallestFit", "FITNESS",
           "select", "evolve", "breed", "size_path", "violations"]

log = logging.getLogger(__name__)

# How each offspring is trained unless told otherwise (the main job's values).
GENERATION_TRAIN = TrainConfig(epochs=12, lr=0.05, warmup_epochs=0.5, eval_every=None)
# Fields of the offspring's training configuration taken from the ancestor's:
# the data, its split and resolution, the genome's BatchNorm, the crop
# recipe; the seed comes from (seed, generation, candidate).
INHERITED = ("data", "model", "batchnorm", "image_size", "holdout", "split_seed", "min_scale", "seed")


@dataclass(frozen=True)
class EvolveConfig:
    """Settings of ``squishednets evolve``."""

    generations: int = option(15, help="generations of synthesis (the paper ran 15)")
    population: int = option(1, help="offspring per generation; the fittest survives")
    env_factor: float | None = option(None, help="fixed environmental factor F(E) < 1 at cluster level")
    target_size_mb: float | None = option(
        None, help="target mode: the last generation's dense fp32 parameter size (MB, BatchNorm folded) is at most this")
    target_reduction: float | None = option(None, help="target mode: end this many times smaller than the ancestor")
    target_macs_reduction: float | None = option(
        None, help="target mode: also end with this many times fewer MACs than the ancestor "
                   "(removal shifts to high-resolution layers)")
    sharpness: float = option(1.0, help="k in p = exp(k (s / Z - 1)); 1 as in the papers")
    size_draws: int = option(16, help="target mode: offspring drawn per candidate, the nearest the target kept")
    final_within_target: bool = option(
        True, help="target mode: the last generation's draws must fit the target size (more are drawn if needed)")
    synapse_level: bool = option(False, help="also sample synapses inside surviving filters (sparse size reported)")
    synapse_factor: float = option(0.98, help="F(E) at synapse level")
    min_width: int = option(1, help="fewest filters a layer keeps")
    # ONNX Runtime's blocked (NCHWc) convolutions take 16 channels at a time on
    # AVX-512 and 8 on AVX2; other widths add reorders (BENCHMARKS.md).
    round_to: int = option(16, help="round widths to a multiple of this (1: off)")
    init: str = option("inherit", help="inherit: surviving weights sliced in; scratch: fresh weights",
                       choices=("inherit", "scratch"))
    fitness: str = option("top1", help="top1 (held-out top-1) or smallest", choices=("top1", "smallest"))
    max_size_mb: float | None = option(None, help="constraint: largest size in MB")
    max_macs: int | None = option(None, help="constraint: largest MACs")
    min_top1: float | None = option(None, help="constraint: smallest held-out top-1")
    # Distillation (playbook: beside pruning): offspring learn the teacher's
    # softened outputs too, with train.distill_temperature and train.distill_weight.
    distill: str | None = option(None, help="offspring also learn from this network's soft outputs: ancestor or "
                                            "parent (off: labels only)", choices=("ancestor", "parent"))
    seed: int = option(0, help="seed of the offspring draws and their training")
    data: str | None = option(None, help="data set (off: the ancestor's)")
    train: TrainConfig = option(default_factory=lambda: GENERATION_TRAIN, help="training of each offspring")
    executor: ExecConfig = option(default_factory=ExecConfig, help="where each generation's offspring train")

    def __post_init__(self) -> None:
        if self.generations < 1 or self.population < 1:
            raise ConfigError("generations and population must be >= 1")
        self.executor.check_device(self.train.device)
        modes = [self.env_factor, self.target_size_mb, self.target_reduction]
        if sum(m is not None for m in modes) > 1:
            raise ConfigError("give one of --env-factor, --target-size-mb and --target-reduction, not several")
        if self.env_factor is not None and not 0 < self.env_factor < 1:
            raise ConfigError(f"--env-factor must be in (0, 1) (a resource-starved environment), got {self.env_factor}")
        if self.target_size_mb is not None and self.target_size_mb <= 0:
            raise ConfigError(f"--target-size-mb must be > 0, got {self.target_size_mb}")
        if self.target_reduction is not None and self.target_reduction <= 1:
            raise ConfigError(f"--target-reduction must be > 1 (times smaller than the ancestor), got {self.target_reduction}")
        if self.target_macs_reduction is not None:
            if self.target_macs_reduction <= 1:
                raise ConfigError(f"--target-macs-reduction must be > 1 (times fewer MACs than the ancestor) or "
                                  f"off, got {self.target_macs_reduction}")
            if self.env_factor is not None:
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
        if self.distill not in (None, "ancestor", "parent"):
            raise ConfigError(f"--distill must be ancestor or parent (or off), got {self.distill}")
        if self.train.teacher is not None:
            raise ConfigError("offspring are taught with --distill ancestor|parent, not a train.teacher checkpoint")
        if self.min_width < 1 or self.round_to < 1:
            raise ConfigError("--min-width and --round-to must be >= 1")

    @property
    def target_mode(self) -> bool:
        return self.env_factor is None

    def check_mode(self) -> None:
        """A run needs a fixed F(E) or a target (the defaults give neither, so
        a configuration can be built up from a file and flags)."""
        if self.env_factor is None and self.target_size_mb is None and self.target_reduction is None:
            raise ConfigError("give --env-factor F (0 < F < 1) or a target: --target-size-mb or --target-reduction")


# -- fitness and selection -------------------------------------------------------------
class Fitness(Protocol):
    """Scores a trained candidate; higher is fitter."""

    def __call__(self, c: Candidate) -> float: ...


class HoldoutTop1:
    """Top-1 on the held-out part of the training set."""

    def __call__(self, c: Candidate) -> float:
        return c.heldout_top1


class SmallestFit:
    """The smallest candidate; held-out top-1 breaks ties."""

    def __call__(self, c: Candidate) -> float:
        return -c.size_mb + 1e-6 * c.heldout_top1


FITNESS: dict[str, Callable[[], Fitness]] = {"top1": HoldoutTop1, "smallest": SmallestFit}


def violations(c: Candidate, cfg: EvolveConfig) -> list[str]:
    v = []
    if cfg.max_size_mb is not None and c.size_mb > cfg.max_size_mb:
        v.append(f"size {c.size_mb:.3f} MB > {cfg.max_size_mb}")
    if cfg.max_macs is not None and c.macs > cfg.max_macs:
        v.append(f"MACs {c.macs} > {cfg.max_macs}")
    if cfg.min_top1 is not None and c.heldout_top1 < cfg.min_top1:
        v.append(f"held-out top-1 {c.heldout_top1:.3f} < {cfg.min_top1}")
    return v


def select(cands: list[Candidate], cfg: EvolveConfig) -> tuple[int, bool]:
    """Index of the fittest candidate among those meeting the constraints (or,
    if none does, among all, reported as such) and whether it met them."""
    score = FITNESS[cfg.fitness]()
    ok = [i for i, c in enumerate(cands) if not violations(c, cfg)]
    pool = ok or list(range(len(cands)))
    best = max(pool, key=lambda i: (score(cands[i]), -i))
    return best, bool(ok)


def size_path(start_params: float, target_params: float, generations: int, g: int) -> float:
    """Geometric path of expected sizes from the ancestor to the target."""
    return start_params * (target_params / start_params) ** (g / generations)


# -- one generation's plan ------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    """What generation g aims at in target mode (parameters; MACs if targeted)."""

    params: float
    macs: float | None
    final: bool

    def error(self, params: int, macs: int) -> float:
        """How far a drawn offspring lands from the targets: the relative size
        error, counted three times when above the target (a target is a
        budget), plus the relative MAC excess when MACs have a target."""
        err = abs(params - self.params) / self.params + 2 * max(0.0, params - self.params) / self.params
        if self.macs:
            err += max(0.0, macs - self.macs) / self.macs
        return err


@dataclass
class _Context:
    """What every generation of one run shares."""

    rd: RunDir
    cfg: EvolveConfig
    train: TrainConfig
    splits: Splits
    image_size: int
    name: str
    start: GenerationRecord
    progress: bool

    def target(self, g: int) -> _Target | None:
        c = self.cfg
        if not c.target_mode:
            return None
        goal = (c.target_size_mb * 1e6 / BYTES_FP32 if c.target_size_mb is not None
                else self.start.params / c.target_reduction)
        macs = None
        if c.target_macs_reduction is not None:
            macs = size_path(self.start.macs, self.start.macs / c.target_macs_reduction, c.generations, g)
        return _Target(size_path(self.start.params, goal, c.generations, g), macs, g == c.generations)


def _gen_dir(rd: RunDir, g: int) -> Path:
    return rd.root / f"gen_{g:02d}"


def _record(g: int, ck: Checkpoint, ctx: _Context) -> GenerationRecord:
    """The lineage entry of a generation's checkpoint."""
    m = ck.metrics
    prof = profile(ck.genome, ctx.image_size)
    return GenerationRecord(
        generation=g, name=ck.genome.name, path=ctx.rd.rel(ck.path), params=prof.params, size_mb=prof.size_mb,
        macs=prof.macs, widths=ck.genome.widths(), heldout_top1=m["heldout_top1"], test_top1=m["test_top1"],
        test_top5=m["test_top5"], nonzero_params=m["nonzero_params"], sparse_bytes=m["sparse_bytes"],
        wall_s=m["wall_s"], seed=m.get("seed"), parent=m.get("parent"), env_factor=m.get("env_factor"),
        sharpness=m.get("sharpness"), mac_pressure=m.get("mac_pressure"),
        target_size_mb=m["target_params"] * BYTES_FP32 / 1e6 if m.get("target_params") else None,
        target_macs=m.get("target_macs"), synapse_factor=m.get("synapse_factor"),
        constraints_met=m.get("constraints_met"), selected=m.get("selected"),
        candidates=[Candidate(**c) for c in m.get("candidates", [])], history=m.get("history") or [])


def _open(ancestor: str | Path, run: str | Path, cfg: EvolveConfig) -> tuple[RunDir, Checkpoint, TrainConfig, str]:
    """Check the ancestor, then start or resume the run folder."""
    anc = load_checkpoint(ancestor)
    check_evolvable(anc.genome)  # before the run folder exists
    anc_cfg, _ = train_config_of(anc)
    if anc_cfg.holdout is None:
        raise ConfigError(f"{anc.path} was trained on every training image (holdout off), so no held-out set is "
                          "left for fitness; retrain it with --holdout 0.1")
    data = cfg.data or anc_cfg.data
    tcfg = dataclasses.replace(cfg.train, **{k: getattr(anc_cfg, k) for k in INHERITED if k != "data"}, data=data)
    # The ancestor is identified by its weights, not its path: a moved run
    # folder (or ancestor) still resumes, another ancestor does not.
    rd = RunDir.open(run, cfg, "evolve", extra={"ancestor_weights": weights_digest(ancestor),
                                                 "data": data, "image_size": anc_cfg.image_size},
                     check_extra=("ancestor_weights",))
    return rd, anc, tcfg, data


def _generation_zero(ctx: _Context, anc: Checkpoint, anc_cfg: TrainConfig) -> GenerationRecord:
    """The ancestor, measured the same way as its offspring, as generation 0."""
    g0 = _gen_dir(ctx.rd, 0) / "model"
    if not (g0 / "metrics.json").exists():
        t0 = time.perf_counter()
        acc = accuracy_metrics(anc.model, ctx.splits)
        nnz, sb = sparse_bytes(anc.model, anc.masks)
        m0 = {**acc, "classes": ctx.splits.classes, "seed": anc_cfg.seed, "parent": None,
              "wall_s": anc.metrics.get("train_time_s", 0.0) + time.perf_counter() - t0,
              "nonzero_params": nnz, "sparse_bytes": sb, "history": anc.metrics.get("history")}
        save_checkpoint(g0, anc.model, m0, anc.config, anc.masks)
    return _record(0, load_checkpoint(g0), ctx)


def _environment(parent: Checkpoint, tgt: _Target | None, ctx: _Context) -> Environment:
    c = ctx.cfg
    if tgt is None:
        return Environment(c.env_factor, c.sharpness)
    return solve_environment(parent.model, tgt.params, c.sharpness, c.min_width, target_macs=tgt.macs,
                             image_size=ctx.image_size, divisor=c.round_to)


# -- one candidate: an executor task --------------------------------------------------
@dataclass(frozen=True)
class _Brood:
    """What a candidate's task knows of its run, rebuilt from its plain arguments."""

    run: Path
    cfg: EvolveConfig
    train: TrainConfig
    image_size: int
    name: str
    progress: bool


# What the driver already holds, lent to the tasks it runs itself (the default
# in-process executor) so that they reload neither the data nor the parent; a
# task in another process or on another node finds nothing here and loads both
# from the paths in its arguments.
_LENT: dict[str, tuple[Any, ...]] = {}


@contextlib.contextmanager
def _lend(name: str, key: Any, *objs: Any) -> Iterator[None]:
    _LENT[name] = (key, *objs)
    try:
        yield
    finally:
        _LENT.pop(name, None)


def _borrow(name: str, key: Any) -> tuple[Any, ...] | None:
    got = _LENT.get(name)
    return got[1:] if got is not None and got[0] == key else None


def _splits_key(data: str, t: TrainConfig) -> tuple[Any, ...]:
    return (location(data), t.image_size, t.holdout, t.split_seed, t.cache_dir)


def _task(ctx: _Context, parent: Checkpoint, env: Environment, tgt: _Target | None, g: int, k: int,
          progress: bool) -> dict[str, Any]:
    """Candidate k's task: paths (absolute, so any worker finds them) and plain
    dicts, never tensors."""
    return {"run": str(ctx.rd.root.resolve()), "generation": g, "index": k,
            "parent": str(Path(parent.path).resolve()), "data": location(ctx.train.data),
            "evolve": to_dict(ctx.cfg), "train": to_dict(ctx.train), "image_size": ctx.image_size,
            "name": ctx.name, "env": dataclasses.asdict(env),
            "target": dataclasses.asdict(tgt) if tgt is not None else None, "progress": progress}


def breed(task: dict[str, Any]) -> dict[str, Any]:
    """Executor task: draw, train and score candidate ``task['index']`` of
    generation ``task['generation']`` (arguments as ``_task`` makes them) and
    return its ``Candidate`` as a dict. A candidate already written is read
    back, not recomputed, so a retried task does no work twice."""
    g, k = task["generation"], task["index"]
    cdir = Path(task["run"]) / f"gen_{g:02d}" / f"cand_{k}"
    if (cdir / "model" / "metrics.json").exists():
        return load_checkpoint(cdir / "model").metrics["candidate"]
    b = _Brood(Path(task["run"]), from_dict(EvolveConfig, task["evolve"], "an evolve task"),
               from_dict(TrainConfig, task["train"], "an evolve task"), task["image_size"], task["name"],
               task["progress"])
    env = Environment(**task["env"])
    tgt = _Target(**task["target"]) if task["target"] is not None else None
    t = b.train
    lent = _borrow("splits", _splits_key(task["data"], t))
    splits = lent[0] if lent else load_splits(task["data"], t.image_size, t.holdout, t.split_seed, t.cache_dir)
    lent = _borrow("parent", task["parent"])
    if lent:
        parent, enc = lent
    else:
        parent = load_checkpoint(task["parent"])
        enc = encode(parent.model, env.sharpness, weights=env.weights)
    return _breed(parent, env, enc, tgt, g, k, splits, b).to_dict()


def _draw(parent: Checkpoint, env: Environment, enc: Encoding, tgt: _Target | None, gen: torch.Generator, g: int,
          b: _Brood) -> tuple[Offspring, bool]:
    """One offspring. In target mode several are drawn (cheap: no training) and
    the one nearest the generation's target lives; in the last generation only
    draws within the target size count while there are any (up to 8x more
    draws), so the final network meets its budget. Returns (offspring, fits)."""
    c = b.cfg
    best: Offspring | None = None
    best_key = (True, float("inf"))
    must_fit = tgt is not None and tgt.final and c.final_within_target
    fitting = 0
    limit = c.size_draws * (8 if must_fit else 1) if tgt is not None else 1
    for i in range(limit):
        o = synthesize(parent.model, env.factor, gen, sharpness=env.sharpness, min_width=c.min_width,
                       divisor=c.round_to, name=f"{b.name}-gen{g:02d}", init=c.init,
                       synapse_factor=c.synapse_factor if c.synapse_level else None, parent_masks=parent.masks,
                       encoding=enc)
        if tgt is None:
            return o, True
        prof = profile(o.model.genome, b.image_size)
        over = must_fit and prof.params > tgt.params
        key = (over, tgt.error(prof.params, prof.macs))
        fitting += not over
        if key < best_key:
            best, best_key = o, key
        if i + 1 >= c.size_draws and (not must_fit or fitting >= c.size_draws):
            break
    assert best is not None
    return best, not best_key[0]


def _teacher(distill: str | None, parent: Checkpoint, run: Path) -> torch.nn.Module | None:
    """A fresh copy of the teacher (``fit`` moves and freezes it): the
    parent, or the ancestor kept as generation 0."""
    if distill is None:
        return None
    if distill == "parent":
        return copy.deepcopy(parent.model)
    return load_checkpoint(run / "gen_00" / "model").model


def _breed(parent: Checkpoint, env: Environment, enc: Encoding, tgt: _Target | None, g: int, k: int,
           splits: Splits, b: _Brood) -> Candidate:
    """Draw, train, score and save candidate k of generation g."""
    c = b.cfg
    cdir = b.run / f"gen_{g:02d}" / f"cand_{k}"
    t0 = time.perf_counter()
    seed = offspring_seed(c.seed, g, k)
    off, fits = _draw(parent, env, enc, tgt, torch.Generator().manual_seed(seed), g, b)
    if not fits:
        log.warning("generation %d: no draw of %d fits the target size; the smallest was kept", g, c.size_draws * 8)
    child = off.model
    synth_s = time.perf_counter() - t0
    tcfg = dataclasses.replace(b.train, seed=seed)
    res: dict[str, Any] = {"history": [], "train_time_s": 0.0}
    if tcfg.epochs > 0:
        teacher = _teacher(c.distill, parent, b.run)
        extra = {"genome": child.genome.to_dict(), "generation": g, **({"teacher": c.distill} if teacher else {})}
        res = fit(child, (splits.train.images, splits.train.labels), tcfg, masks=off.masks,
                  resume=Resumable(cdir / "state", extra), teacher=teacher,
                  desc=f"gen {g}/{c.generations} cand {k + 1}/{c.population}" if b.progress else None)
    t1 = time.perf_counter()
    child.cpu()
    acc = accuracy_metrics(child, splits)
    prof = profile(child.genome, b.image_size)
    nnz, sb = sparse_bytes(child, off.masks)
    wall = synth_s + res["train_time_s"] + (time.perf_counter() - t1)
    cand = Candidate(index=k, heldout_top1=acc["heldout_top1"], size_mb=prof.size_mb, params=prof.params,
                     macs=prof.macs, seed=seed, wall_s=wall)
    metrics = {
        **acc, "candidate": cand.to_dict(), "nonzero_params": nnz, "sparse_bytes": sb, "classes": splits.classes,
        "seed": seed, "parent": os.path.relpath(parent.path, b.run), "env_factor": env.factor,
        "sharpness": env.sharpness, "mac_pressure": env.pressure, "target_macs": tgt.macs if tgt else None,
        "synapse_factor": c.synapse_factor if c.synapse_level else None, "target_params": tgt.params if tgt else None,
        "target_met": fits, "keep": off.keep, "history": res["history"], "train_time_s": res["train_time_s"],
        "wall_s": wall,
    }
    save_checkpoint(cdir / "model", child, metrics, checkpoint_config(tcfg, splits.classes), off.masks)
    return cand


def _generation(parent: Checkpoint, g: int, ctx: _Context, ex: Executor) -> Checkpoint:
    """Breed generation g's candidates, select the fittest, save it as the next parent."""
    gdir = _gen_dir(ctx.rd, g)
    tgt = ctx.target(g)
    env = _environment(parent, tgt, ctx)
    here = ex.name == IN_PROCESS
    tasks = [_task(ctx, parent, env, tgt, g, k, ctx.progress and here) for k in range(ctx.cfg.population)]
    found: dict[int, Candidate] = {}
    enc = encode(parent.model, env.sharpness, weights=env.weights) if here else None  # the parent's DNA
    # In-process, each candidate's training shows its own bar; elsewhere one bar counts finished candidates.
    with (_lend("parent", tasks[0]["parent"], parent, enc) if here else contextlib.nullcontext(),
          tqdm(total=len(tasks), desc=f"gen {g}/{ctx.cfg.generations} candidates on {ex.name}", unit="cand",
               leave=False, disable=here or not ctx.progress) as bar):
        for k, d in ex.map_unordered(breed, tasks):
            found[k] = Candidate(**d)
            bar.update()
    cands = [found[k] for k in range(len(tasks))]
    best, met = select(cands, ctx.cfg)
    chosen = load_checkpoint(gdir / f"cand_{best}" / "model")
    m = {**chosen.metrics, "selected": best, "constraints_met": met,
         "wall_s": sum(c.wall_s for c in cands),
         "candidates": [c.to_dict() for c in cands]}
    save_checkpoint(gdir / "model", chosen.model, m, chosen.config, chosen.masks)
    return load_checkpoint(gdir / "model")


def evolve(
    ancestor: str | Path,
    run: str | Path,
    cfg: EvolveConfig,
    progress: bool = True,
    on_generation: Callable[[GenerationRecord], None] | None = None,
    executor: Executor | None = None,
) -> Lineage:
    """Run (or resume) the generations; return the lineage. Candidates train
    on ``executor`` if given (left open), else on one made from ``cfg.executor``."""
    cfg.check_mode()
    with contextlib.ExitStack() as stack:
        if executor is None:
            executor = make_executor(cfg.executor)
            stack.callback(executor.close)
        rd, anc, tcfg, data = _open(ancestor, run, cfg)
        anc_cfg, classes = train_config_of(anc)
        splits = load_splits(data, tcfg.image_size, tcfg.holdout, tcfg.split_seed, tcfg.cache_dir, progress=progress)
        if classes != splits.classes:
            raise ConfigError("the data's classes differ from the ancestor's; evolve on the data it was trained on")
        stack.enter_context(_lend("splits", _splits_key(data, tcfg), splits))
        ctx = _Context(rd, cfg, tcfg, splits, tcfg.image_size, anc.genome.name,
                       None, progress)  # type: ignore[arg-type]
        ctx.start = _generation_zero(ctx, anc, anc_cfg)
        if cfg.target_mode and ctx.target(cfg.generations).params >= ctx.start.params:
            raise ConfigError(f"the target ({ctx.target(cfg.generations).params * BYTES_FP32 / 1e6:.3f} MB) is not "
                              f"below the ancestor's {ctx.start.size_mb:.3f} MB; choose a smaller --target-size-mb")
        config = {**to_dict(cfg), "data": data, "image_size": tcfg.image_size}
        records = [ctx.start]
        parent = load_checkpoint(_gen_dir(rd, 0) / "model")
        for g in range(1, cfg.generations + 1):
            done = (_gen_dir(rd, g) / "model" / "metrics.json").exists()
            parent = load_checkpoint(_gen_dir(rd, g) / "model") if done else _generation(parent, g, ctx, executor)
            records.append(_record(g, parent, ctx))
            Lineage(config, records).save(rd.root)
            if not done:
                e = records[-1]
                log.info("generation %d: %.3f MB, held-out top-1 %.4f, F(E)=%.4f k=%.3f MAC pressure %.2f", g,
                         e.size_mb, e.heldout_top1, e.env_factor, e.sharpness, e.mac_pressure)
                if on_generation is not None:
                    on_generation(e)
    lineage = Lineage(config, records)
    lineage.save(rd.root)
    return lineage
