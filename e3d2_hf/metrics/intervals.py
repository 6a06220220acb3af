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
recomputing Div on it would; so Div's interval sits slightly (about 1/N) below the point estimate.
FID's sits above it: a draw holds only about 63 % distinct clips, and fewer distinct clips are
farther from any reference. Where the FID itself is near 0 (the ground truth's own pieces, which
are part of the reference), the whole interval can lie above it: read its width, not its place.
BAS of clips without beats is left out of a draw, as of the point estimate.

Two rows that score the same pieces (Table 1's) are drawn alike, clip for clip (the same seed), so
`paired_interval` gives the interval of their difference, in which the pieces' own variation cancels.
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


INTERVAL_METRICS = ("FID_k", "FID_g", "Div_k", "Div_g", "BAS")


def metric_draws(
    candidates: dict[str, np.ndarray],
    references: dict[str, np.ndarray],
    beat_align: np.ndarray | None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, np.ndarray | None]:
    """FID_k, FID_g, Div_k, Div_g and BAS of each of `resamples` draws (seeded) of the generated clips.

    candidates / references: kind ("k", "g") -> the normalised (N, D) generated and (M, D) ground-truth
    features; beat_align: (N,) per-clip BAS (NaN: clip left out) or None (BAS: None). Two sets of N
    clips drawn with the same seed are drawn alike, clip for clip: their draws pair up (`paired_interval`).
    """
    size = len(next(iter(candidates.values())))
    draws = bootstrap_indices(size, resamples, seed)
    values: dict[str, np.ndarray | None] = {}
    with threadpool_limits(limits=1, user_api="blas"):  # thousands of 72 x 72 problems: threads only wait on each other
        for kind, features in candidates.items():
            distances = squareform(pdist(np.asarray(features, dtype=np.float64)))
            values[f"FID_{kind}"] = FrechetToReference(references[kind]).of_draws(features, draws)
            values[f"Div_{kind}"] = np.array([distances[np.ix_(rows, rows)].sum() for rows in draws]) / (size * (size - 1))
    if beat_align is None or np.isnan(beat_align).all():
        values["BAS"] = None
    else:
        drawn = beat_align[draws]
        kept = ~np.isnan(drawn)
        values["BAS"] = np.where(kept.any(axis=1), np.nansum(drawn, axis=1) / np.maximum(kept.sum(axis=1), 1), np.nan)
    return {key: values[key] for key in INTERVAL_METRICS if key in values}


def metric_intervals(draws: dict[str, np.ndarray | None], level: float = DEFAULT_LEVEL) -> dict[str, list[float] | None]:
    """The percentile interval of each metric's draws (`metric_draws`)."""
    return {key: None if values is None else percentile_interval(values, level) for key, values in draws.items()}


def paired_interval(draws: dict[str, np.ndarray | None], baseline: dict[str, np.ndarray | None], level: float = DEFAULT_LEVEL) -> dict[str, list[float] | None]:
    """The interval of (metric - baseline's metric) over paired draws: the same pieces, drawn alike for both.

    Both sets score the same pieces, so most of what the pieces add to either cancels: an interval
    that excludes 0 is a difference beyond the noise of which pieces were scored.
    """
    return {
        key: None if values is None or baseline.get(key) is None else percentile_interval(values - baseline[key], level)
        for key, values in draws.items()
    }


__all__ = [
    "DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "FrechetToReference", "bootstrap_indices", "bootstrap_interval",
    "INTERVAL_METRICS", "metric_draws", "metric_intervals", "paired_interval", "percentile_interval",
]  # fmt: skip
