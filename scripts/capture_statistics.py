"""Jitter and torso statistics of real motion capture (BVH) beside the synthetic dataset's, measured alike.

    python scripts/capture_statistics.py ../shared/data/mocap/bandai-namco/dataset-1_dance-short_normal_001.bvh \
        ../shared/data/mocap/bandai-namco/dataset-1_walk_normal_001.bvh --synthetic 24

Each BVH file is read with `e3d2_hf.render.bvh.bvh_to_joints`; its pelvis and neck are found by name
(SMPL's `pelvis` / `neck`, or `Hips` / `Neck` as Bandai-Namco and most capture skeletons name them).
Prints `e3d2_hf.motion.capture`'s jitter (mm per axis) and torso statistics for every file, and
for `--synthetic N` sequences of the embedded generator (seed `--seed`), whose docstring quotes them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from e3d2_hf.motion.capture import jitter, torso_statistics
from e3d2_hf.utils import E3D2Error

PELVIS_NAMES = ("pelvis", "hips")
NECK_NAMES = ("neck",)


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
    args = parser.parse_args(argv)
    from e3d2_hf.render.bvh import bvh_to_joints, load_bvh

    try:
        for path in args.bvh:
            motion = load_bvh(path)
            joints, fps = bvh_to_joints(motion)
            _report(path.name, [joints], fps, _joint(motion.names, PELVIS_NAMES, path), _joint(motion.names, NECK_NAMES, path))
        if args.synthetic:
            _report(f"synthetic dataset, seed {args.seed}", _synthetic_clips(args.synthetic, args.seed), 60.0, 0, 12)
    except E3D2Error as exc:
        print(f"capture_statistics: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
