"""BVH export/import: positions -> rotations -> BVH -> positions round trips, file grammar, Euler angles, bad input."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from e3d2_hf.motion.fitting import bone_offsets, joints_to_rotations
from e3d2_hf.motion.skeleton import SMPL_JOINT_NAMES, SMPL_PARENTS, chain_forward_kinematics, forward_kinematics
from e3d2_hf.render.bvh import BVHMotion, bvh_to_joints, load_bvh, save_bvh
from e3d2_hf.utils import E3D2Error

BANDAI_NAMCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mocap" / "bandai-namco"
FPS = 60.0


def smooth_signal(rng, frames, shape, amplitude):
    """Sums of slow sines: motion that changes smoothly from frame to frame, like a dance."""
    times = np.arange(frames)[:, None] / FPS
    flat = int(np.prod(shape))
    frequencies, phases = rng.uniform(0.2, 1.5, (2, flat)), rng.uniform(0, 2 * np.pi, (2, flat))
    signal = np.sin(2 * np.pi * frequencies[0] * times + phases[0]) + 0.5 * np.sin(2 * np.pi * frequencies[1] * times + phases[1])
    return amplitude * signal.reshape(frames, *shape) / 1.5


def fk_dance(frames=120, seed=0):
    """Joints from random smooth SMPL poses (up to ~0.6 rad per axis) and a wandering translation."""
    rng = np.random.default_rng(seed)
    poses = smooth_signal(rng, frames, (24, 3), 0.6)
    poses[:, 0] += [0.0, 2.0, 0.0]  # a root turned well away from the identity
    return forward_kinematics(poses, smooth_signal(rng, frames, (3,), 0.8))


def jitter_bone_lengths(joints, half_width, seed=1):
    """Lengthen or shorten every bone in every frame by up to `half_width` metres, keeping directions."""
    rng = np.random.default_rng(seed)
    joints = joints.astype(np.float64)
    jittered = joints.copy()
    for joint in range(1, len(SMPL_PARENTS)):
        parent = SMPL_PARENTS[joint]
        bone = joints[:, joint] - joints[:, parent]
        length = np.linalg.norm(bone, axis=-1, keepdims=True)
        change = rng.uniform(-half_width, half_width, (len(joints), 1))
        jittered[:, joint] = jittered[:, parent] + bone / length * (length + change)
    return jittered


def max_error(a, b):
    return float(np.linalg.norm(a - b, axis=-1).max())


def test_fk_motion_round_trips_through_bvh(tmp_path):
    joints = fk_dance()
    path = save_bvh(tmp_path / "dance.bvh", joints, FPS)
    restored, fps = bvh_to_joints(path)
    assert restored.shape == joints.shape and fps == FPS
    # Measured: 9.0e-8 m (float32 joints, 6 decimals in the file); the solve alone: 7.7e-8 m.
    assert max_error(restored, joints) < 1e-3


def test_solved_rotations_are_rotations_and_reproduce_joints():
    joints = fk_dance(frames=30, seed=3)
    root, rotations = joints_to_rotations(joints)
    np.testing.assert_allclose(root, joints[:, 0], atol=1e-12)
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 1, 3, 2), np.broadcast_to(np.eye(3), rotations.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-9)
    leaves = [index for index in range(24) if index not in SMPL_PARENTS]
    np.testing.assert_allclose(rotations[:, leaves], np.broadcast_to(np.eye(3), rotations[:, leaves].shape))
    translations = np.broadcast_to(bone_offsets(joints), (len(joints), 24, 3)).copy()
    translations[:, 0] = root
    assert max_error(chain_forward_kinematics(translations, rotations, SMPL_PARENTS), joints) < 1e-5


def test_jittered_bone_lengths_round_trip_within_a_centimetre(tmp_path):
    """Generated dances stretch their bones from frame to frame; a BVH has one length per bone."""
    joints = fk_dance(frames=120, seed=2)
    jittered = jitter_bone_lengths(joints, half_width=0.01)
    restored, _ = bvh_to_joints(save_bvh(tmp_path / "jittered.bvh", jittered, FPS))
    errors = np.linalg.norm(restored - jittered, axis=-1)
    # Every bone +-1 cm in every frame. Measured: mean 6.5 mm, RMS 8.2 mm, max 2.9 cm (at a
    # hand, where the changes add up along the nearly straight spine-collar-arm chain).
    assert errors.mean() < 0.01 and np.sqrt((errors**2).mean()) < 0.01
    assert errors.max() < 0.05
    # Smaller changes (+-2 mm) stay within a centimetre everywhere. Measured max: 6.1 mm.
    small = jitter_bone_lengths(joints, half_width=0.002)
    assert max_error(bvh_to_joints(save_bvh(tmp_path / "small.bvh", small, FPS))[0], small) < 0.01


def test_bone_offsets_follow_the_dance_not_the_rest_skeleton(tmp_path):
    joints = fk_dance(frames=20) * 1.1  # a body 10% larger than the rest skeleton
    offsets = bone_offsets(joints)
    lengths = np.linalg.norm(joints[:, 1:] - joints[:, SMPL_PARENTS[1:]], axis=-1).mean(axis=0)
    np.testing.assert_allclose(np.linalg.norm(offsets[1:], axis=-1), lengths, rtol=1e-5)
    assert max_error(bvh_to_joints(save_bvh(tmp_path / "large.bvh", joints))[0], joints) < 1e-5


def test_written_file_follows_the_bvh_grammar(tmp_path):
    joints = fk_dance(frames=7)
    text = save_bvh(tmp_path / "dance.bvh", joints, 30.0).read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "HIERARCHY" and lines[1] == "ROOT pelvis"
    joint_names = [line.split()[1] for line in lines if line.startswith(("ROOT ", "JOINT "))]
    assert joint_names[0] == "pelvis" and sorted(joint_names) == sorted(SMPL_JOINT_NAMES)
    channel_lines = [" ".join(line.split()) for line in lines if line.startswith("CHANNELS")]
    assert channel_lines[0] == "CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation"
    assert all(line == "CHANNELS 3 Zrotation Xrotation Yrotation" for line in channel_lines[1:])
    assert len(channel_lines) == 24
    assert lines.count("End Site") == 5  # feet, head, hands
    hierarchy = text[: text.index("MOTION")]
    assert hierarchy.count("{") == hierarchy.count("}") == 24 + 5
    motion = lines[lines.index("MOTION") + 1 :]
    assert motion[0] == "Frames: 7"
    assert float(re.fullmatch(r"Frame Time: (\S+)", motion[1]).group(1)) == pytest.approx(1 / 30.0, rel=1e-9)
    frames = [line for line in motion[2:] if line]
    assert len(frames) == 7 and all(len(frame.split()) == 6 + 23 * 3 for frame in frames)
    parsed = load_bvh(tmp_path / "dance.bvh")
    assert parsed.fps == 30.0 and parsed.motion.shape == (7, 75) and parsed.names[0] == "pelvis"
    # The root channels are the pelvis position in centimetres.
    np.testing.assert_allclose(parsed.motion[:, :3] / 100.0, joints[:, 0], atol=1e-7)


def test_target_fps_resamples_before_solving(tmp_path):
    joints = fk_dance(frames=61)
    path = save_bvh(tmp_path / "half.bvh", joints, FPS, target_fps=30.0)
    restored, fps = bvh_to_joints(path)
    assert fps == 30.0 and restored.shape == (31, 24, 3)
    assert max_error(restored, joints[::2]) < 1e-5


TWO_BONES = """HIERARCHY
ROOT base
{{
\tOFFSET 0 0 0
\tCHANNELS 6 Xposition Yposition Zposition {order}
\tJOINT tip {{ OFFSET 10 0 0
\t\tCHANNELS 3 Zrotation Yrotation Xrotation
\t\tEnd Site
\t\t{{
\t\t\tOFFSET 5 0 0
\t\t}}
\t}}
}}
MOTION
Frames:\t2
Frame Time:\t0.0333333

{frames}
"""


def test_reads_other_channel_orders_and_whitespace(tmp_path):
    """Rotation channels compose in their listed order; CRLF, tabs, braces on one line are fine."""
    path = tmp_path / "two.bvh"
    frames = "100 0 0 0 90 0   0 0 0\r\n0 0 0 90 0 0   0 0 90\r\n"
    text = two_bones(order="Xrotation Yrotation Zrotation", frames=frames)
    path.write_text(text.replace("\n", "\r\n"), newline="")
    joints, fps = bvh_to_joints(path)
    assert fps == 30.0 and joints.shape == (2, 2, 3)
    np.testing.assert_allclose(joints[0], [[1.0, 0, 0], [1.0, 0, -0.1]], atol=1e-12)  # Y by 90: x -> -z
    np.testing.assert_allclose(joints[1], [[0, 0, 0], [0.1, 0, 0]], atol=1e-12)  # X by 90 leaves x alone
    motion = load_bvh(path, metres_per_unit=1.0)
    assert isinstance(motion, BVHMotion) and motion.names == ["base", "tip"]
    np.testing.assert_array_equal(motion.parents, [-1, 0])
    assert motion.channels[1] == ("Zrotation", "Yrotation", "Xrotation")
    np.testing.assert_allclose(bvh_to_joints(motion)[0][1, 1], [10.0, 0, 0], atol=1e-12)


def two_bones(order="Zrotation Xrotation Yrotation", frames="0 " * 9 + "\n" + "0 " * 9):
    return TWO_BONES.format(order=order, frames=frames)


@pytest.mark.parametrize(
    "text, problem",
    [
        (two_bones().split("MOTION")[0], "no MOTION"),
        (two_bones(frames="0 " * 9 + "\n" + "0 " * 8), r"line 19: expected 9 values per frame, got 8"),
        (two_bones(frames="0 " * 9), r"says 2 frames but 1 frame lines"),
        (two_bones(order="Zrotation Xrotation Wrotation"), r"line 5: unknown channel 'Wrotation'"),
        (two_bones().replace("OFFSET 10", "OFFSET ten"), r"line 6: expected an OFFSET value, got 'ten'"),
        (two_bones().replace("\t}\n}", "\t}"), r"line 12: file ends where"),
        (two_bones().replace("Frames:\t2", "Frames: many"), r"line 15: expected 'Frames: N'"),
        (two_bones(frames="0 " * 9 + "\n0 0 x" + " 0" * 6), r"line 19: frame values must be numbers"),
        ("ROOT base\n{\n}\nMOTION\n", r"line 1: expected 'HIERARCHY', got 'ROOT'"),
    ],
)
def test_malformed_bvh_names_file_and_line(tmp_path, text, problem):
    path = tmp_path / "broken.bvh"
    path.write_text(text)
    with pytest.raises(E3D2Error, match=rf"broken\.bvh.*{problem}"):
        load_bvh(path)


@pytest.mark.parametrize(
    "joints, problem",
    [
        (np.zeros((10, 22, 3)), r"shape \(T, 24, 3\)"),
        (np.zeros((0, 24, 3)), r"T >= 1"),
        (np.zeros((24, 3)), r"shape"),
        (np.where(np.arange(10 * 72).reshape(10, 24, 3) == 100, np.nan, 0.0), "NaN"),
    ],
)
def test_bad_joints_raise_and_write_nothing(tmp_path, joints, problem):
    with pytest.raises(E3D2Error, match=rf"bad\.bvh.*{problem}"):
        save_bvh(tmp_path / "bad.bvh", joints)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_and_failed_write_leave_no_partial_file(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(E3D2Error, match=r"file/dance\.bvh: cannot write"):
        save_bvh(not_a_folder / "dance.bvh", fk_dance(frames=3))
    target = tmp_path / "dance.bvh"
    target.write_text("previous")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(E3D2Error, match=r"dance\.bvh: cannot write \(Permission denied\)"):
        save_bvh(target, fk_dance(frames=3))
    assert target.read_text() == "previous"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dance.bvh", "file"]


@pytest.mark.skipif(not BANDAI_NAMCO.is_dir(), reason="Bandai-Namco mocap files are not in ../shared/data")
def test_reads_bandai_namco_mocap():
    """A real capture: 30 fps, centimetres, every joint with 6 channels, another skeleton."""
    path = BANDAI_NAMCO / "dataset-1_bow_normal_001.bvh"
    motion = load_bvh(path)
    joints, fps = bvh_to_joints(motion)
    assert fps == 30.0 and len(motion.names) > 0
    assert joints.shape == (len(motion.motion), len(motion.names), 3) and np.isfinite(joints).all()
    head = motion.names.index("Head")
    assert 1.3 < joints[0, head, 1] < 1.8 and joints[0, :, 1].min() > -0.05  # a standing person, y up, metres


def test_an_external_reader_sees_the_same_dance(tmp_path):
    """bvhio (an independent BVH implementation) poses our file's skeleton onto the joints we wrote."""
    import bvhio  # a test-only dependency (the dev extra)

    joints = fk_dance(40, seed=11)
    root = bvhio.readAsHierarchy(str(save_bvh(tmp_path / "dance.bvh", joints)))
    errors = []
    for frame in range(len(joints)):
        root.loadPose(frame)
        by_name = {joint.Name: joint for joint, _, _ in root.layout()}
        positions = np.array([list(by_name[name].PositionWorld) for name in SMPL_JOINT_NAMES]) / 100.0  # our BVH is in cm
        errors.append(np.linalg.norm(positions - joints[frame], axis=-1).max())
    assert len(by_name) == 24 and max(errors) < 1e-4
