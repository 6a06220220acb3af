"""SMPL parameters out and back in: what the SMPL Blender add-on, EDGE's SMPL-to-FBX script and AIST++'s tools read.

`fit_smpl` solves a dance's joints (T, 24, 3) onto an SMPL body's rest skeleton (the built-in male
one, or the user's SMPL model files through smplx) and measures how far forward kinematics of the
result lands from the dance; `save_smpl` writes the parameters as `<name>_smpl.npz` or, in the
AIST++ motion pickle layout that EDGE's pickles share, `<name>_smpl.pkl`; `load_smpl` reads either
back (the pickle safely) and `SMPLParameters.joints` poses the body again.

Layout (AIST++'s keys): `smpl_poses` (T, 72) axis-angle in radians, the root's first (y up, as
AIST++); `smpl_trans` (T, 3) in metres; `smpl_scaling` (1,) = 1.0 (AIST++ divides `smpl_trans` by
it, so metres stay metres); plus `gender`, `fps` and the fit's error (`fit_error_mean_m`,
`fit_error_max_m`). Betas are 0: the body is the model's mean shape.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e3d2_hf.motion.fitting import check_joints, joints_to_smpl
from e3d2_hf.motion.skeleton import GENDERS, NUM_JOINTS, SMPL_JOINT_NAMES, SMPL_PARENTS, forward_kinematics, load_smpl_model, rest_joints, smplx_joints
from e3d2_hf.utils import E3D2Error, atomic_file, safe_load_pickle

logger = logging.getLogger(__name__)

SMPL_FORMATS = ("npz", "pkl")
# What the SMPL export promises: forward kinematics of the parameters lands this close to the dance on average.
FIT_TOLERANCE_M = 0.02
# A bone shorter than this in some frame has no direction there, so no rotation can be solved for it.
DEGENERATE_BONE_M = 1e-4


@dataclass
class SMPLParameters:
    """One dance as SMPL parameters (betas 0) and how well they reproduce it."""

    poses: np.ndarray  # (T, 72) axis-angle, radians
    trans: np.ndarray  # (T, 3) metres
    gender: str
    fps: float
    scaling: float = 1.0
    fit_error_mean_m: float = float("nan")
    fit_error_max_m: float = float("nan")

    def joints(self, smpl_model_dir: str | os.PathLike | None = None) -> np.ndarray:
        """Forward kinematics (T, 24, 3) in metres: the built-in rest skeleton, or the SMPL model files through smplx."""
        return forward_kinematics(self.poses, self.trans / self.scaling, gender=self.gender, smpl_model_dir=smpl_model_dir)

    def arrays(self) -> dict[str, Any]:
        """The file's contents (AIST++'s keys, then ours)."""
        return {
            "smpl_poses": self.poses.astype(np.float32),
            "smpl_trans": self.trans.astype(np.float32),
            "smpl_scaling": np.array([self.scaling], dtype=np.float32),
            "gender": self.gender,
            "fps": np.float32(self.fps),
            "fit_error_mean_m": np.float32(self.fit_error_mean_m),
            "fit_error_max_m": np.float32(self.fit_error_max_m),
        }


def _degenerate_bones(joints: np.ndarray) -> str | None:
    """The first bone that collapses to a point in some frame (its direction, so its rotation, is undefined), or None."""
    lengths = np.linalg.norm(joints[:, 1:] - joints[:, SMPL_PARENTS[1:]], axis=-1)
    frames, bones = np.nonzero(lengths < DEGENERATE_BONE_M)
    if len(bones) == 0:
        return None
    child = int(bones[0]) + 1
    bone = f"{SMPL_JOINT_NAMES[SMPL_PARENTS[child]]} -> {SMPL_JOINT_NAMES[child]}"
    return f"bone {bone} has zero length in {int((bones == bones[0]).sum())} frame(s), from frame {int(frames[0])}"


def fit_smpl(
    joints: np.ndarray,
    fps: float = 60.0,
    *,
    gender: str = "male",
    smpl_model_dir: str | os.PathLike | None = None,
    what: str = "dance",
) -> SMPLParameters:
    """SMPL parameters of `joints` (T, 24, 3) on the SMPL rest skeleton of `gender`, with their forward-kinematics error.

    The rest skeleton is the built-in one (male or neutral) or, with `smpl_model_dir`, the model
    files' (through smplx, any gender). A dance whose bones collapse to a point cannot be fitted
    (`E3D2Error` naming `what`); one whose bones differ from SMPL's is fitted, and a warning says
    how far from the dance the SMPL body then stays when that is more than `FIT_TOLERANCE_M`.
    """
    joints = check_joints(joints, what)
    if gender not in GENDERS:
        raise E3D2Error(f"{what}: unknown SMPL gender '{gender}' (choose one of {', '.join(GENDERS)})")
    problem = _degenerate_bones(joints)
    if problem:
        raise E3D2Error(f"{what}: cannot fit an SMPL body: {problem}")
    model = load_smpl_model(smpl_model_dir, gender) if smpl_model_dir is not None else None
    if model is None:
        rest = rest_joints(gender)
    else:
        rest = smplx_joints(model, np.zeros((1, NUM_JOINTS * 3)), np.zeros((1, 3)))[0].astype(np.float64)
    poses, trans = joints_to_smpl(joints, rest)
    poses = poses.reshape(len(joints), NUM_JOINTS * 3)
    posed = smplx_joints(model, poses, trans) if model is not None else forward_kinematics(poses, trans, gender=gender)
    errors = np.linalg.norm(posed - joints, axis=-1)
    fitted = SMPLParameters(poses, trans, gender, float(fps), fit_error_mean_m=float(errors.mean()), fit_error_max_m=float(errors.max()))
    if fitted.fit_error_mean_m > FIT_TOLERANCE_M:
        logger.warning(
            "%s: its bones differ from the SMPL %s body's, so the SMPL parameters reproduce it to %.1f cm on average (max %.1f cm)",
            what, gender, 100 * fitted.fit_error_mean_m, 100 * fitted.fit_error_max_m,
        )  # fmt: skip
    return fitted


def save_smpl(path: str | os.PathLike, parameters: SMPLParameters) -> Path:
    """Write `parameters` as `.npz` (no pickle inside) or `.pkl` (the AIST++ motion layout), atomically; returns the path."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in SMPL_FORMATS:
        raise E3D2Error(f"{path}: SMPL parameters are written as .npz or .pkl, not '{path.suffix}'")
    arrays = parameters.arrays()
    try:
        with atomic_file(path) as handle:
            if suffix == "npz":
                np.savez(handle, **arrays)
            else:
                pickle.dump(arrays, handle, protocol=4)
    except OSError as exc:
        raise E3D2Error(f"{path}: cannot write SMPL parameters ({exc.strerror or exc})") from exc
    return path


def load_smpl(path: str | os.PathLike, fps: float = 60.0) -> SMPLParameters:
    """SMPL parameters from our `_smpl.npz` / `_smpl.pkl` or an AIST++ motion pickle (read safely).

    `fps` is the frame rate when the file does not say (AIST++ motions are 60 fps).
    """
    path = Path(path)
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                data: dict[str, Any] = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as exc:
            raise E3D2Error(f"{path}: not a readable .npz file ({exc})") from exc
    else:
        data = safe_load_pickle(path)
    if not isinstance(data, dict) or not {"smpl_poses", "smpl_trans"} <= set(data):
        keys = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise E3D2Error(f"{path}: expected SMPL parameters (smpl_poses, smpl_trans), got {keys}")
    try:
        poses = np.asarray(data["smpl_poses"], dtype=np.float64).reshape(len(data["smpl_poses"]), -1)
        trans = np.asarray(data["smpl_trans"], dtype=np.float64)
        scaling = float(np.asarray(data.get("smpl_scaling", 1.0), dtype=np.float64).reshape(-1)[0])
        gender = str(data.get("gender", "male"))
        rate = float(data.get("fps", fps))
    except (TypeError, ValueError, IndexError) as exc:
        raise E3D2Error(f"{path}: SMPL parameters are not numeric arrays ({exc})") from exc
    if poses.shape[1:] != (NUM_JOINTS * 3,) or trans.shape != (len(poses), 3) or len(poses) == 0:
        raise E3D2Error(f"{path}: smpl_poses {poses.shape} and smpl_trans {trans.shape} are not (T, 72) and (T, 3)")
    if not (np.isfinite(poses).all() and np.isfinite(trans).all() and np.isfinite(scaling) and scaling > 0 and rate > 0):
        raise E3D2Error(f"{path}: SMPL parameters contain NaN, infinite or non-positive values")
    if gender not in GENDERS:
        raise E3D2Error(f"{path}: unknown SMPL gender '{gender}'")
    return SMPLParameters(poses, trans, gender, rate, scaling=scaling)


__all__ = ["FIT_TOLERANCE_M", "SMPL_FORMATS", "SMPLParameters", "fit_smpl", "load_smpl", "save_smpl"]
