"""Bootstrap intervals: a case with a known answer, the fast FID equal to the protocol's, and the intervals of a table."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from e3d2_hf.metrics import MetricWarning, evaluate_dances, frechet_distance
from e3d2_hf.metrics.intervals import FrechetToReference, bootstrap_indices, bootstrap_interval, metric_draws, metric_intervals, paired_interval
from e3d2_hf.metrics.reference import random_dance


def test_the_bootstrap_of_a_mean_is_the_normal_interval():
    """For the mean of n draws of N(mu, s^2), the 95% interval is mean +- 1.96 s / sqrt(n)."""
    values = np.random.default_rng(0).normal(3.0, 2.0, 400)
    low, high = bootstrap_interval(lambda rows: values[rows].mean(), len(values), resamples=4000, seed=1)
    half_width = 1.96 * values.std() / np.sqrt(len(values))
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.08)
    assert (low + high) / 2 == pytest.approx(values.mean(), abs=0.1 * half_width)
    assert bootstrap_interval(lambda rows: values[rows].mean(), len(values), resamples=4000, seed=1) == [low, high]  # seeded
    with pytest.raises(ValueError, match="at least 2 items"):
        bootstrap_indices(1, 10, 0)


@pytest.mark.parametrize("generated_count, reference_count, dim", [(44, 68, 72), (200, 300, 32), (10, 68, 72)])
def test_the_fast_frechet_distance_is_the_protocols(generated_count, reference_count, dim):
    rng = np.random.default_rng(dim + generated_count)
    reference = rng.standard_normal((reference_count, dim)) @ rng.standard_normal((dim, dim)) * 0.3
    generated = rng.standard_normal((generated_count, dim)) @ rng.standard_normal((dim, dim)) * 0.3 + 0.2
    assert FrechetToReference(reference)(generated) == pytest.approx(frechet_distance(generated, reference), rel=1e-6)


def test_div_intervals_are_those_of_the_recomputed_draws():
    rng = np.random.default_rng(2)
    candidates = {"k": rng.standard_normal((12, 5)), "g": rng.standard_normal((12, 3))}
    references = {"k": rng.standard_normal((30, 5)), "g": rng.standard_normal((30, 3))}
    intervals = metric_intervals(metric_draws(candidates, references, None, resamples=300, seed=3))
    draws = bootstrap_indices(12, 300, 3)
    recomputed = np.quantile([pdist(candidates["k"][rows]).mean() for rows in draws], [0.025, 0.975])
    np.testing.assert_allclose(intervals["Div_k"], recomputed, rtol=1e-12)
    fids = np.quantile([frechet_distance(candidates["g"][rows], references["g"]) for rows in draws], [0.025, 0.975])
    np.testing.assert_allclose(intervals["FID_g"], fids, rtol=1e-6)
    assert intervals["BAS"] is None


def _dances(seed: int, count: int, frames: int = 150) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"clip{index}": random_dance(rng, frames, wobble=0.02) for index in range(count)}


def _beats(dances: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.arange(10 + index, len(joints) - 1, 30) for index, (name, joints) in enumerate(dances.items())}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E3D2_CACHE", str(tmp_path / "cache"))


def test_a_table_row_gets_an_interval_per_metric_and_more_clips_narrow_it():
    truth = _dances(4, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # random dances: some relations never hold
        few, many = _dances(5, 8), _dances(6, 64)
        small = evaluate_dances(few, truth, _beats(few), intervals=1000, seed=0)
        large = evaluate_dances(many, truth, _beats(many), intervals=1000, seed=0)
        again = evaluate_dances(few, truth, _beats(few), intervals=1000, seed=0)
    assert set(small["ci95"]) == {"FID_k", "FID_g", "Div_k", "Div_g", "BAS"} and small["ci95"] == again["ci95"]
    for key, (low, high) in small["ci95"].items():
        assert low < high, key
        assert large["ci95"][key][1] - large["ci95"][key][0] < high - low, key
    low, high = large["ci95"]["BAS"]
    assert low < large["BAS"] < high  # a mean: its interval surrounds it


def test_identical_clips_have_intervals_of_zero_width():
    clip = next(iter(_dances(7, 1).values()))
    copies = {f"copy{index}": clip for index in range(6)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        results = evaluate_dances(copies, _dances(8, 20), _beats(copies), intervals=200)
    assert results["ci95"]["Div_k"] == [0.0, 0.0] and results["ci95"]["Div_g"] == [0.0, 0.0]
    assert results["ci95"]["BAS"][1] - results["ci95"]["BAS"][0] < 0.2  # the clips differ only in their beats' phase


def test_paired_intervals_cancel_what_the_pieces_share():
    """Two sets scoring the same pieces, the second each first shifted (by 1 per feature) and jittered:
    the paired FID difference excludes 0, the paired Div difference (the shift leaves distances alone)
    is far narrower than either Div interval, and identical sets differ by exactly 0."""
    rng = np.random.default_rng(9)
    pieces = rng.standard_normal((40, 6)) * 2.0
    references = {"k": rng.standard_normal((60, 6)) * 2.0}
    first, second = {"k": pieces}, {"k": pieces + 1.0 + 0.05 * rng.standard_normal((40, 6))}
    beats_first, beats_second = rng.uniform(0.2, 0.8, 40), None
    draws_first = metric_draws(first, references, beats_first, resamples=500, seed=4)
    draws_second = metric_draws(second, references, beats_first + 0.01, resamples=500, seed=4)
    assert paired_interval(draws_first, draws_first)["FID_k"] == [0.0, 0.0]
    paired = paired_interval(draws_second, draws_first)
    assert 0.0 < paired["FID_k"][0] < paired["FID_k"][1]
    assert paired["Div_k"][0] < 0.0 < paired["Div_k"][1] and np.diff(paired["Div_k"])[0] < 0.1 * np.diff(metric_intervals(draws_first)["Div_k"])[0]
    assert paired_interval(draws_second, draws_first)["BAS"] == pytest.approx([0.01, 0.01])
    assert paired_interval(metric_draws(second, references, beats_second, resamples=500, seed=4), draws_first)["BAS"] is None
