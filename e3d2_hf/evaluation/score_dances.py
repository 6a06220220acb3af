"""`e3d2 metrics`: the paper's Table 1 metrics for a folder of any method's dances.

A folder holds one file per clip (`<name>.npy` joints, Bailando's or EDGE's output pickles, read by
`e3d2_hf.metrics.protocol.load_dance_file`), or is a prepared dataset (RUN/data: all its splits).
Music beats come from audio files (our music features' beat column), from `.npy` beat tracks, or
from the prepared dataset itself. It sits above `metrics` (a leaf that reads joints only) because it
also reads prepared datasets and audio (`e3d2_hf.data`).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from e3d2_hf.metrics.features import FEATURE_VERSION
from e3d2_hf.metrics.protocol import (
    GENERATED_FRAMES,
    PFC_FPS,
    PROTOCOL_FPS,
    UP_AXES,
    evaluate_dances,
    format_table,
    is_prepared_dataset,
    load_dance_folder,
)
from e3d2_hf.metrics.scores import PFC_SCALE, MetricWarning
from e3d2_hf.utils import E3D2Error, atomic_file, numpy_file_kind

EDGE_FPS = 30.0  # EDGE writes its dances (full_pose) at 30 fps


def load_prepared_dances(
    folder: str | Path, with_beats: bool = False, reference: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """All sequences (train + val + test) of a prepared dataset, and their music beat tracks if asked.

    With `reference`, the clips are Table 1's FID/Div reference set instead (`load_reference_dances`:
    every motion, whole), so that `e3d2 metrics` and Table 1 compare with the same ground truth.
    """
    from e3d2_hf.data.music import BEAT_COLUMN
    from e3d2_hf.data.prepare import load_prepared, load_reference_dances

    dataset_dict = load_prepared(folder)
    clips: dict[str, np.ndarray] = {}
    beats: dict[str, np.ndarray] | None = {} if with_beats else None
    for split in dataset_dict.values():
        columns = ["name", "joints"] + (["music_features"] if with_beats else [])
        rows = split.select_columns(columns).with_format("numpy")
        for row in rows:
            name = str(row["name"])
            clips[name] = np.asarray(row["joints"], dtype=np.float32)
            if beats is not None:
                beats[name] = np.asarray(row["music_features"])[:, BEAT_COLUMN] > 0.5
    if reference:
        clips = load_reference_dances(folder, dataset_dict)
    return clips, beats


def _load_side(
    folder: Path, up_axis: str, what: str, with_beats: bool, reference: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, str, dict[str, int]]:
    """Clips (and, from a prepared dataset, beat tracks if asked), a description of the source, and the files' kinds.

    A prepared dataset as the `reference` (ground-truth) side gives Table 1's FID/Div reference set.
    """
    if is_prepared_dataset(folder):
        from e3d2_hf.data.prepare import REFERENCE_MOTIONS

        clips, beats = load_prepared_dances(folder, with_beats, reference)
        described = f"prepared dataset, all splits{', music beats from its features' if with_beats else ''}"
        if reference and (folder / REFERENCE_MOTIONS).is_file():
            described = f"prepared dataset: its reference set, every motion whole ({REFERENCE_MOTIONS} and the splits)"
        return clips, beats, described, {"prepared": len(clips)}
    clips, kinds = load_dance_folder(folder, up_axis, what)
    described = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    if up_axis == "auto" and "edge" in kinds:
        described += "; EDGE full_pose is z-up, rotated to y-up"
    elif up_axis == "z":
        described += "; z-up, rotated to y-up"
    return clips, None, described, kinds


def _missing_error(option: str, folder: Path, missing: list[str]) -> E3D2Error:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return E3D2Error(f"{option} {folder}: nothing for {len(missing)} generated clip(s): {shown}")


def _beats_from_folder(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    if not folder.is_dir():
        raise E3D2Error(f"{folder}: beats folder not found")
    missing = [name for name in names if not (folder / f"{name}.npy").is_file()]
    if missing:
        raise _missing_error("--beats", folder, missing)
    beats = {}
    for name in names:
        path = folder / f"{name}.npy"
        if numpy_file_kind(path) != "npy":
            raise E3D2Error(f"{path}: not an .npy beat track")
        try:
            beats[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            reason = "it holds Python objects, not numbers" if "pickle" in str(exc) else exc
            raise E3D2Error(f"{path}: not a readable .npy beat track ({reason})") from exc
    return beats


def _beats_from_music(folder: Path, names: list[str], fps: float) -> dict[str, np.ndarray]:
    """The beat column of our music features at the clip's fps, from `<name>.<audio>` or `<music id>.<audio>`."""
    from e3d2_hf.data.aistpp import MUSIC_EXTENSIONS, music_id_from_name
    from e3d2_hf.data.music import music_beats

    if not folder.is_dir():
        raise E3D2Error(f"{folder}: music folder not found")
    paths, missing = {}, []
    for name in names:
        stems = [name]
        try:
            stems.append(music_id_from_name(name))
        except E3D2Error:
            pass
        found = [folder / f"{stem}{ext}" for stem in stems for ext in MUSIC_EXTENSIONS if (folder / f"{stem}{ext}").is_file()]
        if found:
            paths[name] = found[0]
        else:
            missing.append(name)
    if missing:
        raise _missing_error("--music", folder, missing)
    progress = tqdm(paths.items(), desc="music beats", unit="clip", disable=None, leave=False)
    return {name: music_beats(path, fps=fps) for name, path in progress}


# --------------------------------------------------------------------------------------------
# `e3d2 metrics`
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generated", type=Path, required=True, metavar="DIR",
                        help="one file per clip: <name>.npy (T,24,3)/(T,72) joints, Bailando <name>.pkl[.npy] "
                             "(pred_position) or EDGE <name>.pkl (full_pose); or a prepared dataset folder")
    parser.add_argument("--ground-truth", type=Path, required=True, metavar="DIR",
                        help="ground-truth clips in the same formats, or a prepared dataset folder (RUN/data: all splits)")
    beats = parser.add_mutually_exclusive_group()
    beats.add_argument("--music", type=Path, metavar="DIR",
                       help="audio per clip (<name>.* or <music id>.*): beats = our music features' beat column")
    beats.add_argument("--beats", type=Path, metavar="DIR",
                       help="<name>.npy per clip: one-hot beat track (T,) or frame indices, at --fps")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate of the generated clips (default: 30 when every file is EDGE's full_pose, else 60)")
    parser.add_argument("--ground-truth-fps", type=float, default=PROTOCOL_FPS, help="frame rate of the ground truth (default 60)")
    parser.add_argument("--up-axis", choices=UP_AXES, default="auto",
                        help="up axis of the files (auto: z for EDGE full_pose, y otherwise)")
    parser.add_argument("--corrected", action="store_true",
                        help="fix the reference features' bugs (numbers no longer comparable with published ones)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the ground-truth features instead of using the cache")
    parser.add_argument("--intervals", type=int, default=0, metavar="N",
                        help="95%% bootstrap intervals over the generated clips from N draws (e.g. 1000; default: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricWarning)
        use_dataset_beats = args.music is None and args.beats is None and is_prepared_dataset(args.generated)
        generated, generated_beats, generated_source, kinds = _load_side(
            args.generated, args.up_axis, "generated dances", use_dataset_beats
        )
        ground_truth, _, ground_truth_source, _ = _load_side(args.ground_truth, args.up_axis, "ground truth", False, reference=True)
        if args.fps is None:
            args.fps = EDGE_FPS if set(kinds) == {"edge"} else PROTOCOL_FPS
            if args.fps == EDGE_FPS:
                notes.append(f"every generated file is EDGE's full_pose: read at {EDGE_FPS:g} fps (--fps to say otherwise)")
        notes.append(f"generated: {len(generated)} clips from {args.generated} ({generated_source})")
        notes.append(f"ground truth: {len(ground_truth)} clips from {args.ground_truth} ({ground_truth_source})")
        for what, fps in (("generated", args.fps), ("ground-truth", args.ground_truth_fps)):
            if fps != PROTOCOL_FPS:
                verb = "upsampled" if fps < PROTOCOL_FPS else "resampled"
                notes.append(f"{what} clips at {fps:g} fps were {verb} to 60 fps by linear interpolation")
        notes.append(f"protocol: FID and Div on each generated clip's first {GENERATED_FRAMES} frames (20 s at 60 fps), BAS on the "
                     "whole clip; every clip shifted by its first frame's root")
        if args.beats is not None:
            music_beats = _beats_from_folder(args.beats, list(generated))
            notes.append(f"music beats: one-hot tracks / frame indices from {args.beats}")
        elif args.music is not None:
            music_beats = _beats_from_music(args.music, list(generated), args.fps)
            notes.append(f"music beats: beat column of the music features of the audio in {args.music}")
        else:
            music_beats = generated_beats
            if music_beats is None:
                notes.append("BAS not computed: give --music or --beats")
        if args.corrected:
            notes.append("features: CORRECTED variant (not comparable with published numbers)")
        results = evaluate_dances(
            generated, ground_truth, music_beats, args.fps,
            ground_truth_fps=args.ground_truth_fps, corrected=args.corrected, cache_ground_truth=not args.no_cache,
            intervals=args.intervals, seed=args.seed,
        )  # fmt: skip
    warning_lines = []
    for record in caught:
        if issubclass(record.category, MetricWarning):
            warning_lines.append(str(record.message))
        else:
            warnings.showwarning(record.message, record.category, record.filename, record.lineno)
    for note in notes:
        print(note)
    for line in warning_lines:
        print(f"warning: {line}", file=sys.stderr)
    print()
    print(format_table(results, method=args.generated.name or "generated"))
    print(f"(PFC: EDGE's score x {PFC_SCALE:g} on each whole generated clip at {PFC_FPS:g} fps, y up, as EDGE's eval_pfc.py; lower is better)")
    if "ci95" in results:
        print(f"95% bootstrap intervals over the {len(generated)} generated clips ({args.intervals} draws, seed {args.seed}): "
              + ", ".join(f"{key} [{low:.4g}, {high:.4g}]" for key, (low, high) in
                          ((key, value) for key, value in results["ci95"].items() if value is not None)))  # fmt: skip
    if args.json is not None:
        report = dict(results)
        report["protocol"] = {
            "num_generated": len(generated),
            "num_ground_truth": len(ground_truth),
            "fps": args.fps,
            "ground_truth_fps": args.ground_truth_fps,
            "upsampled_to_60fps": args.fps != PROTOCOL_FPS or args.ground_truth_fps != PROTOCOL_FPS,
            "generated_frames": GENERATED_FRAMES,
            "pfc_fps": PFC_FPS,
            "intervals": args.intervals,
            "corrected_features": args.corrected,
            "feature_version": FEATURE_VERSION,
            "pfc_scale": PFC_SCALE,
            "notes": notes,
            "warnings": warning_lines,
        }
        with atomic_file(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


__all__ = ["add_arguments", "load_prepared_dances", "run"]
