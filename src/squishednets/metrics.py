"""Closed-form size, compute and memory of a genome (no network is built).

The SquishedNets paper's Table 1 reports model size in MB; the small-DNN
playbook (section 4.4) adds the goal "parameters and intermediate
activations fit an 8192 KB SRAM". Everything here follows from the genome
and the input size:

- ``params``: parameters of the network that ships, i.e. with BatchNorm
  folded into the convolutions (conv weights and biases). A BatchNorm
  genome trains with extra BN parameters; ``train_params`` counts those.
- ``size_mb``: fp32 bytes of ``params`` in 10^6 bytes (the paper's MB:
  SqueezeNet v1.1's 1,235,496 parameters are 4.94 MB).
- ``macs``: multiply-accumulates of the convolutions at the input size.
  A convolution with g groups has k*k*(cin/g)*cout weights (a depthwise one,
  g = cin = cout, has k*k*cout); its MACs are its weights times its output
  pixels (small-DNN playbook, sections 5.6-5.7).
- ``peak_activation_bytes``: the largest set of fp32 activations that must be
  alive at once at batch 1, walking the network in ``model.build``'s order
  (``_fire_peak``): a layer's input and output; inside a Fire module, the
  tensors written and not yet read for the last time, the expand branches
  writing into their concatenated output (the channel shuffle and the
  depthwise convolution add their outputs, see ``_fire_peak``).

``conv_cost`` is the one cost model: ``profile`` evaluates it at the
genome's widths, synthesis's solver at fractional (expected) widths.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .genome import Genome, Unit

__all__ = [
    "BYTES_FP32",
    "SQUEEZENET11_MB",
    "ALEXNET_PARAMS",
    "ALEXNET_MB",
    "LayerInfo",
    "Profile",
    "profile",
    "conv_cost",
]

BYTES_FP32 = 4  # bytes per parameter or activation: every size here is fp32
SQUEEZENET11_MB = 1_235_496 * BYTES_FP32 / 1e6  # 4.94 MB, the paper's reference
ALEXNET_PARAMS = 61_100_840
ALEXNET_MB = ALEXNET_PARAMS * BYTES_FP32 / 1e6  # 244.4 MB


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str
    cin: int
    cout: int
    kernel: int
    stride: int
    out_hw: int
    params: int
    macs: int
    activation_bytes: int  # the output tensor, fp32, batch 1


@dataclass(frozen=True)
class Profile:
    image_size: int
    layers: tuple[LayerInfo, ...]
    params: int
    train_params: int
    macs: int
    peak_activation_bytes: int

    @property
    def size_mb(self) -> float:
        return self.params * BYTES_FP32 / 1e6

    def on_chip_bytes(self) -> int:
        """Parameters plus peak activations (the playbook's SRAM budget)."""
        return self.params * BYTES_FP32 + self.peak_activation_bytes

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "params": self.params,
            "train_params": self.train_params,
            "size_mb": self.size_mb,
            "macs": self.macs,
            "peak_activation_bytes": self.peak_activation_bytes,
            "params_plus_activations_kb": self.on_chip_bytes() / 1024,
            "layers": [asdict(layer) for layer in self.layers],
        }


def _weights(unit: Unit, cin: float, cout: float) -> float:
    """Weights of ``unit`` with ``cin`` inputs and ``cout`` filters: its
    parameters are these plus ``cout`` biases, its MACs these times its
    output pixels. Each filter of a grouped unit reads cin / groups inputs;
    each filter of a depthwise one reads one."""
    area = unit.kernel * unit.kernel
    if unit.kind == "depthwise":
        return area * cout
    if unit.groups > 1:  # whole widths are multiples of groups (Genome checks), so // keeps them whole
        return area * (cin // unit.groups if cin % unit.groups == 0 else cin / unit.groups) * cout
    # With fractional widths the order of the products decides the last bit,
    # and the solver's F(E) with it; this is the order it has always used
    # (conv1: channels first; elsewhere the fan-in k*k*cin first), so that
    # runs reproduce. With whole widths every order gives the same count.
    return cin * cout * area if not unit.inputs else area * cin * cout


def conv_cost(units: Sequence[Unit], widths: Mapping[str, float] | None = None) -> tuple[float, float]:
    """(parameters, MACs) of the convolutions ``units`` (``Genome.units``)
    with the removable units' widths replaced by ``widths`` (by
    ``Unit.module``; fractional expected widths allowed). A unit's inputs are
    the widths of the units feeding it, and a depthwise unit's width is its
    input's. Parameters count weights and biases (BatchNorm folded); MACs
    need the units' pixels (``Genome.units`` with an image size) and are 0
    without them.

    Sums run stage by stage (conv1, each Fire, conv10), weights then biases
    unit by unit, and a stage's MACs are its weights times its output pixels:
    the solver's order (see ``_weights``). Whole widths give whole numbers.
    """
    widths = widths or {}
    out: dict[str, float] = {}  # output width of each unit seen so far
    params = macs = 0
    for _, stage in itertools.groupby(units, key=lambda u: u.stage):
        stage_params = stage_weights = 0
        for u in stage:
            cin = sum(out[m] for m in u.inputs) if u.inputs else u.cin
            if u.kind == "depthwise":  # one filter per input channel
                cout = cin
            else:
                cout = widths.get(u.module, u.cout) if u.removable else u.cout
            w = _weights(u, cin, cout)
            stage_params = stage_params + w + cout
            stage_weights += w
            out[u.module] = cout
        params += stage_params
        if u.out_hw is not None:  # a stage's units share their output pixels
            macs += stage_weights * (u.out_hw * u.out_hw)
    return params, macs


def _layer(u: Unit) -> LayerInfo:
    w = _weights(u, u.cin, u.cout)
    return LayerInfo(u.name, u.kind, u.cin, u.cout, u.kernel, u.stride, u.out_hw, w + u.cout, w * u.out_hw * u.out_hw,
                     _act(u.cout, u.out_hw))


def _act(channels: int, hw: int) -> int:
    return channels * hw * hw * BYTES_FP32


def _fire_peak(fire: Sequence[Unit], shuffle: bool) -> int:
    """Largest bytes alive at once inside one Fire module (its units, squeeze
    first), run in ``model.Fire``'s order: squeeze, channel shuffle (with
    groups), expand1x1, then the 3x3 branch (depthwise, then pointwise).

    A tensor lives from the step that writes it to the last step that reads
    it, and the expand branches write into the Fire's concatenated output,
    which lives from the first of them on. So the steps hold: squeeze, its
    input and output; shuffle, the squeeze output and its shuffled copy (a
    transpose copies), which then stands in for it; expand1x1 or a dense
    expand3x3, the squeeze output and the concatenation; depthwise, the
    squeeze output (this is its last reader), its own output and the
    concatenation if expand1x1 has begun it; pointwise, the depthwise output
    and the concatenation, the squeeze output being dead.
    """
    squeeze, hw = fire[0], fire[0].out_hw
    sq, cat = _act(squeeze.cout, hw), _act(_fire_channels(fire), hw)
    steps = [_act(squeeze.cin, squeeze.in_hw) + sq] + ([2 * sq] if shuffle else [])
    begun = dw = 0  # the concatenation's bytes once a branch has written it; the depthwise output's
    for u in fire[1:]:
        if u.kind == "depthwise":
            dw = _act(u.cout, hw)
            steps.append(sq + dw + begun)
        else:  # an expand: the pointwise one reads the depthwise output, the others the squeeze's
            steps.append((dw if u.inputs != (squeeze.module,) else sq) + cat)
            begun = cat
    return max(steps)


def _fire_channels(fire: Sequence[Unit]) -> int:
    """Channels of a Fire's output: its expand branches' (not the depthwise unit's)."""
    return sum(u.cout for u in fire[1:] if u.kind != "depthwise")


def profile(genome: Genome, image_size: int) -> Profile:
    """Per-layer parameters, MACs and activations of ``genome`` at ``image_size``."""
    units = genome.units(image_size)
    stages = [list(s) for _, s in itertools.groupby(units, key=lambda u: u.stage)]
    layers: list[LayerInfo] = []
    peak = 0
    for i, stage in enumerate(stages):
        first, hw = stage[0], stage[0].out_hw
        layers += [_layer(u) for u in stage]
        if first.kind == "squeeze":
            ch = _fire_channels(stage)
            peak = max(peak, _fire_peak(stage, genome.groups > 1))
        else:
            ch = first.cout
            peak = max(peak, _act(first.cin, first.in_hw) + _act(ch, hw))
        if first.stage in genome.pool_after:  # a pool's output is what the next stage reads
            hw_o = stages[i + 1][0].in_hw
            layers.append(LayerInfo(f"pool{first.stage}", "maxpool", ch, ch, 3, 2, hw_o, 0, 0, _act(ch, hw_o)))
            peak = max(peak, _act(ch, hw) + _act(ch, hw_o))
    params, macs = conv_cost(units)
    # With BN the convolutions train without bias but with BN's scale and
    # shift (running statistics are buffers): one more parameter per filter.
    train_params = params + (sum(u.cout for u in units if u.conv_unit) if genome.batchnorm else 0)
    return Profile(image_size, tuple(layers), params, train_params, macs, peak)
