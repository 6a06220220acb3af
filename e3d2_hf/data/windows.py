"""Fixed-length training windows cut from a prepared dataset's variable-length sequences.

Bailando trains on windows, not whole dances: the VQ-VAE on 240-frame windows every 40 frames,
its root-velocity decoder and the GPT on 240-frame windows every 8 frames. Both trainers cut
them here, from arrays held in memory (AIST++ is ~1 M frames, a few hundred MB as float32), so
that a window is a slice, not a copy on disk.

Several columns of one sequence can be windowed together even when they run at different rates
(joints at 60 fps, music features at 7.5 fps): `time_divisors` gives, per column, how many base
frames one of its rows spans, and that column's window and start are divided by it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from e3d2_hf.utils import E3D2Error


def sliding_windows(length: int, window: int, stride: int) -> np.ndarray:
    """Start frames of every whole `window` in a sequence of `length` frames, one every `stride` frames.

    A sequence shorter than the window has none; the tail after the last whole window is left out.
    """
    if window < 1 or stride < 1:
        raise E3D2Error(f"windows: window and stride must be positive, got window={window}, stride={stride}")
    if length < window:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, length - window + 1, stride, dtype=np.int64)


def window_index(lengths: Sequence[int], window: int, stride: int) -> np.ndarray:
    """(N, 2) int64 table of `[sequence, start]` for the windows of all sequences, in sequence order."""
    starts = [sliding_windows(int(length), window, stride) for length in lengths]
    if not starts:
        return np.zeros((0, 2), dtype=np.int64)
    sequence = np.repeat(np.arange(len(starts), dtype=np.int64), [len(s) for s in starts])
    return np.stack([sequence, np.concatenate(starts)], axis=1)


def split_columns(dataset: Any, columns: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """The `columns` of a `datasets.Dataset` split as lists of float32 numpy arrays, one per sequence."""
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise E3D2Error(f"windows: dataset has no column(s) {', '.join(missing)} (has {', '.join(dataset.column_names)})")
    table = dataset.with_format("numpy", columns=list(columns))
    return {column: [np.asarray(value, dtype=np.float32) for value in table[column]] for column in columns}


# The per-step columns of a pose-code dataset (RUN/pose_codes): one row per 7.5 fps step.
CODE_COLUMNS = ("upper_codes", "lower_codes", "music_features_7p5")


def code_sequences(split: Any) -> dict[str, list[np.ndarray]]:
    """`upper_codes`, `lower_codes` (int64 (S,)) and `music_features_7p5` (float32 (S, D)) of each sequence of a codes split.

    Ready for `e3d2_hf.data.windows.SequenceWindows` (all three run at one row per step).
    """
    missing = [column for column in CODE_COLUMNS if column not in split.column_names]
    if missing:
        raise E3D2Error(f"pose codes: split has no column(s) {', '.join(missing)} (has {', '.join(split.column_names)})")
    table = split.with_format("numpy", columns=list(CODE_COLUMNS))
    return {
        "upper_codes": [np.asarray(codes, dtype=np.int64) for codes in table["upper_codes"]],
        "lower_codes": [np.asarray(codes, dtype=np.int64) for codes in table["lower_codes"]],
        "music_features_7p5": [np.asarray(music, dtype=np.float32) for music in table["music_features_7p5"]],
    }


class SequenceWindows(torch.utils.data.Dataset):
    """Every whole window of every sequence; item i is `{column: array[start:start + window]}`.

    Args:
        sequences: column name -> one array per sequence (time first); all columns have the same
            number of sequences.
        window, stride: in base frames (the rate of a column whose divisor is 1).
        time_divisors: column -> base frames per row of that column (e.g. 8 for 7.5 fps music
            beside 60 fps joints); `window` and `stride` must be multiples of it. Default 1.
    """

    def __init__(
        self,
        sequences: Mapping[str, Sequence[np.ndarray]],
        window: int,
        stride: int,
        time_divisors: Mapping[str, int] | None = None,
    ):
        if not sequences:
            raise E3D2Error("windows: no columns to window")
        counts = {column: len(arrays) for column, arrays in sequences.items()}
        if len(set(counts.values())) != 1:
            raise E3D2Error(f"windows: columns hold different numbers of sequences: {counts}")
        self.divisors = {column: int((time_divisors or {}).get(column, 1)) for column in sequences}
        for column, divisor in self.divisors.items():
            if divisor < 1 or window % divisor or stride % divisor:
                raise E3D2Error(f"windows: window {window} and stride {stride} must be multiples of the divisor {divisor} of '{column}'")
        self.sequences = {column: list(arrays) for column, arrays in sequences.items()}
        self.window = window
        self.stride = stride
        num_sequences = next(iter(counts.values()))
        lengths = [
            min(len(self.sequences[column][index]) * divisor for column, divisor in self.divisors.items())
            for index in range(num_sequences)
        ]
        self.index = window_index(lengths, window, stride)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, np.ndarray]:
        sequence, start = (int(value) for value in self.index[item])
        return {
            column: arrays[sequence][start // divisor : (start + self.window) // divisor]
            for (column, arrays), divisor in zip(self.sequences.items(), self.divisors.values())
        }


__all__ = ["CODE_COLUMNS", "SequenceWindows", "code_sequences", "sliding_windows", "split_columns", "window_index"]
