"""The reference evaluation protocol (Bailando's, used for the paper's Table 1) and readers of other methods' dance files.

Protocol: every clip is brought to 60 fps (a 30 fps method is upsampled by linear interpolation,
as later papers do); for FID and Div a generated clip keeps its first 1200 frames (20 s,
`fid_div_seconds`; Bailando's `utils/metrics_new.py` line 164, `[:1200]`); generated and
ground-truth clips are shifted so that the first frame's root is at the origin (this matters: the
reference's energy-expenditure feature depends on absolute position). FID_k / FID_g and Div_k /
Div_g come from the kinetic and manual features of those clips, BAS from the whole generated clip
(root kept) against the music's beat track (Bailando's `utils/beat_align_score.py` lines 66-69:
every frame of `pred_position`, the beats cut to its length). PFC is EDGE's: each whole generated clip at 30 fps (a
60 fps clip at every other frame; EDGE's own outputs, 30 fps, as they are), y up, x 1e4, as EDGE's
`eval/eval_pfc.py` scores its outputs (its per-frame foot speeds depend on the frame rate).

Ground-truth features are cached on disk keyed by the clip's content and FEATURE_VERSION, so
re-evaluating against the same ground truth costs only the generated clips. Anything that would
give a NaN raises `E3D2Error` or, where the result stays defined, emits a `MetricWarning`
(documented where it is raised).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from e3d2_hf.metrics.features import (
    FEATURE_VERSION,
    KINETIC_COMPONENTS,
    KINETIC_FEATURE_DIM,
    MANUAL_FEATURE_DIM,
    MANUAL_FEATURES,
    kinetic_features,
    manual_features,
    validate_joints,
)
from e3d2_hf.metrics.intervals import metric_draws, metric_intervals
from e3d2_hf.metrics.scores import (
    BEAT_SMOOTHING_WINDOW,
    PFC_SCALE,
    MetricWarning,
    average_pairwise_distance,
    beat_align_score,
    frechet_distance,
    kinematic_beats,
    normalise_by_ground_truth,
    physical_foot_contact,
)
from e3d2_hf.motion.skeleton import SMPL_JOINT_NAMES
from e3d2_hf.utils import E3D2Error, array_sha256, cache_dir, numpy_file_kind, read_cached_array, safe_load_pickle, write_cached_array

logger = logging.getLogger(__name__)

PROTOCOL_FPS = 60.0
PFC_FPS = 30.0  # EDGE scores foot contact on its 30 fps outputs
FID_DIV_SECONDS = 20.0  # FID and Div score the first 20 s of a generated clip; BAS the whole clip
GENERATED_FRAMES = round(FID_DIV_SECONDS * PROTOCOL_FPS)  # 1200
METRIC_KEYS = ("FID_k", "FID_g", "Div_k", "Div_g", "BAS", "PFC")
GROUND_TRUTH_KEYS = ("Div_k_gt", "Div_g_gt")
UP_AXES = ("auto", "y", "z")


# --------------------------------------------------------------------------------------------
# Protocol steps on one clip.
# --------------------------------------------------------------------------------------------
def resample_to_protocol_fps(joints: np.ndarray, fps: float, target_fps: float = PROTOCOL_FPS) -> np.ndarray:
    """Joints at `target_fps` (60) by linear interpolation in time (frame n at n / target_fps s); unchanged
    at that rate. From 60 to 30 fps this is every other frame, exactly."""
    if fps <= 0:
        raise E3D2Error(f"fps {fps}: must be positive")
    if fps == target_fps:
        return joints
    source = np.asarray(joints, dtype=np.float64)
    num_frames = int(np.floor((len(source) - 1) * target_fps / fps + 1e-9)) + 1
    position = np.arange(num_frames) * (fps / target_fps)
    lower = np.minimum(np.floor(position).astype(np.int64), len(source) - 1)
    upper = np.minimum(lower + 1, len(source) - 1)
    weight = (position - lower)[:, None, None]
    return ((1.0 - weight) * source[lower] + weight * source[upper]).astype(np.float32)


def shift_to_first_root(joints: np.ndarray) -> np.ndarray:
    """Every joint of every frame minus the first frame's root position."""
    return joints - joints[:1, :1]


def fid_div_frames(seconds: float) -> int:
    """Frames at 60 fps of the first `seconds` of a generated clip that FID and Div score."""
    if not seconds > 0:
        raise E3D2Error(f"fid_div_seconds: must be positive, got {seconds}")
    return round(seconds * PROTOCOL_FPS)


def generated_protocol_clip(joints: np.ndarray, frames: int = GENERATED_FRAMES) -> np.ndarray:
    """A generated clip as FID and Div score it: its first `frames` (1200) frames, shifted by the first frame's root."""
    return shift_to_first_root(joints[:frames])


def beat_frame_indices(beats: np.ndarray, name: str = "beats") -> tuple[np.ndarray, int | None]:
    """Frame indices of a beat track and, for a one-hot track, its length.

    A one-hot track is a bool or float array of 0/1 values, or an integer 0/1 array longer than 2;
    any other integer array lists frame indices (non-negative).
    """
    beats = np.asarray(beats)
    if beats.ndim != 1:
        raise E3D2Error(f"{name}: beats must be a 1-D one-hot track (T,) or a list of frame indices, got shape {beats.shape}")
    if beats.size == 0:
        return np.zeros(0, dtype=np.int64), None
    if beats.dtype == bool:
        return np.flatnonzero(beats), len(beats)
    if np.issubdtype(beats.dtype, np.floating):
        if not np.isin(beats, (0.0, 1.0)).all():
            raise E3D2Error(f"{name}: a float beat track must be one-hot (values 0 and 1 only)")
        return np.flatnonzero(beats), len(beats)
    if not np.issubdtype(beats.dtype, np.integer):
        raise E3D2Error(f"{name}: beats must be numbers, got dtype {beats.dtype}")
    if len(beats) > 2 and np.isin(beats, (0, 1)).all():
        return np.flatnonzero(beats), len(beats)
    if (beats < 0).any():
        raise E3D2Error(f"{name}: negative beat frame index {beats.min()}")
    return np.unique(beats.astype(np.int64)), None


# --------------------------------------------------------------------------------------------
# Features of clip sets (ground truth cached).
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DanceFeatures:
    """Kinetic (N, 72) and manual (N, 32) float32 features of a set of protocol clips."""

    kinetic: np.ndarray
    manual: np.ndarray
    corrected: bool = False

    def __len__(self) -> int:
        return len(self.kinetic)


def _features_of(clips: Sequence[np.ndarray], corrected: bool, cache: bool, description: str) -> DanceFeatures:
    folder = cache_dir("metrics") if cache else None
    suffix = f"v{FEATURE_VERSION}{'-corrected' if corrected else ''}"
    rows = []
    for clip in tqdm(clips, desc=description, unit="clip", disable=None, leave=False):
        path = folder / f"{array_sha256(clip)}-{suffix}.npy" if folder is not None else None
        row = read_cached_array(path, lambda cached: cached.shape == (KINETIC_FEATURE_DIM + MANUAL_FEATURE_DIM,))
        if row is None:  # not cached yet, or an unreadable entry: computed and stored again
            row = np.concatenate([kinetic_features(clip, corrected=corrected), manual_features(clip, corrected=corrected)])
            write_cached_array(path, row)
        rows.append(row)
    table = np.stack(rows).astype(np.float32)
    return DanceFeatures(table[:, :KINETIC_FEATURE_DIM], table[:, KINETIC_FEATURE_DIM:], corrected)


def _as_named_clips(clips: Mapping[str, np.ndarray] | Sequence[np.ndarray], what: str) -> dict[str, np.ndarray]:
    if isinstance(clips, Mapping):
        return dict(clips)
    if isinstance(clips, np.ndarray) and clips.ndim != 1:
        raise E3D2Error(f"{what}: give a dict or list of clips, not one array of shape {clips.shape}")
    return {f"{what}[{index}]": clip for index, clip in enumerate(clips)}


def ground_truth_features(
    ground_truth: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    fps: float = PROTOCOL_FPS,
    *,
    corrected: bool = False,
    cache: bool = True,
) -> DanceFeatures:
    """Features of full-length ground-truth clips shifted by their first root (cached by content).

    Compute once and pass the result to `evaluate_dances` when evaluating repeatedly.
    """
    clips = _as_named_clips(ground_truth, "ground truth")
    if len(clips) < 2:
        raise E3D2Error(f"ground truth: {len(clips)} clip(s); FID and diversity need at least 2")
    shifted = [
        shift_to_first_root(
            resample_to_protocol_fps(validate_joints(joints, f"ground-truth clip '{name}'").astype(np.float32, copy=False), fps)
        )
        for name, joints in clips.items()
    ]
    features = _features_of(shifted, corrected, cache, "ground-truth features")
    constant = constant_features(features)
    if constant:
        warnings.warn(
            f"ground truth: {len(constant)} feature(s) have zero variance over its {len(clips)} clips: {_listed(constant)}; "
            "FID and Div are computed as the protocol does, dividing them by std + 1e-10, so any generated deviation in them "
            "is magnified 1e10 times (ground truth too smooth, too rigid or too few clips?)",
            MetricWarning,
            stacklevel=2,
        )
    return features


def _listed(labels: list[str], shown: int = 12) -> str:
    return ", ".join(labels[:shown]) + (f" and {len(labels) - shown} more" if len(labels) > shown else "")


def _feature_label(kind: str, index: int) -> str:
    if kind == "k":
        return f"kinetic {index} ({SMPL_JOINT_NAMES[index // 3]} {KINETIC_COMPONENTS[index % 3]})"
    feature = MANUAL_FEATURES[index]
    return f"manual {index} ({feature.relation} {' '.join(feature.points)})"


def constant_features(features: DanceFeatures, candidate: DanceFeatures | None = None) -> list[str]:
    """Labels of the features with zero variance over `features`; with `candidate`, only those that it leaves."""
    labels = []
    for kind, values in (("k", features.kinetic), ("g", features.manual)):
        constant = values.std(axis=0) == 0
        if candidate is not None:
            constant &= ((candidate.kinetic if kind == "k" else candidate.manual) != values[0]).any(axis=0)
        labels += [_feature_label(kind, index) for index in np.flatnonzero(constant)]
    return labels


# --------------------------------------------------------------------------------------------
# The scores.
# --------------------------------------------------------------------------------------------
def _beat_align_scores(
    clips: dict[str, np.ndarray], input_lengths: dict[str, int], music_beats: Mapping[str, np.ndarray], fps: float
) -> np.ndarray:
    """Each clip's BAS, NaN for a clip left out (see evaluate_dances for the rules)."""
    missing = [name for name in clips if name not in music_beats]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise E3D2Error(f"music beats: none given for {len(missing)} generated clip(s): {shown}")
    scores = []
    for name, joints in clips.items():
        if len(joints) - 1 < BEAT_SMOOTHING_WINDOW:
            raise E3D2Error(
                f"generated clip '{name}': {len(joints)} frames at 60 fps; the beat align score smooths joint speeds "
                f"with a {BEAT_SMOOTHING_WINDOW}-frame Gaussian window and needs at least {BEAT_SMOOTHING_WINDOW + 1}"
            )
        frames, track_length = beat_frame_indices(music_beats[name], f"music beats of '{name}'")
        input_frames = input_lengths[name]
        if track_length is not None and track_length < input_frames - 1:
            warnings.warn(
                f"music beats of '{name}': the beat track has {track_length} frames but the motion {input_frames} "
                f"(at {fps:g} fps); music beats after frame {track_length} are missing from its score",
                MetricWarning,
                stacklevel=4,
            )
        frames = np.unique(np.round(frames * (PROTOCOL_FPS / fps)).astype(np.int64))
        frames = frames[frames < len(joints) - 1]  # the reference cuts the track to the speed's length, T - 1
        if frames.size == 0:
            warnings.warn(
                f"music beats of '{name}': no music beat inside the clip; the clip is left out of BAS",
                MetricWarning,
                stacklevel=4,
            )
            scores.append(np.nan)
            continue
        motion_beats = kinematic_beats(joints)
        if motion_beats.size == 0:
            warnings.warn(
                f"generated clip '{name}': no kinematic beat (its smoothed speed has no local minimum); it scores BAS 0",
                MetricWarning,
                stacklevel=4,
            )
        scores.append(beat_align_score(frames, motion_beats))
    if np.isnan(scores).all():
        warnings.warn("BAS: no generated clip has a music beat; BAS is not reported", MetricWarning, stacklevel=4)
    return np.asarray(scores, dtype=np.float64)


def _foot_contact(joints: np.ndarray, fps: float) -> float:
    """EDGE's PFC of one whole clip (unscaled) at 30 fps; NaN for a clip of fewer than 3 frames at 30 fps."""
    clip = resample_to_protocol_fps(joints, fps, PFC_FPS)
    return physical_foot_contact(clip) if len(clip) >= 3 else float("nan")


@dataclass(frozen=True)
class ClipScores:
    """What each generated clip brings to the table: its features, its BAS (NaN: left out; None: no
    beats given) and its foot-contact score (unscaled; NaN: too short), in the clips' order."""

    names: list[str]
    features: DanceFeatures
    beat_align: np.ndarray | None
    foot_contact: np.ndarray


def score_clips(
    generated: Mapping[str, np.ndarray],
    music_beats: Mapping[str, np.ndarray] | None = None,
    fps: float = PROTOCOL_FPS,
    *,
    corrected: bool = False,
    fid_div_seconds: float = FID_DIV_SECONDS,
) -> ClipScores:
    """Every generated clip scored on its own (the rules are `evaluate_dances`'s); at least 2 clips."""
    frames = fid_div_frames(fid_div_seconds)
    if not isinstance(generated, Mapping):
        raise E3D2Error("generated: give a dict of clip name -> joints")
    validated = {
        name: validate_joints(joints, f"generated clip '{name}'").astype(np.float32, copy=False) for name, joints in generated.items()
    }
    if len(validated) < 2:
        raise E3D2Error(f"generated: {len(validated)} clip(s); FID's covariance and diversity need at least 2")
    clips = {name: resample_to_protocol_fps(joints, fps) for name, joints in validated.items()}
    input_lengths = {name: len(joints) for name, joints in validated.items()}
    beat_align = None if music_beats is None else _beat_align_scores(clips, input_lengths, music_beats, fps)
    protocol_clips = [generated_protocol_clip(joints, frames) for joints in clips.values()]
    return ClipScores(
        names=list(validated),
        features=_features_of(protocol_clips, corrected, cache=False, description="generated features"),
        beat_align=beat_align,
        foot_contact=np.array([_foot_contact(joints, fps) for joints in validated.values()]),
    )


def _normalised(scores: ClipScores, reference: DanceFeatures) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """kind -> (ground truth, generated) features standardised with the ground truth's mean and std (+ 1e-10)."""
    return {
        "k": normalise_by_ground_truth(reference.kinetic, scores.features.kinetic),
        "g": normalise_by_ground_truth(reference.manual, scores.features.manual),
    }


def table_metrics(
    scores: ClipScores, reference: DanceFeatures, *, intervals: int = 0, seed: int = 0, keep_draws: bool = False
) -> dict[str, Any]:
    """FID_k, FID_g, Div_k, Div_g, BAS, PFC (x 1e4) and Div_k_gt, Div_g_gt of scored clips against the
    ground truth's features; with `intervals` > 0 also "ci95" from that many bootstrap draws (seeded)
    of the clips, and with `keep_draws` the draws' values themselves ("draws", for paired intervals)."""
    if scores.features.corrected != reference.corrected:
        raise E3D2Error(f"ground-truth features were computed with corrected={reference.corrected}, not {scores.features.corrected}")
    if len(reference) < 2:
        raise E3D2Error(f"ground truth: {len(reference)} clip(s); FID and diversity need at least 2")
    deviating = constant_features(reference, scores.features)
    if deviating:
        warnings.warn(
            f"FID / Div: feature(s) {_listed(deviating)} are constant over "
            "the ground truth but not over the generated clips; the reference's std + 1e-10 normalisation magnifies "
            "them 1e10 times (too few or too uniform ground-truth clips?)",
            MetricWarning,
            stacklevel=2,
        )
    normalised = _normalised(scores, reference)
    results: dict[str, Any] = {}
    with threadpool_limits(limits=1, user_api="blas"):  # a 72 x 72 sqrtm: more threads only wait on each other
        for kind, (normalised_reference, normalised_candidate) in normalised.items():
            results[f"FID_{kind}"] = frechet_distance(normalised_candidate, normalised_reference)
            results[f"Div_{kind}"] = average_pairwise_distance(normalised_candidate)
            results[f"Div_{kind}_gt"] = average_pairwise_distance(normalised_reference)
    beat_align = scores.beat_align
    results["BAS"] = None if beat_align is None or np.isnan(beat_align).all() else float(np.nanmean(beat_align))
    contact = scores.foot_contact[np.isfinite(scores.foot_contact)]
    results["PFC"] = float(contact.mean() * PFC_SCALE) if contact.size else None
    table = {key: results[key] for key in METRIC_KEYS + GROUND_TRUTH_KEYS}
    if intervals > 0:
        candidates = {kind: pair[1] for kind, pair in normalised.items()}
        references = {kind: pair[0] for kind, pair in normalised.items()}
        draws = metric_draws(candidates, references, beat_align, resamples=intervals, seed=seed)
        table["ci95"] = metric_intervals(draws)
        if keep_draws:
            table["draws"] = draws
    return table


def evaluate_dances(
    generated: Mapping[str, np.ndarray],
    ground_truth: Mapping[str, np.ndarray] | Sequence[np.ndarray] | DanceFeatures,
    music_beats: Mapping[str, np.ndarray] | None = None,
    fps: float = PROTOCOL_FPS,
    *,
    ground_truth_fps: float = PROTOCOL_FPS,
    corrected: bool = False,
    cache_ground_truth: bool = True,
    intervals: int = 0,
    seed: int = 0,
    keep_draws: bool = False,
    fid_div_seconds: float = FID_DIV_SECONDS,
) -> dict[str, Any]:
    """The paper's Table 1 metrics of `generated` clips against a ground-truth set.

    generated: clip name -> joints (T, 24, 3) or (T, 72), metres, y up, SMPL order, at `fps`
    (anything but 60 is resampled to 60 by linear interpolation for FID, Div and BAS; PFC scores
    each whole clip at 30 fps). FID and Div score the first `fid_div_seconds` (Bailando: 20) of
    each clip, BAS and PFC the whole clip. At least 2 clips.
    ground_truth: clips the same way at `ground_truth_fps` (dict or list), or their
    `ground_truth_features(...)`. At least 2 clips.
    music_beats: clip name -> the music's beat track at `fps`: one-hot (T,) or frame indices
    (every generated clip needs one; extra names are ignored). None: BAS is None.
    corrected: features with the reference's bugs fixed (not comparable with published numbers).
    intervals: bootstrap draws of the clips for 95% intervals ("ci95", `e3d2_hf.metrics.intervals`); 0: none.
    keep_draws: also return the draws' values ("draws": metric -> array) for `intervals.paired_interval`.

    Returns FID_k, FID_g, Div_k, Div_g, BAS, PFC (x 1e4) and the ground truth's own Div_k_gt,
    Div_g_gt. Warnings (MetricWarning): a ground-truth feature with zero variance (named); a beat
    track shorter than its motion; a clip with no music beat inside it (left out of BAS); a clip
    without kinematic beats (BAS 0 for it); a singular covariance product (FID's diagonal offset);
    a feature constant over the ground truth that the generated clips leave (magnified 1e10 by the
    normalisation). Errors (E3D2Error): bad shapes, NaN / inf joints, fewer than 2 clips on either
    side, a clip shorter than the 41-frame smoothing window when BAS is asked for, generated clips
    without beats.
    """
    scores = score_clips(generated, music_beats, fps, corrected=corrected, fid_div_seconds=fid_div_seconds)
    if isinstance(ground_truth, DanceFeatures):
        reference = ground_truth
    else:
        reference = ground_truth_features(ground_truth, ground_truth_fps, corrected=corrected, cache=cache_ground_truth)
    return table_metrics(scores, reference, intervals=intervals, seed=seed, keep_draws=keep_draws)


def format_table(results: Mapping[str, float | None], method: str = "generated") -> str:
    """The paper's Table 1 layout: a ground-truth row (its own diversity) and the method's row."""
    def cell(value: float | None, digits: int) -> str:
        text = "-" if value is None else f"{value:.3e}" if abs(value) >= 1e6 else f"{value:.{digits}f}"
        return " " + text.rjust(9)

    header = f"{'Method':<16}" + "".join(f" {key:>9}" for key in METRIC_KEYS)
    ground_truth_cells = [None, None, results["Div_k_gt"], results["Div_g_gt"], None, None]
    ground_truth_row = f"{'Ground Truth':<16}" + "".join(cell(value, 2) for value in ground_truth_cells)
    digits = {"FID_k": 2, "FID_g": 2, "Div_k": 2, "Div_g": 2, "BAS": 4, "PFC": 4}
    method_row = f"{method[:15]:<16}" + "".join(cell(results[key], digits[key]) for key in METRIC_KEYS)
    return "\n".join([header, ground_truth_row, method_row])


# --------------------------------------------------------------------------------------------
# Reading dances from disk.
# --------------------------------------------------------------------------------------------
def _z_up_to_y_up(joints: np.ndarray) -> np.ndarray:
    """A proper rotation taking z-up to y-up: (x, y, z) -> (x, z, -y). Every score is invariant to
    the remaining choice (a turn about the vertical axis)."""
    return np.stack([joints[..., 0], joints[..., 2], -joints[..., 1]], axis=-1)


def _load_npy_payload(path: Path) -> object:
    """An .npy file: a plain array, or a pickled object array (Bailando's `np.save` of a dict) read safely."""
    if numpy_file_kind(path) != "npy":
        raise E3D2Error(f"{path}: not an .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise E3D2Error(f"{path}: not a readable .npy file ({exc})") from exc
    except OSError as exc:
        raise E3D2Error(f"{path}: cannot read ({exc})") from exc
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(handle)
        else:
            np.lib.format.read_array_header_2_0(handle)
        payload = handle.read()
    with tempfile.TemporaryDirectory() as scratch:
        pickled = Path(scratch) / path.name
        pickled.write_bytes(payload)
        try:
            loaded = safe_load_pickle(pickled)
        except E3D2Error as exc:
            raise E3D2Error(f"{path}: {str(exc).split(': ', 1)[-1]}") from exc
    return loaded.item() if isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.ndim == 0 else loaded


def load_dance_file(path: str | Path, up_axis: str = "auto") -> tuple[np.ndarray, str]:
    """Joints (T, 24, 3) float32, y up, and the file's kind ("array", "bailando" or "edge").

    `.npy` arrays (T, 24, 3) / (T, 72); Bailando output (a dict with `pred_position`, pickled or
    `np.save`d); EDGE output (a pickle with `full_pose`, which EDGE writes z-up). `up_axis` "auto"
    treats EDGE files as z-up and everything else as y-up.
    """
    path = Path(path)
    payload = _load_npy_payload(path) if path.suffix == ".npy" else safe_load_pickle(path)
    if isinstance(payload, np.ndarray):
        joints, kind = payload, "array"
    elif isinstance(payload, dict) and "pred_position" in payload:
        joints, kind = payload["pred_position"], "bailando"
    elif isinstance(payload, dict) and "full_pose" in payload:
        joints, kind = payload["full_pose"], "edge"
    elif isinstance(payload, dict) and "smpl_poses" in payload:
        raise E3D2Error(f"{path}: SMPL parameters, not joints; run `e3d2 prepare` and pass the prepared dataset folder")
    else:
        keys = ", ".join(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
        raise E3D2Error(f"{path}: expected joints or a dict with 'pred_position' / 'full_pose', got {keys}")
    joints = validate_joints(np.asarray(joints), str(path)).astype(np.float32, copy=False)
    if up_axis == "z" or (up_axis == "auto" and kind == "edge"):
        joints = _z_up_to_y_up(joints)
    return joints, kind


def _clip_name(path: Path) -> str | None:
    """`<name>.npy`, `<name>.pkl` or Bailando's `<name>.pkl.npy` -> name; None for other files."""
    name = path.name
    for suffix in (".pkl.npy", ".npy", ".pkl"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def is_prepared_dataset(folder: Path) -> bool:
    """A prepared dataset folder (`datasets.DatasetDict.save_to_disk`), not a folder of dance files."""
    return (folder / "dataset_dict.json").is_file()


def load_dance_folder(folder: str | Path, up_axis: str = "auto", what: str = "dances") -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """One clip per `<name>.npy` / `.pkl` / `.pkl.npy` file in `folder` (other files and folders are skipped).

    Returns name -> joints and how many files of each kind were read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise E3D2Error(f"{folder}: {what} folder not found")
    paths: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = _clip_name(path) if path.is_file() else None
        if name is None:
            continue
        if name in paths:
            raise E3D2Error(f"{folder}: two files for clip '{name}' ({paths[name].name}, {path.name})")
        paths[name] = path
    if not paths:
        raise E3D2Error(f"{folder}: no dance files (.npy, .pkl) in the {what} folder")
    clips, kinds = {}, {}
    for name, path in tqdm(paths.items(), desc=f"reading {what}", unit="file", disable=None, leave=False):
        clips[name], kind = load_dance_file(path, up_axis)
        kinds[kind] = kinds.get(kind, 0) + 1
    return clips, kinds
