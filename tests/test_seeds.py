import itertools

from squishednets.seeds import derive_seed, epoch_seeds, offspring_seed


def test_seeds_reproduce_the_formulas_runs_were_made_with():
    """Earlier runs drew with these formulas; a resumed or repeated run must too."""
    for seed, g, k in itertools.product((0, 1, 5, 123), range(16), range(8)):
        assert offspring_seed(seed, g, k) == seed * 1_000_003 + g * 1_009 + k
    for seed, epoch in itertools.product((0, 1, 5, 123), range(200)):
        assert epoch_seeds(seed, epoch) == (seed * 100_003 + epoch, seed * 1_000_003 + epoch)
    assert derive_seed(7) == 7 * 1_000_003 and derive_seed(7, (1_009, 2), (1, 3)) == offspring_seed(7, 2, 3)
