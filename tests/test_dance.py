"""`e3d2 dance`: a policy folder + any music file -> npz, BVH and a video with the music."""

import errno
import re
import shutil
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from e3d2_hf.cli import main
from e3d2_hf.inference import Dance, dance, generate_dances, model_labels, music_to_joints, standing_start_pose
from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.render.bvh import bvh_to_joints
from e3d2_hf.render.smpl import load_smpl
from e3d2_hf.utils import E3D2Error

from conftest import one_error_line, tiny_dancing_policy

SHARED_MUSIC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "music"
TRUMPET = SHARED_MUSIC / "sorohanro_-_solo-trumpet-06.ogg"
needs_music = pytest.mark.skipif(not TRUMPET.is_file(), reason="../shared/data/music is absent")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E3D2_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A tiny random policy: its VQ-VAE's bones stretch from frame to frame, as an untrained one's do."""
    policy = tiny_dancing_policy()
    folder = tmp_path_factory.mktemp("models") / "bc"
    policy.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """Three seconds of the synthetic generator's music, so most tests need no shared data."""
    from e3d2_hf.data.synthetic import GENRES, SAMPLE_RATE, compose_music

    path = tmp_path_factory.mktemp("music") / "song.wav"
    soundfile.write(path, compose_music(GENRES[0], 110.0, 3.0, np.random.default_rng(0))[0], SAMPLE_RATE)
    return path


def audio_stream(path: Path) -> tuple[str, float]:
    """Codec and duration of a file's first audio stream, as ffmpeg reads them while copying it out."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-i", str(path), "-map", "0:a:0", "-c", "copy", "-f", "null", "-"]
    log = subprocess.run(command, check=True, capture_output=True, text=True).stderr
    codec = re.search(r"Stream #0:\d+\S*: Audio: (\w+)", log)
    hours, minutes, seconds = re.findall(r"time=(\d+):(\d+):([\d.]+)", log)[-1]
    return codec.group(1) if codec else "", 3600 * int(hours) + 60 * int(minutes) + float(seconds)


def files_in(folder: Path) -> list[str]:
    """Everything in `folder`, hidden staging files included."""
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


@needs_music
def test_cli_writes_the_whole_piece_as_npz_bvh_and_mp4(policy_dir, tmp_path, capsys):
    out = tmp_path / "dances"
    assert main(["dance", "--model", str(policy_dir), "--music", str(TRUMPET), "--out", str(out), "--seed", "3"]) == 0
    stem = TRUMPET.stem
    assert files_in(out) == [f"{stem}.bvh", f"{stem}.mp4", f"{stem}.npz", f"{stem}_smpl.npz"]
    saved = np.load(out / f"{stem}.npz")
    duration = soundfile.info(TRUMPET).duration
    assert saved["joints"].shape[1:] == (24, 3) and saved["joints"].dtype == np.float32
    assert abs(saved["joints"].shape[0] - duration * 60) <= 8  # whole piece, one code = 8 frames
    assert float(saved["fps"]) == 60.0 and int(saved["seed"]) == 3 and str(saved["music"]) == str(TRUMPET)
    assert np.isfinite(saved["joints"]).all()
    bvh_joints, bvh_fps = bvh_to_joints(out / f"{stem}.bvh")
    assert bvh_fps == 60.0 and bvh_joints.shape == saved["joints"].shape
    assert np.linalg.norm(bvh_joints - saved["joints"], axis=-1).max() < 0.01
    codec, seconds = audio_stream(out / f"{stem}.mp4")
    assert codec == "aac" and abs(seconds - saved["joints"].shape[0] / 60) < 0.05
    printed = capsys.readouterr().out
    assert all(str(out / name) in printed for name in files_in(out))


@needs_music
def test_api_is_seeded_and_cuts_to_seconds(policy_dir):
    first = dance(policy_dir, TRUMPET, seconds=2.0, seed=5)
    again = dance(policy_dir, TRUMPET, seconds=2.0, seed=5)
    assert first.joints.shape == (120, 24, 3)
    np.testing.assert_array_equal(first.joints, again.joints)
    batch = generate_dances(policy_dir, TRUMPET, seconds=2.0, seed=5, num_dances=3)
    assert len(batch) == 3 and not np.array_equal(batch[1].joints, batch[2].joints)


def test_api_dance_saves_and_renders(policy_dir, song, tmp_path):
    result = dance(policy_dir, song, seconds=1.0)
    assert result.save_npz(tmp_path / "a.npz").is_file()
    joints, fps = bvh_to_joints(result.save_bvh(tmp_path / "a.bvh"))
    assert fps == 60.0 and np.linalg.norm(joints - result.joints, axis=-1).max() < 0.01
    with Image.open(result.render(tmp_path / "a.gif", size=(128, 96))) as gif:
        assert gif.size == (128, 96) and gif.n_frames == 20  # 1 s at the GIF's 20 fps
    assert abs(audio_stream(result.render(tmp_path / "a.mp4", size=(128, 96)))[1] - 1.0) < 0.05


def test_models_and_dances_share_one_video(policy_dir, song, tmp_path, capsys):
    ppo = tmp_path / "run" / "ppo" / "policy"
    shutil.copytree(policy_dir, ppo)
    out = tmp_path / "dances"
    command = ["dance", "--model", str(policy_dir), "--model", str(ppo), "--music", str(song), "--out", str(out)]
    assert main(command + ["--num-dances", "2", "--seconds", "1", "--format", "gif", "--no-bvh", "--no-smpl"]) == 0
    assert files_in(out) == ["song.gif", "song_bc_0.npz", "song_bc_1.npz", "song_ppo_0.npz", "song_ppo_1.npz"]
    with Image.open(out / "song.gif") as gif:
        assert gif.size == (4 * 640, 480)  # four panels side by side
    bc, ppo_dance = np.load(out / "song_bc_0.npz"), np.load(out / "song_ppo_0.npz")
    np.testing.assert_array_equal(bc["joints"], ppo_dance["joints"])  # same weights, same seed: same dance
    assert str(bc["model_id"]) == str(policy_dir)
    assert "4 dance(s)" in capsys.readouterr().out


def test_model_labels_are_short_and_distinct():
    assert model_labels(["runs/x/bc", "runs/x/ppo/policy", "user/e3d2-tiny"]) == ["bc", "ppo", "e3d2-tiny"]
    assert model_labels(["runs/a/bc", "runs/b/bc/"]) == ["bc-1", "bc-2"]


def test_silence_is_danced_to_with_a_warning(policy_dir, tmp_path, caplog):
    # Decision: silence is valid music (a silent intro, a test tone): dance anyway, but say that
    # the dance cannot follow it.
    silent = tmp_path / "silence.wav"
    soundfile.write(silent, np.zeros(2 * 22050, dtype=np.float32), 22050)
    out = tmp_path / "o"
    assert main(["dance", "--model", str(policy_dir), "--music", str(silent), "--out", str(out), "--format", "none"]) == 0
    assert files_in(out) == ["silence.bvh", "silence.npz", "silence_smpl.npz"]
    joints = np.load(out / "silence.npz")["joints"]
    assert abs(len(joints) - 120) <= 8 and np.isfinite(joints).all()
    assert "no beats found" in caplog.text


def test_smpl_parameters_in_either_layout(policy_dir, song, tmp_path, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "o"
    assert main(["dance", "--model", str(policy_dir), "--music", str(song), "--out", str(out), "--seconds", "1", "--format", "none", "--smpl-format", "pkl"]) == 0
    assert files_in(out) == ["song.bvh", "song.npz", "song_smpl.pkl"]
    joints = np.load(out / "song.npz")["joints"]
    parameters = load_smpl(out / "song_smpl.pkl")
    measured = np.linalg.norm(parameters.joints() - joints, axis=-1).mean()
    # an untrained model's bones are far from SMPL's: the SMPL body reaches the dance only so far, and says how far
    assert f"SMPL forward kinematics reproduces the dance to {100 * measured:.2f} cm" in caplog.text


def test_a_dance_no_smpl_body_fits_still_gets_its_npz_and_bvh(policy_dir, song, tmp_path, monkeypatch, capsys):
    collapsed = standing_start_pose(60)
    collapsed[:, 4] = collapsed[:, 1]  # the left knee on the left hip
    monkeypatch.setattr("e3d2_hf.inference.generate_dances", lambda *args, **kwargs: [Dance(collapsed, song, "m", 0)])
    out = tmp_path / "o"
    assert main(["dance", "--model", str(policy_dir), "--music", str(song), "--out", str(out), "--format", "gif"]) == 2
    assert files_in(out) == ["song.bvh", "song.gif", "song.npz"]
    error = capsys.readouterr().err
    assert f"{out / 'song'}: dance to song.wav: cannot fit an SMPL body: bone left_hip -> left_knee" in error and "other files are written" in error


def test_failed_render_leaves_no_files(policy_dir, song, tmp_path, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / "song.npz").write_bytes(b"an earlier run")

    def broken_render(path, *args, **kwargs):
        raise E3D2Error(f"{path}: ffmpeg failed (disk full)")

    monkeypatch.setattr("e3d2_hf.render.video.render_video", broken_render)
    assert main(["dance", "--model", str(policy_dir), "--music", str(song), "--out", str(out), "--seconds", "1"]) == 2
    assert files_in(out) == ["song.npz"] and (out / "song.npz").read_bytes() == b"an earlier run"


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


def test_bad_inputs_fail_in_one_line(policy_dir, song, tmp_path, capsys):
    out = tmp_path / "o"

    def fails(model, music, *options):
        assert main(["dance", "--model", str(model), "--music", str(music), "--out", str(out), *options]) == 2
        return capsys.readouterr().err

    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"not audio" * 50)
    assert "broken.mp3" in fails(policy_dir, broken)
    blip = tmp_path / "blip.wav"  # shorter than one pose-code step (8 frames = 0.13 s)
    soundfile.write(blip, np.zeros(2205, dtype=np.float32), 22050)
    assert "blip.wav: audio too short" in fails(policy_dir, blip)
    assert "too short to dance to" in fails(policy_dir, song, "--seconds", "0.1")
    assert "no such policy folder" in fails(tmp_path / "nowhere", broken)
    no_vqvae = tmp_path / "bare"
    E3D2PolicyModel.from_pretrained(policy_dir).save_pretrained(no_vqvae)
    shutil.rmtree(no_vqvae / "vqvae")
    assert "no VQ-VAE" in fails(no_vqvae, song)
    assert files_in(out) == []
    out = tmp_path / "a_file"  # the output "folder" is a file: nothing can be written
    out.write_text("")
    assert "a_file: is a file, not a folder" in fails(policy_dir, song)


# ----------------------------------------------------------------------------------------------
# Faults: one line naming the file and the problem, nothing written, nothing earlier lost
# ----------------------------------------------------------------------------------------------
def exit_code(argv: list[str]) -> int:
    """`e3d2 ARGV`'s exit status, whether `main` returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def one_line_error(capsys) -> str:
    return one_error_line(capsys.readouterr().err, "e3d2 dance: error: ") + "\n"


@pytest.mark.parametrize(
    "options,problem",
    [
        (["--seconds", "inf"], "argument --seconds: must be a finite number, got 'inf'"),
        (["--seconds", "nan"], "argument --seconds: must be a finite number, got 'nan'"),
        (["--seconds", "0"], "argument --seconds: must be positive, got '0'"),
        (["--temperature", "nan"], "argument --temperature: must be a finite number, got 'nan'"),
        (["--temperature", "inf"], "argument --temperature: must be a finite number, got 'inf'"),
        (["--top-k", "0"], "top_k must be at least 1, got 0"),
        (["--num-dances", "0"], "num_dances must be at least 1, got 0"),
    ],
)
def test_numbers_that_are_not_finite_and_positive_are_refused(policy_dir, song, tmp_path, capsys, options, problem):
    out = tmp_path / "o"
    assert exit_code(["dance", "--model", str(policy_dir), "--music", str(song), "--out", str(out), *options]) == 2
    assert problem in one_line_error(capsys) and not out.exists()


def test_the_library_checks_the_same_numbers(policy_dir, song):
    for settings, problem in [({"seconds": float("nan")}, "seconds must be a finite"), ({"temperature": float("nan")}, "temperature must be a finite")]:
        with pytest.raises(E3D2Error, match=problem):
            generate_dances(policy_dir, song, **settings)
    with pytest.raises(E3D2Error, match="temperature must be a finite"):
        music_to_joints(tiny_dancing_policy(), np.zeros((4, 438), np.float32), first_codes=(0, 0), do_sample=True, temperature=float("inf"))


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("weights", ["model.safetensors", "vqvae/model.safetensors"])
def test_a_truncated_weights_file_is_named(policy_dir, song, tmp_path, capsys, weights):
    broken = tmp_path / "policy"
    shutil.copytree(policy_dir, broken)
    cut_in_half(broken / weights)
    assert main(["dance", "--model", str(broken), "--music", str(song), "--out", str(tmp_path / "o")]) == 2
    assert f"{broken / weights}: unreadable weights file (SafetensorError" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_weights_trained_into_nan_are_refused_by_name(song, tmp_path, capsys):
    policy = tiny_dancing_policy()
    with torch.no_grad():
        policy.upper_head.weight[0, 0] = float("nan")
    policy.save_pretrained(tmp_path / "nan")
    assert main(["dance", "--model", str(tmp_path / "nan"), "--music", str(song), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'nan' / 'model.safetensors'}: 1 tensor(s) hold NaN or infinite values (upper_head.weight)" in one_line_error(capsys)


def test_a_reward_model_or_a_broken_config_is_not_a_policy(song, tmp_path, capsys):
    from e3d2_hf.models.configuration_reward import RewardModelConfig
    from e3d2_hf.models.modeling_reward import E3D2RewardModel

    reward = tmp_path / "reward"
    E3D2RewardModel(RewardModelConfig(codebook_size=32, hidden_size=16, num_attention_heads=2)).save_pretrained(reward)
    assert main(["dance", "--model", str(reward), "--music", str(song)]) == 2
    err = one_line_error(capsys)
    assert err == f"e3d2 dance: error: {reward}: this is a reward model, not an E3D2 policy\n"  # once ~3,000 characters of class names
    (reward / "config.json").write_text("{oops")
    assert main(["dance", "--model", str(reward), "--music", str(song)]) == 2
    assert f"{reward / 'config.json'}: unreadable model config (JSONDecodeError" in one_line_error(capsys)


@pytest.mark.parametrize("content,problem", [(b"hello\n", "not a .npy or .npz file of joints"), (b"PK\x03\x04 cut short", "cannot read a start pose (BadZipFile")])
def test_a_start_pose_that_is_not_an_array_is_refused_without_unsafe_advice(policy_dir, song, tmp_path, capsys, content, problem):
    pose = tmp_path / "x.npy"
    pose.write_bytes(content)
    out = tmp_path / "dances"
    assert main(["dance", "--model", str(policy_dir), "--music", str(song), "--out", str(out), "--start-pose", str(pose)]) == 2
    err = one_line_error(capsys)
    assert f"{pose}: {problem}" in err and "pickle" not in err and "unsafe" not in err
    assert not out.exists()  # a failed dance leaves no empty --out folder behind


def test_a_folder_as_music_is_called_a_folder(policy_dir, tmp_path, capsys):
    assert main(["dance", "--model", str(policy_dir), "--music", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path}: is a folder, not a file" in one_line_error(capsys)


def test_a_full_disk_names_the_output_folder_and_keeps_the_earlier_dance(policy_dir, song, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / "song.npz").write_bytes(b"an earlier run")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    assert main(["dance", "--model", str(policy_dir), "--music", str(song), "--out", str(out), "--seconds", "1"]) == 2
    err = one_line_error(capsys)
    assert f"{out}/song.npz: cannot write (No space left on device)" in err and ".e3d2-dance-" not in err
    assert files_in(out) == ["song.npz"] and (out / "song.npz").read_bytes() == b"an earlier run"


@pytest.mark.parametrize("cache", ["read-only", "full", "wrong shape"])
def test_the_music_cache_is_optional(policy_dir, song, tmp_path, monkeypatch, caplog, cache):
    """Features are computed all the same when the cache cannot be used: a read-only $HOME, a full disk, a bad entry."""
    folder = tmp_path / "cache"
    if cache == "read-only":
        folder.write_text("")  # no folder can be made here, as in a read-only home
    elif cache == "full":
        monkeypatch.setattr(np, "save", lambda *args, **kwargs: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    else:
        dance(policy_dir, song, seconds=1.0)
        for entry in (folder / "music_features").glob("*.npy"):
            np.save(entry, np.zeros((3, 5), np.float32))
    result = dance(policy_dir, song, seconds=1.0)
    assert result.joints.shape == (60, 24, 3) and np.isfinite(result.joints).all()
    if cache == "wrong shape":  # computed again and stored again
        assert [np.load(entry).shape[1] for entry in (folder / "music_features").glob("*.npy")] == [438]
    else:
        assert "without" in caplog.text


def test_one_line_and_no_traceback_from_the_command(policy_dir, song, tmp_path):
    """The console script end to end: argparse's own errors are one line too."""
    command = [sys.executable, "-m", "e3d2_hf.cli", "dance", "--model", str(policy_dir), "--music", str(song), "--seconds", "nan"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "argument --seconds: must be a finite number, got 'nan'" in result.stderr
