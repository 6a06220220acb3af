"""The environment PPO trains in: the MDP of method.md over music segments of the training split.

Episode (paper Table 7: trajectory length 29, buffer = number of training music segments): one
segment of `segment_steps` (30) consecutive pose-code steps of a training sequence. The environment
fixes the segment's music and its initial action a_0, the VQ-VAE codes of the ground-truth dance at
the segment's first step (the policy does not choose it); the policy chooses a_1 .. a_29; the
transition appends the action and advances the music (deterministic). Step t covers motion frames
8t .. 8t+7 at 60 fps and music row t at 7.5 fps.

The pose codes come from the run's shared cache `RUN/pose_codes` (`e3d2_hf.trainers.pose_codes`: every
prepared dance encoded once, whole, with the VQ-VAE that travels with the behaviour-cloning policy,
plus its 7.5 fps music and 60 fps beat track, column 53 of the music features, which the
hand-designed reward needs). Segments are cut from it in memory (`window_index`, one every
`segment_stride` steps).

Pieces of music to dance to (`Piece`, read from a pose-code split by `pieces_of`) start from the
codes of their ground-truth dance's first step (its first 8 frames) and last the whole music or its
first `max_steps` steps. The demonstrations dance to them; `HeldOutPieces` batches the val/test
pieces, with their beats and first root positions, for the held-out evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import datasets
import numpy as np
import torch

from e3d2_hf.data.windows import code_sequences
from e3d2_hf.data.windows import window_index
from e3d2_hf.utils import E3D2Error

if TYPE_CHECKING:  # the environment only calls the models it is given
    from e3d2_hf.models.modeling_policy import E3D2PolicyModel
    from e3d2_hf.models.modeling_vqvae import E3D2VQVAE


@dataclass
class Episodes:
    """A batch of episodes in timeline form (T steps; step 0 is the data's a_0, steps 1..T-1 are actions).

    upper_codes, lower_codes: (B, T) long. music_features: (B, T, D) float, 7.5 fps, row t = music of
    step t. music_beats: (B, 8T) float 60 fps beat one-hot; frames 8t..8t+7 belong to step t.
    """

    upper_codes: torch.Tensor
    lower_codes: torch.Tensor
    music_features: torch.Tensor
    music_beats: torch.Tensor

    def __len__(self) -> int:
        return self.upper_codes.shape[0]

    def to(self, device: torch.device | str) -> Episodes:
        return Episodes(*(tensor.to(device) for tensor in (self.upper_codes, self.lower_codes, self.music_features, self.music_beats)))

    def with_actions(self, upper_codes: torch.Tensor, lower_codes: torch.Tensor) -> Episodes:
        """The same episodes with the codes a policy chose (a_0 must be unchanged)."""
        if upper_codes.shape != self.upper_codes.shape or lower_codes.shape != self.lower_codes.shape:
            raise E3D2Error(f"episodes: actions {tuple(upper_codes.shape)} do not fit episodes {tuple(self.upper_codes.shape)}")
        return replace(self, upper_codes=upper_codes, lower_codes=lower_codes)


class MusicSegments:
    """Every `segment_steps`-step segment of the training sequences, one every `stride` steps (the PPO buffer).

    Holds per sequence: both halves' pose codes (steps,), the 7.5 fps music (>= steps, D) and the
    60 fps beat track (>= 8 * steps,). `batch(rows)` cuts the episodes of segments `rows`.
    """

    def __init__(
        self,
        names: list[str],
        upper_codes: list[np.ndarray],
        lower_codes: list[np.ndarray],
        music_features: list[np.ndarray],
        music_beats: list[np.ndarray],
        segment_steps: int = 30,
        stride: int = 1,
        frames_per_step: int = 8,
    ):
        counts = {len(names), len(upper_codes), len(lower_codes), len(music_features), len(music_beats)}
        if len(counts) != 1:
            raise E3D2Error("music segments: names, codes, music and beats must hold one entry per sequence")
        if segment_steps < 2:
            raise E3D2Error(f"music segments: segment_steps must be at least 2 (a_0 and one action), got {segment_steps}")
        self.names = list(names)
        self.upper_codes = [np.asarray(codes, dtype=np.int64) for codes in upper_codes]
        self.lower_codes = [np.asarray(codes, dtype=np.int64) for codes in lower_codes]
        self.music_features = [np.asarray(music, dtype=np.float32) for music in music_features]
        self.music_beats = [np.asarray(beats, dtype=np.float32) for beats in music_beats]
        self.segment_steps = segment_steps
        self.frames_per_step = frames_per_step
        lengths = [
            min(len(upper), len(lower), len(music), len(beats) // frames_per_step)
            for upper, lower, music, beats in zip(self.upper_codes, self.lower_codes, self.music_features, self.music_beats)
        ]
        self.index = window_index(lengths, segment_steps, stride)
        if len(self.index) == 0:
            longest = max(lengths, default=0)
            raise E3D2Error(
                f"music segments: no training sequence has {segment_steps} pose-code steps "
                f"({segment_steps * frames_per_step} frames); the longest has {longest}"
            )

    def __len__(self) -> int:
        return len(self.index)

    @property
    def music_dim(self) -> int:
        return self.music_features[0].shape[-1]

    def batch(self, rows: np.ndarray) -> Episodes:
        """Episodes of segments `rows` with the ground-truth codes (a rollout replaces steps 1..T-1)."""
        steps, frames = self.segment_steps, self.segment_steps * self.frames_per_step
        picks = [(int(sequence), int(start)) for sequence, start in self.index[np.asarray(rows, dtype=np.int64)]]
        upper = np.stack([self.upper_codes[s][start : start + steps] for s, start in picks])
        lower = np.stack([self.lower_codes[s][start : start + steps] for s, start in picks])
        music = np.stack([self.music_features[s][start : start + steps] for s, start in picks])
        beats = np.stack([self.music_beats[s][start * self.frames_per_step : start * self.frames_per_step + frames] for s, start in picks])
        return Episodes(torch.from_numpy(upper), torch.from_numpy(lower), torch.from_numpy(music), torch.from_numpy(beats))

    @classmethod
    def from_codes(cls, codes: datasets.Dataset, segment_steps: int, stride: int, frames_per_step: int) -> MusicSegments:
        """Segments of a split of `RUN/pose_codes` (`e3d2_hf.trainers.pose_codes.load_or_encode_codes`)."""
        sequences = code_sequences(codes)
        if "music_beats" not in codes.column_names:
            raise E3D2Error(f"pose codes: no music_beats column (has {', '.join(codes.column_names)}); encode them again")
        beats = [np.asarray(track, dtype=np.float32) for track in codes.with_format("numpy", columns=["music_beats"])["music_beats"]]
        return cls(
            list(codes["name"]),
            sequences["upper_codes"],
            sequences["lower_codes"],
            sequences["music_features_7p5"],
            beats,
            segment_steps=segment_steps,
            stride=stride,
            frames_per_step=frames_per_step,
        )


@dataclass(frozen=True)
class Piece:
    """One piece of music to dance to: its initial codes a_0, its music (steps, D) and its names."""

    name: str
    music_id: str
    first_upper: int
    first_lower: int
    music_features: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.music_features)


def pieces_of(codes: datasets.Dataset, max_steps: int | None) -> list[Piece]:
    """The pieces of a pose-code split (`e3d2_hf.trainers.pose_codes`), each cut to `max_steps` (None: the whole music)."""
    table = codes.with_format("numpy", columns=["name", "music_id", "upper_codes", "lower_codes", "music_features_7p5"])
    pieces = []
    for row in table:
        steps = len(row["upper_codes"]) if max_steps is None else min(len(row["upper_codes"]), max_steps)
        if steps < 2:
            raise E3D2Error(
                f"pose codes: sequence '{row['name']}' has {len(row['upper_codes'])} step(s); dancing to it needs at least 2 (a_0 and one action)"
            )
        pieces.append(
            Piece(
                name=str(row["name"]),
                music_id=str(row["music_id"]),
                first_upper=int(row["upper_codes"][0]),
                first_lower=int(row["lower_codes"][0]),
                music_features=np.asarray(row["music_features_7p5"][:steps], dtype=np.float32),
            )
        )
    return pieces


def _right_padded(codes: list[np.ndarray], length: int) -> torch.Tensor:
    """(N, length) long: each code sequence right-padded with code 0."""
    if not codes:
        return torch.zeros(0, length, dtype=torch.long)
    return torch.stack([torch.nn.functional.pad(torch.as_tensor(sequence, dtype=torch.long), (0, length - len(sequence))) for sequence in codes])


@dataclass
class HeldOutPieces:
    """Held-out music to dance to during evaluation, in one right-padded batch.

    first_upper/first_lower: (N, 1) codes of each ground-truth dance's first 8 frames (the initial
    state); music_features: (N, S, D) 7.5 fps; steps: (N,) steps of each piece (<= S);
    music_beats: name -> 60 fps beat one-hot of the danced frames; root_start: (N, 3) the ground
    truth's first root position (the generated dance starts there); data_upper/data_lower: (N, S)
    the ground-truth dance's own codes, right-padded (what the VQ-VAE makes of the data).
    """

    names: list[str]
    first_upper: torch.Tensor
    first_lower: torch.Tensor
    music_features: torch.Tensor
    steps: np.ndarray
    music_beats: dict[str, np.ndarray]
    root_start: torch.Tensor
    data_upper: torch.Tensor
    data_lower: torch.Tensor

    def __len__(self) -> int:
        return len(self.names)

    def batches(self, batch_size: int) -> list[slice]:
        """Consecutive slices of at most `batch_size` pieces."""
        return [slice(first, first + batch_size) for first in range(0, len(self), batch_size)]

    @torch.no_grad()
    def dance(
        self,
        policy: E3D2PolicyModel,
        rows: slice,
        *,
        do_sample: bool,
        temperature: float = 1.0,
        top_k: int | None = None,
        noise_level: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """The policy's dances to pieces `rows`: upper and lower codes (B, S) incl. a_0, their music (B, S, D), steps (B,).

        S is the longest piece of the slice; shorter pieces are right-padded (cut them at `steps`).
        `noise_level`: stage 2's eps, each step's action (both codes) uniformly random with that probability (1: the floor of Table 1).
        """
        steps = self.steps[rows]
        music = self.music_features[rows, : int(steps.max())].to(policy.device)
        tokens = policy.generate(
            music,
            upper_codes=self.first_upper[rows].to(policy.device),
            lower_codes=self.first_lower[rows].to(policy.device),
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            noise_level=noise_level,
            generator=generator,
        )
        upper, lower = policy.split_pose_tokens(tokens)
        return upper, lower, music, steps

    @torch.no_grad()
    def joints(self, vqvae: E3D2VQVAE, rows: slice, upper: torch.Tensor, lower: torch.Tensor) -> dict[str, np.ndarray]:
        """Piece name -> the 60 fps joints (8 * steps, 24, 3) the VQ-VAE decodes from `dance`'s codes, starting at the ground truth's root."""
        names, steps, roots = self.names[rows], self.steps[rows], self.root_start[rows]
        clips = {}
        for offset, (name, length) in enumerate(zip(names, steps)):
            decoded = vqvae.decode(upper[offset : offset + 1, :length], lower[offset : offset + 1, :length], roots[offset : offset + 1].to(vqvae.device))
            clips[name] = decoded[0].float().cpu().numpy()
        return clips

    @classmethod
    def from_codes(
        cls, codes: list[datasets.Dataset], prepared: list[datasets.Dataset], frames_per_step: int, max_steps: int | None
    ) -> HeldOutPieces:
        """The `pieces_of` pose-code splits, with their beats and their prepared splits' first roots.

        Each piece is cut to `max_steps` steps (None: the whole music).
        """
        pieces, beats, roots, data_codes = [], {}, [], []
        for code_split, prepared_split in zip(codes, prepared):
            if list(code_split["name"]) != list(prepared_split["name"]):
                raise E3D2Error("pose codes: their sequences differ from the prepared split's (stale cache?); delete RUN/pose_codes")
            split_pieces = pieces_of(code_split, max_steps)
            tracks = code_split.with_format("numpy", columns=["music_beats"])["music_beats"]
            first_roots = prepared_split.with_format("numpy", columns=["joints"])["joints"]
            sequences = code_sequences(code_split)
            for piece, track, joints, upper, lower in zip(split_pieces, tracks, first_roots, sequences["upper_codes"], sequences["lower_codes"]):
                beats[piece.name] = np.asarray(track[: piece.steps * frames_per_step], dtype=np.float32)
                roots.append(torch.as_tensor(np.asarray(joints[0, 0], dtype=np.float32)))
                data_codes.append((upper[: piece.steps], lower[: piece.steps]))
            pieces += split_pieces
        longest = max((piece.steps for piece in pieces), default=0)
        padded = [torch.nn.functional.pad(torch.as_tensor(piece.music_features), (0, 0, 0, longest - piece.steps)) for piece in pieces]
        data_upper = _right_padded([upper for upper, _ in data_codes], longest)
        data_lower = _right_padded([lower for _, lower in data_codes], longest)
        return cls(
            [piece.name for piece in pieces],
            torch.tensor([piece.first_upper for piece in pieces], dtype=torch.long)[:, None],
            torch.tensor([piece.first_lower for piece in pieces], dtype=torch.long)[:, None],
            torch.stack(padded) if padded else torch.zeros(0, 0, 0),
            np.asarray([piece.steps for piece in pieces], dtype=np.int64),
            beats,
            torch.stack(roots) if roots else torch.zeros(0, 3),
            data_upper,
            data_lower,
        )


__all__ = ["Episodes", "HeldOutPieces", "MusicSegments", "Piece", "pieces_of"]
