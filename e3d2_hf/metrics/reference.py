"""Per-frame features written straight from the definitions, one frame and one joint at a time.

The slow twin of `features.py`, shaped like the reference code (Python loops over frames): the
tests check that the vectorised features equal these to 1e-6, and `scripts/bench.py` times the
two on the same clips (`random_dance`). Not used for evaluation.
"""

from __future__ import annotations

import math

import numpy as np

from e3d2_hf.metrics.features import (
    KINETIC_FRAME_TIME,
    KINETIC_WINDOW,
    MANUAL_FEATURES,
    MANUAL_TIME_PER_FRAME,
    PROTOCOL_TIME_PER_FRAME,
    REFERENCE_JOINT_NAMES,
    validate_joints,
)
from e3d2_hf.motion.skeleton import rest_joints


def random_dance(rng: np.random.Generator, num_frames: int, wobble: float = 0.004, travel: float = 0.01) -> np.ndarray:
    """Test motion: the SMPL rest pose under a smooth random walk per joint plus a wandering root.

    (T, 24, 3) float32; rich enough that most manual relations are true on some frames and false on others.
    """
    joint_walk = np.cumsum(rng.normal(0.0, wobble, (num_frames, 24, 3)), axis=0)
    root_walk = np.cumsum(rng.normal(0.0, travel, (num_frames, 1, 3)), axis=0)
    return (rest_joints("male")[None] + joint_walk + root_walk).astype(np.float32)


def _window_velocity(positions: np.ndarray, frame: int, joint: int) -> np.ndarray:
    total, count = np.zeros(3), 0
    for offset in range(-KINETIC_WINDOW, KINETIC_WINDOW + 1):
        k = frame + offset
        if k - 1 < 0 or k >= len(positions):
            continue
        total += positions[k, joint] - positions[k - 1, joint]
        count += 1
    return total / (count * KINETIC_FRAME_TIME)


def _window_acceleration(positions: np.ndarray, frame: int, joint: int, corrected: bool) -> float:
    total, count = np.zeros(3), 0
    for offset in range(-KINETIC_WINDOW, KINETIC_WINDOW + 1):
        k = frame + offset
        if k - 1 < 0 or k + 1 >= len(positions):
            continue
        forward = (positions[k + 1, joint] - positions[k, joint]) / KINETIC_FRAME_TIME
        if corrected:
            backward = (positions[k, joint] - positions[k - 1, joint]) / KINETIC_FRAME_TIME
        else:
            backward = positions[k, joint] - positions[k - 1, joint] / KINETIC_FRAME_TIME
        total += (forward - backward) / KINETIC_FRAME_TIME
        count += 1
    return float(np.linalg.norm(total / count))


def kinetic_features_per_frame(joints: np.ndarray, *, corrected: bool = False) -> np.ndarray:
    """`features.kinetic_features`, one joint and one frame at a time."""
    positions = validate_joints(joints).astype(np.float64)
    num_frames, num_joints = positions.shape[:2]
    values = []
    for joint in range(num_joints):
        horizontal = vertical = expenditure = 0.0
        for frame in range(1, num_frames):
            velocity = _window_velocity(positions, frame, joint)
            horizontal += velocity[0] ** 2 + velocity[2] ** 2
            vertical += velocity[1] ** 2
            expenditure += _window_acceleration(positions, frame, joint, corrected)
        values += [horizontal / (num_frames - 1), vertical / (num_frames - 1), expenditure / (num_frames - 1)]
    return np.array(values, dtype=np.float32)


def _point(name: str, frame: np.ndarray) -> np.ndarray:
    if name in REFERENCE_JOINT_NAMES:
        return frame[REFERENCE_JOINT_NAMES.index(name)]
    if name == "y_min":
        return np.array([0.0, min(frame[:, 1]), 0.0])
    return {"zero": np.zeros(3), "y_unit": np.array([0.0, 1.0, 0.0]), "minus_y_unit": np.array([0.0, -1.0, 0.0])}[name]


def _holds(relation: str, now: list, before: list, threshold, time_per_frame: float, corrected: bool) -> bool:
    if relation == "nmove":
        velocity = (now[3] - now[0]) - (before[3] - before[0])
        direction = np.cross(now[2] - now[0], now[1] - now[0])
        return np.dot(velocity, direction) / np.linalg.norm(direction) / time_per_frame > threshold
    if relation == "move":
        moving, relative_to = (3, 2) if corrected else (2, 0)
        velocity = (now[moving] - now[relative_to]) - (before[moving] - before[relative_to])
        direction = now[1] - now[0]
        return np.dot(velocity, direction) / np.linalg.norm(direction) / time_per_frame > threshold
    if relation == "nplane":
        normal = now[1] - now[0]
        return np.dot(normal, now[3] - now[2]) / np.linalg.norm(normal) > threshold
    if relation == "plane":
        normal = np.cross(now[2] - now[0], now[1] - now[0])
        return np.dot(normal, now[3] - now[0]) / np.linalg.norm(normal) > threshold
    if relation == "angle":
        first, second = now[1] - now[0], now[3] - now[2]
        cosine = np.dot(first, second) / (np.linalg.norm(first) * np.linalg.norm(second))
        angle = math.degrees(math.acos(cosine)) if -1.0 <= cosine <= 1.0 else math.nan
        return threshold[0] < angle < threshold[1]
    if relation == "fast":
        return np.linalg.norm(now[0] - before[0]) / time_per_frame > threshold
    raise ValueError(f"unknown relation {relation!r}")


def manual_features_per_frame(joints: np.ndarray, *, corrected: bool = False) -> np.ndarray:
    """`features.manual_features`, one frame and one relation at a time."""
    positions = validate_joints(joints).astype(np.float64)
    time_per_frame = PROTOCOL_TIME_PER_FRAME if corrected else MANUAL_TIME_PER_FRAME
    rows = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for frame in range(1, len(positions)):
            row = []
            for feature in MANUAL_FEATURES:
                now = [_point(name, positions[frame]) for name in feature.points]
                before = [_point(name, positions[frame - 1]) for name in feature.points]
                row.append(_holds(feature.relation, now, before, feature.threshold, time_per_frame, corrected))
            rows.append(row)
    return np.array(rows, dtype=np.float32).mean(axis=0)
