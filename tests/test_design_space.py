"""The design-space axes as genome options (small-DNN playbook, sections
5.3-5.7): stem, pool placement, depthwise-separable expand3x3, grouped 1x1
convolutions with a channel shuffle. Each is built by the one builder,
costed exactly by the closed forms, serialised, exported and refused by
evolution where it cannot slice it."""

import json

import numpy as np
import onnx
import pytest
import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp

from squishednets.errors import GenomeError
from squishednets.export import export_onnx
from squishednets.genome import FireSpec, Genome, StemSpec, get_genome, make_divisible, pool_positions, round_widths, \
    squeezenet_design
from squishednets.metrics import BYTES_FP32, conv_cost, profile
from squishednets.model import ConvUnit, Fire, build, channel_shuffle, fold_batchnorm, weight_name
from squishednets import synthesis

GENOMES = [
    squeezenet_design(width_multiplier=0.25, num_fires=4, num_classes=7, depthwise=True, batchnorm=True,
                      name="dw"),
    squeezenet_design(width_multiplier=0.25, num_fires=4, num_classes=5, groups=4, name="g4"),
    squeezenet_design(width_multiplier=0.25, num_classes=3, groups=2, depthwise=True, batchnorm=True,
                      pool_strategy="early", name="g2_dw_early"),
    squeezenet_design(pct3x3=1.0, width_multiplier=0.25, num_fires=3, num_classes=11, groups=3, depthwise=True,
                      name="g3_dw_all3x3"),
    squeezenet_design(pct3x3=0.0, width_multiplier=0.25, num_fires=3, num_classes=2, groups=2, depthwise=True,
                      batchnorm=True, name="g2_all1x1"),
    squeezenet_design(width_multiplier=0.25, num_fires=5, num_classes=9, groups=4, stem_filters=30, stem_kernel=3,
                      stem_stride=1, stem_padding=1, pool_strategy="even", batchnorm=True, name="g4_stem3x3_even"),
    squeezenet_design(pct3x3=0.25, sr=0.25, width_multiplier=0.25, num_fires=4, num_classes=13, groups=2,
                      depthwise=True, divisor=3, pool_strategy="late", name="g2_div3_dw"),
    get_genome("squeezenet1_1", 7, batchnorm=True).replace(groups=4, depthwise=True, name="v1_1_g4_dw"),
]
IDS = [g.name for g in GENOMES]
SIZES = (32, 57)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def _with_bn_statistics(g, seed=0):
    """A built ``g`` whose BatchNorm is not the identity (random scale and
    shift, statistics from two training-mode passes), in eval mode."""
    torch.manual_seed(seed)
    m = build(g)
    if g.batchnorm:
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.2, 0.2)
        m.train()
        with torch.no_grad():
            for _ in range(2):
                m(torch.randn(4, 3, 32, 32))
    return m.eval()


def _hook_macs(model, size, batch=2):
    """MACs of every nn.Conv2d, from its output: per image, output elements
    times the inputs each filter reads (in_channels / groups) times k*k."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        kh, kw = mod.kernel_size
        total += out.numel() // batch * (mod.in_channels // mod.groups) * kh * kw

    handles = [mod.register_forward_hook(hook) for mod in model.modules() if isinstance(mod, torch.nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(batch, 3, size, size))
    for h in handles:
        h.remove()
    return total


_ALIAS_METHODS = {"unflatten", "transpose", "view"}  # views of their input: no new memory


def _traced_peak(model, size):
    """Peak bytes of the traced forward pass (torch.fx, shapes propagated) at
    batch 1, by a liveness walk of its nodes independent of the closed form.

    Memory is a node's own storage unless the node is a view or in place
    (ReLU in place, unflatten, transpose, eval-mode dropout); a torch.cat's
    inputs are written straight into its output, so they share its storage,
    which lives from the first of them. A storage lives from the node that
    writes it to the last node that reads it. The walk ends at conv10: the
    closed form counts the network up to the classifier's output."""
    gm = fx.symbolic_trace(model)
    ShapeProp(gm).propagate(torch.zeros(1, 3, size, size))
    modules = dict(gm.named_modules())
    root, nbytes, born, last = {}, {}, {}, {}
    for t, n in enumerate(gm.graph.nodes):
        args = list(n.all_input_nodes)
        for a in args:
            last[root[a]] = t
        alias = (n.op == "call_function" and n.kwargs.get("inplace")) or \
            (n.op == "call_method" and n.target in _ALIAS_METHODS) or \
            (n.op == "call_module" and isinstance(modules[n.target], torch.nn.Dropout))
        if alias:
            root[n] = root[args[0]]
            continue
        root[n], born[n] = n, t
        nbytes[n] = int(np.prod(n.meta["tensor_meta"].shape)) * BYTES_FP32
        if n.op == "call_function" and n.target is torch.cat:
            parts = {root[a] for a in args}
            born[n] = min(born[p] for p in parts)
            for p in parts:
                del nbytes[p]
            root.update({k: n for k, r in root.items() if r in parts})
        if n.op == "call_module" and n.target == "conv10":
            end = t
            break
    return max(sum(b for s, b in nbytes.items() if born[s] <= t <= last.get(s, born[s])) for t in range(end + 1))


# -- the closed forms equal the built module ---------------------------------------------
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("g", GENOMES, ids=IDS)
def test_params_and_macs_equal_the_built_module(g, size):
    prof = profile(g, size)
    m = build(g)
    assert n_params(fold_batchnorm(m)) == prof.params  # what ships
    assert n_params(m) == prof.train_params
    assert _hook_macs(m, size) == prof.macs
    assert conv_cost(g.units(size)) == (prof.params, prof.macs)
    convs = [layer for layer in prof.layers if layer.kind != "maxpool"]
    assert sum(layer.params for layer in convs) == prof.params and sum(layer.macs for layer in convs) == prof.macs
    assert all(isinstance(layer.params, int) and isinstance(layer.macs, int) for layer in convs)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("g", GENOMES + [get_genome("squeezenet1_0", 10), get_genome("squeezenet1_1", 3)],
                         ids=IDS + ["squeezenet1_0", "squeezenet1_1"])
def test_peak_activations_equal_a_liveness_walk_of_the_traced_network(g, size):
    assert profile(g, size).peak_activation_bytes == _traced_peak(fold_batchnorm(build(g)), size)


def test_peak_counts_the_shuffle_copy_and_the_depthwise_output():
    """One Fire at 8x8 whose squeeze is wider than its input, so the shuffle
    step (squeeze output and its copy) decides the peak; without groups the
    depthwise step does (squeeze, depthwise and concatenated outputs)."""
    base = Genome(name="one", num_classes=2, stem=StemSpec(4, 1, 1), fires=(FireSpec(16, 4, 4),), pool_after=())
    px = 8 * 8 * BYTES_FP32
    assert profile(base.replace(groups=4), 8).peak_activation_bytes == 2 * 16 * px
    assert profile(base.replace(depthwise=True), 8).peak_activation_bytes == (16 + 16 + 8) * px
    assert profile(base, 8).peak_activation_bytes == (16 + 8) * px


@pytest.mark.parametrize("g", GENOMES, ids=IDS)
def test_conv_cost_with_new_widths_is_the_resized_genome(g):
    """Widths replaced by Unit.module (multiples of groups) cost what the
    resized genome costs; a depthwise unit follows its squeeze."""
    step = g.groups
    widths = {u.module: max(step, u.cout - step) for u in g.units() if u.removable}
    h = g.with_unit_widths(widths)
    prof = profile(h, 48)
    assert conv_cost(g.units(48), widths) == (prof.params, prof.macs)


# -- the built module ---------------------------------------------------------------------------
@pytest.mark.parametrize("g", GENOMES, ids=IDS)
def test_units_describe_the_built_network(g):
    m = build(g)
    params = dict(m.named_parameters())
    for u in g.units():
        mod = m.get_submodule(u.module)
        assert isinstance(mod, ConvUnit) == u.conv_unit
        conv = mod.conv if u.conv_unit else mod
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.groups) == (
            u.cin, u.cout, (u.kernel, u.kernel), (u.stride, u.stride), (u.padding, u.padding), u.groups)
        assert params[weight_name(u)] is conv.weight
    assert len(g.units()) == sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())
    assert all(u.groups == 1 for u in g.units() if u.kind in ("conv", "classifier"))  # never grouped
    assert all(u.groups == u.cin == u.cout and u.kernel == 3 for u in g.units() if u.kind == "depthwise")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("g", GENOMES, ids=IDS)
def test_forward_shapes_and_finite(g, size):
    out = _with_bn_statistics(g)(torch.randn(2, 3, size, size))
    assert out.shape == (2, g.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("g", [g for g in GENOMES if g.batchnorm], ids=[g.name for g in GENOMES if g.batchnorm])
def test_fold_batchnorm_is_exact(g):
    m = _with_bn_statistics(g)
    f = fold_batchnorm(m)
    x = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(f(x), m(x), rtol=1e-4, atol=1e-5)
    assert not f.genome.batchnorm and not any(isinstance(x, torch.nn.BatchNorm2d) for x in f.modules())


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    # ... so each of 2 groups of the next grouped convolution reads both groups of this one
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def test_a_grouped_fire_shuffles_its_squeeze_output():
    """With identity squeeze and expand weights, a grouped Fire outputs its
    input shuffled: the expands read the squeeze's output through the shuffle."""
    fire = Fire(4, 4, 4, 0, bn=False, groups=2)
    with torch.no_grad():
        for unit in (fire.squeeze, fire.expand1x1):
            unit.conv.weight.copy_(torch.eye(2).repeat(2, 1)[:, :, None, None])
            unit.conv.bias.zero_()
        x = torch.rand(1, 4, 3, 3)
        torch.testing.assert_close(fire(x), channel_shuffle(x, 2), rtol=0, atol=0)


# -- serialisation -------------------------------------------------------------------------------
@pytest.mark.parametrize("g", GENOMES, ids=IDS)
def test_json_round_trip_keeps_the_new_fields(g):
    d = g.to_dict()
    assert (d["groups"], d["depthwise"]) == (g.groups, g.depthwise) and d["version"] == 1
    again = Genome.from_json(g.to_json())
    assert again == g and json.loads(again.to_json()) == d


def test_genome_json_without_the_new_keys_is_dense():
    d = get_genome("squeezenet1_1", 5).to_dict()
    del d["groups"], d["depthwise"]
    g = Genome.from_dict(d)
    assert (g.groups, g.depthwise) == (1, False) and g == get_genome("squeezenet1_1", 5)
    assert g.to_dict()["groups"] == 1 and g.to_dict()["depthwise"] is False  # written explicitly


# -- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("change,msg", [
    ({"groups": 3}, "groups=3 splits fire2.squeeze into 3 groups, but it reads 64 channels"),
    ({"groups": 32}, "groups=32 splits fire2.squeeze into 32 groups, but it has 16 channels"),
    ({"groups": 0}, "groups must be >= 1"),
    ({"groups": True}, "groups must be an integer"),
    ({"depthwise": "yes"}, "depthwise must be true or false"),
])
def test_validation_names_the_layer_and_the_fix(change, msg):
    d = {**get_genome("squeezenet1_1", 10).to_dict(), **change}
    with pytest.raises(GenomeError) as e:
        Genome.from_dict(d)
    assert msg in str(e.value)
    if "splits" in msg:
        assert "make every width a multiple of" in str(e.value)


def test_an_odd_expand_width_is_named():
    g = get_genome("squeezenet1_1", 10)
    odd = g.fires[:2] + (FireSpec(32, 127, 128),) + g.fires[3:]
    with pytest.raises(GenomeError, match=r"groups=2 splits fire4.expand1x1 into 2 groups, but it has 127 channels"):
        g.replace(fires=odd, groups=2)
    # A dense 3x3 expand is not grouped: the last one feeds conv10, which is not either.
    last = g.replace(fires=g.fires[:-1] + (FireSpec(64, 256, 254),), groups=4)
    assert last.units()[-2].name == "fire9.expand3x3" and last.units()[-2].groups == 1


def test_round_widths_makes_a_dense_genome_groupable():
    odd = get_genome("squeezenet1_1", 10).replace(stem=StemSpec(63, 3, 2))
    with pytest.raises(GenomeError, match="reads 63 channels"):
        odd.replace(groups=4)
    assert round_widths(odd, 4).replace(groups=4).stem.filters == 64


# -- the metaparameter generator's new axes ------------------------------------------------------
def test_pool_strategies_anchor_on_the_published_versions():
    assert pool_positions("early", 8) == get_genome("squeezenet1_1").pool_after == (0, 2, 4)
    assert pool_positions("late", 8) == get_genome("squeezenet1_0").pool_after == (0, 3, 7)
    assert pool_positions("even", 8) == (0, 3, 6)  # 3 layers (Fires, then conv10) at each resolution
    for n in range(1, 17):
        for s in ("early", "even", "late"):
            p = pool_positions(s, n)
            assert p[0] == 0 and list(p) == sorted(set(p)) and p[-1] <= n
            if n >= 4:
                assert len(p) == 3
        assert squeezenet_design(num_fires=n).pool_after == pool_positions("late", n)
        assert squeezenet_design(num_fires=n, pool_strategy="early").pool_after == pool_positions("early", n)
    with pytest.raises(GenomeError, match="one of early, even, late"):
        pool_positions("middle", 8)


def test_pool_after_and_pool_strategy_are_exclusive():
    assert squeezenet_design(pool_after=(0, 4)).pool_after == (0, 4)
    with pytest.raises(GenomeError, match="pool_after .* or pool_strategy .*, not both"):
        squeezenet_design(pool_after=(0, 4), pool_strategy="even")


def test_design_defaults_are_unchanged():
    d = squeezenet_design()
    assert d.fires == get_genome("squeezenet1_0").fires and d.pool_after == (0, 3, 7)
    assert d.stem == StemSpec(96, 7, 2, 0) and (d.groups, d.depthwise) == (1, False)
    assert d.name == "design_b128_i128_p0.5_f2_sr0.125"
    assert squeezenet_design(groups=4, depthwise=True).name == "design_b128_i128_p0.5_f2_sr0.125_g4_dw"


def test_design_stem_arguments():
    d = squeezenet_design(stem_filters=30, stem_kernel=3, stem_stride=1, stem_padding=1, width_multiplier=0.5,
                          divisor=4, num_classes=3)
    assert d.stem == StemSpec(make_divisible(15, 4), 3, 1, 1)
    assert squeezenet_design(stem_kernel=5).stem == StemSpec(96, 5, 2, 0)
    assert squeezenet_design(stem=StemSpec(17, 3, 2)).stem == StemSpec(17, 3, 2)  # as given, unscaled
    with pytest.raises(GenomeError, match="give stem or stem_kernel, not both"):
        squeezenet_design(stem=StemSpec(17, 3, 2), stem_kernel=5)
    with pytest.raises(GenomeError, match="stem_filters must be >= 1"):
        squeezenet_design(stem_filters=0)
    with pytest.raises(GenomeError, match="stride must be >= 1"):
        squeezenet_design(stem_stride=0)


@pytest.mark.parametrize("divisor,groups", [(1, 3), (8, 3), (8, 4), (4, 6)])
def test_design_widths_divide_by_divisor_and_groups(divisor, groups):
    d = squeezenet_design(pct3x3=0.3, width_multiplier=0.37, divisor=divisor, groups=groups, depthwise=True)
    step = np.lcm(divisor, groups)
    assert all(w % step == 0 for w in d.widths() if w)
    assert all(w % step == 0 for w in d.scaled(0.61, divisor).widths() if w)  # the multiplier keeps them so


# -- the lineage's width format ---------------------------------------------------------------------
def test_widths_of_a_depthwise_genome_leave_out_the_depthwise_units():
    g = GENOMES[2]
    assert len(g.widths()) == 1 + 3 * len(g.fires)
    assert [u.cout for u in g.units() if u.removable] == g.widths()
    assert g.with_widths(g.widths()) == g
    h = g.with_unit_widths({"fires.0.squeeze": 2 * g.fires[0].squeeze})
    dw = next(u for u in h.units() if u.module == "fires.0.expand3x3_dw")
    assert dw.cin == dw.cout == dw.groups == 2 * g.fires[0].squeeze  # follows its squeeze
    with pytest.raises(GenomeError, match="no removable unit"):
        g.with_unit_widths({"fires.0.expand3x3_dw": 4})


# -- export --------------------------------------------------------------------------------------------
def test_onnx_export_of_a_depthwise_grouped_genome(tmp_path):
    g = GENOMES[2]
    m = _with_bn_statistics(g)
    info = export_onnx(m, tmp_path / "m.onnx", 48)  # checks ONNX Runtime against PyTorch at batches 1 and 5
    assert info["max_abs_diff"] < 1e-4
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)
    groups = sorted({a.i for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"})
    assert g.groups in groups and max(groups) > g.groups  # grouped 1x1 and depthwise 3x3 convolutions
    import onnxruntime as ort

    s = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for b in (1, 7):
        x = torch.randn(b, 3, 48, 48)
        with torch.no_grad():
            np.testing.assert_allclose(s.run(None, {"input": x.numpy()})[0], m(x).numpy(), rtol=1e-3, atol=1e-5)


# -- evolution refuses what it cannot slice ------------------------------------------------------------
@pytest.mark.parametrize("g,uses", [(GENOMES[0], "depthwise expand3x3"), (GENOMES[1], "groups=4"),
                                    (GENOMES[2], "groups=2 and depthwise expand3x3")], ids=IDS[:3])
def test_evolution_refuses_grouped_and_depthwise_genomes(g, uses):
    m = build(g).eval()
    gen = torch.Generator().manual_seed(0)
    calls = [
        lambda: synthesis.encode(m),
        lambda: synthesis.cluster_strengths(m),
        lambda: synthesis.shrink(m, {}),
        lambda: synthesis.synthesize(m, 0.9, gen),
        lambda: synthesis.solve_environment(m, 1000),
        lambda: synthesis.expected_params(g, None, 0.9),
        lambda: synthesis.expected_macs(g, None, 0.9, 32),
        lambda: synthesis.mac_weights(g, 32, 1.0),
    ]
    for call in calls:
        with pytest.raises(GenomeError, match=f"evolution supports dense Fire modules; .* uses {uses}: evolve a "
                                              r"dense design \(groups 1, depthwise off\)"):
            call()


def test_a_depthwise_flag_without_3x3_branches_is_dense_enough_to_evolve():
    g = squeezenet_design(pct3x3=0.0, width_multiplier=0.25, num_fires=3, num_classes=3, depthwise=True)
    synthesis.check_evolvable(g)
    assert synthesis.shrink(build(g), {}).genome == g
