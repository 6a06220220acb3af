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
def test_real_clip_shapes_column_order_and_alignment():
    import librosa

    path = SHARED_MUSIC / "sorohanro_-_solo-trumpet-06.ogg"
    duration = soundfile.info(path).duration
    high = music.music_features(path, fps=60)
    low = music.music_features(path, fps=7.5)
    assert high.shape[1] == low.shape[1] == music.MUSIC_FEATURE_DIM == 438
    assert high.dtype == low.dtype == np.float32 and np.isfinite(high).all() and np.isfinite(low).all()
    assert abs(high.shape[0] - int(np.ceil(duration * 60))) <= 1  # one frame per 1/60 s of music
    assert abs(low.shape[0] - int(np.ceil(high.shape[0] / 8))) <= 1  # one frame per pose-code step
    # Column order: MFCC 0-19 | delta 20-39 | chroma 40-51 | onset 52 | beat 53 | tempogram 54-437.
    audio = music.load_audio(path, 30720)
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(y=audio, sr=30720, hop_length=512, n_mels=128), ref=np.max)
    mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=20).T[: high.shape[0]]
    np.testing.assert_allclose(high[:, :20], mfcc, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(high[:, 20:40], librosa.feature.delta(mfcc.T, width=3).T, rtol=1e-4, atol=1e-3)
    chroma = high[:, 40:52]
    assert chroma.min() >= 0 and np.allclose(chroma.max(axis=1), 1.0, atol=1e-5)  # max-normalised per frame
    assert (high[:, music.ONSET_COLUMN] >= 0).all() and high[:, music.ONSET_COLUMN].max() > 0
    beats = high[:, music.BEAT_COLUMN]
    assert set(np.unique(beats)) <= {0.0, 1.0} and beats.sum() >= 3
    np.testing.assert_array_equal(music.music_beats(path, fps=60), beats)
    tempogram = high[:, 54:]
    assert tempogram.shape[1] == 384 and np.allclose(tempogram[:, 0], 1.0, atol=1e-3)  # lag-0 autocorrelation


@pytest.mark.parametrize("bpm", [120, 137])
def test_click_track_beats_follow_the_tempo(tmp_path, bpm):
    path = click_track(tmp_path / "click.wav", bpm=bpm, seconds=12)
    beats = np.flatnonzero(music.music_beats(path, fps=60)) / 60.0
    clicks = np.arange(0.25, 12 - 0.05, 60.0 / bpm)
    assert len(beats) >= len(clicks) - 2
    detected_bpm = 60.0 / np.median(np.diff(beats))
    assert abs(detected_bpm - bpm) / bpm < 0.03
    distance_to_click = np.abs(beats[:, None] - clicks[None]).min(axis=1)
    assert np.median(distance_to_click) < 0.03  # on the clicks, not between them


def test_silence_has_features_but_no_beats(tmp_path):
    path = tmp_path / "silence.wav"
    soundfile.write(path, np.zeros(3 * 22050, np.float32), 22050)
    features = music.music_features(path, fps=60)
    assert features.shape == (181, 438) and np.isfinite(features).all()
    assert features[:, music.BEAT_COLUMN].sum() == 0


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


def test_zero_length_audio_names_the_file(tmp_path):
    path = tmp_path / "nothing.wav"
    soundfile.write(path, np.zeros(0, np.float32), 22050)  # a valid header and no samples
    with pytest.raises(E3D2Error, match="nothing.wav.*too short"):
        music.music_features(path)
    with pytest.raises(E3D2Error, match="shape"):
        music.extract_music_features(np.zeros((2, 30720), np.float32))


def test_unsupported_rate_and_missing_file(tmp_path):
    with pytest.raises(E3D2Error, match="30 fps"):
        music.music_features(tmp_path / "x.wav", fps=30)
    with pytest.raises(E3D2Error, match="no such audio file"):
        music.music_features(tmp_path / "missing.wav")


def test_cache_key_names_the_librosa_version_and_a_folder_is_not_audio(tmp_path):
    import librosa

    music.music_features(click_track(tmp_path / "a.wav", bpm=100, seconds=2), fps=7.5)
    (entry,) = (tmp_path / "cache" / "music_features").glob("*.npy")
    assert entry.name.endswith(f"-7.5fps-v{music.FEATURE_VERSION}-librosa{librosa.__version__}.npy")  # new librosa, new features
    with pytest.raises(E3D2Error, match="is a folder, not a file"):
        music.music_features(tmp_path)
