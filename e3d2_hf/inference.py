"""Dance to any music: a trained policy (local folder or Hub id) + an audio file -> 60 fps joints.

    e3d2 dance --model runs/tiny/ppo/policy --music song.mp3 --out dances/
    e3d2 dance --model runs/tiny/bc --model runs/tiny/ppo/policy --music song.mp3   # side by side
    >>> from e3d2_hf import dance
    >>> result = dance("runs/tiny/bc", "song.mp3", seconds=20)
    >>> result.save_npz("song.npz"); result.save_bvh("song.bvh"); result.render("song.mp4")

`e3d2 dance` writes `<song>.npz`, `<song>.bvh`, `<song>_smpl.npz` (SMPL parameters, `--smpl-format
pkl` for the AIST++/EDGE pickle layout) and `<song>.mp4` (the music muxed in) into `--out`; several
dances (`--num-dances`) or several models (`--model` repeated) get one npz/bvh/smpl each
(`<song>_<i>`, `<song>_<model>`) and share one side-by-side video. Everything is written into a
hidden staging folder first and moved into `--out` only when all of it succeeded; a dance that no
SMPL body can fit (bones collapsed to a point) is the one exception: its npz and BVH (and the
video) are still written, then the error is raised.

The policy sees the music at 7.5 fps (one pose-code step per 8 motion frames) and its VQ-VAE turns
the codes back into 60 fps joints. The first pose is not the policy's choice (the MDP's initial
state): by default a standing rest pose, or any joints file given with `--start-pose`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from e3d2_hf.motion.skeleton import GENDERS
from e3d2_hf.render.smpl import SMPL_FORMATS
from e3d2_hf.utils import E3D2Error, atomic_file, finite_number, numpy_file_kind, positive_float

MOTION_FPS = 60.0
MUSIC_FPS = 7.5
logger = logging.getLogger(__name__)


@dataclass
class Dance:
    """One generated dance: joints (T, 24, 3) float32 at 60 fps, metres, y up, SMPL order."""

    joints: np.ndarray
    music_path: Path
    model_id: str
    seed: int
    fps: float = MOTION_FPS
    settings: dict[str, Any] = field(default_factory=dict)

    def save_npz(self, path: str | os.PathLike) -> Path:
        """`joints` (T, 24, 3) float32 at 60 fps, plus fps, music file, model id, seed and sampling settings."""
        path = Path(path)
        with atomic_file(path) as handle:
            np.savez(handle, joints=self.joints.astype(np.float32), fps=np.float32(self.fps), music=str(self.music_path), model_id=self.model_id, seed=np.int64(self.seed), **self.settings)
        return path

    def save_bvh(self, path: str | os.PathLike) -> Path:
        """The dance as a BVH file for animation tools (written atomically)."""
        from e3d2_hf.render.bvh import save_bvh

        return save_bvh(path, self.joints, self.fps)

    def save_smpl(self, path: str | os.PathLike, *, gender: str = "male", smpl_model_dir: str | os.PathLike | None = None) -> Any:
        """The dance as SMPL parameters (`.npz`, or `.pkl` in the AIST++ layout) solved on the SMPL rest skeleton.

        Returns the `SMPLParameters`, whose `fit_error_mean_m` says how closely their forward kinematics reproduces the dance.
        """
        from e3d2_hf.render.smpl import fit_smpl, save_smpl

        parameters = fit_smpl(self.joints, self.fps, gender=gender, smpl_model_dir=smpl_model_dir, what=f"dance to {self.music_path.name}")
        save_smpl(path, parameters)
        return parameters

    def render(self, path: str | os.PathLike, **kwargs: Any) -> Path:
        """A skeleton video: `.mp4` with this dance's music muxed in, or `.gif`; keyword arguments as `render_video`."""
        from e3d2_hf.render.video import render_video

        return render_video(path, self.joints, **{"fps": self.fps, "music_path": self.music_path} | kwargs)


def resolve_model(model: str | os.PathLike) -> Path:
    """A local policy folder, or a Hub repository id downloaded (with its VQ-VAE) into the HF cache."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise E3D2Error(f"{path}: not a policy folder (no config.json)")
        return path
    if path.exists() or str(model).count("/") != 1:
        raise E3D2Error(f"{model}: no such policy folder (and not a Hub id of the form USER/NAME)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model)))
    except Exception as exc:
        raise E3D2Error(f"{model}: cannot download from the Hub ({type(exc).__name__}: {exc}); offline, pass a local folder") from exc


def load_policy(model: str | os.PathLike) -> Any:
    """The policy (an `AutoModelForCausalLM`) with its VQ-VAE loaded, in eval mode."""
    from e3d2_hf.models.modeling_policy import E3D2PolicyModel
    from e3d2_hf.models.weights import load_pretrained

    policy = load_pretrained(E3D2PolicyModel, resolve_model(model))
    policy.load_vqvae()
    return policy.eval()


def standing_start_pose(frames: int = 8) -> np.ndarray:
    """The SMPL male rest pose standing on the floor (lowest joint at y = 0), repeated for `frames` frames."""
    from e3d2_hf.motion.skeleton import rest_joints

    pose = rest_joints("male").astype(np.float32)
    pose = pose - np.array([pose[0, 0], pose[:, 1].min(), pose[0, 2]], dtype=np.float32)
    return np.repeat(pose[None], frames, axis=0)


def ground_dance(joints: np.ndarray, fps: float = MOTION_FPS) -> np.ndarray:
    """Remove the slow vertical drift of the integrated root velocity, keeping jumps.

    The VQ-VAE integrates predicted root velocities, so over a long song the dancer can sink or
    float. The floor is estimated as the one-second moving median of the lowest foot joint, smoothed
    over a quarter second, and subtracted: feet on the floor stay near y = 0, flights shorter than
    half a second stay flights.
    """
    from scipy.ndimage import median_filter, uniform_filter1d

    from e3d2_hf.motion.skeleton import SMPL_JOINT_NAMES

    feet = [SMPL_JOINT_NAMES.index(name) for name in ("left_ankle", "right_ankle", "left_foot", "right_foot")]
    window = max(1, int(round(fps)))
    lowest = joints[:, feet, 1].min(axis=1)
    floor = uniform_filter1d(median_filter(lowest, size=window, mode="nearest"), size=max(1, window // 4), mode="nearest")
    grounded = joints.copy()
    grounded[..., 1] -= floor[:, None]
    return grounded


def load_start_pose(path: str | os.PathLike | None, frames: int = 8) -> np.ndarray:
    """Joints of the first pose from a .npy array or the `joints` of an .npz (read by content, never unpickled)."""
    if path is None:
        return standing_start_pose(frames)
    path = Path(path)
    kind = numpy_file_kind(path)
    if kind is None:
        raise E3D2Error(f"{path}: not a .npy or .npz file of joints")
    try:
        loaded = np.load(path, allow_pickle=False)
        if kind == "npz":
            with loaded:
                joints = np.asarray(loaded["joints"], dtype=np.float32)
        else:
            joints = np.asarray(loaded, dtype=np.float32)
    except KeyError:
        raise E3D2Error(f"{path}: the .npz holds no 'joints' array") from None
    except Exception as exc:  # cut or corrupt files: ValueError, EOFError, zipfile.BadZipFile, OSError
        reason = "it holds Python objects, not numbers" if "pickle" in str(exc) else f"{type(exc).__name__}: {exc}"
        raise E3D2Error(f"{path}: cannot read a start pose ({reason})") from exc
    if joints.ndim == 2 and joints.shape == (24, 3):
        joints = np.repeat(joints[None], frames, axis=0)
    if joints.ndim != 3 or joints.shape[1:] != (24, 3) or joints.shape[0] < frames:
        raise E3D2Error(f"{path}: a start pose is (24, 3) or (>= {frames}, 24, 3) joints, got {joints.shape}")
    if not np.isfinite(joints).all():
        raise E3D2Error(f"{path}: start pose contains NaN or infinite values")
    return joints[:frames]


def music_to_joints(
    policy: Any,
    music_features: Any,
    *,
    first_codes: tuple[int, int] | Any | None = None,
    seed_motion: Any | None = None,
    max_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = 0,
    strategy: str = "cache",
    progress: bool = False,
) -> np.ndarray:
    """Music features at 7.5 fps -> joints at 60 fps through the policy (an `E3D2PolicyModel`) and its VQ-VAE.

    music_features: (S, music_dim) for one dance or (B, S, music_dim) for a batch; frame i is step i.
    The first pose (the MDP's initial state, not chosen by the policy) comes from exactly one of
    `first_codes` ((upper, lower), or (B, 2)) or `seed_motion` (joints (>=8, 24, 3) or (B, >=8, 24, 3)
    at 60 fps, whose first 8 frames are encoded; the dance then starts where the seed's root is).
    Returns float32 joints (8 * steps, 24, 3), or (B, 8 * steps, 24, 3) for a batch.
    """
    import torch

    if do_sample:
        check_sampling(temperature, top_k)
    vqvae = policy.load_vqvae()
    music = torch.as_tensor(np.asarray(music_features, dtype=np.float32) if isinstance(music_features, np.ndarray) else music_features)
    single = music.ndim == 2
    music = music[None] if single else music
    if (first_codes is None) == (seed_motion is None):
        raise E3D2Error("music_to_joints: give exactly one of first_codes (upper, lower) or seed_motion (joints)")
    root_start = None
    if seed_motion is not None:
        motion = torch.as_tensor(np.asarray(seed_motion, dtype=np.float32), device=vqvae.device)
        motion = motion[None] if motion.ndim == 3 else motion
        frames = vqvae.config.frames_per_code
        if motion.ndim != 4 or motion.shape[0] != music.shape[0] or motion.shape[1] < frames:
            raise E3D2Error(f"seed motion: expected ({music.shape[0]}, >= {frames}, 24, 3) joints, got {tuple(motion.shape)}")
        upper_first, lower_first = vqvae.encode(motion[:, :frames])
        root_start = motion[:, 0, 0]
    else:
        codes = torch.as_tensor(np.asarray(first_codes), dtype=torch.long).reshape(-1, 2)
        if codes.shape[0] != music.shape[0]:
            raise E3D2Error(f"first codes: one (upper, lower) pair per dance expected, got {codes.shape[0]} for {music.shape[0]} dances")
        upper_first, lower_first = codes[:, :1], codes[:, 1:]
    tokens = policy.generate(
        music,
        upper_codes=upper_first,
        lower_codes=lower_first,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        strategy=strategy,
        progress=progress,
    )
    upper_codes, lower_codes = policy.split_pose_tokens(tokens)
    joints = vqvae.decode(upper_codes.to(vqvae.device), lower_codes.to(vqvae.device), root_start)
    joints = joints.float().cpu().numpy()
    return joints[0] if single else joints



def check_sampling(temperature: float, top_k: int | None) -> None:
    """`E3D2Error` unless the temperature is a positive finite number and top-k (if any) at least 1."""
    finite_number(temperature, "temperature", positive=True)
    if top_k is not None and top_k < 1:
        raise E3D2Error(f"top_k must be at least 1, got {top_k}")


def generate_dances(
    model: str | os.PathLike | Any,
    music_path: str | os.PathLike,
    *,
    seconds: float | None = None,
    seed: int = 0,
    num_dances: int = 1,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    start_pose: str | os.PathLike | None = None,
    progress: bool = False,
) -> list[Dance]:
    """Generate `num_dances` dances for one music file in one batch (seeded: the same call gives the same dances)."""
    from e3d2_hf.data.music import BEAT_COLUMN, music_features
    from e3d2_hf.motion.fitting import fit_skeleton

    if seconds is not None:  # settings checked before any model or music is read
        finite_number(seconds, "seconds", positive=True)
    if num_dances < 1:
        raise E3D2Error(f"num_dances must be at least 1, got {num_dances}")
    if not greedy:
        check_sampling(temperature, top_k)
    policy = model if hasattr(model, "load_vqvae") else load_policy(model)
    model_id = str(model) if not hasattr(model, "load_vqvae") else str(getattr(policy, "name_or_path", "policy"))
    music_path = Path(music_path)
    features = music_features(music_path, fps=MUSIC_FPS)
    if seconds is not None:
        features = features[: int(np.ceil(seconds * MUSIC_FPS))]
    if features.shape[0] < 2:
        raise E3D2Error(f"{music_path}: music too short to dance to ({features.shape[0] / MUSIC_FPS:.2f} s)")
    if not features[:, BEAT_COLUMN].any():
        # Silence (or music without a pulse) is still a valid input, the dance just cannot follow it.
        logger.warning("%s: no beats found (silent?); dancing anyway", music_path)
    frames = policy.load_vqvae().config.frames_per_code
    start = load_start_pose(start_pose, frames)
    joints = music_to_joints(
        policy,
        np.repeat(features[None], num_dances, axis=0),
        seed_motion=np.repeat(start[None], num_dances, axis=0),
        do_sample=not greedy,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        progress=progress,
    )
    if seconds is not None:
        joints = joints[:, : int(round(seconds * MOTION_FPS))]
    # on the floor, then on one rigid skeleton: what the npz holds is exactly what the BVH carries
    joints = np.stack([fit_skeleton(ground_dance(single)) for single in joints]).astype(np.float32)
    settings = {"temperature": temperature, "top_k": -1 if top_k is None else top_k, "greedy": greedy}
    return [Dance(joints=joints[index], music_path=music_path, model_id=model_id, seed=seed, settings=settings | {"dance_index": index}) for index in range(num_dances)]


def dance(model: str | os.PathLike | Any, music_path: str | os.PathLike, **kwargs: Any) -> Dance:
    """One dance for a music file; keyword arguments as `generate_dances`."""
    return generate_dances(model, music_path, num_dances=1, **kwargs)[0]


def model_labels(models: list[str]) -> list[str]:
    """Short distinct names for titles and file names: a folder's name (RUN/ppo/policy -> ppo) or a Hub id's NAME."""
    paths = [Path(os.path.abspath(model)) for model in models]
    labels = [path.parent.name if path.name == "policy" and path.parent.name else path.name for path in paths]
    return [label if labels.count(label) == 1 else f"{label}-{labels[: index + 1].count(label)}" for index, label in enumerate(labels)]


@contextlib.contextmanager
def staged_into(folder: Path) -> Iterator[Path]:
    """A hidden folder inside `folder` whose files move into `folder` only if the block succeeds.

    A run that fails late (rendering after the npz and BVH files exist) thus leaves nothing behind,
    not even `folder` when this made it, and files of an earlier run are only replaced by a complete
    new set. Errors name `folder`, never the hidden one.
    """
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".e3d2-dance-", dir=folder))
    except OSError as exc:
        raise E3D2Error(f"{folder}: cannot write into the output folder ({exc.strerror or exc})") from exc
    succeeded = False
    try:
        yield staging
        for file in sorted(staging.iterdir()):
            os.replace(file, folder / file.name)
        succeeded = True
    except OSError as exc:  # disk full, folder removed meanwhile, ...
        raise E3D2Error(f"{folder}: cannot write the dance files ({exc.strerror or exc})") from exc
    except E3D2Error as exc:
        raise E3D2Error(str(exc).replace(str(staging), str(folder))) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not succeeded:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, action="append", help="policy folder (runs/<name>/bc, runs/<name>/ppo/policy) or Hub id USER/NAME; repeat to compare models side by side")
    parser.add_argument("--music", required=True, help="any audio file librosa reads (wav, mp3, ogg, flac)")
    parser.add_argument("--out", default="dances", help="output folder (default: dances)")
    parser.add_argument("--seconds", type=positive_float, default=None, help="dance to the first S seconds only (default: the whole piece)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed, model and music give the same dance (default: 0)")
    parser.add_argument("--num-dances", type=int, default=1, help="several dances for the same music, one video side by side")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (Bailando's) instead of sampling")
    parser.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature of the pose codes (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=None, help="sample each body half's code among its k likeliest (default: all codes)")
    parser.add_argument("--start-pose", default=None, help=".npy/.npz joints (24,3) or (>=8,24,3) for the first pose (default: standing)")
    parser.add_argument("--format", choices=("mp4", "gif", "none"), default="mp4", help="video with the music (mp4), silent gif, or none (default: mp4)")
    parser.add_argument("--no-bvh", action="store_true", help="do not write BVH files")
    parser.add_argument("--no-smpl", action="store_true", help="do not write SMPL parameters (<song>_smpl.npz)")
    parser.add_argument("--smpl-format", choices=SMPL_FORMATS, default="npz", help="npz, or pkl: the AIST++/EDGE pickle layout (default: npz)")
    parser.add_argument("--smpl-gender", choices=GENDERS, default="male", help="SMPL body whose rest skeleton the parameters pose (default: male, built in)")
    parser.add_argument("--smpl-model-dir", default=None, help="your SMPL model files (SMPL_MALE.pkl/.npz ...), used through smplx; default: the built-in skeleton")


def check_writable_folder(folder: Path) -> None:
    """`E3D2Error` now, before minutes of generation, when `folder` could not be written (it is made only at the end)."""
    existing = next(path for path in (folder, *folder.absolute().parents) if path.exists())
    if existing == folder and not folder.is_dir():
        raise E3D2Error(f"{folder}: is a file, not a folder")
    if not existing.is_dir():
        raise E3D2Error(f"{folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise E3D2Error(f"{folder}: cannot write there ({existing} is not writable)")


def write_dances(
    models: list[str],
    music_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    video_format: str = "mp4",
    bvh: bool = True,
    smpl: str | None = "npz",
    smpl_gender: str = "male",
    smpl_model_dir: str | os.PathLike | None = None,
    **generation: Any,
) -> tuple[list[Dance], list[Path]]:
    """Every model's dances to one music file -> npz (+ BVH, + SMPL) each and one video side by side, all in `out` or none.

    `smpl` is the SMPL file format ("npz", "pkl") or None for none; `generation` holds the keyword
    arguments of `generate_dances`. Returns the dances and the files written. A dance that cannot be
    fitted with an SMPL body still gets its other files; the error comes after they are written.
    """
    out = Path(out)
    check_writable_folder(out)
    stem = Path(music_path).stem
    labels = model_labels(models) if len(models) > 1 else [""]
    named: list[tuple[str, str, Dance]] = []  # (file name, video title, dance)
    for model, label in zip(models, labels):
        dances = generate_dances(model, music_path, **generation)
        for index, result in enumerate(dances):
            number = [str(index)] if len(dances) > 1 else []
            name = "_".join([stem, *([label] if label else []), *number])
            named.append((name, " #".join([label, *number]).strip(), result))
    unfitted: list[str] = []
    with staged_into(out) as staging:
        for name, _, result in named:
            result.save_npz(staging / f"{name}.npz")
            if bvh:
                result.save_bvh(staging / f"{name}.bvh")
            if smpl is not None:
                try:
                    fit = result.save_smpl(staging / f"{name}_smpl.{smpl}", gender=smpl_gender, smpl_model_dir=smpl_model_dir)
                    logger.info("%s_smpl.%s: SMPL forward kinematics reproduces the dance to %.2f cm on average (max %.2f cm)",
                                name, smpl, 100 * fit.fit_error_mean_m, 100 * fit.fit_error_max_m)  # fmt: skip
                except E3D2Error as exc:
                    unfitted.append(f"{out / name}: {exc}")
        if video_format != "none":
            from e3d2_hf.render.video import render_video

            joints = [result.joints for _, _, result in named]
            titles = [title for _, title, _ in named] if len(named) > 1 else None
            render_video(staging / f"{stem}.{video_format}", joints if len(named) > 1 else joints[0], fps=MOTION_FPS, music_path=music_path, titles=titles, progress=True)
        written = sorted(out / path.name for path in staging.iterdir())
    if unfitted:
        raise E3D2Error(f"{'; '.join(unfitted)} (its other files are written)")
    return [result for _, _, result in named], written


def run(args: argparse.Namespace) -> int:
    dances, written = write_dances(
        args.model, args.music, args.out, video_format=args.format, bvh=not args.no_bvh, smpl=None if args.no_smpl else args.smpl_format,
        smpl_gender=args.smpl_gender, smpl_model_dir=args.smpl_model_dir, seconds=args.seconds, seed=args.seed,
        num_dances=args.num_dances, greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, start_pose=args.start_pose, progress=True,
    )  # fmt: skip
    print(f"{len(dances)} dance(s) of {dances[0].joints.shape[0] / MOTION_FPS:.1f} s for {args.music}:")
    for path in written:
        print(f"  {path}")
    return 0

