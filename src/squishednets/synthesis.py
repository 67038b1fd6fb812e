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
chooses (``solve_environment``); pressure 0 is the papers' rule.

Offspring are sampled cluster by cluster; dead filters disappear from the
genome, and the surviving weights are sliced into the smaller network
(``shrink``), so offspring are physically smaller and faster: no masks on the
dense path. Synapse-level sampling inside surviving filters is optional and
gives fixed masks for training and a sparse size beside the dense one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import torch

from .genome import FireSpec, Genome
from .metrics import profile
from .model import ConvUnit, SqueezeNet, build, conv_units, fold_batchnorm

__all__ = [
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
    "synthesize",
    "Offspring",
]


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
    """Strength of every removable filter, by ConvUnit name."""
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
    """A network's DNA: cluster survival probabilities (before F(E)) per unit."""

    probs: dict[str, torch.Tensor]
    sharpness: float
    weights: dict[str, float] | None = None  # per-unit sharpness multipliers (MAC pressure)


def encode(model: SqueezeNet, sharpness: float = 1.0, importance: Importance | None = None,
           weights: dict[str, float] | None = None) -> Encoding:
    """The parent's DNA; ``weights`` (from ``mac_weights``) scale k per unit."""
    w = weights or {}
    return Encoding({n: cluster_probabilities(s, sharpness * w.get(n, 1.0))
                     for n, s in cluster_strengths(model, importance).items()}, sharpness, weights)


# -- sampling -------------------------------------------------------------------
def sample_clusters(p: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli draw of each cluster with probability F(E) * p: bool mask."""
    return torch.rand(p.shape, generator=generator) < (factor * p).clamp(0, 1)


def round_keep(alive: torch.Tensor, p: torch.Tensor, min_width: int = 1, divisor: int = 1) -> torch.Tensor:
    """Indices of the surviving filters, at least ``min_width`` of them and,
    with ``divisor`` > 1, a multiple of it (odd widths run slowly). Filling up
    takes the most probable dead filters; trimming drops the least probable
    survivors. Never more than the parent had."""
    width = p.numel()
    n = int(alive.sum())
    target = max(n, min(min_width, width))
    if divisor > 1:
        # Nearest multiple (rounding down is allowed, unlike timm's rule for
        # designed widths), but never below the minimum width.
        floor_mult = -(-max(1, min_width) // divisor) * divisor
        target = max(floor_mult, int(round(target / divisor)) * divisor)
    target = max(1, min(width, target))
    order_alive = torch.argsort(p.masked_fill(~alive, -1.0), descending=True)
    if target <= n:
        keep = order_alive[:target]
    else:
        dead = torch.nonzero(~alive).flatten()
        fill = dead[torch.argsort(p[dead], descending=True)][: target - n]
        keep = torch.cat([torch.nonzero(alive).flatten(), fill])
    return torch.sort(keep).values


# -- physical shrinking -----------------------------------------------------------
def _slice_unit(dst: ConvUnit, src: ConvUnit, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
    with torch.no_grad():
        dst.conv.weight.copy_(src.conv.weight[out_idx][:, in_idx])
        if src.conv.bias is not None:
            dst.conv.bias.copy_(src.conv.bias[out_idx])
        if src.bn is not None:
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(dst.bn, attr).copy_(getattr(src.bn, attr)[out_idx])
            dst.bn.num_batches_tracked.copy_(src.bn.num_batches_tracked)


def shrink(model: SqueezeNet, keep: dict[str, torch.Tensor], name: str | None = None) -> SqueezeNet:
    """A physically smaller network keeping the output filters ``keep[unit]``
    of each unit (all filters of units not named), with the surviving weights
    sliced in (Torch-Pruning's ``prune_out_channels``, for SqueezeNet's graph).

    Dependencies: conv1's outputs are the first squeeze's inputs; a squeeze's
    outputs are both expands' inputs; a Fire's concatenated outputs
    (expand1x1 then expand3x3) are the next squeeze's or conv10's inputs.
    conv10's outputs, the classes, are never removed.
    """
    g = model.genome
    units = dict(conv_units(model))
    full = {n: torch.arange(u.conv.out_channels) for n, u in units.items()}
    k = {n: torch.as_tensor(keep.get(n, full[n]), dtype=torch.long) for n in units}
    for n, idx in k.items():
        if idx.numel() < 1:
            raise ValueError(f"{n}: at least one filter must survive")
        if idx.max() >= full[n].numel() or idx.min() < 0:
            raise ValueError(f"{n}: filter index out of range")
    fires = []
    for i, f in enumerate(g.fires):
        e1 = k[f"fires.{i}.expand1x1"].numel() if f.expand1x1 else 0
        e3 = k[f"fires.{i}.expand3x3"].numel() if f.expand3x3 else 0
        fires.append(FireSpec(k[f"fires.{i}.squeeze"].numel(), e1, e3))
    child_g = g.replace(stem=dataclasses.replace(g.stem, filters=k["conv1"].numel()), fires=tuple(fires),
                        name=name or g.name)
    child = build(child_g)
    child.train(model.training)
    _slice_unit(child.conv1, model.conv1, k["conv1"], torch.arange(g.in_channels))
    prev = k["conv1"]  # surviving channels of the previous layer's output
    for i, (cf, pf) in enumerate(zip(child.fires, model.fires)):
        sq = k[f"fires.{i}.squeeze"]
        _slice_unit(cf.squeeze, pf.squeeze, sq, prev)
        parts = []
        offset = 0
        for branch in ("expand1x1", "expand3x3"):
            pu = getattr(pf, branch)
            if pu is None:
                continue
            idx = k[f"fires.{i}.{branch}"]
            _slice_unit(getattr(cf, branch), pu, idx, sq)
            parts.append(idx + offset)  # position inside the concatenation
            offset += pu.conv.out_channels
        prev = torch.cat(parts)
    with torch.no_grad():
        child.conv10.weight.copy_(model.conv10.weight[:, prev])
        child.conv10.bias.copy_(model.conv10.bias)
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
def _spatial(genome: Genome, image_size: int) -> dict[str, int]:
    """Output pixels per position of each unit ("conv1", "fires.i"): they do
    not depend on the widths, so one profile of the parent serves all."""
    prof = profile(genome, image_size)
    hw = {layer.name: layer.out_hw ** 2 for layer in prof.layers}
    px = {"conv1": hw["conv1"], "conv10": hw["conv10"]}
    for i in range(len(genome.fires)):
        px[f"fires.{i}"] = hw[f"fire{i + 2}.squeeze"]
    return px


def _expected_cost(g: Genome, widths: dict[str, float], px: dict[str, int] | None = None) -> tuple[float, float]:
    """Closed-form (parameters, MACs) with fractional (expected) widths; MACs
    need ``px`` from ``_spatial`` (0 without it)."""
    w = widths
    params = macs = 0.0
    cin = float(g.in_channels)
    c1 = w["conv1"]
    params += cin * c1 * g.stem.kernel ** 2 + c1
    if px:
        macs += cin * c1 * g.stem.kernel ** 2 * px["conv1"]
    prev = c1
    for i, f in enumerate(g.fires):
        s = w[f"fires.{i}.squeeze"]
        e1 = w.get(f"fires.{i}.expand1x1", 0.0) if f.expand1x1 else 0.0
        e3 = w.get(f"fires.{i}.expand3x3", 0.0) if f.expand3x3 else 0.0
        params += prev * s + s + s * e1 + e1 + 9 * s * e3 + e3
        if px:
            macs += (prev * s + s * e1 + 9 * s * e3) * px[f"fires.{i}"]
        prev = e1 + e3
    params += prev * g.num_classes + g.num_classes
    if px:
        macs += prev * g.num_classes * px["conv10"]
    return params, macs


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
    # round_keep's width for each survivor count, ties rounded as it does.
    floor_mult = -(-max(1, min_width) // divisor) * divisor
    n = torch.clamp(k, min=min(min_width, width))
    realized = torch.clamp(torch.maximum(torch.round(n / divisor) * divisor, torch.tensor(float(floor_mult))),
                           1, width)
    return float((pk * realized).sum())


def _expected_widths(enc: Encoding, factor: float, min_width: int, divisor: int = 1) -> dict[str, float]:
    return {n: _expected_width((factor * p).clamp(0, 1), min_width, divisor) for n, p in enc.probs.items()}


def expected_params(genome: Genome, enc: Encoding, factor: float, min_width: int = 1, divisor: int = 1) -> float:
    """Expected deployed parameters of an offspring sampled at F(E) = ``factor``
    (expected widths per layer; the min-width floor and rounding included)."""
    return _expected_cost(genome, _expected_widths(enc, factor, min_width, divisor))[0]


def expected_macs(genome: Genome, enc: Encoding, factor: float, image_size: int, min_width: int = 1,
                  divisor: int = 1) -> float:
    """Expected convolution MACs of an offspring at ``image_size``."""
    return _expected_cost(genome, _expected_widths(enc, factor, min_width, divisor), _spatial(genome, image_size))[1]


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
    return {n: math.exp(pressure * c) for n, c in _log_mac_ratios(genome, image_size).items()}


def _log_mac_ratios(genome: Genome, image_size: int) -> dict[str, float]:
    """log r per unit, centred on its mean (see ``mac_weights``); it does not
    depend on the pressure, so a solver computes it once."""
    px = _spatial(genome, image_size)
    base = {n: float(c) for n, c in _unit_names(genome)}
    p0, m0 = _expected_cost(genome, base, px)
    logs = {}
    for n in base:
        p1, m1 = _expected_cost(genome, {**base, n: base[n] + 1.0}, px)
        logs[n] = math.log((m1 - m0) / (p1 - p0))
    mean = sum(logs.values()) / len(logs)
    return {n: v - mean for n, v in logs.items()}


def _unit_names(genome: Genome) -> list[tuple[str, int]]:
    """(unit name, width) of every removable unit, in ``conv_units`` order."""
    out = [("conv1", genome.stem.filters)]
    for i, f in enumerate(genome.fires):
        out.append((f"fires.{i}.squeeze", f.squeeze))
        if f.expand1x1:
            out.append((f"fires.{i}.expand1x1", f.expand1x1))
        if f.expand3x3:
            out.append((f"fires.{i}.expand3x3", f.expand3x3))
    return out


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
    strengths = cluster_strengths(model, importance)
    px = _spatial(g, image_size) if target_macs else None

    def enc_at(k: float, weights: dict[str, float] | None) -> Encoding:
        return Encoding({n: cluster_probabilities(s, k * (weights[n] if weights else 1.0))
                         for n, s in strengths.items()}, k, weights)

    def solve_size(weights: dict[str, float] | None) -> tuple[float, float]:
        def exp_params(f: float, k: float) -> float:
            return expected_params(g, enc_at(k, weights), f, min_width, divisor)

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

    log_ratios = _log_mac_ratios(g, image_size) if target_macs else {}

    def at_pressure(a: float) -> tuple[Environment, float]:
        weights = {n: math.exp(a * c) for n, c in log_ratios.items()} if a > 0 else None
        f, k = solve_size(weights)
        macs = _expected_cost(g, _expected_widths(enc_at(k, weights), f, min_width, divisor), px)[1] if px else 0.0
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
def sample_synapses(model: SqueezeNet, factor: float, generator: torch.Generator, sharpness: float = 1.0,
                    existing: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Masks of surviving synapses inside the surviving filters (conv weights,
    conv10 included), drawn with F_s * p(w). Existing masks are kept: a
    synapse that died in an ancestor stays dead."""
    masks = {}
    folded = fold_batchnorm(model)
    fw = dict(folded.named_parameters())
    for name, p in model.named_parameters():
        if not name.endswith("conv.weight") and name != "conv10.weight":
            continue
        probs = synapse_probabilities(fw[name], sharpness)
        m = torch.rand(p.shape, generator=generator) < (factor * probs).clamp(0, 1)
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
    folded = fold_batchnorm(model)
    for name, p in folded.named_parameters():
        if masks and name in masks:
            k = int(masks[name].sum())
            nnz += k
            nbytes += k * (4 + 2) + 4 * p.shape[0]
        else:
            nnz += p.numel()
            nbytes += p.numel() * 4
    return nnz, nbytes


# -- one offspring --------------------------------------------------------------------
@dataclass
class Offspring:
    model: SqueezeNet
    keep: dict[str, list[int]]
    masks: dict[str, torch.Tensor] | None
    factor: float
    sharpness: float


def synthesize(
    parent: SqueezeNet,
    factor: float,
    generator: torch.Generator,
    sharpness: float = 1.0,
    min_width: int = 1,
    divisor: int = 1,
    name: str | None = None,
    init: str = "inherit",
    synapse_factor: float | None = None,
    parent_masks: dict[str, torch.Tensor] | None = None,
    importance: Importance | None = None,
    encoding: Encoding | None = None,
) -> Offspring:
    """Sample one offspring of ``parent`` at F(E) = ``factor``.

    ``init='inherit'`` slices the surviving weights in; ``'scratch'`` gives the
    same smaller genome with fresh weights (seeded from ``generator``).
    ``encoding`` (from ``encode(parent, sharpness)``) saves re-encoding the
    parent when several offspring are drawn from it.
    """
    if init not in ("inherit", "scratch"):
        raise ValueError(f"init must be 'inherit' or 'scratch', got {init!r}")
    enc = encoding if encoding is not None else encode(parent, sharpness, importance)
    keep = {}
    for unit, p in enc.probs.items():
        alive = sample_clusters(p, factor, generator)
        keep[unit] = round_keep(alive, p, min_width, divisor)
    child = shrink(parent, keep, name=name)
    masks = None
    if parent_masks:
        # Slice the inherited masks like the weights, so dead synapses stay dead.
        carrier = copy.deepcopy(parent)
        with torch.no_grad():
            for pname, m in parent_masks.items():
                dict(carrier.named_parameters())[pname].copy_(m.float())
        sliced = shrink(carrier, keep)
        sp = dict(sliced.named_parameters())
        parent_masks = {k: sp[k].detach() != 0 for k in parent_masks}
    if synapse_factor is not None:
        masks = sample_synapses(child, synapse_factor, generator, sharpness, parent_masks)
    elif parent_masks:
        masks = parent_masks
    if init == "scratch":
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            child = build(child.genome)
    if masks:
        with torch.no_grad():
            params = dict(child.named_parameters())
            for k, m in masks.items():
                params[k].mul_(m.to(params[k].dtype))
    return Offspring(child, {k: v.tolist() for k, v in keep.items()}, masks, factor, sharpness)
