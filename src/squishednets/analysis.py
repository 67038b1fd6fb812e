"""The role of each layer, measured: structure, weights, activations, importance.

The research note on SqueezeNet's layer roles (``squeezenet-layer-roles.txt``)
sets out to justify SqueezeNet's three strategies quantitatively: 1x1 filters
in place of 3x3 ones, squeeze layers that cut the input channels of the 3x3
filters, and late downsampling. This module measures, for every convolution
of a trained network (``Genome.units``: conv1, each Fire's squeeze /
expand1x1 / expand3x3, with ``depthwise`` also expand3x3_dw, conv10):

- structure: channels, kernel, parameters, MACs and output activations
  (``metrics.profile``, so they sum to the closed-form totals), the share of
  ONNX Runtime's time (its profiler, on this machine), and the receptive
  field and resolution at the layer (what "downsample late" buys);
- weights (BatchNorm folded, as the network ships): the distribution of the
  filters' L1 strength, the share of near-dead filters, the effective rank of
  the weight matrix and, per Fire, the split of strength between 3x3 and 1x1
  filters (the small-DNN playbook's pct3x3 question, its section 5.3);
- activations on held-out images: APoZ, mean and variance, and the effective
  rank of each layer's output (and of a squeeze layer's input: is the squeeze
  a bottleneck or a redundancy?);
- importance: held-out top-1 drop when a layer's filters are zeroed in the
  BN-folded network, weakest (smallest L1) first in fractions (the
  sensitivity analysis of Li et al., "Pruning Filters for Efficient
  ConvNets", 2017) and one by one in thin layers, and when a whole Fire module
  is bypassed where its input and output shapes agree.

Definitions, stated once (``DEFINITIONS``, also in every JSON):

- effective rank: Roy & Vetterli (2007), exp of the Shannon entropy of the
  normalised singular values p_i = s_i / sum(s); it is n for n equal singular
  values (an identity) and 1 for a rank-one matrix. For weights, the singular
  values of the (filters x fan-in) matrix; for activations, those of the
  centred (samples x channels) matrix, every pixel of every image a sample
  (the square roots of the channel covariance's eigenvalues).
- APoZ (Hu et al. 2016): the share of a channel's outputs, after ReLU, that
  are exactly zero, over images and pixels; a layer's APoZ is its channels'
  mean.
- error bars: the analysis images are split into ``folds`` disjoint subsets
  (seeded); a drop's error is the standard error of its value over them.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .config import option
from .data import normalize_batch
from .errors import ConfigError
from .export import export_onnx
from .genome import Genome, Unit
from .metrics import profile
from .model import SqueezeNet, fold_batchnorm
from .ort import session

__all__ = ["AnalyzeConfig", "DEFINITIONS", "Sensitivity", "LayerAnalysis", "FireAnalysis", "Analysis",
           "effective_rank", "matrix_effective_rank", "spearman", "spearman_p", "receptive_fields", "stage_chain",
           "unit_conv", "weight_stats", "activation_stats", "ablation_study", "ort_layer_times", "analyze_model"]

log = logging.getLogger(__name__)

DEFINITIONS = {
    "effective_rank": "Roy & Vetterli (2007): exp(entropy of p_i = s_i / sum s) over singular values s; n for an "
                      "identity, 1 for rank one. Weights: the (filters x fan-in) matrix, BN folded. Activations: the "
                      "centred (pixels of all images x channels) matrix.",
    "apoz": "Average percentage of zeros (Hu et al. 2016): share of a channel's post-ReLU outputs that are exactly 0; "
            "a layer's APoZ is the mean over its channels; a dead channel has APoZ >= 0.99.",
    "near_dead": "A filter whose L1 norm (BN folded) is below dead_ratio x the layer's median filter L1.",
    "strength_3x3_share": "Per Fire: L1 of the expand3x3 filters / L1 of all expand filters (BN folded); a 3x3 "
                          "filter has 9x the weights of a 1x1 one (with depthwise expand3x3, the branch's pointwise "
                          "1x1 filters count). output_3x3_share: the same split of the Fire's mean output "
                          "activation.",
    "ablation": "Filters zeroed (weights and bias) in the BN-folded network, weakest L1 first, at each fraction; "
                "ablation_drop is the mean top-1 drop over the fractions (the area under the sensitivity curve). "
                "filter_drops: one filter zeroed at a time, in layers with at most per_filter_max filters, "
                "with filter_drops_se over the same folds.",
    "role": "A squeeze layer is a bottleneck when it has fewer channels than the effective rank of its input "
            "(it must compress what arrives), else redundant (more channels than the information arriving).",
    "bypass": "A Fire module replaced by the identity where its input and output channels agree.",
    "error_bars": "Standard error of the drop over `folds` disjoint, seeded subsets of the analysis images.",
    "time_share": "ONNX Runtime profiler: the median per run of the layer's (fused Conv+ReLU) node over all "
                  "nodes.",
    "receptive_field": "Pixels of the input image one output pixel of the layer sees (padding ignored); jump: "
                       "input pixels between neighbouring output pixels.",
}


@dataclass(frozen=True)
class AnalyzeConfig:
    """What ``analyze`` measures and on which images."""

    data: str | None = option(None, help="data set folder (off: the one the checkpoint was trained on)")
    split: str = option("heldout", choices=("heldout", "test"),
                        help="images: heldout (the part held out of train) or test (reported only)")
    images: int = option(1000, help="analysis images (a seeded subset of the split when it holds more)")
    image_size: int | None = option(None, help="input size in px (off: the checkpoint's training size)")
    fractions: tuple[float, ...] = option((0.25, 0.5, 0.75, 1.0), help="fractions of a layer's filters ablated")
    per_filter_max: int | None = option(16, help="ablate filters one by one in layers with at most this many "
                                                 "(off: never)")
    folds: int = option(5, help="disjoint image subsets for the error bars")
    dead_ratio: float = option(0.05, help="near-dead: filter L1 below this share of the layer's median")
    picture_images: int = option(4, help="real images in the activation maps and class-activation maps")
    pictures: bool = option(True, help="plots, PNGs and the HTML page (needs matplotlib and captum)")
    profile_runs: int = option(20, help="ONNX Runtime profiled runs for the per-layer times")
    profile_batch: int = option(32, help="batch of the profiled runs (the paper's Table 1 uses 32)")
    batch_size: int = option(250, help="images per forward pass")
    threads: int | None = option(None, help="CPU threads for PyTorch and ONNX Runtime (off: every core)")
    seed: int = option(0, help="seed of the image subset and the folds")
    cache_dir: str | None = option(None, help="decoded-image cache (off: ~/.cache/squishednets)")

    def __post_init__(self) -> None:
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"fractions must be in (0, 1], got {list(self.fractions)}")
        if self.folds < 2 or self.images < self.folds:
            raise ConfigError(f"need folds >= 2 and images >= folds, got {self.folds} and {self.images}")
        for name in ("picture_images", "profile_runs", "profile_batch", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dead_ratio < 0 or (self.per_filter_max is not None and self.per_filter_max < 1):
            raise ConfigError("dead_ratio must be >= 0 and per_filter_max >= 1 or off")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or off, got {self.threads}")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"image_size {self.image_size} is too small; use 16 or more")


@dataclass(frozen=True)
class Sensitivity:
    """Top-1 with ``filters`` (a ``fraction``) of a layer's weakest filters zeroed."""

    fraction: float
    filters: int
    top1: float
    drop: float
    drop_se: float


@dataclass(frozen=True)
class LayerAnalysis:
    """Every figure of one convolution (see the module docstring)."""

    layer: str
    module: str
    kind: str
    stage: int
    cin: int
    cout: int
    kernel: int
    stride: int
    in_hw: int
    out_hw: int
    receptive_field: int
    jump: int
    params: int
    macs: int
    activation_kb: float
    param_share: float
    mac_share: float
    time_ms: float | None
    time_share: float | None
    l1_quantiles: tuple[float, ...]  # min, 25%, median, 75%, max of the filters' L1
    dead_weight_share: float
    weight_effective_rank: float
    weight_rank_limit: int
    strength_3x3_share: float | None
    output_3x3_share: float | None
    apoz: float
    dead_channel_share: float
    act_mean: float
    act_var: float
    effective_rank: float
    input_effective_rank: float | None
    sensitivity: tuple[Sensitivity, ...]
    ablation_drop: float
    ablation_drop_se: float
    filter_drops: tuple[float, ...] | None
    filter_drops_se: tuple[float, ...] | None = None  # each over the folds, as ablation_drop_se


@dataclass(frozen=True)
class FireAnalysis:
    """One Fire module: is its squeeze a bottleneck, does it use its 3x3 filters, can it be bypassed?"""

    fire: str
    squeeze: int
    input_effective_rank: float
    squeeze_effective_rank: float
    squeeze_rank_use: float  # squeeze_effective_rank / squeeze: how much of its width carries information
    role: str  # "bottleneck" (fewer channels than the input's effective rank) or "redundant"
    strength_3x3_share: float
    output_3x3_share: float
    bypass_drop: float | None
    bypass_drop_se: float | None


@dataclass(frozen=True)
class Analysis:
    """A network's analysis: ``top1`` on the ``images`` of ``split`` before
    any ablation, ONNX Runtime's setting (``ort_threads`` 0: its default, one
    per core) and time per batch, then every layer and every Fire."""

    genome: str
    image_size: int
    split: str
    images: int
    folds: int
    top1: float
    ort_threads: int
    ort_batch: int
    ort_ms_per_batch: float
    layers: tuple[LayerAnalysis, ...]
    fires: tuple[FireAnalysis, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "definitions": DEFINITIONS}

    def layer(self, name: str) -> LayerAnalysis:
        return next(la for la in self.layers if la.layer == name)


# -- definitions as functions ------------------------------------------------------
def effective_rank(singular_values: np.ndarray) -> float:
    """Roy & Vetterli's effective rank of a spectrum (see ``DEFINITIONS``)."""
    s = np.abs(np.asarray(singular_values, dtype=np.float64))
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def matrix_effective_rank(m: np.ndarray) -> float:
    return effective_rank(np.linalg.svd(np.asarray(m, dtype=np.float64), compute_uv=False))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(x: Any, y: Any) -> float | None:
    """Spearman's rank correlation (Pearson's on mean-tied ranks), with numpy;
    ``None`` when fewer than 3 pairs or one side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def spearman_p(x: Any, y: Any, permutations: int = 10000, seed: int = 0) -> float | None:
    """Two-sided permutation p-value of ``spearman(x, y)``: the share of
    seeded random pairings at least as correlated, (count + 1) / (n + 1)."""
    rho = spearman(x, y)
    if rho is None:
        return None
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    rng = np.random.default_rng(seed)
    perms = np.array([rng.permutation(ry) for _ in range(permutations)])
    rx, perms = rx - rx.mean(), perms - ry.mean()
    rhos = perms @ rx / (np.linalg.norm(perms, axis=1) * np.linalg.norm(rx))
    return float(((np.abs(rhos) >= abs(rho) - 1e-12).sum() + 1) / (permutations + 1))


def receptive_fields(genome: Genome) -> dict[str, tuple[int, int]]:
    """(receptive field, jump) of each unit's output in input pixels, by the
    usual recurrence rf += (k - 1) * jump, jump *= stride; the 3x3/2 pools
    sit where ``pool_after`` puts them, and a unit reading several outputs
    (conv10 or a squeeze after a Fire) sees as far as the widest of them."""
    rf_of: dict[str, tuple[int, int]] = {}
    stage_of: dict[str, int] = {}
    for u in genome.units():
        rf, jump = 1, 1
        if u.inputs:
            rf, jump = max(rf_of[m] for m in u.inputs)
            s = stage_of[u.inputs[0]]
            if s != u.stage and s in genome.pool_after:
                rf, jump = rf + 2 * jump, 2 * jump
        rf_of[u.module] = (rf + (u.kernel - 1) * jump, jump * u.stride)
        stage_of[u.module] = u.stage
    return {u.name: rf_of[u.module] for u in genome.units()}


# -- the network as a chain of stages -------------------------------------------------
def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, 2, ceil_mode=True)  # SqueezeNet's pool (model.SqueezeNet._pool)


def _stage(module: Callable[[torch.Tensor], torch.Tensor], pooled: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    return (lambda x: _pool(module(x))) if pooled else module


def stage_chain(model: SqueezeNet, bypass: int | None = None) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """``model.forward`` cut at its stages (``Unit.stage``: conv1, each Fire,
    the classifier head), so an ablation reruns only the stages after the
    layer it changes. ``bypass`` replaces that stage (a Fire) by the identity."""
    pools = set(model.genome.pool_after)
    chain = [_stage(model.conv1, 0 in pools)]
    chain += [_stage(nn.Identity() if i == bypass else fire, i in pools) for i, fire in enumerate(model.fires, 1)]
    chain.append(model.head)
    return chain


def unit_conv(model: SqueezeNet, unit: Unit) -> nn.Conv2d:
    """The convolution of ``unit`` (in a BN-folded network it holds the BN too)."""
    m = model.get_submodule(unit.module)
    return m if isinstance(m, nn.Conv2d) else m.conv


@contextmanager
def _zeroed(conv: nn.Conv2d, filters: tuple[int, ...]) -> Iterator[None]:
    """``filters`` of ``conv`` zeroed, weights and bias: after ReLU they output 0."""
    idx = list(filters)
    saved = conv.weight.data[idx].clone(), None if conv.bias is None else conv.bias.data[idx].clone()
    conv.weight.data[idx] = 0
    if conv.bias is not None:
        conv.bias.data[idx] = 0
    try:
        yield
    finally:
        conv.weight.data[idx] = saved[0]
        if conv.bias is not None:
            conv.bias.data[idx] = saved[1]


# -- weights ------------------------------------------------------------------------------
def weight_stats(model: SqueezeNet, units: tuple[Unit, ...], dead_ratio: float) -> dict[str, dict[str, Any]]:
    """Per unit of a BN-folded ``model``: the filters' L1 norms (``l1``, and
    ``order``, weakest first), their quantiles, the near-dead share, the
    weight matrix's effective rank and, for expand layers, their Fire's
    3x3 share of the expand strength."""
    out: dict[str, dict[str, Any]] = {}
    for u in units:
        w = unit_conv(model, u).weight.detach().double().flatten(1).numpy()
        l1 = np.abs(w).sum(1)
        out[u.name] = {"l1": l1, "order": np.argsort(l1, kind="stable"),
                       "l1_quantiles": tuple(float(q) for q in np.quantile(l1, [0, 0.25, 0.5, 0.75, 1])),
                       "dead_weight_share": float((l1 < dead_ratio * np.median(l1)).mean()),
                       "weight_effective_rank": matrix_effective_rank(w), "weight_rank_limit": min(w.shape)}
    _split_3x3(units, out, "strength_3x3_share", lambda d: d["l1"].sum())
    return out


def _split_3x3(units: tuple[Unit, ...], stats: dict[str, dict[str, Any]], key: str,
               value: Callable[[dict[str, Any]], float]) -> None:
    """``stats[expand layer][key]``: its Fire's 3x3 share of ``value`` over both expand layers."""
    for fire in {u.name.split(".")[0] for u in units if u.kind.startswith("expand")}:
        names = (f"{fire}.expand1x1", f"{fire}.expand3x3")
        e1, e3 = (value(stats[n]) if n in stats else 0.0 for n in names)
        for n in names:
            if n in stats:
                stats[n][key] = float(e3 / (e1 + e3)) if e1 + e3 > 0 else None


# -- activations ----------------------------------------------------------------------------
class _Moments:
    """Streaming per-channel zeros, sums and cross-products of (N, C, H, W)
    activations, every pixel a sample, in float64."""

    def __init__(self, channels: int) -> None:
        self.n = 0
        self.zeros = torch.zeros(channels, dtype=torch.float64)
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.cross = torch.zeros(channels, channels, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double().permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        self.n += len(x)
        self.zeros += (x == 0).sum(0)
        self.sum += x.sum(0)
        self.cross += x.T @ x

    def summary(self) -> dict[str, Any]:
        n = max(1, self.n)
        mean = self.sum / n
        cov = self.cross / n - torch.outer(mean, mean)
        eig = torch.linalg.eigvalsh(cov).clamp(min=0).numpy()
        apoz = (self.zeros / n).numpy()
        total = self.sum.sum().item() / (n * len(mean))
        var = torch.trace(self.cross).item() / (n * len(mean)) - total ** 2
        return {"apoz": float(apoz.mean()), "dead_channel_share": float((apoz >= 0.99).mean()),
                "act_mean": total, "act_var": var, "effective_rank": effective_rank(np.sqrt(eig)),
                "channel_apoz": apoz, "channel_sum": self.sum.numpy()}


def _batches(n: int, size: int) -> range:
    return range(0, n, size)


@torch.no_grad()
def activation_stats(model: SqueezeNet, units: tuple[Unit, ...], images: torch.Tensor, batch_size: int,
                     progress: bool = False) -> dict[str, dict[str, Any]]:
    """Per unit: APoZ, dead-channel share, mean, variance and effective rank
    of its output on ``images`` (uint8), post-ReLU (conv10's are the logits,
    with no ReLU, so its APoZ is about 0); for squeeze layers and
    conv10 also ``input_effective_rank``, the effective rank of what they read."""
    outs = {u.name: _Moments(u.cout) for u in units}
    ins = {u.name: _Moments(u.cin) for u in units if u.kind in ("squeeze", "classifier")}

    def hook(u: Unit) -> Callable[..., None]:
        def fn(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            outs[u.name].add(out)
            if u.name in ins:
                ins[u.name].add(inp[0])
        return fn

    handles = [model.get_submodule(u.module).register_forward_hook(hook(u)) for u in units]
    try:
        for i in tqdm(_batches(len(images), batch_size), desc="activations", unit="batch", disable=not progress,
                      leave=False):
            model(normalize_batch(images[i:i + batch_size]))
    finally:
        for h in handles:
            h.remove()
    stats = {name: m.summary() for name, m in outs.items()}
    for name, m in ins.items():
        stats[name]["input_effective_rank"] = m.summary()["effective_rank"]
    _split_3x3(units, stats, "output_3x3_share", lambda d: d["channel_sum"].sum())
    return stats


# -- importance by ablation --------------------------------------------------------------
@dataclass(frozen=True)
class _Trial:
    """One ablation: ``filters`` of ``unit`` zeroed, or Fire stage ``bypass`` skipped."""

    layer: str
    what: str  # "fraction", "filter" or "bypass"
    value: float  # the fraction, the filter's index or the Fire's stage
    stage: int  # the first stage it changes
    unit: Unit | None = None
    filters: tuple[int, ...] = ()


def _trials(genome: Genome, units: tuple[Unit, ...], order: dict[str, np.ndarray], cfg: AnalyzeConfig) -> list[_Trial]:
    """Weakest-first fractions of every unit, single filters of thin units,
    and the bypass of every Fire whose input and output channels agree."""
    trials = []
    for u in units:
        for f in cfg.fractions:
            k = max(1, int(round(f * u.cout)))
            trials.append(_Trial(u.name, "fraction", f, u.stage, u, tuple(int(i) for i in order[u.name][:k])))
        if cfg.per_filter_max is not None and u.cout <= cfg.per_filter_max:
            trials += [_Trial(u.name, "filter", i, u.stage, u, (i,)) for i in range(u.cout)]
    fires = _fire_names(units)
    for i, fire in enumerate(genome.fires):
        if genome.fire_in_channels(i) == fire.out_channels:
            trials.append(_Trial(fires[i + 1], "bypass", i + 1, i + 1))
    return trials


def _fire_names(units: tuple[Unit, ...]) -> dict[int, str]:
    """Each Fire's display name (``fire2``...) by its stage, as ``Genome.units`` names it."""
    return {u.stage: u.name.split(".")[0] for u in units if u.kind == "squeeze"}


def _run_trial(model: SqueezeNet, trial: _Trial, acts: list[torch.Tensor],
               chains: dict[int | None, list[Callable[[torch.Tensor], torch.Tensor]]]) -> torch.Tensor:
    """Logits with ``trial`` applied, rerunning only the stages from ``trial.stage``."""
    bypass = int(trial.value) if trial.what == "bypass" else None
    if bypass not in chains:
        chains[bypass] = stage_chain(model, bypass)
    x = acts[trial.stage]
    if trial.unit is None:
        for fn in chains[bypass][trial.stage:]:
            x = fn(x)
        return x
    with _zeroed(unit_conv(model, trial.unit), trial.filters):
        for fn in chains[None][trial.stage:]:
            x = fn(x)
    return x


@torch.no_grad()
def ablation_study(model: SqueezeNet, units: tuple[Unit, ...], images: torch.Tensor, labels: torch.Tensor,
                   order: dict[str, np.ndarray], cfg: AnalyzeConfig,
                   progress: bool = False) -> tuple[np.ndarray, list[_Trial], np.ndarray]:
    """Per-image correctness of the BN-folded ``model``: (unchanged (N,),
    the trials, one row per trial (T, N)). Each batch runs the network once,
    keeps every stage's input and reruns only what a trial changes."""
    model.eval()
    trials = _trials(model.genome, units, order, cfg)
    base = np.zeros(len(images), bool)
    correct = np.zeros((len(trials), len(images)), bool)
    chains: dict[int | None, list[Callable[[torch.Tensor], torch.Tensor]]] = {None: stage_chain(model)}
    bar = tqdm(total=len(trials) * len(_batches(len(images), cfg.batch_size)), desc="ablations", unit="trial",
               disable=not progress, leave=False)
    for i in _batches(len(images), cfg.batch_size):
        y = labels[i:i + cfg.batch_size]
        acts = [normalize_batch(images[i:i + cfg.batch_size])]
        for fn in chains[None]:
            acts.append(fn(acts[-1]))
        base[i:i + len(y)] = (acts[-1].argmax(1) == y).numpy()
        for t, trial in enumerate(trials):
            correct[t, i:i + len(y)] = (_run_trial(model, trial, acts, chains).argmax(1) == y).numpy()
            bar.update()
    bar.close()
    return base, trials, correct


def _drop(base: np.ndarray, correct: np.ndarray, folds: list[np.ndarray]) -> tuple[float, float, float]:
    """(top-1, drop, standard error of the drop over the folds)."""
    per_fold = [base[f].mean() - correct[f].mean() for f in folds]
    return float(correct.mean()), float(base.mean() - correct.mean()), float(np.std(per_fold, ddof=1) /
                                                                             np.sqrt(len(folds)))


# -- ONNX Runtime's per-node times --------------------------------------------------------
def _unit_scopes(onnx_path: Path, units: tuple[Unit, ...]) -> dict[str, str]:
    """Each unit's node-name scope in the exported graph (``/fires.0/squeeze``,
    ``/conv10``), found from the Conv node that reads the unit's weight:
    ONNX Runtime names its fused nodes inside the same scope."""
    by_weight = {n.input[1]: n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "Conv"}
    scopes = {}
    for u in units:
        name = by_weight.get(f"{u.module}.conv.weight") or by_weight.get(f"{u.module}.weight") or ""
        parts = name.rsplit("/", 2 if u.conv_unit else 1)  # "/fires.0/squeeze/conv/Conv", "/conv10/Conv"
        scopes[u.name] = parts[0] + "/" if len(parts) > 1 and parts[0] else "\0"
    return scopes


def _profile_events(onnx_path: Path, prefix: Path, image_size: int, batch: int, runs: int, threads: int,
                    in_channels: int) -> dict[str, tuple[str, float]]:
    """Median ms per run of every node, with its operator, from ONNX Runtime's profiler."""
    sess = session(onnx_path, threads, profile=prefix)
    x = np.random.default_rng(0).standard_normal((batch, in_channels, image_size, image_size)).astype(np.float32)
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(runs):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    durations: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"].removesuffix("_kernel_time")
            durations[name].append(e["dur"] / 1000)
            ops[name] = e.get("args", {}).get("op_name", "")
    return {n: (ops[n], float(np.median(d))) for n, d in durations.items()}


def ort_layer_times(model: SqueezeNet, units: tuple[Unit, ...], image_size: int, batch: int, runs: int,
                    threads: int = 0) -> tuple[dict[str, float | None], float]:
    """(ms per run of each unit's node, ms per run of all nodes) in ONNX
    Runtime's optimised graph (``ort.session``, as deployed), by its profiler.
    A fused node is matched to a unit by scope; a last Conv left unnamed by
    the fusion (conv10, with no ReLU to fuse) is matched when it
    is the only one; a unit that cannot be matched gets ``None``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        # Timing only: export's own command checks parity; the graph is the one it ships.
        export_onnx(model, path, image_size, check=False)
        scopes = _unit_scopes(path, units)
        nodes = _profile_events(path, Path(tmp) / "profile", image_size, batch, runs, threads,
                                model.genome.in_channels)
    times: dict[str, float | None] = {}
    left = {n for n, (op, _) in nodes.items() if "Conv" in op}
    for u in units:
        hit = [n for n in left if n.startswith(scopes[u.name])]
        times[u.name] = sum(nodes[n][1] for n in hit) if hit else None
        left -= set(hit)
    missing = [n for n, t in times.items() if t is None]
    if len(missing) == 1 and len(left) == 1:
        times[missing[0]] = nodes[left.pop()][1]
    elif missing:
        log.warning("ONNX Runtime profile: no node found for %s; their time counts as other nodes'", missing)
    return times, sum(t for _, t in nodes.values())


# -- everything, per layer ---------------------------------------------------------------------
def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


def _importance(base: np.ndarray, trials: list[_Trial], correct: np.ndarray,
                folds: list[np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per layer (or Fire, for bypasses): its sensitivity curve, mean drop
    over the fractions with its error, single-filter drops, bypass drop."""
    out: dict[str, dict[str, Any]] = {}
    for trial, row in zip(trials, correct):
        top1, drop, se = _drop(base, row, folds)
        d = out.setdefault(trial.layer, {"sensitivity": [], "filter_drops": None, "filter_drops_se": None,
                                         "rows": []})
        if trial.what == "fraction":
            d["sensitivity"].append(Sensitivity(trial.value, len(trial.filters), top1, drop, se))
            d["rows"].append(row)
        elif trial.what == "filter":
            d["filter_drops"] = (d["filter_drops"] or ()) + (drop,)
            d["filter_drops_se"] = (d["filter_drops_se"] or ()) + (se,)
        else:
            d["bypass"] = (drop, se)
    for d in out.values():
        rows = d.pop("rows")
        if rows:  # per image, the mean correctness over the fractions: its drop is the curve's mean drop
            _, d["ablation_drop"], d["ablation_drop_se"] = _drop(base, np.mean(rows, axis=0), folds)
    return out


def _layer_record(u: Unit, info: Any, totals: Any, rf: tuple[int, int], time_ms: float | None, total_ms: float,
                  w: dict[str, Any], a: dict[str, Any], imp: dict[str, Any]) -> LayerAnalysis:
    return LayerAnalysis(
        layer=u.name, module=u.module, kind=u.kind, stage=u.stage, cin=u.cin, cout=u.cout, kernel=u.kernel,
        stride=u.stride, in_hw=u.in_hw, out_hw=u.out_hw, receptive_field=rf[0], jump=rf[1], params=info.params,
        macs=info.macs, activation_kb=info.activation_bytes / 1024, param_share=info.params / totals.params,
        mac_share=info.macs / totals.macs, time_ms=time_ms,
        time_share=None if time_ms is None or total_ms <= 0 else time_ms / total_ms,
        l1_quantiles=w["l1_quantiles"], dead_weight_share=w["dead_weight_share"],
        weight_effective_rank=w["weight_effective_rank"], weight_rank_limit=w["weight_rank_limit"],
        strength_3x3_share=w.get("strength_3x3_share"), output_3x3_share=a.get("output_3x3_share"),
        apoz=a["apoz"], dead_channel_share=a["dead_channel_share"], act_mean=a["act_mean"], act_var=a["act_var"],
        effective_rank=a["effective_rank"], input_effective_rank=a.get("input_effective_rank"),
        sensitivity=tuple(imp["sensitivity"]), ablation_drop=imp["ablation_drop"],
        ablation_drop_se=imp["ablation_drop_se"], filter_drops=imp["filter_drops"],
        filter_drops_se=imp["filter_drops_se"])


def _fire_records(units: tuple[Unit, ...], layers: tuple[LayerAnalysis, ...],
                  imp: dict[str, dict[str, Any]]) -> tuple[FireAnalysis, ...]:
    by = {la.layer: la for la in layers}
    out = []
    for tag in _fire_names(units).values():
        sq = by[f"{tag}.squeeze"]
        ex = by.get(f"{tag}.expand3x3") or by[f"{tag}.expand1x1"]
        bypass = imp.get(tag, {}).get("bypass", (None, None))
        out.append(FireAnalysis(tag, sq.cout, sq.input_effective_rank, sq.effective_rank, sq.effective_rank / sq.cout,
                                "bottleneck" if sq.cout < sq.input_effective_rank else "redundant",
                                ex.strength_3x3_share, ex.output_3x3_share, *bypass))
    return tuple(out)


def analyze_model(model: SqueezeNet, images: torch.Tensor, labels: torch.Tensor, cfg: AnalyzeConfig,
                  split: str = "heldout", progress: bool = False) -> Analysis:
    """Every figure of the module docstring for ``model`` on ``images``
    (uint8, at the size they hold) with ``labels``."""
    folded = fold_batchnorm(model).eval()
    genome, size = folded.genome, int(images.shape[-1])
    try:
        units = genome.units(size)
    except ValueError as e:  # a map shrinks to nothing before conv10
        raise ConfigError(f"images of {size} px are too small for this genome ({e}); pass a larger --image-size") from None
    prof = profile(genome, size)
    weights = weight_stats(folded, units, cfg.dead_ratio)
    acts = activation_stats(folded, units, images, cfg.batch_size, progress)
    order = {name: w["order"] for name, w in weights.items()}
    base, trials, correct = ablation_study(folded, units, images, labels, order, cfg, progress)
    imp = _importance(base, trials, correct, _folds(len(images), cfg.folds, cfg.seed))
    threads = cfg.threads or 0
    times, total_ms = ort_layer_times(folded, units, size, cfg.profile_batch, cfg.profile_runs, threads)
    rf = receptive_fields(genome)
    info = {layer.name: layer for layer in prof.layers}
    layers = tuple(_layer_record(u, info[u.name], prof, rf[u.name], times[u.name], total_ms, weights[u.name],
                                 acts[u.name], imp[u.name]) for u in units)
    return Analysis(genome.name, size, split, len(images), cfg.folds, float(base.mean()), threads, cfg.profile_batch,
                    total_ms, layers, _fire_records(units, layers, imp))
