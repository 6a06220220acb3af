"""Every dance file we read, as joints, and `e3d2 render`: look at a dance we did not just generate.

    e3d2 render dances/song.npz                                  # -> song.mp4
    e3d2 render gt.pkl bailando.pkl edge.pkl --music song.wav --out compare.mp4   # side by side

`read_dance` knows the files of this project and of the tools around it, and opens pickles only
through the restricted unpickler (numpy arrays and plain containers, nothing executed):

| file | kind | frame rate |
|---|---|---|
| `<name>.npz` with `joints` (`e3d2 dance`) | e3d2 | its `fps` |
| `<name>_smpl.npz` / `_smpl.pkl`, an AIST++ motion `.pkl` (`smpl_poses`, `smpl_trans`) | smpl | its `fps`, else 60 |
| `.bvh` on the SMPL-24 skeleton (`e3d2 dance`, or any tool's with those joint names) | bvh | its frame time |
| Bailando's output (`pred_position`, `.pkl` / `.npy`), a `.npy` of joints (T, 24, 3) / (T, 72) | bailando, array | 60 |
| EDGE's output `.pkl` (`full_pose`, z up) | edge | 30 |

SMPL parameters become joints through the built-in rest skeleton, or the user's SMPL model files
(`--smpl-model-dir`) through smplx. Several files go side by side in one video, each brought to
60 fps (linear interpolation) and titled with its file name.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e3d2_hf.metrics.protocol import load_dance_file, resample_to_protocol_fps
from e3d2_hf.motion.fitting import check_joints
from e3d2_hf.motion.skeleton import SMPL_JOINT_NAMES
from e3d2_hf.utils import E3D2Error, safe_load_pickle

VIDEO_FPS = 60.0  # every dance of a video is brought to this rate
DEFAULT_FPS = {"edge": 30.0}  # methods whose files do not say; everything else is 60 fps (AIST++, Bailando)
SUFFIXES = (".npz", ".npy", ".pkl", ".bvh")


@dataclass
class DanceFile:
    """A dance read from disk: joints (T, 24, 3) float32, metres, y up, SMPL order, at `fps`."""

    path: Path
    joints: np.ndarray
    fps: float
    kind: str


def _smpl_dance(path: Path, smpl_model_dir: str | os.PathLike | None) -> DanceFile:
    from e3d2_hf.render.smpl import load_smpl

    parameters = load_smpl(path)
    return DanceFile(path, parameters.joints(smpl_model_dir), parameters.fps, "smpl")


def read_dance(path: str | os.PathLike, *, fps: float | None = None, smpl_model_dir: str | os.PathLike | None = None) -> DanceFile:
    """The dance in any file of the table above; `fps` overrides the frame rate of files that do not record one."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise E3D2Error(f"{path}: unknown dance file type '{path.suffix}' (expected {', '.join(SUFFIXES)})")
    if not path.is_file():
        raise E3D2Error(f"{path}: no such dance file")
    if suffix == ".bvh":
        from e3d2_hf.render.bvh import bvh_to_joints

        joints, rate = bvh_to_joints(path)
        if joints.shape[1] != len(SMPL_JOINT_NAMES):
            raise E3D2Error(f"{path}: a BVH of {joints.shape[1]} joints, not the SMPL-24 skeleton (joint names {', '.join(SMPL_JOINT_NAMES[:3])}, ...)")
        return DanceFile(path, check_joints(joints, str(path)).astype(np.float32), rate, "bvh")
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                names = set(archive.files)
                if "joints" in names:
                    joints, rate = archive["joints"], float(archive["fps"]) if "fps" in names else fps or VIDEO_FPS
                    return DanceFile(path, check_joints(joints, str(path)).astype(np.float32), rate, "e3d2")
        except (OSError, ValueError) as exc:
            raise E3D2Error(f"{path}: not a readable .npz file ({exc})") from exc
        if "smpl_poses" not in names:
            raise E3D2Error(f"{path}: expected 'joints' (e3d2 dance) or 'smpl_poses' (SMPL parameters), got {', '.join(sorted(names))}")
        return _smpl_dance(path, smpl_model_dir)
    if suffix == ".pkl":
        payload = safe_load_pickle(path)
        if isinstance(payload, dict) and "smpl_poses" in payload and not {"pred_position", "full_pose"} & set(payload):
            return _smpl_dance(path, smpl_model_dir)
    joints, kind = load_dance_file(path)
    return DanceFile(path, joints, fps or DEFAULT_FPS.get(kind, VIDEO_FPS), kind)


def render_dance_files(
    paths: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    music: str | os.PathLike | None = None,
    fps: float | None = None,
    seconds: float | None = None,
    smpl_model_dir: str | os.PathLike | None = None,
) -> tuple[Path, list[DanceFile]]:
    """The dances of `paths` side by side (one panel each, titled with the file name) -> `out` (.mp4 with `music`, or .gif)."""
    from e3d2_hf.render.video import render_video

    if not paths:
        raise E3D2Error("render: no dance file given")
    if seconds is not None and not seconds > 0:
        raise E3D2Error(f"render: --seconds must be positive, got {seconds}")
    dances = [read_dance(path, fps=fps, smpl_model_dir=smpl_model_dir) for path in paths]
    clips = [resample_to_protocol_fps(dance.joints, dance.fps) for dance in dances]
    if seconds is not None:
        clips = [clip[: max(1, int(round(seconds * VIDEO_FPS)))] for clip in clips]
    titles = [dance.path.name for dance in dances]
    video = render_video(out, clips if len(clips) > 1 else clips[0], fps=VIDEO_FPS, music_path=music, titles=titles if len(clips) > 1 else None, progress=True)
    return video, dances


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="dance files: e3d2 npz, _smpl.npz/.pkl, BVH, AIST++ motion .pkl, Bailando or EDGE output")
    parser.add_argument("--music", default=None, help="audio muxed into the mp4, starting with the first frame (default: silent)")
    parser.add_argument("--out", default=None, help="the video, .mp4 or .gif (default: <first file's name>.mp4 in the current folder)")
    parser.add_argument("--fps", type=float, default=None, help="frame rate of files that do not record one (default: 60; EDGE output 30)")
    parser.add_argument("--seconds", type=float, default=None, help="show the first S seconds only (default: the whole dance)")
    parser.add_argument("--smpl-model-dir", default=None, help="your SMPL model files for SMPL-parameter files (default: the built-in rest skeleton)")


def run(args: argparse.Namespace) -> int:
    out = args.out or f"{Path(args.files[0]).name.split('.')[0]}.mp4"
    video, dances = render_dance_files(args.files, out, music=args.music, fps=args.fps, seconds=args.seconds, smpl_model_dir=args.smpl_model_dir)
    for dance in dances:
        print(f"{dance.path}: {dance.kind}, {len(dance.joints) / dance.fps:.1f} s at {dance.fps:g} fps")
    print(f"video: {video}")
    return 0


__all__ = ["DanceFile", "read_dance", "render_dance_files"]
