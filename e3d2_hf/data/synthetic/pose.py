"""From key-pose channels to SMPL parameters: the synthetic dancer's body, legs solved by inverse kinematics.

Legs are solved by two-link inverse kinematics towards planted foot targets, so feet do not slide and
knees bend forward only; elbows bend one way. SMPL axes: y up, the body faces +z, its left is +x.
"""

from __future__ import annotations

import numpy as np

from e3d2_hf.data.synthetic.keys import rotate_xz
from e3d2_hf.motion.rotations import axis_angle_to_matrix, matrix_to_axis_angle, minimal_rotation_axis_angle, orthonormal_frame
from e3d2_hf.motion.skeleton import rest_joints

# Height of the lowest foot joint above the floor with the foot flat: the SMPL foot joint (ball of
# the foot) sits about 2.5 cm above the sole of the mesh.
FLOOR_CLEARANCE = 0.025
FOOT_JOINTS = (7, 8, 10, 11)  # ankles and feet
# Capture noise: real capture jitters from frame to frame. CAPTURE_JITTER is what
# `e3d2_hf.motion.capture.jitter` measures on the Bandai-Namco dance and walk (0.25 mm per axis);
# white noise of ROTATION_JITTER radians on every joint's rotation gives the synthetic dances the same.
CAPTURE_JITTER = 0.25e-3
ROTATION_JITTER = 0.34e-3
KNEES, ELBOWS = (4, 5), (18, 19)

# The male SMPL body at rest (the body AIST++ uses): the bones the IK bends and the pelvis height it keeps.
_REST = rest_joints("male")
_THIGH = {side: _REST[knee] - _REST[hip] for side, hip, knee in (("l", 1, 4), ("r", 2, 5))}
_SHIN = {side: _REST[ankle] - _REST[knee] for side, knee, ankle in (("l", 4, 7), ("r", 5, 8))}
_UPPER_ARM = {side: _REST[elbow] - _REST[shoulder] for side, shoulder, elbow in (("l", 16, 18), ("r", 17, 19))}
_ANKLE_ABOVE_FLOOR = _REST[7, 1] - _REST[10, 1] + FLOOR_CLEARANCE  # foot flat
_PELVIS_ABOVE_ANKLE = _REST[0, 1] - _REST[7, 1]  # legs straight
_PELVIS_BEHIND_BALLS = np.array([0.0, _REST[0, 2] - (_REST[10, 2] + _REST[11, 2]) / 2])  # (x, z)


def _rotation_y(angle: np.ndarray) -> np.ndarray:
    """Rotations about +y through Rodrigues' formula, whose rounding the dataset's poses carry (not `axis_rotation`'s)."""
    return axis_angle_to_matrix(np.stack([np.zeros_like(angle), angle, np.zeros_like(angle)], axis=-1))


def _leg_ik(hip: np.ndarray, ankle_target: np.ndarray, pole: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Two-link IK: global rotations of thigh and shin that put the ankle on the target (or as near as
    the leg reaches), the knee bending towards `pole` (forward over the toes). Knees bend forward only."""
    thigh_length, shin_length = np.linalg.norm(_THIGH[side]), np.linalg.norm(_SHIN[side])
    reach = ankle_target - hip
    distance = np.linalg.norm(reach, axis=-1, keepdims=True)
    along = reach / distance
    # never straighter than the rest pose (whose knee is slightly bent), so the knee never hyperextends
    distance = np.clip(distance, abs(thigh_length - shin_length) + 0.05, 0.999 * np.linalg.norm(_THIGH[side] + _SHIN[side]))
    to_knee = (thigh_length**2 - shin_length**2 + distance**2) / (2 * distance)
    height = np.sqrt(np.maximum(thigh_length**2 - to_knee**2, 0.0))
    # a leg raised forward (a kick) bends its knee upwards, not along the leg
    pole = pole + 2.0 * np.maximum((pole * along).sum(-1, keepdims=True), 0.0) * np.array([0.0, 1.0, 0.0])
    bend = pole - (pole * along).sum(-1, keepdims=True) * along
    bend = bend / np.linalg.norm(bend, axis=-1, keepdims=True)
    knee = hip + to_knee * along + height * bend
    ankle = hip + distance * along
    forward = np.array([0.0, 0.0, 1.0])
    thigh = orthonormal_frame(knee - hip, pole) @ orthonormal_frame(_THIGH[side], forward).T
    shin = orthonormal_frame(ankle - knee, pole) @ orthonormal_frame(_SHIN[side], forward).T
    return thigh, shin


def solve_pose(channels: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SMPL poses (T, 24, 3), translation in metres (T, 3) and flight height (T,) from per-frame channels."""
    frames = len(channels["drop"])
    poses = np.zeros((frames, 24, 3))
    facing = channels["facing"][:, 0]
    tilt, roll, twist = channels["tilt"][:, 0], channels["roll"][:, 0], channels["twist"][:, 0]
    zeros = np.zeros(frames)
    root = _rotation_y(facing + twist) @ axis_angle_to_matrix(np.stack([tilt, zeros, zeros], -1)) @ axis_angle_to_matrix(
        np.stack([zeros, zeros, roll], -1)
    )
    # Foot channels place the ball of the foot (SMPL's foot joint): turning a foot pivots on it, as
    # dancers do, and pointing the toes lifts the heel. The ankle target follows from the foot's
    # orientation; the pelvis sits above and a little behind the balls of the feet.
    feet_xz = {side: channels[f"foot_{side}"] for side in "lr"}
    foot_rotation = {
        side: _rotation_y(channels[f"yaw_{side}"][:, 0])
        @ axis_angle_to_matrix(np.stack([channels[f"pitch_{side}"][:, 0], zeros, zeros], -1))
        for side in "lr"
    }
    pelvis_xz = (feet_xz["l"] + feet_xz["r"]) / 2 + channels["shift"] + rotate_xz(_PELVIS_BEHIND_BALLS, facing)
    pelvis = np.stack([pelvis_xz[:, 0], _ANKLE_ABOVE_FLOOR + _PELVIS_ABOVE_ANKLE - channels["drop"][:, 0], pelvis_xz[:, 1]], -1)
    targets = {}
    for side, ankle_joint, foot_joint in (("l", 7, 10), ("r", 8, 11)):
        ball = np.stack([feet_xz[side][:, 0], FLOOR_CLEARANCE + np.maximum(channels[f"lift_{side}"][:, 0], 0), feet_xz[side][:, 1]], -1)
        targets[side] = ball + foot_rotation[side] @ (_REST[ankle_joint] - _REST[foot_joint])
    # lower the pelvis where a planted foot could not be reached with the legs almost straight
    leg_length = {side: np.linalg.norm(_THIGH[side]) + np.linalg.norm(_SHIN[side]) for side in "lr"}
    excess = np.zeros(frames)
    for side, hip_joint in (("l", 1), ("r", 2)):
        hip = pelvis + (root @ (_REST[hip_joint] - _REST[0]))
        horizontal = np.linalg.norm((targets[side] - hip)[:, [0, 2]], axis=-1)
        vertical_reach = np.sqrt(np.maximum((0.985 * leg_length[side]) ** 2 - horizontal**2, 0.0))
        planted = channels[f"lift_{side}"][:, 0] < 0.02
        excess = np.maximum(excess, np.where(planted, hip[:, 1] - targets[side][:, 1] - vertical_reach, 0.0))
    pelvis[:, 1] -= excess
    poses[:, 0] = matrix_to_axis_angle(root)
    for side, hip_joint, knee_joint, ankle_joint in (("l", 1, 4, 7), ("r", 2, 5, 8)):
        hip = pelvis + (root @ (_REST[hip_joint] - _REST[0]))
        foot = foot_rotation[side]
        pole = _rotation_y(channels[f"yaw_{side}"][:, 0]) @ np.array([0.0, 0.0, 1.0])
        thigh, shin = _leg_ik(hip, targets[side], pole, side)
        poses[:, hip_joint] = matrix_to_axis_angle(np.swapaxes(root, -1, -2) @ thigh)
        poses[:, knee_joint] = matrix_to_axis_angle(np.swapaxes(thigh, -1, -2) @ shin)
        poses[:, ankle_joint] = matrix_to_axis_angle(np.swapaxes(shin, -1, -2) @ foot)
    bend, side_bend, turn = channels["spine"].T
    for joint in (3, 6, 9):  # the spine bends over its three joints
        poses[:, joint] = np.stack([bend, turn, -side_bend], -1) / 3
    # a chest pop isolates the chest: forward from the belly, the upper back turned back so the neck stays upright
    poses[:, 3, 0] += channels["pop"][:, 0]
    poses[:, 9, 0] -= channels["pop"][:, 0]
    nod, tilt_head, turn_head = channels["head"].T
    for joint in (12, 15):
        poses[:, joint] = np.stack([nod, turn_head, -tilt_head], -1) / 2
    for side, collar, shoulder, elbow, sign in (("l", 13, 16, 18, 1.0), ("r", 14, 17, 19, -1.0)):
        poses[:, collar, 2] = sign * channels[f"shrug_{side}"][:, 0]
        elevation, azimuth = channels[f"arm_{side}"].T
        direction = np.stack([sign * np.cos(elevation) * np.cos(azimuth), np.sin(elevation), np.cos(elevation) * np.sin(azimuth)], -1)
        rest = _UPPER_ARM[side] / np.linalg.norm(_UPPER_ARM[side])
        # turn the upper arm about itself first (so the elbow can bend upwards), then swing it into place
        roll_arm = axis_angle_to_matrix(-sign * channels[f"armtwist_{side}"] * rest)
        poses[:, shoulder] = matrix_to_axis_angle(axis_angle_to_matrix(minimal_rotation_axis_angle(rest, direction)) @ roll_arm)
        poses[:, elbow, 1] = -sign * np.clip(channels[f"elbow_{side}"][:, 0], 0.0, 2.5)  # elbows bend one way
    return poses, pelvis - _REST[0], channels["air"]


def add_capture_noise(poses: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SMPL poses (T, 24, 3) with white rotation noise; knees and elbows stay hinges bending their own way."""
    noisy = poses + rng.normal(0.0, ROTATION_JITTER, poses.shape)
    knees, elbows = list(KNEES), list(ELBOWS)
    noisy[:, knees, 1:] = poses[:, knees, 1:]
    noisy[:, knees, 0] = np.maximum(noisy[:, knees, 0], 0.5 * poses[:, knees, 0])
    noisy[:, elbows, 0] = poses[:, elbows, 0]
    noisy[:, elbows, 2] = poses[:, elbows, 2]
    noisy[:, ELBOWS[0], 1] = np.clip(noisy[:, ELBOWS[0], 1], -2.5, 0.0)
    noisy[:, ELBOWS[1], 1] = np.clip(noisy[:, ELBOWS[1], 1], 0.0, 2.5)
    return noisy
