"""Jitter and torso statistics of real motion capture (BVH) beside the synthetic dataset's, measured alike.

    python scripts/capture_statistics.py ../shared/data/mocap/bandai-namco/dataset-1_dance-short_normal_001.bvh \
        ../shared/data/mocap/bandai-namco/dataset-1_walk_normal_001.bvh --synthetic 24

Each BVH file is read with `e3d2_hf.render.bvh.bvh_to_joints`; its pelvis and neck are found by name
(SMPL's `pelvis` / `neck`, or `Hips` / `Neck` as Bandai-Namco and most capture skeletons name them).
Prints `e3d2_hf.motion.capture`'s jitter (mm per axis) and torso statistics for every file, and
for `--synthetic N` sequences of the embedded generator (seed `--seed`), whose docstring quotes them.

`--features` also scores the reference's 32 manual features on every 10 s window (at 60 fps) of a
Bandai-Namco file, its joints mapped onto the SMPL-24 order by name (BANDAI_NAMCO_TO_SMPL: spine2
is the middle of Spine and Chest, each hand continues its forearm by 30 %; an approximation of
SMPL's joints, good enough to see which relations a real dance ever makes hold).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from e3d2_hf.motion.capture import jitter, torso_statistics
from e3d2_hf.utils import E3D2Error

PELVIS_NAMES = ("pelvis", "hips")
NECK_NAMES = ("neck",)
WINDOW_SECONDS = 10.0
# SMPL-24 joint -> the Bandai-Namco joint(s) whose mean stands in for it; (wrist, elbow) pairs extend the forearm.
BANDAI_NAMCO_TO_SMPL = {
    "pelvis": ("Hips",), "left_hip": ("UpperLeg_L",), "right_hip": ("UpperLeg_R",), "spine1": ("Spine",),
    "left_knee": ("LowerLeg_L",), "right_knee": ("LowerLeg_R",), "spine2": ("Spine", "Chest"), "left_ankle": ("Foot_L",),
    "right_ankle": ("Foot_R",), "spine3": ("Chest",), "left_foot": ("Toes_L",), "right_foot": ("Toes_R",), "neck": ("Neck",),
    "left_collar": ("Shoulder_L",), "right_collar": ("Shoulder_R",), "head": ("Head",), "left_shoulder": ("UpperArm_L",),
    "right_shoulder": ("UpperArm_R",), "left_elbow": ("LowerArm_L",), "right_elbow": ("LowerArm_R",), "left_wrist": ("Hand_L",),
    "right_wrist": ("Hand_R",),
}  # fmt: skip
HANDS = {"left_hand": ("Hand_L", "LowerArm_L"), "right_hand": ("Hand_R", "LowerArm_R")}


def _joint(names: list[str], wanted: tuple[str, ...], path: Path) -> int:
    for index, name in enumerate(names):
        if name.lower() in wanted:
            return index
    raise E3D2Error(f"{path}: no joint named {' or '.join(wanted)} (has {', '.join(names)})")


def _report(label: str, clips: list, fps: float, pelvis: int, neck: int) -> None:
    seconds = sum(len(clip) for clip in clips) / fps
    print(f"{label} ({len(clips)} clip(s), {seconds:.1f} s at {fps:g} fps)")
    print(f"  jitter: {1000 * jitter(clips, fps):.3f} mm per axis")
    for name, summary in torso_statistics(clips, fps, pelvis, neck).items():
        print(f"  {name:<13}" + "  ".join(f"{key} {value:7.2f}" for key, value in summary.items()))


def _as_smpl_joints(joints: np.ndarray, names: list[str], path: Path) -> np.ndarray:
    """(T, 24, 3) in SMPL order from a Bandai-Namco skeleton, by BANDAI_NAMCO_TO_SMPL."""
    from e3d2_hf.motion.skeleton import SMPL_JOINT_NAMES

    missing = sorted({name for sources in (*BANDAI_NAMCO_TO_SMPL.values(), *HANDS.values()) for name in sources} - set(names))
    if missing:
        raise E3D2Error(f"{path}: --features needs the Bandai-Namco joint names; missing {', '.join(missing)}")
    mapped = []
    for joint in SMPL_JOINT_NAMES:
        if joint in HANDS:
            wrist, elbow = (joints[:, names.index(name)] for name in HANDS[joint])
            mapped.append(wrist + 0.3 * (wrist - elbow))
        else:
            mapped.append(np.mean([joints[:, names.index(name)] for name in BANDAI_NAMCO_TO_SMPL[joint]], axis=0))
    return np.stack(mapped, axis=1).astype(np.float32)


def _report_features(joints: np.ndarray, fps: float) -> None:
    """On how many 10 s windows each manual feature holds on some frame."""
    from e3d2_hf.metrics.features import MANUAL_FEATURES, manual_features
    from e3d2_hf.metrics.protocol import resample_to_protocol_fps, shift_to_first_root

    clip = resample_to_protocol_fps(joints, fps)
    frames = int(WINDOW_SECONDS * 60)
    windows = [shift_to_first_root(clip[start : start + frames]) for start in range(0, len(clip) - frames + 1, frames)]
    holds = np.stack([manual_features(window) for window in windows]) > 0
    print(f"  manual features on {len(windows)} windows of {WINDOW_SECONDS:g} s (windows where it holds on some frame):")
    for index, feature in enumerate(MANUAL_FEATURES):
        print(f"    {index:2d} {feature.relation} {' '.join(feature.points):<36} {int(holds[:, index].sum())}")


def _synthetic_clips(sequences: int, seed: int) -> list:
    from e3d2_hf.data import aistpp
    from e3d2_hf.data.synthetic import generate_synthetic_aistpp
    from e3d2_hf.motion.skeleton import forward_kinematics

    with tempfile.TemporaryDirectory() as folder:
        generate_synthetic_aistpp(folder, sequences, seed)
        motions = [aistpp.load_motion(sequence.motion_path) for split in aistpp.SPLITS for sequence in aistpp.read_split(folder, split)]
    return [forward_kinematics(motion.poses, motion.trans / motion.scaling) for motion in motions]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bvh", nargs="*", type=Path, help="BVH captures (30 fps or a multiple)")
    parser.add_argument("--synthetic", type=int, metavar="N", help="also measure N sequences of the synthetic dataset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    parser.add_argument("--features", action="store_true", help="also the manual features of each (Bandai-Namco) file, per 10 s window")
    args = parser.parse_args(argv)
    from e3d2_hf.render.bvh import bvh_to_joints, load_bvh

    try:
        for path in args.bvh:
            motion = load_bvh(path)
            joints, fps = bvh_to_joints(motion)
            _report(path.name, [joints], fps, _joint(motion.names, PELVIS_NAMES, path), _joint(motion.names, NECK_NAMES, path))
            if args.features:
                _report_features(_as_smpl_joints(joints, motion.names, path), fps)
        if args.synthetic:
            _report(f"synthetic dataset, seed {args.seed}", _synthetic_clips(args.synthetic, args.seed), 60.0, 0, 12)
    except E3D2Error as exc:
        print(f"capture_statistics: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
