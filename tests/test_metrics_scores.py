"""FID, diversity, beat align score, PFC and the evaluation protocol: hand-computable cases,
symmetries, and every bad input ending in an error or a documented warning, never a NaN."""

import math
import re
import warnings

import numpy as np
import pytest
import scipy.linalg

from e3d2_hf.metrics import (
    MetricWarning,
    average_pairwise_distance,
    beat_align_score,
    constant_features,
    evaluate_dances,
    frechet_distance,
    ground_truth_features,
    kinematic_beats,
    physical_foot_contact,
)
from e3d2_hf.metrics.protocol import beat_frame_indices, generated_protocol_clip, resample_to_protocol_fps
from e3d2_hf.metrics.reference import random_dance
from e3d2_hf.metrics.scores import normalise_by_ground_truth
from e3d2_hf.motion.skeleton import rest_joints
from e3d2_hf.utils import E3D2Error


pytestmark = pytest.mark.filterwarnings("ignore::e3d2_hf.metrics.MetricWarning")  # tiny random sets; tested explicitly


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E3D2_CACHE", str(tmp_path / "cache"))


def _swaying_dance(num_frames: int, period: int = 40, phase: int = 0) -> np.ndarray:
    """Every joint circles (radius 0.5 m) at a speed that dips once per `period` frames.

    Per-frame angle steps 0.05 + 0.02 cos(2 pi (t - phase) / period): the mean joint speed has its
    strict minima at t = phase + period / 2 + k period, before and after smoothing (symmetry).
    """
    steps = 0.05 + 0.02 * np.cos(2 * np.pi * (np.arange(num_frames - 1) - phase) / period)
    angle = np.concatenate([[0.0], np.cumsum(steps)])
    offset = 0.5 * np.stack([np.cos(angle), np.zeros_like(angle), np.sin(angle)], axis=1)
    return (rest_joints("male")[None] + offset[:, None, :]).astype(np.float32)


def _sway_minima(num_frames: int, period: int = 40, phase: int = 0, margin: int = 25) -> np.ndarray:
    minima = np.arange(phase + period // 2, num_frames - 1, period)
    return minima[(minima >= margin) & (minima < num_frames - 1 - margin)]


# ---------------------------------------------------------------------------------------------
# FID and diversity
# ---------------------------------------------------------------------------------------------
def test_fid_of_identical_sets_is_zero_and_of_shifted_sets_is_the_squared_shift():
    features = np.random.default_rng(0).normal(size=(60, 8))
    assert abs(frechet_distance(features, features)) < 1e-6
    shift = np.array([1.0, -2.0, 0.5, 0, 0, 0, 0, 3.0])
    assert frechet_distance(features + shift, features) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_fid_is_symmetric_and_non_negative():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 6)), rng.normal(0.5, 2.0, size=(70, 6))
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    assert frechet_distance(a, b) > 0


def test_fid_falls_back_to_the_diagonal_offset_when_sqrtm_is_not_finite(monkeypatch):
    calls = []
    real_sqrtm = scipy.linalg.sqrtm

    def first_call_fails(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(scipy.linalg, "sqrtm", first_call_fails)
    features = np.random.default_rng(2).normal(size=(30, 4))
    with pytest.warns(MetricWarning, match="added 1e-05"):
        distance = frechet_distance(features, features)
    assert len(calls) == 2 and np.isfinite(distance)
    np.testing.assert_allclose(calls[1] - calls[1].T, 0, atol=1e-12)  # (S + eps I)(S + eps I)


def test_ground_truth_normalisation_uses_population_statistics():
    rng = np.random.default_rng(3)
    ground_truth, generated = rng.normal(5.0, 3.0, size=(50, 4)), rng.normal(size=(10, 4))
    normalised_truth, normalised_generated = normalise_by_ground_truth(ground_truth, generated)
    np.testing.assert_allclose(normalised_truth.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(normalised_truth.std(axis=0), 1, atol=1e-9)  # ddof = 0
    np.testing.assert_allclose(normalised_generated, (generated - ground_truth.mean(0)) / (ground_truth.std(0) + 1e-10))


def test_diversity_is_the_mean_pairwise_distance():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])  # pairs: 1, 3, 2
    assert average_pairwise_distance(points) == pytest.approx(2.0)
    assert average_pairwise_distance(points[::-1]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 2"):
        average_pairwise_distance(points[:1])


# ---------------------------------------------------------------------------------------------
# Beat align score
# ---------------------------------------------------------------------------------------------
def test_motion_minima_exactly_on_the_beats_score_one():
    dance = _swaying_dance(400)
    beats = _sway_minima(400)
    motion_beats = kinematic_beats(dance)
    assert set(beats) <= set(motion_beats)
    assert beat_align_score(beats, motion_beats) == pytest.approx(1.0)


def test_beat_offset_scores_the_gaussian_of_the_distance():
    assert beat_align_score([10, 50], [13, 47]) == pytest.approx(math.exp(-9 / 18))
    assert beat_align_score([10, 50], [10, 53]) == pytest.approx((1 + math.exp(-9 / 18)) / 2)
    assert beat_align_score([10, 50], []) == 0.0  # no kinematic beat: nothing is matched
    with pytest.raises(ValueError, match="at least one music beat"):
        beat_align_score([], [3])


def test_beat_tracks_one_hot_or_indices():
    one_hot = np.zeros(10)
    one_hot[[2, 7]] = 1
    assert beat_frame_indices(one_hot)[0].tolist() == [2, 7] and beat_frame_indices(one_hot)[1] == 10
    assert beat_frame_indices(one_hot.astype(bool))[0].tolist() == [2, 7]
    assert beat_frame_indices(np.array([7, 2, 40]))[0].tolist() == [2, 7, 40]
    with pytest.raises(E3D2Error, match="one-hot"):
        beat_frame_indices(np.array([0.5, 1.0]))
    with pytest.raises(E3D2Error, match="negative"):
        beat_frame_indices(np.array([-1, 4]))


# ---------------------------------------------------------------------------------------------
# PFC
# ---------------------------------------------------------------------------------------------
def test_pfc_of_sliding_feet_under_an_accelerating_root():
    frames = np.arange(50, dtype=np.float64)
    joints = np.zeros((50, 24, 3))
    joints[:, 0, 0] = 0.001 * frames**2  # constant horizontal root acceleration: normalised to 1
    slide = 0.01  # metres per frame, both feet, ankles and toes
    for joint in (7, 8, 10, 11):
        joints[:, joint, 2] = slide * frames
    assert physical_foot_contact(joints) == pytest.approx(slide * slide)
    joints[:, (7, 8, 10, 11), 1] += 0.3 * frames[:, None]  # vertical foot motion does not count
    assert physical_foot_contact(joints) == pytest.approx(slide * slide)
    joints[:, 10, 2] = 0.0  # one planted left toe: the left side is still
    assert physical_foot_contact(joints) == 0.0


def test_pfc_ignores_downward_root_acceleration_and_a_still_root():
    joints = np.zeros((30, 24, 3))
    joints[:, (7, 8, 10, 11), 0] = 0.01 * np.arange(30)[:, None]
    joints[:, 0, 1] = -0.001 * np.arange(30) ** 2  # falling: the up component is clamped at 0
    assert physical_foot_contact(joints) == 0.0
    joints[:, 0, 1] = 0.0
    assert physical_foot_contact(joints) == 0.0


# ---------------------------------------------------------------------------------------------
# The protocol (evaluate_dances)
# ---------------------------------------------------------------------------------------------
def _dance_set(seed: int, count: int, num_frames: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"clip{index}": random_dance(rng, num_frames, wobble=0.02) for index in range(count)}


def test_identical_sets_give_zero_fid_and_equal_diversity():
    dances = _dance_set(0, 6, 150)
    results = evaluate_dances(dances, dances)
    assert set(results) == {"FID_k", "FID_g", "Div_k", "Div_g", "BAS", "PFC", "Div_k_gt", "Div_g_gt"}
    assert abs(results["FID_k"]) < 1e-3 and abs(results["FID_g"]) < 1e-3
    assert results["Div_k"] == pytest.approx(results["Div_k_gt"]) and results["Div_g"] == pytest.approx(results["Div_g_gt"])
    assert results["BAS"] is None and np.isfinite(results["PFC"])


def test_generated_clips_are_cut_to_1200_frames_and_ground_truth_is_not():
    long_dances = _dance_set(1, 3, 1300)
    truth = _dance_set(2, 4, 200)
    cut = {name: joints[:1200] for name, joints in long_dances.items()}
    whole, first_20_seconds = evaluate_dances(long_dances, truth), evaluate_dances(cut, truth)
    assert {key: value for key, value in whole.items() if key != "PFC"} == {key: value for key, value in first_20_seconds.items() if key != "PFC"}
    # PFC is EDGE's: the whole clip, at 30 fps (every other frame of a 60 fps clip)
    assert whole["PFC"] == pytest.approx(np.mean([physical_foot_contact(joints[::2]) for joints in long_dances.values()]) * 1e4)
    assert whole["PFC"] != pytest.approx(first_20_seconds["PFC"])
    as_truth = ground_truth_features(long_dances)
    assert not np.allclose(as_truth.kinetic, ground_truth_features(cut).kinetic)
    assert len(generated_protocol_clip(long_dances["clip0"])) == 1200


def test_results_do_not_depend_on_clip_order_or_names():
    dances, truth = _dance_set(3, 4, 150), _dance_set(4, 5, 150)
    renamed = {f"other{index}": joints for index, joints in enumerate(reversed(list(dances.values())))}
    first, second = evaluate_dances(dances, truth), evaluate_dances(renamed, list(truth.values())[::-1])
    for key in ("FID_k", "FID_g", "Div_k", "Div_g", "PFC", "Div_k_gt", "Div_g_gt"):
        assert first[key] == pytest.approx(second[key], rel=1e-5)


def test_bas_of_dances_on_the_beat_is_one_and_off_beat_lower():
    dances = {f"sway{phase}": _swaying_dance(300, phase=phase) for phase in (0, 10)}
    truth = _dance_set(5, 4, 150)
    on_beat = {name: _sway_minima(300, phase=phase) for name, phase in zip(dances, (0, 10))}
    assert evaluate_dances(dances, truth, on_beat)["BAS"] == pytest.approx(1.0)
    off_beat = {name: beats + 3 for name, beats in on_beat.items()}
    assert evaluate_dances(dances, truth, off_beat)["BAS"] == pytest.approx(math.exp(-9 / 18), rel=1e-6)


def test_30fps_input_is_upsampled_to_60fps_with_its_beats():
    dance = _swaying_dance(301)
    half_rate = dance[::2]  # 151 frames at 30 fps
    upsampled = resample_to_protocol_fps(half_rate, 30.0)
    assert len(upsampled) == 301
    np.testing.assert_allclose(upsampled[1], (half_rate[0] + half_rate[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(upsampled[::2], half_rate)
    truth = _dance_set(6, 4, 150)
    beats_30 = {"a": _sway_minima(301) // 2, "b": _sway_minima(301) // 2}
    results = evaluate_dances({"a": half_rate, "b": half_rate}, truth, beats_30, fps=30.0)
    assert results["BAS"] > 0.9


def test_ground_truth_features_are_cached_by_content(tmp_path, monkeypatch):
    import e3d2_hf.metrics.protocol as protocol

    truth = _dance_set(7, 3, 120)
    first = ground_truth_features(truth)
    assert len(list((tmp_path / "cache" / "metrics").glob("*.npy"))) == 3
    computed = []
    real_kinetic = protocol.kinetic_features
    monkeypatch.setattr(protocol, "kinetic_features", lambda *a, **k: computed.append(1) or real_kinetic(*a, **k))
    again = ground_truth_features(truth)
    np.testing.assert_array_equal(again.kinetic, first.kinetic)
    assert computed == []
    ground_truth_features({"moved": truth["clip0"] + 1, **truth})  # another content: computed once
    assert computed == [1]
    (next((tmp_path / "cache" / "metrics").glob("*.npy"))).write_bytes(b"garbage")
    np.testing.assert_array_equal(ground_truth_features(truth).kinetic, first.kinetic)  # a broken entry is recomputed
    generated = _dance_set(8, 2, 120)
    assert evaluate_dances(generated, first) == evaluate_dances(generated, truth, cache_ground_truth=False)


@pytest.mark.parametrize(
    "generated, truth, message",
    [
        ({"only": np.zeros((50, 24, 3))}, None, "at least 2"),
        (None, {"only": np.zeros((50, 24, 3))}, "at least 2"),
        ({"a": np.zeros((50, 24, 2)), "b": np.zeros((50, 24, 3))}, None, "'a'.*shape"),
        ({"a": np.full((50, 24, 3), np.nan), "b": np.zeros((50, 24, 3))}, None, "'a'.*NaN"),
    ],
)
def test_bad_sets_raise(generated, truth, message):
    generated = generated if generated is not None else _dance_set(9, 2, 60)
    truth = truth if truth is not None else _dance_set(10, 3, 60)
    with pytest.raises(E3D2Error, match=message):
        evaluate_dances(generated, truth)


def test_bad_beats_raise_or_warn():
    dances, truth = {"a": _swaying_dance(200), "b": _swaying_dance(200, phase=5)}, _dance_set(11, 3, 100)
    with pytest.raises(E3D2Error, match="none given for 1 generated clip.*b"):
        evaluate_dances(dances, truth, {"a": _sway_minima(200)})
    short = {"a": _swaying_dance(30), "b": _swaying_dance(200)}
    with pytest.raises(E3D2Error, match="'a': 30 frames.*41-frame"):
        evaluate_dances(short, truth, {"a": [5], "b": [5]})
    track = np.zeros(120)
    track[_sway_minima(120)] = 1
    with pytest.warns(MetricWarning, match="beat track has 120 frames but the motion 200"):
        results = evaluate_dances(dances, truth, {"a": track, "b": track})
    assert np.isfinite(results["BAS"])
    with pytest.warns(MetricWarning, match="no music beat inside the clip"):
        results = evaluate_dances(dances, truth, {"a": np.array([500]), "b": _sway_minima(200, phase=5)})
    assert results["BAS"] == pytest.approx(1.0)  # only b counts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        assert evaluate_dances(dances, truth, {"a": np.array([500]), "b": np.array([900])})["BAS"] is None


def test_a_motionless_clip_scores_bas_zero_with_a_warning():
    still = np.repeat(rest_joints("male")[None], 100, axis=0)
    with pytest.warns(MetricWarning, match="no kinematic beat"):
        results = evaluate_dances({"still": still, "sway": _swaying_dance(100)}, _dance_set(12, 3, 100),
                                  {"still": [40], "sway": _sway_minima(100, margin=25)})  # fmt: skip
    assert results["BAS"] == pytest.approx(0.5)


def test_a_feature_constant_over_the_ground_truth_is_warned():
    still = {f"still{index}": np.repeat(rest_joints("male")[None] + index * 0.01, 60, axis=0) for index in range(3)}
    with pytest.warns(MetricWarning) as caught:
        results = evaluate_dances(_dance_set(13, 2, 60), still)
    messages = [str(warning.message) for warning in caught]
    assert any(re.search(r"ground truth: 93 feature\(s\) have zero variance over its 3 clips: kinetic 0 \(pelvis horizontal "
                         r"kinetic energy\), .* and 81 more; FID and Div are computed as the protocol does", m) for m in messages)
    assert any(re.search(r"FID / Div: feature\(s\) kinetic 0 .*magnifies them 1e10", m) for m in messages)
    assert results["FID_g"] > 1e10  # the reference's number, explained by the warnings


def test_rigid_ground_truth_is_warned():
    """A rigid body gliding (no joint moves against another) leaves relations such as the elbow angle constant."""
    glide = {f"glide{index}": rest_joints("male")[None] + np.linspace(0, 0.5 + 0.1 * index, 90)[:, None, None] * [1.0, 0.0, 0.0]
             for index in range(4)}  # fmt: skip
    with pytest.warns(MetricWarning, match=r"56 feature\(s\) have zero variance over its 4 clips: kinetic 1 \(pelvis vertical kinetic"):
        features = ground_truth_features(glide)
    assert "manual 6 (angle relbow rshoulder relbow rwrist)" in constant_features(features)
