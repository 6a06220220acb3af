"""AIST++ reader: the real download layout -> sequences with joints (60 fps, metres, y up) and their music.

Layout (the annotations folder of the AIST++ release, also what `synthetic.py` writes):

    ROOT/motions/<sequence>.pkl     smpl_poses (N, 72) or (N, 24, 3), smpl_trans (N, 3), smpl_scaling (1,)
    ROOT/splits/crossmodal_{train,val,test}.txt   one sequence name per line
    ROOT/ignore_list.txt            sequences with broken capture, left out of every split
    ROOT/cameras/mapping.txt        (optional) every sequence of the release, "<sequence> <setting>" per line
    MUSIC_DIR/<music_id>.wav        from the AIST Dance DB (default MUSIC_DIR = ROOT/wavs)

A sequence name such as `gBR_sBM_cAll_d04_mBR0_ch01` carries its genre (`g..` -> "BR") and its
music (`m..` -> "mBR0"). Motion pickles are opened only through `safe_load_pickle`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e3d2_hf.motion.skeleton import NUM_JOINTS, forward_kinematics
from e3d2_hf.utils import E3D2Error, safe_load_pickle

logger = logging.getLogger(__name__)

AISTPP_FPS = 60.0
SPLITS = ("train", "val", "test")
MUSIC_EXTENSIONS = (".wav", ".mp3", ".ogg", ".flac", ".m4a")


@dataclass(frozen=True)
class AISTPPSequence:
    """One dance of the dataset: where its motion and its music live."""

    name: str
    music_id: str
    genre: str
    motion_path: Path
    music_path: Path


@dataclass(frozen=True)
class SMPLMotion:
    """The SMPL parameters of one motion file, validated."""

    poses: np.ndarray  # (N, 24, 3) axis-angle, float64
    trans: np.ndarray  # (N, 3), in the capture's scaled units
    scaling: float  # divide `trans` by this to get metres


def _name_field(name: str, prefix: str) -> str | None:
    for field in name.split("_"):
        if field.startswith(prefix) and len(field) > len(prefix) and not field.startswith("ch"):
            return field
    return None


def music_id_from_name(name: str) -> str:
    """The `m..` field of a sequence name (`gBR_sBM_cAll_d04_mBR0_ch01` -> `mBR0`)."""
    field = _name_field(name, "m")
    if field is None:
        raise E3D2Error(f"sequence '{name}': no music id field (m..) in its name")
    return field


def genre_from_name(name: str) -> str:
    """The dance genre from the `g..` field (`gBR_...` -> `BR`); empty when the name has none."""
    field = _name_field(name, "g")
    return field[1:] if field else ""


def read_name_list(path: str | os.PathLike) -> list[str]:
    """Sequence names listed one per line (blank lines and `#` comments skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise E3D2Error(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise E3D2Error(f"{path}: cannot read ({exc})") from exc
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [name for name in names if name]


def read_ignore_list(root: str | os.PathLike) -> set[str]:
    """Names in ROOT/ignore_list.txt; an absent list ignores nothing (with a warning)."""
    path = Path(root) / "ignore_list.txt"
    if not path.exists():
        logger.warning("%s: not found, no sequence is ignored", path)
        return set()
    return set(read_name_list(path))


def music_path_for(music_dir: str | os.PathLike, music_id: str) -> Path:
    """`<music_id>.wav` in the music folder, or the same stem in another audio format if only that exists."""
    music_dir = Path(music_dir)
    for extension in MUSIC_EXTENSIONS:
        candidate = music_dir / f"{music_id}{extension}"
        if candidate.is_file():
            return candidate
    return music_dir / f"{music_id}.wav"


def read_split(
    root: str | os.PathLike, split: str, music_dir: str | os.PathLike | None = None
) -> list[AISTPPSequence]:
    """The sequences of one official split (`crossmodal_<split>.txt` minus the ignore list), in file order.

    Only names are resolved here; whether each motion and music file exists and is sound is
    checked when it is read, so that one bad sequence can be skipped among many.
    """
    if split not in SPLITS:
        raise E3D2Error(f"split '{split}': unknown (choose one of {', '.join(SPLITS)})")
    root = Path(root)
    if not root.is_dir():
        raise E3D2Error(f"{root}: AIST++ folder not found")
    music_dir = Path(music_dir) if music_dir is not None else root / "wavs"
    ignored = read_ignore_list(root)
    sequences = []
    for name in read_name_list(root / "splits" / f"crossmodal_{split}.txt"):
        if name in ignored:
            continue
        music_id = _name_field(name, "m") or ""
        sequences.append(
            AISTPPSequence(
                name=name,
                music_id=music_id,
                genre=genre_from_name(name),
                motion_path=root / "motions" / f"{name}.pkl",
                music_path=music_path_for(music_dir, music_id),
            )
        )
    return sequences


def read_reference_names(root: str | os.PathLike) -> tuple[list[str], str]:
    """Every sequence the FID/Div reference set holds, and where the list came from.

    Bailando's ground-truth features (`extract_aist_features.py` lines 68-72) are of every sequence
    of the release, `AISTDataset(anno_dir).mapping_seq2env` (the first column of
    ROOT/cameras/mapping.txt), minus ROOT/ignore_list.txt: about 1400, where the cross-modal splits
    hold 992 (their lists leave out every other dance to the val / test music). Without
    cameras/mapping.txt, every ROOT/motions/*.pkl stands in for it.
    """
    root = Path(root)
    mapping = root / "cameras" / "mapping.txt"
    if mapping.is_file():
        names = [line.split()[0] for line in read_name_list(mapping)]
        source = "cameras/mapping.txt"
    else:
        names = sorted(path.stem for path in (root / "motions").glob("*.pkl"))
        source = "motions/*.pkl"
    ignored = read_ignore_list(root)
    return [name for name in dict.fromkeys(names) if name not in ignored], source


def read_splits(root: str | os.PathLike, music_dir: str | os.PathLike | None = None) -> dict[str, list[AISTPPSequence]]:
    """All three official splits."""
    return {split: read_split(root, split, music_dir) for split in SPLITS}


def load_motion(path: str | os.PathLike) -> SMPLMotion:
    """Read and validate one AIST++ motion pickle (keys, shapes, finite values, positive scale)."""
    path = Path(path)
    if not path.is_file():
        raise E3D2Error(f"{path}: motion file not found")
    data = safe_load_pickle(path)
    if not isinstance(data, dict):
        raise E3D2Error(f"{path}: expected a dict of SMPL parameters, got {type(data).__name__}")
    missing = [key for key in ("smpl_poses", "smpl_trans", "smpl_scaling") if key not in data]
    if missing:
        raise E3D2Error(f"{path}: missing key(s) {', '.join(missing)}")
    try:
        poses = np.asarray(data["smpl_poses"], dtype=np.float64)
        trans = np.asarray(data["smpl_trans"], dtype=np.float64)
        scaling = np.asarray(data["smpl_scaling"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise E3D2Error(f"{path}: SMPL parameters are not numeric arrays ({exc})") from exc
    if poses.ndim == 2 and poses.shape[1] == NUM_JOINTS * 3:
        poses = poses.reshape(-1, NUM_JOINTS, 3)
    if poses.ndim != 3 or poses.shape[1:] != (NUM_JOINTS, 3):
        raise E3D2Error(f"{path}: smpl_poses has shape {poses.shape}, expected (N, 72) or (N, 24, 3)")
    if len(poses) == 0:
        raise E3D2Error(f"{path}: motion has no frames")
    if trans.shape != (len(poses), 3):
        raise E3D2Error(f"{path}: smpl_trans has shape {trans.shape}, expected ({len(poses)}, 3)")
    if scaling.shape != (1,):
        raise E3D2Error(f"{path}: smpl_scaling has shape {scaling.shape}, expected (1,)")
    for key, value in (("smpl_poses", poses), ("smpl_trans", trans), ("smpl_scaling", scaling)):
        if not np.isfinite(value).all():
            raise E3D2Error(f"{path}: {key} contains NaN or infinite values")
    if scaling[0] <= 0:
        raise E3D2Error(f"{path}: smpl_scaling must be positive, got {scaling[0]}")
    return SMPLMotion(poses=poses, trans=trans, scaling=float(scaling[0]))


def motion_joints(
    path: str | os.PathLike, gender: str = "male", smpl_model_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """Joints (N, 24, 3) float32 at 60 fps, metres, y up: SMPL FK with transl = smpl_trans / smpl_scaling."""
    motion = load_motion(path)
    return forward_kinematics(motion.poses, motion.trans / motion.scaling, gender=gender, smpl_model_dir=smpl_model_dir)
