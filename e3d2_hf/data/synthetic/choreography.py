"""Choreography: a genre's moves strung on the music's beats, then eased from one key pose to the next.

Every bar the dancer draws a lower-body and an upper-body move from the genre's Markov chains, each
possibly mirrored; the key poses are placed in the world (the dance stays near the middle of the
floor) and interpolated with an ease whose velocity is zero on the beat, so that the hits
(kinematic beats) fall on the music's beats. `choreograph` turns one dance into SMPL parameters.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from e3d2_hf.data.synthetic.genres import BEATS_PER_BAR, Genre
from e3d2_hf.data.synthetic.keys import (
    CHANNELS,
    FREE_CHANNELS,
    MIRROR_SIGN,
    MIRROR_SWAP,
    NUM_CHANNELS,
    SEGMENT_CHANNELS,
    UPPER_INDEX,
    Dancer,
    Keys,
    make_dancer,
    neutral_pose,
    rotate_xz,
)
from e3d2_hf.data.synthetic.moves import LOWER_MOVES, UPPER_MOVES
from e3d2_hf.data.synthetic.pose import FLOOR_CLEARANCE, FOOT_JOINTS, add_capture_noise, solve_pose
from e3d2_hf.motion.skeleton import forward_kinematics

FPS = 60
# Frames a chest pop takes, the torso's fastest move (popping's hits). The reference's `move` relation
# between belly and chest (manual features 4, 5) holds only on frames where the belly -> chest vector
# turns by more than about 0.2 rad (12 rad/s at 60 fps); any slower dance leaves both at 0 everywhere.
SNAP_FRAMES = 2


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
    """`steps` moves along the chain, the first drawn from how often the chain enters each move."""
    state = int(rng.choice(len(names), p=transition.sum(axis=0) / transition.sum()))
    walk = [names[state]]
    for _ in range(steps - 1):
        state = int(rng.choice(len(names), p=transition[state]))
        walk.append(names[state])
    return walk


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
            home = rotate_xz(-origin, np.array(-facing))
            lower_keys.home = math.atan2(home[0], home[1]) * (-1 if lower_mirror else 1)
        lower = LOWER_MOVES[lower_walk[bar]](lower_keys, rng)
        upper = UPPER_MOVES[upper_walk[bar]](Keys(neutral, BEATS_PER_BAR), rng)
        poses, seg = lower.keys.poses.copy(), lower.keys.segments.copy()
        if not lower.whole_body:
            poses[:, UPPER_INDEX] = upper.keys.poses[:, UPPER_INDEX]
            if upper_mirror != lower_mirror:
                upper_only = upper.keys.poses[:, MIRROR_SWAP] * MIRROR_SIGN
                poses[:, UPPER_INDEX] = upper_only[:, UPPER_INDEX]
        travel, turn = np.array(lower.travel), lower.turn
        if lower_mirror:
            poses = poses[:, MIRROR_SWAP] * MIRROR_SIGN
            seg = seg[:, [1, 0, 2]]
            travel, turn = travel * np.array([-1.0, 1.0]), -turn
        scale = dancer.amplitude * genre.amplitude * rng.uniform(0.9, 1.1)
        poses[:, FREE_CHANNELS] = neutral[FREE_CHANNELS] + scale * (poses[:, FREE_CHANNELS] - neutral[FREE_CHANNELS])
        # into the world: feet and pelvis shift relative to the current facing, about the current origin
        yaw = facing + poses[:, CHANNELS["facing"]][:, 0]
        for name in ("foot_l", "foot_r"):
            poses[:, CHANNELS[name]] = origin + rotate_xz(poses[:, CHANNELS[name]], yaw)
        poses[:, CHANNELS["shift"]] = rotate_xz(poses[:, CHANNELS["shift"]], yaw)
        for name in ("yaw_l", "yaw_r"):
            poses[:, CHANNELS[name]] += yaw[:, None]
        poses[:, CHANNELS["facing"]] = yaw[:, None]
        rows = slice(bar * BEATS_PER_BAR, (bar + 1) * BEATS_PER_BAR)
        keys[rows], segments[rows] = poses, seg
        origin = origin + rotate_xz(travel, np.array(facing))
        facing += turn
        names.append(f"{lower_walk[bar]}+{'-' if lower.whole_body else upper_walk[bar]}")
    final = neutral.copy()  # the dance ends in the ready stance
    for name in ("foot_l", "foot_r"):
        final[CHANNELS[name]] = origin + rotate_xz(neutral[CHANNELS[name]], np.array(facing))
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
    # a pop snaps: the chest arrives at its next key pose in the last SNAP_FRAMES frames before the beat
    snap = np.clip((phase - 1.0) * beat_period_frames / SNAP_FRAMES + 1.0, 0.0, 1.0)
    pop = keys[:, CHANNELS["pop"]]
    channels["pop"] = pop[index] + (snap * snap * (3 - 2 * snap))[:, None] * (pop[index + 1] - pop[index])
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
    poses = add_capture_noise(poses, rng).reshape(frames, 72).astype(np.float32)
    joints = forward_kinematics(poses, transl.astype(np.float32))
    lowest = joints[:, FOOT_JOINTS, 1].min(axis=1)
    transl[:, 1] += FLOOR_CLEARANCE + air - lowest
    return poses, transl.astype(np.float32), moves
