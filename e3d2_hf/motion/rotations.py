"""Rotation maths shared by the skeleton, the motion fitting, the BVH files and the synthetic dancer.

One function per conversion (axis-angle, matrices, Euler angles) and the few constructions built on
them: shortest rotations between directions, least-squares (Kabsch) fits and frames from a direction
and a pole. All are plain batched numpy on float64: the prepared datasets, the synthetic dataset and
the exported files are reproducible to the bit only as long as these formulas stay as they are.

Conventions: matrices act on column vectors (v' = R @ v); axis-angle vectors are the axis scaled by
the angle in radians; Euler angles are in degrees and intrinsic, composed in the order listed.
"""

from __future__ import annotations

import numpy as np


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: (..., 3) axis-angle vectors -> (..., 3, 3) rotation matrices."""
    axis_angle = np.asarray(axis_angle, dtype=np.float64)
    angle = np.linalg.norm(axis_angle, axis=-1, keepdims=True)
    axis = np.divide(axis_angle, angle, out=np.zeros_like(axis_angle), where=angle > 0)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zeros = np.zeros_like(x)
    cross = np.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], axis=-1).reshape(*axis.shape[:-1], 3, 3)
    sin = np.sin(angle)[..., None]
    one_minus_cos = (1.0 - np.cos(angle))[..., None]
    return np.eye(3) + sin * cross + one_minus_cos * (cross @ cross)


def matrix_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle, angle in [0, pi] (via the quaternion)."""
    m = rotation
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    candidates = np.stack([
        np.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        np.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - trace, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        np.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - trace, m[..., 1, 2] + m[..., 2, 1]], -1),
        np.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 + 2 * m[..., 2, 2] - trace], -1),
    ], axis=-2)  # fmt: skip  (Shepperd: the row with the largest diagonal term is the stable one)
    best = np.argmax(np.stack([trace, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1), axis=-1)
    quaternion = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    quaternion = quaternion / np.linalg.norm(quaternion, axis=-1, keepdims=True)
    quaternion = quaternion * np.where(quaternion[..., :1] < 0, -1.0, 1.0)
    sine = np.linalg.norm(quaternion[..., 1:], axis=-1, keepdims=True)
    angle = 2 * np.arctan2(sine, quaternion[..., :1])
    return np.divide(quaternion[..., 1:] * angle, sine, out=np.zeros_like(quaternion[..., 1:]), where=sine > 1e-12)


def axis_rotation(axis: str, angles_radians: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) about the coordinate axis 'X', 'Y' or 'Z'."""
    angles_radians = np.asarray(angles_radians, dtype=np.float64)
    cos, sin = np.cos(angles_radians), np.sin(angles_radians)
    one, zero = np.ones_like(cos), np.zeros_like(cos)
    rows = {
        "X": [one, zero, zero, zero, cos, -sin, zero, sin, cos],
        "Y": [cos, zero, sin, zero, one, zero, -sin, zero, cos],
        "Z": [cos, -sin, zero, sin, cos, zero, zero, zero, one],
    }[axis]
    return np.stack(rows, axis=-1).reshape(*cos.shape, 3, 3)


def euler_to_matrix(angles_degrees: np.ndarray, axes: str = "ZXY") -> np.ndarray:
    """Intrinsic Euler angles (..., len(axes)) in degrees -> (..., 3, 3), as BVH composes channels.

    `axes` lists the rotation channels in file order, e.g. "ZXY" gives R = Rz @ Rx @ Ry.
    """
    angles = np.radians(np.asarray(angles_degrees, dtype=np.float64))
    matrix = np.broadcast_to(np.eye(3), (*angles.shape[:-1], 3, 3)).copy()
    for index, axis in enumerate(axes):
        matrix = matrix @ axis_rotation(axis, angles[..., index])
    return matrix


def matrix_to_euler_zxy(matrices: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 3) degrees (z, x, y) with R = Rz @ Rx @ Ry, x in [-90, 90].

    At gimbal lock (x = +-90 degrees) z and y turn about the same axis; y is then set to 0.
    """
    m = np.asarray(matrices, dtype=np.float64)
    cos_x = np.hypot(m[..., 0, 1], m[..., 1, 1])
    locked = cos_x < 1e-9
    x = np.arctan2(m[..., 2, 1], cos_x)
    z = np.where(locked, np.arctan2(m[..., 1, 0], m[..., 0, 0]), np.arctan2(-m[..., 0, 1], m[..., 1, 1]))
    y = np.where(locked, 0.0, np.arctan2(-m[..., 2, 0], m[..., 2, 2]))
    return np.degrees(np.stack([z, x, y], axis=-1))


def minimal_rotation_matrix(source: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Smallest rotations (T, 3, 3) turning the direction `source` (3,) onto each of `targets` (T, 3).

    A zero-length target (two joints on top of each other) has no direction: identity.
    """
    source = source / np.linalg.norm(source)
    lengths = np.linalg.norm(targets, axis=-1, keepdims=True)
    targets = np.divide(targets, lengths, out=np.broadcast_to(source, targets.shape).copy(), where=lengths > 1e-12)
    axis = np.cross(source, targets)
    cos = targets @ source
    cross = np.zeros((len(targets), 3, 3))
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    cross = cross - cross.transpose(0, 2, 1)
    opposite = cos < -1.0 + 1e-9
    scale = np.divide(1.0, 1.0 + cos, out=np.zeros_like(cos), where=~opposite)
    rotations = np.eye(3) + cross + scale[:, None, None] * (cross @ cross)
    if opposite.any():  # half turn about any axis perpendicular to the source
        helper = np.eye(3)[np.argmin(np.abs(source))]
        half_turn_axis = np.cross(source, helper)
        half_turn_axis /= np.linalg.norm(half_turn_axis)
        rotations[opposite] = 2.0 * np.outer(half_turn_axis, half_turn_axis) - np.eye(3)
    return rotations


def minimal_rotation_axis_angle(rest_direction: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Axis-angle of the shortest rotation taking `rest_direction` to `direction` (T, 3).

    The rotation `minimal_rotation_matrix` builds, by another formula (angle from arctan2) whose
    rounding the synthetic dataset's poses carry; opposite directions have no unique axis and
    give zero here, a half turn there.
    """
    rest_direction = rest_direction / np.linalg.norm(rest_direction)
    direction = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    axis = np.cross(rest_direction, direction)
    sine = np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = np.arctan2(sine, (direction * rest_direction).sum(-1, keepdims=True))
    return np.divide(axis * angle, sine, out=np.zeros_like(axis), where=sine > 1e-9)


def best_fit_rotation(sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Kabsch: rotations (T, 3, 3) minimising sum_k |R @ sources[k] - targets[:, k]|^2, about the joint (no centring)."""
    covariance = np.einsum("ki,tkj->tij", sources, targets)
    u, _, vt = np.linalg.svd(covariance)
    correction = np.broadcast_to(np.eye(3), covariance.shape).copy()
    correction[:, 2, 2] = np.where(np.linalg.det(vt.transpose(0, 2, 1) @ u.transpose(0, 2, 1)) < 0, -1.0, 1.0)
    return vt.transpose(0, 2, 1) @ correction @ u.transpose(0, 2, 1)


def orthonormal_frame(direction: np.ndarray, pole: np.ndarray) -> np.ndarray:
    """Orthonormal frame (columns): along `direction`, towards `pole` (made perpendicular), their cross product."""
    first = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    second = pole - (pole * first).sum(-1, keepdims=True) * first
    second = second / np.linalg.norm(second, axis=-1, keepdims=True)
    return np.stack([first, second, np.cross(first, second)], axis=-1)
