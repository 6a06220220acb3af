"""`e3d2 render`: every kind of dance file we read -> the same joints -> one video, several side by side."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from e3d2_hf.cli import main
from e3d2_hf.dance_files import read_dance
from e3d2_hf.inference import Dance
from e3d2_hf.motion.fitting import fit_skeleton
from e3d2_hf.render.bvh import save_bvh
from e3d2_hf.render.smpl import fit_smpl, save_smpl
from e3d2_hf.utils import E3D2Error

from conftest import dance_like_joints

AISTPP_SCALING = 93.5  # AIST++ stores smpl_trans in the capture's units: metres x smpl_scaling


class RunsCode:
    """What a malicious pickle would do on plain `pickle.load`: create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def dance():
    return fit_skeleton(dance_like_joints(90, seed=5))  # 1.5 s at 60 fps, on one rigid SMPL-proportioned skeleton


@pytest.fixture(scope="module")
def files(dance, tmp_path_factory):
    """The dance in every layout `e3d2 render` reads."""
    folder = tmp_path_factory.mktemp("dances")
    fitted = fit_smpl(dance)
    Dance(dance, folder / "song.wav", "model", 0).save_npz(folder / "ours.npz")
    save_bvh(folder / "ours.bvh", dance)
    save_smpl(folder / "ours_smpl.npz", fitted)
    save_smpl(folder / "ours_smpl.pkl", fitted)
    aistpp = {"smpl_poses": fitted.poses, "smpl_trans": fitted.trans * AISTPP_SCALING, "smpl_scaling": np.array([AISTPP_SCALING])}
    (folder / "gBR_sBM_cAll_d04_mBR0_ch01.pkl").write_bytes(pickle.dumps(aistpp))
    (folder / "bailando.pkl").write_bytes(pickle.dumps({"pred_position": dance.reshape(len(dance), 72)}))
    half_rate = dance[::2]  # EDGE writes 30 fps, z up
    z_up = np.stack([half_rate[..., 0], -half_rate[..., 2], half_rate[..., 1]], axis=-1)
    (folder / "edge.pkl").write_bytes(pickle.dumps({"smpl_poses": fitted.poses[::2], "smpl_trans": fitted.trans[::2], "full_pose": z_up}))
    np.save(folder / "joints.npy", dance)
    return folder


@pytest.mark.parametrize(
    ("name", "kind", "fps"),
    [("ours.npz", "e3d2", 60.0), ("ours.bvh", "bvh", 60.0), ("ours_smpl.npz", "smpl", 60.0), ("ours_smpl.pkl", "smpl", 60.0),
     ("gBR_sBM_cAll_d04_mBR0_ch01.pkl", "smpl", 60.0), ("bailando.pkl", "bailando", 60.0), ("edge.pkl", "edge", 30.0),
     ("joints.npy", "array", 60.0)],
)  # fmt: skip
def test_each_kind_reads_back_as_the_dance(files, dance, name, kind, fps):
    read = read_dance(files / name)
    assert (read.kind, read.fps) == (kind, fps)
    expected = dance[::2] if fps == 30.0 else dance
    assert read.joints.shape == expected.shape and read.joints.dtype == np.float32
    assert np.linalg.norm(read.joints - expected, axis=-1).max() < 1e-3


def test_several_files_side_by_side_and_one_with_music(files, tmp_path, capsys, monkeypatch):
    names = ["ours.npz", "ours.bvh", "ours_smpl.npz", "gBR_sBM_cAll_d04_mBR0_ch01.pkl", "bailando.pkl", "edge.pkl"]
    out = tmp_path / "compare.gif"
    assert main(["render", *(str(files / name) for name in names), "--out", str(out), "--seconds", "0.5"]) == 0
    with Image.open(out) as gif:
        assert gif.size == (6 * 640, 480) and gif.n_frames == 10  # six panels, 0.5 s at the GIF's 20 fps
    printed = capsys.readouterr().out
    assert f"{files / 'edge.pkl'}: edge, 1.5 s at 30 fps" in printed and f"video: {out}" in printed

    song = tmp_path / "song.wav"
    soundfile.write(song, np.sin(np.linspace(0, 800, 22050)).astype(np.float32) * 0.3, 22050)
    monkeypatch.chdir(tmp_path)  # the default output: <first file's name>.mp4 in the current folder
    assert main(["render", str(files / "ours_smpl.npz"), "--music", str(song)]) == 0
    assert (tmp_path / "ours_smpl.mp4").stat().st_size > 0


def test_unknown_files_and_malicious_pickles_are_refused(files, tmp_path, capsys):
    text = tmp_path / "dance.txt"
    text.write_text("not a dance")
    assert main(["render", str(text)]) == 2
    assert "dance.txt: unknown dance file type '.txt'" in capsys.readouterr().err

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"pred_position": RunsCode(marker)}))
    assert main(["render", str(evil), "--out", str(tmp_path / "x.gif")]) == 2
    assert "evil.pkl: unsafe or corrupt pickle" in capsys.readouterr().err and not marker.exists()

    other = tmp_path / "two_joints.bvh"
    other.write_text("HIERARCHY\nROOT a\n{\n OFFSET 0 0 0\n CHANNELS 3 Xposition Yposition Zposition\n JOINT b\n {\n  OFFSET 0 1 0\n"
                     "  CHANNELS 0\n  End Site\n  {\n   OFFSET 0 1 0\n  }\n }\n}\nMOTION\nFrames: 1\nFrame Time: 0.0333\n0 0 0\n")  # fmt: skip
    with pytest.raises(E3D2Error, match="two_joints.bvh: a BVH of 2 joints, not the SMPL-24 skeleton"):
        read_dance(other)
    np.savez(tmp_path / "other.npz", positions=np.zeros((4, 24, 3)))
    with pytest.raises(E3D2Error, match="other.npz: expected 'joints'"):
        read_dance(tmp_path / "other.npz")
    assert not (tmp_path / "x.gif").exists()
