"""Rotation conversions: axis-angle <-> matrices, BVH's Euler angles, elementary rotations."""

from __future__ import annotations

import numpy as np

from e3d2_hf.motion.rotations import axis_angle_to_matrix, axis_rotation, euler_to_matrix, matrix_to_axis_angle, matrix_to_euler_zxy


def test_matrix_to_axis_angle_inverts_rodrigues() -> None:
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(500, 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    angles = np.concatenate([rng.uniform(0, np.pi - 1e-3, 497), [0.0, 1e-7, np.pi - 1e-6]])
    axis_angle = axes * angles[:, None]
    recovered = matrix_to_axis_angle(axis_angle_to_matrix(axis_angle))
    np.testing.assert_allclose(axis_angle_to_matrix(recovered), axis_angle_to_matrix(axis_angle), atol=1e-9)
    np.testing.assert_allclose(recovered[:-1], axis_angle[:-1], atol=1e-6)


def test_euler_zxy_round_trip_including_gimbal_lock():
    rng = np.random.default_rng(4)
    random = axis_angle_to_matrix(rng.normal(size=(500, 3)) * 2.0)
    locked_x = np.repeat([90.0, -90.0, 90 - 1e-6, -90 + 1e-6, 89.999], 8)
    near_lock = euler_to_matrix(np.stack([rng.uniform(-180, 180, 40), locked_x, rng.uniform(-180, 180, 40)], -1))
    matrices = np.concatenate([random, near_lock])
    angles = matrix_to_euler_zxy(matrices)
    assert np.all(np.abs(angles[:, 1]) <= 90.0)
    np.testing.assert_allclose(euler_to_matrix(angles, "ZXY"), matrices, atol=1e-9)
    z, x, y = np.radians(angles.T)
    np.testing.assert_allclose(axis_rotation("Z", z) @ axis_rotation("X", x) @ axis_rotation("Y", y), matrices, atol=1e-9)


def test_elementary_rotations_are_right_handed():
    np.testing.assert_allclose(axis_rotation("Z", np.pi / 2) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(axis_rotation("X", np.pi / 2) @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(axis_rotation("Y", np.pi / 2) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
