"""Music features: Bailando's 438 columns, frame alignment, beats on a click track, caching, bad files."""

from pathlib import Path

import numpy as np
import pytest
import soundfile

from e3d2_hf.data import music
from e3d2_hf.utils import E3D2Error

SHARED_MUSIC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "music"


def click_track(path: Path, bpm: float, seconds: float, sr: int = 22050) -> Path:
    audio = np.zeros(int(seconds * sr), np.float32)
    click = np.sin(2 * np.pi * 1000 * np.arange(int(0.03 * sr)) / sr) * np.exp(-np.arange(int(0.03 * sr)) / (0.005 * sr))
    for start in np.arange(0.25, seconds - 0.05, 60.0 / bpm):
        index = int(start * sr)
        audio[index : index + click.size] += click[: audio.size - index]
    soundfile.write(path, audio, sr)
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E3D2_CACHE", str(tmp_path / "cache"))


@pytest.mark.skipif(not SHARED_MUSIC.is_dir(), reason="../shared/data/music is absent")
def test_real_clip_shapes_and_alignment():
    path = SHARED_MUSIC / "sorohanro_-_solo-trumpet-06.ogg"
    duration = soundfile.info(path).duration
    high = music.music_features(path, fps=60)
    low = music.music_features(path, fps=7.5)
    assert high.shape[1] == low.shape[1] == music.MUSIC_FEATURE_DIM == 438
    assert high.dtype == np.float32 and np.isfinite(high).all()
    assert abs(high.shape[0] - duration * 60) <= 2
    assert abs(low.shape[0] - int(np.ceil(high.shape[0] / 8))) <= 1
    beats = high[:, music.BEAT_COLUMN]
    assert set(np.unique(beats)) <= {0.0, 1.0} and beats.sum() >= 3
    assert (high[:, music.ONSET_COLUMN] >= 0).all()  # onset strength column
    tempogram = high[:, 54:]
    assert tempogram.shape[1] == 384 and np.allclose(tempogram[:, 0], 1.0, atol=1e-3)  # lag-0 autocorrelation
    np.testing.assert_allclose(high[:, 20:40].mean(), 0.0, atol=1.0)  # deltas are centred


def test_click_track_beats_follow_the_tempo(tmp_path):
    path = click_track(tmp_path / "click.wav", bpm=120, seconds=12)
    beats = np.flatnonzero(music.music_beats(path, fps=60))
    intervals = np.diff(beats) / 60.0
    assert len(beats) >= 18
    assert abs(np.median(intervals) - 0.5) < 0.03


def test_cache_is_keyed_by_content(tmp_path):
    first = click_track(tmp_path / "a.wav", bpm=100, seconds=4)
    again = music.music_features(first, fps=7.5)
    np.testing.assert_array_equal(again, music.music_features(first, fps=7.5))
    assert len(list((tmp_path / "cache" / "music_features").glob("*.npy"))) == 1
    click_track(first, bpm=140, seconds=4)  # same name, new content
    assert not np.array_equal(again, music.music_features(first, fps=7.5))


@pytest.mark.parametrize("content", [b"", b"this is not audio at all" * 100])
def test_bad_audio_names_the_file(tmp_path, content):
    path = tmp_path / "broken.mp3"
    path.write_bytes(content)
    with pytest.raises(E3D2Error, match="broken.mp3"):
        music.music_features(path)


def test_unsupported_rate_and_missing_file(tmp_path):
    with pytest.raises(E3D2Error, match="30 fps"):
        music.music_features(tmp_path / "x.wav", fps=30)
    with pytest.raises(E3D2Error, match="no such audio file"):
        music.music_features(tmp_path / "missing.wav")
