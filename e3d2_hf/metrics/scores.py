"""The paper's scores on motion features and joints: FID, diversity, beat align score, foot contact.

Each follows the reference code's arithmetic (Bailando `utils/metrics_new.py`,
`utils/beat_align_score.py`; EDGE `eval/eval_pfc.py` for PFC) so that the numbers compare with
published ones. Where the reference would crash or return NaN, the behaviour chosen here is stated
in the function's docstring.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.distance import pdist

NORMALISATION_EPSILON = 1e-10  # added to the ground truth's std
FID_DIAGONAL_OFFSET = 1e-5  # added to both covariances when sqrtm of their product is not finite
BEAT_SMOOTHING_SIGMA = 5.0  # frames, Gaussian smoothing of the mean joint speed
BEAT_SMOOTHING_TRUNCATE = 4.0  # scipy's default: the window is 2 * round(4 * sigma) + 1 = 41 frames
BEAT_SMOOTHING_WINDOW = 2 * int(BEAT_SMOOTHING_TRUNCATE * BEAT_SMOOTHING_SIGMA + 0.5) + 1
BEAT_ALIGN_SIGMA_SQUARED = 9.0  # exp(-d^2 / (2 * 9)), d in frames
PFC_SCALE = 1e4  # EDGE reports mean(foot-speed product x normalised root acceleration) x 10^4
UP_AXIS = 1  # y is up here (EDGE's own joints are z-up)
LEFT_FOOT_JOINTS = (7, 10)  # left ankle, left foot
RIGHT_FOOT_JOINTS = (8, 11)  # right ankle, right foot


class MetricWarning(UserWarning):
    """A documented departure from a clean evaluation (the result is still defined, never NaN)."""


def normalise_by_ground_truth(ground_truth: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets standardised with the ground truth's mean and population std (+ 1e-10).

    Done in the features' own dtype (float32 in the reference), as the reference does.
    """
    mean = ground_truth.mean(axis=0)
    std = ground_truth.std(axis=0)
    return (ground_truth - mean) / (std + NORMALISATION_EPSILON), (generated - mean) / (std + NORMALISATION_EPSILON)


def frechet_distance(generated: np.ndarray, ground_truth: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2), S = np.cov (N - 1), of two (N, D) feature sets.

    If sqrtm's result is not finite, 1e-5 I is added to both covariances and it is taken again
    (with a MetricWarning); a complex result keeps its real part. Both as in the reference.
    """
    mean_difference = generated.mean(axis=0).astype(np.float64) - ground_truth.mean(axis=0).astype(np.float64)
    covariance_generated = np.atleast_2d(np.cov(generated, rowvar=False))
    covariance_ground_truth = np.atleast_2d(np.cov(ground_truth, rowvar=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's own singularity notes: the fallback below handles them
        root = scipy.linalg.sqrtm(covariance_generated @ covariance_ground_truth)
        if not np.isfinite(root).all():
            offset = np.eye(len(covariance_generated)) * FID_DIAGONAL_OFFSET
            root = scipy.linalg.sqrtm((covariance_generated + offset) @ (covariance_ground_truth + offset))
            fallback = True
        else:
            fallback = False
    if fallback:
        warnings.warn(
            f"FID: the covariance product is singular; added {FID_DIAGONAL_OFFSET} to both diagonals (as the reference does)",
            MetricWarning,
            stacklevel=2,
        )
    if np.iscomplexobj(root):
        root = root.real
    distance = float(
        mean_difference @ mean_difference
        + np.trace(covariance_generated)
        + np.trace(covariance_ground_truth)
        - 2.0 * np.trace(root)
    )
    if not np.isfinite(distance):
        raise ValueError("FID is not finite even with the diagonal offset (features contain inf?)")
    return distance


def average_pairwise_distance(features: np.ndarray) -> float:
    """Diversity: mean Euclidean distance over all pairs i < j of the (N, D) features (N >= 2)."""
    if len(features) < 2:
        raise ValueError(f"diversity needs at least 2 clips, got {len(features)}")
    return float(pdist(np.asarray(features, dtype=np.float64)).mean())


def kinematic_beats(joints: np.ndarray) -> np.ndarray:
    """Frames of the motion beats: strict local minima of the smoothed mean joint speed.

    speed[t] = mean over joints of |p[t+1] - p[t]|, t = 0..T-2, Gaussian-smoothed with sigma 5
    frames (scipy's gaussian_filter defaults: reflected ends, truncated at 4 sigma); a minimum is
    lower than both neighbours (never the first or last frame). Computed in the joints' own dtype,
    as the reference does.
    """
    speed = np.linalg.norm(joints[1:] - joints[:-1], axis=-1).mean(axis=1)
    smoothed = gaussian_filter1d(speed, BEAT_SMOOTHING_SIGMA, truncate=BEAT_SMOOTHING_TRUNCATE)
    inner = smoothed[1:-1]
    return np.flatnonzero((inner < smoothed[:-2]) & (inner < smoothed[2:])) + 1


def beat_align_score(music_beats: np.ndarray, motion_beats: np.ndarray) -> float:
    """Mean over music beats b of exp(-min_m (m - b)^2 / (2 * 9)); frames at the same rate.

    With no motion beat at all, the minimum over the empty set is +inf and every term is 0 (the
    reference would raise). `music_beats` must not be empty (the mean would be undefined).
    """
    music_beats = np.asarray(music_beats, dtype=np.float64)
    motion_beats = np.asarray(motion_beats, dtype=np.float64)
    if music_beats.size == 0:
        raise ValueError("beat align score needs at least one music beat")
    if motion_beats.size == 0:
        return 0.0
    nearest_squared = ((motion_beats[None, :] - music_beats[:, None]) ** 2).min(axis=1)
    return float(np.exp(-nearest_squared / (2.0 * BEAT_ALIGN_SIGMA_SQUARED)).mean())


def physical_foot_contact(joints: np.ndarray, up_axis: int = UP_AXIS) -> float:
    """EDGE's foot-contact penalty of one clip, unscaled (PFC = mean over clips x PFC_SCALE).

    Root acceleration = second difference of the root (the 1/dt^2 cancels in the normalisation),
    its up component clamped at 0 from below, its norm divided by its maximum over the clip. Foot
    speed = per-frame horizontal displacement (frames t -> t+1, t = 1..T-2) of ankle and foot; per
    side the smaller of the two. Score = mean_t(left * right * acceleration). Per-frame
    displacements make it depend on the frame rate: EDGE scores its whole 30 fps clips, and so does
    the protocol (`protocol.PFC_FPS`). A root that never accelerates (maximum 0) scores 0 instead of
    EDGE's 0 / 0.
    """
    joints = np.asarray(joints, dtype=np.float64)
    root = joints[:, 0]
    root_acceleration = root[2:] - 2.0 * root[1:-1] + root[:-2]
    root_acceleration[:, up_axis] = np.maximum(root_acceleration[:, up_axis], 0.0)
    acceleration = np.linalg.norm(root_acceleration, axis=-1)
    peak = acceleration.max()
    if peak == 0.0:
        return 0.0
    horizontal = [axis for axis in range(3) if axis != up_axis]
    feet = joints[:, list(LEFT_FOOT_JOINTS + RIGHT_FOOT_JOINTS)][:, :, horizontal]
    foot_speed = np.linalg.norm(feet[2:] - feet[1:-1], axis=-1)  # (T-2, 4)
    left = np.minimum(foot_speed[:, 0], foot_speed[:, 1])
    right = np.minimum(foot_speed[:, 2], foot_speed[:, 3])
    return float((left * right * acceleration / peak).mean())
