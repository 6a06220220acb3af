"""`e3d2 dance`: a policy folder + any music file -> npz, BVH and a video with the music."""

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from e3d2_hf.cli import main
from e3d2_hf.inference import dance, generate_dances, standing_start_pose
from e3d2_hf.models.configuration_policy import PolicyConfig
from e3d2_hf.models.configuration_vqvae import VQVAEConfig
from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.models.modeling_vqvae import E3D2VQVAE

SHARED_MUSIC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "music"
TRUMPET = SHARED_MUSIC / "sorohanro_-_solo-trumpet-06.ogg"
needs_music = pytest.mark.skipif(not TRUMPET.is_file(), reason="../shared/data/music is absent")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E3D2_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    torch.manual_seed(0)
    vqvae = E3D2VQVAE(VQVAEConfig(channels=8, codebook_dim=8, residual_depth=1, codebook_size=32)).eval()
    policy = E3D2PolicyModel(PolicyConfig(codebook_size=32, hidden_size=32, num_hidden_layers=2, num_base_layers=1, num_attention_heads=4))
    policy.attach_vqvae(vqvae)
    folder = tmp_path_factory.mktemp("models") / "bc"
    policy.save_pretrained(folder)
    return folder


@needs_music
def test_cli_writes_the_whole_piece_as_npz(policy_dir, tmp_path, capsys):
    out = tmp_path / "dances"
    assert main(["dance", "--model", str(policy_dir), "--music", str(TRUMPET), "--out", str(out), "--seed", "3"]) == 0
    saved = np.load(out / f"{TRUMPET.stem}.npz")
    duration = soundfile.info(TRUMPET).duration
    assert saved["joints"].shape[1:] == (24, 3) and saved["joints"].dtype == np.float32
    assert abs(saved["joints"].shape[0] - duration * 60) <= 8  # whole piece, one code = 8 frames
    assert float(saved["fps"]) == 60.0 and int(saved["seed"]) == 3 and str(saved["music"]) == str(TRUMPET)
    assert np.isfinite(saved["joints"]).all()
    assert str(out / f"{TRUMPET.stem}.npz") in capsys.readouterr().out


@needs_music
def test_api_is_seeded_and_cuts_to_seconds(policy_dir):
    first = dance(policy_dir, TRUMPET, seconds=2.0, seed=5)
    again = dance(policy_dir, TRUMPET, seconds=2.0, seed=5)
    assert first.joints.shape == (120, 24, 3)
    np.testing.assert_array_equal(first.joints, again.joints)
    batch = generate_dances(policy_dir, TRUMPET, seconds=2.0, seed=5, num_dances=3)
    assert len(batch) == 3 and not np.array_equal(batch[1].joints, batch[2].joints)


def test_grounding_removes_drift_and_keeps_jumps():
    from e3d2_hf.inference import ground_dance

    frames = 600
    dance_joints = np.repeat(standing_start_pose(1), frames, axis=0)
    jump = np.zeros(frames)
    jump[300:315] = 0.2 * np.sin(np.linspace(0, np.pi, 15))
    drift = np.linspace(0, -3.0, frames)
    grounded = ground_dance(dance_joints + (drift + jump)[:, None, None] * np.array([0, 1, 0]))
    lowest = grounded[:, [7, 8, 10, 11], 1].min(axis=1)
    assert np.abs(np.delete(lowest, range(285, 330))).max() < 0.04  # 3 m of drift gone to within 4 cm (ends included)
    assert lowest[307] > 0.12  # the 0.2 m flight survives (the quarter-second smoothing takes a little)


def test_standing_start_pose_is_on_the_floor():
    pose = standing_start_pose(8)
    assert pose.shape == (8, 24, 3) and abs(pose[..., 1].min()) < 1e-6


def test_bad_inputs_fail_in_one_line(policy_dir, tmp_path, capsys):
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"not audio" * 50)
    assert main(["dance", "--model", str(policy_dir), "--music", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "broken.mp3" in capsys.readouterr().err
    assert main(["dance", "--model", str(tmp_path / "nowhere"), "--music", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "no such policy folder" in capsys.readouterr().err
    no_vqvae = tmp_path / "bare"
    E3D2PolicyModel.from_pretrained(policy_dir).save_pretrained(no_vqvae)
    import shutil

    shutil.rmtree(no_vqvae / "vqvae")
    assert main(["dance", "--model", str(no_vqvae), "--music", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "no VQ-VAE" in capsys.readouterr().err
