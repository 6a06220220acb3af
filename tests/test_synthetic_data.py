"""The embedded synthetic dataset: AIST++ layout, deterministic, feet on the floor, dances on the beat."""

import json

import numpy as np
import pytest

from e3d2_hf.data import aistpp
from e3d2_hf.data.synthetic import FLOOR_CLEARANCE, FOOT_JOINTS, generate_synthetic_aistpp
from e3d2_hf.metrics.scores import beat_align_score, kinematic_beats
from e3d2_hf.skeleton import forward_kinematics


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return generate_synthetic_aistpp(tmp_path_factory.mktemp("synthetic"), 10, seed=3, seconds=(6.0, 8.0))


def dancer_joints(root, name):
    motion = aistpp.load_motion(root / "motions" / f"{name}.pkl")
    return forward_kinematics(motion.poses, motion.trans / motion.scaling)


def all_sequences(root):
    return [sequence for split in aistpp.SPLITS for sequence in aistpp.read_split(root, split)]


def test_layout_is_read_by_the_aistpp_reader(synthetic_root):
    splits = {split: aistpp.read_split(synthetic_root, split) for split in aistpp.SPLITS}
    assert sum(map(len, splits.values())) == 10 and all(splits.values())
    train_music = {s.music_id for s in splits["train"]}
    held_out_music = {s.music_id for split in ("val", "test") for s in splits[split]}
    assert not train_music & held_out_music  # cross-modal split
    for sequence in all_sequences(synthetic_root):
        assert sequence.music_path.is_file() and sequence.genre in {"BR", "PO", "LO", "JZ", "HO"}


def test_same_seed_same_bytes(synthetic_root, tmp_path):
    again = generate_synthetic_aistpp(tmp_path, 10, seed=3, seconds=(6.0, 8.0))
    for path in sorted(synthetic_root.rglob("*.*")):
        assert path.read_bytes() == (again / path.relative_to(synthetic_root)).read_bytes(), path.name
    other = generate_synthetic_aistpp(tmp_path / "other", 10, seed=4, seconds=(6.0, 8.0))
    assert (synthetic_root / "synthetic_info.json").read_text() != (other / "synthetic_info.json").read_text()


def test_feet_stay_on_the_floor_and_joints_bend_one_way(synthetic_root):
    grounded = []
    for sequence in all_sequences(synthetic_root):
        joints = dancer_joints(synthetic_root, sequence.name)
        lowest = joints[:, FOOT_JOINTS, 1].min(axis=1)
        assert lowest.min() >= FLOOR_CLEARANCE - 1e-4
        grounded.append(np.abs(lowest - FLOOR_CLEARANCE) < 0.01)
        poses = aistpp.load_motion(synthetic_root / "motions" / f"{sequence.name}.pkl").poses
        assert (poses[:, [4, 5], 0] >= -0.05).all()  # knees never bend backwards
    assert np.concatenate(grounded).mean() > 0.6  # on the floor most of the time, airborne only in jumps


def test_dances_follow_the_music_beats(synthetic_root):
    info = json.loads((synthetic_root / "synthetic_info.json").read_text())["music"]
    on_beat, off_beat = [], []
    for sequence in all_sequences(synthetic_root):
        joints = dancer_joints(synthetic_root, sequence.name)
        period = 60 * 60.0 / info[sequence.music_id]["bpm"]  # frames per beat
        beats = np.arange(0, joints.shape[0] - 1, period)
        motion_beats = kinematic_beats(joints)
        on_beat.append(beat_align_score(beats, motion_beats))
        off_beat.append(beat_align_score(beats + period / 2, motion_beats))
    assert np.mean(on_beat) > 0.55 and np.mean(on_beat) > np.mean(off_beat) + 0.2


def test_genres_differ(synthetic_root):
    info = json.loads((synthetic_root / "synthetic_info.json").read_text())["music"]
    tempo = {}
    for music_id, piece in info.items():
        tempo.setdefault(piece["genre"], []).append(piece["bpm"])
    assert max(map(np.mean, tempo.values())) - min(map(np.mean, tempo.values())) > 10
