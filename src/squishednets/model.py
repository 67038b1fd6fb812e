"""Building ``nn.Module``s from genomes: the one builder.

``build(genome)`` gives a SqueezeNet-family network (SqueezeNet paper,
section 3; torchvision's layout) whose state-dict names are stable and
readable (``conv1.conv.weight``, ``fires.3.expand3x3.bn.running_mean``,
``conv10.weight``), so that synthesis can slice weights by name: a unit of
``Genome.units`` lives at ``Unit.module``. ``fold_batchnorm`` returns the
BatchNorm-free network that export ships.

A genome's ``depthwise`` and ``groups`` options (small-DNN playbook, sections
5.6-5.7) are built here too: a depthwise 3x3 then a pointwise 1x1
convolution in each Fire's expand3x3 branch, grouped 1x1 convolutions and a
channel shuffle after each squeeze (``channel_shuffle``).

One departure from the published SqueezeNet: conv10's outputs are the logits,
with no ReLU after them. With the ReLU, a class whose conv10 output goes
negative on every image gets no gradient again and is never predicted: on
Imagenette at 64 px, 5 of 5 v1.1 ancestors trained on 2026-12-07 ended with
one class at 0% (about 8 points of top-1 lost), as did 111 of the 186
networks of that day's peers benchmark (BENCHMARKS.md; ``SqueezeNet.head``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .genome import Genome, Unit

__all__ = ["ConvUnit", "Fire", "SqueezeNet", "build", "fold_batchnorm", "conv_units", "weight_name",
           "channel_shuffle"]


class ConvUnit(nn.Module):
    """Convolution, optional BatchNorm, ReLU. With BatchNorm the convolution
    has no bias: BN's shift replaces it, and folding restores it."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, bn: bool = False,
                 groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle (playbook 5.7): channel j of group i moves
    to position j * groups + i, so that each group of the next grouped
    convolution reads a share of every group of this one."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class Fire(nn.Module):
    """Squeeze (1x1) then expand (1x1 and 3x3, concatenated).

    With ``groups`` > 1 the 1x1 convolutions are grouped and the squeeze's
    output is channel-shuffled before the expands read it. With
    ``depthwise`` the 3x3 branch is ``expand3x3_dw`` (3x3, one filter per
    squeeze channel) then ``expand3x3`` (1x1 pointwise); each is a ConvUnit
    with its own BatchNorm and ReLU, as in MobileNet v1.
    """

    def __init__(self, cin: int, squeeze: int, e1: int, e3: int, bn: bool, groups: int = 1,
                 depthwise: bool = False):
        super().__init__()
        self.groups = groups
        self.squeeze = ConvUnit(cin, squeeze, 1, bn=bn, groups=groups)
        self.expand1x1 = ConvUnit(squeeze, e1, 1, bn=bn, groups=groups) if e1 > 0 else None
        dw = depthwise and e3 > 0
        self.expand3x3_dw = ConvUnit(squeeze, squeeze, 3, padding=1, bn=bn, groups=squeeze) if dw else None
        if dw:  # the pointwise half of the depthwise-separable 3x3
            self.expand3x3 = ConvUnit(squeeze, e3, 1, bn=bn, groups=groups)
        else:
            self.expand3x3 = ConvUnit(squeeze, e3, 3, padding=1, bn=bn) if e3 > 0 else None

    def _branch3x3(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand3x3(x if self.expand3x3_dw is None else self.expand3x3_dw(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        if self.groups > 1:
            x = channel_shuffle(x, self.groups)
        # expand1x1 runs first: metrics' peak-activation walk assumes this order.
        outs = [self.expand1x1(x)] if self.expand1x1 is not None else []
        if self.expand3x3 is not None:
            outs.append(self._branch3x3(x))
        return outs[0] if len(outs) == 1 else torch.cat(outs, 1)


class SqueezeNet(nn.Module):
    def __init__(self, genome: Genome):
        super().__init__()
        g = genome
        self.genome = g
        self.conv1 = ConvUnit(g.in_channels, g.stem.filters, g.stem.kernel, g.stem.stride, g.stem.padding, g.batchnorm)
        self.fires = nn.ModuleList(
            Fire(g.fire_in_channels(i), f.squeeze, f.expand1x1, f.expand3x3, g.batchnorm, g.groups, g.depthwise)
            for i, f in enumerate(g.fires)
        )
        self.dropout = nn.Dropout(g.dropout)
        # conv10: the few-class modification makes this num_classes 1x1 filters.
        self.conv10 = nn.Conv2d(g.final_channels, g.num_classes, 1)
        self._pools = frozenset(g.pool_after)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's SqueezeNet init: Kaiming-uniform convs, a small normal
        # init for the classifier so early logits stay near zero.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is self.conv10:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, 2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if 0 in self._pools:
            x = self._pool(x)
        for i, fire in enumerate(self.fires, start=1):
            x = fire(x)
            if i in self._pools:
                x = self._pool(x)
        return self.head(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout, conv10 (one 1x1 filter per class) and global average
        pooling: the logits. No ReLU: it would let a class die (module
        docstring)."""
        return torch.flatten(F.adaptive_avg_pool2d(self.conv10(self.dropout(x)), 1), 1)


def build(genome: Genome) -> SqueezeNet:
    """The one builder: genome in, freshly initialised network out."""
    return SqueezeNet(genome)


def conv_units(model: SqueezeNet) -> list[tuple[str, ConvUnit]]:
    """Every removable ConvUnit (not conv10, a plain convolution, nor a
    depthwise unit, whose width is its squeeze's) with its state-dict prefix
    ``Unit.module``, in network order."""
    return [(u.module, model.get_submodule(u.module)) for u in model.genome.units() if u.removable]


def _all_conv_units(model: SqueezeNet) -> list[tuple[str, ConvUnit]]:
    """Every ConvUnit, the depthwise ones (not removable) included."""
    return [(u.module, model.get_submodule(u.module)) for u in model.genome.units() if u.conv_unit]


def weight_name(unit: Unit) -> str:
    """State-dict name of ``unit``'s convolution weight."""
    return f"{unit.module}.conv.weight" if unit.conv_unit else f"{unit.module}.weight"


@torch.no_grad()
def fold_batchnorm(model: SqueezeNet) -> SqueezeNet:
    """A BatchNorm-free copy with each BN folded into its convolution:
    w' = w * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps)."""
    g = model.genome
    if not g.batchnorm:
        folded = build(g)
        folded.load_state_dict(model.state_dict())
        return folded.eval()
    folded = build(g.replace(batchnorm=False))
    src = dict(_all_conv_units(model))
    for name, dst in _all_conv_units(folded):
        unit = src[name]
        bn = unit.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        dst.conv.weight.copy_(unit.conv.weight * scale[:, None, None, None])
        dst.conv.bias.copy_(bn.bias - bn.running_mean * scale)
    folded.conv10.load_state_dict(model.conv10.state_dict())
    return folded.eval()
