"""The dance moves of the synthetic dataset: each writes the key poses of one bar (four beats).

Lower-body (and whole-body) moves set the feet, pelvis and turns; upper-body moves set arms, spine
and head. Both are left-led (`choreography.py` mirrors them at random); `LOWER_MOVES` and
`UPPER_MOVES` are what a genre's Markov chains draw from.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from e3d2_hf.data.synthetic.keys import CHANNELS, Keys, Move, arm_at


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
        keys.set(beat, arm_l=arm_at(up, 10), arm_r=arm_at(up, 10), elbow_l=0.2, elbow_r=0.2)
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
        keys.set(beat, facing=turn * beat / 4, drop=0.015 + 0.015 * (beat % 2), arm_l=arm_at(5, 20), arm_r=arm_at(5, 20))
        keys.set(beat, elbow_l=0.25, elbow_r=0.25, head=(0.0, 0.0, 0.3))
    return Move(keys, turn=turn, whole_body=True)


def _drop(keys: Keys, rng: np.random.Generator) -> Move:
    """Breaking's drop: the torso snaps down flat over bent knees, both hands to the floor, then the dancer rises."""
    w, depth = keys.stance * 2.0, rng.uniform(0.2, 0.28)
    feet = {"foot_l": (w, 0.0), "foot_r": (-w, 0.0), "yaw_l": 0.45, "yaw_r": -0.45}
    low = {**feet, "drop": depth, "tilt": rng.uniform(0.55, 0.7), "spine": (0.75, 0.0, 0.0), "shift": (0.0, -0.1),
           "head": (-0.4, 0.0, 0.0), "arm_l": arm_at(15, 90), "arm_r": arm_at(15, 90), "elbow_l": 0.2, "elbow_r": 0.2}  # fmt: skip
    keys.set(0, **feet, drop=0.06, tilt=0.12, arm_l=arm_at(-40, 40), arm_r=arm_at(-40, 40), elbow_l=0.8, elbow_r=0.8)
    keys.set(1, **low)
    keys.set(2, **low | {"drop": depth * 0.9, "tilt": low["tilt"] * 0.95})  # hands on the floor
    keys.set(3, **feet, drop=0.08, tilt=0.2, spine=(0.25, 0.0, 0.0), arm_l=arm_at(-50, 30), arm_r=arm_at(-50, 30), elbow_l=0.6, elbow_r=0.6)
    return Move(keys, whole_body=True)


def _body_roll(keys: Keys, rng: np.random.Generator) -> Move:
    """A body roll: the chest leads forward, then the hips push forward while the chest leans back."""
    size = rng.uniform(0.8, 1.1)
    for beat in range(4):
        if beat % 2 == 0:
            keys.set(beat, spine=(0.3 * size, 0.0, 0.0), tilt=0.1 * size, shift=(0.0, -0.05 * size), drop=0.04, head=(0.1, 0.0, 0.0))
        else:
            keys.set(beat, spine=(-0.3 * size, 0.0, 0.0), tilt=-0.28 * size, shift=(0.0, 0.12 * size), drop=0.08, head=(-0.15, 0.0, 0.0))
        keys.set(beat, arm_l=arm_at(-55, 35 if beat % 2 else 10), arm_r=arm_at(-55, 35 if beat % 2 else 10), elbow_l=1.0, elbow_r=1.0)
    return Move(keys, whole_body=True)


# Upper-body moves.
def _arm_wave(keys: Keys, rng: np.random.Generator) -> Move:
    high, low = rng.uniform(40, 80), rng.uniform(-50, -20)
    for beat in range(4):
        up = beat % 2 == 0
        keys.set(beat, arm_l=arm_at(high if up else low, 20), arm_r=arm_at(low if up else high, 20), elbow_l=0.2, elbow_r=0.2,
                 spine=(0.05, 0.1 if up else -0.1, 0.0), head=(0.0, 0.08 if up else -0.08, 0.0))  # fmt: skip
    return Move(keys)


def _pump(keys: Keys, rng: np.random.Generator) -> Move:
    both = rng.random() < 0.5
    for beat in range(4):
        hit = beat % 2 == 0
        keys.set(beat, arm_l=arm_at(70 if hit else 10, 30), elbow_l=0.2 if hit else 1.9, armtwist_l=1.2, shrug_l=0.15 * hit)
        if both:
            keys.set(beat, arm_r=arm_at(70 if hit else 10, 30), elbow_r=0.2 if hit else 1.9, armtwist_r=1.2, shrug_r=0.15 * hit)
    return Move(keys)


def _punch(keys: Keys, rng: np.random.Generator) -> Move:
    height = rng.uniform(-5, 20)
    for beat in range(4):
        left = beat % 2 == 0
        keys.set(beat, arm_l=arm_at(height, 85) if left else arm_at(-60, 70), elbow_l=0.1 if left else 2.0,
                 arm_r=arm_at(height, 85) if not left else arm_at(-60, 70), elbow_r=0.1 if not left else 2.0,
                 spine=(0.08, 0.0, 0.25 if not left else -0.25))  # fmt: skip
    return Move(keys)


def _clap(keys: Keys, rng: np.random.Generator) -> Move:
    height = rng.uniform(-10, 30)
    for beat in range(4):
        closed = beat % 2 == 1
        arm = arm_at(height, 88) if closed else arm_at(height - 20, 25)
        keys.set(beat, arm_l=arm, arm_r=arm, elbow_l=0.5 if closed else 1.2, elbow_r=0.5 if closed else 1.2,
                 head=(0.1 * closed, 0.0, 0.0))  # fmt: skip
    return Move(keys)


def _point(keys: Keys, rng: np.random.Generator) -> Move:
    """Disco point: the left arm points up and across on the beat, then to the hip."""
    for beat in range(4):
        up = beat % 2 == 0
        keys.set(beat, arm_l=arm_at(55, 60) if up else arm_at(-55, 20), elbow_l=0.05 if up else 1.4,
                 arm_r=arm_at(-60, 15), elbow_r=1.5, head=(-0.15 * up, 0.0, 0.4 * up), spine=(0.0, 0.1 * up, 0.15 * up))  # fmt: skip
    return Move(keys)


def _reach(keys: Keys, rng: np.random.Generator) -> Move:
    for beat in range(4):
        left = beat % 2 == 0
        keys.set(beat, arm_l=arm_at(80, 20) if left else arm_at(-30, 40), arm_r=arm_at(80, 20) if not left else arm_at(-30, 40),
                 elbow_l=0.1 if left else 0.7, elbow_r=0.1 if not left else 0.7,
                 spine=(0.0, -0.2 if left else 0.2, 0.0), head=(-0.1, 0.0, 0.2 if left else -0.2))  # fmt: skip
    return Move(keys)


def _lock(keys: Keys, rng: np.random.Generator) -> Move:
    """Locking: arms snap forward, freeze, then fold in; the torso locks forward on the downbeat."""
    for beat in range(4):
        phase = beat % 4
        if phase == 0:
            keys.set(beat, arm_l=arm_at(0, 80), arm_r=arm_at(0, 80), elbow_l=0.05, elbow_r=0.05, spine=(0.25, 0.0, 0.0))
        elif phase == 1:
            keys.set(beat, arm_l=arm_at(-20, 40), arm_r=arm_at(-20, 40), elbow_l=2.1, elbow_r=2.1, armtwist_l=0.8, armtwist_r=0.8)
        elif phase == 2:
            keys.set(beat, arm_l=arm_at(60, 30), arm_r=arm_at(-60, 20), elbow_l=0.3, elbow_r=1.6, head=(-0.1, 0.0, 0.3))
        else:
            keys.set(beat, arm_l=arm_at(-60, 20), arm_r=arm_at(60, 30), elbow_l=1.6, elbow_r=0.3, head=(-0.1, 0.0, -0.3))
    return Move(keys)


def _chest_pop(keys: Keys, rng: np.random.Generator) -> Move:
    for beat in range(4):
        pop = beat % 2 == 0
        keys.set(beat, arm_l=arm_at(-40, 60), arm_r=arm_at(-40, 60), elbow_l=1.6, elbow_r=1.6,
                 spine=(-0.15 if pop else 0.15, 0.0, 0.0), head=(0.15 if pop else -0.05, 0.0, 0.0),
                 shrug_l=0.12 * pop, shrug_r=0.12 * pop)  # fmt: skip
    return Move(keys)


def _pop(keys: Keys, rng: np.random.Generator) -> Move:
    """Popping's hits: the chest pops forward on the beat in a flash (SNAP_FRAMES) and back on the next, arms in a frame."""
    size = rng.uniform(0.4, 0.5)
    for beat in range(4):
        hit = beat % 2 == 0
        keys.set(beat, pop=size * hit, arm_l=arm_at(-20, 50), arm_r=arm_at(-20, 50), elbow_l=1.5 + 0.2 * hit, elbow_r=1.5 + 0.2 * hit,
                 head=(-0.1 * hit, 0.0, 0.0))  # fmt: skip
    return Move(keys)


def _shrug(keys: Keys, rng: np.random.Generator) -> Move:
    for beat in range(4):
        left = beat % 2 == 0
        keys.set(beat, arm_l=arm_at(-30, 30), arm_r=arm_at(-30, 30), elbow_l=1.3, elbow_r=1.3,
                 shrug_l=0.3 if left else 0.0, shrug_r=0.0 if left else 0.3, head=(0.0, 0.15 if left else -0.15, 0.0))  # fmt: skip
    return Move(keys)


def _roll(keys: Keys, rng: np.random.Generator) -> Move:
    """Rolling arms: forearms circle in front of the chest (up/out on one beat, down/in on the next)."""
    for beat in range(4):
        up = beat % 2 == 0
        keys.set(beat, arm_l=arm_at(-10 if up else -45, 70 if up else 50), arm_r=arm_at(-45 if up else -10, 50 if up else 70),
                 elbow_l=1.2 if up else 1.9, elbow_r=1.9 if up else 1.2, spine=(0.1, 0.0, 0.1 if up else -0.1))  # fmt: skip
    return Move(keys)


def _arm_swing(keys: Keys, rng: np.random.Generator) -> Move:
    """Relaxed arms swinging forward and back in opposition, with the groove."""
    size = rng.uniform(25, 45)
    for beat in range(4):
        sign = (-1) ** beat
        keys.set(beat, arm_l=arm_at(-60, 20 + sign * size), arm_r=arm_at(-60, 20 - sign * size),
                 elbow_l=0.9, elbow_r=0.9, spine=(0.06, 0.0, 0.1 * sign))  # fmt: skip
    return Move(keys)


def _arms_out(keys: Keys, rng: np.random.Generator) -> Move:
    """Jazz arms: open to the side on one beat, rounded in front (first position) on the next."""
    for beat in range(4):
        open_ = beat % 2 == 0
        keys.set(beat, arm_l=arm_at(10, 15) if open_ else arm_at(-25, 75), arm_r=arm_at(10, 15) if open_ else arm_at(-25, 75),
                 elbow_l=0.2 if open_ else 0.9, elbow_r=0.2 if open_ else 0.9, head=(-0.15 * open_, 0.0, 0.0),
                 spine=(-0.08 * open_, 0.0, 0.0))  # fmt: skip
    return Move(keys)


LOWER_MOVES: dict[str, Callable[[Keys, np.random.Generator], Move]] = {
    "step_touch": _step_touch, "march": _march, "bounce": _bounce, "squat": _squat, "jump": _jump, "kick": _kick,
    "lunge": _lunge, "sway": _sway, "twist": _twist, "rock": _rock, "heel_tap": _heel_tap, "shuffle": _shuffle,
    "travel": _travel, "turn": _turn, "drop": _drop, "body_roll": _body_roll,
}  # fmt: skip
UPPER_MOVES: dict[str, Callable[[Keys, np.random.Generator], Move]] = {
    "arm_wave": _arm_wave, "pump": _pump, "punch": _punch, "clap": _clap, "point": _point, "reach": _reach,
    "lock": _lock, "chest_pop": _chest_pop, "pop": _pop, "shrug": _shrug, "roll": _roll, "swing": _arm_swing, "arms_out": _arms_out,
}  # fmt: skip
