"""The paper's Tables 3 and 5 for a run folder, written beside Table 1 into RUN/eval/metrics.json.

- Table 3, "noise_levels": for each noise level eps of the demonstrations, the paper's metrics of
  the demonstrations and their mean learned return, on training-set music. The demonstrations are
  RUN/demos's `eval_seen` split (fresh rollouts of the eps-greedy BC policy on the training music,
  never made into training pairs), the first `noise_level_demos` per training sequence and level,
  decoded by the BC policy's VQ-VAE and cut to Table 1's `dance_seconds` (when set), scored as Table 1's dances are.
- Table 5, "seen_unseen": the BC policy's metrics on the training music ("seen": one dance per
  training sequence from its first pose code, decoded as Table 1's) and on the held-out music
  ("unseen": Table 1's BC row).

Both score against the same ground truth as Table 1, with the same 95% bootstrap intervals.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from e3d2_hf.data.demonstrations import load_demonstrations
from e3d2_hf.rl.heldout import GroundTruth, HeldOutEvaluation, held_out_pieces
from e3d2_hf.rl.rewards import LearnedReward

if TYPE_CHECKING:
    import datasets

    from e3d2_hf.evaluation.table_1 import EvalConfig
    from e3d2_hf.models.modeling_policy import E3D2PolicyModel

logger = logging.getLogger(__name__)

SEEN_SPLIT = "train"
DEMONSTRATION_SPLIT = "eval_seen"


def training_music_evaluation(
    config: EvalConfig, policy: E3D2PolicyModel, codes: datasets.DatasetDict, data: datasets.DatasetDict,
    ground_truth: GroundTruth, reward: LearnedReward | None,
) -> HeldOutEvaluation:  # fmt: skip
    """Table 1's evaluation on the training music: every training sequence a piece, cut and decoded alike."""
    pieces = held_out_pieces(codes, data, [SEEN_SPLIT], config.dance_seconds, policy.load_vqvae().config)
    return HeldOutEvaluation(
        pieces, ground_truth, reward, batch_size=config.batch_size, do_sample=config.do_sample,
        temperature=config.temperature, top_k=config.top_k, seed=config.seed, fid_div_seconds=config.fid_div_seconds,
    )  # fmt: skip


def seen_unseen_table(
    config: EvalConfig, policy: E3D2PolicyModel, seen: HeldOutEvaluation, unseen_row: dict[str, Any], unseen_pieces: int
) -> dict[str, Any]:
    """Paper Table 5: the BC policy on the music it was trained on and on Table 1's held-out music (its BC row)."""
    dances = seen.dance(policy)
    row = seen.scores(dances.clips, "BC on training music", intervals=config.resamples)
    row["learned_return"] = dances.learned_return
    unseen = {key: value for key, value in unseen_row.items() if key != "minus_bc_ci95"}
    return {"seen": {**row, "pieces": len(seen)}, "unseen": {**unseen, "pieces": unseen_pieces}}


def _demonstration_codes(split: Any, names: list[str], noise_level: float, demo_index: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(N, L) upper and lower codes of demonstration `demo_index` at `noise_level` of each named sequence, or None if one lacks it."""
    wanted = {name: row for row, name in enumerate(names)}
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    levels = np.asarray(split["noise_level"], dtype=np.float64)
    indices = np.asarray(split["demo_index"])
    chosen = np.flatnonzero(np.isclose(levels, noise_level) & (indices == demo_index))
    table = split.select(chosen).with_format("numpy", columns=["name", "upper_codes", "lower_codes"])
    for row in table:
        if str(row["name"]) in wanted:
            found[wanted[str(row["name"])]] = (np.asarray(row["upper_codes"]), np.asarray(row["lower_codes"]))
    if len(found) < len(names):
        return None
    longest = max(len(upper) for upper, _ in found.values())
    upper_codes, lower_codes = np.zeros((len(names), longest), np.int64), np.zeros((len(names), longest), np.int64)
    for row, (upper, lower) in found.items():
        upper_codes[row, : len(upper)], lower_codes[row, : len(lower)] = upper, lower
    return upper_codes, lower_codes


def noise_level_table(config: EvalConfig, policy: E3D2PolicyModel, seen: HeldOutEvaluation, demonstrations_path: Path) -> dict[str, Any] | None:
    """Paper Table 3: noise level -> the demonstrations' metrics and mean learned return; None without demonstrations."""
    if config.noise_level_demos == 0:
        return None
    if not demonstrations_path.is_dir():
        logger.warning("eval: no demonstrations at %s (run scripts/demos.py); no Table 3 (noise_levels)", demonstrations_path)
        return None
    split = load_demonstrations(demonstrations_path)[DEMONSTRATION_SPLIT]
    vqvae = policy.load_vqvae()
    table: dict[str, Any] = {}
    for level in sorted({float(value) for value in split["noise_level"]}):
        clips, piece_of, returns = {}, {}, []
        for demo_index in range(config.noise_level_demos):
            codes = _demonstration_codes(split, seen.pieces.names, level, demo_index)
            if codes is None:
                logger.warning("eval: some training sequences have no demonstration %d at noise level %g; Table 3 uses fewer", demo_index, level)
                break
            dances = seen.decode_codes(vqvae, *codes)
            clips.update({f"{name}#{demo_index}": joints for name, joints in dances.clips.items()})
            piece_of.update({f"{name}#{demo_index}": name for name in dances.clips})
            if dances.learned_returns is not None:
                returns.append(dances.learned_returns.numpy())
        if len(clips) < 2:
            continue
        row = seen.scores(clips, f"demonstrations, eps {level:g}", intervals=config.resamples, piece_of=piece_of)
        row["learned_return"] = float(np.concatenate(returns).mean()) if returns else None
        table[f"{level:g}"] = {**row, "demonstrations": len(clips)}
    return table or None


__all__ = ["noise_level_table", "seen_unseen_table", "training_music_evaluation"]
