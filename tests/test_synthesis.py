import math

import pytest
import torch

from squishednets.genome import get_genome, round_width, squeezenet_design
from squishednets.metrics import conv_cost, profile
from squishednets.model import build, conv_units, fold_batchnorm
from squishednets.synthesis import SynthesisOptions, _expected_width, cluster_probabilities, encode, expected_macs, \
    expected_params, mac_weights, round_keep, sample_clusters, shrink, solve_environment, sparse_bytes, \
    synapse_probabilities, synthesize, zero_filters


def _trained_like(g, seed=0):
    """A network with non-trivial BN statistics and varied filter strengths."""
    torch.manual_seed(seed)
    m = build(g)
    with torch.no_grad():
        for _, u in conv_units(m):
            u.conv.weight.mul_(torch.rand(u.conv.out_channels, 1, 1, 1) * 2)
            if u.bn is not None:
                u.bn.weight.uniform_(0.5, 1.5)
                u.bn.bias.uniform_(-0.2, 0.2)
    m.train()
    for _ in range(2):
        m(torch.randn(4, 3, 40, 40))
    return m.eval()


def _random_keep(m, gen, frac=0.6):
    keep = {}
    for name, u in conv_units(m):
        n = u.conv.out_channels
        k = max(1, int(n * frac))
        keep[name] = torch.sort(torch.randperm(n, generator=gen)[:k]).values
    return keep


GENOMES = [
    get_genome("squeezenet1_1", 10, batchnorm=True),
    get_genome("squeezenet1_1", 3, batchnorm=False),
    get_genome("squeezenet1_0", 5, batchnorm=True),
    squeezenet_design(pct3x3=0.0, num_fires=3, num_classes=4),  # Fires with no 3x3 branch
    squeezenet_design(pct3x3=1.0, num_fires=3, num_classes=4, batchnorm=True),  # no 1x1 branch
]


@pytest.mark.parametrize("g", GENOMES, ids=lambda g: f"{g.name}-bn{int(g.batchnorm)}")
def test_shrunk_equals_zeroed_original(g):
    m = _trained_like(g)
    keep = _random_keep(m, torch.Generator().manual_seed(1))
    small = shrink(m, keep).eval()
    ref = zero_filters(m, keep).eval()
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(small(x), ref(x), rtol=0, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("unit", ["conv1", "fires.0.squeeze", "fires.2.expand1x1", "fires.5.expand3x3",
                                  "fires.7.expand1x1"])
def test_each_kind_of_layer_alone(unit):
    g = get_genome("squeezenet1_1", 6, batchnorm=True)
    m = _trained_like(g, 3)
    n = dict(conv_units(m))[unit].conv.out_channels
    keep = {unit: torch.tensor([i for i in range(n) if i % 3 != 1])}
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(shrink(m, keep)(x), zero_filters(m, keep)(x), rtol=0, atol=1e-5)


def test_removing_nothing_changes_nothing():
    g = get_genome("squeezenet1_1", 10, batchnorm=True)
    m = _trained_like(g)
    same = shrink(m, {})
    assert same.genome == g
    for (k, a), (_, b) in zip(m.state_dict().items(), same.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(2, 3, 40, 40)
    assert torch.equal(m(x), same(x))


def test_parameter_count_matches_closed_form():
    g = get_genome("squeezenet1_1", 10, batchnorm=True)
    m = _trained_like(g)
    small = shrink(m, _random_keep(m, torch.Generator().manual_seed(5), 0.37))
    prof = profile(small.genome, 64)
    assert sum(p.numel() for p in fold_batchnorm(small).parameters()) == prof.params
    assert sum(p.numel() for p in small.parameters()) == prof.train_params
    assert small.conv10.out_channels == 10  # classes are never removed


def test_probability_models():
    w = torch.tensor([[0.0, -1.0], [0.5, 2.0]])
    p = synapse_probabilities(w)
    assert p.max() == 1.0 and p[1, 1] == 1.0
    assert p[0, 1] == pytest.approx(math.exp(-0.5)) and p[0, 0] == pytest.approx(math.exp(-1))
    c = cluster_probabilities(torch.tensor([1.0, 4.0, 2.0]), sharpness=2.0)
    assert c.tolist() == pytest.approx([math.exp(-1.5), 1.0, math.exp(-1.0)])


def test_cluster_survival_frequency_matches_probability():
    """Over 20,000 draws each cluster survives with frequency F(E) * p within
    0.015 (more than 5 standard errors of a Bernoulli mean at this N)."""
    p = torch.tensor([1.0, 0.9, 0.7, 0.5, 0.37])
    gen = torch.Generator().manual_seed(0)
    n, factor = 20_000, 0.8
    counts = torch.zeros(5)
    for _ in range(n):
        counts += sample_clusters(p, factor, gen).float()
    assert torch.allclose(counts / n, factor * p, atol=0.015)


def test_round_keep_min_width_and_multiple():
    p = torch.linspace(0.1, 1.0, 20)
    none_alive = torch.zeros(20, dtype=torch.bool)
    assert round_keep(none_alive, p, min_width=1).tolist() == [19]  # the most probable
    assert round_keep(none_alive, p, min_width=3).tolist() == [17, 18, 19]
    alive = torch.zeros(20, dtype=torch.bool)
    alive[[0, 1, 2, 3, 5, 9, 10, 11, 12, 13, 14, 15, 16]] = True  # 13 alive
    k = round_keep(alive, p, divisor=8)
    assert len(k) == 16 and set(torch.nonzero(alive).flatten().tolist()) <= set(k.tolist())
    assert len(round_keep(alive, p[:20], divisor=32)) == 20  # never more than the parent has
    alive9 = torch.zeros(20, dtype=torch.bool)
    alive9[:9] = True
    assert len(round_keep(alive9, p, divisor=8)) == 8  # 9 rounds down: the least probable goes


def test_solve_environment_hits_the_expected_size():
    g = get_genome("squeezenet1_1", 10, batchnorm=True)
    m = _trained_like(g)
    full = profile(g, 64).params
    for want in (0.8 * full, 0.5 * full):
        env = solve_environment(m, want)
        f, k = env.factor, env.sharpness
        assert 0 < f <= 1 and env.pressure == 0
        assert expected_params(g, encode(m, k), f) == pytest.approx(want, rel=1e-3)
        # The sampled offspring land around the expectation.
        gen = torch.Generator().manual_seed(0)
        sizes = [profile(synthesize(m, f, gen, sharpness=k).model.genome, 64).params for _ in range(8)]
        assert abs(sum(sizes) / len(sizes) - want) / want < 0.1
    # A gentle target needs F = 1 and a lower sharpness.
    env = solve_environment(m, 0.97 * full)
    assert env.factor == 1.0 and env.sharpness < 1.0


def test_synthesize_is_seeded_and_smaller():
    g = get_genome("squeezenet1_1", 10, batchnorm=True)
    m = _trained_like(g)
    a = synthesize(m, 0.8, torch.Generator().manual_seed(4), divisor=8)
    b = synthesize(m, 0.8, torch.Generator().manual_seed(4), divisor=8)
    assert a.keep == b.keep and a.model.genome == b.model.genome
    c = synthesize(m, 0.8, torch.Generator().manual_seed(4), divisor=8, encoding=encode(m))
    assert c.keep == a.keep  # a precomputed encoding gives the same draw
    assert all(w % 8 == 0 or w == o for w, o in zip(a.model.genome.widths(), g.widths()))
    assert profile(a.model.genome, 64).params < profile(g, 64).params
    x = torch.randn(2, 3, 40, 40)
    assert torch.equal(a.model(x), b.model(x))
    scratch = synthesize(m, 0.8, torch.Generator().manual_seed(4), divisor=8, init="scratch")
    assert scratch.model.genome == a.model.genome
    assert not torch.equal(scratch.model.conv1.conv.weight, a.model.conv1.conv.weight)


def test_synapse_level_masks_and_sparse_size():
    g = get_genome("squeezenet1_1", 10, batchnorm=True)
    m = _trained_like(g)
    off = synthesize(m, 0.9, torch.Generator().manual_seed(0), synapse_factor=0.9)
    assert off.masks and all(mk.shape == dict(off.model.named_parameters())[k].shape for k, mk in off.masks.items())
    w = off.model.fires[3].expand3x3.conv.weight
    assert (w[~off.masks["fires.3.expand3x3.conv.weight"]] == 0).all()
    nnz, nbytes = sparse_bytes(off.model, off.masks)
    dense = profile(off.model.genome, 64).params
    assert nnz < dense
    # The next generation inherits the masks: a dead synapse stays dead.
    child = synthesize(off.model, 0.95, torch.Generator().manual_seed(1), parent_masks=off.masks)
    assert child.masks is not None
    for k, mk in child.masks.items():
        assert (dict(child.model.named_parameters())[k][~mk] == 0).all()
    assert sparse_bytes(child.model, child.masks)[0] < nnz


@pytest.mark.parametrize("g", GENOMES, ids=lambda g: f"{g.name}-bn{int(g.batchnorm)}")
def test_expected_cost_of_certain_survival_is_the_profile(g):
    """The solver's expectation with every filter surely kept is the
    profile's count: one cost model (metrics.conv_cost) for both."""
    m = build(g)
    enc = encode(m)
    enc.probs = {n: torch.ones_like(p) for n, p in enc.probs.items()}
    prof = profile(g, 96)
    assert expected_params(g, enc, 1.0) == prof.params
    assert expected_macs(g, enc, 1.0, 96) == prof.macs
    widths = {u.module: float(u.cout) for u in g.units() if u.removable}
    assert conv_cost(g.units(96), widths) == (prof.params, prof.macs)


def test_mac_weights_press_hardest_on_high_resolution_layers():
    g = get_genome("squeezenet1_1", 10, batchnorm=True)
    assert set(mac_weights(g, 64, 0.0).values()) == {1.0}
    w = mac_weights(g, 64, 1.0)
    assert math.prod(w.values()) == pytest.approx(1.0)  # normalised by the geometric mean
    # conv1 (31x31 outputs at 64 px) and Fire2 (15x15) buy more MACs per
    # parameter than Fire9 (3x3): harsher environment, higher sharpness.
    assert w["conv1"] > w["fires.0.expand3x3"] > w["fires.7.expand3x3"]
    assert w["fires.1.squeeze"] > w["fires.7.squeeze"]
    w2 = mac_weights(g, 64, 2.0)
    assert all(w2[n] == pytest.approx(w[n] ** 2) for n in w)


def test_mac_target_moves_removal_to_where_compute_is():
    g = get_genome("squeezenet1_1", 10, batchnorm=True)
    m = _trained_like(g)
    prof = profile(g, 64)
    want = 0.6 * prof.params
    plain = solve_environment(m, want, image_size=64)
    macs_plain = expected_macs(g, encode(m, plain.sharpness), plain.factor, 64)
    # A MAC target the size target alone already meets leaves the papers' rule.
    same = solve_environment(m, want, target_macs=1.01 * macs_plain, image_size=64)
    assert same.pressure == 0 and same.weights is None
    goal = 0.8 * macs_plain
    env = solve_environment(m, want, target_macs=goal, image_size=64)
    enc = encode(m, env.sharpness, weights=env.weights)
    assert env.pressure > 0
    assert expected_params(g, enc, env.factor) == pytest.approx(want, rel=1e-3)  # the same size...
    assert expected_macs(g, enc, env.factor, 64) <= goal * 1.001  # ...at the MACs asked
    # Drawn offspring follow: fewer MACs at about the same size.
    gen = torch.Generator().manual_seed(0)
    a = [profile(synthesize(m, plain.factor, gen, sharpness=plain.sharpness).model.genome, 64) for _ in range(6)]
    b = [profile(synthesize(m, env.factor, gen, encoding=enc).model.genome, 64) for _ in range(6)]
    assert sum(p.macs for p in b) < 0.9 * sum(p.macs for p in a)
    assert sum(p.params for p in b) == pytest.approx(sum(p.params for p in a), rel=0.1)
    # Out of reach: the strongest pressure, and the solver says so by its value.
    far = solve_environment(m, want, target_macs=0.01 * macs_plain, image_size=64, max_pressure=4.0)
    assert far.pressure == 4.0


@pytest.mark.parametrize("mean_keep,divisor", [(0.15, 16), (0.35, 16), (0.6, 16), (0.35, 8), (0.5, 1)])
def test_expected_width_includes_floor_and_rounding(mean_keep, divisor):
    """The solver's expected width matches the average width round_keep gives
    over many draws, floors and rounding included (within 3%)."""
    gen = torch.Generator().manual_seed(0)
    q = (torch.rand(64, generator=gen) * 2 * mean_keep).clamp(0, 1)
    widths = [len(round_keep(sample_clusters(q, 1.0, gen), q, 1, divisor)) for _ in range(3000)]
    assert _expected_width(q, 1, divisor) == pytest.approx(sum(widths) / len(widths), rel=0.03)
    if divisor > 1:  # the naive mean misses the floor where few filters survive
        naive = float(q.sum())
        assert mean_keep > 0.2 or abs(_expected_width(q, 1, divisor) - naive) > 3


def test_round_keep_keeps_round_width_filters():
    """round_keep and the solver's expectation share genome.round_width."""
    gen = torch.Generator().manual_seed(2)
    for _ in range(200):
        n = int(torch.randint(1, 70, (1,), generator=gen))
        p = torch.rand(n, generator=gen)
        alive = torch.rand(n, generator=gen) < 0.4
        for min_width, divisor in ((1, 1), (3, 1), (1, 8), (8, 16), (20, 16)):
            k = round_keep(alive, p, min_width, divisor)
            assert len(k) == round_width(int(alive.sum()), divisor, min_width, n)
            assert len(set(k.tolist())) == len(k)


def test_synthesis_options_and_keywords_agree():
    g = get_genome("squeezenet1_1", 10, batchnorm=True)
    m = _trained_like(g)
    a = synthesize(m, 0.8, torch.Generator().manual_seed(4), SynthesisOptions(divisor=8, min_width=4), name="x")
    b = synthesize(m, 0.8, torch.Generator().manual_seed(4), divisor=8, min_width=4, name="x")
    c = synthesize(m, 0.8, torch.Generator().manual_seed(4), SynthesisOptions(divisor=16, min_width=4), divisor=8)
    assert a.keep == b.keep == c.keep and a.model.genome == b.model.genome
    with pytest.raises(TypeError, match="divisr"):
        synthesize(m, 0.8, torch.Generator(), divisr=8)
    with pytest.raises(ValueError, match="init must be"):
        synthesize(m, 0.8, torch.Generator(), init="random")
