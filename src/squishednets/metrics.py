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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .genome import Genome

__all__ = ["LayerInfo", "Profile", "profile", "conv_out", "pool_out", "SQUEEZENET11_MB", "ALEXNET_PARAMS", "ALEXNET_MB"]

BYTES_FP32 = 4
SQUEEZENET11_MB = 1_235_496 * BYTES_FP32 / 1e6  # 4.94 MB, the paper's reference
ALEXNET_PARAMS = 61_100_840
ALEXNET_MB = ALEXNET_PARAMS * BYTES_FP32 / 1e6  # 244.4 MB


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def pool_out(size: int, kernel: int = 3, stride: int = 2) -> int:
    """PyTorch's max-pool output size with ceil_mode=True and no padding."""
    out = math.ceil((size - kernel) / stride) + 1
    if (out - 1) * stride >= size:
        out -= 1
    return out


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


def profile(genome: Genome, image_size: int) -> Profile:
    """Per-layer parameters, MACs and activations of ``genome`` at ``image_size``."""
    if image_size < 1:
        raise ValueError("image_size must be >= 1")
    layers: list[LayerInfo] = []
    bn_params = 0
    peak = 0
    hw = image_size

    def conv(name: str, cin: int, cout: int, k: int, s: int, p: int, hw_in: int, kind: str = "conv") -> LayerInfo:
        nonlocal bn_params
        hw_o = conv_out(hw_in, k, s, p)
        if hw_o < 1:
            raise ValueError(f"input {image_size}px is too small: {name} would have no output pixels")
        info = LayerInfo(name, kind, cin, cout, k, s, hw_o, cin * cout * k * k + cout, hw_o * hw_o * cout * cin * k * k,
                         hw_o * hw_o * cout * BYTES_FP32)
        if genome.batchnorm and name != "conv10":
            bn_params += 2 * cout  # gamma, beta (running stats are buffers)
        layers.append(info)
        return info

    def act(c: int, h: int) -> int:
        return c * h * h * BYTES_FP32

    x_bytes = act(genome.in_channels, hw)
    c1 = conv("conv1", genome.in_channels, genome.stem.filters, genome.stem.kernel, genome.stem.stride,
              genome.stem.padding, hw)
    peak = max(peak, x_bytes + c1.activation_bytes)
    hw, ch = c1.out_hw, genome.stem.filters

    def maybe_pool(pos: int) -> None:
        nonlocal hw, peak
        if pos in genome.pool_after:
            hw_o = pool_out(hw)
            if hw_o < 1:
                raise ValueError(f"input {image_size}px is too small for the pooling after position {pos}")
            layers.append(LayerInfo(f"pool{pos}", "maxpool", ch, ch, 3, 2, hw_o, 0, 0, act(ch, hw_o)))
            peak = max(peak, act(ch, hw) + act(ch, hw_o))
            hw = hw_o

    maybe_pool(0)
    for i, f in enumerate(genome.fires):
        tag = f"fire{i + 2}"
        sq = conv(f"{tag}.squeeze", ch, f.squeeze, 1, 1, 0, hw, "squeeze")
        peak = max(peak, act(ch, hw) + sq.activation_bytes)
        if f.expand1x1:
            conv(f"{tag}.expand1x1", f.squeeze, f.expand1x1, 1, 1, 0, hw, "expand1x1")
        if f.expand3x3:
            conv(f"{tag}.expand3x3", f.squeeze, f.expand3x3, 3, 1, 1, hw, "expand3x3")
        ch = f.out_channels
        peak = max(peak, sq.activation_bytes + act(ch, hw))
        maybe_pool(i + 1)
    c10 = conv("conv10", ch, genome.num_classes, 1, 1, 0, hw, "classifier")
    peak = max(peak, act(ch, hw) + c10.activation_bytes)
    params = sum(layer.params for layer in layers)
    macs = sum(layer.macs for layer in layers)
    # With BN the convolutions train without bias; folding adds it back, so
    # the shipped count equals the bias-ful count computed above.
    train_params = params + bn_params - (sum(layer.cout for layer in layers if layer.kind != "maxpool" and
                                              layer.name != "conv10") if genome.batchnorm else 0)
    return Profile(image_size, tuple(layers), params, train_params, macs, peak)
