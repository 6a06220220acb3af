"""95% bootstrap intervals of the paper's metrics over the generated clips (the held-out pieces).

A table of FIDs from 40 dances is one draw: a different 40 pieces of music would give other
numbers. The percentile bootstrap says how different: draw the clips with replacement (as many
as there are), score the draw against the same ground truth, repeat `resamples` times (seeded) and
report the 2.5th and 97.5th percentiles of each metric. The ground truth (its normalisation and
covariance) stays fixed: the interval is about the pieces scored, not about the reference.

Each draw is scored exactly as the protocol scores all clips, with two faster and equal
computations: tr sqrtm(S1 S2) = sum of sqrt(eigenvalues of R S1 R), R = S2^(1/2) computed once
(the two agree with `scores.frechet_distance` to ~1e-8 relative), and Div from the clips' distance
matrix computed once. A draw holding a clip twice has a zero distance between the copies, as
recomputing Div on it would; so Div's interval sits slightly (about 1/N) below the point estimate,
and FID's slightly above it (a draw has fewer distinct clips). Metrics a draw cannot give (BAS of
clips without beats) are left out of that draw.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial.distance import pdist, squareform
from threadpoolctl import threadpool_limits

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95


def bootstrap_indices(size: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, size) indices drawn with replacement from range(size), seeded."""
    if size < 2 or resamples < 1:
        raise ValueError(f"the bootstrap needs at least 2 items and 1 resample, got {size} and {resamples}")
    return np.random.default_rng(seed).integers(0, size, size=(resamples, size))


def percentile_interval(values: np.ndarray, level: float = DEFAULT_LEVEL) -> list[float]:
    """[low, high]: the (1 - level) / 2 and (1 + level) / 2 quantiles of a statistic's bootstrap values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    low, high = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return [float(low), float(high)]


def bootstrap_interval(statistic: Callable[[np.ndarray], float], size: int, resamples: int = DEFAULT_RESAMPLES,
                       seed: int = 0, level: float = DEFAULT_LEVEL) -> list[float]:  # fmt: skip
    """The percentile interval of `statistic(indices)` over `resamples` draws of `size` indices with replacement."""
    return percentile_interval(np.array([statistic(rows) for rows in bootstrap_indices(size, resamples, seed)]), level)


class FrechetToReference:
    """FID of feature sets against one fixed (normalised) reference set, the reference's half prepared once."""

    def __init__(self, reference: np.ndarray):
        reference = np.asarray(reference, dtype=np.float64)
        self.mean = reference.mean(axis=0)
        self.covariance = np.atleast_2d(np.cov(reference, rowvar=False))
        eigenvalues, eigenvectors = np.linalg.eigh(self.covariance)
        self.root = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T

    def __call__(self, features: np.ndarray) -> float:
        return float(self.of_draws(features, np.arange(len(features))[None])[0])

    def of_draws(self, features: np.ndarray, draws: np.ndarray, chunk: int = 200) -> np.ndarray:
        """FID of `features[rows]` for every row of `draws` (B, N), a chunk of draws at a time."""
        features = np.asarray(features, dtype=np.float64)
        distances = []
        for start in range(0, len(draws), chunk):
            drawn = features[draws[start : start + chunk]]  # (b, N, D)
            centred = drawn - drawn.mean(axis=1, keepdims=True)
            covariance = np.swapaxes(centred, 1, 2) @ centred / (drawn.shape[1] - 1)  # np.cov, one per draw
            product = np.linalg.eigvalsh(self.root @ covariance @ self.root)
            difference = drawn.mean(axis=1) - self.mean
            trace_root = np.sqrt(np.clip(product, 0.0, None)).sum(axis=-1)
            traces = np.trace(covariance, axis1=1, axis2=2)
            distances.append((difference**2).sum(-1) + traces + np.trace(self.covariance) - 2.0 * trace_root)
        return np.concatenate(distances)


def metric_intervals(
    candidates: dict[str, np.ndarray],
    references: dict[str, np.ndarray],
    beat_align: np.ndarray | None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, list[float] | None]:
    """Intervals of FID_k, FID_g, Div_k, Div_g and BAS over the generated clips.

    candidates / references: kind ("k", "g") -> the normalised (N, D) generated and (M, D) ground-truth
    features; beat_align: (N,) per-clip BAS (NaN: clip left out) or None (no BAS interval).
    """
    size = len(next(iter(candidates.values())))
    draws = bootstrap_indices(size, resamples, seed)
    intervals: dict[str, list[float] | None] = {}
    with threadpool_limits(limits=1, user_api="blas"):  # thousands of 72 x 72 problems: threads only wait on each other
        for kind, features in candidates.items():
            frechet = FrechetToReference(references[kind])
            distances = squareform(pdist(np.asarray(features, dtype=np.float64)))
            pairs = size * (size - 1)
            intervals[f"FID_{kind}"] = percentile_interval(frechet.of_draws(features, draws), level)
            intervals[f"Div_{kind}"] = percentile_interval(np.array([distances[np.ix_(rows, rows)].sum() / pairs for rows in draws]), level)
    if beat_align is None or np.isnan(beat_align).all():
        intervals["BAS"] = None
    else:
        with np.errstate(invalid="ignore"):
            kept = ~np.isnan(beat_align[draws])
            means = np.where(kept.any(axis=1), np.nansum(beat_align[draws], axis=1) / np.maximum(kept.sum(axis=1), 1), np.nan)
        intervals["BAS"] = percentile_interval(means, level)
    return {key: intervals[key] for key in ("FID_k", "FID_g", "Div_k", "Div_g", "BAS")}


__all__ = [
    "DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "FrechetToReference", "bootstrap_indices", "bootstrap_interval",
    "metric_intervals", "percentile_interval",
]  # fmt: skip
