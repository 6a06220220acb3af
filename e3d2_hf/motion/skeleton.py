"""The SMPL 24-joint skeleton and forward kinematics (rotations along a kinematic tree -> joint positions).

AIST++ stores dances as SMPL parameters; every later stage (VQ-VAE, policy, metrics, rendering)
works on the 24 joint positions. With betas = 0 those positions depend only on the kinematic tree
and the rest-pose joints, which are carried here as constants so that no licensed SMPL file is
needed. When the user has the SMPL model files (`smpl_model_dir`), `smplx` computes the joints
instead; both give the same joints (tests/test_skeleton.py). `forward_kinematics` is SMPL's case of
`chain_forward_kinematics`, the one walk down a kinematic tree, which BVH files and fitted dances use too.

Conventions: joints in SMPL order, metres, y up (as AIST++ stores them), float32 output.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from e3d2_hf.motion.rotations import axis_angle_to_matrix
from e3d2_hf.utils import E3D2Error

SMPL_JOINT_NAMES: list[str] = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
]  # fmt: skip
NUM_JOINTS = len(SMPL_JOINT_NAMES)

# Parent of each joint (-1 for the root); parents always precede their children.
SMPL_PARENTS: np.ndarray = np.array(
    [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21], dtype=np.int64
)


def _children(parents: np.ndarray) -> list[list[int]]:
    """Each joint's children in joint order: the tree walked downwards (BVH nesting, motion fitting)."""
    children: list[list[int]] = [[] for _ in parents]
    for joint, parent in enumerate(parents):
        if parent >= 0:
            children[parent].append(joint)
    return children


SMPL_CHILDREN = _children(SMPL_PARENTS)

# Bailando's body halves: one VQ-VAE codebook each.
LOWER_BODY_JOINTS: list[int] = [0, 1, 2, 4, 5, 7, 8, 10, 11]
UPPER_BODY_JOINTS: list[int] = sorted(set(range(NUM_JOINTS)) - set(LOWER_BODY_JOINTS))

# Rest-pose joint positions in metres with betas = 0, i.e. J_regressor @ v_template of the SMPL
# model (SMPL: Loper et al. 2015, MPI; numbers derived from the model files, used under the SMPL
# licence). Male = the body AIST++ uses; its parent offsets are those EDGE (MIT) publishes as
# `smpl_offsets` in vis.py. Neutral = cumulative sum of the neutral parent offsets. Copied from
# ../shared/data/smpl/smpl24_rest_skeleton.json so that the package never reads that folder.
_MALE_REST_JOINTS = [
    [-0.00217368, -0.24078917, 0.02858379], [0.05640767, -0.32306921, 0.01091971],
    [-0.06248341, -0.33130245, 0.01504126], [0.00226577, -0.11638562, -0.00980143],
    [0.0998591, -0.70953867, 0.01895671], [-0.10574003, -0.71499033, 0.01019822],
    [0.00675421, 0.02157077, 0.0170189], [0.08506877, -1.13641306, -0.01847128],
    [-0.08668449, -1.13503592, -0.02436345], [0.00448962, 0.07760317, 0.01987394],
    [0.12612313, -1.19669901, 0.10357114], [-0.12152436, -1.19714148, 0.10595984],
    [-0.00890056, 0.28923869, -0.01359363], [0.0761921, 0.19160286, 0.00097577],
    [-0.07846403, 0.1900755, -0.00383344], [0.00121265, 0.37817605, 0.03681623],
    [0.19911348, 0.23680795, -0.01807023], [-0.19169234, 0.23692877, -0.01230551],
    [0.45444538, 0.22115892, -0.04101671], [-0.45181985, 0.22255948, -0.04357424],
    [0.72015463, 0.23385703, -0.04839145], [-0.72092823, 0.2293532, -0.04960101],
    [0.80684518, 0.223221, -0.06398574], [-0.80968199, 0.22070164, -0.05970808],
]  # fmt: skip
_NEUTRAL_REST_JOINTS = [
    [-0.00179506, -0.22333345, 0.02821913], [0.06772468, -0.31473968, 0.02140379],
    [-0.06946554, -0.31385513, 0.02389931], [-0.00432792, -0.11437022, 0.00152282],
    [0.10200123, -0.68993828, 0.01690799], [-0.10775559, -0.69642414, 0.01504928],
    [0.00115911, 0.02081021, 0.00261529], [0.08840553, -1.08789864, -0.02678534],
    [-0.09198182, -1.09483879, -0.02726252], [0.00261611, 0.07373244, 0.02803986],
    [0.11476367, -1.14368952, 0.09250306], [-0.11735357, -1.14298275, 0.09608543],
    [-0.00016228, 0.2876028, -0.01481717], [0.08146085, 0.19548174, -0.00604975],
    [-0.07914308, 0.19256527, -0.01057543], [0.00498956, 0.35257241, 0.0365318],
    [0.17243778, 0.22595064, -0.0149179], [-0.17515546, 0.22511644, -0.0197185],
    [0.43205003, 0.21317858, -0.04237434], [-0.42889742, 0.21178722, -0.04111948],
    [0.68128366, 0.22216461, -0.04354526], [-0.6841955, 0.21955951, -0.04667867],
    [0.76532584, 0.21400307, -0.05849063], [-0.76881743, 0.21344225, -0.05699375],
]  # fmt: skip
_BUILTIN_REST_JOINTS = {"male": _MALE_REST_JOINTS, "neutral": _NEUTRAL_REST_JOINTS}
GENDERS = ("male", "neutral", "female")
BUILTIN_GENDERS = tuple(_BUILTIN_REST_JOINTS)  # rest skeletons available without the SMPL model files


def rest_joints(gender: str = "male") -> np.ndarray:
    """Rest-pose joint positions (24, 3) in metres, betas = 0, float64.

    Only the male and neutral skeletons are built in: for the female body only the pelvis
    position is published without the licensed model, so female needs `smpl_model_dir`.
    """
    if gender not in GENDERS:
        raise E3D2Error(f"gender '{gender}': unknown SMPL body (choose one of {', '.join(GENDERS)})")
    if gender not in _BUILTIN_REST_JOINTS:
        raise E3D2Error(
            f"gender '{gender}': no built-in rest skeleton (only male and neutral are built in); "
            "give the SMPL model files with --smpl-model-dir"
        )
    return np.array(_BUILTIN_REST_JOINTS[gender], dtype=np.float64)


def _validate_motion(poses: np.ndarray, transl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    poses = np.asarray(poses, dtype=np.float64)
    transl = np.asarray(transl, dtype=np.float64)
    if poses.ndim == 2 and poses.shape[1] == NUM_JOINTS * 3:
        poses = poses.reshape(-1, NUM_JOINTS, 3)
    if poses.ndim != 3 or poses.shape[1:] != (NUM_JOINTS, 3):
        raise E3D2Error(f"SMPL poses: expected shape (N, 72) or (N, 24, 3), got {poses.shape}")
    if transl.shape != (poses.shape[0], 3):
        raise E3D2Error(f"SMPL translation: expected shape ({poses.shape[0]}, 3), got {transl.shape}")
    return poses, transl


def forward_kinematics(
    poses: np.ndarray,
    transl: np.ndarray,
    gender: str = "male",
    smpl_model_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Joint positions (N, 24, 3) float32 from axis-angle `poses` (N, 72) or (N, 24, 3) and `transl` (N, 3).

    The root rotates about its rest position and is then moved by `transl`, as in SMPL.
    With `smpl_model_dir` the SMPL model files are used through `smplx` (betas = 0).
    """
    poses, transl = _validate_motion(poses, transl)
    if smpl_model_dir is not None:
        return smplx_joints(load_smpl_model(smpl_model_dir, gender), poses, transl)
    rest = rest_joints(gender)
    translations = np.broadcast_to(rest - rest[np.maximum(SMPL_PARENTS, 0)], (len(poses), NUM_JOINTS, 3)).copy()
    translations[:, 0] = rest[0] + transl
    return chain_forward_kinematics(translations, axis_angle_to_matrix(poses), SMPL_PARENTS).astype(np.float32)


def chain_forward_kinematics(
    local_translations: np.ndarray, local_rotations: np.ndarray, parents: np.ndarray
) -> np.ndarray:
    """Joint positions (T, J, 3) from per-joint translations (T, J, 3) or (J, 3) and rotations (T, J, 3, 3).

    The one forward kinematics (SMPL poses, BVH files, fitted skeletons): joint j sits at its
    parent's position plus the parent's global rotation applied to its local translation; the
    root's translation is its world position.
    """
    local_rotations = np.asarray(local_rotations, dtype=np.float64)
    frames, count = local_rotations.shape[:2]
    translations = np.broadcast_to(np.asarray(local_translations, dtype=np.float64), (frames, count, 3))
    global_rotations = np.empty_like(local_rotations)
    positions = np.empty((frames, count, 3))
    for joint, parent in enumerate(parents):
        if parent < 0:
            global_rotations[:, joint] = local_rotations[:, joint]
            positions[:, joint] = translations[:, joint]
        else:
            global_rotations[:, joint] = global_rotations[:, parent] @ local_rotations[:, joint]
            positions[:, joint] = positions[:, parent] + (global_rotations[:, parent] @ translations[:, joint, :, None])[..., 0]
    return positions


# --------------------------------------------------------------------------------------------
# SMPL model files through smplx. smplx itself opens model pickles with plain `pickle.load`; we
# load them ourselves (npz without pickle, or pkl through a restricted unpickler that also
# admits the scipy sparse matrix SMPL stores its joint regressor in) and hand smplx the struct.
# --------------------------------------------------------------------------------------------
_SMPL_MODEL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights", "f")


def _smpl_pickle_allowed_globals() -> set[tuple[str, str]]:
    from e3d2_hf.utils import _ALLOWED_GLOBALS

    sparse = {(module, name) for module in ("scipy.sparse._csc", "scipy.sparse.csc") for name in ["csc_matrix"]}
    sparse |= {(module, "csr_matrix") for module in ("scipy.sparse._csr", "scipy.sparse.csr")}
    py2_objects = {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object")}
    return set(_ALLOWED_GLOBALS) | sparse | py2_objects


class _SMPLModelUnpickler(pickle.Unpickler):
    allowed_globals = _smpl_pickle_allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "chumpy":
            raise pickle.UnpicklingError(
                "the file holds chumpy objects; convert it first (smplx's tools/clean_ch.py) or save its arrays as an .npz"
            )
        if (module, name) in self.allowed_globals:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}' (only numpy arrays, sparse matrices and containers)")


class _SMPLModelStruct:
    """The attributes smplx.SMPL reads from a model file, as dense numpy arrays."""

    def __init__(self, arrays: dict[str, Any], source: Path):
        missing = [key for key in _SMPL_MODEL_KEYS if key not in arrays]
        if missing:
            raise E3D2Error(f"{source}: not an SMPL model file (missing {', '.join(missing)})")
        for key in _SMPL_MODEL_KEYS:
            value = arrays[key]
            value = value.toarray() if hasattr(value, "toarray") else np.asarray(value)
            setattr(self, key, value)
        if self.J_regressor.shape[0] < NUM_JOINTS or self.kintree_table.shape[-1] < NUM_JOINTS:
            raise E3D2Error(f"{source}: expected an SMPL body with {NUM_JOINTS} joints, got {self.J_regressor.shape[0]}")


def _find_smpl_model_file(smpl_model_dir: Path, gender: str) -> Path:
    if smpl_model_dir.is_file():
        return smpl_model_dir
    short = {"male": "m", "female": "f", "neutral": "neutral"}[gender]
    patterns = [f"SMPL_{gender.upper()}.npz", f"SMPL_{gender.upper()}.pkl", f"basic[Mm]odel_{short}_lbs_*.pkl"]
    for folder in (smpl_model_dir, smpl_model_dir / "smpl"):
        for pattern in patterns:
            found = sorted(folder.glob(pattern))
            if found:
                return found[0]
    raise E3D2Error(f"{smpl_model_dir}: no SMPL {gender} model file (expected SMPL_{gender.upper()}.pkl or .npz)")


def load_smpl_model(smpl_model_dir: str | os.PathLike, gender: str = "male") -> Any:
    """An `smplx.SMPL` body model (betas = 0) from the user's SMPL model folder or file, loaded safely."""
    if gender not in GENDERS:
        raise E3D2Error(f"gender '{gender}': unknown SMPL body (choose one of {', '.join(GENDERS)})")
    path = _find_smpl_model_file(Path(smpl_model_dir), gender).resolve()
    return _load_smpl_model_file(str(path), path.stat().st_mtime_ns, gender)


@functools.lru_cache(maxsize=4)
def _load_smpl_model_file(path_text: str, mtime_ns: int, gender: str) -> Any:
    """Cached by path and modification time: preparing a dataset runs FK once per sequence."""
    path = Path(path_text)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        else:
            with open(path, "rb") as handle:
                arrays = _SMPLModelUnpickler(handle, encoding="latin1").load()
    except Exception as exc:
        raise E3D2Error(f"{path}: cannot read SMPL model ({type(exc).__name__}: {exc})") from exc
    if not isinstance(arrays, dict):
        raise E3D2Error(f"{path}: not an SMPL model file (expected a dict of arrays)")
    return smplx_model_from_struct(_SMPLModelStruct(arrays, path), gender)


def smplx_model_from_struct(data_struct: Any, gender: str = "male") -> Any:
    """`smplx.SMPL` built from an object carrying the model arrays (no file is read)."""
    import smplx

    with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a notice for 10-beta models
        return smplx.SMPL(model_path="", data_struct=data_struct, gender=gender, num_betas=10)


def smplx_joints(model: Any, poses: np.ndarray, transl: np.ndarray, chunk_size: int = 512) -> np.ndarray:
    """First 24 joints (N, 24, 3) float32 of an `smplx.SMPL` model for axis-angle poses and translations."""
    import torch

    poses, transl = _validate_motion(poses, transl)
    flat_poses = torch.as_tensor(poses.reshape(len(poses), -1), dtype=torch.float32)
    transl_t = torch.as_tensor(transl, dtype=torch.float32)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(poses), chunk_size):
            stop = start + chunk_size
            batch = flat_poses[start:stop]
            output = model(
                betas=torch.zeros(len(batch), model.num_betas),
                global_orient=batch[:, :3],
                body_pose=batch[:, 3:],
                transl=transl_t[start:stop],
                return_verts=False,
            )
            chunks.append(output.joints[:, :NUM_JOINTS].numpy())
    if not chunks:
        return np.zeros((0, NUM_JOINTS, 3), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32)
