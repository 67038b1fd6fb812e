import math

import pytest
import torch

from squishednets.genome import get_genome, list_genomes, squeezenet_design
from squishednets.metrics import BYTES_FP32, conv_cost, profile
from squishednets.model import build, fold_batchnorm

CASES = [(name, classes, size, bn) for name in list_genomes()
         for classes, size, bn in ((10, 64, True), (7, 96, False), (13, 48, True))]
IDS = [f"{n}-c{c}-{s}px-bn{int(b)}" for n, c, s, b in CASES]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def hook_macs(model, size):
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        total += out.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]

    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    return total


@pytest.mark.parametrize("name,classes,size,bn", CASES, ids=IDS)
def test_layer_costs_sum_to_the_totals(name, classes, size, bn):
    g = get_genome(name, classes, batchnorm=bn)
    prof = profile(g, size)
    convs = [layer for layer in prof.layers if layer.kind != "maxpool"]
    assert [layer.name for layer in convs] == [u.name for u in g.units(size)]
    assert sum(layer.params for layer in prof.layers) == prof.params
    assert sum(layer.macs for layer in prof.layers) == prof.macs
    assert conv_cost(g.units(size)) == (prof.params, prof.macs)
    assert [layer.name for layer in prof.layers if layer.kind == "maxpool"] == [f"pool{p}" for p in g.pool_after]


@pytest.mark.parametrize("name,classes,size,bn", CASES, ids=IDS)
def test_totals_match_the_built_network(name, classes, size, bn):
    g = get_genome(name, classes, batchnorm=bn)
    prof = profile(g, size)
    m = build(g)
    assert n_params(m) == prof.train_params
    assert n_params(fold_batchnorm(m)) == prof.params  # what ships: BN folded
    assert hook_macs(m, size) == prof.macs


@pytest.mark.parametrize("name,size,params,train_params,macs,peak", [
    ("squeezenet1_1", 64, 727_626, 730_570, 17_022_656, 303_616),
    ("squeezenet1_1", 224, 727_626, 730_570, 263_489_216, 3_928_576),
    ("squeezenet1_0", 224, 740_554, 743_530, 733_261_856, 5_682_048),
])
def test_pinned_profiles(name, size, params, train_params, macs, peak):
    prof = profile(get_genome(name, 10, batchnorm=True), size)
    assert (prof.params, prof.train_params, prof.macs, prof.peak_activation_bytes) == (params, train_params, macs,
                                                                                        peak)
    assert prof.size_mb == params * BYTES_FP32 / 1e6


def test_conv_cost_with_new_widths_is_the_resized_genome():
    g = squeezenet_design(pct3x3=0.25, num_fires=4, num_classes=5)
    widths = {"conv1": 40, "fires.0.squeeze": 9, "fires.1.expand3x3": 5, "fires.3.expand1x1": 33}
    h = g.with_unit_widths(widths)
    prof = profile(h, 80)
    assert conv_cost(g.units(80), widths) == (prof.params, prof.macs)
    assert conv_cost(g.units(), widths) == (prof.params, 0)  # no pixels, no MACs


def test_conv_cost_of_fractional_widths():
    """Expected (fractional) widths go through the same formula: weights
    k*k*cin*cout plus cout biases, inputs the widths feeding each unit."""
    g = squeezenet_design(num_fires=2, num_classes=3, pool_after=(0,))
    w = {"conv1": 10.5, "fires.0.squeeze": 2.25, "fires.0.expand1x1": 7.5, "fires.0.expand3x3": 6.0,
         "fires.1.squeeze": 3.0, "fires.1.expand1x1": 1.5, "fires.1.expand3x3": 2.5}
    px = {u.module: u.out_hw ** 2 for u in g.units(64)}
    layers = [(3, w["conv1"], 49, "conv1"), (w["conv1"], w["fires.0.squeeze"], 1, "fires.0.squeeze"),
              (w["fires.0.squeeze"], w["fires.0.expand1x1"], 1, "fires.0.expand1x1"),
              (w["fires.0.squeeze"], w["fires.0.expand3x3"], 9, "fires.0.expand3x3"),
              (13.5, w["fires.1.squeeze"], 1, "fires.1.squeeze"),
              (w["fires.1.squeeze"], w["fires.1.expand1x1"], 1, "fires.1.expand1x1"),
              (w["fires.1.squeeze"], w["fires.1.expand3x3"], 9, "fires.1.expand3x3"), (4.0, 3, 1, "conv10")]
    params = sum(a * k * b + b for a, b, k, _ in layers)
    macs = sum(a * k * b * px[n] for a, b, k, n in layers)
    got = conv_cost(g.units(64), w)
    assert math.isclose(got[0], params, rel_tol=1e-12) and math.isclose(got[1], macs, rel_tol=1e-12)
