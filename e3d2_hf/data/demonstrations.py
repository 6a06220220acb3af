"""Automatically-ranked demonstrations (paper stage 2) and the ranked pairs the reward model learns from.

On-disk format: `RUN/demos/demonstrations`, a `datasets.DatasetDict` written with `save_to_disk`
(features `demonstration_features()`), one row per demonstration, i.e. one rollout of the
eps-greedy behaviour-cloning policy on one piece of music:

| column | type | meaning |
|---|---|---|
| `music_id` | string | the music that drove the rollout (the `m..` field of AIST++ names) |
| `name` | string | the prepared-dataset sequence whose music and initial pose code were used |
| `noise_level` | float32 | eps: the probability, at each step, that the whole action (both halves' codes) is uniformly random |
| `demo_index` | int32 | k = 0..K-1, which of the K demonstrations of this (music, noise level) it is |
| `upper_codes` | int64 (L,) | upper-body pose code of step t = 0..L-1 |
| `lower_codes` | int64 (L,) | lower-body pose code of step t = 0..L-1 |
| `music_features_7p5` | float32 (L, 438) | row t: the music of step t (the 7.5 fps features, one row per step) |

All three per-step columns have the same length L, and index t is step t everywhere. Step 0 holds
the episode's initial action `a_0`, taken from the data (the first pose codes of `name`), which the
policy did not choose; steps 1..L-1 are the policy's actions, `a_t` chosen at step t having seen
the music `m_0..m_t` and the actions `a_0..a_{t-1}`.

Splits (`DEMONSTRATION_SPLITS`):

- `train`: rollouts driven by the training music; the only source of training pairs.
- `eval_seen`: fresh rollouts (generated separately, never used for training pairs) driven by the
  same training music: held-out pairs on music the reward model has seen.
- `eval_unseen`: rollouts driven by held-out (val/test) music: held-out pairs on music the reward
  model never saw (paper Figure 6's generalisation check), also used for the Table 3 diagnostics.

Ranked pairs (paper Appendix D): draw two distinct noise levels uniformly, one demonstration of each
(uniformly within its level, so possibly different music), and a 30-step crop of each at a uniform
random offset `o` in `[0, L - 30]`. The crop's first step is dropped, so the reward model sees steps
`o+1 .. o+29`: 29 music tokens `m_1..m_29` and 29 actions `a_1..a_29` (2 x 29 tokens, the policy's
context). Dropping the first step also guarantees that the data's `a_0` (step 0) is never scored.
The lower-noise demonstration is `chosen`, the other `rejected` (TRL's naming for preference
pairs), so the label is part of the column names and cannot disagree with the noise levels.
Optionally (not in the paper; `reward.mismatched_music_fraction`) a share of the pairs rank one
snippet with its own music above the same snippet with another piece's music: pairs that only a
reward model which reads the music can order.

A pairs dataset only stores indices (`*_row` into its demonstrations split and `*_offset`) plus the
noise levels and music ids for inspection; `ranked_pair_snippets` attaches a transform that crops
the snippets on the fly. 30,000 materialised pairs of 2 x 29 x 438 floats would be 3 GB per split;
the indices are a few hundred kilobytes and give exactly the same, seeded, pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from e3d2_hf.utils import E3D2Error

DEMONSTRATION_SPLITS = ("train", "eval_seen", "eval_unseen")
SNIPPET_LENGTH = 30  # paper Appendix D: 30 steps per snippet, the first dropped -> 2 x 29 tokens
MUSIC_DIM = 438
CODEBOOK_SIZE = 512


def demonstration_features(music_dim: int = MUSIC_DIM) -> datasets.Features:
    """The features the demonstrations generator writes (see the module docstring)."""
    return datasets.Features(
        {
            "music_id": datasets.Value("string"),
            "name": datasets.Value("string"),
            "noise_level": datasets.Value("float32"),
            "demo_index": datasets.Value("int32"),
            "upper_codes": datasets.List(datasets.Value("int64")),
            "lower_codes": datasets.List(datasets.Value("int64")),
            "music_features_7p5": datasets.Array2D(shape=(None, music_dim), dtype="float32"),
        }
    )


REQUIRED_COLUMNS = tuple(demonstration_features())


@dataclass(frozen=True)
class DemonstrationSplit:
    """One split's demonstrations in memory: per-step arrays of all rows concatenated, for fast cropping.

    Demonstration `i` occupies rows `starts[i] : starts[i] + lengths[i]` of `music_features`,
    `upper_codes` and `lower_codes`.
    """

    split: str
    names: np.ndarray
    music_ids: np.ndarray
    noise_levels: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    music_features: np.ndarray
    upper_codes: np.ndarray
    lower_codes: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    def crop(
        self,
        rows: np.ndarray,
        first_steps: np.ndarray,
        num_steps: int,
        music_rows: np.ndarray | None = None,
        music_first_steps: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Steps `first_steps[j] .. first_steps[j] + num_steps - 1` of demonstrations `rows[j]`.

        The music comes from the same steps unless `music_rows` / `music_first_steps` name other
        ones (a mismatched-music snippet). Returns music (n, num_steps, D) float32 and upper/lower
        codes (n, num_steps) int64.
        """
        steps = np.arange(num_steps)
        index = (self.starts[rows] + first_steps)[:, None] + steps
        if music_rows is None:
            music_index = index
        else:
            music_index = (self.starts[music_rows] + music_first_steps)[:, None] + steps
        return self.music_features[music_index], self.upper_codes[index], self.lower_codes[index]

    def demonstration(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All L steps of demonstration `row`: music (L, D), upper (L,), lower (L,)."""
        steps = slice(self.starts[row], self.starts[row] + self.lengths[row])
        return self.music_features[steps], self.upper_codes[steps], self.lower_codes[steps]


def load_demonstrations(path: str | Path) -> datasets.DatasetDict:
    """Read the demonstrations `DatasetDict` written by the demonstrations generator."""
    path = Path(path)
    if not path.exists():
        raise E3D2Error(f"{path}: no demonstrations here; generate them first (scripts/demos.py)")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError/ValueError/ArrowInvalid for broken folders
        raise E3D2Error(f"{path}: not a readable datasets folder ({type(exc).__name__}: {exc})") from exc
    if not isinstance(loaded, datasets.DatasetDict):
        raise E3D2Error(f"{path}: expected a DatasetDict with splits {DEMONSTRATION_SPLITS}, found a single Dataset")
    return loaded


def _list_column(table: pa.Table, column: str, where: str) -> tuple[pa.Array, np.ndarray]:
    """A list column's storage (extension types unwrapped) and the length of each row's list."""
    array = table.column(column).combine_chunks()
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
        raise E3D2Error(f"{where}: column '{column}' must hold one sequence per row, found {array.type}")
    if array.null_count:
        raise E3D2Error(f"{where}: column '{column}' has {array.null_count} missing rows")
    return array, pc.list_value_length(array).to_numpy(zero_copy_only=False).astype(np.int64)


def _load_split(
    split: datasets.Dataset, split_name: str, snippet_length: int, music_dim: int, codebook_size: int, source: str
) -> DemonstrationSplit:
    where = f"{source}[{split_name}]"
    missing = [column for column in REQUIRED_COLUMNS if column not in split.column_names]
    if missing:
        raise E3D2Error(f"{where}: missing column(s) {missing} (the demonstrations format is documented in e3d2_hf.data.demonstrations)")
    if len(split) == 0:
        raise E3D2Error(f"{where}: no demonstrations")
    table = split.with_format("arrow")[:]
    names = np.asarray(table.column("name").to_pylist(), dtype=object)

    music, lengths = _list_column(table, "music_features_7p5", where)
    step_rows = music.flatten()
    if not (pa.types.is_list(step_rows.type) or pa.types.is_large_list(step_rows.type)):
        raise E3D2Error(f"{where}: music_features_7p5 must be (steps, {music_dim}) per row, found {music.type}")
    widths = pc.list_value_length(step_rows).to_numpy(zero_copy_only=False)
    if widths.size and (widths != music_dim).any():
        step = int(np.argmax(widths != music_dim))
        row = int(np.searchsorted(np.cumsum(lengths), step, side="right"))
        raise E3D2Error(
            f"{where}: music features of '{names[row]}' have width {int(widths[step])}, expected {music_dim} "
            "(the reward model's music_dim)"
        )
    music_features = step_rows.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, music_dim)

    codes = {}
    for half in ("upper_codes", "lower_codes"):
        column, code_lengths = _list_column(table, half, where)
        mismatch = np.flatnonzero(code_lengths != lengths)
        if mismatch.size:
            row = int(mismatch[0])
            raise E3D2Error(
                f"{where}: '{names[row]}' has {code_lengths[row]} {half} but {lengths[row]} music steps; "
                "every per-step column must have one entry per step"
            )
        codes[half] = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if codes[half].size and (codes[half].min() < 0 or codes[half].max() >= codebook_size):
            raise E3D2Error(
                f"{where}: {half} outside the codebook [0, {codebook_size}) "
                f"(found {int(codes[half].min())}..{int(codes[half].max())})"
            )

    short = np.flatnonzero(lengths < snippet_length)
    if short.size:
        row = int(short[0])
        raise E3D2Error(
            f"{where}: {short.size} demonstration(s) are shorter than the {snippet_length}-step snippet crop "
            f"(e.g. '{names[row]}' has {lengths[row]} steps)"
        )
    if not np.isfinite(music_features).all():
        raise E3D2Error(f"{where}: music features contain NaN or inf")

    noise_levels = table.column("noise_level").to_numpy().astype(np.float32)
    if not (np.isfinite(noise_levels).all() and (noise_levels >= 0).all() and (noise_levels <= 1).all()):
        raise E3D2Error(f"{where}: noise levels must be probabilities in [0, 1]")
    distinct = np.unique(noise_levels)
    if distinct.size < 2:
        raise E3D2Error(
            f"{where}: a single noise level ({float(distinct[0]):g}); ranked pairs need demonstrations of at least two noise levels"
        )
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    return DemonstrationSplit(
        split=split_name,
        names=names,
        music_ids=np.asarray(table.column("music_id").to_pylist(), dtype=object),
        noise_levels=noise_levels,
        starts=starts,
        lengths=lengths,
        music_features=music_features,
        upper_codes=codes["upper_codes"],
        lower_codes=codes["lower_codes"],
    )


def validate_demonstrations(
    demonstrations: datasets.DatasetDict,
    snippet_length: int = SNIPPET_LENGTH,
    music_dim: int = MUSIC_DIM,
    codebook_size: int = CODEBOOK_SIZE,
    source: str = "demonstrations",
) -> dict[str, DemonstrationSplit]:
    """Check the demonstrations against the format above and load them into memory.

    Raises `E3D2Error` naming the split and, where it can, the sequence, for: a missing split or
    column, a split with a single noise level (no pairs possible), a demonstration shorter than the
    snippet crop, music features whose width is not `music_dim`, codes outside the codebook, per-step
    columns of different lengths, NaN music, and `eval_unseen` music that also drives `train` (or
    `eval_seen` music that does not), which would make the seen/unseen accuracies mean something else.
    """
    if not isinstance(demonstrations, datasets.DatasetDict):
        raise E3D2Error(f"{source}: expected a DatasetDict with splits {DEMONSTRATION_SPLITS}")
    missing = [name for name in DEMONSTRATION_SPLITS if name not in demonstrations]
    if missing:
        raise E3D2Error(f"{source}: missing split(s) {missing}; the demonstrations need {list(DEMONSTRATION_SPLITS)}")
    splits = {
        name: _load_split(demonstrations[name], name, snippet_length, music_dim, codebook_size, source)
        for name in DEMONSTRATION_SPLITS
    }
    train_music = set(splits["train"].music_ids)
    leaked = sorted(set(splits["eval_unseen"].music_ids) & train_music)
    if leaked:
        raise E3D2Error(f"{source}[eval_unseen]: music {leaked[:5]} also drives train demonstrations; unseen music must be held out")
    foreign = sorted(set(splits["eval_seen"].music_ids) - train_music)
    if foreign:
        raise E3D2Error(f"{source}[eval_seen]: music {foreign[:5]} drives no train demonstration; seen music must be training music")
    return splits


def build_ranked_pairs(
    split: DemonstrationSplit,
    num_pairs: int,
    seed: int,
    snippet_length: int = SNIPPET_LENGTH,
    mismatched_music_fraction: float = 0.0,
) -> datasets.Dataset:
    """`num_pairs` seeded ranked pairs from one split (sampling in the module docstring).

    Columns, for `side` in (chosen, rejected): `{side}_row` (row of the demonstrations split),
    `{side}_offset` (first step of the 30-step crop; the model sees the 29 steps after it),
    `{side}_music_row` / `{side}_music_offset` (where the snippet's music is read),
    `{side}_noise_level`, `{side}_music_id` (of the music read), and `pair_kind`.

    `pair_kind` "noise" (the paper's pairs): `chosen` has the lower noise level, each side reads its
    own music. `pair_kind` "music" (a share `mismatched_music_fraction` of the pairs; not in the
    paper): one lowest-noise demonstration's snippet twice, `chosen` with its own music, `rejected`
    with the music of a random crop of another piece of the split. Noise pairs alone can be ranked
    from the codes without the music (a reward model that learns code popularity reaches the
    paper's accuracy); these pairs are only separable through how the motion fits the music.
    """
    if num_pairs < 1:
        raise E3D2Error(f"ranked pairs: num_pairs must be positive, got {num_pairs}")
    if not 0.0 <= mismatched_music_fraction <= 1.0:
        raise E3D2Error(f"ranked pairs: mismatched_music_fraction must lie in [0, 1], got {mismatched_music_fraction}")
    num_pieces = len(set(split.music_ids))
    if mismatched_music_fraction > 0 and num_pieces < 2:
        raise E3D2Error(f"ranked pairs [{split.split}]: mismatched-music pairs need at least two pieces of music, found {num_pieces}")
    rng = np.random.default_rng(seed)
    levels = _RowGroups.of(split.noise_levels)
    num_levels = len(levels.labels)
    first_level = rng.integers(num_levels, size=num_pairs)
    second_level = (first_level + rng.integers(1, num_levels, size=num_pairs)) % num_levels  # uniform over distinct levels

    def offsets_of(rows: np.ndarray) -> np.ndarray:
        return rng.integers(0, split.lengths[rows] - snippet_length + 1)

    first_rows = levels.draw(first_level, rng)
    first_offsets = offsets_of(first_rows)
    second_rows = levels.draw(second_level, rng)
    second_offsets = offsets_of(second_rows)
    first_is_chosen = levels.labels[first_level] < levels.labels[second_level]
    sides = {
        "chosen": {"row": np.where(first_is_chosen, first_rows, second_rows), "offset": np.where(first_is_chosen, first_offsets, second_offsets)},
        "rejected": {"row": np.where(first_is_chosen, second_rows, first_rows), "offset": np.where(first_is_chosen, second_offsets, first_offsets)},
    }
    for side in sides.values():  # each side reads its own music ...
        side["music_row"], side["music_offset"] = side["row"].copy(), side["offset"].copy()

    is_music_pair = rng.random(num_pairs) < mismatched_music_fraction
    if is_music_pair.any():  # ... except the rejected side of a mismatched-music pair
        rows = levels.draw(np.zeros(int(is_music_pair.sum()), dtype=np.int64), rng)  # the lowest noise level: the most dance-like codes
        offsets = offsets_of(rows)
        pieces = _RowGroups.of(split.music_ids.astype(str))
        other_piece = (pieces.group_of_row[rows] + rng.integers(1, len(pieces.labels), size=len(rows))) % len(pieces.labels)
        other_rows = pieces.draw(other_piece, rng)
        for name, side in sides.items():
            side["row"][is_music_pair], side["offset"][is_music_pair] = rows, offsets
            music = (rows, offsets) if name == "chosen" else (other_rows, offsets_of(other_rows))
            side["music_row"][is_music_pair], side["music_offset"][is_music_pair] = music

    columns: dict[str, Any] = {"pair_kind": np.where(is_music_pair, "music", "noise").tolist()}
    for name, side in sides.items():
        columns |= {f"{name}_{key}": values.astype(np.int64) for key, values in side.items()}
        columns[f"{name}_noise_level"] = split.noise_levels[side["row"]]
        columns[f"{name}_music_id"] = split.music_ids[side["music_row"]].tolist()
    return datasets.Dataset.from_dict(columns, split=datasets.NamedSplit(split.split))


@dataclass(frozen=True)
class _RowGroups:
    """A split's rows grouped by a label (noise level, piece of music), for uniform draws within a group."""

    labels: np.ndarray  # the distinct labels, sorted
    group_of_row: np.ndarray
    rows_by_group: np.ndarray  # row indices, grouped, each group in row order
    sizes: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> _RowGroups:
        labels, group_of_row = np.unique(values, return_inverse=True)
        sizes = np.bincount(group_of_row, minlength=len(labels))
        return cls(labels, group_of_row, np.argsort(group_of_row, kind="stable"), sizes, np.concatenate(([0], np.cumsum(sizes)[:-1])))

    def draw(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniformly drawn row of each of `groups`."""
        return self.rows_by_group[self.starts[groups] + rng.integers(0, self.sizes[groups])]


class RankedPairSnippets:
    """`datasets` transform: pair index rows -> the chosen and rejected 29-step snippets.

    Output per pair, for `side` in (chosen, rejected): `{side}_music_features` (29, D) float32,
    `{side}_upper_codes` (29,) and `{side}_lower_codes` (29,) int64 (steps offset+1 .. offset+29).
    """

    def __init__(self, split: DemonstrationSplit, snippet_length: int = SNIPPET_LENGTH):
        self.split = split
        self.snippet_length = snippet_length

    def __call__(self, batch: dict[str, list]) -> dict[str, np.ndarray]:
        snippets = {}
        for side in ("chosen", "rejected"):
            rows, first_steps, music_rows, music_first_steps = (
                np.asarray(batch[f"{side}_{column}"], dtype=np.int64) + shift
                for column, shift in (("row", 0), ("offset", 1), ("music_row", 0), ("music_offset", 1))
            )  # the crop's first step is dropped
            music, upper, lower = self.split.crop(rows, first_steps, self.snippet_length - 1, music_rows, music_first_steps)
            snippets[f"{side}_music_features"] = music
            snippets[f"{side}_upper_codes"] = upper
            snippets[f"{side}_lower_codes"] = lower
        return snippets


def ranked_pair_snippets(pairs: datasets.Dataset, split: DemonstrationSplit, snippet_length: int = SNIPPET_LENGTH) -> datasets.Dataset:
    """`pairs` whose rows read as snippets (see `RankedPairSnippets`), ready for a DataLoader."""
    return pairs.with_transform(RankedPairSnippets(split, snippet_length))


__all__ = [
    "CODEBOOK_SIZE",
    "DEMONSTRATION_SPLITS",
    "DemonstrationSplit",
    "MUSIC_DIM",
    "REQUIRED_COLUMNS",
    "RankedPairSnippets",
    "SNIPPET_LENGTH",
    "build_ranked_pairs",
    "demonstration_features",
    "load_demonstrations",
    "ranked_pair_snippets",
    "validate_demonstrations",
]
