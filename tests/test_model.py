import pytest
import torch

from squishednets.genome import get_genome, list_genomes, squeezenet_design
from squishednets.model import ConvUnit, build, conv_units, weight_name

GENOMES = [get_genome(n, 7, batchnorm=bn) for n in list_genomes() for bn in (False, True)] + [
    squeezenet_design(pct3x3=0.0, num_fires=3, num_classes=4),
    squeezenet_design(pct3x3=1.0, num_fires=3, num_classes=4, batchnorm=True),
]


@pytest.mark.parametrize("g", GENOMES, ids=lambda g: f"{g.name}-bn{int(g.batchnorm)}")
def test_units_describe_the_built_network(g):
    """Every unit lives at Unit.module with its channels, kernel, stride and
    padding, and its weight under weight_name; no other convolution exists."""
    m = build(g)
    params = dict(m.named_parameters())
    convs = []
    for u in g.units():
        mod = m.get_submodule(u.module)
        conv = mod.conv if u.removable else mod
        assert isinstance(mod, ConvUnit) == u.removable
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
            u.cin, u.cout, (u.kernel, u.kernel), (u.stride, u.stride), (u.padding, u.padding))
        assert params[weight_name(u)] is conv.weight
        convs.append(conv)
    assert len(convs) == sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())
    assert [n for n, _ in conv_units(m)] == [u.module for u in g.units() if u.removable]


@pytest.mark.parametrize("g", GENOMES[:2], ids=lambda g: f"{g.name}-bn{int(g.batchnorm)}")
def test_unit_pixels_match_the_forward_pass(g):
    m = build(g).eval()
    seen = {}
    for u in g.units():
        conv = m.get_submodule(u.module)
        conv = conv.conv if u.removable else conv
        conv.register_forward_hook(lambda mod, i, o, name=u.module: seen.__setitem__(name, (i[0].shape[-1],
                                                                                            o.shape[-1])))
    with torch.no_grad():
        m(torch.zeros(1, 3, 57, 57))
    assert seen == {u.module: (u.in_hw, u.out_hw) for u in g.units(57)}


def test_a_class_switched_off_everywhere_still_learns():
    # With a ReLU after conv10 (the published SqueezeNet) a class whose
    # output is negative on every image gets no gradient and is never
    # predicted again; the logits here have no ReLU.
    torch.manual_seed(0)
    m = build(get_genome("squeezenet1_1", num_classes=4)).eval()
    with torch.no_grad():
        m.conv10.bias[2] = -100.0
    x = torch.randn(8, 3, 32, 32)
    logits = m(x)
    assert (logits[:, 2] < 0).all()
    torch.nn.functional.cross_entropy(logits, torch.full((8,), 2)).backward()
    assert m.conv10.bias.grad[2] < 0  # gradient descent raises the class's logit
    assert m.conv10.weight.grad[2].abs().sum() > 0
