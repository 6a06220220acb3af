"""AIST++ reader on small files written in the real download layout."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from e3d2_hf.data import aistpp
from e3d2_hf.motion.skeleton import forward_kinematics, rest_joints
from e3d2_hf.utils import E3D2Error

NAMES = {
    "train": ["gBR_sBM_cAll_d04_mBR0_ch01", "gPO_sBM_cAll_d10_mPO1_ch02", "gBR_sFM_cAll_d04_mBR0_ch08"],
    "val": ["gLH_sFM_cAll_d16_mLH4_ch04"],
    "test": ["gKR_sFM_cAll_d28_mKR2_ch03"],
}
IGNORED = "gBR_sFM_cAll_d04_mBR0_ch08"


def write_motion(path: Path, frames: int, seed: int, flat: bool = True, protocol: int = 4, **overrides) -> dict:
    rng = np.random.default_rng(seed)
    poses = rng.normal(scale=0.3, size=(frames, 72) if flat else (frames, 24, 3)).astype(np.float32)
    motion = {
        "smpl_poses": poses,
        "smpl_trans": (rng.normal(size=(frames, 3)) * 90.0).astype(np.float32),
        "smpl_scaling": np.array([93.5], dtype=np.float32),
        "smpl_loss": np.float64(1.5),  # present in the real files; readers must ignore it
    }
    motion.update(overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(motion, handle, protocol=protocol)
    return motion


def write_layout(root: Path, names: dict[str, list[str]] = NAMES, ignored: tuple[str, ...] = (IGNORED,)) -> None:
    (root / "splits").mkdir(parents=True)
    for split, split_names in names.items():
        (root / "splits" / f"crossmodal_{split}.txt").write_text("\n".join(split_names) + "\n")
    (root / "ignore_list.txt").write_text("\n".join(ignored) + "\n")
    for index, name in enumerate(n for split_names in names.values() for n in split_names):
        write_motion(root / "motions" / f"{name}.pkl", frames=20 + index, seed=index)


def test_name_fields() -> None:
    assert aistpp.music_id_from_name("gBR_sBM_cAll_d04_mBR0_ch01") == "mBR0"
    assert aistpp.genre_from_name("gBR_sBM_cAll_d04_mBR0_ch01") == "BR"
    assert aistpp.music_id_from_name("gJB_sFM_c01_d07_mJB3_ch07") == "mJB3"
    assert aistpp.genre_from_name("dance_mX1") == ""
    with pytest.raises(E3D2Error, match="no music id"):
        aistpp.music_id_from_name("gBR_sBM_cAll_d04_ch01")


def test_read_split_applies_ignore_list_and_keeps_order(tmp_path: Path) -> None:
    write_layout(tmp_path)
    (tmp_path / "wavs").mkdir()
    (tmp_path / "wavs" / "mPO1.mp3").write_bytes(b"")  # another audio format is found by its stem
    train = aistpp.read_split(tmp_path, "train")
    assert [sequence.name for sequence in train] == NAMES["train"][:2]
    first, second = train
    assert (first.music_id, first.genre) == ("mBR0", "BR")
    assert first.motion_path == tmp_path / "motions" / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    assert first.music_path == tmp_path / "wavs" / "mBR0.wav"
    assert second.music_path == tmp_path / "wavs" / "mPO1.mp3"
    splits = aistpp.read_splits(tmp_path, music_dir=tmp_path / "elsewhere")
    assert [len(splits[split]) for split in aistpp.SPLITS] == [2, 1, 1]
    assert splits["test"][0].music_path == tmp_path / "elsewhere" / "mKR2.wav"


@pytest.mark.parametrize("flat, protocol", [(True, 2), (False, 5)])
def test_motion_joints_are_fk_of_unscaled_translation(tmp_path: Path, flat: bool, protocol: int) -> None:
    path = tmp_path / "motions" / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    motion = write_motion(path, frames=30, seed=3, flat=flat, protocol=protocol)
    joints = aistpp.motion_joints(path)
    expected = forward_kinematics(
        motion["smpl_poses"].astype(np.float64).reshape(30, 72), motion["smpl_trans"].astype(np.float64) / 93.5
    )
    assert joints.shape == (30, 24, 3) and joints.dtype == np.float32
    np.testing.assert_allclose(joints, expected, atol=1e-6)


def test_zero_pose_puts_pelvis_at_rest_plus_translation_in_metres(tmp_path: Path) -> None:
    path = tmp_path / "still.pkl"
    trans = np.array([[0.0, 93.5 * 0.9, 187.0]], dtype=np.float32)  # 0.9 m up, 2 m forward at scale 93.5
    write_motion(path, frames=1, seed=0, smpl_poses=np.zeros((1, 72), np.float32), smpl_trans=trans)
    joints = aistpp.motion_joints(path)
    np.testing.assert_allclose(joints[0, 0], rest_joints()[0] + [0.0, 0.9, 2.0], atol=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"smpl_trans": None}, "missing key.*smpl_trans"),
        ({"smpl_poses": np.zeros((10, 69))}, r"smpl_poses has shape \(10, 69\)"),
        ({"smpl_trans": np.zeros((9, 3))}, r"smpl_trans has shape \(9, 3\), expected \(10, 3\)"),
        ({"smpl_scaling": np.array([1.0, 2.0])}, "smpl_scaling has shape"),
        ({"smpl_scaling": np.array([0.0])}, "smpl_scaling must be positive"),
        ({"smpl_poses": np.full((10, 72), np.nan)}, "smpl_poses contains NaN"),
        ({"smpl_poses": np.zeros((0, 72)), "smpl_trans": np.zeros((0, 3))}, "motion has no frames"),
    ],
)
def test_bad_motion_files_name_file_and_problem(tmp_path: Path, overrides: dict, message: str) -> None:
    path = tmp_path / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    motion = write_motion(path, frames=10, seed=0, **overrides)
    if overrides.get("smpl_trans", 0) is None:
        del motion["smpl_trans"]
        with open(path, "wb") as handle:
            pickle.dump(motion, handle)
    with pytest.raises(E3D2Error, match=f"gBR_sBM_cAll_d04_mBR0_ch01.pkl: {message}"):
        aistpp.load_motion(path)


def test_unreadable_motion_files(tmp_path: Path) -> None:
    with pytest.raises(E3D2Error, match="missing.pkl: motion file not found"):
        aistpp.load_motion(tmp_path / "missing.pkl")
    truncated = tmp_path / "truncated.pkl"
    write_motion(truncated, frames=10, seed=0)
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(E3D2Error, match="truncated.pkl: (unsafe or )?corrupt pickle"):
        aistpp.load_motion(truncated)
    listing = tmp_path / "list.pkl"
    listing.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(E3D2Error, match="list.pkl: expected a dict"):
        aistpp.load_motion(listing)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-motion",))


def test_motion_pickle_that_runs_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    path.write_bytes(pickle.dumps({"smpl_poses": _RunsCode(), "smpl_trans": np.zeros((1, 3)), "smpl_scaling": np.ones(1)}))
    with pytest.raises(E3D2Error, match=r"gBR_sBM_cAll_d04_mBR0_ch01.pkl: unsafe or corrupt pickle.*system"):
        aistpp.load_motion(path)
    assert not (tmp_path / "pwned-by-motion").exists()


def test_missing_split_file_and_folder(tmp_path: Path) -> None:
    write_layout(tmp_path)
    (tmp_path / "splits" / "crossmodal_val.txt").unlink()
    with pytest.raises(E3D2Error, match="crossmodal_val.txt: file not found"):
        aistpp.read_splits(tmp_path)
    with pytest.raises(E3D2Error, match="nowhere: AIST\\+\\+ folder not found"):
        aistpp.read_split(tmp_path / "nowhere", "train")
    with pytest.raises(E3D2Error, match="unknown"):
        aistpp.read_split(tmp_path, "dev")


def test_absent_ignore_list_ignores_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_layout(tmp_path)
    (tmp_path / "ignore_list.txt").unlink()
    assert len(aistpp.read_split(tmp_path, "train")) == 3
    assert "ignore_list.txt: not found" in caplog.text
