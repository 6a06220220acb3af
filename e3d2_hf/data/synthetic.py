"""The embedded default dataset: procedurally composed music and dances that follow it, in the AIST++ layout.

Without AIST++ (not downloadable everywhere, and its music has its own terms), the pipeline still
needs paired music and motion in which the music *matters*: this generator writes a small dataset
whose dances are beat-synchronous and genre-dependent, in exactly the layout of the AIST++ download
(`motions/<sequence>.pkl`, `splits/crossmodal_{train,val,test}.txt`, `ignore_list.txt`,
`wavs/<music_id>.wav`), so the real reader path runs on it.

Music: each piece has a genre (tempo range, drum pattern and kit, swing, bass line, chord style and
timbre, key and progression) and a tempo; drums, bass and chords are synthesised at 22050 Hz with
the kick and snare on the beats, so that librosa's beat tracker finds them.

Dance: choreography as it is taught, one key pose per beat. Every bar (4 beats) the dancer draws a
lower-body move and an upper-body move from the genre's Markov chains (steps, touches, marches,
bounces, squats, jumps, kicks, lunges, sways, twists, turns, travels; arm waves, pumps, punches,
claps, points, reaches, locks, chest pops, shrugs, arm rolls, swings), each possibly mirrored. Poses
are interpolated between the beats with an ease whose velocity is zero on the beat (hits, i.e.
kinematic beats, fall on the music's beats); the genre sets how sharp the hits are, the groove
(bounce down or up on the beat, head nods, chest pops) and the amplitude, and each dancer has their
own amplitude, stance, knee softness and arm carriage. Legs are solved by two-link inverse kinematics
towards planted foot targets, so feet do not slide and knees bend forward only; elbows bend one way.
Finally the root height is set so the lowest foot joint rests `FLOOR_CLEARANCE` above the floor
(y = 0), except in the flight phase of jumps.

SMPL axes: y up, the body faces +z, its left is +x. Names follow AIST++
(`gBR_sBM_cAll_d04_mBR0_ch01`: genre BR, dancer 04, music mBR0). As in AIST++'s cross-modal split,
validation and test music is never danced to in training.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from e3d2_hf.motion.skeleton import axis_angle_to_matrix, forward_kinematics, rest_joints

FPS = 60
SAMPLE_RATE = 22050
SMPL_SCALING = 93.0  # AIST++ stores translations in this scaled unit (its smpl_scaling is ~90-100)
# Height of the lowest foot joint above the floor with the foot flat: the SMPL foot joint (ball of
# the foot) sits about 2.5 cm above the sole of the mesh.
FLOOR_CLEARANCE = 0.025
FOOT_JOINTS = (7, 8, 10, 11)  # ankles and feet
BEATS_PER_BAR = 4
STEPS_PER_BAR = 16  # sixteenth notes


# ----------------------------------------------------------------------------------------------
# Genres: how the music sounds and how it is danced
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Genre:
    """Music and dance style of one genre. Drum, bass and chord patterns are 16 steps per bar."""

    code: str
    tempo: tuple[float, float]  # bpm range
    swing: float  # 0 straight, 1 triplet feel on the off-eighths
    kick: str  # 'x' accent, 'o' soft, '.' rest
    snare: str
    hat: str
    open_hat: str
    snare_sound: str  # "snare", "clap" or "rim"
    hat_sound: str  # "hat" or "ride"
    bass: str  # chord tones R 3 5 7 O(ctave), '-' holds, '.' rest
    bass_harmonics: tuple[float, ...]
    chords: str  # 'x' chord hit, '-' holds, '.' rest
    chord_harmonics: tuple[float, ...]
    chord_decay: float  # 1/s
    minor: bool
    progressions: tuple[tuple[int, ...], ...]  # scale degrees, one chord per bar
    sevenths: bool
    fills: bool  # snare fill at the end of every 4 bars
    # dance
    lower_moves: dict[str, float]  # move -> preference in the genre's Markov chain
    upper_moves: dict[str, float]
    amplitude: float  # overall size of the movements
    hit_width: float  # fraction of a beat the transition between key poses takes (small = sharp hits)
    bounce: float  # metres the pelvis drops with the groove
    bounce_on_beat: bool  # down on the beat (True) or up on the beat
    nod: float  # head nod with the groove, radians
    chest: float  # chest pop with the groove, radians
    crouch: float  # how low the genre is danced: metres the pelvis sits lower
    lean: float  # forward lean of the torso, radians
    stance: float  # multiplies the dancer's stance width


GENRES: tuple[Genre, ...] = (
    Genre(
        "BR", (96, 112), 0.15,
        kick="x.....o.x.....o.", snare="....x.......x...", hat="x.o.x.o.x.o.x.o.", open_hat="..............o.",
        snare_sound="snare", hat_sound="hat", bass="R.....R.-.5..R..", bass_harmonics=(1.0, 0.5, 0.3, 0.2),
        chords="x.........x.....", chord_harmonics=(1.0, 0.4, 0.2), chord_decay=4.0, minor=True,
        progressions=((0, 5, 6, 4), (0, 3, 4, 0), (0, 6, 5, 4)), sevenths=False, fills=True,
        lower_moves={"bounce": 2, "kick": 2, "jump": 1.5, "squat": 1.5, "lunge": 1, "step_touch": 1, "turn": 0.7, "rock": 1},
        upper_moves={"pump": 2, "punch": 2, "swing": 1, "point": 1, "arm_wave": 1},
        amplitude=1.1, hit_width=0.7, bounce=0.025, bounce_on_beat=True, nod=0.18, chest=0.0, crouch=0.03, lean=0.2, stance=1.4,
    ),  # fmt: skip
    Genre(
        "PO", (100, 116), 0.0,
        kick="x.......x.o.....", snare="....x.......x...", hat="x.o.x.o.x.o.x.o.", open_hat="................",
        snare_sound="clap", hat_sound="hat", bass="R.R.R.R.5.5.O.O.", bass_harmonics=(1.0, 0.0, 0.33, 0.0, 0.2),
        chords="x-------x-------", chord_harmonics=(1.0, 0.5, 0.3, 0.2), chord_decay=1.0, minor=False,
        progressions=((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4)), sevenths=False, fills=True,
        lower_moves={"step_touch": 2, "rock": 2, "sway": 1, "heel_tap": 1.5, "bounce": 1, "twist": 1},
        upper_moves={"chest_pop": 3, "shrug": 2, "arm_wave": 2, "punch": 1, "point": 1},
        amplitude=0.9, hit_width=0.35, bounce=0.01, bounce_on_beat=False, nod=0.08, chest=0.12, crouch=0.0, lean=-0.03, stance=1.0,
    ),  # fmt: skip
    Genre(
        "LO", (108, 124), 0.1,
        kick="x..o....x..o....", snare="....x.......x...", hat="xoooxoooxoooxooo", open_hat="......o.......o.",
        snare_sound="snare", hat_sound="hat", bass="R..O..R.5..R.7..", bass_harmonics=(1.0, 0.6, 0.4, 0.3, 0.2),
        chords="....x.....x.x...", chord_harmonics=(1.0, 0.7, 0.5, 0.3), chord_decay=9.0, minor=False,
        progressions=((0, 3, 0, 4), (0, 0, 3, 3), (1, 4, 0, 0)), sevenths=True, fills=True,
        lower_moves={"kick": 2, "heel_tap": 2, "step_touch": 1, "squat": 1, "jump": 1, "march": 1},
        upper_moves={"lock": 3, "point": 3, "clap": 2, "pump": 1},
        amplitude=1.0, hit_width=0.45, bounce=0.015, bounce_on_beat=True, nod=0.1, chest=0.05, crouch=0.015, lean=0.1, stance=1.2,
    ),  # fmt: skip
    Genre(
        "JZ", (84, 96), 0.9,
        kick="x.......x.......", snare="....o.......o...", hat="x...x.x.x...x.x.", open_hat="................",
        snare_sound="rim", hat_sound="ride", bass="R---3---5---7---", bass_harmonics=(1.0, 0.3, 0.1),
        chords="...x-.....x-....", chord_harmonics=(1.0, 0.3, 0.15, 0.1), chord_decay=2.5, minor=False,
        progressions=((1, 4, 0, 5), (0, 5, 1, 4), (2, 5, 1, 4)), sevenths=True, fills=False,
        lower_moves={"sway": 3, "turn": 2, "lunge": 2, "travel": 2, "step_touch": 1, "rock": 1},
        upper_moves={"reach": 3, "arm_wave": 2, "arms_out": 2, "roll": 1},
        amplitude=0.95, hit_width=1.0, bounce=0.008, bounce_on_beat=False, nod=0.04, chest=0.0, crouch=0.0, lean=-0.06, stance=0.8,
    ),  # fmt: skip
    Genre(
        "HO", (120, 132), 0.0,
        kick="x...x...x...x...", snare="....x.......x...", hat="x...x...x...x...", open_hat="..o...o...o...o.",
        snare_sound="clap", hat_sound="hat", bass="..R...R...O...R.", bass_harmonics=(1.0, 0.2, 0.1),
        chords="x.....x.....x...", chord_harmonics=(1.0, 0.0, 0.5, 0.0, 0.3, 0.0, 0.2), chord_decay=6.0, minor=True,
        progressions=((0, 0, 5, 6), (0, 3, 0, 4), (0, 6, 5, 6)), sevenths=True, fills=False,
        lower_moves={"march": 2, "bounce": 2, "shuffle": 2, "step_touch": 2, "travel": 1, "twist": 1},
        upper_moves={"swing": 3, "clap": 2, "roll": 1, "pump": 1},
        amplitude=1.0, hit_width=0.8, bounce=0.03, bounce_on_beat=True, nod=0.12, chest=0.03, crouch=0.02, lean=0.12, stance=1.0,
    ),  # fmt: skip
)


# ----------------------------------------------------------------------------------------------
# Music
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Dance: key poses on the beats. A key pose is a vector of named channels in the dancer's frame
# (x left, z forward, metres; angles in radians). Feet and pelvis shift are horizontal (x, z).
# ----------------------------------------------------------------------------------------------
_CHANNEL_SIZES = (
    ("shift", 2), ("drop", 1), ("tilt", 1), ("roll", 1), ("twist", 1), ("facing", 1),
    ("foot_l", 2), ("foot_r", 2), ("lift_l", 1), ("lift_r", 1), ("yaw_l", 1), ("yaw_r", 1), ("pitch_l", 1), ("pitch_r", 1),
    ("spine", 3), ("head", 3), ("arm_l", 2), ("arm_r", 2), ("armtwist_l", 1), ("armtwist_r", 1),
    ("elbow_l", 1), ("elbow_r", 1), ("shrug_l", 1), ("shrug_r", 1),
)  # fmt: skip
CHANNELS: dict[str, slice] = {}
_offset = 0
for _name, _size in _CHANNEL_SIZES:
    CHANNELS[_name] = slice(_offset, _offset + _size)
    _offset += _size
NUM_CHANNELS = _offset
LOWER_CHANNELS = ("shift", "drop", "tilt", "roll", "twist", "facing", "foot_l", "foot_r", "lift_l", "lift_r",
                  "yaw_l", "yaw_r", "pitch_l", "pitch_r")  # fmt: skip
UPPER_CHANNELS = tuple(name for name, _ in _CHANNEL_SIZES if name not in LOWER_CHANNELS)
SEGMENT_CHANNELS = ("arc_l", "arc_r", "air")  # apply between a key pose and the next
_UPPER_INDEX = np.concatenate([np.arange(NUM_CHANNELS)[CHANNELS[name]] for name in UPPER_CHANNELS])
# Mirroring a move (left <-> right): swap the sided channels, negate lateral quantities.
_MIRROR_SWAP = np.arange(NUM_CHANNELS)
for _name, _ in _CHANNEL_SIZES:
    if _name.endswith("_l"):
        _MIRROR_SWAP[CHANNELS[_name]] = np.arange(NUM_CHANNELS)[CHANNELS[_name[:-2] + "_r"]]
        _MIRROR_SWAP[CHANNELS[_name[:-2] + "_r"]] = np.arange(NUM_CHANNELS)[CHANNELS[_name]]
_MIRROR_SIGN = np.ones(NUM_CHANNELS)
for _name, _component in (("shift", 0), ("foot_l", 0), ("foot_r", 0), ("roll", 0), ("twist", 0), ("facing", 0),
                          ("yaw_l", 0), ("yaw_r", 0), ("spine", 1), ("spine", 2), ("head", 1), ("head", 2)):  # fmt: skip
    _MIRROR_SIGN[CHANNELS[_name].start + _component] = -1.0
_FREE_CHANNELS = np.isin(np.arange(NUM_CHANNELS), np.arange(NUM_CHANNELS)[CHANNELS["facing"]], invert=True)


def _arm(elevation_degrees: float, azimuth_degrees: float) -> tuple[float, float]:
    """Upper-arm direction: elevation above the horizontal, azimuth from sideways (0) to forward (90)."""
    return math.radians(elevation_degrees), math.radians(azimuth_degrees)


@dataclass(frozen=True)
class Dancer:
    """What stays the same for one dancer across their dances."""

    amplitude: float  # scales every move
    stance: float  # half the distance between the feet, metres
    knee_bend: float  # metres the pelvis sits below straight legs
    elbow_bend: float  # carriage of the arms, radians
    lean: float  # forward lean of the torso, radians
    sharpness: float  # multiplies the genre's hit width (smaller = sharper)
    groove: float  # scales bounce, nods and chest pops


def make_dancer(rng: np.random.Generator) -> Dancer:
    return Dancer(
        amplitude=rng.uniform(0.8, 1.2),
        stance=rng.uniform(0.1, 0.15),
        knee_bend=rng.uniform(0.004, 0.015),
        elbow_bend=rng.uniform(0.2, 0.6),
        lean=rng.uniform(0.0, 0.12),
        sharpness=rng.uniform(0.8, 1.2),
        groove=rng.uniform(0.7, 1.3),
    )


def neutral_pose(dancer: Dancer, genre: Genre) -> np.ndarray:
    """The dancer's ready stance in a genre: feet apart, knees soft, arms hanging slightly forward."""
    pose = np.zeros(NUM_CHANNELS)
    pose[CHANNELS["foot_l"]] = (dancer.stance * genre.stance, 0.0)
    pose[CHANNELS["foot_r"]] = (-dancer.stance * genre.stance, 0.0)
    pose[CHANNELS["drop"]] = dancer.knee_bend + genre.crouch
    pose[CHANNELS["yaw_l"]], pose[CHANNELS["yaw_r"]] = 0.15, -0.15  # toes turned out a little
    pose[CHANNELS["spine"]] = (dancer.lean + genre.lean, 0.0, 0.0)
    pose[CHANNELS["arm_l"]] = pose[CHANNELS["arm_r"]] = _arm(-72, 12)
    pose[CHANNELS["elbow_l"]] = pose[CHANNELS["elbow_r"]] = dancer.elbow_bend
    return pose


class Keys:
    """Key poses of one move (n beats, left-led), written channel by channel."""

    def __init__(self, neutral: np.ndarray, beats: int):
        self.neutral = neutral
        self.stance = float(neutral[CHANNELS["foot_l"]][0])
        self.poses = np.tile(neutral, (beats, 1))
        self.segments = np.zeros((beats, len(SEGMENT_CHANNELS)))
        self.home: float | None = None  # heading (from forward towards left) back to the middle of the floor

    def set(self, beat: int, **values: float | tuple[float, ...]) -> Keys:
        """Set channels of one key pose; knee bend (drop), pelvis tilt and spine add to the dancer's posture."""
        for name, value in values.items():
            if name in SEGMENT_CHANNELS:
                self.segments[beat, SEGMENT_CHANNELS.index(name)] = value
            elif name in ("drop", "tilt", "spine"):
                self.poses[beat, CHANNELS[name]] = self.neutral[CHANNELS[name]] + np.asarray(value)
            else:
                self.poses[beat, CHANNELS[name]] = value
        return self

    def weight_on(self, beat: int, side: str, amount: float = 0.35) -> Keys:
        """Shift the pelvis towards one foot (a weight transfer)."""
        feet = {s: self.poses[beat, CHANNELS[f"foot_{s}"]] for s in "lr"}
        self.poses[beat, CHANNELS["shift"]] = amount * (feet[side] - (feet["l"] + feet["r"]) / 2)
        return self


@dataclass
class Move:
    """Key poses and what they leave behind: travel (x, z) of the dancer's frame and a turn."""

    keys: Keys
    travel: tuple[float, float] = (0.0, 0.0)
    turn: float = 0.0
    whole_body: bool = False  # sets the arms too (upper-body move skipped)


# Lower-body (and whole-body) moves. `w` is the dancer's stance half-width. Left-led; mirrored at random.
def _step_touch(keys: Keys, rng: np.random.Generator) -> Move:
    w, d = keys.stance, rng.uniform(0.15, 0.25)
    keys.set(0, foot_l=(w + d, 0.0), foot_r=(-w + d, 0.0)).weight_on(0, "l")
    keys.set(1, foot_l=(w + d, 0.0), foot_r=(d + 0.3 * w, 0.02), lift_r=0.02, pitch_r=0.4).weight_on(1, "l", 0.45)
    keys.set(2, foot_l=(w - d, 0.0), foot_r=(-w - d, 0.0)).weight_on(2, "r")
    keys.set(3, foot_l=(-d + 0.3 * w, 0.02), foot_r=(-w - d, 0.0), lift_l=0.02, pitch_l=0.4).weight_on(3, "r", 0.45)
    for beat in range(4):
        keys.set(beat, roll=0.05 * (1 if beat < 2 else -1), drop=0.012 * (beat % 2 == 0))
    return Move(keys)


def _march(keys: Keys, rng: np.random.Generator) -> Move:
    knee = rng.uniform(0.12, 0.3)
    forward = rng.choice([0.0, 0.1])
    for beat in range(4):
        up, down = ("l", "r") if beat % 2 == 0 else ("r", "l")
        keys.set(beat, **{f"lift_{up}": knee, f"pitch_{up}": 0.3}).weight_on(beat, down, 0.5)
        keys.set(beat, tilt=0.04, shift=keys.poses[beat, CHANNELS["shift"]] + (0.0, forward * (beat % 2)))
    return Move(keys)


def _bounce(keys: Keys, rng: np.random.Generator) -> Move:
    w = keys.stance * rng.uniform(1.4, 2.0)
    depth = rng.uniform(0.03, 0.06)
    for beat in range(4):
        keys.set(beat, foot_l=(w, 0.0), foot_r=(-w, 0.0), drop=depth * (1.0 if beat % 2 == 0 else 0.5),
                 roll=0.06 * (-1) ** beat, tilt=0.1 * (beat % 2 == 0), yaw_l=0.35, yaw_r=-0.35)  # fmt: skip
    return Move(keys)


def _squat(keys: Keys, rng: np.random.Generator) -> Move:
    w, depth = keys.stance * 1.8, rng.uniform(0.15, 0.25)
    for beat, level in enumerate((0.2, 0.6, 1.0, 0.5)):
        keys.set(beat, foot_l=(w, 0.0), foot_r=(-w, 0.0), drop=depth * level, tilt=0.35 * level, yaw_l=0.4, yaw_r=-0.4)
    return Move(keys)


def _jump(keys: Keys, rng: np.random.Generator) -> Move:
    """Hops: crouch on the beat, airborne between beats; feet apart / together (a jumping jack)."""
    height = rng.uniform(0.08, 0.16)
    jack = rng.random() < 0.5
    for beat in range(4):
        wide = keys.stance * (2.0 if jack and beat % 2 == 0 else 1.0)
        keys.set(beat, foot_l=(wide, 0.0), foot_r=(-wide, 0.0), drop=0.07, tilt=0.2, air=height if beat < 3 else 0.0)
        up = 80 if (jack and beat % 2 == 0) else -60
        keys.set(beat, arm_l=_arm(up, 10), arm_r=_arm(up, 10), elbow_l=0.2, elbow_r=0.2)
    return Move(keys, whole_body=True)


def _kick(keys: Keys, rng: np.random.Generator) -> Move:
    reach, height = rng.uniform(0.35, 0.5), rng.uniform(0.2, 0.4)
    w = keys.stance
    keys.set(0, drop=0.04).weight_on(0, "r", 0.3)
    keys.set(1, foot_l=(w, reach), lift_l=height, pitch_l=0.7, tilt=-0.1, drop=0.015).weight_on(1, "r", 0.8)
    keys.set(2, drop=0.04).weight_on(2, "l", 0.3)
    keys.set(3, foot_r=(-w, reach), lift_r=height, pitch_r=0.7, tilt=-0.1, drop=0.015).weight_on(3, "l", 0.8)
    return Move(keys)


def _lunge(keys: Keys, rng: np.random.Generator) -> Move:
    w, reach = keys.stance, rng.uniform(0.35, 0.55)
    angle = rng.uniform(0.0, 0.8)  # forward to forward-left
    lunge = (w + reach * math.sin(angle), reach * math.cos(angle))
    keys.set(0, foot_l=lunge, drop=0.12, tilt=0.25, yaw_l=angle).weight_on(0, "l", 0.6)
    keys.set(1, foot_l=lunge, drop=0.18, tilt=0.3, yaw_l=angle).weight_on(1, "l", 0.6)
    keys.set(2, foot_l=lunge, drop=0.06, tilt=0.1, yaw_l=angle).weight_on(2, "r", 0.4)
    keys.set(3, drop=0.02)
    return Move(keys)


def _sway(keys: Keys, rng: np.random.Generator) -> Move:
    w = keys.stance * rng.uniform(1.4, 1.8)
    for beat in range(4):
        side = "l" if beat % 2 == 0 else "r"
        keys.set(beat, foot_l=(w, 0.0), foot_r=(-w, 0.0), roll=0.14 * (-1) ** beat, drop=0.02)
        keys.weight_on(beat, side, 0.55)
    return Move(keys)


def _twist(keys: Keys, rng: np.random.Generator) -> Move:
    angle = rng.uniform(0.4, 0.7)
    for beat in range(4):
        sign = (-1) ** beat
        keys.set(beat, twist=sign * angle * 0.5, yaw_l=sign * angle, yaw_r=sign * angle, drop=0.04 + 0.02 * (beat % 2))
        keys.set(beat, spine=(0.05, 0.0, -sign * angle * 0.4))
    return Move(keys)


def _rock(keys: Keys, rng: np.random.Generator) -> Move:
    w, reach = keys.stance, rng.uniform(0.2, 0.32)
    keys.set(0, foot_l=(w, reach), tilt=0.12).weight_on(0, "l", 0.6)
    keys.set(1, foot_l=(w, reach), tilt=-0.1).weight_on(1, "r", 0.3)
    keys.set(2, foot_l=(w, -reach * 0.8), tilt=-0.12).weight_on(2, "l", 0.5)
    keys.set(3, foot_l=(w, -reach * 0.8), tilt=0.08).weight_on(3, "r", 0.3)
    return Move(keys)


def _heel_tap(keys: Keys, rng: np.random.Generator) -> Move:
    w, reach = keys.stance, rng.uniform(0.25, 0.35)
    keys.set(0, foot_l=(w + 0.05, reach), lift_l=0.03, pitch_l=-0.45, drop=0.03).weight_on(0, "r", 0.5)
    keys.set(1, drop=0.01)
    keys.set(2, foot_r=(-w - 0.05, reach), lift_r=0.03, pitch_r=-0.45, drop=0.03).weight_on(2, "l", 0.5)
    keys.set(3, drop=0.01)
    return Move(keys)


def _shuffle(keys: Keys, rng: np.random.Generator) -> Move:
    """A running man: one knee up while the standing foot slides back, then the lifted foot lands in front."""
    w, stride = keys.stance, rng.uniform(0.15, 0.25)
    for beat in range(4):
        up, down = ("l", "r") if beat % 2 == 0 else ("r", "l")
        keys.set(beat, **{f"lift_{up}": 0.22, f"foot_{up}": ((1 if up == "l" else -1) * w, 0.05),
                          f"foot_{down}": ((1 if down == "l" else -1) * w, -stride), f"pitch_{up}": 0.3},
                 drop=0.04, tilt=0.08)  # fmt: skip
        keys.weight_on(beat, down, 0.5)
    return Move(keys)


def _travel(keys: Keys, rng: np.random.Generator) -> Move:
    """Three steps in one direction and a touch; the dancer ends up somewhere else."""
    w = keys.stance
    heading = rng.uniform(-math.pi, math.pi) if keys.home is None else keys.home + rng.uniform(-0.5, 0.5)
    stride = rng.uniform(0.15, 0.25)
    dx, dz = math.sin(heading) * stride, math.cos(heading) * stride
    for beat in range(4):
        lead = min(beat + 1, 3)
        trail = min(beat, 3)
        left, right = (lead, trail) if beat % 2 == 0 else (trail, lead)
        keys.set(beat, foot_l=(w + dx * left, dz * left), foot_r=(-w + dx * right, dz * right), drop=0.02)
    return Move(keys, travel=(3 * dx, 3 * dz))


def _turn(keys: Keys, rng: np.random.Generator) -> Move:
    """A full turn in four stepped quarters (or a half turn), arms out."""
    turn = 2 * math.pi if rng.random() < 0.6 else math.pi
    for beat in range(4):
        keys.set(beat, facing=turn * beat / 4, drop=0.015 + 0.015 * (beat % 2), arm_l=_arm(5, 20), arm_r=_arm(5, 20))
        keys.set(beat, elbow_l=0.25, elbow_r=0.25, head=(0.0, 0.0, 0.3))
    return Move(keys, turn=turn, whole_body=True)


# Upper-body moves.
def _arm_wave(keys: Keys, rng: np.random.Generator) -> Move:
    high, low = rng.uniform(40, 80), rng.uniform(-50, -20)
    for beat in range(4):
        up = beat % 2 == 0
        keys.set(beat, arm_l=_arm(high if up else low, 20), arm_r=_arm(low if up else high, 20), elbow_l=0.2, elbow_r=0.2,
                 spine=(0.05, 0.1 if up else -0.1, 0.0), head=(0.0, 0.08 if up else -0.08, 0.0))  # fmt: skip
    return Move(keys)


def _pump(keys: Keys, rng: np.random.Generator) -> Move:
    both = rng.random() < 0.5
    for beat in range(4):
        hit = beat % 2 == 0
        keys.set(beat, arm_l=_arm(70 if hit else 10, 30), elbow_l=0.2 if hit else 1.9, armtwist_l=1.2, shrug_l=0.15 * hit)
        if both:
            keys.set(beat, arm_r=_arm(70 if hit else 10, 30), elbow_r=0.2 if hit else 1.9, armtwist_r=1.2, shrug_r=0.15 * hit)
    return Move(keys)


def _punch(keys: Keys, rng: np.random.Generator) -> Move:
    height = rng.uniform(-5, 20)
    for beat in range(4):
        left = beat % 2 == 0
        keys.set(beat, arm_l=_arm(height, 85) if left else _arm(-60, 70), elbow_l=0.1 if left else 2.0,
                 arm_r=_arm(height, 85) if not left else _arm(-60, 70), elbow_r=0.1 if not left else 2.0,
                 spine=(0.08, 0.0, 0.25 if not left else -0.25))  # fmt: skip
    return Move(keys)


def _clap(keys: Keys, rng: np.random.Generator) -> Move:
    height = rng.uniform(-10, 30)
    for beat in range(4):
        closed = beat % 2 == 1
        arm = _arm(height, 88) if closed else _arm(height - 20, 25)
        keys.set(beat, arm_l=arm, arm_r=arm, elbow_l=0.5 if closed else 1.2, elbow_r=0.5 if closed else 1.2,
                 head=(0.1 * closed, 0.0, 0.0))  # fmt: skip
    return Move(keys)


def _point(keys: Keys, rng: np.random.Generator) -> Move:
    """Disco point: the left arm points up and across on the beat, then to the hip."""
    for beat in range(4):
        up = beat % 2 == 0
        keys.set(beat, arm_l=_arm(55, 60) if up else _arm(-55, 20), elbow_l=0.05 if up else 1.4,
                 arm_r=_arm(-60, 15), elbow_r=1.5, head=(-0.15 * up, 0.0, 0.4 * up), spine=(0.0, 0.1 * up, 0.15 * up))  # fmt: skip
    return Move(keys)


def _reach(keys: Keys, rng: np.random.Generator) -> Move:
    for beat in range(4):
        left = beat % 2 == 0
        keys.set(beat, arm_l=_arm(80, 20) if left else _arm(-30, 40), arm_r=_arm(80, 20) if not left else _arm(-30, 40),
                 elbow_l=0.1 if left else 0.7, elbow_r=0.1 if not left else 0.7,
                 spine=(0.0, -0.2 if left else 0.2, 0.0), head=(-0.1, 0.0, 0.2 if left else -0.2))  # fmt: skip
    return Move(keys)


def _lock(keys: Keys, rng: np.random.Generator) -> Move:
    """Locking: arms snap forward, freeze, then fold in; the torso locks forward on the downbeat."""
    for beat in range(4):
        phase = beat % 4
        if phase == 0:
            keys.set(beat, arm_l=_arm(0, 80), arm_r=_arm(0, 80), elbow_l=0.05, elbow_r=0.05, spine=(0.25, 0.0, 0.0))
        elif phase == 1:
            keys.set(beat, arm_l=_arm(-20, 40), arm_r=_arm(-20, 40), elbow_l=2.1, elbow_r=2.1, armtwist_l=0.8, armtwist_r=0.8)
        elif phase == 2:
            keys.set(beat, arm_l=_arm(60, 30), arm_r=_arm(-60, 20), elbow_l=0.3, elbow_r=1.6, head=(-0.1, 0.0, 0.3))
        else:
            keys.set(beat, arm_l=_arm(-60, 20), arm_r=_arm(60, 30), elbow_l=1.6, elbow_r=0.3, head=(-0.1, 0.0, -0.3))
    return Move(keys)


def _chest_pop(keys: Keys, rng: np.random.Generator) -> Move:
    for beat in range(4):
        pop = beat % 2 == 0
        keys.set(beat, arm_l=_arm(-40, 60), arm_r=_arm(-40, 60), elbow_l=1.6, elbow_r=1.6,
                 spine=(-0.15 if pop else 0.15, 0.0, 0.0), head=(0.15 if pop else -0.05, 0.0, 0.0),
                 shrug_l=0.12 * pop, shrug_r=0.12 * pop)  # fmt: skip
    return Move(keys)


def _shrug(keys: Keys, rng: np.random.Generator) -> Move:
    for beat in range(4):
        left = beat % 2 == 0
        keys.set(beat, arm_l=_arm(-30, 30), arm_r=_arm(-30, 30), elbow_l=1.3, elbow_r=1.3,
                 shrug_l=0.3 if left else 0.0, shrug_r=0.0 if left else 0.3, head=(0.0, 0.15 if left else -0.15, 0.0))  # fmt: skip
    return Move(keys)


def _roll(keys: Keys, rng: np.random.Generator) -> Move:
    """Rolling arms: forearms circle in front of the chest (up/out on one beat, down/in on the next)."""
    for beat in range(4):
        up = beat % 2 == 0
        keys.set(beat, arm_l=_arm(-10 if up else -45, 70 if up else 50), arm_r=_arm(-45 if up else -10, 50 if up else 70),
                 elbow_l=1.2 if up else 1.9, elbow_r=1.9 if up else 1.2, spine=(0.1, 0.0, 0.1 if up else -0.1))  # fmt: skip
    return Move(keys)


def _swing(keys: Keys, rng: np.random.Generator) -> Move:
    """Relaxed arms swinging forward and back in opposition, with the groove."""
    size = rng.uniform(25, 45)
    for beat in range(4):
        sign = (-1) ** beat
        keys.set(beat, arm_l=_arm(-60, 20 + sign * size), arm_r=_arm(-60, 20 - sign * size),
                 elbow_l=0.9, elbow_r=0.9, spine=(0.06, 0.0, 0.1 * sign))  # fmt: skip
    return Move(keys)


def _arms_out(keys: Keys, rng: np.random.Generator) -> Move:
    """Jazz arms: open to the side on one beat, rounded in front (first position) on the next."""
    for beat in range(4):
        open_ = beat % 2 == 0
        keys.set(beat, arm_l=_arm(10, 15) if open_ else _arm(-25, 75), arm_r=_arm(10, 15) if open_ else _arm(-25, 75),
                 elbow_l=0.2 if open_ else 0.9, elbow_r=0.2 if open_ else 0.9, head=(-0.15 * open_, 0.0, 0.0),
                 spine=(-0.08 * open_, 0.0, 0.0))  # fmt: skip
    return Move(keys)


LOWER_MOVES: dict[str, Callable[[Keys, np.random.Generator], Move]] = {
    "step_touch": _step_touch, "march": _march, "bounce": _bounce, "squat": _squat, "jump": _jump, "kick": _kick,
    "lunge": _lunge, "sway": _sway, "twist": _twist, "rock": _rock, "heel_tap": _heel_tap, "shuffle": _shuffle,
    "travel": _travel, "turn": _turn,
}  # fmt: skip
UPPER_MOVES: dict[str, Callable[[Keys, np.random.Generator], Move]] = {
    "arm_wave": _arm_wave, "pump": _pump, "punch": _punch, "clap": _clap, "point": _point, "reach": _reach,
    "lock": _lock, "chest_pop": _chest_pop, "shrug": _shrug, "roll": _roll, "swing": _swing, "arms_out": _arms_out,
}  # fmt: skip


def markov_chain(genre: Genre, moves: dict[str, float]) -> tuple[list[str], np.ndarray]:
    """The genre's move-to-move transition matrix: its preferences, a habit of repeating a move, and
    fixed genre-specific favourite successions (seeded by the genre code, the same for every dataset)."""
    names = list(moves)
    preference = np.array([moves[name] for name in names], dtype=np.float64)
    habits = np.random.default_rng(zlib.crc32(f"{genre.code}:{','.join(names)}".encode())).uniform(0.3, 1.7, (len(names), len(names)))
    transition = preference[None, :] * habits
    transition[np.diag_indices(len(names))] *= 1.5
    return names, transition / transition.sum(axis=1, keepdims=True)


def _walk_chain(names: list[str], transition: np.ndarray, steps: int, rng: np.random.Generator) -> list[str]:
    state = int(rng.choice(len(names), p=transition.sum(axis=0) / transition.sum()))
    walk = [names[state]]
    for _ in range(steps - 1):
        state = int(rng.choice(len(names), p=transition[state]))
        walk.append(names[state])
    return walk


def _rotate_xz(vector: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Horizontal (x, z) vectors turned by `yaw` about +y (the same rotation as an SMPL root yaw)."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    return np.stack([cos * vector[..., 0] + sin * vector[..., 1], -sin * vector[..., 0] + cos * vector[..., 1]], axis=-1)


def _one_foot_at_a_time(keys: np.ndarray, airborne: np.ndarray) -> None:
    """Unless jumping, only one foot may move between two beats (the other carries the weight): where a
    move asks both to move, the foot with the shorter way waits a beat. Edits `keys` in place."""
    feet = [CHANNELS["foot_l"], CHANNELS["foot_r"]]
    for beat in range(len(keys) - 1):
        way = [np.linalg.norm(keys[beat + 1, foot] - keys[beat, foot]) for foot in feet]
        if min(way) > 0.03 and not airborne[beat]:
            waiting = feet[int(np.argmin(way))]
            keys[beat + 1, waiting] = keys[beat, waiting]


def choreograph_keys(genre: Genre, dancer: Dancer, bars: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Key poses of a whole dance in world coordinates, one per beat: (keys (B+1, C), segments (B, 3), move names).

    Feet, pelvis shift, facing and foot yaws are turned into world values (x, z, yaw); the rest stays
    relative to the body. The dance stays near the middle of the floor: travels head back home.
    """
    neutral = neutral_pose(dancer, genre)
    lower_names, lower_chain = markov_chain(genre, genre.lower_moves)
    upper_names, upper_chain = markov_chain(genre, genre.upper_moves)
    lower_walk = _walk_chain(lower_names, lower_chain, bars, rng)
    upper_walk = _walk_chain(upper_names, upper_chain, bars, rng)
    beats = bars * BEATS_PER_BAR
    keys = np.zeros((beats + 1, NUM_CHANNELS))
    segments = np.zeros((beats + 1, len(SEGMENT_CHANNELS)))
    origin = np.zeros(2)
    facing = float(rng.uniform(-0.4, 0.4))
    names = []
    for bar in range(bars):
        lower_mirror, upper_mirror = rng.random() < 0.5, rng.random() < 0.5
        lower_keys = Keys(neutral, BEATS_PER_BAR)
        if np.linalg.norm(origin) > 0.6:  # a travel heads back towards the middle of the floor
            home = _rotate_xz(-origin, np.array(-facing))
            lower_keys.home = math.atan2(home[0], home[1]) * (-1 if lower_mirror else 1)
        lower = LOWER_MOVES[lower_walk[bar]](lower_keys, rng)
        upper = UPPER_MOVES[upper_walk[bar]](Keys(neutral, BEATS_PER_BAR), rng)
        poses, seg = lower.keys.poses.copy(), lower.keys.segments.copy()
        if not lower.whole_body:
            poses[:, _UPPER_INDEX] = upper.keys.poses[:, _UPPER_INDEX]
            if upper_mirror != lower_mirror:
                upper_only = upper.keys.poses[:, _MIRROR_SWAP] * _MIRROR_SIGN
                poses[:, _UPPER_INDEX] = upper_only[:, _UPPER_INDEX]
        travel, turn = np.array(lower.travel), lower.turn
        if lower_mirror:
            poses = poses[:, _MIRROR_SWAP] * _MIRROR_SIGN
            seg = seg[:, [1, 0, 2]]
            travel, turn = travel * np.array([-1.0, 1.0]), -turn
        scale = dancer.amplitude * genre.amplitude * rng.uniform(0.9, 1.1)
        poses[:, _FREE_CHANNELS] = neutral[_FREE_CHANNELS] + scale * (poses[:, _FREE_CHANNELS] - neutral[_FREE_CHANNELS])
        # into the world: feet and pelvis shift relative to the current facing, about the current origin
        yaw = facing + poses[:, CHANNELS["facing"]][:, 0]
        for name in ("foot_l", "foot_r"):
            poses[:, CHANNELS[name]] = origin + _rotate_xz(poses[:, CHANNELS[name]], yaw)
        poses[:, CHANNELS["shift"]] = _rotate_xz(poses[:, CHANNELS["shift"]], yaw)
        for name in ("yaw_l", "yaw_r"):
            poses[:, CHANNELS[name]] += yaw[:, None]
        poses[:, CHANNELS["facing"]] = yaw[:, None]
        rows = slice(bar * BEATS_PER_BAR, (bar + 1) * BEATS_PER_BAR)
        keys[rows], segments[rows] = poses, seg
        origin = origin + _rotate_xz(travel, np.array(facing))
        facing += turn
        names.append(f"{lower_walk[bar]}+{'-' if lower.whole_body else upper_walk[bar]}")
    final = neutral.copy()  # the dance ends in the ready stance
    for name in ("foot_l", "foot_r"):
        final[CHANNELS[name]] = origin + _rotate_xz(neutral[CHANNELS[name]], np.array(facing))
    final[CHANNELS["yaw_l"]] += facing
    final[CHANNELS["yaw_r"]] += facing
    final[CHANNELS["facing"]] = facing
    keys[-1] = final
    _one_foot_at_a_time(keys, segments[:, 2] > 0)
    # a foot that moves between two key poses is lifted on the way (a step)
    for index, side in enumerate("lr"):
        way = np.linalg.norm(np.diff(keys[:, CHANNELS[f"foot_{side}"]], axis=0), axis=1)
        step_height = np.where(way > 0.03, 0.05 + 0.2 * np.minimum(way, 0.4), 0.0)  # longer steps lift higher
        segments[:-1, index] = np.maximum(segments[:-1, index], step_height)
    return keys, segments[:-1], names


# ----------------------------------------------------------------------------------------------
# From key poses to SMPL parameters
# ----------------------------------------------------------------------------------------------
_REST = rest_joints("male")
_THIGH = {side: _REST[knee] - _REST[hip] for side, hip, knee in (("l", 1, 4), ("r", 2, 5))}
_SHIN = {side: _REST[ankle] - _REST[knee] for side, knee, ankle in (("l", 4, 7), ("r", 5, 8))}
_UPPER_ARM = {side: _REST[elbow] - _REST[shoulder] for side, shoulder, elbow in (("l", 16, 18), ("r", 17, 19))}
_ANKLE_ABOVE_FLOOR = _REST[7, 1] - _REST[10, 1] + FLOOR_CLEARANCE  # foot flat
_PELVIS_ABOVE_ANKLE = _REST[0, 1] - _REST[7, 1]  # legs straight
_PELVIS_BEHIND_BALLS = np.array([0.0, _REST[0, 2] - (_REST[10, 2] + _REST[11, 2]) / 2])  # (x, z)


def _rotation_y(angle: np.ndarray) -> np.ndarray:
    return axis_angle_to_matrix(np.stack([np.zeros_like(angle), angle, np.zeros_like(angle)], axis=-1))


def matrix_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle, angle in [0, pi] (via the quaternion)."""
    m = rotation
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    candidates = np.stack([
        np.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        np.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - trace, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        np.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - trace, m[..., 1, 2] + m[..., 2, 1]], -1),
        np.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 + 2 * m[..., 2, 2] - trace], -1),
    ], axis=-2)  # fmt: skip  (Shepperd: the row with the largest diagonal term is the stable one)
    best = np.argmax(np.stack([trace, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1), axis=-1)
    quaternion = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    quaternion = quaternion / np.linalg.norm(quaternion, axis=-1, keepdims=True)
    quaternion = quaternion * np.where(quaternion[..., :1] < 0, -1.0, 1.0)
    sine = np.linalg.norm(quaternion[..., 1:], axis=-1, keepdims=True)
    angle = 2 * np.arctan2(sine, quaternion[..., :1])
    return np.divide(quaternion[..., 1:] * angle, sine, out=np.zeros_like(quaternion[..., 1:]), where=sine > 1e-12)


def _frame(direction: np.ndarray, pole: np.ndarray) -> np.ndarray:
    """Orthonormal frame (columns): along `direction`, towards `pole` (made perpendicular), their cross product."""
    first = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    second = pole - (pole * first).sum(-1, keepdims=True) * first
    second = second / np.linalg.norm(second, axis=-1, keepdims=True)
    return np.stack([first, second, np.cross(first, second)], axis=-1)


def _leg_ik(hip: np.ndarray, ankle_target: np.ndarray, pole: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Two-link IK: global rotations of thigh and shin that put the ankle on the target (or as near as
    the leg reaches), the knee bending towards `pole` (forward over the toes). Knees bend forward only."""
    thigh_length, shin_length = np.linalg.norm(_THIGH[side]), np.linalg.norm(_SHIN[side])
    reach = ankle_target - hip
    distance = np.linalg.norm(reach, axis=-1, keepdims=True)
    along = reach / distance
    # never straighter than the rest pose (whose knee is slightly bent), so the knee never hyperextends
    distance = np.clip(distance, abs(thigh_length - shin_length) + 0.05, 0.999 * np.linalg.norm(_THIGH[side] + _SHIN[side]))
    to_knee = (thigh_length**2 - shin_length**2 + distance**2) / (2 * distance)
    height = np.sqrt(np.maximum(thigh_length**2 - to_knee**2, 0.0))
    # a leg raised forward (a kick) bends its knee upwards, not along the leg
    pole = pole + 2.0 * np.maximum((pole * along).sum(-1, keepdims=True), 0.0) * np.array([0.0, 1.0, 0.0])
    bend = pole - (pole * along).sum(-1, keepdims=True) * along
    bend = bend / np.linalg.norm(bend, axis=-1, keepdims=True)
    knee = hip + to_knee * along + height * bend
    ankle = hip + distance * along
    forward = np.array([0.0, 0.0, 1.0])
    thigh = _frame(knee - hip, pole) @ _frame(_THIGH[side], forward).T
    shin = _frame(ankle - knee, pole) @ _frame(_SHIN[side], forward).T
    return thigh, shin


def _swing(rest_direction: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Axis-angle of the shortest rotation taking `rest_direction` to `direction` (T, 3)."""
    rest_direction = rest_direction / np.linalg.norm(rest_direction)
    direction = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    axis = np.cross(rest_direction, direction)
    sine = np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = np.arctan2(sine, (direction * rest_direction).sum(-1, keepdims=True))
    return np.divide(axis * angle, sine, out=np.zeros_like(axis), where=sine > 1e-9)


def _ease(phase: np.ndarray, width: float) -> np.ndarray:
    """Progress from one key pose to the next: zero speed on both beats; the move happens in the middle
    `width` of the beat (smaller = sharper hit, longer hold around the beat)."""
    ramp = np.clip((phase - 0.5) / width + 0.5, 0.0, 1.0)
    return ramp * ramp * (3 - 2 * ramp)


def interpolate_keys(
    keys: np.ndarray, segments: np.ndarray, beat_period_frames: float, frames: int, genre: Genre, dancer: Dancer
) -> dict[str, np.ndarray]:
    """Per-frame channels: eased between key poses, steps lifted, jump flights, and the genre's groove."""
    position = np.arange(frames) / beat_period_frames
    index = np.minimum(np.floor(position).astype(int), len(keys) - 2)
    phase = position - index
    progress = _ease(phase, min(1.0, genre.hit_width * dancer.sharpness))[:, None]
    values = keys[index] + progress * (keys[index + 1] - keys[index])
    channels = {name: values[:, sl] for name, sl in CHANNELS.items()}
    # a foot coming down lands before the other foot leaves the floor: stepping, not hopping
    for side in "lr":
        start, end = keys[index, CHANNELS[f"lift_{side}"]][:, 0], keys[index + 1, CHANNELS[f"lift_{side}"]][:, 0]
        lift_phase = np.where(end < start, phase / 0.6, (phase - 0.4) / 0.6)
        channels[f"lift_{side}"] = (start + _ease(np.clip(lift_phase, 0.0, 1.0), 1.0) * (end - start))[:, None]
    step_arc = 4 * progress[:, 0] * (1 - progress[:, 0])
    channels["lift_l"] = channels["lift_l"] + segments[index, 0:1] * step_arc[:, None]
    channels["lift_r"] = channels["lift_r"] + segments[index, 1:2] * step_arc[:, None]
    flight_time = 0.55  # of the beat, centred between the beats
    flight = np.clip((phase - (1 - flight_time) / 2) / flight_time, 0.0, 1.0)
    channels["air"] = segments[index, 2] * 4 * flight * (1 - flight)
    groove = np.cos(np.pi * phase) ** 2  # 1 on the beat, 0 half-way, zero speed at both
    strength = dancer.groove
    channels["drop"] = channels["drop"] + strength * genre.bounce * (groove if genre.bounce_on_beat else 1 - groove)[:, None]
    channels["head"] = channels["head"] + strength * genre.nod * np.stack([groove, 0 * groove, 0 * groove], -1)
    channels["spine"] = channels["spine"] - strength * genre.chest * np.stack([groove**3, 0 * groove, 0 * groove], -1)
    return channels


def solve_pose(channels: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SMPL poses (T, 24, 3), translation in metres (T, 3) and flight height (T,) from per-frame channels."""
    frames = len(channels["drop"])
    poses = np.zeros((frames, 24, 3))
    facing = channels["facing"][:, 0]
    tilt, roll, twist = channels["tilt"][:, 0], channels["roll"][:, 0], channels["twist"][:, 0]
    zeros = np.zeros(frames)
    root = _rotation_y(facing + twist) @ axis_angle_to_matrix(np.stack([tilt, zeros, zeros], -1)) @ axis_angle_to_matrix(
        np.stack([zeros, zeros, roll], -1)
    )
    # Foot channels place the ball of the foot (SMPL's foot joint): turning a foot pivots on it, as
    # dancers do, and pointing the toes lifts the heel. The ankle target follows from the foot's
    # orientation; the pelvis sits above and a little behind the balls of the feet.
    feet_xz = {side: channels[f"foot_{side}"] for side in "lr"}
    foot_rotation = {
        side: _rotation_y(channels[f"yaw_{side}"][:, 0])
        @ axis_angle_to_matrix(np.stack([channels[f"pitch_{side}"][:, 0], zeros, zeros], -1))
        for side in "lr"
    }
    pelvis_xz = (feet_xz["l"] + feet_xz["r"]) / 2 + channels["shift"] + _rotate_xz(_PELVIS_BEHIND_BALLS, facing)
    pelvis = np.stack([pelvis_xz[:, 0], _ANKLE_ABOVE_FLOOR + _PELVIS_ABOVE_ANKLE - channels["drop"][:, 0], pelvis_xz[:, 1]], -1)
    targets = {}
    for side, ankle_joint, foot_joint in (("l", 7, 10), ("r", 8, 11)):
        ball = np.stack([feet_xz[side][:, 0], FLOOR_CLEARANCE + np.maximum(channels[f"lift_{side}"][:, 0], 0), feet_xz[side][:, 1]], -1)
        targets[side] = ball + foot_rotation[side] @ (_REST[ankle_joint] - _REST[foot_joint])
    # lower the pelvis where a planted foot could not be reached with the legs almost straight
    leg_length = {side: np.linalg.norm(_THIGH[side]) + np.linalg.norm(_SHIN[side]) for side in "lr"}
    excess = np.zeros(frames)
    for side, hip_joint in (("l", 1), ("r", 2)):
        hip = pelvis + (root @ (_REST[hip_joint] - _REST[0]))
        horizontal = np.linalg.norm((targets[side] - hip)[:, [0, 2]], axis=-1)
        vertical_reach = np.sqrt(np.maximum((0.985 * leg_length[side]) ** 2 - horizontal**2, 0.0))
        planted = channels[f"lift_{side}"][:, 0] < 0.02
        excess = np.maximum(excess, np.where(planted, hip[:, 1] - targets[side][:, 1] - vertical_reach, 0.0))
    pelvis[:, 1] -= excess
    poses[:, 0] = matrix_to_axis_angle(root)
    for side, hip_joint, knee_joint, ankle_joint in (("l", 1, 4, 7), ("r", 2, 5, 8)):
        hip = pelvis + (root @ (_REST[hip_joint] - _REST[0]))
        foot = foot_rotation[side]
        pole = _rotation_y(channels[f"yaw_{side}"][:, 0]) @ np.array([0.0, 0.0, 1.0])
        thigh, shin = _leg_ik(hip, targets[side], pole, side)
        poses[:, hip_joint] = matrix_to_axis_angle(np.swapaxes(root, -1, -2) @ thigh)
        poses[:, knee_joint] = matrix_to_axis_angle(np.swapaxes(thigh, -1, -2) @ shin)
        poses[:, ankle_joint] = matrix_to_axis_angle(np.swapaxes(shin, -1, -2) @ foot)
    bend, side_bend, turn = channels["spine"].T
    for joint in (3, 6, 9):  # the spine bends over its three joints
        poses[:, joint] = np.stack([bend, turn, -side_bend], -1) / 3
    nod, tilt_head, turn_head = channels["head"].T
    for joint in (12, 15):
        poses[:, joint] = np.stack([nod, turn_head, -tilt_head], -1) / 2
    for side, collar, shoulder, elbow, sign in (("l", 13, 16, 18, 1.0), ("r", 14, 17, 19, -1.0)):
        poses[:, collar, 2] = sign * channels[f"shrug_{side}"][:, 0]
        elevation, azimuth = channels[f"arm_{side}"].T
        direction = np.stack([sign * np.cos(elevation) * np.cos(azimuth), np.sin(elevation), np.cos(elevation) * np.sin(azimuth)], -1)
        rest = _UPPER_ARM[side] / np.linalg.norm(_UPPER_ARM[side])
        # turn the upper arm about itself first (so the elbow can bend upwards), then swing it into place
        roll_arm = axis_angle_to_matrix(-sign * channels[f"armtwist_{side}"] * rest)
        poses[:, shoulder] = matrix_to_axis_angle(axis_angle_to_matrix(_swing(rest, direction)) @ roll_arm)
        poses[:, elbow, 1] = -sign * np.clip(channels[f"elbow_{side}"][:, 0], 0.0, 2.5)  # elbows bend one way
    return poses, pelvis - _REST[0], channels["air"]


def choreograph(
    genre: Genre, beats: np.ndarray, frames: int, rng: np.random.Generator, dancer: Dancer | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """SMPL poses (T, 72) float32, translations in metres (T, 3) float32 and the moves (one per bar,
    "lower+upper") of one dance to a piece.

    `beats` are the music's beat times (evenly spaced, the first at 0 s). Feet rest on the floor:
    after forward kinematics the root height puts the lowest foot joint at FLOOR_CLEARANCE (plus the
    flight height while jumping).
    """
    dancer = dancer if dancer is not None else make_dancer(rng)
    beat_period_frames = (beats[1] - beats[0]) * FPS
    bars = int(math.ceil(frames / beat_period_frames / BEATS_PER_BAR))
    keys, segments, moves = choreograph_keys(genre, dancer, bars, rng)
    channels = interpolate_keys(keys, segments, beat_period_frames, frames, genre, dancer)
    poses, transl, air = solve_pose(channels)
    posture_joints = [3, 6, 9, 12, 13, 14, 15, 16, 17]  # the dancer's own carriage of spine, head and shoulders
    poses[:, posture_joints] += rng.normal(0.0, 0.02, size=(1, len(posture_joints), 3))
    poses = poses.reshape(frames, 72).astype(np.float32)
    joints = forward_kinematics(poses, transl.astype(np.float32))
    lowest = joints[:, FOOT_JOINTS, 1].min(axis=1)
    transl[:, 1] += FLOOR_CLEARANCE + air - lowest
    return poses, transl.astype(np.float32), moves


# ----------------------------------------------------------------------------------------------
# The dataset in the AIST++ layout
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    genre: Genre
    music_id: str
    bpm: float
    seconds: float


def _plan_pieces(num_sequences: int, rng: np.random.Generator, seconds: tuple[float, float]) -> list[Piece]:
    """About two dances per piece of music (AIST++ has several dancers per piece), genres in turn."""
    num_pieces = max(3, int(math.ceil(num_sequences / 2)))
    first_genre = int(rng.integers(len(GENRES)))
    pieces = []
    for piece in range(num_pieces):
        genre = GENRES[(first_genre + piece) % len(GENRES)]
        music_id = f"m{genre.code}{piece // len(GENRES)}"
        pieces.append(Piece(genre, music_id, float(rng.uniform(*genre.tempo)), float(rng.uniform(*seconds))))
    return pieces


def _split_music(piece_sizes: dict[str, int], num_sequences: int, rng: np.random.Generator) -> dict[str, str]:
    """Whole pieces to splits (cross-modal: held-out music is never trained on), ~80/10/10 of sequences,
    at least one sequence in each split."""
    order = [str(music_id) for music_id in rng.permutation(sorted(piece_sizes))]
    target = max(1, round(0.1 * num_sequences))
    split_of_music: dict[str, str] = {}
    counts = {"val": 0, "test": 0}
    for music_id in order:
        open_splits = [split for split in ("val", "test") if counts[split] < target]
        remaining_train = sum(piece_sizes[m] for m in order if m not in split_of_music) - piece_sizes[music_id]
        if open_splits and remaining_train >= 1:
            split = min(open_splits, key=counts.__getitem__)
            counts[split] += piece_sizes[music_id]
            split_of_music[music_id] = split
        else:
            split_of_music[music_id] = "train"
    return split_of_music


def generate_synthetic_aistpp(
    out_dir: str | os.PathLike, num_sequences: int, seed: int = 0, seconds: tuple[float, float] = (8.0, 16.0)
) -> Path:
    """Write `num_sequences` paired dances and music in the AIST++ layout into `out_dir` (created if
    absent; an existing folder should be empty); returns `out_dir`. Deterministic given `seed`.

    Lengths of the pieces are drawn from `seconds`; each dance is as long as its music.
    Also writes `synthetic_info.json` (genre, tempo and length of each piece; moves of each dance).
    """
    if num_sequences < 3:
        raise ValueError(f"need at least 3 sequences (one per split), got {num_sequences}")
    if not 0 < seconds[0] <= seconds[1]:
        raise ValueError(f"seconds must be an increasing pair of positive lengths, got {seconds}")
    out = Path(out_dir)
    for folder in ("motions", "splits", "wavs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pieces = _plan_pieces(num_sequences, rng, seconds)
    beats_of = {}
    for index, piece in enumerate(pieces):
        audio, beats = compose_music(piece.genre, piece.bpm, piece.seconds, np.random.default_rng([seed, 1, index]))
        soundfile.write(out / "wavs" / f"{piece.music_id}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        beats_of[piece.music_id] = beats
    dancers = {}  # three dancers per genre, each with their own style, as AIST++ has its own dancers per genre
    sizes = {piece.music_id: 0 for piece in pieces}
    sequences = []
    for index in range(num_sequences):
        piece = pieces[index % len(pieces)]
        sizes[piece.music_id] += 1
        dancer_number = 3 * GENRES.index(piece.genre) + (index // len(pieces) + index) % 3 + 1
        if dancer_number not in dancers:
            dancers[dancer_number] = make_dancer(np.random.default_rng([seed, 2, dancer_number]))
        name = f"g{piece.genre.code}_sBM_cAll_d{dancer_number:02d}_{piece.music_id}_ch{index + 1:02d}"
        sequences.append((name, piece, dancers[dancer_number]))
    split_of_music = _split_music(sizes, num_sequences, rng)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    dances: dict[str, dict] = {}
    for index, (name, piece, dancer) in enumerate(sequences):
        frames = int(piece.seconds * FPS)
        poses, transl, moves = choreograph(piece.genre, beats_of[piece.music_id], frames, np.random.default_rng([seed, 3, index]), dancer)
        dances[name] = {"split": split_of_music[piece.music_id], "moves": moves}
        motion = {
            "smpl_poses": poses,
            "smpl_trans": (transl * SMPL_SCALING).astype(np.float32),
            "smpl_scaling": np.array([SMPL_SCALING], dtype=np.float32),
        }
        with open(out / "motions" / f"{name}.pkl", "wb") as handle:
            pickle.dump(motion, handle, protocol=4)
        splits[split_of_music[piece.music_id]].append(name)
    for split, names in splits.items():
        (out / "splits" / f"crossmodal_{split}.txt").write_text("".join(f"{name}\n" for name in names))
    (out / "ignore_list.txt").write_text("")
    info = {
        "generator": "e3d2_hf.data.synthetic",
        "seed": seed,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "genres": {genre.code: {"tempo": list(genre.tempo)} for genre in GENRES},
        "music": {
            piece.music_id: {"genre": piece.genre.code, "bpm": round(piece.bpm, 3), "seconds": round(piece.seconds, 3),
                             "split": split_of_music[piece.music_id]}
            for piece in pieces
        },  # fmt: skip
        "dances": dances,
    }
    (out / "synthetic_info.json").write_text(json.dumps(info, indent=2))
    return out
