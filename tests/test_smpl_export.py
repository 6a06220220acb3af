"""SMPL parameters out: solved on the SMPL rest skeleton, forward kinematics reproduces the dance, files other tools read."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from e3d2_hf.data.aistpp import motion_joints
from e3d2_hf.inference import Dance
from e3d2_hf.motion import fitting, skeleton
from e3d2_hf.motion.fitting import fit_rest_skeleton, fit_skeleton
from e3d2_hf.render.smpl import FIT_TOLERANCE_M, fit_smpl, load_smpl, save_smpl
from e3d2_hf.utils import E3D2Error, safe_load_pickle

from conftest import dance_like_joints
from test_skeleton import synthetic_smpl_arrays


def fk_error(poses: np.ndarray, trans: np.ndarray, joints: np.ndarray, **fk) -> np.ndarray:
    return np.linalg.norm(skeleton.forward_kinematics(poses, trans, **fk) - joints, axis=-1)


def test_a_dance_on_the_smpl_skeleton_comes_back_through_our_fk():
    joints = fit_skeleton(dance_like_joints(240, seed=7))  # what `e3d2 dance` saves: the dance on one rigid skeleton
    fitted = fit_smpl(joints, 60.0)
    assert fitted.poses.shape == (240, 72) and fitted.trans.shape == (240, 3) and fitted.gender == "male"
    errors = fk_error(fitted.poses, fitted.trans, joints)
    assert errors.mean() < 1e-4 and errors.max() < 1e-3  # metres: the same skeleton, so only rounding is left
    assert fitted.fit_error_mean_m == pytest.approx(errors.mean(), abs=1e-6)
    # the root's rotation is the first axis-angle triple, and translation is the pelvis minus its rest position
    np.testing.assert_allclose(fitted.trans, joints[:, 0] - skeleton.rest_joints("male")[0], atol=1e-6)


def test_a_dance_put_on_the_rest_skeleton_has_smpls_bones_and_fits_exactly():
    raw = dance_like_joints(120, seed=5)
    raw[:, 18:20] = raw[:, 16:18] + 0.7 * (raw[:, 18:20] - raw[:, 16:18])  # short upper arms, as a VQ-VAE decodes them
    rest = skeleton.rest_joints("male")
    parents = np.maximum(skeleton.SMPL_PARENTS, 0)
    on_rest = fit_rest_skeleton(raw)
    lengths = np.linalg.norm(on_rest[:, 1:] - on_rest[:, parents[1:]], axis=-1)
    np.testing.assert_allclose(lengths, np.broadcast_to(np.linalg.norm(rest[1:] - rest[parents[1:]], axis=-1), lengths.shape), atol=1e-5)
    np.testing.assert_allclose(on_rest[:, 0], raw[:, 0], atol=1e-6)  # the pelvis stays where it was
    assert fit_smpl(on_rest).fit_error_mean_m < 1e-6
    assert fit_smpl(raw).fit_error_mean_m > 0.005  # the raw dance's bones differ from SMPL's
    smpl_dance = skeleton.forward_kinematics(np.random.default_rng(1).normal(scale=0.3, size=(40, 72)), np.zeros((40, 3)))
    np.testing.assert_allclose(fit_rest_skeleton(smpl_dance), smpl_dance, atol=1e-5)  # an SMPL body is already there


def test_fitted_joints_are_the_forward_kinematics_of_the_solved_rotations_even_on_degenerate_frames():
    """`fit_skeleton`/`fit_rest_skeleton` place bones without rotations; they must reach what FK of the rotations reaches."""
    knee, ankle, spine3 = 4, 7, 9  # a joint with one child; one with three (neck and collars)
    frames = fitting.FRAMES_PER_CHUNK + 60  # two chunks, degenerate frames in both
    for offsets in (fitting._rest_offsets(None), fitting.bone_offsets(dance_like_joints(frames, seed=11))):
        raw = dance_like_joints(frames, seed=11).astype(np.float64)
        placed = fitting.reached_positions(raw, offsets)
        raw[5, ankle] = placed[5, knee]  # the observed ankle exactly where the knee is placed: no aim
        raw[frames - 3, [12, 13, 14]] = placed[frames - 3, spine3] + np.outer([1.0, 2.0, 3.0], [0.0, 0.05, 0.01])  # on one line
        raw[frames - 1] = 0.0  # a collapsed pose: every aim zero
        through_rotations = fitting.positions_through_rotations(raw, offsets)
        np.testing.assert_allclose(fitting.reached_positions(raw, offsets), through_rotations, atol=1e-9)
        np.testing.assert_allclose(fitting._pose_skeleton(raw, offsets), through_rotations, atol=1e-6)


def test_both_files_round_trip_and_the_pickle_reads_as_an_aistpp_motion(tmp_path):
    joints = fit_skeleton(dance_like_joints(120, seed=3))
    fitted = fit_smpl(joints, 60.0)
    for suffix in ("npz", "pkl"):
        path = save_smpl(tmp_path / f"song_smpl.{suffix}", fitted)
        again = load_smpl(path)
        assert again.gender == "male" and again.fps == 60.0 and again.scaling == 1.0
        assert np.linalg.norm(again.joints() - joints, axis=-1).mean() < 1e-4
    with np.load(tmp_path / "song_smpl.npz", allow_pickle=False) as archive:  # no pickle inside the npz
        assert archive["smpl_poses"].shape == (120, 72) and archive["smpl_trans"].shape == (120, 3)
        assert archive["smpl_scaling"].tolist() == [1.0] and str(archive["gender"]) == "male" and float(archive["fps"]) == 60.0
    layout = safe_load_pickle(tmp_path / "song_smpl.pkl")
    assert {"smpl_poses", "smpl_trans", "smpl_scaling"} <= set(layout) and layout["smpl_poses"].shape == (120, 72)
    # the AIST++ reader (smpl_trans / smpl_scaling, male rest skeleton) sees the same dance
    assert np.linalg.norm(motion_joints(tmp_path / "song_smpl.pkl") - joints, axis=-1).mean() < 1e-4


def test_the_users_smpl_files_go_through_smplx(tmp_path):
    arrays = synthetic_smpl_arrays("male")
    arrays["v_template"][: skeleton.NUM_JOINTS] *= 1.1  # a taller body than the built-in one
    np.savez(tmp_path / "SMPL_MALE.npz", **arrays)
    model = skeleton.load_smpl_model(tmp_path, "male")
    rng = np.random.default_rng(0)
    poses = rng.normal(scale=0.3, size=(50, 72))
    joints = skeleton.smplx_joints(model, poses, rng.normal(scale=0.2, size=(50, 3)))  # a dance of that body

    fitted = fit_smpl(joints, gender="male", smpl_model_dir=tmp_path)
    through_smplx = np.linalg.norm(skeleton.smplx_joints(model, fitted.poses, fitted.trans) - joints, axis=-1)
    assert through_smplx.mean() < 1e-4 and fitted.fit_error_mean_m == pytest.approx(through_smplx.mean(), abs=1e-6)
    assert np.linalg.norm(fitted.joints(tmp_path) - joints, axis=-1).mean() < 1e-4
    built_in = fit_smpl(joints)  # the built-in skeleton is shorter: its fit misses by centimetres
    assert built_in.fit_error_mean_m > 0.01


def test_bones_unlike_smpls_are_fitted_with_a_warning(caplog):
    joints = fit_skeleton(dance_like_joints(60, seed=1))
    stretched = joints.copy()
    stretched[:, 1:] = joints[:, :1] + 1.3 * (joints[:, 1:] - joints[:, :1])  # a body 30 % larger
    fitted = fit_smpl(stretched, what="dance to song.wav")
    assert fitted.fit_error_mean_m > FIT_TOLERANCE_M
    assert "dance to song.wav: its bones differ" in caplog.text


def test_degenerate_dances_and_bad_files_fail_clearly(tmp_path):
    joints = fit_skeleton(dance_like_joints(60, seed=2))
    joints[10:13, 4] = joints[10:13, 1]  # the left knee on the left hip: that thigh has no direction
    with pytest.raises(E3D2Error, match="dance to song.wav: cannot fit an SMPL body: bone left_hip -> left_knee has zero length in 3 frame"):
        Dance(joints, Path("song.wav"), "model", 0).save_smpl(tmp_path / "song_smpl.npz")
    assert not (tmp_path / "song_smpl.npz").exists()
    with pytest.raises(E3D2Error, match="written as .npz or .pkl"):
        save_smpl(tmp_path / "song.txt", fit_smpl(fit_skeleton(dance_like_joints(30, seed=1))))
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"smpl_poses": np.zeros((2, 72)), "x": Path("/")}))
    with pytest.raises(E3D2Error, match="evil.pkl: unsafe or corrupt pickle"):
        load_smpl(evil)
    np.savez(tmp_path / "bad.npz", smpl_poses=np.zeros((4, 70)), smpl_trans=np.zeros((4, 3)))
    with pytest.raises(E3D2Error, match="bad.npz: smpl_poses"):
        load_smpl(tmp_path / "bad.npz")
