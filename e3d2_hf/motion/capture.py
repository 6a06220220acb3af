"""What real motion capture has that a procedural dance may lack, measured the same way on any joints.

Joints (T, J, 3), metres, y up, at 30 fps or a multiple of it (a 60 fps clip is read at every other
frame, so that clips of both rates are measured alike):

- jitter: the capture's frame-to-frame noise per axis. The fourth frame difference of white noise
  with standard deviation s has standard deviation sqrt(70) s; that of a smooth motion is small
  except at a few kinks. So jitter = the robust spread (median absolute deviation / 0.6745) of the
  fourth differences / sqrt(70), the median over joints and axes. On a real dance some motion is
  left in it: read it as an upper bound on the noise.
- torso: the pelvis's speed (m/s), how fast the pelvis -> neck vector turns (rad/s) and how far it
  leans from the vertical (degrees), each as median, 90th and 99th percentile and maximum over frames.

`scripts/capture_statistics.py` prints both for BVH captures and for the synthetic dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np

from e3d2_hf.utils import E3D2Error

CAPTURE_FPS = 30.0
JITTER_ORDER = 4  # the frame difference whose spread measures the noise
MAD_TO_STD = 0.6745  # median absolute deviation of a normal distribution / its standard deviation
PERCENTILES = {"median": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}


def at_capture_rate(joints: np.ndarray, fps: float) -> np.ndarray:
    """Every k-th frame of a clip at k x 30 fps; `E3D2Error` for other rates."""
    step = fps / CAPTURE_FPS
    if step < 1 or abs(step - round(step)) > 1e-6:
        raise E3D2Error(f"capture statistics: {fps:g} fps is not a multiple of {CAPTURE_FPS:g} fps")
    return np.asarray(joints, dtype=np.float64)[:: int(round(step))]


def jitter(clips: Sequence[np.ndarray], fps: float) -> float:
    """The frame-to-frame noise (metres, per axis) of a set of clips, as the module docstring defines it."""
    differences = [np.diff(at_capture_rate(clip, fps), n=JITTER_ORDER, axis=0) for clip in clips]
    differences = np.concatenate([difference for difference in differences if len(difference)])
    if len(differences) == 0:
        raise E3D2Error(f"capture statistics: every clip is shorter than {JITTER_ORDER + 1} frames at {CAPTURE_FPS:g} fps")
    spread = np.median(np.abs(differences - np.median(differences, axis=0)), axis=0) / MAD_TO_STD
    return float(np.median(spread) / np.sqrt(comb(2 * JITTER_ORDER, JITTER_ORDER)))


def _summary(values: np.ndarray) -> dict[str, float]:
    return {name: float(np.percentile(values, q)) for name, q in PERCENTILES.items()}


def torso_statistics(clips: Sequence[np.ndarray], fps: float, pelvis: int, neck: int) -> dict[str, dict[str, float]]:
    """Pelvis speed (m/s), torso turning rate (rad/s) and torso lean (degrees) over every frame of the clips."""
    speeds, turns, leans = [], [], []
    for clip in clips:
        joints = at_capture_rate(clip, fps)
        torso = joints[:, neck] - joints[:, pelvis]
        direction = torso / np.linalg.norm(torso, axis=-1, keepdims=True)
        speeds.append(np.linalg.norm(np.diff(joints[:, pelvis], axis=0), axis=-1) * CAPTURE_FPS)
        turns.append(np.arccos(np.clip((direction[1:] * direction[:-1]).sum(-1), -1.0, 1.0)) * CAPTURE_FPS)
        leans.append(np.degrees(np.arccos(np.clip(direction[:, 1], -1.0, 1.0))))
    if not any(len(speed) for speed in speeds):
        raise E3D2Error("capture statistics: every clip has a single frame")
    return {
        "pelvis_speed": _summary(np.concatenate(speeds)),
        "torso_turn": _summary(np.concatenate(turns)),
        "torso_lean": _summary(np.concatenate(leans)),
    }


__all__ = ["CAPTURE_FPS", "at_capture_rate", "jitter", "torso_statistics"]
