"""Music for the synthetic dataset: drums, bass and chords composed and synthesised from a genre.

The kick and snare fall on exactly known beats (evenly spaced, no drift), so that librosa's beat
tracker finds them and the dances can be put on the same beats.
"""

from __future__ import annotations

import math

import numpy as np

from e3d2_hf.data.synthetic.genres import BEATS_PER_BAR, STEPS_PER_BAR, Genre

SAMPLE_RATE = 22050
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)


def _time(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE


def _high_passed_noise(samples: int, rng: np.random.Generator) -> np.ndarray:
    """White noise with its low end removed (first difference): the hiss of cymbals and snares."""
    return np.diff(rng.standard_normal(samples + 1)) * 0.5


def _drum_sounds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One kit per piece: kick, snare, clap, rim, hats, ride and crash (pitch varied a little per kit)."""
    t = _time(0.4)
    kick_low = rng.uniform(45, 60)
    kick_frequency = kick_low + rng.uniform(90, 130) * np.exp(-t * 35)
    kick = np.sin(2 * np.pi * np.cumsum(kick_frequency) / SAMPLE_RATE) * np.exp(-t * rng.uniform(8, 14))
    kick[:160] += _high_passed_noise(160, rng) * np.exp(-np.arange(160) / 30) * 0.9  # beater click, broadband
    snare = (0.5 * np.sin(2 * np.pi * rng.uniform(170, 220) * t) * np.exp(-t * 25)
             + 0.8 * _high_passed_noise(t.size, rng) * np.exp(-t * 18))  # fmt: skip
    burst = np.zeros(t.size)
    for delay in (0.0, 0.011, 0.022):
        start = int(delay * SAMPLE_RATE)
        burst[start:] += np.exp(-np.arange(t.size - start) / SAMPLE_RATE * (140 if delay < 0.02 else 22))
    clap = _high_passed_noise(t.size, rng) * burst * 0.8
    rim = np.sin(2 * np.pi * 820 * t) * np.exp(-t * 90) * 0.8 + _high_passed_noise(t.size, rng) * np.exp(-t * 120) * 0.4
    hat = _high_passed_noise(t.size, np.random.default_rng(rng.integers(1 << 31)))
    hat = np.diff(hat, prepend=0.0)
    metallic = sum(np.sin(2 * np.pi * f * t) for f in (3210.0, 4280.0, 5370.0, 6820.0))
    long_t = _time(1.5)
    return {
        "kick": kick,
        "snare": snare,
        "clap": clap,
        "rim": rim,
        "hat": hat * np.exp(-t * 70) * 0.35,
        "open_hat": hat * np.exp(-t * 9) * 0.25,
        "ride": (0.12 * metallic + 0.3 * hat) * np.exp(-t * 7) * 0.5,
        "crash": _high_passed_noise(long_t.size, rng) * np.exp(-long_t * 3) * 0.35,
    }


def _note(frequency: float, seconds: float, harmonics: tuple[float, ...], decay: float, attack: float = 0.005) -> np.ndarray:
    """Additive synthesis (no aliasing): harmonics with their own decay, a short attack and release."""
    t = _time(seconds)
    signal = np.zeros(t.size)
    for order, weight in enumerate(harmonics, start=1):
        if weight and frequency * order < SAMPLE_RATE / 2.2:
            signal += weight * np.sin(2 * np.pi * frequency * order * t) * np.exp(-t * decay * (1 + 0.4 * (order - 1)))
    envelope = np.minimum(1.0, t / attack) * np.minimum(1.0, (seconds - t) / 0.01)
    return signal * envelope


def _add(track: np.ndarray, sound: np.ndarray, at_seconds: float, gain: float) -> None:
    start = int(round(at_seconds * SAMPLE_RATE))
    end = min(track.size, start + sound.size)
    if 0 <= start < track.size:
        track[start:end] += gain * sound[: end - start]


def _step_times(genre: Genre, beat_seconds: float) -> np.ndarray:
    """Onset of each sixteenth of a bar, in seconds from the bar's start, with the genre's swing."""
    step = np.arange(STEPS_PER_BAR)
    within_beat = (step % 4) / 4.0
    within_beat = np.where(step % 4 == 2, 0.5 + genre.swing / 6.0, within_beat)  # swung off-eighth
    within_beat = np.where(step % 4 == 3, 0.75 + genre.swing / 12.0, within_beat)
    return (step // 4 + within_beat) * beat_seconds


def _held_steps(pattern: str, index: int) -> int:
    """How many sixteenths a note starting at `index` lasts (itself plus the '-' after it)."""
    length = 1
    while index + length < len(pattern) and pattern[index + length] == "-":
        length += 1
    return length


def compose_music(genre: Genre, bpm: float, seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A piece of `seconds` at `bpm`: (mono float32 audio at SAMPLE_RATE, beat times in seconds).

    The first beat is at 0 s; beats are evenly spaced (no tempo drift), so the beat times are exact.
    """
    beat = 60.0 / bpm
    bar_seconds = BEATS_PER_BAR * beat
    bars = int(math.ceil(seconds / bar_seconds)) + 1
    drums = np.zeros(int((bars * bar_seconds + 2.0) * SAMPLE_RATE))
    bass = np.zeros_like(drums)
    harmony = np.zeros_like(drums)
    kit = _drum_sounds(rng)
    step_times = _step_times(genre, beat)
    scale = MINOR_SCALE if genre.minor else MAJOR_SCALE
    key = int(rng.integers(0, 12))  # bass roots from E1 (41 Hz) up an octave
    progression = genre.progressions[int(rng.integers(len(genre.progressions)))]
    bass_gain = rng.uniform(0.8, 1.1)
    chord_gain = rng.uniform(0.8, 1.2)

    def scale_semitone(degree: int) -> int:
        return scale[degree % 7] + 12 * (degree // 7)

    for bar in range(bars):
        start = bar * bar_seconds
        degree = progression[bar % len(progression)]
        root = 41.2 * 2 ** ((key + scale_semitone(degree)) / 12.0)
        chord_tones = [scale_semitone(degree + 2 * i) - scale_semitone(degree) for i in range(4 if genre.sevenths else 3)]
        tone_offset = {"R": 0, "3": chord_tones[1], "5": chord_tones[2], "7": chord_tones[-1], "O": 12}
        fill = genre.fills and bar % 4 == 3
        if genre.fills and bar % 4 == 0 and bar > 0:
            _add(drums, kit["crash"], start, 0.8)
        for step in range(STEPS_PER_BAR):
            at = start + step_times[step]
            accent = 1.0 if step % 4 == 0 else 0.8
            human = 1.0 + 0.05 * rng.standard_normal()
            if genre.kick[step] != ".":
                _add(drums, kit["kick"], at, (1.0 if genre.kick[step] == "x" else 0.6) * human)
            snare_hit = genre.snare[step] if not (fill and step >= 12) else ("x" if step % 2 == 0 else "o")
            if snare_hit != ".":
                _add(drums, kit[genre.snare_sound], at, (0.9 if snare_hit == "x" else 0.5) * human)
            if genre.hat[step] != ".":
                _add(drums, kit[genre.hat_sound], at, (1.0 if genre.hat[step] == "x" else 0.55) * accent * human)
            if genre.open_hat[step] != ".":
                _add(drums, kit["open_hat"], at, (0.8 if genre.open_hat[step] == "x" else 0.3) * human)
            if genre.bass[step] not in ".-":
                length = _held_steps(genre.bass, step) * beat / 4 * 0.95
                frequency = root * 2 ** (tone_offset[genre.bass[step]] / 12.0)
                _add(bass, _note(frequency, length, genre.bass_harmonics, 3.0, attack=0.015), at, 0.55 * bass_gain)
            if genre.chords[step] not in ".-":
                length = _held_steps(genre.chords, step) * beat / 4 * 0.95
                for tone in chord_tones:
                    frequency = root * 4 * 2 ** (tone / 12.0)
                    attack = 0.04 if genre.chord_decay < 2 else 0.005
                    _add(harmony, _note(frequency, length, genre.chord_harmonics, genre.chord_decay, attack), at, 0.1 * chord_gain)
    track = drums + bass + harmony
    track = track[: int(seconds * SAMPLE_RATE)]
    track = np.tanh(1.2 * track / (np.abs(track).max() + 1e-9)) * 0.9 / np.tanh(1.2)
    beats = np.arange(0.0, seconds, beat)
    return track.astype(np.float32), beats
