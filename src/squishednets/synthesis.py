"""Evolutionary synthesis of offspring networks (SquishedNets paper, section 3).

Heredity: a trained network's weights become synaptic probability models,
its "DNA" (Shafiee et al., Deep learning with Darwin, arXiv:1606.04393;
Shafiee & Wong, synaptic cluster-driven genetic encoding, arXiv:1609.01360).
As ../shared/papers/README.md reads those papers:

- a synapse w survives with p(w) = exp(k (|w| / Z - 1)), Z the layer's
  largest |w|, so the strongest synapse has p = 1; k ("sharpness") is 1 in
  the papers and is our calibration knob;
- a cluster (a whole filter) survives with p(c) = exp(k (s_c / Z - 1)), s_c
  its strength (the L1 norm of its synapses, after BatchNorm is folded in so
  that BN's scale counts), Z the layer's strongest cluster;
- the environment multiplies both by a factor F(E) < 1 (equation 1 of the
  paper), starving offspring of resources.

Our extension, for speed: the papers' environment starves every layer
alike, so removal follows parameters, which sit in the low-resolution late
layers, while the compute sits in the high-resolution early ones. With a MAC
target the environment is harsher per layer in proportion to the MACs a
filter costs per parameter (``mac_weights``), by a pressure the solver
chooses (``solve_environment``); pressure 0 is the papers' rule. Expected
sizes and MACs come from ``metrics.conv_cost`` at fractional (expected)
widths: the cost model ``metrics.profile`` uses at whole ones.

Offspring are sampled cluster by cluster; dead filters disappear from the
genome, and the surviving weights are sliced into the smaller network
(``shrink``), so offspring are physically smaller and faster: no masks on the
dense path. Synapse-level sampling inside surviving filters is optional and
gives fixed masks for training and a sparse size beside the dense one.

Evolution slices dense Fire modules only: a grouped convolution's filters
and input channels cannot be removed one by one (each group must keep as
many), and a depthwise unit's filters are its squeeze's channels. Genomes
with ``groups`` > 1 or depthwise expand3x3 branches (small-DNN playbook,
sections 5.6-5.7) are refused at every entry point (``check_evolvable``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn as nn

from .errors import GenomeError
from .genome import Genome, Unit, round_width
from .metrics import BYTES_FP32, conv_cost
from .model import ConvUnit, SqueezeNet, build, conv_units, fold_batchnorm, weight_name

__all__ = [
    "check_evolvable",
    "synapse_probabilities",
    "cluster_strengths",
    "cluster_probabilities",
    "Encoding",
    "encode",
    "sample_clusters",
    "round_keep",
    "shrink",
    "zero_filters",
    "expected_params",
    "expected_macs",
    "mac_weights",
    "Environment",
    "solve_environment",
    "sample_synapses",
    "sparse_bytes",
    "Importance",
    "L1Importance",
    "SynthesisOptions",
    "synthesize",
    "Offspring",
]


def check_evolvable(genome: Genome) -> None:
    """A GenomeError unless every Fire module of ``genome`` is dense (see the
    module docstring): what evolution can slice."""
    depthwise = genome.depthwise and any(f.expand3x3 for f in genome.fires)  # without 3x3 branches it is moot
    uses = ([f"groups={genome.groups}"] if genome.groups > 1 else []) + (["depthwise expand3x3"] if depthwise else [])
    if uses:
        raise GenomeError(f"evolution supports dense Fire modules; genome {genome.name!r} uses {' and '.join(uses)}: "
                          "evolve a dense design (groups 1, depthwise off)")


# -- genetic encoding -------------------------------------------------------------
def synapse_probabilities(weight: torch.Tensor, sharpness: float = 1.0) -> torch.Tensor:
    """p(w) = exp(k (|w| / Z - 1)) with Z the largest |w| of the layer."""
    a = weight.detach().abs().float()
    z = a.max()
    if z <= 0:
        return torch.full_like(a, math.exp(-sharpness))
    return torch.exp(sharpness * (a / z - 1.0))


class Importance(Protocol):
    """A cluster-strength strategy: one number per output filter."""

    def __call__(self, unit: ConvUnit) -> torch.Tensor: ...


class L1Importance:
    """s_c = sum of |w| over the filter's synapses (Shafiee & Wong's cluster
    strength), computed on BN-folded weights."""

    def __call__(self, unit: ConvUnit) -> torch.Tensor:
        return unit.conv.weight.detach().abs().flatten(1).sum(1).float()


def cluster_strengths(model: SqueezeNet, importance: Importance | None = None) -> dict[str, torch.Tensor]:
    """Strength of every removable filter, per unit (by ``Unit.module``)."""
    check_evolvable(model.genome)
    importance = importance or L1Importance()
    folded = fold_batchnorm(model)
    return {name: importance(unit) for name, unit in conv_units(folded)}


def cluster_probabilities(strength: torch.Tensor, sharpness: float = 1.0) -> torch.Tensor:
    """p(c) = exp(k (s_c / Z - 1)) with Z the layer's strongest cluster."""
    z = strength.max()
    if z <= 0:
        return torch.full_like(strength, math.exp(-sharpness))
    return torch.exp(sharpness * (strength / z - 1.0))


@dataclass
class Encoding:
    """A network's DNA: cluster survival probabilities (before F(E)) per unit
    (by ``Unit.module``, as are ``weights`` and an offspring's ``keep``)."""

    probs: dict[str, torch.Tensor]
    sharpness: float
    weights: dict[str, float] | None = None  # per-unit sharpness multipliers (MAC pressure)


def encode(model: SqueezeNet, sharpness: float = 1.0, importance: Importance | None = None,
           weights: dict[str, float] | None = None) -> Encoding:
    """The parent's DNA; ``weights`` (from ``mac_weights``) scale k per unit."""
    check_evolvable(model.genome)
    w = weights or {}
    return Encoding({n: cluster_probabilities(s, sharpness * w.get(n, 1.0))
                     for n, s in cluster_strengths(model, importance).items()}, sharpness, weights)


# -- sampling -------------------------------------------------------------------
def sample_clusters(p: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli draw of each cluster with probability F(E) * p: bool mask."""
    return torch.rand(p.shape, generator=generator) < (factor * p).clamp(0, 1)


def round_keep(alive: torch.Tensor, p: torch.Tensor, min_width: int = 1, divisor: int = 1) -> torch.Tensor:
    """Indices of the surviving filters, as many as ``genome.round_width``
    gives (at least ``min_width``; with ``divisor`` > 1 a multiple of it;
    never more than the parent had). Filling up takes the most probable dead
    filters; trimming drops the least probable survivors."""
    n = int(alive.sum())
    target = round_width(n, divisor, min_width, p.numel())
    order_alive = torch.argsort(p.masked_fill(~alive, -1.0), descending=True)
    if target <= n:
        keep = order_alive[:target]
    else:
        dead = torch.nonzero(~alive).flatten()
        fill = dead[torch.argsort(p[dead], descending=True)][: target - n]
        keep = torch.cat([torch.nonzero(alive).flatten(), fill])
    return torch.sort(keep).values


# -- physical shrinking -----------------------------------------------------------
def _conv(module: nn.Module) -> nn.Conv2d:
    return module.conv if isinstance(module, ConvUnit) else module


def _slice_unit(dst: nn.Module, src: nn.Module, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
    """Copy the filters ``out_idx`` of ``src`` (a ConvUnit or conv10), their
    input channels ``in_idx`` only, into ``dst``; BatchNorm follows its filters."""
    with torch.no_grad():
        d, c = _conv(dst), _conv(src)
        d.weight.copy_(c.weight[out_idx][:, in_idx])
        if c.bias is not None:
            d.bias.copy_(c.bias[out_idx])
        bn = getattr(src, "bn", None)
        if bn is not None:
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(dst.bn, attr).copy_(getattr(bn, attr)[out_idx])
            dst.bn.num_batches_tracked.copy_(bn.num_batches_tracked)


def _keep_indices(units: Sequence[Unit], keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Surviving filters of every unit: ``keep``'s for the removable units it
    names, all of them otherwise (conv10's outputs, the classes, always)."""
    k = {}
    for u in units:
        idx = keep.get(u.module) if u.removable else None
        k[u.module] = torch.arange(u.cout) if idx is None else torch.as_tensor(idx, dtype=torch.long)
        if k[u.module].numel() < 1:
            raise ValueError(f"{u.module}: at least one filter must survive")
        if k[u.module].max() >= u.cout or k[u.module].min() < 0:
            raise ValueError(f"{u.module}: filter index out of range")
    return k


def shrink(model: SqueezeNet, keep: dict[str, torch.Tensor], name: str | None = None) -> SqueezeNet:
    """A physically smaller network keeping the output filters ``keep[unit]``
    of each unit (by ``Unit.module``; all filters of units not named), with
    the surviving weights sliced in (Torch-Pruning's ``prune_out_channels``,
    for SqueezeNet's graph).

    A unit's input channels are the surviving outputs of the units it reads
    (``Unit.inputs``): conv1's feed the first squeeze, a squeeze's feed both
    expands, and a Fire's concatenated expand1x1 and expand3x3 outputs feed
    the next squeeze or conv10. conv10's outputs, the classes, are never
    removed.
    """
    g = model.genome
    check_evolvable(g)
    units = g.units()
    k = _keep_indices(units, keep)
    child_g = g.with_unit_widths({u.module: k[u.module].numel() for u in units if u.removable})
    child = build(child_g.replace(name=name or g.name))
    child.train(model.training)
    width = {u.module: u.cout for u in units}
    for u in units:
        if not u.inputs:  # conv1 reads the image
            in_idx = torch.arange(u.cin)
        else:  # positions of the surviving inputs inside the concatenation
            offsets = itertools.accumulate((width[m] for m in u.inputs[:-1]), initial=0)
            in_idx = torch.cat([k[m] + off for m, off in zip(u.inputs, offsets)])
        _slice_unit(child.get_submodule(u.module), model.get_submodule(u.module), k[u.module], in_idx)
    return child


def zero_filters(model: SqueezeNet, keep: dict[str, torch.Tensor]) -> SqueezeNet:
    """The masked reference: a copy of ``model`` in which every filter not in
    ``keep`` outputs exactly zero (weights, bias and BN shift zeroed)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, unit in conv_units(m):
            if name not in keep:
                continue
            dead = torch.ones(unit.conv.out_channels, dtype=torch.bool)
            dead[torch.as_tensor(keep[name], dtype=torch.long)] = False
            unit.conv.weight[dead] = 0
            if unit.conv.bias is not None:
                unit.conv.bias[dead] = 0
            if unit.bn is not None:
                unit.bn.weight[dead] = 0
                unit.bn.bias[dead] = 0
    return m


# -- the environment --------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _rounded_widths(width: int, min_width: int, divisor: int) -> torch.Tensor:
    """``round_width`` of every survivor count 0..``width`` (float64)."""
    return torch.tensor([round_width(n, divisor, min_width, width) for n in range(width + 1)], dtype=torch.float64)


def _expected_width(q: torch.Tensor, min_width: int, divisor: int) -> float:
    """Expected width of a unit whose filters survive with probabilities ``q``,
    after ``round_keep``'s floor and rounding.

    Without rounding it is max(floor, sum q). With rounding, the floor and the
    rounding are not linear: a unit expected to keep 20 filters ends with 16
    or 32, and one expected to keep 10 with 16, so its mean is above 20 or
    10. The survivor count (a sum of Bernoullis) is taken as normal, with a
    continuity correction, and ``round_keep``'s width averaged over it."""
    width = q.numel()
    mu = float(q.sum())
    if divisor <= 1:
        return max(float(min(min_width, width)), mu)
    sd = max(math.sqrt(float((q * (1 - q)).sum())), 1e-6)
    k = torch.arange(width + 1, dtype=torch.float64)
    cdf = 0.5 * torch.erfc(-(torch.cat([k - 0.5, k[-1:] + 0.5]) - mu) / (sd * math.sqrt(2)))
    pk = cdf[1:] - cdf[:-1]
    pk[0] += cdf[0]  # the tails belong to the end points
    pk[-1] += 1 - cdf[-1]
    return float((pk * _rounded_widths(width, min_width, divisor)).sum())


def _expected_widths(enc: Encoding, factor: float, min_width: int, divisor: int = 1) -> dict[str, float]:
    return {n: _expected_width((factor * p).clamp(0, 1), min_width, divisor) for n, p in enc.probs.items()}


def expected_params(genome: Genome, enc: Encoding, factor: float, min_width: int = 1, divisor: int = 1) -> float:
    """Expected deployed parameters of an offspring sampled at F(E) = ``factor``
    (expected widths per layer; the min-width floor and rounding included)."""
    check_evolvable(genome)
    return conv_cost(genome.units(), _expected_widths(enc, factor, min_width, divisor))[0]


def expected_macs(genome: Genome, enc: Encoding, factor: float, image_size: int, min_width: int = 1,
                  divisor: int = 1) -> float:
    """Expected convolution MACs of an offspring at ``image_size``."""
    check_evolvable(genome)
    return conv_cost(genome.units(image_size), _expected_widths(enc, factor, min_width, divisor))[1]


def mac_weights(genome: Genome, image_size: int, pressure: float) -> dict[str, float]:
    """Per-unit multipliers of the sharpness k that make the environment
    harsher where compute is spent (our extension; the papers' environment
    starves every layer alike).

    For each unit, r = (MACs one more filter costs) / (parameters it costs),
    the marginal costs taken at the current widths, so they include what the
    filter's output costs its consumers. A unit's sharpness is
    k (r / geometric mean of r) ** ``pressure``: at equal strength a filter
    in a high-resolution layer, which buys few parameters and many MACs, is
    less likely to survive. ``pressure`` = 0 is the papers' rule."""
    check_evolvable(genome)
    return {n: math.exp(pressure * c) for n, c in _log_mac_ratios(genome.units(image_size)).items()}


def _log_mac_ratios(units: Sequence[Unit]) -> dict[str, float]:
    """log r per removable unit, centred on its mean (see ``mac_weights``);
    ``units`` need pixels. It does not depend on the pressure, so a solver
    computes it once."""
    base = {u.module: float(u.cout) for u in units if u.removable}
    p0, m0 = conv_cost(units, base)
    logs = {}
    for n in base:
        p1, m1 = conv_cost(units, {**base, n: base[n] + 1.0})
        logs[n] = math.log((m1 - m0) / (p1 - p0))
    mean = sum(logs.values()) / len(logs)
    return {n: v - mean for n, v in logs.items()}


@dataclass
class Environment:
    """What the solver chose for one generation: F(E), the sharpness k, the
    MAC pressure and the per-unit sharpness multipliers it implies."""

    factor: float
    sharpness: float
    pressure: float = 0.0
    weights: dict[str, float] | None = None


def solve_environment(
    model: SqueezeNet, target_params: float, sharpness: float = 1.0, min_width: int = 1,
    importance: Importance | None = None, target_macs: float | None = None, image_size: int = 0,
    max_pressure: float = 8.0, divisor: int = 1,
) -> Environment:
    """F(E) (and, if needed, a lower sharpness) whose expected offspring size is
    ``target_params``. With k = ``sharpness``, F is found by bisection in
    (0, 1]; if even F = 1 shrinks more than asked, F stays 1 and k is lowered
    instead (raising every survival probability).

    With ``target_macs`` (and ``image_size``), the MAC pressure (see
    ``mac_weights``) is raised by bisection in [0, ``max_pressure``] until the
    offspring expected at ``target_params`` also has at most ``target_macs``
    MACs: the size target fixes how much is removed, the MAC target where."""
    g = model.genome
    check_evolvable(g)
    strengths = cluster_strengths(model, importance)
    units = g.units(image_size) if target_macs else g.units()  # pixels only where MACs count

    def enc_at(k: float, weights: dict[str, float] | None) -> Encoding:
        return Encoding({n: cluster_probabilities(s, k * (weights[n] if weights else 1.0))
                         for n, s in strengths.items()}, k, weights)

    def solve_size(weights: dict[str, float] | None) -> tuple[float, float]:
        def exp_params(f: float, k: float) -> float:
            return conv_cost(units, _expected_widths(enc_at(k, weights), f, min_width, divisor))[0]

        if exp_params(1.0, sharpness) >= target_params:
            lo, hi = 0.0, 1.0
            for _ in range(50):
                mid = (lo + hi) / 2
                if exp_params(mid, sharpness) > target_params:
                    hi = mid
                else:
                    lo = mid
            return (lo + hi) / 2, sharpness
        lo, hi = 0.0, sharpness  # smaller k -> probabilities nearer 1 -> more params
        for _ in range(50):
            mid = (lo + hi) / 2
            if exp_params(1.0, mid) > target_params:
                lo = mid
            else:
                hi = mid
        return 1.0, (lo + hi) / 2

    log_ratios = _log_mac_ratios(units) if target_macs else {}

    def at_pressure(a: float) -> tuple[Environment, float]:
        weights = {n: math.exp(a * c) for n, c in log_ratios.items()} if a > 0 else None
        f, k = solve_size(weights)
        macs = conv_cost(units, _expected_widths(enc_at(k, weights), f, min_width, divisor))[1] if target_macs else 0.0
        return Environment(f, k, a, weights), macs

    env, macs = at_pressure(0.0)
    if not target_macs or macs <= target_macs:
        return env
    env_hi, macs_hi = at_pressure(max_pressure)
    if macs_hi > target_macs:
        return env_hi  # the best this size allows; the lineage records the MACs reached
    lo, hi = 0.0, max_pressure
    for _ in range(25):
        mid = (lo + hi) / 2
        e, m = at_pressure(mid)
        if m > target_macs:
            lo = mid
        else:
            hi, env_hi = mid, e
    return env_hi


# -- synapse level -----------------------------------------------------------------
_INDEX_BYTES = 2  # a synapse's position inside its filter (16 bits)
_OFFSET_BYTES = 4  # where a filter's synapses start (32 bits)


def sample_synapses(model: SqueezeNet, factor: float, generator: torch.Generator, sharpness: float = 1.0,
                    existing: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Masks of surviving synapses inside the surviving filters (every conv
    weight, conv10's included, by state-dict name), drawn with F_s * p(w).
    Existing masks are kept: a synapse that died in an ancestor stays dead."""
    masks = {}
    fw = dict(fold_batchnorm(model).named_parameters())
    for unit in model.genome.units():
        name = weight_name(unit)
        probs = synapse_probabilities(fw[name], sharpness)
        m = torch.rand(probs.shape, generator=generator) < (factor * probs).clamp(0, 1)
        if existing and name in existing:
            m &= existing[name].bool()
        # Every filter keeps at least its strongest synapse.
        flat = m.view(m.shape[0], -1)
        empty = ~flat.any(1)
        if empty.any():
            strongest = probs.view(m.shape[0], -1).argmax(1)
            flat[empty, strongest[empty]] = True
        masks[name] = m
    return masks


def sparse_bytes(model: SqueezeNet, masks: dict[str, torch.Tensor] | None) -> tuple[int, int]:
    """(non-zero parameters, bytes of a sparse encoding): each masked weight
    tensor as fp32 values plus 16-bit in-filter indices plus a 32-bit offset
    per filter; other parameters dense. BN is counted folded, like ``size_mb``."""
    nnz = 0
    nbytes = 0
    for name, p in fold_batchnorm(model).named_parameters():
        if masks and name in masks:
            k = int(masks[name].sum())
            nnz += k
            nbytes += k * (BYTES_FP32 + _INDEX_BYTES) + _OFFSET_BYTES * p.shape[0]
        else:
            nnz += p.numel()
            nbytes += p.numel() * BYTES_FP32
    return nnz, nbytes


# -- one offspring --------------------------------------------------------------------
@dataclass
class Offspring:
    model: SqueezeNet
    keep: dict[str, list[int]]  # surviving filter indices per unit (by Unit.module)
    masks: dict[str, torch.Tensor] | None
    factor: float
    sharpness: float


@dataclass(frozen=True)
class SynthesisOptions:
    """How ``synthesize`` draws offspring, apart from F(E) and the generator."""

    sharpness: float = 1.0  # k of p(c) (without a precomputed encoding) and of p(w)
    min_width: int = 1  # fewest filters a unit keeps
    divisor: int = 1  # widths rounded to multiples of this (genome.round_width); 1: off
    init: str = "inherit"  # "inherit": the surviving weights; "scratch": fresh ones
    synapse_factor: float | None = None  # F_s of synapse-level sampling; None: off
    importance: Importance | None = None  # cluster strength; None: L1 on BN-folded weights

    def __post_init__(self) -> None:
        if self.init not in ("inherit", "scratch"):
            raise ValueError(f"init must be 'inherit' or 'scratch', got {self.init!r}")


_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(SynthesisOptions))


def synthesize(parent: SqueezeNet, factor: float, generator: torch.Generator, options: SynthesisOptions | None = None,
               *, name: str | None = None, parent_masks: dict[str, torch.Tensor] | None = None,
               encoding: Encoding | None = None, **option_overrides: Any) -> Offspring:
    """Sample one offspring of ``parent`` at F(E) = ``factor``.

    ``options`` say how (``SynthesisOptions``); its fields may also be given
    as keywords (``sharpness=..., divisor=...``), which override it.
    ``encoding`` (from ``encode(parent, sharpness)``) saves re-encoding the
    parent when several offspring are drawn from it. ``parent_masks`` are the
    parent's synapse masks: the offspring inherits them, sliced like the
    weights. With ``init='scratch'`` the offspring gets fresh weights, seeded
    from ``generator``.
    """
    unknown = sorted(set(option_overrides) - _OPTION_NAMES)
    if unknown:
        raise TypeError(f"synthesize() got unexpected keyword argument(s) {unknown}")
    check_evolvable(parent.genome)
    opts = dataclasses.replace(options or SynthesisOptions(), **option_overrides)
    enc = encoding if encoding is not None else encode(parent, opts.sharpness, opts.importance)
    keep = {unit: round_keep(sample_clusters(p, factor, generator), p, opts.min_width, opts.divisor)
            for unit, p in enc.probs.items()}
    child = shrink(parent, keep, name=name)
    inherited = _slice_masks(parent, parent_masks, keep) if parent_masks else None
    if opts.synapse_factor is not None:
        masks = sample_synapses(child, opts.synapse_factor, generator, opts.sharpness, inherited)
    else:
        masks = inherited
    if opts.init == "scratch":
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            child = build(child.genome)
    if masks:
        with torch.no_grad():
            params = dict(child.named_parameters())
            for k, m in masks.items():
                params[k].mul_(m.to(params[k].dtype))
    return Offspring(child, {k: v.tolist() for k, v in keep.items()}, masks, factor, opts.sharpness)


def _slice_masks(parent: SqueezeNet, masks: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """The parent's synapse masks cut down to the offspring's filters and
    channels: written into a copy of the parent and shrunk like the weights,
    so that dead synapses stay dead."""
    carrier = copy.deepcopy(parent)
    params = dict(carrier.named_parameters())
    with torch.no_grad():
        for pname, m in masks.items():
            params[pname].copy_(m.float())
    sliced = dict(shrink(carrier, keep).named_parameters())
    return {k: sliced[k].detach() != 0 for k in masks}
