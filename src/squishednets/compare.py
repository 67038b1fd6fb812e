"""Side by side with what users would pick instead: ``squishednets compare RUN``.

An embedded engineer who wants a network of a given size has two common
alternatives to evolutionary synthesis (SquishedNets paper, section 3):
structured pruning of the trained network (Torch-Pruning, Fang et al. 2023,
"DepGraph: Towards Any Structural Pruning"), or a smaller SqueezeNet trained
from scratch, scaled by a width multiplier (MobileNet's alpha) or by
SqueezeNet's own metaparameters (SqueezeNet paper, section 5.1; the playbook's
design space). The small-DNN playbook lists distillation beside pruning. This
module runs them from the same ancestor, data and budget as a run's lineage and
measures every network the same way.

Methods (``METHODS``), each at the sizes of the lineage's generations
(SquishedNet-1…4, chosen on held-out, and the last generation, unless
``generations`` names others):

- ``evolution``: the run's lineage (its seed); further seeds evolve again from
  the same ancestor with the run's evolution settings and seed + i.
- ``evolution_distill``: the same evolution with ``--distill`` (the ancestor
  teaching by default, ``train.py``).
- ``torch_pruning``: Torch-Pruning's ``MetaPruner`` on its ``DependencyGraph``
  (the library, not our ``shrink``, resolves the Fire modules' concatenation),
  iterative over as many steps as the lineage has generations; step g prunes
  the network to generation g's size (the pruning ratio found by bisection) and
  fine-tunes it with our trainer for the epochs of one generation.
- ``scaled_width``: SqueezeNet v1.1 times a width multiplier, trained from
  scratch.
- ``scaled_design``: ``squeezenet_design`` with the Fire widths e_i = b + b *
  floor(i / freq) (base_e = incr_e = b), SR and pct3x3 as configured, v1.1's
  stem and pooling, trained from scratch.
- ``lineage_from_scratch``: generation g's genome with fresh weights: does the
  inherited knowledge or the architecture carry the accuracy?

Budgets: a network trained from scratch gets as many epochs as the lineage
spent to reach that size (the ancestor's epochs plus g generations of
population x epochs); pruning gets the ancestor plus g fine-tuning steps of
one generation's epochs. Sizes land within ``tolerance`` of the target
(widths rounded to ``round_to``, or to its halves where the coarser
rounding has no width that lands; each network records its widths); a miss
is reported, never hidden.

Every network is measured alike: dense fp32 size (BatchNorm folded), MACs,
held-out top-1 (the choice set) and test top-1 (reported only), training
wall time, an ONNX export checked against PyTorch on noise and on test
images, and ONNX Runtime images/s at batch 32 at each ``image_sizes``, every
network timed in the same interleaved rounds at the end (medians).

The folder::

    RUN/compare/config.json                  resolved configuration (rundir.RunDir)
    RUN/compare/<method>/seed_S/...           each method's training, resumable
    RUN/compare/<method>/seed_S/gen_GG/       one network: result.json, model_<px>px.onnx
    RUN/compare/timing.json                   the interleaved ONNX Runtime rounds
    RUN/compare/compare.json|.md|.csv|.png    the side by side; section.html for the report
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import html
import json
import importlib.metadata
import io
import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from .checkpoint import load_checkpoint, read_metrics, save_checkpoint, weights_digest
from .config import from_dict, option, to_dict
from .data import Splits, load_splits
from .errors import ConfigError, DeadNetworkError, SquishedError
from .evolve import INHERITED, EvolveConfig, evolve
from .explore import ort_speed
from .export import check_onnx_images, export_onnx
from .genome import FireSpec, Genome, get_genome, squeezenet_design
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json_object
from .metrics import profile
from .model import build, fold_batchnorm
from .records import LINEAGE_FILE, GenerationRecord, Lineage
from .report import choose_squishednets, compare_dir, figure_png, run_root, write_report
from .rundir import CONFIG_FILE, RunDir
from .seeds import offspring_seed
from .train import Resumable, TrainConfig, accuracy_metrics, checkpoint_config, fit, run_training, train_config_of

__all__ = ["METHODS", "EVOLUTION", "PEERS", "CompareConfig", "compare", "match_width", "match_design", "targets_of",
           "prune_to", "genome_of", "coarsest_within", "goal", "summary", "TorchPruningError"]

log = logging.getLogger(__name__)

METHODS = ("evolution", "evolution_distill", "torch_pruning", "scaled_width", "scaled_design",
           "lineage_from_scratch")
EVOLUTION = ("evolution", "evolution_distill")
PEERS = ("torch_pruning", "scaled_width", "scaled_design", "lineage_from_scratch")
IMPORTANCE = ("group_norm", "magnitude")


@dataclass(frozen=True)
class CompareConfig:
    """Settings of ``squishednets compare``."""

    # Results are kept per method, seed and generation: a comparison may be
    # extended (more methods, seeds or sizes) and resumed with fewer.
    methods: tuple[str, ...] = option(METHODS, help="methods to run, comma-separated", resume=False)
    seeds: int = option(1, help="seeds per method: the run's seed + 0..N-1 (evolution's first is the run's lineage)",
                        resume=False)
    generations: tuple[int, ...] | None = option(
        None, help="generations whose sizes are matched, comma-separated (off: SquishedNet-1..4 and the last)",
        resume=False)
    importance: str = option("group_norm", help="Torch-Pruning importance: group_norm (L2 over each dependency "
                                                "group) or magnitude (L1 of each layer's own filters)",
                             choices=IMPORTANCE)
    # ONNX Runtime's blocked convolutions take 8 channels at a time on AVX2
    # (16 on AVX-512); 8 still lands every family within 3% of its targets.
    round_to: int = option(8, help="widths of pruned and scaled networks are multiples of this, halved where that "
                                   "cannot land within --tolerance (1: off)")
    tolerance: float = option(0.03, help="matched sizes lie within this relative distance of the target")
    design_sr: float = option(0.25, help="scaled_design: squeeze ratio SR")
    design_pct3x3: float = option(0.5, help="scaled_design: share of 3x3 expand filters")
    design_freq: int = option(2, help="scaled_design: Fire modules per expand-width step")
    distill: str = option("ancestor", help="evolution_distill's teacher", choices=("ancestor", "parent"))
    image_sizes: tuple[int, ...] = option((64, 224), help="ONNX Runtime timing resolutions in px", resume=False)
    rounds: int = option(3, help="interleaved timing rounds (figures are medians)", resume=False)
    threads: int | None = option(None, help="CPU threads for training (off: every core)", resume=False)
    device: str = option("auto", help="auto, cpu or cuda", resume=False, choices=("auto", "cpu", "cuda"))
    cache_dir: str | None = option(None, help="decoded-image cache (off: ~/.cache/squishednets)", resume=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ConfigError(f"--methods must be some of {','.join(METHODS)}, got {','.join(self.methods) or 'none'}")
        if self.seeds < 1 or self.rounds < 1:
            raise ConfigError(f"--seeds and --rounds must be >= 1, got {self.seeds} and {self.rounds}")
        if self.importance not in IMPORTANCE:
            raise ConfigError(f"--importance must be one of {', '.join(IMPORTANCE)}, got {self.importance}")
        if self.round_to < 1 or not 0 < self.tolerance < 1:
            raise ConfigError("--round-to must be >= 1 and --tolerance in (0, 1)")
        if not 0 < self.design_sr <= 1 or not 0 <= self.design_pct3x3 <= 1 or self.design_freq < 1:
            raise ConfigError("--design-sr must be in (0, 1], --design-pct3x3 in [0, 1], --design-freq >= 1")
        if not self.image_sizes or min(self.image_sizes) < 16:
            raise ConfigError(f"--image-sizes must be sizes of 16 px or more, got {list(self.image_sizes)}")
        if self.generations is not None and (not self.generations or min(self.generations) < 1):
            raise ConfigError("--generations lists evolved generations (1 or more), e.g. 4,8,15")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1 or off, got {self.threads}")


class TorchPruningError(SquishedError):
    """Torch-Pruning could not prune a network correctly; recorded, never patched over."""


# -- the run being compared -------------------------------------------------------------
@dataclass
class _Run:
    """What every method shares: the lineage, its settings, the data."""

    evolve_dir: Path
    lineage: Lineage
    evolve: EvolveConfig
    anc_cfg: TrainConfig
    gen_train: TrainConfig  # one generation's training, with the ancestor's data and recipe
    splits: Splits
    targets: list[GenerationRecord]
    out: Path
    cfg: CompareConfig

    @property
    def image_size(self) -> int:
        return self.anc_cfg.image_size

    @property
    def ancestor(self) -> Path:
        return self.evolve_dir / self.lineage.generations[0].path

    def epochs(self, g: int) -> int:
        """Training epochs the lineage spent to reach generation ``g``, the ancestor's included."""
        return self.anc_cfg.epochs + g * self.evolve.population * self.evolve.train.epochs

    def seeds(self) -> list[int]:
        return [self.evolve.seed + i for i in range(self.cfg.seeds)]

    def net_dir(self, method: str, seed: int, g: int) -> Path:
        return self.out / net_key(method, seed, g)

    def rel(self, path: Path) -> str:
        """``path`` as stored in results: relative to the compare folder, so both can move together."""
        return os.path.relpath(Path(path).resolve(), self.out.resolve())


def _locate(target: str | Path) -> Path:
    """The evolve folder of ``target``: a ``run`` folder or an evolve folder."""
    root = Path(target)
    if (root / LINEAGE_FILE).is_file():
        return root
    if (root / CONFIG_FILE).is_file() and (root / "evolve" / LINEAGE_FILE).is_file():
        return root / "evolve"
    raise ConfigError(f"{root} holds no lineage; pass a 'squishednets run' folder or an evolve folder whose "
                      "evolution has finished")


def _train_seconds(history: Sequence[dict[str, Any]] | None) -> float:
    """Seconds of training epochs in a ``fit`` history (evaluation and search excluded)."""
    return float(sum(h.get("epoch_s", 0.0) for h in history or []))


def targets_of(lineage: Lineage, generations: Sequence[int] | None = None) -> list[GenerationRecord]:
    """The generations whose sizes the peers match: SquishedNet-1…4 (chosen on
    held-out by the report's rule) and the last generation, or ``generations``."""
    gens = lineage.generations
    if generations is None:
        chosen = {e.generation for e in choose_squishednets(gens)} | {gens[-1].generation}
    else:
        bad = sorted(g for g in generations if not 1 <= g < len(gens))
        if bad:
            raise ConfigError(f"--generations {bad} are not evolved generations of this lineage (1..{len(gens) - 1})")
        chosen = set(generations)
    return [gens[g] for g in sorted(chosen)]


def _open(target: str | Path, out: str | Path | None, cfg: CompareConfig, progress: bool) -> tuple[_Run, RunDir]:
    ev = _locate(target)
    lineage = Lineage.load(ev)
    ev_doc = read_json_object(ev / CONFIG_FILE, ConfigError, "pass a folder written by 'squishednets evolve' or 'run'")
    ecfg = from_dict(EvolveConfig, ev_doc.get("config", {}), f"{ev / CONFIG_FILE}")
    if len(lineage.generations) - 1 != ecfg.generations:
        raise ConfigError(f"{ev} has {len(lineage.generations) - 1} of its {ecfg.generations} generations; let its "
                          "evolution finish first (run the same evolve or run command again)")
    anc = load_checkpoint(ev / lineage.generations[0].path)
    anc_cfg, classes = train_config_of(anc)
    data = lineage.config.get("data") or anc_cfg.data
    # The peers from scratch train with the ancestor's recipe on the lineage's data, taught by nobody.
    anc_cfg = dataclasses.replace(anc_cfg, data=data, teacher=None, threads=cfg.threads, device=cfg.device,
                                  cache_dir=cfg.cache_dir, eval_every=None)
    gen_train = dataclasses.replace(ecfg.train, **{k: getattr(anc_cfg, k) for k in INHERITED if k != "data"},
                                    data=data, threads=cfg.threads, device=cfg.device, cache_dir=cfg.cache_dir)
    tg = targets_of(lineage, cfg.generations)
    if any(m in cfg.methods for m in PEERS):
        _check_torch_pruning(cfg)
    splits = load_splits(data, anc_cfg.image_size, anc_cfg.holdout, anc_cfg.split_seed, cfg.cache_dir,
                         progress=progress)
    if splits.classes != classes:
        raise ConfigError(f"the data {data} no longer has the classes the ancestor learnt; compare on the run's data")
    root = Path(out) if out else compare_dir(ev)
    # The lineage is known by its ancestor's weights and its generations' widths (a moved run still
    # resumes, another lineage does not), the pruning by the library's version.
    digest = weights_digest(anc.path)
    widths = hashlib.sha256(json.dumps([e.widths for e in lineage.generations]).encode()).hexdigest()[:16]
    rd = RunDir.open(root, cfg, "compare", extra={"lineage": str(ev.resolve()), "ancestor_weights": digest,
                                                   "lineage_widths": widths,
                                                   "torch_pruning": _torch_pruning_version()},
                     check_extra=("ancestor_weights", "lineage_widths"))
    return _Run(ev, lineage, ecfg, anc_cfg, gen_train, splits, tg, root, cfg), rd


def _check_torch_pruning(cfg: CompareConfig) -> None:
    if "torch_pruning" in cfg.methods:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            raise ConfigError("the torch_pruning method needs Torch-Pruning: pip install 'torch-pruning==1.6.1' "
                              "(or the compare extra); or leave it out of --methods") from None


def _torch_pruning_version() -> str | None:
    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        return None


# -- sizes ------------------------------------------------------------------------------
def _params(genome: Genome, image_size: int) -> int:
    return profile(genome, image_size).params


def match_width(base: Genome, target_params: int, divisor: int, image_size: int) -> Genome:
    """``base`` times the width multiplier whose size is nearest ``target_params``
    (widths multiples of ``divisor``; the size grows with the multiplier, so a
    bisection finds the step, then the nearer neighbour wins)."""
    lo, hi = 0.01, 2.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if _params(base.scaled(mid, divisor), image_size) < target_params:
            lo = mid
        else:
            hi = mid
    best = min((base.scaled(m, divisor) for m in (lo, hi)),
               key=lambda g: abs(_params(g, image_size) - target_params))
    return best.replace(name=f"{base.name}_w{hi:.3f}")


def divisors(round_to: int) -> list[int]:
    """``round_to``, then halved down to 1: the width roundings tried in turn."""
    out = [round_to]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def coarsest_within(make: Callable[[int], Any], size: Callable[[Any], int], target_params: int, round_to: int,
                    tolerance: float, ok: Callable[[Any], bool] = lambda obj: True) -> tuple[Any, int]:
    """``make(divisor)`` for the coarsest divisor (``round_to``, halved down to
    1) whose result is ``ok`` and whose size lies within ``tolerance`` of
    ``target_params``, and that divisor; if none does, the nearest of the ``ok``
    ones (or of all), whose miss the caller reports."""
    best: tuple[tuple[bool, float], Any, int] | None = None
    for d in divisors(round_to):
        obj = make(d)
        err = abs(size(obj) / target_params - 1)
        good = ok(obj)
        if good and err <= tolerance:
            return obj, d
        if best is None or (not good, err) < best[0]:
            best = ((not good, err), obj, d)
    assert best is not None
    return best[1], best[2]


def match_design(target_params: int, num_classes: int, image_size: int, cfg: CompareConfig,
                 batchnorm: bool = True, divisor: int | None = None) -> Genome:
    """``squeezenet_design`` with base_e = incr_e = b, the b whose size is nearest ``target_params``."""
    v11 = get_genome("squeezenet1_1", num_classes)

    def design(b: int) -> Genome:
        return squeezenet_design(b, b, cfg.design_pct3x3, cfg.design_freq, cfg.design_sr, num_classes=num_classes,
                                 stem=v11.stem, pool_after=v11.pool_after,
                                 divisor=cfg.round_to if divisor is None else divisor,
                                 batchnorm=batchnorm, name=f"design_b{b}_sr{cfg.design_sr:g}_p{cfg.design_pct3x3:g}")

    lo, hi = 1, 4096
    while lo < hi:  # smallest b at or above the target
        mid = (lo + hi) // 2
        if _params(design(mid), image_size) < target_params:
            lo = mid + 1
        else:
            hi = mid
    return min((design(b) for b in {max(1, lo - 1), lo}), key=lambda g: abs(_params(g, image_size) - target_params))


# -- Torch-Pruning ----------------------------------------------------------------------
def genome_of(model: torch.nn.Module, base: Genome) -> Genome:
    """The genome of a network whose layers Torch-Pruning cut: every width
    read from the pruned convolutions (an empty branch stays empty)."""
    def out(unit: Any) -> int:
        return 0 if unit is None else int(unit.conv.out_channels)

    return dataclasses.replace(
        base, stem=dataclasses.replace(base.stem, filters=out(model.conv1)),
        fires=tuple(FireSpec(out(f.squeeze), out(f.expand1x1), out(f.expand3x3)) for f in model.fires))


def _importance(name: str) -> Any:
    import torch_pruning as tp

    if name == "magnitude":
        # L1 norm of the pruned layer's own filters (Li et al. 2017), as the library's docstring spells it:
        # its MagnitudeImportance alone would average over every coupled layer.
        return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer=None)
    return tp.importance.GroupMagnitudeImportance(p=2)  # L2 over the whole dependency group (DepGraph)


def _prune_copy(model: torch.nn.Module, ratio: float, cfg: CompareConfig, image_size: int,
                divisor: int) -> torch.nn.Module:
    import torch_pruning as tp

    m = copy.deepcopy(model).cpu().eval()
    x = torch.randn(1, 3, image_size, image_size)  # traced for the dependency graph only
    try:
        # conv10 keeps one filter per class: it is the task, not a width to prune.
        pruner = tp.pruner.MetaPruner(m, x, importance=_importance(cfg.importance), pruning_ratio=ratio,
                                      ignored_layers=[m.conv10], round_to=divisor if divisor > 1 else None)
        pruner.step()
    except Exception as e:  # the library's failure is the result, reported as such
        raise TorchPruningError(f"Torch-Pruning failed at pruning ratio {ratio:.3f}: {type(e).__name__}: {e}") from None
    return m


def _unit_names(genome: Genome) -> list[str]:
    """Names of ``Genome.widths()``'s entries."""
    return ["conv1"] + [f"fire{i + 2}.{r}" for i in range(len(genome.fires))
                        for r in ("squeeze", "expand1x1", "expand3x3")]


def _unpruned(before: Genome, after: Genome) -> list[str]:
    """Layers the library left at full width (it does so, silently, where
    rounding would take a layer to zero filters)."""
    return [n for n, a, b in zip(_unit_names(before), before.widths(), after.widths()) if a > 0 and a == b]


def prune_to(model: torch.nn.Module, target_params: int, cfg: CompareConfig,
             image_size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """One step of Torch-Pruning: the uniform pruning ratio whose pruned
    network is nearest ``target_params`` with every layer pruned, widths
    rounded to ``cfg.round_to`` (halved while that misses ``cfg.tolerance``
    or leaves a layer whole), rebuilt by our builder from the widths the
    library left, with its weights. The rebuilt network must compute what the
    library's pruned module computes; if not, the library pruned something our
    genome cannot express and ``TorchPruningError`` says so. Layers the
    library left whole are listed in ``unpruned_layers``, not hidden."""
    got, divisor = coarsest_within(lambda d: _prune_at(model, target_params, cfg, image_size, d),
                                   lambda r: r[1]["params"], target_params, cfg.round_to, cfg.tolerance,
                                   ok=lambda r: not r[1]["unpruned_layers"])
    rebuilt, info = got
    return rebuilt, {**info, "round_to": divisor}


def _prune_at(model: torch.nn.Module, target_params: int, cfg: CompareConfig, image_size: int,
              divisor: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    base = model.genome
    start = _params(base, image_size)
    if target_params >= start:
        ratio, pruned = 0.0, copy.deepcopy(model).cpu().eval()
    else:
        tried: dict[float, tuple[int, torch.nn.Module, list[str]]] = {}

        def size(r: float) -> int:
            if r not in tried:
                p = _prune_copy(model, r, cfg, image_size, divisor)
                g = _genome_of_checked(p, base)
                tried[r] = (_params(g, image_size), p, _unpruned(base, g))
            return tried[r][0]

        # The size falls with the ratio except where rounding leaves layers
        # whole; the bisection finds the crossing, and every ratio tried is a
        # candidate: the nearest with every layer pruned wins.
        lo, hi = 0.0, 0.95
        for _ in range(11):  # ratio to within 0.0005
            mid = (lo + hi) / 2
            if size(mid) > target_params:
                lo = mid
            else:
                hi = mid
        whole = [r for r in tried if not tried[r][2]] or list(tried)
        ratio = min(whole, key=lambda r: abs(tried[r][0] - target_params))
        pruned = tried[ratio][1]
    genome = _genome_of_checked(pruned, base)
    try:
        rebuilt = build(genome)
        rebuilt.load_state_dict(pruned.state_dict())
    except (RuntimeError, SquishedError) as e:
        raise TorchPruningError(f"Torch-Pruning left weights our builder cannot hold: {str(e).splitlines()[0]}") from None
    rebuilt.eval()
    x = torch.randn(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = pruned(x), rebuilt(x)
    diff = float((ref - got).abs().max())
    if not diff <= 1e-4 * max(1.0, float(ref.abs().max())):
        raise TorchPruningError(f"the network Torch-Pruning pruned and its rebuild differ by {diff:.3g}: the library "
                                "pruned a layer in a way a SqueezeNet genome cannot express")
    return rebuilt, {"ratio": ratio, "params": _params(genome, image_size), "rebuild_max_abs_diff": diff,
                     "unpruned_layers": _unpruned(base, genome) if ratio > 0 else []}


def _genome_of_checked(pruned: torch.nn.Module, base: Genome) -> Genome:
    try:
        return genome_of(pruned, base)
    except (AttributeError, SquishedError) as e:
        raise TorchPruningError(f"Torch-Pruning left a network that is no SqueezeNet genome: {e}") from None


def _torch_pruning(run: _Run, seed: int, bar: Any) -> None:
    """Iterative pruning and fine-tuning over the lineage's generations: step g
    lands on generation g's size, then trains one generation's epochs."""
    root = run.out / "torch_pruning" / f"seed_{seed}"
    last = max(e.generation for e in run.targets)
    train_s = _train_seconds(read_metrics(run.ancestor).get("history"))
    prune_s = 0.0
    version = _torch_pruning_version()
    steps: dict[int, dict[str, Any]] = {}  # each step's metrics
    parent, model = run.ancestor, None  # a network is loaded only when a step is still to be pruned from it
    for g in range(1, last + 1):
        step = root / f"step_{g:02d}" / "model"
        if (step / "metrics.json").is_file():
            m = steps[g] = read_metrics(step)
            if m["torch_pruning"] != version:
                raise TorchPruningError(f"{step} was pruned by Torch-Pruning {m['torch_pruning']}, this is "
                                        f"{version}; delete {root} to prune again with this version")
            train_s, prune_s = m["cumulative_train_s"], m["cumulative_prune_s"]
            parent, model = step, None
            continue
        if model is None:
            model = load_checkpoint(parent).model
        t0 = time.perf_counter()
        target = run.lineage.generations[g].params
        pruned, info = prune_to(model, target, run.cfg, run.image_size)
        prune_s += time.perf_counter() - t0
        if info["unpruned_layers"]:
            log.warning("torch_pruning step %d: the library left %s whole", g, ", ".join(info["unpruned_layers"]))
        tcfg = dataclasses.replace(run.gen_train, seed=offspring_seed(seed, g, 0))
        res = fit(pruned, (run.splits.train.images, run.splits.train.labels), tcfg,
                  resume=Resumable(step.parent / "state", {"genome": pruned.genome.to_dict(), "step": g}),
                  desc=f"torch_pruning seed {seed} step {g}/{last}" if bar is not None else None)
        pruned.cpu()
        train_s += res["train_time_s"]  # restored with the state, so a resumed step counts every epoch
        m = steps[g] = {**accuracy_metrics(pruned, run.splits), **info, "target_params": target, "step": g,
                        "train_time_s": res["train_time_s"], "history": res["history"],
                        "cumulative_train_s": train_s, "cumulative_prune_s": prune_s, "torch_pruning": version,
                        "importance": run.cfg.importance}
        save_checkpoint(step, pruned, m, checkpoint_config(tcfg, run.splits.classes))
        parent, model = step, pruned
    for e in run.targets:
        m = steps[e.generation]
        _result(run, "torch_pruning", seed, e, root / f"step_{e.generation:02d}" / "model",
                epochs=run.anc_cfg.epochs + e.generation * run.evolve.train.epochs,
                train_s=m["cumulative_train_s"], bar=bar,
                extra={"prune_search_s": m["cumulative_prune_s"], "round_to": m["round_to"],
                       "unpruned_layers": sorted({n for g in range(1, e.generation + 1)
                                                  for n in steps[g]["unpruned_layers"]})})


# -- the other methods ------------------------------------------------------------------
def _evolution(run: _Run, method: str, seed: int, bar: Any) -> None:
    if method == "evolution" and seed == run.evolve.seed:
        lin, ev = run.lineage, run.evolve_dir  # the run's own lineage
    else:
        ev = run.out / method / f"seed_{seed}" / "evolve"
        # More seeds of "evolution" are evolved as the run was (taught too, if it was).
        distill = run.cfg.distill if method == "evolution_distill" else run.evolve.distill
        ecfg = dataclasses.replace(run.evolve, seed=seed, distill=distill,
                                   train=dataclasses.replace(run.evolve.train, threads=run.cfg.threads,
                                                             device=run.cfg.device, cache_dir=run.cfg.cache_dir))
        lin = evolve(run.ancestor, ev, ecfg, progress=bar is not None)
    train_s = [_train_seconds(read_metrics(ev / lin.generations[0].path).get("history"))]
    for e in lin.generations[1:]:  # every candidate's training counts, not only the survivor's
        train_s.append(sum(_train_seconds(read_metrics(ev / f"gen_{e.generation:02d}" / f"cand_{c.index}" / "model")
                                          .get("history")) for c in e.candidates))
    for e in run.targets:
        mine = lin.generations[e.generation]
        _result(run, method, seed, e, ev / mine.path, epochs=run.epochs(e.generation),
                train_s=sum(train_s[:e.generation + 1]), bar=bar)


def _genome_for(run: _Run, method: str, e: GenerationRecord) -> Genome:
    lineage_genome = load_checkpoint(run.evolve_dir / e.path).genome
    n, bn = lineage_genome.num_classes, lineage_genome.batchnorm
    if method == "lineage_from_scratch":
        return lineage_genome.replace(name=f"{lineage_genome.name}_scratch")
    size = lambda g: _params(g, run.image_size)  # noqa: E731
    if method == "scaled_width":
        v11 = get_genome("squeezenet1_1", n, batchnorm=bn)
        return coarsest_within(lambda d: match_width(v11, e.params, d, run.image_size), size, e.params,
                               run.cfg.round_to, run.cfg.tolerance)[0]
    return coarsest_within(lambda d: match_design(e.params, n, run.image_size, run.cfg, batchnorm=bn, divisor=d),
                           size, e.params, run.cfg.round_to, run.cfg.tolerance)[0]


def _from_scratch(run: _Run, method: str, seed: int, bar: Any) -> None:
    for e in run.targets:
        d = run.net_dir(method, seed, e.generation)
        if (d / "result.json").is_file():
            continue
        genome = _genome_for(run, method, e)
        gpath = d / "genome.json"
        if not gpath.is_file():
            atomic_write_text(gpath, genome.to_json())
        tcfg = dataclasses.replace(run.anc_cfg, model=str(gpath.resolve()), seed=seed, epochs=run.epochs(e.generation))
        m = run_training(tcfg, d / "train", resume=True, progress=bar is not None)
        _result(run, method, seed, e, d / "train" / "model", epochs=tcfg.epochs, train_s=m["train_time_s"], bar=bar)


def _result(run: _Run, method: str, seed: int, target: GenerationRecord, ck_path: Path, epochs: int,
            train_s: float, bar: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure one network (once) and write its ``result.json``."""
    d = run.net_dir(method, seed, target.generation)
    done = d / "result.json"
    if done.is_file():
        return read_json_object(done, ConfigError, "delete it to measure the network again")
    ck = load_checkpoint(ck_path)
    prof = profile(ck.genome, run.image_size)
    acc = ck.metrics  # every method's checkpoint carries its held-out and test top-1 on the run's splits
    test = run.splits.test.images[:64]
    onnx_path = d / f"model_{run.image_size}px.onnx"
    parity: dict[str, Any] = export_onnx(ck.model, onnx_path, run.image_size)  # parity on noise: a mismatch stops
    try:
        parity.update(check_onnx_images(fold_batchnorm(ck.model).eval(), onnx_path, test, label=onnx_path))
    except DeadNetworkError as e:  # a network that learnt nothing is a result of its method; a broken export is not
        parity["error"] = str(e)
        log.warning("%s seed %d generation %d: %s", method, seed, target.generation, e)
    r = {"method": method, "seed": seed, "generation": target.generation, "name": ck.genome.name,
         "target_size_mb": target.size_mb, "size_mb": prof.size_mb, "params": prof.params, "macs": prof.macs,
         "size_error": prof.params / target.params - 1,
         "within_tolerance": abs(prof.params / target.params - 1) <= run.cfg.tolerance,
         "heldout_top1": acc["heldout_top1"], "test_top1": acc["test_top1"], "epochs": epochs,
         "train_wall_s": train_s, "widths": ck.genome.widths(), "checkpoint": run.rel(ck_path),
         "weights": weights_digest(ck_path), "onnx_max_abs_diff": parity["max_abs_diff"],
         "onnx_real_max_abs_diff": parity.get("real_max_abs_diff"),
         "onnx_real_top1_agreement": parity.get("real_top1_agreement"), "onnx_error": parity.get("error"),
         **(extra or {})}
    if not r["within_tolerance"]:
        log.warning("%s seed %d: %.3f MB misses generation %d's %.3f MB by %+.1f%% (tolerance %.0f%%)", method, seed,
                    r["size_mb"], target.generation, target.size_mb, 100 * r["size_error"], 100 * run.cfg.tolerance)
    atomic_write_json(done, r)
    if bar is not None:
        bar.update()
    return r


# -- timing -----------------------------------------------------------------------------
def _timing(run: _Run, rows: list[dict[str, Any]], say: Callable[[str], None]) -> dict[str, Any]:
    """ONNX Runtime images/s of every network (and the ancestor) at each size,
    in interleaved rounds, all in one pass: one network's figure is never from
    a quieter minute than another's. Kept in timing.json; a new network (or
    new weights under a known name), size or round count times everything again."""
    path = run.out / "timing.json"
    keys = ["ancestor"] + [_key(r) for r in rows]
    weights = [weights_digest(run.ancestor)] + [r["weights"] for r in rows]
    sizes = list(run.cfg.image_sizes)
    if path.is_file():
        doc = read_json_object(path, ConfigError, "delete it to time the networks again")
        if (doc.get("keys"), doc.get("weights"), doc.get("sizes"), doc.get("rounds")) == (keys, weights, sizes,
                                                                                          run.cfg.rounds):
            return doc
    say(f"timing {len(keys)} networks in ONNX Runtime at {', '.join(f'{s}px' for s in sizes)}, batch 32, "
        f"{run.cfg.rounds} interleaved rounds")
    models = {"ancestor": run.ancestor, **{_key(r): _abs_checkpoint(run, r) for r in rows}}
    files: dict[tuple[str, int], Path] = {}
    for (k, ck_path), digest in zip(models.items(), weights):
        for s in sizes:
            files[(k, s)] = run.out / "timing" / f"{k.replace('/', '_')}_{digest}" / f"{s}px.onnx"
        missing = [s for s in sizes if not files[(k, s)].is_file()]
        if missing:
            model = load_checkpoint(ck_path).model
            for s in missing:  # checked at the training size already (result.json)
                export_onnx(model, files[(k, s)], s, check=False)
    per: dict[str, dict[str, list[float]]] = {k: {str(s): [] for s in sizes} for k in keys}
    busy = False
    for _ in range(run.cfg.rounds):
        for k in keys:
            for s in sizes:
                sp = ort_speed(files[(k, s)], s, None)
                per[k][str(s)].append(sp["ort_b32_img_s"])
                busy = busy or bool(sp["machine_busy"])
    doc = {"keys": keys, "weights": weights, "sizes": sizes, "rounds": run.cfg.rounds, "batch": 32, "machine_busy": busy,
           "img_s": {k: {s: {"median": statistics.median(v), "rounds": v} for s, v in d.items()}
                     for k, d in per.items()}}
    atomic_write_json(path, doc)
    return doc


def net_key(method: str, seed: int, g: int) -> str:
    """One network's folder under the compare folder (the layout in the module docstring)."""
    return f"{method}/seed_{seed}/gen_{g:02d}"


def _key(r: dict[str, Any]) -> str:
    return net_key(r["method"], r["seed"], r["generation"])


def _abs_checkpoint(run: _Run, r: dict[str, Any]) -> Path:
    return run.out / r["checkpoint"]


# -- the side by side -------------------------------------------------------------------
def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _summarize(rows: list[dict[str, Any]], sizes: list[int]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r["method"], {}).setdefault(str(r["generation"]), []).append(r)
    summ: dict[str, dict[str, Any]] = {}
    for method, by_gen in out.items():
        summ[method] = {}
        for g, rs in sorted(by_gen.items(), key=lambda kv: int(kv[0])):
            s = {k: _stats([r[k] for r in rs]) for k in ("size_mb", "heldout_top1", "test_top1", "train_wall_s")}
            for px in sizes:
                s[f"ort_b32_img_s_{px}px"] = _stats([r[f"ort_b32_img_s_{px}px"] for r in rs])
            s.update(macs=rs[0]["macs"], epochs=max(r["epochs"] for r in rs),
                     all_within_tolerance=all(r["within_tolerance"] for r in rs))
            summ[method][g] = s
    return summ


def goal(summ: dict[str, dict[str, Any]], generations: Sequence[int | str]) -> dict[str, Any]:
    """Per matched size: does evolution, with or without distillation (the
    variant chosen by held-out top-1), have a higher mean test top-1 than
    every peer, at equal or fewer epochs? A peer that missed the size is
    compared too, and flagged."""
    per = {}
    for gen in generations:
        g = str(gen)
        evo = {m: summ[m][g] for m in EVOLUTION if g in summ.get(m, {})}
        peers = {m: summ[m][g] for m in PEERS if g in summ.get(m, {})}
        if not evo or not peers:
            continue
        best = max(evo, key=lambda m: evo[m]["heldout_top1"]["mean"])  # chosen on held-out, judged on test
        vs = {m: {"higher_test_top1": evo[best]["test_top1"]["mean"] > p["test_top1"]["mean"],
                  "epochs_le": evo[best]["epochs"] <= p["epochs"], "peer_size_within_tolerance":
                      p["all_within_tolerance"]} for m, p in peers.items()}
        per[g] = {"evolution_variant": best, "test_top1": evo[best]["test_top1"]["mean"], "versus": vs,
                  "met": all(v["higher_test_top1"] and v["epochs_le"] for v in vs.values())}
    return {"per_generation": per, "met": bool(per) and all(v["met"] for v in per.values()),
            "rule": "at each matched size, evolution (with or without distillation, the variant with the higher "
                    "held-out top-1) has a higher mean test top-1 than every peer, at equal or fewer total "
                    "training epochs"}


_LABELS = {"evolution": "evolution", "evolution_distill": "evolution + distillation",
           "torch_pruning": "Torch-Pruning", "scaled_width": "v1.1 x width, scratch",
           "scaled_design": "design b/SR, scratch", "lineage_from_scratch": "lineage genome, scratch"}


def _plot(doc: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    px = doc["image_sizes"][0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for method, by_gen in doc["summary"].items():
        gs = sorted(by_gen, key=int)
        y = [100 * by_gen[g]["test_top1"]["mean"] for g in gs]
        err = [100 * by_gen[g]["test_top1"]["sd"] for g in gs]
        for ax, key in ((axes[0], "size_mb"), (axes[1], f"ort_b32_img_s_{px}px")):
            x = [by_gen[g][key]["mean"] for g in gs]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=_LABELS.get(method, method))
    anc = doc["ancestor"]
    for ax, x in ((axes[0], anc["size_mb"]), (axes[1], anc[f"ort_b32_img_s_{px}px"])):
        ax.scatter([x], [100 * anc["test_top1"]], marker="*", s=120, color="black", label="ancestor", zorder=3)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("model size (MB, fp32, BatchNorm folded)")
    axes[1].set_xlabel(f"ONNX Runtime images/s, batch 32, {px} px")
    for ax in axes:
        ax.set_ylabel(f"test top-1 (%), mean ± sd over {doc['seeds']} seed(s)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Evolution against the alternatives at matched sizes")
    fig.tight_layout()
    return figure_png(fig)


def markdown(doc: dict[str, Any]) -> str:
    px = doc["image_sizes"]
    head = (["method", "gen", "size MB", "MACs (M)", "held-out top-1", "test top-1", "n"]
            + [f"ORT img/s {p}px" for p in px] + ["epochs", "train min"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, by_gen in doc["summary"].items():
        for g, s in sorted(by_gen.items(), key=lambda kv: int(kv[0])):
            miss = "" if s["all_within_tolerance"] else " (size miss)"
            cells = [_LABELS.get(method, method), g, f"{s['size_mb']['mean']:.3f}{miss}", f"{s['macs'] / 1e6:.1f}",
                     f"{100 * s['heldout_top1']['mean']:.1f} ± {100 * s['heldout_top1']['sd']:.1f}",
                     f"{100 * s['test_top1']['mean']:.1f} ± {100 * s['test_top1']['sd']:.1f}",
                     str(s["test_top1"]["n"])]
            cells += [f"{s[f'ort_b32_img_s_{p}px']['mean']:.0f}" for p in px]
            cells += [str(s["epochs"]), f"{s['train_wall_s']['mean'] / 60:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Test top-1 ({doc['test_split']}) is reported only; held-out top-1 chose SquishedNet-1…4. "
             f"Means ± sd over seeds (n). ORT: medians of {doc['timing']['rounds']} interleaved rounds"
             f"{'; the machine was busy' if doc['timing']['machine_busy'] else ''}. Torch-Pruning "
             f"{doc['torch_pruning_version'] or 'not installed'}, importance {doc['config']['importance']}."]
    notes += doc["notes"]
    notes += [f"{m} failed: {msg}" for m, msg in doc["errors"].items()]
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def _csv(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in rows[0] if k not in ("widths",)] if rows else []
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def section_html(doc: dict[str, Any], png_b64: str) -> str:
    """The report's compare section (report.html embeds it when the run has one)."""
    md = markdown(doc).split("\n\n")
    table = [ln for ln in md[0].splitlines() if not ln.startswith("|---")]
    cells = ["<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c.strip())}</{'th' if i == 0 else 'td'}>"
                              for c in ln.strip("|").split("|")) + "</tr>" for i, ln in enumerate(table)]
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in md[1:] if n.strip())
    g = doc["goal"]
    verdict = ("met" if g["met"] else "not met") if g["per_generation"] else "not measured (no peer ran)"
    return (f'<h2 id="compare">Against the alternatives</h2><p>Goal ({html.escape(g["rule"])}): '
            f"<b>{verdict}</b>.</p><table>{''.join(cells)}</table>{notes}"
            f'<figure><img id="compare-plot" alt="test top-1 against size and speed per method" '
            f'src="data:image/png;base64,{png_b64}"></figure>')


def compare(target: str | Path, cfg: CompareConfig, out: str | Path | None = None, progress: bool = True,
            say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) every method of ``cfg`` against the lineage in
    ``target`` and write the side by side; returns ``compare.json``'s content."""
    run, rd = _open(target, out, cfg, progress)
    methods = [m for m in METHODS if m in cfg.methods]
    say(f"comparing {', '.join(methods)} at generations {', '.join(str(e.generation) for e in run.targets)} "
        f"({', '.join(f'{e.size_mb:.3f}' for e in run.targets)} MB), {cfg.seeds} seed(s)")
    errors: dict[str, str] = {}
    total = len(methods) * cfg.seeds * len(run.targets)
    with tqdm(total=total, desc="compare", unit="net", disable=not progress, leave=False) as bar:
        bar.update(sum((run.net_dir(m, s, e.generation) / "result.json").is_file()
                       for m in methods for s in run.seeds() for e in run.targets))
        for method in methods:
            for seed in run.seeds():
                if all((run.net_dir(method, seed, e.generation) / "result.json").is_file() for e in run.targets):
                    continue
                try:
                    if method in EVOLUTION:
                        _evolution(run, method, seed, bar if progress else None)
                    elif method == "torch_pruning":
                        _torch_pruning(run, seed, bar if progress else None)
                    else:
                        _from_scratch(run, method, seed, bar if progress else None)
                except TorchPruningError as e:
                    errors[method] = str(e)
                    say(f"warning: torch_pruning seed {seed}: {e}")
                    break
                if progress:
                    say(f"      {method} seed {seed} done")
    rows = [read_json_object(run.net_dir(m, s, e.generation) / "result.json", ConfigError, "delete it")
            for m in methods if m not in errors for s in run.seeds() for e in run.targets]
    timing = _timing(run, rows, say)
    for r in rows:
        for px in cfg.image_sizes:
            r[f"ort_b32_img_s_{px}px"] = timing["img_s"][_key(r)][str(px)]["median"]
    anc = {"size_mb": run.lineage.generations[0].size_mb, "macs": run.lineage.generations[0].macs,
           "heldout_top1": run.lineage.generations[0].heldout_top1, "test_top1": run.lineage.generations[0].test_top1,
           "epochs": run.anc_cfg.epochs, "train_wall_s": _train_seconds(read_metrics(run.ancestor).get("history")),
           **{f"ort_b32_img_s_{px}px": timing["img_s"]["ancestor"][str(px)]["median"] for px in cfg.image_sizes}}
    misses = [r for r in rows if not r["within_tolerance"]]
    notes = [f"{r['method']} seed {r['seed']} at generation {r['generation']}: {r['size_mb']:.3f} MB is "
             f"{100 * r['size_error']:+.1f}% from the target {r['target_size_mb']:.3f} MB (tolerance "
             f"{100 * cfg.tolerance:.0f}%)" for r in misses]
    notes += [f"{r['method']} seed {r['seed']} at generation {r['generation']}: {r['onnx_error']}"
              for r in rows if r.get("onnx_error")]
    notes += [f"Torch-Pruning left {', '.join(r['unpruned_layers'])} whole on the way to generation {r['generation']} "
              f"(seed {r['seed']}): rounding would have taken them to zero filters" for r in rows
              if r.get("unpruned_layers")]
    if run.evolve.distill:
        notes.append(f"The run itself was evolved with --distill {run.evolve.distill}: 'evolution' is distilled too.")
    if run.evolve.population > 1 and "torch_pruning" in methods:
        notes.append(f"With a population of {run.evolve.population}, evolution trains {run.evolve.population} "
                     "offspring per generation; Torch-Pruning fine-tunes one network per step, so it spends fewer "
                     "epochs and the budget rule counts that against evolution.")
    notes.append("Training time counts the epochs' seconds only (the ancestor's included for the methods that start "
                 "from it; every candidate's for evolution); Torch-Pruning's ratio search is prune_search_s.")
    if "torch_pruning" in methods and "torch_pruning" not in errors:
        notes.append("Torch-Pruning leaves conv10 alone (one filter per class: the task, not a width); every other "
                     "layer, the Fire modules' concatenation included, is pruned by the library's dependency graph, "
                     "and each pruned network is rebuilt from its widths and checked to compute the same outputs.")
    summ = _summarize(rows, list(cfg.image_sizes))
    doc = {"run": str(run.evolve_dir), "data": run.gen_train.data, "image_size": run.image_size,
           "test_split": run.splits.test_name, "selected_by": "heldout", "seeds": cfg.seeds,
           "config": to_dict(cfg), "image_sizes": list(cfg.image_sizes), "torch_pruning_version": _torch_pruning_version(),
           "targets": [{"generation": e.generation, "size_mb": e.size_mb, "params": e.params,
                        "epochs": run.epochs(e.generation)} for e in run.targets],
           "ancestor": anc, "rows": rows, "summary": summ, "goal": goal(summ, [e.generation for e in run.targets]),
           "timing": {k: timing[k] for k in ("rounds", "batch", "machine_busy", "sizes")},
           "notes": notes, "errors": errors}
    png = _plot(doc) if rows else ""
    atomic_write_json(run.out / "compare.json", doc)
    atomic_write_text(run.out / "compare.md", markdown(doc))
    atomic_write_text(run.out / "compare.csv", _csv(rows))
    if png:
        import base64

        atomic_write_bytes(run.out / "compare.png", base64.b64decode(png))
    atomic_write_text(run.out / "section.html", section_html(doc, png))
    rd.finish("compare", {"methods": methods, "errors": errors})
    _refresh_report(run, say)
    return doc


def _refresh_report(run: _Run, say: Callable[[str], None]) -> None:
    """Rewrite the run's report, if it has one, with the compare section."""
    root = run_root(run.evolve_dir)
    report = (root or run.evolve_dir) / "report"
    if run.out.resolve() != compare_dir(run.evolve_dir):
        say(f"note: the run's report shows a comparison written to {compare_dir(run.evolve_dir)} only, not to "
            f"{run.out}")
    elif (report / "report.html").is_file():
        exports = root / "export" / "export.json" if root else None
        write_report(run.evolve_dir, report,
                     exports=json.loads(exports.read_text()) if exports and exports.is_file() else None)
        say(f"added the comparison to {report / 'report.html'}")


def summary(doc: dict[str, Any]) -> str:
    """The console's view: the table, the goal, where the files are."""
    g = doc["goal"]
    verdict = ("met" if g["met"] else "not met") if g["per_generation"] else "not measured"
    return markdown(doc) + f"\ngoal ({g['rule']}): {verdict}"
