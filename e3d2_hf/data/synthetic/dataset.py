"""The synthetic dataset on disk: pieces of music, dances to them and cross-modal splits, in the AIST++ layout.

`generate_synthetic_aistpp` writes `motions/<sequence>.pkl`, `splits/crossmodal_{train,val,test}.txt`,
`ignore_list.txt` and `wavs/<music_id>.wav` exactly as the AIST++ download lays them out, so the real
reader path runs on it. Names follow AIST++ (`gBR_sBM_cAll_d04_mBR0_ch01`: genre BR, dancer 04,
music mBR0). As in AIST++'s cross-modal split, validation and test music is never danced to in training.
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


def _plan_pieces(num_sequences: int, rng: np.random.Generator, seconds: tuple[float, float]) -> list[PiecePlan]:
    """About two dances per piece of music (AIST++ has several dancers per piece), genres in turn."""
    num_pieces = max(3, int(math.ceil(num_sequences / 2)))
    first_genre = int(rng.integers(len(GENRES)))
    pieces = []
    for piece in range(num_pieces):
        genre = GENRES[(first_genre + piece) % len(GENRES)]
        music_id = f"m{genre.code}{piece // len(GENRES)}"
        pieces.append(PiecePlan(genre, music_id, float(rng.uniform(*genre.tempo)), float(rng.uniform(*seconds))))
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
