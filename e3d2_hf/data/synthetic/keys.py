"""Key poses of the synthetic dancer: the channel layout, the dancer's style and the `Keys` a move writes.

Choreography is written as it is taught, one key pose per beat. A key pose is a vector of named
channels in the dancer's frame (x left, z forward, metres; angles in radians); feet and pelvis shift
are horizontal (x, z). Moves are written left-led and mirrored at random, so the layout also knows
how to mirror a pose (swap the sided channels, negate the lateral quantities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from e3d2_hf.data.synthetic.genres import Genre

# The channels of a key pose and their sizes, in vector order.
_CHANNEL_SIZES = (
    ("shift", 2), ("drop", 1), ("tilt", 1), ("roll", 1), ("twist", 1), ("facing", 1),
    ("foot_l", 2), ("foot_r", 2), ("lift_l", 1), ("lift_r", 1), ("yaw_l", 1), ("yaw_r", 1), ("pitch_l", 1), ("pitch_r", 1),
    ("spine", 3), ("head", 3), ("arm_l", 2), ("arm_r", 2), ("armtwist_l", 1), ("armtwist_r", 1),
    ("elbow_l", 1), ("elbow_r", 1), ("shrug_l", 1), ("shrug_r", 1), ("pop", 1),
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
UPPER_INDEX = np.concatenate([np.arange(NUM_CHANNELS)[CHANNELS[name]] for name in UPPER_CHANNELS])
# Mirroring a move (left <-> right): swap the sided channels, negate lateral quantities.
MIRROR_SWAP = np.arange(NUM_CHANNELS)
for _name, _ in _CHANNEL_SIZES:
    if _name.endswith("_l"):
        MIRROR_SWAP[CHANNELS[_name]] = np.arange(NUM_CHANNELS)[CHANNELS[_name[:-2] + "_r"]]
        MIRROR_SWAP[CHANNELS[_name[:-2] + "_r"]] = np.arange(NUM_CHANNELS)[CHANNELS[_name]]
MIRROR_SIGN = np.ones(NUM_CHANNELS)
for _name, _component in (("shift", 0), ("foot_l", 0), ("foot_r", 0), ("roll", 0), ("twist", 0), ("facing", 0),
                          ("yaw_l", 0), ("yaw_r", 0), ("spine", 1), ("spine", 2), ("head", 1), ("head", 2)):  # fmt: skip
    MIRROR_SIGN[CHANNELS[_name].start + _component] = -1.0
FREE_CHANNELS = np.isin(np.arange(NUM_CHANNELS), np.arange(NUM_CHANNELS)[CHANNELS["facing"]], invert=True)


def arm_at(elevation_degrees: float, azimuth_degrees: float) -> tuple[float, float]:
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
    """A dancer's style drawn from `rng`: the draws' order is part of what a dataset seed reproduces."""
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
    pose[CHANNELS["arm_l"]] = pose[CHANNELS["arm_r"]] = arm_at(-72, 12)
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


def rotate_xz(vector: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Horizontal (x, z) vectors turned by `yaw` about +y (the same rotation as an SMPL root yaw)."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    return np.stack([cos * vector[..., 0] + sin * vector[..., 1], -sin * vector[..., 0] + cos * vector[..., 1]], axis=-1)
