"""Seeds derived from a run's seed: one formula, so that every random draw of
a run (an epoch's shuffling and augmentation, an offspring's sampling) is a
pure function of (seed, position) and an interrupted run resumed later draws
the same numbers as an uninterrupted one."""

from __future__ import annotations

__all__ = ["derive_seed", "epoch_seeds", "offspring_seed"]

# Distinct primes keep the streams of different positions apart.
_P_EPOCH_TORCH = 100_003
_P_BASE = 1_000_003
_P_GENERATION = 1_009


def derive_seed(seed: int, *terms: tuple[int, int]) -> int:
    """``seed * P + sum(multiplier * value)`` for (multiplier, value) terms, P = 1,000,003."""
    return seed * _P_BASE + sum(m * v for m, v in terms)


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int]:
    """(global torch seed for dropout, generator seed for shuffling and augmentation) of one epoch."""
    return seed * _P_EPOCH_TORCH + epoch, derive_seed(seed, (1, epoch))


def offspring_seed(seed: int, generation: int, candidate: int) -> int:
    """The seed of candidate ``candidate`` of generation ``generation``."""
    return derive_seed(seed, (_P_GENERATION, generation), (1, candidate))
