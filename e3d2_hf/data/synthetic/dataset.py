"""The synthetic dataset on disk: pieces of music, dances to them and cross-modal splits, in the AIST++ layout.

`generate_synthetic_aistpp` writes `motions/<sequence>.pkl`, `splits/crossmodal_{train,val,test}.txt`,
`ignore_list.txt` and `wavs/<music_id>.wav` exactly as the AIST++ download lays them out, so the real
reader path runs on it. Names follow AIST++ (`gBR_sBM_cAll_d04_mBR0_ch01`: genre BR, dancer 04,
music mBR0). As in AIST++'s cross-modal split, validation and test music is never danced to in training,
and each held-out piece is danced once.
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

from e3d2_hf.data.synthetic.choreography import FPS, choreograph
from e3d2_hf.data.synthetic.genres import GENRES, Genre
from e3d2_hf.data.synthetic.keys import make_dancer
from e3d2_hf.data.synthetic.music import SAMPLE_RATE, compose_music

SMPL_SCALING = 93.0  # AIST++ stores translations in this scaled unit (its smpl_scaling is ~90-100)


@dataclass(frozen=True)
class PiecePlan:
    """One piece of music the dataset will hold, planned before any audio is made: genre, id, tempo, length."""

    genre: Genre
    music_id: str
    bpm: float
    seconds: float


def _plan_pieces(count: int, rng: np.random.Generator, seconds: tuple[float, float], first_genre: int, first_index: int) -> list[PiecePlan]:
    """`count` pieces, genres in turn from `first_genre`; piece `first_index + i` is named after its genre and number."""
    pieces = []
    for piece in range(first_index, first_index + count):
        genre = GENRES[(first_genre + piece) % len(GENRES)]
        music_id = f"m{genre.code}{piece // len(GENRES)}"
        pieces.append(PiecePlan(genre, music_id, float(rng.uniform(*genre.tempo)), float(rng.uniform(*seconds))))
    return pieces


def _check_seconds(seconds: tuple[float, float], what: str) -> None:
    if not 0 < seconds[0] <= seconds[1]:
        raise ValueError(f"{what} must be an increasing pair of positive lengths, got {seconds}")


def generate_synthetic_aistpp(
    out_dir: str | os.PathLike,
    num_sequences: int,
    seed: int = 0,
    seconds: tuple[float, float] = (8.0, 16.0),
    heldout_pieces: int | None = None,
    heldout_seconds: tuple[float, float] | None = None,
) -> Path:
    """Write `num_sequences` paired dances and music in the AIST++ layout into `out_dir` (created if
    absent; an existing folder should be empty); returns `out_dir`. Deterministic given `seed`.

    `heldout_pieces` pieces of music (default: a fifth of the sequences, at least 2) are held out,
    each danced once as in AIST++'s cross-modal val and test splits, alternately val and test, their
    lengths drawn from `heldout_seconds` (default `seconds`). The other sequences dance about two to
    each training piece (AIST++ has several dancers per piece), lengths drawn from `seconds`; each
    dance is as long as its music. Also writes `synthetic_info.json` (genre, tempo, length and split
    of each piece; moves of each dance).
    """
    heldout_pieces = max(2, round(0.2 * num_sequences)) if heldout_pieces is None else heldout_pieces
    if heldout_pieces < 2 or num_sequences < heldout_pieces + 1:
        raise ValueError(
            f"need at least 2 held-out pieces (one val, one test) and a training sequence: at least 3 sequences, "
            f"got {num_sequences} sequences with {heldout_pieces} held out"
        )
    _check_seconds(seconds, "seconds")
    _check_seconds(heldout_seconds or seconds, "heldout_seconds")
    out = Path(out_dir)
    for folder in ("motions", "splits", "wavs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    first_genre = int(rng.integers(len(GENRES)))
    training_sequences = num_sequences - heldout_pieces
    training = _plan_pieces(math.ceil(training_sequences / 2), rng, seconds, first_genre, 0)
    heldout = _plan_pieces(heldout_pieces, rng, heldout_seconds or seconds, first_genre, len(training))
    pieces = training + heldout
    split_of_music = {piece.music_id: "train" for piece in training}
    split_of_music.update({piece.music_id: ("val", "test")[index % 2] for index, piece in enumerate(heldout)})
    beats_of = {}
    for index, piece in enumerate(pieces):
        audio, beats = compose_music(piece.genre, piece.bpm, piece.seconds, np.random.default_rng([seed, 1, index]))
        soundfile.write(out / "wavs" / f"{piece.music_id}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        beats_of[piece.music_id] = beats
    dancers = {}  # three dancers per genre, each with their own style, as AIST++ has its own dancers per genre
    sequences = []
    danced = [training[index % len(training)] for index in range(training_sequences)] + heldout
    for index, piece in enumerate(danced):
        dancer_number = 3 * GENRES.index(piece.genre) + (index // len(pieces) + index) % 3 + 1
        if dancer_number not in dancers:
            dancers[dancer_number] = make_dancer(np.random.default_rng([seed, 2, dancer_number]))
        name = f"g{piece.genre.code}_sBM_cAll_d{dancer_number:02d}_{piece.music_id}_ch{index + 1:02d}"
        sequences.append((name, piece, dancers[dancer_number]))
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
