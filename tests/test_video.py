"""Skeleton videos: mp4 with the music in sync, GIF, side-by-side panels, frames, and failures that leave no file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
from conftest import dance_like_joints
from PIL import Image

from e3d2_hf.render import video
from e3d2_hf.motion.skeleton import forward_kinematics
from e3d2_hf.utils import E3D2Error

MUSIC_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "music"
REAL_CLIP = MUSIC_DIR / "sorohanro_-_solo-trumpet-06.ogg"


def standing(frames: int = 1) -> np.ndarray:
    """The rest pose with the feet on the floor (y = 0)."""
    joints = forward_kinematics(np.zeros((frames, 72)), np.zeros((frames, 3)))
    joints[..., 1] -= joints[..., 1].min() - 0.025
    return joints


def sine(path: Path, seconds: float, sample_rate: int = 22050) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 440.0 * t), sample_rate)
    return path


def stream_info(path: Path) -> str:
    """ffmpeg's description of the file's streams (`ffmpeg -i` prints it to stderr)."""
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], check=False, capture_output=True, text=True)
    return result.stderr


def audio_seconds(path: Path) -> float:
    """Length of the decoded audio stream (ffmpeg's last progress `time=`)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path), "-map", "0:a:0", "-f", "null", "-"]
    log = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    hours, minutes, seconds = re.findall(r"time=(\d+):(\d+):([\d.]+)", log)[-1]
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@pytest.mark.parametrize("music_seconds", [1.0, 3.0])  # padded with silence / cut to the video
def test_mp4_has_h264_video_and_aac_audio_of_the_video_length(tmp_path: Path, music_seconds: float) -> None:
    out = video.render_video(tmp_path / "dance.mp4", dance_like_joints(120, seed=0), music_path=sine(tmp_path / "sine.wav", music_seconds))
    assert out == tmp_path / "dance.mp4"
    info = stream_info(out)
    assert re.search(r"Video: h264.*yuv420p.*640x480", info) and "Audio: aac" in info
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(out)
    assert frames == 2 * video.DEFAULT_RENDER_FPS[".mp4"] and seconds == pytest.approx(2.0, abs=0.05)
    assert audio_seconds(out) == pytest.approx(2.0, abs=0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dance.mp4", "sine.wav"]  # no temporary left


@pytest.mark.skipif(not REAL_CLIP.is_file(), reason="shared music clips not present")
def test_mp4_with_a_real_ogg_clip(tmp_path: Path) -> None:
    out = video.render_video(tmp_path / "trumpet.mp4", dance_like_joints(90, seed=1), music_path=REAL_CLIP, size=(320, 240), titles="E3D2")
    assert "Audio: aac" in stream_info(out)
    assert imageio_ffmpeg.count_frames_and_secs(out)[0] == 45
    assert audio_seconds(out) == pytest.approx(1.5, abs=0.1)


def test_side_by_side_dances_of_different_lengths(tmp_path: Path) -> None:
    out = video.render_video(
        tmp_path / "both.mp4", [dance_like_joints(120, seed=2), dance_like_joints(60, seed=3)], titles=["BC", "E3D2"], size=(320, 240)
    )
    info = stream_info(out)
    assert "640x240" in info and "Audio:" not in info
    assert imageio_ffmpeg.count_frames_and_secs(out)[0] == 60  # the longest dance; the other holds its last pose


def test_gif_at_its_default_rate(tmp_path: Path) -> None:
    out = video.render_video(tmp_path / "dance.gif", dance_like_joints(120, seed=4), size=(320, 240), music_path=tmp_path / "ignored.ogg")
    with Image.open(out) as gif:
        assert gif.format == "GIF" and gif.size == (320, 240)
        assert gif.n_frames == 2 * video.DEFAULT_RENDER_FPS[".gif"]
        assert gif.info["duration"] == 50 and gif.info["loop"] == 0


def test_frame_shows_the_skeleton_with_left_and_right_colours() -> None:
    frame = video.render_frame(standing()[0], titles="rest", time_s=1.5)
    assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
    red, _, blue = (frame[..., c].astype(int) for c in range(3))
    left_pixels = np.nonzero((blue > 150) & (red < 100))  # left bones are blue
    right_pixels = np.nonzero((red > 150) & (blue < 100))
    assert left_pixels[1].size > 300 and right_pixels[1].size > 300
    # SMPL's left is +x and the camera stands in front of the body: the left side shows on the right.
    assert left_pixels[1].mean() > right_pixels[1].mean()
    assert abs((left_pixels[1].mean() + right_pixels[1].mean()) / 2 - 320) < 60  # framed in the middle
    assert frame[0, 0].tolist() == [255, 255, 255]
    assert video.render_frame([standing()[0]] * 2, size=(320, 240)).shape == (240, 640, 3)


def test_save_still_holds_the_last_pose_of_a_shorter_dance(tmp_path: Path) -> None:
    out = video.save_still(tmp_path / "still.png", [dance_like_joints(30, seed=5), standing(10)], 20, titles=["BC", "E3D2"])
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1280, 480)
    with pytest.raises(E3D2Error, match="frame_index"):
        video.save_still(tmp_path / "late.png", standing(10), 10)


BAD_INPUTS = {
    "joint count": {"dances": np.zeros((10, 23, 3))},
    "nan": {"dances": np.full((10, 24, 3), np.nan)},
    "no dance": {"dances": []},
    "suffix": {"name": "dance.avi"},
    "titles": {"titles": ["BC", "E3D2"]},
    "odd size": {"size": (321, 240)},
    "render fps": {"render_fps": 0},
    "missing music": {"music": "missing.ogg"},
    "corrupt music": {"music": "corrupt.ogg"},
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_and_leave_no_file(tmp_path: Path, case: str) -> None:
    bad = BAD_INPUTS[case]
    (tmp_path / "corrupt.ogg").write_bytes(b"OggS but not really an ogg file" * 10)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    music = tmp_path / bad["music"] if "music" in bad else None
    with pytest.raises(E3D2Error) as error:
        video.render_video(
            out_dir / bad.get("name", "dance.mp4"),
            bad.get("dances", standing(10)),
            music_path=music,
            titles=bad.get("titles"),
            size=bad.get("size", (320, 240)),
            render_fps=bad.get("render_fps"),
        )
    assert (music.name if music else bad.get("name", "dance.mp4")) in str(error.value)
    assert list(out_dir.iterdir()) == []


def test_unwritable_output_folder(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    with pytest.raises(E3D2Error, match="cannot write"):
        video.render_video(tmp_path / "a_file" / "dance.mp4", standing(10))


def test_interrupted_render_keeps_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "dance.mp4"
    out.write_bytes(b"previous video")
    draw, calls = video._FrameRenderer.frame, []

    def failing_frame(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return draw(self, *args, **kwargs)

    monkeypatch.setattr(video._FrameRenderer, "frame", failing_frame)
    with pytest.raises(KeyboardInterrupt):
        video.render_video(out, standing(60), size=(320, 240))
    assert out.read_bytes() == b"previous video" and [p.name for p in tmp_path.iterdir()] == ["dance.mp4"]
