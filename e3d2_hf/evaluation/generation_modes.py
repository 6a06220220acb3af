"""Generation that matches training? Table 1's held-out dances with the rolling KV cache vs a window re-encoded at every step.

    python scripts/generation_modes.py recipes/tiny.yaml    # -> RUN/eval/generation_modes.json, generation_modes.md

BC trains on 29-step windows, but a held-out dance of 10 s is 75 steps. `E3D2PolicyModel.generate`
dances either with its rolling KV cache ("cache", Table 1's mode: every token keeps its 28-step past
and deeper blocks see further back, through the band, than any training window did) or by
re-encoding the last 29 steps as a fresh sequence at every step ("recompute_window", Bailando's
inference: what every prediction sees is a training-like window). Both give the same dances inside
the first window.

For each policy of Table 1 (BC, E3D2, the beat ablation when there) this dances to the same
held-out pieces with the recipe's `eval:` protocol (greedy unless `do_sample`), in both modes, and
scores them as Table 1 does: FID_k, FID_g, Div_k, Div_g, BAS, PFC, the learned return, 95% bootstrap
intervals over the pieces, and "recompute_minus_cache_ci95": the interval of (recompute_window -
cache) over the same draws of the same pieces (an interval without 0: a difference beyond the noise
of which pieces were scored).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from e3d2_hf.data.prepare import load_prepared
from e3d2_hf.evaluation.table_1 import DIGITS, EvalConfig, dance_protocol, describe_dances, policy_evaluation
from e3d2_hf.metrics.intervals import INTERVAL_METRICS, paired_interval
from e3d2_hf.metrics.protocol import METRIC_KEYS
from e3d2_hf.metrics.scores import MetricWarning
from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.rl.heldout import GroundTruth, HeldOutDances, HeldOutEvaluation
from e3d2_hf.rl.rewards import LearnedReward
from e3d2_hf.rl.seeding import seed_of
from e3d2_hf.trainers.loading import load_run_reward_model
from e3d2_hf.utils import atomic_file

logger = logging.getLogger(__name__)

MODES = ("cache", "recompute_window")
RESULT_FILE = "generation_modes.json"
TABLE_FILE = "generation_modes.md"


@torch.no_grad()
def dance_with(policy: E3D2PolicyModel, evaluation: HeldOutEvaluation, strategy: str) -> HeldOutDances:
    """The policy's dances to the evaluation's pieces generated with `strategy`, decoded and scored by the learned reward.

    The same pieces, batches and random numbers as `HeldOutEvaluation.dance` (which generates with the cache).
    """
    pieces = evaluation.pieces
    generator = torch.Generator(device=policy.device).manual_seed(seed_of(evaluation.seed, -2))
    longest = int(pieces.steps.max())
    upper_all = torch.zeros(len(pieces), longest, dtype=torch.long)
    lower_all = torch.zeros_like(upper_all)
    for rows in pieces.batches(evaluation.batch_size):
        steps = pieces.steps[rows]
        tokens = policy.generate(
            pieces.music_features[rows, : int(steps.max())].to(policy.device),
            upper_codes=pieces.first_upper[rows].to(policy.device),
            lower_codes=pieces.first_lower[rows].to(policy.device),
            do_sample=evaluation.do_sample, temperature=evaluation.temperature, top_k=evaluation.top_k,
            generator=generator, strategy=strategy,
        )  # fmt: skip
        upper, lower = policy.split_pose_tokens(tokens)
        upper_all[rows, : upper.shape[1]], lower_all[rows, : lower.shape[1]] = upper.cpu(), lower.cpu()
    return evaluation.decode_codes(policy.load_vqvae(), upper_all, lower_all)


def compare_policy(policy_path: str, config: EvalConfig, data: Any, ground_truth: GroundTruth, reward: LearnedReward | None) -> dict[str, Any]:
    """Both modes' rows of one policy and the paired interval of their difference."""
    policy, evaluation, _ = policy_evaluation(policy_path, config, data, ground_truth, reward)
    rows = {}
    for mode in MODES:
        dances = dance_with(policy, evaluation, mode)
        rows[mode] = evaluation.scores(dances.clips, f"{policy_path} ({mode})", intervals=config.resamples, keep_draws=True)
        rows[mode]["learned_return"] = dances.learned_return
    draws = {mode: rows[mode].pop("draws", None) for mode in MODES}
    if draws["cache"] is not None and draws["recompute_window"] is not None:
        rows["recompute_minus_cache_ci95"] = paired_interval(draws["recompute_window"], draws["cache"])
    return rows


def compare_generation_modes(config: EvalConfig) -> dict[str, Any]:
    """Every Table 1 policy of the run in both generation modes -> `config.output_dir`/generation_modes.json and .md."""
    data = load_prepared(config.data_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # Table 1 reports the data's warnings
        ground_truth = GroundTruth.from_prepared(data, config.data_path)
    reward_model = load_run_reward_model(config.reward_model_path, required=False)
    reward = LearnedReward(reward_model) if reward_model is not None else None
    policies = {"bc": config.bc_path, "e3d2": config.e3d2_path, "beat": config.beat_path}
    result: dict[str, Any] = {}
    for label, path in policies.items():
        if label == "bc" or (Path(path) / "config.json").is_file():
            logger.info("generation modes: %s", path)
            result[label] = {"policy": path, **compare_policy(path, config, data, ground_truth, reward)}
    result["protocol"] = {
        "modes": list(MODES),
        "decoding": "sampled" if config.do_sample else "greedy",
        **dance_protocol(config),
        "splits": list(config.splits),
        "intervals": {"resamples": config.resamples, "over": "held-out pieces", "paired": "recompute_window - cache"},
        "config": dataclasses.asdict(config),
    }
    output_dir = Path(config.output_dir)
    with atomic_file(output_dir / RESULT_FILE, "w") as handle:
        handle.write(json.dumps(result, indent=2) + "\n")
    with atomic_file(output_dir / TABLE_FILE, "w") as handle:
        handle.write(format_generation_modes(result) + "\n")
    logger.info("generation modes -> %s\n%s", output_dir / RESULT_FILE, format_generation_modes(result))
    return result


def _interval(values: list[float] | None, digits: int, signed: bool = False) -> str:
    if values is None:
        return "-"
    return "[" + ", ".join(f"{value:{'+' if signed else ''}.{digits}f}" for value in values) + "]"


def format_generation_modes(result: dict[str, Any]) -> str:
    """Markdown: per policy and mode the metrics with their intervals, then recompute_window - cache per policy."""
    columns = [*METRIC_KEYS, "learned_return"]
    lines = ["| Policy | Generation | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * len(columns)]
    policies = [label for label in result if label != "protocol"]
    for label in policies:
        for mode in MODES:
            row = result[label][mode]
            cells = []
            for column in columns:
                value = row.get(column)
                cell = "-" if value is None else f"{value:.{DIGITS[column]}f}"
                interval = (row.get("ci95") or {}).get(column)
                cells.append(cell + (" " + _interval(interval, DIGITS[column]) if interval is not None and value is not None else ""))
            lines.append(f"| {label} | {mode} | " + " | ".join(cells) + " |")
    lines += ["", "recompute_window - cache over the same bootstrap draws of the same pieces (an interval without 0 is beyond their noise):", ""]
    lines += ["| Policy | " + " | ".join(f"{key}" for key in INTERVAL_METRICS) + " |", "|---|" + "---:|" * len(INTERVAL_METRICS)]
    for label in policies:
        differences = result[label].get("recompute_minus_cache_ci95") or {}
        lines.append(f"| {label} | " + " | ".join(_interval(differences.get(key), DIGITS[key], signed=True) for key in INTERVAL_METRICS) + " |")
    protocol = result.get("protocol", {})
    lines += [
        "",
        f"{protocol.get('decoding', '?')} decoding, {describe_dances(protocol)}, held-out splits {', '.join(protocol.get('splits', []))}.",
    ]
    return "\n".join(lines)


__all__ = ["MODES", "compare_generation_modes", "compare_policy", "dance_with", "format_generation_modes"]
