"""Audio -> Bailando's 438-d music features and beats (librosa).

Per frame, in this column order (Bailando's released preprocessing; see
docs/bailando-reference.md): MFCC 20 (from a 128-band mel spectrogram in dB, ref = max) |
MFCC delta 20 (width 3) | constant-Q chroma 12 (harmonic part after HPSS) | onset strength 1
(percussive part, median aggregation) | beat one-hot 1 (librosa's beat tracker on that onset
envelope) | tempogram 384 (from that onset envelope). No normalisation.

Two frame rates, both with hop 512: audio resampled to 30720 Hz gives 60 fps (the motion's rate:
beats and evaluation), 3840 Hz gives 7.5 fps (one frame per pose-code step: the policy's input).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from e3d2_hf.utils import E3D2Error, cache_dir, existing_file, file_sha256, read_cached_array, write_cached_array

MUSIC_FEATURE_DIM = 438
BEAT_COLUMN = 53
ONSET_COLUMN = 52
HOP_LENGTH = 512
# Bump whenever the features' values change: it keys the on-disk cache.
FEATURE_VERSION = "1"
# Chroma octaves per sample rate: 7 fit below Nyquist at 30720 Hz, only 5 at 3840 Hz (Bailando's choice).
_CHROMA_OCTAVES = {30720: 7, 3840: 5}


def sample_rate_for(fps: float) -> int:
    """The sample rate at which hop 512 gives `fps` feature frames per second."""
    sr = int(round(fps * HOP_LENGTH))
    if sr not in _CHROMA_OCTAVES:
        raise E3D2Error(f"music features exist at 60 fps and 7.5 fps, not {fps} fps")
    return sr


def check_audio_path(path: Path) -> None:
    """`E3D2Error` unless `path` is a non-empty file (a folder, a missing or an empty file named as such)."""
    existing_file(path, "audio file")
    if path.stat().st_size == 0:
        raise E3D2Error(f"{path}: empty audio file")


def load_audio(path: str | os.PathLike, sr: int) -> np.ndarray:
    """Decode any format librosa reads (wav, mp3, ogg, flac, ...) to mono float32 at `sr`."""
    import librosa

    path = Path(path)
    check_audio_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # audioread fallback notices
            audio, _ = librosa.load(str(path), sr=sr, mono=True)
    except Exception as exc:
        raise E3D2Error(f"{path}: cannot decode audio ({type(exc).__name__}: {exc})") from exc
    if audio.size < HOP_LENGTH * 4:
        raise E3D2Error(f"{path}: audio too short ({audio.size / sr:.3f} s)")
    if not np.all(np.isfinite(audio)):
        raise E3D2Error(f"{path}: audio contains NaN or infinite samples")
    return audio.astype(np.float32)


def extract_music_features(audio_or_path: np.ndarray | str | os.PathLike, fps: float = 60.0) -> np.ndarray:
    """The (T, 438) float32 features of an audio file, or of mono audio already at `fps * 512` Hz."""
    sr = sample_rate_for(fps)
    audio = audio_or_path if isinstance(audio_or_path, np.ndarray) else load_audio(audio_or_path, sr)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or audio.size < HOP_LENGTH * 4 or not np.all(np.isfinite(audio)):
        raise E3D2Error(f"audio array of shape {audio.shape}: expected finite mono samples, at least {HOP_LENGTH * 4}")
    with warnings.catch_warnings():
        # Silent or click-only audio has no pitched content: chroma's tuning estimate warns and
        # falls back to 0, which is the right answer here.
        warnings.filterwarnings("ignore", message="Trying to estimate tuning from empty frequency set")
        return _features(audio, sr)


def _features(audio: np.ndarray, sr: int) -> np.ndarray:
    """Bailando's librosa calls (keyword arguments: librosa >= 0.10 rejects the positional ones)."""
    import librosa

    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(y=audio, sr=sr, hop_length=HOP_LENGTH, n_mels=128), ref=np.max)
    mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=20)
    mfcc_delta = librosa.feature.delta(mfcc, width=3)
    harmonic, percussive = librosa.effects.hpss(audio)
    chroma = librosa.feature.chroma_cqt(y=harmonic, sr=sr, hop_length=HOP_LENGTH, n_chroma=12, n_octaves=_CHROMA_OCTAVES[sr])
    onset_envelope = librosa.onset.onset_strength(y=percussive, sr=sr, hop_length=HOP_LENGTH, aggregate=np.median)
    _, beat_frames = librosa.beat.beat_track(onset_envelope=onset_envelope, sr=sr, hop_length=HOP_LENGTH)
    beat_onehot = np.zeros_like(onset_envelope)
    beat_frames = np.asarray(beat_frames, dtype=int)
    beat_onehot[beat_frames[beat_frames < beat_onehot.size]] = 1.0
    tempogram = librosa.feature.tempogram(onset_envelope=onset_envelope, sr=sr, hop_length=HOP_LENGTH)
    streams = [mfcc, mfcc_delta, chroma, onset_envelope[None], beat_onehot[None], tempogram]
    frames = min(stream.shape[1] for stream in streams)
    features = np.concatenate([stream[:, :frames] for stream in streams], axis=0).T.astype(np.float32)
    # Silent audio gives 0/0 in chroma: its features are legitimately all zero, with no beats.
    return np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0)


def music_features(path: str | os.PathLike, fps: float = 60.0, cache: bool = True) -> np.ndarray:
    """`extract_music_features` of a file, cached on disk by the file's content, fps, feature and librosa versions.

    The cache is optional: a cache folder that cannot be written (read-only, full disk) only warns,
    and an entry that is unreadable or of the wrong shape is computed again.
    """
    sample_rate_for(fps)
    path = Path(path)
    check_audio_path(path)
    if not cache:
        return extract_music_features(path, fps)
    entry = _cache_entry(path, fps)
    features = read_cached_array(entry, _plausible_features)
    if features is None:
        features = extract_music_features(path, fps)
        write_cached_array(entry, features)
    return features


def cached_music_features(path: str | os.PathLike, fps: float = 60.0) -> np.ndarray | None:
    """The cached `music_features` of a file, or None when they would have to be computed."""
    sample_rate_for(fps)
    path = Path(path)
    check_audio_path(path)
    return read_cached_array(_cache_entry(path, fps), _plausible_features)


def _cache_entry(path: Path, fps: float) -> Path | None:
    import librosa

    folder = cache_dir("music_features")
    return folder / f"{file_sha256(path)}-{fps:g}fps-v{FEATURE_VERSION}-librosa{librosa.__version__}.npy" if folder else None


def _plausible_features(array: np.ndarray) -> bool:
    return array.dtype == np.float32 and array.ndim == 2 and array.shape[0] > 0 and array.shape[1] == MUSIC_FEATURE_DIM and bool(np.isfinite(array).all())


def music_beats(path: str | os.PathLike, fps: float = 60.0) -> np.ndarray:
    """The (T,) float32 beat one-hot track (column 53) of a file's features."""
    return music_features(path, fps)[:, BEAT_COLUMN].copy()
