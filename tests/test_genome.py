import json

import pytest
import torch

from squishednets.errors import GenomeError
from squishednets.genome import FireSpec, Genome, get_genome, list_genomes, make_divisible, pool_out, register, \
    round_width, round_widths, squeezenet_design
from squishednets.metrics import SQUEEZENET11_MB, profile
from squishednets.model import build, fold_batchnorm


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,count", [("squeezenet1_0", 1_248_424), ("squeezenet1_1", 1_235_496)])
def test_published_parameter_counts(name, count):
    g = get_genome(name)
    assert n_params(build(g)) == count
    assert profile(g, 224).params == count


def test_few_class_v11_count_and_size():
    g = get_genome("squeezenet1_1", num_classes=10)
    assert n_params(build(g)) == 727_626
    assert g.num_classes == 10 and build(g).conv10.out_channels == 10
    assert SQUEEZENET11_MB == pytest.approx(4.941984)


def test_reference_macs():
    assert profile(get_genome("squeezenet1_1"), 224).macs == 349_151_936
    assert profile(get_genome("squeezenet1_1", 10), 224).macs == 263_489_216


def test_macs_match_hooks():
    g = get_genome("squeezenet1_0", 7)
    m = build(g).eval()
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        total += out.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]

    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(hook)
    m(torch.zeros(1, 3, 96, 96))
    assert total == profile(g, 96).macs


@pytest.mark.parametrize("name", list_genomes())
@pytest.mark.parametrize("classes,size", [(2, 32), (7, 64), (13, 48)])
def test_build_forward_shapes(name, classes, size):
    for bn in (False, True):
        g = get_genome(name, num_classes=classes, batchnorm=bn)
        out = build(g).eval()(torch.randn(2, 3, size, size))
        assert out.shape == (2, classes)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_genomes())
def test_json_round_trip(name):
    g = get_genome(name, num_classes=5, batchnorm=True)
    again = Genome.from_json(g.to_json())
    assert again == g
    assert json.loads(again.to_json()) == g.to_dict()


def test_batchnorm_train_params_counted():
    g = get_genome("squeezenet1_1", 10, batchnorm=True)
    assert profile(g, 64).train_params == n_params(build(g))
    assert profile(g, 64).params == 727_626


def test_fold_batchnorm_equivalent():
    torch.manual_seed(0)
    g = get_genome("squeezenet1_1", 4, batchnorm=True)
    m = build(g)
    m.train()
    for _ in range(3):  # give the running statistics non-trivial values
        m(torch.randn(8, 3, 48, 48))
    m.eval()
    f = fold_batchnorm(m)
    x = torch.randn(3, 3, 48, 48)
    assert not f.genome.batchnorm
    torch.testing.assert_close(f(x), m(x), rtol=1e-4, atol=1e-5)
    assert n_params(f) == profile(g, 48).params


def test_design_defaults_are_v10():
    d = squeezenet_design()
    assert d.fires == get_genome("squeezenet1_0").fires
    assert n_params(build(d)) == 1_248_424


def test_design_metaparameters():
    d = squeezenet_design(base_e=64, incr_e=32, pct3x3=0.25, freq=1, sr=0.25, num_fires=3, num_classes=3)
    assert [f.expand1x1 + f.expand3x3 for f in d.fires] == [64, 96, 128]
    assert [f.expand3x3 for f in d.fires] == [16, 24, 32]
    assert [f.squeeze for f in d.fires] == [16, 24, 32]
    only1x1 = squeezenet_design(pct3x3=0.0, num_fires=2, pool_after=(0,), num_classes=2)
    assert all(f.expand3x3 == 0 for f in only1x1.fires)
    assert build(only1x1)(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_width_multiplier_and_rounding():
    g = get_genome("squeezenet1_1", 10)
    h = g.scaled(0.5, divisor=8)
    assert all(w % 8 == 0 for w in h.widths())
    assert h.stem.filters == 32 and h.num_classes == 10
    odd = g.replace(fires=tuple(FireSpec(f.squeeze - 3, f.expand1x1 - 5, f.expand3x3 + 1) for f in g.fires))
    assert all(w % 8 == 0 for w in round_widths(odd, 8).widths())
    assert make_divisible(13, 8) == 16 and make_divisible(3, 8) == 8 and make_divisible(13) == 13


def test_with_widths_inverts_widths():
    g = get_genome("squeezenet1_1", 10)
    h = g.scaled(0.5, divisor=8)
    assert g.with_widths(h.widths()).widths() == h.widths()
    assert g.with_widths(g.widths()) == g
    with pytest.raises(GenomeError, match="expected 25 numbers"):
        g.with_widths([16, 16])


@pytest.mark.parametrize("d,msg", [
    ({"fires": [{"squeeze": -4, "expand1x1": 64, "expand3x3": 64}]}, "squeeze must be >= 1"),
    ({"colour": "red"}, "unknown key(s) ['colour']"),
    ({"version": 99}, "version 99 is not supported"),
    ({"num_classes": 1}, "num_classes must be >= 2"),
    ({"pool_after": [0, 12]}, "past the last Fire module"),
    ({"dropout": 1.5}, "dropout must be in [0, 1)"),
])
def test_genome_validation_names_the_problem(d, msg):
    base = get_genome("squeezenet1_1", 10).to_dict()
    base.update(d)
    with pytest.raises(GenomeError) as e:
        Genome.from_dict(base)
    assert msg in str(e.value)


def test_fire_spec_errors_name_the_module():
    base = get_genome("squeezenet1_1", 10).to_dict()
    base["fires"][2]["expand3x3"] = -1
    with pytest.raises(GenomeError, match=r"fires\[2\] \(fire4\): expand3x3 must be >= 0"):
        Genome.from_dict(base)


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register("squeezenet1_1")(lambda: get_genome("squeezenet1_1"))


def test_unknown_genome_name():
    with pytest.raises(GenomeError, match="known genomes are"):
        get_genome("resnet50")


def test_pool_out_matches_torch():
    for s in range(3, 60):
        assert pool_out(s) == torch.nn.functional.max_pool2d(torch.zeros(1, 1, s, s), 3, 2, ceil_mode=True).shape[-1]


def test_too_small_input_is_an_error():
    with pytest.raises(ValueError, match="too small"):
        profile(get_genome("squeezenet1_1"), 8)


def test_round_width_is_synthesis_rule():
    assert round_width(13, 8) == 16 and round_width(9, 8) == 8  # nearest multiple, down as well as up
    assert [round_width(n, 16) for n in (8, 24, 40, 56)] == [16, 32, 32, 64]  # ties to the even multiple
    assert round_width(0, 16, min_width=20) == 32  # the smallest multiple at or above the floor
    assert round_width(0, 16, min_width=20, max_width=24) == 24  # never more than the parent had
    assert round_width(3, 1, min_width=5) == 5 and round_width(7, 1, min_width=5) == 7
    assert round_width(0) == 1


def test_the_two_rounding_rules_differ_only_where_documented():
    """make_divisible (designs) and round_width (survivor counts) agree away
    from ties and the 10% limit; 104 at divisor 16 is the docstring's case."""
    assert make_divisible(104, 16) == 112 and round_width(104, 16) == 96
    assert make_divisible(9, 8) == 16 and round_width(9, 8) == 8
    for n in range(16, 400):
        nearest = round_width(n, 16, min_width=16)
        if n % 16 != 8 and nearest >= 0.9 * n:  # no tie, and within timm's 10%
            assert make_divisible(n, 16) == nearest


@pytest.mark.parametrize("name", list_genomes())
def test_units_name_every_convolution(name):
    g = get_genome(name, 10)
    units = g.units()
    assert [u.name for u in units] == ["conv1"] + [f"fire{i + 2}.{r}" for i in range(len(g.fires))
                                                   for r in ("squeeze", "expand1x1", "expand3x3")] + ["conv10"]
    assert [u.module for u in units][:4] == ["conv1", "fires.0.squeeze", "fires.0.expand1x1", "fires.0.expand3x3"]
    assert [u.cout for u in units if u.removable] == g.widths()
    assert units[-1].cout == 10 and not units[-1].removable
    by_module = {u.module: u for u in units}
    for u in units[1:]:  # channels flow along the inputs
        assert u.cin == sum(by_module[m].cout for m in u.inputs)
    assert units[0].inputs == () and units[0].cin == g.in_channels


def test_units_skip_empty_branches_and_carry_pixels():
    g = squeezenet_design(pct3x3=1.0, num_fires=3, num_classes=4, pool_after=(0, 2))
    units = g.units(64)
    assert [u.name for u in units] == ["conv1", "fire2.squeeze", "fire2.expand3x3", "fire3.squeeze",
                                       "fire3.expand3x3", "fire4.squeeze", "fire4.expand3x3", "conv10"]
    assert units[3].inputs == ("fires.0.expand3x3",)
    assert [(u.in_hw, u.out_hw) for u in units] == [(64, 29)] + [(14, 14)] * 4 + [(7, 7)] * 3
    assert all(u.in_hw is None and u.out_hw is None for u in g.units())


def test_with_unit_widths():
    g = get_genome("squeezenet1_1", 10)
    h = g.with_unit_widths({"conv1": 32, "fires.2.expand3x3": 40})
    assert h.stem.filters == 32 and h.fires[2] == FireSpec(32, 128, 40) and h.fires[:2] == g.fires[:2]
    assert g.with_unit_widths({}) == g
    with pytest.raises(GenomeError, match="no removable unit"):
        g.with_unit_widths({"conv10": 3})
