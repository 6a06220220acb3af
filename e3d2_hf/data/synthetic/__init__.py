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

Capture, measured. Real capture is neither smooth nor slow, and the metrics notice: a feature that
no ground-truth dance ever shows has zero variance, and the protocol's normalisation by the ground
truth's std + 1e-10 turns any generated deviation in it into 1e10. `e3d2_hf.motion.capture`
measures the jitter (robust spread of the fourth frame difference at 30 fps, mm per axis) and the
torso (pelvis speed m/s, turning rate of pelvis -> neck rad/s, its lean from vertical in degrees;
median / p90 / p99 / max) of the Bandai-Namco capture read with our BVH importer:

    python scripts/capture_statistics.py ../shared/data/mocap/bandai-namco/dataset-1_{dance-short,walk}_normal_001.bvh \
        --synthetic 24 --features

| clips | jitter | pelvis speed | torso turn | torso lean |
|---|---|---|---|---|
| Bandai-Namco dance-short (63 s) | 0.250 | 0.46 / 1.10 / 1.70 / 2.03 | 0.48 / 1.56 / 2.90 / 3.95 | 5.9 / 26.0 / 77.7 / 79.3 |
| Bandai-Namco walk (6.5 s) | 0.249 | 1.21 / 1.66 / 1.74 / 1.83 | 0.33 / 0.61 / 0.72 / 0.78 | 2.1 / 3.8 / 5.3 / 5.6 |
| this generator, 24 sequences, seed 0 | 0.264 | 0.15 / 0.74 / 1.75 / 2.91 | 0.20 / 0.70 / 3.26 / 6.60 | 5.6 / 16.0 / 31.6 / 75.3 |

(The bow, a slow 4.6 s capture, measures 0.005 mm: that capture was smoothed.) So every joint
rotation gets white noise (`pose.ROTATION_JITTER`, calibrated to that jitter; knees and elbows stay
hinges), and the torso moves as dancers move it. `--features` scores the reference's 32 manual
relations on the real dance's six 10 s windows (its joints mapped onto SMPL's by name): the torso
leans past 70 degrees (manual feature 28), a wrist comes within 31 cm of the lowest joint (29, 30)
and the pelvis passes 12.8 cm ahead of the plane of ankles and neck (27), each on one window; no
synthetic dance did any of these once. Now breaking's drops lean the torso to about 75 degrees with
both hands near the floor, and body rolls push the pelvis forward. Manual features 4 and 5
(`move belly chest chest r/lwrist`) hold on none of the real windows: they need the belly -> chest
vector to turn by 0.2 rad within one 60 fps frame, faster than this dancer's torso ever turns
(4 rad/s); popping's chest pops (`choreography.SNAP_FRAMES`) do it for a frame or two (hence the
synthetic maximum of 6.6 rad/s). Every kinetic
and manual feature then varies over the ground truth. The synthetic pelvis still moves slower than
the real dancer's (median 0.15 vs 0.46 m/s): the synthetic dancer holds each key pose around the beat.

SMPL axes: y up, the body faces +z, its left is +x. Names follow AIST++
(`gBR_sBM_cAll_d04_mBR0_ch01`: genre BR, dancer 04, music mBR0). As in AIST++'s cross-modal split,
validation and test music is never danced to in training, and each held-out piece is danced once.

One job per module: `genres` (the style table), `music` (composing and synthesising), `keys` (the
key-pose channels and the dancer), `moves` (the dance moves), `choreography` (Markov chains, key
poses on the beats, easing between them), `pose` (channels -> SMPL parameters, leg IK) and `dataset`
(pieces, splits and the files on disk).
"""

from __future__ import annotations

from e3d2_hf.data.synthetic.choreography import FPS, choreograph, markov_chain
from e3d2_hf.data.synthetic.dataset import SMPL_SCALING, generate_synthetic_aistpp
from e3d2_hf.data.synthetic.genres import GENRES, Genre
from e3d2_hf.data.synthetic.keys import Dancer, make_dancer, neutral_pose
from e3d2_hf.data.synthetic.moves import LOWER_MOVES, UPPER_MOVES
from e3d2_hf.data.synthetic.music import SAMPLE_RATE, compose_music
from e3d2_hf.data.synthetic.pose import CAPTURE_JITTER, FLOOR_CLEARANCE, FOOT_JOINTS

__all__ = [
    "CAPTURE_JITTER",
    "FLOOR_CLEARANCE",
    "FOOT_JOINTS",
    "FPS",
    "GENRES",
    "LOWER_MOVES",
    "SAMPLE_RATE",
    "SMPL_SCALING",
    "UPPER_MOVES",
    "Dancer",
    "Genre",
    "choreograph",
    "compose_music",
    "generate_synthetic_aistpp",
    "make_dancer",
    "markov_chain",
    "neutral_pose",
]
