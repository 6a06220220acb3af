"""The embedded default dataset: procedurally composed music and dances that follow it, in the AIST++ layout.

Without AIST++ (not downloadable everywhere, and its music has its own terms), the pipeline still
needs paired music and motion in which the music *matters*: this generator writes a small dataset
whose dances are beat-synchronous and genre-dependent, in exactly the layout of the AIST++ download
(`motions/<sequence>.pkl`, `splits/crossmodal_{train,val,test}.txt`, `ignore_list.txt`,
`wavs/<music_id>.wav`), so the real reader path runs on it.

- Music: per piece a genre (tempo range, drum pattern, bass and chord timbre), a tempo and a chord
  progression; drums, bass and a chord pad synthesised at 22050 Hz.
- Dance: every bar (4 beats) one lower-body move and one upper-body move from the genre's
  repertoire (steps, bounces, squats, jumps, kicks, hip sways; arm waves, pumps, claps, reaches,
  turns). Each move is a smooth joint-angle curve of the beat phase whose extremes (speed minima)
  fall on the beats; moves cross-fade at bar boundaries. Each dancer has their own amplitude,
  sharpness and mirroring. Joint angles stay within human limits (knees and elbows bend one way).
- Feet on the floor: after forward kinematics the root height is set so the lowest foot joint rests
  at `FLOOR_CLEARANCE` above y = 0, except while jumping.

Names follow AIST++ (`gBR_sBM_cAll_d04_mBR0_ch01`: genre BR, dancer 04, music mBR0). Like AIST++'s
cross-modal split, validation and test music is never danced to in training.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from e3d2_hf.skeleton import forward_kinematics

FPS = 60
SAMPLE_RATE = 22050
SMPL_SCALING = 93.0  # AIST++ stores translations in this scaled unit (its smpl_scaling is ~90-100)
FLOOR_CLEARANCE = 0.05  # height of the lowest foot joint above the floor, metres (the sole is below it)
FOOT_JOINTS = (7, 8, 10, 11)


@dataclass(frozen=True)
class Genre:
    code: str
    tempo: tuple[float, float]  # bpm range
    kick: tuple[int, ...]  # kick on these eighth-notes of a bar
    snare: tuple[int, ...]
    hat_eighths: bool  # hats on every eighth (else quarters)
    bass_wave: str  # "sine", "square" or "saw"
    lower_moves: tuple[str, ...]
    upper_moves: tuple[str, ...]
    energy: float  # overall movement amplitude


GENRES: tuple[Genre, ...] = (
    Genre("BR", (100, 120), (0, 3, 4), (2, 6), True, "square", ("bounce", "step", "kick", "jump"), ("pump", "wave", "turn"), 1.1),
    Genre("PO", (90, 110), (0, 4), (2, 6), False, "saw", ("step", "sway", "bounce"), ("reach", "pump", "clap"), 0.8),
    Genre("LO", (120, 140), (0, 2, 4, 6), (2, 6), True, "square", ("jump", "bounce", "kick"), ("wave", "clap", "pump"), 1.0),
    Genre("JZ", (80, 100), (0, 5), (2, 6), True, "sine", ("sway", "squat", "step"), ("reach", "wave", "turn"), 0.7),
    Genre("HO", (115, 130), (0, 2, 4, 6), (4,), True, "sine", ("step", "bounce", "sway"), ("clap", "reach", "pump"), 0.9),
)


# ----------------------------------------------------------------------------------------------
# Music
# ----------------------------------------------------------------------------------------------
def _tone(freq: float, seconds: float, wave: str) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * freq * t
    if wave == "square":
        signal = np.sign(np.sin(phase)) * 0.6
    elif wave == "saw":
        signal = 2 * ((freq * t) % 1.0) - 1
    else:
        signal = np.sin(phase)
    return signal * np.exp(-3.0 * t)


def _drum(kind: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.25 * SAMPLE_RATE)) / SAMPLE_RATE
    if kind == "kick":
        return np.sin(2 * np.pi * (50 + 100 * np.exp(-30 * t)) * t) * np.exp(-12 * t)
    noise = rng.standard_normal(t.size)
    if kind == "snare":
        return (0.6 * noise + 0.4 * np.sin(2 * np.pi * 190 * t)) * np.exp(-20 * t) * 0.7
    return noise * np.exp(-80 * t) * 0.25  # hat


def _add(track: np.ndarray, sound: np.ndarray, at: float) -> None:
    start = int(at * SAMPLE_RATE)
    end = min(track.size, start + sound.size)
    if start < track.size:
        track[start:end] += sound[: end - start]


def compose_music(genre: Genre, bpm: float, seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A piece of `seconds` at `bpm`: (audio at SAMPLE_RATE, beat times in seconds)."""
    beat = 60.0 / bpm
    track = np.zeros(int(seconds * SAMPLE_RATE) + SAMPLE_RATE)
    roots = 55.0 * 2 ** (rng.choice([0, 2, 3, 5, 7, 8, 10], size=4) / 12.0)  # a 4-chord progression, in A
    sounds = {kind: _drum(kind, rng) for kind in ("kick", "snare", "hat")}
    bars = int(math.ceil(seconds / (4 * beat)))
    for bar in range(bars):
        root = roots[bar % 4]
        for eighth in range(8):
            at = bar * 4 * beat + eighth * beat / 2
            if eighth in genre.kick:
                _add(track, sounds["kick"], at)
            if eighth in genre.snare:
                _add(track, sounds["snare"], at)
            if genre.hat_eighths or eighth % 2 == 0:
                _add(track, sounds["hat"], at)
            if eighth % 2 == 0:
                _add(track, 0.35 * _tone(root * (2 if eighth == 4 else 1), beat * 0.9, genre.bass_wave), at)
        chord = sum(_tone(root * 4 * 2 ** (step / 12.0), 4 * beat, "sine") for step in (0, 4, 7))
        _add(track, 0.08 * chord, bar * 4 * beat)
    track = track[: int(seconds * SAMPLE_RATE)]
    track = track / (np.abs(track).max() + 1e-9) * 0.8
    beats = np.arange(0.0, seconds, beat)
    return track.astype(np.float32), beats


# ----------------------------------------------------------------------------------------------
# Dance: each move maps (beat index, phase in [0, 1)) to joint angles; extremes fall on the beats.
# Angles in radians about SMPL's parent-frame axes (rest pose: T-pose, y up, facing +z, left = +x).
# ----------------------------------------------------------------------------------------------
L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3 = 1, 2, 3, 4, 5, 6, 7, 8, 9
NECK, L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW = 12, 13, 14, 15, 16, 17, 18, 19


def _ease(phase: np.ndarray) -> np.ndarray:
    """0 at the beat, 1 half-way, 0 at the next beat, with zero speed at both beats."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * phase)


def _alternate(beat_index: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """-1 on even beats, +1 on odd beats, moving smoothly in between (speed zero on each beat)."""
    return -np.cos(np.pi * (beat_index + phase))


def lower_body_move(name: str, beat_index: np.ndarray, phase: np.ndarray, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """(poses (T,24,3), root offset (T,3)) of a lower-body move."""
    poses = np.zeros((phase.size, 24, 3))
    root = np.zeros((phase.size, 3))
    dip = _ease(phase) * amplitude
    side = _alternate(beat_index, phase)
    if name == "bounce":  # knees give on the off-beat, straight on the beat
        poses[:, [L_HIP, R_HIP], 0] = -0.45 * dip[:, None]
        poses[:, [L_KNEE, R_KNEE], 0] = 0.9 * dip[:, None]
        poses[:, [L_ANKLE, R_ANKLE], 0] = -0.45 * dip[:, None]
    elif name == "step":  # alternate feet lift between beats, land on the beat
        left = dip * (beat_index % 2 == 0)
        right = dip * (beat_index % 2 == 1)
        poses[:, L_HIP, 0], poses[:, L_KNEE, 0] = -0.7 * left, 1.2 * left
        poses[:, R_HIP, 0], poses[:, R_KNEE, 0] = -0.7 * right, 1.2 * right
        root[:, 0] = 0.06 * side * amplitude
    elif name == "squat":  # a slow squat over two beats
        deep = (0.5 - 0.5 * np.cos(np.pi * (beat_index % 2 + phase))) * amplitude
        poses[:, [L_HIP, R_HIP], 0] = -0.9 * deep[:, None]
        poses[:, [L_KNEE, R_KNEE], 0] = 1.6 * deep[:, None]
        poses[:, [L_ANKLE, R_ANKLE], 0] = -0.6 * deep[:, None]
        poses[:, SPINE1, 0] = 0.3 * deep
    elif name == "jump":  # crouch on the beat, airborne half-way
        crouch = (1 - _ease(phase)) * amplitude * 0.5
        poses[:, [L_HIP, R_HIP], 0] = -0.5 * crouch[:, None]
        poses[:, [L_KNEE, R_KNEE], 0] = 1.0 * crouch[:, None]
        root[:, 1] = 0.18 * np.sin(np.pi * phase) ** 2 * amplitude
    elif name == "kick":  # one leg kicks forward between beats, alternating
        left = dip * (beat_index % 2 == 0)
        right = dip * (beat_index % 2 == 1)
        poses[:, L_HIP, 0], poses[:, L_KNEE, 0] = -1.1 * left, 0.3 * left
        poses[:, R_HIP, 0], poses[:, R_KNEE, 0] = -1.1 * right, 0.3 * right
    elif name == "sway":  # hips sway side to side, one side per beat
        poses[:, 0, 2] = 0.12 * side * amplitude
        poses[:, [L_HIP, R_HIP], 2] = -0.12 * side[:, None] * amplitude
        poses[:, [L_KNEE, R_KNEE], 0] = 0.25 * dip[:, None]
        poses[:, [L_HIP, R_HIP], 0] = -0.12 * dip[:, None]
        root[:, 0] = 0.08 * side * amplitude
    else:
        raise ValueError(f"unknown lower-body move {name}")
    return poses, root


def upper_body_move(name: str, beat_index: np.ndarray, phase: np.ndarray, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """(poses (T,24,3), root yaw (T,)) of an upper-body move; arms rest at the sides otherwise."""
    poses = np.zeros((phase.size, 24, 3))
    yaw = np.zeros(phase.size)
    poses[:, L_SHOULDER, 2], poses[:, R_SHOULDER, 2] = -1.2, 1.2  # arms down
    side = _alternate(beat_index, phase)
    dip = _ease(phase) * amplitude
    if name == "wave":  # arms rise and fall in opposition, one extreme per beat
        poses[:, L_SHOULDER, 2] = -0.6 + 0.8 * side * amplitude
        poses[:, R_SHOULDER, 2] = 0.6 + 0.8 * side * amplitude
        poses[:, [SPINE2, SPINE3], 2] = 0.08 * side[:, None] * amplitude
    elif name == "pump":  # fists pump: elbows flex between beats, punch out on the beat
        poses[:, L_SHOULDER, 2], poses[:, R_SHOULDER, 2] = -0.9, 0.9
        poses[:, L_SHOULDER, 1], poses[:, R_SHOULDER, 1] = -0.6, 0.6
        poses[:, L_ELBOW, 1] = -1.8 * dip
        poses[:, R_ELBOW, 1] = 1.8 * dip
        poses[:, SPINE3, 0] = 0.1 * dip
    elif name == "clap":  # hands meet in front on the beat
        spread = _ease(phase) * amplitude
        poses[:, L_SHOULDER, 1] = -(1.3 - 0.8 * spread)
        poses[:, R_SHOULDER, 1] = 1.3 - 0.8 * spread
        poses[:, L_SHOULDER, 2], poses[:, R_SHOULDER, 2] = -0.5, 0.5
        poses[:, L_ELBOW, 1], poses[:, R_ELBOW, 1] = -0.4, 0.4
    elif name == "reach":  # one arm reaches up per beat, alternating
        left = (1 - side) / 2 * amplitude
        right = (1 + side) / 2 * amplitude
        poses[:, L_SHOULDER, 2] = -1.2 + 2.2 * right
        poses[:, R_SHOULDER, 2] = 1.2 - 2.2 * left
        poses[:, [SPINE2, SPINE3], 2] = 0.1 * side[:, None] * amplitude
        poses[:, HEAD, 0] = -0.15 * (left + right)
    elif name == "turn":  # a quarter turn per beat, arms out
        yaw = (np.pi / 2) * (beat_index + (phase - np.sin(2 * np.pi * phase) / (2 * np.pi)))
        poses[:, L_SHOULDER, 2], poses[:, R_SHOULDER, 2] = -0.4, 0.4
    else:
        raise ValueError(f"unknown upper-body move {name}")
    return poses, yaw


def _mirror(poses: np.ndarray, root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Swap left and right (the same move, led by the other side)."""
    from e3d2_hf.skeleton import SMPL_JOINT_NAMES

    swap = [SMPL_JOINT_NAMES.index(n.replace("left", "#").replace("right", "left").replace("#", "right")) for n in SMPL_JOINT_NAMES]
    mirrored = poses[:, swap] * np.array([1.0, -1.0, -1.0])  # reflect x: negate y and z rotation components
    return mirrored, root * np.array([-1.0, 1.0, 1.0])


def choreograph(genre: Genre, beats: np.ndarray, frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SMPL poses (T,72) and translations in metres (T,3) of one dancer for one piece."""
    beat_period = beats[1] - beats[0]
    time = np.arange(frames) / FPS
    beat_position = time / beat_period
    beat_index = np.floor(beat_position)
    phase = beat_position - beat_index
    bar = (beat_index // 4).astype(int)
    amplitude = genre.energy * rng.uniform(0.75, 1.15)
    mirrored = rng.random() < 0.5
    poses = np.zeros((frames, 24, 3))
    root = np.zeros((frames, 3))
    yaw = np.zeros(frames)
    lower_choice = rng.choice(genre.lower_moves, size=bar.max() + 1)
    upper_choice = rng.choice(genre.upper_moves, size=bar.max() + 1)
    facing = 0.0
    for index in range(bar.max() + 1):
        # the bar plus a quarter beat either side, cross-faded with its neighbours
        weight = np.clip(1 - np.maximum(np.abs(beat_position - (4 * index + 2)) - 2, 0) / 0.25, 0, 1)
        weight = np.where(beat_position < 2, np.where(index == 0, 1.0, weight), weight)
        active = weight > 0
        if not active.any():
            continue
        scale = amplitude * rng.uniform(0.85, 1.1)
        lower_poses, lower_root = lower_body_move(lower_choice[index], beat_index[active], phase[active], scale)
        upper_poses, upper_yaw = upper_body_move(upper_choice[index], beat_index[active], phase[active], scale)
        move_poses = lower_poses + upper_poses
        if mirrored ^ (index % 2 == 1 and rng.random() < 0.3):
            move_poses, lower_root = _mirror(move_poses, lower_root)
            upper_yaw = -upper_yaw
        if upper_choice[index] == "turn":
            upper_yaw = upper_yaw - upper_yaw[0]  # turns start from the current facing
        w = weight[active, None]
        poses[active] += w[..., None] * move_poses
        root[active] += w * lower_root
        yaw[active] += weight[active] * (facing + upper_yaw)
        if upper_choice[index] == "turn":
            facing += upper_yaw[-1]
    poses[:, 0, 1] = yaw  # the root's facing (a small hip roll from `sway` stays in poses[:, 0, 2])
    # knees and elbows bend one way only
    poses[:, [L_KNEE, R_KNEE], 0] = np.clip(poses[:, [L_KNEE, R_KNEE], 0], 0.0, 2.3)
    poses[:, L_ELBOW, 1] = np.clip(poses[:, L_ELBOW, 1], -2.4, 0.0)
    poses[:, R_ELBOW, 1] = np.clip(poses[:, R_ELBOW, 1], 0.0, 2.4)
    poses += rng.normal(0, 0.01, size=(1, 24, 3))  # the dancer's own posture
    # world translation: the moves' local offsets rotated by the facing, plus a slow drift
    cos, sin = np.cos(yaw), np.sin(yaw)
    world = np.stack([cos * root[:, 0] + sin * root[:, 2], root[:, 1], -sin * root[:, 0] + cos * root[:, 2]], axis=-1)
    drift = np.cumsum(rng.normal(0, 0.0015, size=(frames, 3)) * np.array([1, 0, 1]), axis=0)
    transl = world + drift
    poses = poses.reshape(frames, 72).astype(np.float32)
    joints = forward_kinematics(poses, transl.astype(np.float32))
    lowest = joints[:, FOOT_JOINTS, 1].min(axis=1)
    airborne = root[:, 1]
    transl[:, 1] += FLOOR_CLEARANCE - lowest + airborne
    return poses, transl.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The dataset in the AIST++ layout
# ----------------------------------------------------------------------------------------------
def _split_music(music_ids: list[str], rng: np.random.Generator) -> dict[str, str]:
    """Assign whole pieces of music to splits (cross-modal: held-out music is never trained on)."""
    order = list(rng.permutation(music_ids))
    held_out = max(2, round(0.2 * len(order)))
    return {music_id: ("val" if i % 2 == 0 else "test") if i < held_out else "train" for i, music_id in enumerate(order)}


def generate_synthetic_aistpp(
    out_dir: str | os.PathLike, num_sequences: int, seed: int = 0, seconds: tuple[float, float] = (8.0, 16.0)
) -> Path:
    """Write `num_sequences` paired dances and music in the AIST++ layout into `out_dir` (may exist, empty)."""
    if num_sequences < 3:
        raise ValueError("need at least 3 sequences (one per split)")
    out = Path(out_dir)
    for folder in ("motions", "splits", "wavs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_pieces = max(3, int(math.ceil(num_sequences / 2)))  # about two dancers per piece, as in AIST++
    pieces = []
    for piece in range(num_pieces):
        genre = GENRES[piece % len(GENRES)]
        music_id = f"m{genre.code}{piece // len(GENRES)}"
        bpm = float(rng.uniform(*genre.tempo))
        length = float(rng.uniform(*seconds))
        audio, beats = compose_music(genre, bpm, length, rng)
        soundfile.write(out / "wavs" / f"{music_id}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        pieces.append((genre, music_id, bpm, length, beats))
    split_of_music = _split_music([p[1] for p in pieces], rng)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for index in range(num_sequences):
        genre, music_id, bpm, length, beats = pieces[index % num_pieces]
        dancer = index // num_pieces + 1 + (index % 3) * 3
        name = f"g{genre.code}_sBM_cAll_d{dancer:02d}_{music_id}_ch{index + 1:02d}"
        poses, transl = choreograph(genre, beats, int(length * FPS), np.random.default_rng([seed, index]))
        motion = {"smpl_poses": poses, "smpl_trans": transl * SMPL_SCALING, "smpl_scaling": np.array([SMPL_SCALING], np.float32)}
        with open(out / "motions" / f"{name}.pkl", "wb") as handle:
            pickle.dump(motion, handle)
        splits[split_of_music[music_id]].append(name)
    for split, names in splits.items():
        (out / "splits" / f"crossmodal_{split}.txt").write_text("".join(f"{n}\n" for n in names))
    (out / "ignore_list.txt").write_text("")
    info = {
        "generator": "e3d2_hf.data.synthetic",
        "seed": seed,
        "fps": FPS,
        "music": {music_id: {"genre": genre.code, "bpm": round(bpm, 3), "seconds": round(length, 3)} for genre, music_id, bpm, length, _ in pieces},
    }
    (out / "synthetic_info.json").write_text(json.dumps(info, indent=2))
    return out
