"""core/stats.py: the rank check's verdict follows the evidence: a clear ranking over enough
paths ranks, a reversed one does not, a perfect ranking over too few paths is inconclusive, and
the bootstrap interval widens when the accuracies are close compared with the image noise."""
from __future__ import annotations

import numpy as np
import pytest

from core.stats import DOES_NOT_RANK, INCONCLUSIVE, RANKS, rank_agreement, verdict


def _hits(accuracies: list[float], images: int, seed: int) -> np.ndarray:
    """(paths, images) 0/1 draws with the given expected accuracies."""
    rng = np.random.default_rng(seed)
    return (rng.random((len(accuracies), images)) < np.asarray(accuracies)[:, None]).astype(np.uint8)


def test_clear_ranking_over_ten_paths_ranks() -> None:
    acc = list(np.linspace(0.3, 0.9, 10))
    a = rank_agreement(_hits(acc, 450, 0), _hits(acc, 450, 1), resamples=300, seed=0)
    assert a.verdict == RANKS and a.tau > 0.6 and a.p_value < 0.01 and 0 < a.ci_low <= a.tau <= a.ci_high
    assert (a.n, a.images) == (10, 450)


def test_reversed_ranking_does_not_rank() -> None:
    acc = list(np.linspace(0.3, 0.9, 10))
    a = rank_agreement(_hits(acc, 450, 0), _hits(acc[::-1], 450, 1), resamples=300, seed=0)
    assert a.verdict == DOES_NOT_RANK and a.tau < -0.6 and a.ci_high < 0


def test_perfect_ranking_of_four_paths_is_inconclusive() -> None:
    """Kendall's exact p for tau = 1 over 4 paths is 2/4! = 0.083: not significant."""
    hits = np.zeros((4, 100), dtype=np.uint8)
    for i in range(4):
        hits[i, : 20 * (i + 1)] = 1
    a = rank_agreement(hits, hits.copy(), resamples=200, seed=0)
    assert a.tau == 1 and a.p_value == pytest.approx(2 / 24) and a.verdict == INCONCLUSIVE


def test_interval_is_wider_when_accuracies_are_close() -> None:
    far = list(np.linspace(0.3, 0.9, 8))
    near = list(np.linspace(0.58, 0.62, 8))
    wide = rank_agreement(_hits(near, 300, 0), _hits(near, 300, 1), resamples=300, seed=0)
    tight = rank_agreement(_hits(far, 300, 0), _hits(far, 300, 1), resamples=300, seed=0)
    assert (wide.ci_high - wide.ci_low) > 2 * (tight.ci_high - tight.ci_low)


def test_constant_scoring_is_inconclusive_not_an_error() -> None:
    hits = _hits([0.5] * 5, 50, 0)
    a = rank_agreement(hits, np.ones_like(hits), resamples=50)
    assert a.tau is None and a.verdict == INCONCLUSIVE and "undefined" in a.describe()
    assert verdict(None, None, None, None) == INCONCLUSIVE


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="paths, images"):
        rank_agreement(np.zeros((3, 10)), np.zeros((3, 11)))
