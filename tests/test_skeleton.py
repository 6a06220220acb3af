"""SMPL-24 skeleton: built-in forward kinematics agrees with smplx, and model files load safely."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from e3d2_hf.motion import skeleton
from e3d2_hf.utils import E3D2Error

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NUM_VERTICES = 6890  # smplx picks extra joints from fixed SMPL vertex ids, so the mesh needs them all


def synthetic_smpl_arrays(gender: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays shaped like an SMPL model file whose joint regressor yields the built-in rest joints.

    The first 24 vertices sit on the rest joints and the regressor picks them, so smplx's joints
    must match our FK exactly; skinning weights, pose and shape blend shapes are random, because
    they must not influence the joints.
    """
    rng = np.random.default_rng(seed)
    v_template = rng.normal(scale=0.3, size=(NUM_VERTICES, 3))
    v_template[: skeleton.NUM_JOINTS] = skeleton.rest_joints(gender)
    j_regressor = np.zeros((skeleton.NUM_JOINTS, NUM_VERTICES))
    j_regressor[np.arange(skeleton.NUM_JOINTS), np.arange(skeleton.NUM_JOINTS)] = 1.0
    weights = rng.random((NUM_VERTICES, skeleton.NUM_JOINTS))
    parents_row = np.where(skeleton.SMPL_PARENTS < 0, 4294967295, skeleton.SMPL_PARENTS)
    return {
        "v_template": v_template,
        "shapedirs": rng.normal(scale=0.01, size=(NUM_VERTICES, 3, 10)),
        "posedirs": rng.normal(scale=0.01, size=(NUM_VERTICES, 3, 207)),
        "J_regressor": j_regressor,
        "kintree_table": np.stack([parents_row, np.arange(skeleton.NUM_JOINTS)]).astype(np.int64),
        "weights": weights / weights.sum(axis=1, keepdims=True),
        "f": rng.integers(0, NUM_VERTICES, size=(64, 3)).astype(np.uint32),
    }


class SMPLStruct:
    def __init__(self, arrays: dict[str, np.ndarray]):
        self.__dict__.update(arrays)


def random_motion(frames: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(scale=0.8, size=(frames, 72)), rng.normal(scale=1.0, size=(frames, 3))


@pytest.mark.parametrize("gender", ["male", "neutral"])
def test_forward_kinematics_matches_smplx(gender: str) -> None:
    model = skeleton.smplx_model_from_struct(SMPLStruct(synthetic_smpl_arrays(gender)), gender)
    poses, transl = random_motion(64)
    ours = skeleton.forward_kinematics(poses, transl, gender=gender)
    theirs = skeleton.smplx_joints(model, poses, transl, chunk_size=20)
    assert ours.shape == theirs.shape == (64, 24, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_smpl_model_dir_pickle_with_sparse_regressor(tmp_path: Path) -> None:
    arrays = synthetic_smpl_arrays("male")
    arrays["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"])  # as in the MPI files
    with open(tmp_path / "SMPL_MALE.pkl", "wb") as handle:
        pickle.dump(arrays, handle, protocol=2)
    poses, transl = random_motion(10, seed=2)
    joints = skeleton.forward_kinematics(poses, transl, smpl_model_dir=tmp_path)
    np.testing.assert_allclose(joints, skeleton.forward_kinematics(poses, transl), atol=1e-5, rtol=0)


def test_smpl_model_dir_npz_in_smpl_subfolder(tmp_path: Path) -> None:
    (tmp_path / "smpl").mkdir()
    np.savez(tmp_path / "smpl" / "SMPL_NEUTRAL.npz", **synthetic_smpl_arrays("neutral"))
    poses, transl = random_motion(5, seed=3)
    joints = skeleton.forward_kinematics(poses.reshape(5, 24, 3), transl, gender="neutral", smpl_model_dir=tmp_path)
    np.testing.assert_allclose(joints, skeleton.forward_kinematics(poses, transl, gender="neutral"), atol=1e-5, rtol=0)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-smpl-model",))


def test_smpl_model_file_that_runs_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    arrays = synthetic_smpl_arrays("male")
    arrays["weights"] = _RunsCode()
    with open(tmp_path / "SMPL_MALE.pkl", "wb") as handle:
        pickle.dump(arrays, handle)
    with pytest.raises(E3D2Error, match="SMPL_MALE.pkl.*refusing"):
        skeleton.load_smpl_model(tmp_path)
    assert not (tmp_path / "pwned-by-smpl-model").exists()


def test_missing_model_and_missing_keys(tmp_path: Path) -> None:
    with pytest.raises(E3D2Error, match="no SMPL female model file"):
        skeleton.load_smpl_model(tmp_path, "female")
    arrays = synthetic_smpl_arrays("male")
    del arrays["weights"]
    np.savez(tmp_path / "SMPL_MALE.npz", **arrays)
    with pytest.raises(E3D2Error, match="missing weights"):
        skeleton.load_smpl_model(tmp_path, "male")


def test_rest_pose_and_root_motion() -> None:
    rest = skeleton.rest_joints("male")
    transl = np.array([[0.5, 1.0, -2.0]])
    joints = skeleton.forward_kinematics(np.zeros((1, 72)), transl)
    np.testing.assert_allclose(joints[0], rest + transl, atol=1e-6)
    # A quarter turn of the root about +y maps (x, y, z) offsets from the pelvis to (z, y, -x).
    poses = np.zeros((1, 72))
    poses[0, 1] = np.pi / 2
    turned = skeleton.forward_kinematics(poses, np.zeros((1, 3)))[0] - rest[0]
    offsets = rest - rest[0]
    np.testing.assert_allclose(turned, np.stack([offsets[:, 2], offsets[:, 1], -offsets[:, 0]], axis=1), atol=1e-6)


def test_bone_lengths_are_preserved_under_any_pose() -> None:
    poses, transl = random_motion(32, seed=4)
    joints = skeleton.forward_kinematics(poses, transl)
    rest = skeleton.rest_joints()
    child = np.arange(1, 24)
    lengths = np.linalg.norm(joints[:, child] - joints[:, skeleton.SMPL_PARENTS[child]], axis=-1)
    rest_lengths = np.linalg.norm(rest[child] - rest[skeleton.SMPL_PARENTS[child]], axis=-1)
    np.testing.assert_allclose(lengths, np.broadcast_to(rest_lengths, lengths.shape), atol=1e-5)


def test_tree_and_body_halves() -> None:
    assert len(skeleton.SMPL_JOINT_NAMES) == 24 and skeleton.SMPL_PARENTS.shape == (24,)
    assert all(skeleton.SMPL_PARENTS[j] < j for j in range(1, 24))
    assert sorted(skeleton.LOWER_BODY_JOINTS + skeleton.UPPER_BODY_JOINTS) == list(range(24))
    assert len(skeleton.UPPER_BODY_JOINTS) == 15 and skeleton.UPPER_BODY_JOINTS == sorted(skeleton.UPPER_BODY_JOINTS)
    assert [skeleton.SMPL_JOINT_NAMES[j] for j in (10, 11, 15)] == ["left_foot", "right_foot", "head"]


def test_bad_input() -> None:
    with pytest.raises(E3D2Error, match="female.*--smpl-model-dir"):
        skeleton.forward_kinematics(np.zeros((2, 72)), np.zeros((2, 3)), gender="female")
    with pytest.raises(E3D2Error, match="unknown SMPL body"):
        skeleton.rest_joints("robot")
    with pytest.raises(E3D2Error, match=r"poses.*\(2, 69\)"):
        skeleton.forward_kinematics(np.zeros((2, 69)), np.zeros((2, 3)))
    with pytest.raises(E3D2Error, match="translation"):
        skeleton.forward_kinematics(np.zeros((2, 72)), np.zeros((3, 3)))


def test_built_in_constants_match_shared_json() -> None:
    source = SHARED_DATA / "smpl" / "smpl24_rest_skeleton.json"
    if not source.exists():
        pytest.skip(f"{source} is absent (shared data not checked out beside the project)")
    data = json.loads(source.read_text())
    assert data["joint_names"] == skeleton.SMPL_JOINT_NAMES
    assert data["parents"] == skeleton.SMPL_PARENTS.tolist()
    np.testing.assert_array_equal(skeleton.rest_joints("male"), np.array(data["male_rest_joints_abs_m"]))
    np.testing.assert_array_equal(
        skeleton.rest_joints("neutral"), np.array(data["neutral_rest_joints_abs_m (cumsum of neutral offsets)"])
    )
    offsets = np.array(data["male_parent_offsets_m (=EDGE vis.py smpl_offsets)"])
    rest = skeleton.rest_joints("male")
    np.testing.assert_allclose(rest[1:] - rest[skeleton.SMPL_PARENTS[1:]], offsets[1:], atol=1e-6)  # the json rounds to 8 decimals
