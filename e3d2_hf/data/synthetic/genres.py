"""The five genres of the synthetic dataset: how each one's music sounds and how it is danced.

One table drives both the composer (`music.py`) and the choreographer (`choreography.py`), so that
a genre's tempo, groove and moves belong together as they do in AIST++'s genres.
"""

from __future__ import annotations

from dataclasses import dataclass

BEATS_PER_BAR = 4
STEPS_PER_BAR = 16  # sixteenth notes


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
        lower_moves={"bounce": 2, "kick": 2, "jump": 1.5, "squat": 1.5, "lunge": 1, "step_touch": 1, "turn": 0.7, "rock": 1, "drop": 2},
        upper_moves={"pump": 2, "punch": 2, "swing": 1, "point": 1, "arm_wave": 1},
        amplitude=1.1, hit_width=0.7, bounce=0.025, bounce_on_beat=True, nod=0.18, chest=0.0, crouch=0.03, lean=0.2, stance=1.4,
    ),  # fmt: skip
    Genre(
        "PO", (100, 116), 0.0,
        kick="x.......x.o.....", snare="....x.......x...", hat="x.o.x.o.x.o.x.o.", open_hat="................",
        snare_sound="clap", hat_sound="hat", bass="R.R.R.R.5.5.O.O.", bass_harmonics=(1.0, 0.0, 0.33, 0.0, 0.2),
        chords="x-------x-------", chord_harmonics=(1.0, 0.5, 0.3, 0.2), chord_decay=1.0, minor=False,
        progressions=((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4)), sevenths=False, fills=True,
        lower_moves={"step_touch": 2, "rock": 2, "sway": 1, "heel_tap": 1.5, "bounce": 1, "twist": 1, "body_roll": 1.5},
        upper_moves={"chest_pop": 2, "pop": 3, "shrug": 2, "arm_wave": 2, "punch": 1, "point": 1},
        amplitude=0.9, hit_width=0.35, bounce=0.01, bounce_on_beat=False, nod=0.08, chest=0.12, crouch=0.0, lean=-0.03, stance=1.0,
    ),  # fmt: skip
    Genre(
        "LO", (108, 124), 0.1,
        kick="x..o....x..o....", snare="....x.......x...", hat="xoooxoooxoooxooo", open_hat="......o.......o.",
        snare_sound="snare", hat_sound="hat", bass="R..O..R.5..R.7..", bass_harmonics=(1.0, 0.6, 0.4, 0.3, 0.2),
        chords="....x.....x.x...", chord_harmonics=(1.0, 0.7, 0.5, 0.3), chord_decay=9.0, minor=False,
        progressions=((0, 3, 0, 4), (0, 0, 3, 3), (1, 4, 0, 0)), sevenths=True, fills=True,
        lower_moves={"kick": 2, "heel_tap": 2, "step_touch": 1, "squat": 1, "jump": 1, "march": 1},
        upper_moves={"lock": 3, "point": 3, "clap": 2, "pump": 1, "pop": 1.5},
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
        lower_moves={"march": 2, "bounce": 2, "shuffle": 2, "step_touch": 2, "travel": 1, "twist": 1, "body_roll": 1},
        upper_moves={"swing": 3, "clap": 2, "roll": 1, "pump": 1},
        amplitude=1.0, hit_width=0.8, bounce=0.03, bounce_on_beat=True, nod=0.12, chest=0.03, crouch=0.02, lean=0.12, stance=1.0,
    ),  # fmt: skip
)
