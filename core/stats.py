"""Is a ranking signal or noise? Kendall's tau between two scorings of the same architectures,
with its p-value (how likely so strong an agreement is among this few architectures by chance)
and a paired bootstrap confidence interval over the evaluation images (how much the accuracies
themselves would move on other images), and a verdict word a user can act on. Plain numpy/scipy."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import kendalltau

ALPHA = 0.05
# Below this even the optimistic end of the interval is too weak a ranking to search with
# (published one-shot supernets reach about 0.5 on NAS-Bench-201).
USEFUL_TAU = 0.3
RANKS, DOES_NOT_RANK, INCONCLUSIVE = "ranks", "does not rank", "inconclusive"


@dataclass(frozen=True)
class RankAgreement:
    tau: float | None          # None: a scoring was constant
    p_value: float | None
    ci_low: float | None       # bootstrap percentile interval, 1 - ALPHA
    ci_high: float | None
    verdict: str
    n: int                     # architectures
    images: int                # evaluation images each accuracy is over

    def describe(self) -> str:
        if self.tau is None:
            return f"tau undefined (a constant scoring over {self.n} paths): {self.verdict}"
        return (f"tau {self.tau:+.2f} (p {self.p_value:.3g}, {100 * (1 - ALPHA):.0f}% CI "
                f"{self.ci_low:+.2f}..{self.ci_high:+.2f}; {self.n} paths, {self.images} images): {self.verdict}")


def _tau(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    result = kendalltau(x, y)
    tau, p = float(result.statistic), float(result.pvalue)
    return (None, None) if tau != tau else (tau, p)


def verdict(tau: float | None, p_value: float | None, ci_low: float | None, ci_high: float | None) -> str:
    """ranks: positive, significant and the interval above 0; does not rank: even the interval's
    upper end is below USEFUL_TAU; inconclusive: anything between (more paths or images needed)."""
    if tau is None or p_value is None or ci_low is None or ci_high is None:
        return INCONCLUSIVE
    if tau > 0 and p_value < ALPHA and ci_low > 0:
        return RANKS
    if ci_high < USEFUL_TAU:
        return DOES_NOT_RANK
    return INCONCLUSIVE


def rank_agreement(reference_hits: np.ndarray, candidate_hits: np.ndarray, resamples: int = 1000,
                   seed: int = 0) -> RankAgreement:
    """Kendall tau between the accuracies of two scorings of the same paths.

    `*_hits`: (paths, images) arrays of 1 where the path classified that image right, over the
    same images in the same order. The bootstrap resamples images (the same draw for every path
    and both scorings: paired), recomputes both sets of accuracies and tau; undefined taus
    (a constant resample) are left out of the interval."""
    ref, cand = np.asarray(reference_hits, dtype=float), np.asarray(candidate_hits, dtype=float)
    if ref.shape != cand.shape or ref.ndim != 2:
        raise ValueError(f"hits must be two (paths, images) arrays of one shape, got {ref.shape} and {cand.shape}")
    n, images = ref.shape
    tau, p = _tau(ref.mean(1), cand.mean(1))
    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(resamples):
        pick = rng.integers(0, images, images)
        t, _ = _tau(ref[:, pick].mean(1), cand[:, pick].mean(1))
        if t is not None:
            taus.append(t)
    low, high = ((float(np.quantile(taus, ALPHA / 2)), float(np.quantile(taus, 1 - ALPHA / 2)))
                 if taus and tau is not None else (None, None))
    return RankAgreement(tau, p, low, high, verdict(tau, p, low, high), n, images)
