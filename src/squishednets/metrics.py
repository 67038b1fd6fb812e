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
- ``peak_activation_bytes``: the largest set of fp32 activations that must be
  alive at once at batch 1 (a layer's input and output; inside a Fire module,
  the squeeze output together with the concatenated expand output).

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
    output pixels."""
    area = unit.kernel * unit.kernel
    # With fractional widths the order of the products decides the last bit,
    # and the solver's F(E) with it; this is the order it has always used
    # (conv1: channels first; elsewhere the fan-in k*k*cin first), so that
    # runs reproduce. With whole widths every order gives the same count.
    return cin * cout * area if not unit.inputs else area * cin * cout


def conv_cost(units: Sequence[Unit], widths: Mapping[str, float] | None = None) -> tuple[float, float]:
    """(parameters, MACs) of the convolutions ``units`` (``Genome.units``)
    with the removable units' widths replaced by ``widths`` (by
    ``Unit.module``; fractional expected widths allowed). A unit's inputs are
    the widths of the units feeding it. Parameters count weights and biases
    (BatchNorm folded); MACs need the units' pixels (``Genome.units`` with an
    image size) and are 0 without them.

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
            cout = widths.get(u.module, u.cout) if u.removable else u.cout
            cin = sum(out[m] for m in u.inputs) if u.inputs else u.cin
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


def profile(genome: Genome, image_size: int) -> Profile:
    """Per-layer parameters, MACs and activations of ``genome`` at ``image_size``."""
    units = genome.units(image_size)
    stages = [list(s) for _, s in itertools.groupby(units, key=lambda u: u.stage)]
    layers: list[LayerInfo] = []
    peak = 0
    for i, stage in enumerate(stages):
        first, hw = stage[0], stage[0].out_hw
        layers += [_layer(u) for u in stage]
        x = _act(first.cin, first.in_hw)
        if first.kind == "squeeze":  # the squeeze output lives until both expands have read it
            ch = sum(u.cout for u in stage[1:])
            sq = _act(first.cout, hw)
            peak = max(peak, x + sq, sq + _act(ch, hw))
        else:
            ch = first.cout
            peak = max(peak, x + _act(ch, hw))
        if first.stage in genome.pool_after:  # a pool's output is what the next stage reads
            hw_o = stages[i + 1][0].in_hw
            layers.append(LayerInfo(f"pool{first.stage}", "maxpool", ch, ch, 3, 2, hw_o, 0, 0, _act(ch, hw_o)))
            peak = max(peak, _act(ch, hw) + _act(ch, hw_o))
    params, macs = conv_cost(units)
    # With BN the convolutions train without bias but with BN's scale and
    # shift (running statistics are buffers): one more parameter per filter.
    train_params = params + (sum(u.cout for u in units if u.removable) if genome.batchnorm else 0)
    return Profile(image_size, tuple(layers), params, train_params, macs, peak)
