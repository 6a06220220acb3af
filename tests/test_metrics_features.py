"""Kinetic and manual motion features: hand-computable cases, the reference's quirks, invariances,
and the vectorised features against the per-frame implementation."""

import json
from pathlib import Path

import numpy as np
import pytest

from e3d2_hf.metrics import kinetic_features, manual_features
from e3d2_hf.metrics.features import HIP_WIDTH, HUMERUS_LENGTH, MANUAL_FEATURES, SHOULDER_WIDTH, validate_joints
from e3d2_hf.metrics.protocol import generated_protocol_clip
from e3d2_hf.metrics.reference import kinetic_features_per_frame, manual_features_per_frame, random_dance
from e3d2_hf.motion.skeleton import rest_joints
from e3d2_hf.utils import E3D2Error

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FEATURE_INDEX = {(f.relation, " ".join(f.points)): index for index, f in enumerate(MANUAL_FEATURES)}


def _static_rest_pose(num_frames: int = 10) -> np.ndarray:
    return np.repeat(rest_joints("male")[None], num_frames, axis=0).astype(np.float32)


def _yaw(joints: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return (joints.astype(np.float64) @ rotation.T).astype(np.float32)


def test_threshold_units_are_the_reference_constants():
    assert round(HUMERUS_LENGTH, 5) == 0.25684
    assert round(SHOULDER_WIDTH, 5) == 0.39085
    assert round(HIP_WIDTH, 5) == 0.11925


def test_threshold_units_match_the_shared_rest_skeleton():
    path = SHARED_DATA / "smpl" / "smpl24_rest_skeleton.json"
    if not path.is_file():
        pytest.skip(f"{path} absent (shared data not checked out beside the project)")
    rest = np.array(json.loads(path.read_text())["male_rest_joints_abs_m"])
    # lshoulder-lelbow, lshoulder-rshoulder, lhip-rhip (SMPL joints 16, 18, 17, 1, 2)
    assert np.linalg.norm(rest[16] - rest[18]) == pytest.approx(HUMERUS_LENGTH, abs=1e-7)
    assert np.linalg.norm(rest[16] - rest[17]) == pytest.approx(SHOULDER_WIDTH, abs=1e-7)
    assert np.linalg.norm(rest[1] - rest[2]) == pytest.approx(HIP_WIDTH, abs=1e-7)


def test_constant_velocity_gives_known_kinetic_energy():
    velocity = np.array([0.6, -0.3, 0.8])  # m/s
    frames = np.arange(90)[:, None, None] / 60.0
    joints = (np.zeros((1, 24, 3)) + frames * velocity).astype(np.float64)
    features = kinetic_features(joints, corrected=True).reshape(24, 3)
    np.testing.assert_allclose(features[:, 0], velocity[0] ** 2 + velocity[2] ** 2, rtol=1e-6)  # horizontal: x, z
    np.testing.assert_allclose(features[:, 1], velocity[1] ** 2, rtol=1e-6)  # vertical: y
    np.testing.assert_allclose(features[:, 2], 0.0, atol=1e-6)  # no acceleration


def test_acceleration_precedence_quirk_on_a_static_pose():
    # v1 = p - p / (1/60) = -59 p, v2 = 0: every acceleration term is 59 * 60 * p, so the
    # "energy expenditure" of a still joint is 3540 |p| (its distance from the origin).
    joints = _static_rest_pose()
    quirky = kinetic_features(joints).reshape(24, 3)
    np.testing.assert_allclose(quirky[:, 2], 3540.0 * np.linalg.norm(rest_joints("male"), axis=1), rtol=1e-6)
    np.testing.assert_allclose(quirky[:, :2], 0.0, atol=0)
    np.testing.assert_allclose(kinetic_features(joints, corrected=True), 0.0, atol=0)


def test_manual_relations_on_the_rest_pose():
    features = manual_features(_static_rest_pose())
    assert features[FEATURE_INDEX[("nplane", "lshoulder rshoulder lwrist rwrist")]] == 1.0  # T-pose: hands apart
    assert features[FEATURE_INDEX[("angle", "neck root rshoulder relbow")]] == 1.0  # arms raised sideways
    assert features[FEATURE_INDEX[("angle", "neck root lshoulder lelbow")]] == 1.0
    assert features[FEATURE_INDEX[("angle", "relbow rshoulder relbow rwrist")]] == 0.0  # elbows straight
    assert features[FEATURE_INDEX[("angle", "rknee rhip rknee rankle")]] == 0.0  # knees straight
    assert features[FEATURE_INDEX[("angle", "neck root zero y_unit")]] == 0.0  # torso upright, not horizontal
    assert features[FEATURE_INDEX[("nplane", "zero y_unit y_min rankle")]] == 0.0  # foot on the ground
    for joint in ("rwrist", "lwrist", "rankle", "lankle", "root"):
        assert features[FEATURE_INDEX[("fast", joint)]] == 0.0  # nothing moves


def test_velocity_thresholds_use_the_reference_time_per_frame():
    # The right wrist moves at 0.4 m/s. The "fast" threshold is 2.5 humerus lengths per second
    # (0.642 m/s); with the reference's 1/120 s per 60 fps frame it reads 0.8 m/s: fast.
    joints = _static_rest_pose(30).astype(np.float64)
    joints[:, 21, 0] += 0.4 * np.arange(30) / 60.0
    index = FEATURE_INDEX[("fast", "rwrist")]
    assert manual_features(joints)[index] == 1.0
    assert manual_features(joints, corrected=True)[index] == 0.0


@pytest.mark.parametrize("corrected", [False, True])
def test_vectorised_features_equal_the_per_frame_implementation(corrected):
    rng = np.random.default_rng(7)
    clips = [random_dance(rng, 120, wobble=0.03), random_dance(rng, 5), rng.normal(0.0, 1.0, (40, 24, 3)).astype(np.float32)]
    for clip in clips:
        np.testing.assert_allclose(
            kinetic_features(clip, corrected=corrected), kinetic_features_per_frame(clip, corrected=corrected), rtol=1e-6, atol=1e-6
        )
        np.testing.assert_allclose(
            manual_features(clip, corrected=corrected), manual_features_per_frame(clip, corrected=corrected), rtol=0, atol=1e-6
        )
    # The random clips exercise both outcomes of most relations (the comparison is not vacuous).
    values = np.stack([manual_features(clip, corrected=corrected) for clip in clips])
    assert ((values > 0) & (values < 1)).any(axis=0).sum() >= 20


def test_features_are_invariant_to_turning_about_the_vertical_axis():
    clip = random_dance(np.random.default_rng(3), 200, wobble=0.02)
    protocol = generated_protocol_clip(clip)
    turned = generated_protocol_clip(_yaw(clip, 0.7))
    np.testing.assert_allclose(kinetic_features(turned), kinetic_features(protocol), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(manual_features(turned), manual_features(protocol), atol=1e-6)


def test_protocol_shift_makes_features_translation_invariant():
    clip = random_dance(np.random.default_rng(4), 200, wobble=0.02)
    moved = clip + np.array([3.0, 0.5, -2.0], dtype=np.float32)
    np.testing.assert_allclose(
        kinetic_features(generated_protocol_clip(moved)), kinetic_features(generated_protocol_clip(clip)), rtol=1e-4
    )
    np.testing.assert_allclose(manual_features(generated_protocol_clip(moved)), manual_features(generated_protocol_clip(clip)), atol=1e-6)
    # Without the shift the quirky energy expenditure sees the absolute position.
    assert not np.allclose(kinetic_features(moved).reshape(24, 3)[:, 2], kinetic_features(clip).reshape(24, 3)[:, 2], rtol=1e-2)


def test_flat_and_nested_joint_layouts_agree():
    clip = random_dance(np.random.default_rng(5), 50)
    np.testing.assert_array_equal(kinetic_features(clip.reshape(50, 72)), kinetic_features(clip))
    np.testing.assert_array_equal(manual_features(clip.reshape(50, 72)), manual_features(clip))


@pytest.mark.parametrize(
    "joints, message",
    [
        (np.zeros((10, 23, 3)), "shape"),
        (np.zeros((10, 24)), "shape"),
        (np.zeros((2, 24, 3)), "at least 3"),
        (np.array([["a"] * 72] * 5), "numbers"),
    ],
)
def test_bad_joints_are_rejected(joints, message):
    with pytest.raises(E3D2Error, match=message):
        kinetic_features(joints)


def test_non_finite_joints_are_rejected_with_the_frame():
    clip = _static_rest_pose(20)
    clip[7, 3, 1] = np.nan
    clip[9, 0, 0] = np.inf
    with pytest.raises(E3D2Error, match=r"clip x: 2 frame\(s\) with NaN or inf.*frame 7"):
        validate_joints(clip, "clip x")
