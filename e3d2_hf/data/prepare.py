"""`e3d2 prepare`: AIST++ (or the embedded synthetic default) -> a `datasets.DatasetDict` on disk.

One row per dance sequence, in the official splits, with everything later stages need and
nothing they would have to recompute: joints at 60 fps (SMPL FK), music features at 60 fps
aligned frame by frame with the joints, and music features at 7.5 fps, one per 8-frame pose-code
step. Beside the splits, `reference_motions.npz` holds the full-length joints of every other motion
of the FID/Div reference set (Bailando's: every sequence of the release minus the ignore list,
`aistpp.read_reference_names`) and of any split sequence whose motion was cut to its music, so
that `load_reference_dances` gives that set exactly. A manifest records where the data came from
(with content hashes), so a run can be traced back to its inputs. The folder appears only when
complete (written through `atomic_directory`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import shutil
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from e3d2_hf import __version__
from e3d2_hf.data import music
from e3d2_hf.data.aistpp import SPLITS, AISTPPSequence, load_motion, motion_joints, music_id_from_name, read_reference_names, read_split
from e3d2_hf.motion.skeleton import GENDERS, NUM_JOINTS
from e3d2_hf.recipe import RunLayout
from e3d2_hf.utils import E3D2Error, atomic_directory, atomic_file, available_cpus, file_sha256, numpy_file_kind
from e3d2_hf.versions import environment_versions

logger = logging.getLogger(__name__)

MOTION_FPS = 60.0
MUSIC_FPS_LOW = 7.5  # one music frame per pose-code step
FRAMES_PER_CODE_STEP = int(MOTION_FPS / MUSIC_FPS_LOW)  # the VQ-VAE downsamples time by 8
MANIFEST_NAME = "manifest.json"
REFERENCE_MOTIONS = "reference_motions.npz"  # the FID/Div reference set's motions not (whole) in the splits: name -> joints
COLUMNS = ("name", "music_id", "genre", "joints", "music_features", "music_features_7p5")
# Motion and music longer apart than this are reported: they are probably not the same take.
MAX_SILENT_MISMATCH_FRAMES = int(MOTION_FPS)


def dataset_features() -> Any:
    """The column types of every split (variable-length first dimension)."""
    import datasets

    return datasets.Features(
        {
            "name": datasets.Value("string"),
            "music_id": datasets.Value("string"),
            "genre": datasets.Value("string"),
            "joints": datasets.Array3D(shape=(None, NUM_JOINTS, 3), dtype="float32"),
            "music_features": datasets.Array2D(shape=(None, music.MUSIC_FEATURE_DIM), dtype="float32"),
            "music_features_7p5": datasets.Array2D(shape=(None, music.MUSIC_FEATURE_DIM), dtype="float32"),
        }
    )


def align_streams(
    name: str, joints: np.ndarray, music_features: np.ndarray, music_features_7p5: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut motion and 60 fps music to the shorter one; give the 7.5 fps music exactly ceil(T / 8) frames.

    The 7.5 fps stream may come out one frame short of ceil(T / 8) (frame counts round
    differently at the two sample rates); its last frame is then repeated.
    """
    frames = min(len(joints), len(music_features))
    if abs(len(joints) - len(music_features)) > MAX_SILENT_MISMATCH_FRAMES:
        logger.warning(
            "%s: motion has %d frames, music %d (%.1f s apart); both cut to %d",
            name, len(joints), len(music_features), abs(len(joints) - len(music_features)) / MOTION_FPS, frames,
        )  # fmt: skip
    steps = math.ceil(frames / FRAMES_PER_CODE_STEP)
    low = music_features_7p5[:steps]
    if len(low) < steps:
        if len(low) == 0:
            raise E3D2Error(f"{name}: music has no 7.5 fps frames")
        low = np.concatenate([low, np.repeat(low[-1:], steps - len(low), axis=0)])
    return joints[:frames], music_features[:frames], low


MusicStreams = tuple[np.ndarray, np.ndarray]  # a file's music features at 60 fps and at 7.5 fps


def _music_streams(path_text: str, feature_cache: bool) -> MusicStreams | E3D2Error:
    """Both music feature streams of one file, or the error that names the file (returned, not raised, from a worker)."""
    path = Path(path_text)
    try:
        return music.music_features(path, fps=MOTION_FPS, cache=feature_cache), music.music_features(path, fps=MUSIC_FPS_LOW, cache=feature_cache)
    except E3D2Error as exc:
        return exc
    except Exception as exc:  # librosa/soundfile failures on odd audio: report the file, not a traceback
        return E3D2Error(f"{path}: cannot compute music features ({type(exc).__name__}: {exc})")


def music_streams_of(paths: Iterable[Path], feature_cache: bool = True, feature_threads: int | None = None) -> dict[str, MusicStreams | E3D2Error]:
    """Both streams of each music file (many AIST++ dances share one), or the error that names the file.

    The features are most of `prepare`'s time and the files are independent: those not in the cache
    are computed `feature_threads` at a time (None: one per CPU this process may use), in threads, since
    librosa's HPSS median filter and FFTs run without the GIL (1.8x on two cores). The features do
    not depend on it.
    """
    if feature_threads is not None and feature_threads < 1:
        raise E3D2Error(f"prepare: feature_threads must be at least 1, got {feature_threads}")
    streams: dict[str, MusicStreams | E3D2Error] = {}
    missing = []
    for path in dict.fromkeys(str(path) for path in paths):
        try:
            cached = [music.cached_music_features(path, fps) for fps in (MOTION_FPS, MUSIC_FPS_LOW)] if feature_cache else [None]
        except E3D2Error:  # an empty file, say: computing says so, naming it
            cached = [None]
        if all(features is not None for features in cached):
            streams[path] = (cached[0], cached[1])
        else:
            missing.append(path)
    workers = max(1, min(len(missing), feature_threads or available_cpus()))
    # The feature code silences some librosa warnings with `catch_warnings`, which is not thread-safe
    # (two threads interleaved can leave a filter behind): whatever they do, the filters come back here.
    with warnings.catch_warnings(), concurrent.futures.ThreadPoolExecutor(workers) as pool:
        computed = pool.map(_music_streams, missing, itertools.repeat(feature_cache))
        streams.update(zip(missing, tqdm(computed, total=len(missing), desc="music features", unit="file")))
    return streams


def prepare_sequence(
    sequence: AISTPPSequence,
    music_streams: MusicStreams | E3D2Error,
    gender: str = "male",
    smpl_model_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """One dataset row for a sequence and its music's `music_streams_of`; raises `E3D2Error` naming the file at fault."""
    music_id = music_id_from_name(sequence.name)
    if not sequence.music_path.is_file():
        raise E3D2Error(f"{sequence.music_path}: music file not found (needed by {sequence.name})")
    if isinstance(music_streams, E3D2Error):
        raise E3D2Error(str(music_streams))
    joints = motion_joints(sequence.motion_path, gender=gender, smpl_model_dir=smpl_model_dir)
    joints, music_features, music_features_7p5 = align_streams(sequence.name, joints, *music_streams)
    if len(joints) == 0:
        raise E3D2Error(f"{sequence.music_path}: music is empty (needed by {sequence.name})")
    return {
        "name": sequence.name,
        "music_id": music_id,
        "genre": sequence.genre,
        "joints": joints.astype(np.float32),
        "music_features": music_features.astype(np.float32),
        "music_features_7p5": music_features_7p5.astype(np.float32),
    }


@dataclass
class _SplitRows:
    """Generator of one split's rows for `Dataset.from_generator`; remembers what it skipped and hashed."""

    split: str
    sequences: list[AISTPPSequence]
    music_streams: dict[str, MusicStreams | E3D2Error]
    gender: str
    smpl_model_dir: str | None
    frames: int = 0
    rows: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    motion_sha256: dict[str, str] = field(default_factory=dict)
    music_sha256: dict[str, str] = field(default_factory=dict)
    frames_of: dict[str, int] = field(default_factory=dict)

    def __call__(self) -> Iterator[dict[str, Any]]:
        for sequence in tqdm(self.sequences, desc=f"prepare {self.split}", unit="seq"):
            try:
                row = prepare_sequence(sequence, self.music_streams.get(str(sequence.music_path)), self.gender, self.smpl_model_dir)
            except E3D2Error as exc:
                logger.warning("skipping %s: %s", sequence.name, exc)
                self.skipped.append({"name": sequence.name, "split": self.split, "reason": str(exc)})
                continue
            self.motion_sha256[sequence.name] = file_sha256(sequence.motion_path)
            if row["music_id"] not in self.music_sha256:
                self.music_sha256[row["music_id"]] = file_sha256(sequence.music_path)
            self.rows += 1
            self.frames += len(row["joints"])
            self.frames_of[sequence.name] = len(row["joints"])
            yield row


def _build_split(rows: _SplitRows, arrow_cache: str) -> Any:
    import datasets

    try:
        return datasets.Dataset.from_generator(rows, features=dataset_features(), cache_dir=arrow_cache, split=rows.split)
    except Exception as exc:
        if rows.rows == 0 and rows.skipped:
            first = rows.skipped[0]
            raise E3D2Error(
                f"split '{rows.split}': none of its {len(rows.sequences)} sequences could be read "
                f"(first: {first['reason']})"
            ) from None
        cause = exc
        while cause is not None and not isinstance(cause, (E3D2Error, OSError)):
            cause = cause.__cause__ or cause.__context__
        if cause is not None and cause is not exc:  # `datasets` wraps a full disk (OSError) in its own error
            raise cause from exc
        raise


@dataclass
class _ReferenceRows:
    """Generator of the reference set's motions that the splits do not hold whole: full-length joints, no music."""

    source_dir: Path
    names: list[str]
    prepared_frames: dict[str, int]
    gender: str
    smpl_model_dir: str | None
    rows: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    motion_sha256: dict[str, str] = field(default_factory=dict)

    def __call__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in tqdm(self.names, desc="prepare reference motions", unit="seq"):
            path = self.source_dir / "motions" / f"{name}.pkl"
            try:
                if name in self.prepared_frames and len(load_motion(path).poses) <= self.prepared_frames[name]:
                    continue  # the split's row is the whole motion
                joints = motion_joints(path, gender=self.gender, smpl_model_dir=self.smpl_model_dir)
            except E3D2Error as exc:
                logger.warning("reference set: skipping %s: %s", name, exc)
                self.skipped.append({"name": name, "split": REFERENCE_MOTIONS, "reason": str(exc)})
                continue
            self.motion_sha256[name] = file_sha256(path)
            self.rows += 1
            yield name, joints.astype(np.float32)


def write_reference_motions(path: Path, motions: dict[str, np.ndarray]) -> None:
    """`reference_motions.npz`: name -> (T, 24, 3) float32 joints (AIST++: about 400 motions; none for the synthetic set)."""
    with open(path, "wb") as handle:
        np.savez(handle, **motions)


def load_reference_dances(run_data_dir: str | os.PathLike, data: Any) -> dict[str, np.ndarray]:
    """The FID/Div reference set: name -> full-length joints of every motion it holds (the splits' dances, with
    `reference_motions.npz` added and put in place of the cut ones). A dataset prepared before it existed: the splits alone."""
    dances = {
        str(row["name"]): np.asarray(row["joints"], dtype=np.float32)
        for split in data.values()
        for row in split.with_format("numpy", columns=["name", "joints"])
    }
    path = Path(run_data_dir) / REFERENCE_MOTIONS
    if not path.is_file():
        logger.warning("%s: not found (prepared before the reference set had it); FID/Div compare with the splits' dances only", path)
        return dances
    if numpy_file_kind(path) != "npz":
        raise E3D2Error(f"{path}: not an .npz file of reference motions; prepare the data again")
    try:
        with np.load(path, allow_pickle=False) as reference:
            motions = {name: reference[name] for name in reference.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise E3D2Error(f"{path}: cannot read the reference motions ({type(exc).__name__}: {exc}); prepare the data again") from exc
    for name, joints in motions.items():
        if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
            raise E3D2Error(f"{path}: motion '{name}' has shape {joints.shape}, expected (T, {NUM_JOINTS}, 3)")
        if not np.issubdtype(joints.dtype, np.number):
            raise E3D2Error(f"{path}: motion '{name}' holds {joints.dtype} values, not numbers; prepare the data again")
        if not np.isfinite(joints).all():
            raise E3D2Error(f"{path}: motion '{name}' has NaN or infinite joint positions; prepare the data again")
        dances[name] = joints.astype(np.float32, copy=False)
    return dances


@contextlib.contextmanager
def _only_our_progress_bars() -> Iterator[None]:
    """Hide the `datasets` bars (one per split and per save) behind our per-sequence bar."""
    import datasets

    already_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not already_disabled:
            datasets.enable_progress_bars()


@dataclass(frozen=True)
class SyntheticPlan:
    """What the embedded synthetic dataset holds: sequences, held-out pieces (None: a fifth), lengths in seconds."""

    sequences: int
    heldout_pieces: int | None = None
    seconds: tuple[float, float] = (8.0, 16.0)
    heldout_seconds: tuple[float, float] | None = None


def _synthetic_source(synthetic_dir: Path, plan: SyntheticPlan, seed: int) -> Path:
    from e3d2_hf.data.synthetic import generate_synthetic_aistpp

    logger.info("writing %s (seed %d) in the AIST++ layout to %s", plan, seed, synthetic_dir)
    import soundfile

    try:
        with atomic_directory(synthetic_dir) as tmp:
            generate_synthetic_aistpp(tmp, plan.sequences, seed, plan.seconds, plan.heldout_pieces, plan.heldout_seconds)
    except soundfile.LibsndfileError as exc:  # how soundfile reports a full disk
        raise E3D2Error(f"{synthetic_dir}: cannot write the synthetic music (libsndfile: {exc})") from exc
    except ValueError as exc:
        raise E3D2Error(f"synthetic dataset: {exc}") from None
    return synthetic_dir


def prepare_dataset(
    out_dir: str | os.PathLike,
    *,
    aistpp_dir: str | os.PathLike | None = None,
    music_dir: str | os.PathLike | None = None,
    synthetic_sequences: int | SyntheticPlan | None = None,
    seed: int = 0,
    synthetic_dir: str | os.PathLike | None = None,
    gender: str = "male",
    smpl_model_dir: str | os.PathLike | None = None,
    feature_cache: bool = True,
    feature_threads: int | None = None,
) -> Path:
    """Write the prepared DatasetDict (train/val/test) and its manifest to `out_dir`; returns `out_dir`.

    Give either `aistpp_dir` (an AIST++ annotations folder; music in `music_dir`, default
    `<aistpp_dir>/wavs`) or `synthetic_sequences` (the embedded default: that many procedural
    sequences, or a `SyntheticPlan`, are first written in the AIST++ layout to `synthetic_dir`,
    default `<out_dir>_raw`, then read like AIST++). A sequence that cannot be read is skipped with a warning and counted;
    a split left without any sequence is an error. `feature_threads` music files are featurised at once (`music_streams_of`).
    """
    import datasets

    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():  # before minutes of work (a file is never replaced by the dataset)
        raise E3D2Error(f"{out_dir}: is a file, not a folder")
    if (aistpp_dir is None) == (synthetic_sequences is None):
        raise E3D2Error("prepare: give exactly one source, an AIST++ folder or a number of synthetic sequences")
    if gender not in GENDERS:
        raise E3D2Error(f"gender '{gender}': unknown SMPL body (choose one of {', '.join(GENDERS)})")
    if smpl_model_dir is not None and not Path(smpl_model_dir).exists():
        raise E3D2Error(f"{smpl_model_dir}: SMPL model folder not found")
    if synthetic_sequences is not None:
        if music_dir is not None:
            raise E3D2Error("prepare: --music-dir applies to AIST++ only, the synthetic set brings its own music")
        plan = synthetic_sequences if isinstance(synthetic_sequences, SyntheticPlan) else SyntheticPlan(synthetic_sequences)
        synthetic_dir = Path(synthetic_dir) if synthetic_dir is not None else out_dir.with_name(f"{out_dir.name}_raw")
        source_dir = _synthetic_source(synthetic_dir, plan, seed)
        source: dict[str, Any] = {"kind": "synthetic", "dir": str(source_dir), "num_sequences": plan.sequences, "seed": seed,
                                  "plan": dataclasses.asdict(plan)}  # fmt: skip
    else:
        source_dir = Path(aistpp_dir)
        if music_dir is not None and not Path(music_dir).is_dir():
            raise E3D2Error(f"{music_dir}: music folder not found")
        source = {"kind": "aistpp", "dir": str(source_dir), "music_dir": str(music_dir or source_dir / "wavs")}

    split_sequences = {split: read_split(source_dir, split, music_dir) for split in SPLITS}
    for split, sequences in split_sequences.items():
        if not sequences:
            raise E3D2Error(f"{source_dir / 'splits' / f'crossmodal_{split}.txt'}: lists no sequence (after the ignore list)")

    music_paths = [sequence.music_path for sequences in split_sequences.values() for sequence in sequences if sequence.music_path.is_file()]
    music_streams = music_streams_of(music_paths, feature_cache, feature_threads)
    split_rows = {
        split: _SplitRows(split, sequences, music_streams, gender, None if smpl_model_dir is None else str(smpl_model_dir))
        for split, sequences in split_sequences.items()
    }
    reference_names, reference_list = read_reference_names(source_dir)
    with atomic_directory(out_dir) as tmp, _only_our_progress_bars():
        arrow_cache = tmp / ".arrow-cache"  # inside the staging folder: whatever happens, it goes with it
        dataset_dict = datasets.DatasetDict({split: _build_split(rows, str(arrow_cache)) for split, rows in split_rows.items()})
        dataset_dict.save_to_disk(str(tmp))
        del dataset_dict  # release the memory-mapped cache files before the folder goes
        prepared_frames = {name: frames for rows in split_rows.values() for name, frames in rows.frames_of.items()}
        reference_rows = _ReferenceRows(source_dir, reference_names, prepared_frames, gender, None if smpl_model_dir is None else str(smpl_model_dir))
        write_reference_motions(tmp / REFERENCE_MOTIONS, dict(reference_rows()))
        shutil.rmtree(arrow_cache)
        manifest = _manifest(source, split_rows, gender, smpl_model_dir, time.perf_counter() - started)
        manifest["reference_set"] = {
            "sequences": len(set(prepared_frames) | set(reference_rows.motion_sha256)),
            "list": f"{reference_list} minus ignore_list.txt (Bailando's extract_aist_features.py)",
            "motions_outside_the_splits_or_cut": reference_rows.rows,
            "skipped_sequences": reference_rows.skipped,
        }
        manifest["inputs_sha256"]["motions"] = dict(sorted({**manifest["inputs_sha256"]["motions"], **reference_rows.motion_sha256}.items()))
        with atomic_file(tmp / MANIFEST_NAME, "w") as handle:
            json.dump(manifest, handle, indent=2)
    skipped = manifest["skipped"]
    logger.info(
        "prepared %s in %.1f s: %s%s", out_dir, manifest["seconds_to_prepare"],
        ", ".join(f"{split} {info['sequences']}" for split, info in manifest["splits"].items()),
        f"; skipped {skipped} sequence(s), see {MANIFEST_NAME}" if skipped else "",
    )  # fmt: skip
    return out_dir


def _manifest(
    source: dict[str, Any],
    split_rows: dict[str, _SplitRows],
    gender: str,
    smpl_model_dir: str | os.PathLike | None,
    seconds: float,
) -> dict[str, Any]:
    music_sha256: dict[str, str] = {}
    motion_sha256: dict[str, str] = {}
    for rows in split_rows.values():
        music_sha256.update(rows.music_sha256)
        motion_sha256.update(rows.motion_sha256)
    skipped = [entry for rows in split_rows.values() for entry in rows.skipped]
    return {
        "source": source,
        "fps": MOTION_FPS,
        "music_fps_7p5": MUSIC_FPS_LOW,
        "music_feature_dim": music.MUSIC_FEATURE_DIM,
        "beat_column": music.BEAT_COLUMN,
        "joints": "SMPL 24 joints, metres, y up",
        "skeleton": {"gender": gender, "smpl_model": str(smpl_model_dir) if smpl_model_dir else "built-in rest skeleton"},
        "splits": {
            split: {"sequences": rows.rows, "frames": rows.frames, "seconds": round(rows.frames / MOTION_FPS, 3)}
            for split, rows in split_rows.items()
        },
        "skipped": len(skipped),
        "skipped_sequences": skipped,
        "inputs_sha256": {"motions": dict(sorted(motion_sha256.items())), "music": dict(sorted(music_sha256.items()))},
        "package_version": __version__,
        "versions": environment_versions(),
        "seconds_to_prepare": round(seconds, 2),
    }


def load_prepared(run_data_dir: str | os.PathLike) -> Any:
    """The prepared DatasetDict of a run (`RUN/data`); `E3D2Error` when missing or incomplete."""
    import datasets

    run_data_dir = Path(run_data_dir)
    if not run_data_dir.is_dir():
        raise E3D2Error(f"{run_data_dir}: prepared dataset not found (run `e3d2 prepare` first)")
    if not (run_data_dir / MANIFEST_NAME).is_file() or not (run_data_dir / "dataset_dict.json").is_file():
        raise E3D2Error(f"{run_data_dir}: incomplete prepared dataset (no {MANIFEST_NAME} or dataset_dict.json); prepare it again")
    try:
        dataset_dict = datasets.load_from_disk(str(run_data_dir))
    except Exception as exc:
        raise E3D2Error(f"{run_data_dir}: cannot load prepared dataset ({type(exc).__name__}: {exc})") from exc
    if not isinstance(dataset_dict, datasets.DatasetDict) or set(dataset_dict) != set(SPLITS):
        raise E3D2Error(f"{run_data_dir}: expected splits {', '.join(SPLITS)}")
    for split, dataset in dataset_dict.items():
        missing = [column for column in COLUMNS if column not in dataset.column_names]
        if missing:
            raise E3D2Error(f"{run_data_dir}: split '{split}' lacks column(s) {', '.join(missing)}")
    return dataset_dict


def load_manifest(run_data_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest written beside the prepared dataset."""
    path = Path(run_data_dir) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise E3D2Error(f"{path}: not found (run `e3d2 prepare` first)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise E3D2Error(f"{path}: unreadable manifest ({exc})") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--aistpp", metavar="DIR", help="AIST++ annotations folder (motions/, splits/, ignore_list.txt)")
    source.add_argument("--synthetic", metavar="N_SEQUENCES", type=int, help="generate the embedded synthetic default")
    parser.add_argument("--music-dir", metavar="DIR", help="AIST++ music folder with <music_id>.wav (default: <aistpp>/wavs)")
    parser.add_argument("--out", metavar="RUN/data", required=True, help="folder for the prepared dataset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic generator")
    parser.add_argument("--synthetic-dir", metavar="DIR", help="where the synthetic AIST++ layout is written (default: <out>_raw)")
    parser.add_argument("--synthetic-heldout", metavar="N", type=int, help="held-out pieces of the synthetic set (default: a fifth)")
    parser.add_argument("--synthetic-seconds", metavar="S", type=float, nargs=2, default=[8.0, 16.0],
                        help="shortest and longest synthetic training piece (default 8 16)")
    parser.add_argument("--synthetic-heldout-seconds", metavar="S", type=float, nargs=2,
                        help="shortest and longest held-out piece (default: as --synthetic-seconds)")
    parser.add_argument("--smpl-model-dir", metavar="DIR", help="SMPL model files; default: the built-in rest skeleton")
    parser.add_argument("--gender", choices=GENDERS, default="male", help="SMPL body (AIST++ uses male)")
    parser.add_argument("--no-feature-cache", action="store_true", help="recompute music features instead of using the cache")
    parser.add_argument("--feature-threads", metavar="N", type=int, help="music files featurised at once, in threads (default: one per CPU)")


def run(args: argparse.Namespace) -> int:
    prepare_dataset(
        args.out,
        aistpp_dir=args.aistpp,
        music_dir=args.music_dir,
        synthetic_sequences=None if args.synthetic is None else synthetic_plan(
            PrepareConfig(synthetic=args.synthetic, synthetic_heldout=args.synthetic_heldout, synthetic_seconds=args.synthetic_seconds,
                          synthetic_heldout_seconds=args.synthetic_heldout_seconds)
        ),  # fmt: skip
        seed=args.seed,
        synthetic_dir=args.synthetic_dir,
        gender=args.gender,
        smpl_model_dir=args.smpl_model_dir,
        feature_cache=not args.no_feature_cache,
        feature_threads=args.feature_threads,
    )
    return 0


@dataclass
class PrepareConfig:
    """The `prepare` section of a recipe: where the motions and music come from."""

    run_dir: str = field(default="runs/e3d2", metadata={"help": "Run folder: the prepared data goes to <run_dir>/data."})
    aistpp: str | None = field(default=None, metadata={"help": "AIST++ annotations folder (motions/, splits/); null: the embedded synthetic dataset."})
    music_dir: str | None = field(default=None, metadata={"help": "AIST++ music (<music_id>.wav; default <aistpp>/wavs)."})
    synthetic: int = field(default=24, metadata={"help": "Sequences of the synthetic dataset, when aistpp is null."})
    synthetic_heldout: int | None = field(default=None, metadata={"help": "Of them, held-out pieces (val + test, one dance each); null: a fifth."})
    synthetic_seconds: list[float] = field(default_factory=lambda: [8.0, 16.0], metadata={"help": "Lengths in seconds (low, high) of the training pieces."})
    synthetic_heldout_seconds: list[float] | None = field(default=None, metadata={"help": "Lengths (low, high) of the held-out pieces (null: synthetic_seconds)."})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic dataset."})
    gender: str = field(default="male", metadata={"help": "SMPL body of the forward kinematics (male: AIST++'s; female needs smpl_model_dir)."})
    smpl_model_dir: str | None = field(default=None, metadata={"help": "Your SMPL model files, used through smplx (default: the built-in rest skeleton)."})
    feature_cache: bool = field(default=True, metadata={"help": "Reuse music features cached by content hash (E3D2_CACHE)."})
    feature_threads: int | None = field(default=None, metadata={"help": "Music files featurised at once, in threads (null: one per CPU; the features do not depend on it)."})


def _seconds_pair(values: list[float] | None, name: str) -> tuple[float, float] | None:
    if values is None:
        return None
    if len(values) != 2:
        raise E3D2Error(f"prepare: {name} is a [shortest, longest] pair of seconds, got {values}")
    return float(values[0]), float(values[1])


def synthetic_plan(config: PrepareConfig) -> SyntheticPlan:
    """The synthetic dataset a `prepare` section asks for."""
    return SyntheticPlan(
        config.synthetic,
        config.synthetic_heldout,
        _seconds_pair(config.synthetic_seconds, "synthetic_seconds"),
        _seconds_pair(config.synthetic_heldout_seconds, "synthetic_heldout_seconds"),
    )


def prepare_from_config(config: PrepareConfig) -> Path:
    """Prepare `<run_dir>/data` as the recipe says."""
    return prepare_dataset(
        RunLayout(config.run_dir).data,
        aistpp_dir=config.aistpp,
        music_dir=config.music_dir,
        synthetic_sequences=None if config.aistpp else synthetic_plan(config),
        seed=config.seed,
        gender=config.gender,
        smpl_model_dir=config.smpl_model_dir,
        feature_cache=config.feature_cache,
        feature_threads=config.feature_threads,
    )
