"""The paper's Table 1 for a run folder, between its ceiling and its floor, with 95% intervals; Tables 2, 3 and 5 beside it.

    python scripts/eval.py recipes/tiny.yaml            # -> RUN/eval/metrics.json, RUN/eval/metrics.md

Every row is the held-out evaluation of `e3d2_hf.rl.heldout` (the one PPO's periodic evaluation
uses too): one dance per held-out piece (`splits`, paper: the 40 AIST++ val + test pieces) from its
ground-truth first pose code, to the whole piece as Bailando's test does (`dance_seconds` cuts it
shorter), decoded greedily as Bailando's test does (`do_sample: true` samples instead, seeded).
FID and Div score the first `fid_div_seconds` of each dance (Bailando: 20 s), BAS the whole dance.
The rows:

- ground_truth: the held-out ground-truth dances, as long as the policies' dances;
- vqvae: each of them encoded to pose codes and decoded by the policies' VQ-VAE, root included
  (the cached codes of RUN/pose_codes): the best any policy choosing these codes can do;
- bc: the behaviour-cloning policy (RUN/bc); e3d2: PPO's policy (RUN/ppo/policy), when there;
- beat: PPO with the hand-designed beat reward (RUN/ppo_beat/policy), when there;
- random: the eps = 1 policy, every code uniformly random: the floor.

Each row has FID_k, FID_g, Div_k, Div_g, BAS, PFC, the mean learned return when RUN/reward exists,
"ci95": the 95% percentile bootstrap interval over the held-out pieces (`resamples` draws, seeded;
`e3d2_hf.metrics.intervals`) of FID_k, FID_g, Div_k, Div_g and BAS, and "minus_bc_ci95": the
interval of (row - BC) over the same draws of the same pieces, where the pieces' own variation
cancels (an interval that excludes 0: a difference beyond the noise of which pieces were scored). metrics.json also holds
"noise_levels" (paper Table 3) and "seen_unseen" (Table 5, `e3d2_hf.evaluation.tables_3_and_5`),
"table_2" (paper Table 2: PPO's held-out evaluations over its interaction steps, learned vs beat
reward, `e3d2_hf.evaluation.table_2`), the reward model's held-out pair accuracy, the protocol (with
the generation mode: the policies' rolling KV cache), the metrics' warnings and "versions".
Table 4 (BC next-code accuracy) is RUN/bc/diagnostics.json and Figure 6 (the reward model's
accuracy curve) RUN/reward/diagnostics.json and .png; metrics.md points to them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e3d2_hf.data.prepare import REFERENCE_MOTIONS, load_prepared
from e3d2_hf.evaluation.table_2 import format_table_2, table_2
from e3d2_hf.evaluation.tables_3_and_5 import noise_level_table, seen_unseen_table, training_music_evaluation
from e3d2_hf.metrics.intervals import DEFAULT_LEVEL, INTERVAL_METRICS, paired_interval
from e3d2_hf.metrics.protocol import METRIC_KEYS
from e3d2_hf.metrics.scores import MetricWarning
from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.recipe import RunLayout
from e3d2_hf.rl.heldout import GroundTruth, HeldOutDances, HeldOutEvaluation, held_out_pieces
from e3d2_hf.rl.rewards import LearnedReward
from e3d2_hf.trainers.loading import load_run_policy, load_run_reward_model
from e3d2_hf.trainers.pose_codes import load_or_encode_codes
from e3d2_hf.utils import E3D2Error, atomic_file
from e3d2_hf.versions import environment_versions

logger = logging.getLogger(__name__)

# What Table 1 carries of the reward model's diagnostics.json.
REWARD_MODEL_KEYS = (
    "pair_accuracy_seen",
    "pair_accuracy_unseen",
    "pair_accuracy_train",
    "mismatched_music_accuracy_seen",
    "mismatched_music_accuracy_unseen",
    "monotonic",
)

METRICS_FILE = "metrics.json"
TABLE_FILE = "metrics.md"
ROW_LABELS = {
    "ground_truth": "Ground Truth", "vqvae": "VQ-VAE (ceiling)", "bc": "BC (Bailando)", "e3d2": "E3D2",
    "beat": "PPO, beat reward", "random": "Random (floor)",
}  # fmt: skip
MIN_HELDOUT_PIECES = 2  # Div is a mean over pairs; a bootstrap draw of one piece is that piece


@dataclass
class EvalConfig:
    """The `eval:` section of a recipe."""

    run_dir: str = field(default="runs/e3d2", metadata={"help": "Run folder (data, bc, ppo, reward are read from it)."})
    output_dir: str | None = field(default=None, metadata={"help": "Default <run_dir>/eval."})
    data_path: str | None = field(default=None, metadata={"help": "Prepared dataset (default <run_dir>/data)."})
    bc_path: str | None = field(default=None, metadata={"help": "Behaviour-cloning policy (default <run_dir>/bc)."})
    e3d2_path: str | None = field(default=None, metadata={"help": "PPO policy (default <run_dir>/ppo/policy); skipped when absent."})
    beat_path: str | None = field(
        default=None, metadata={"help": "PPO policy of the hand-designed beat reward (default <run_dir>/ppo_beat/policy); skipped when absent."}
    )
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model for the learned return (default <run_dir>/reward)."})
    demonstrations_path: str | None = field(default=None, metadata={"help": "Demonstrations for Table 3 (default <run_dir>/demos/demonstrations)."})
    splits: list[str] = field(default_factory=lambda: ["val", "test"], metadata={"help": "Held-out splits to dance to."})
    dance_seconds: float | None = field(
        default=None, metadata={"help": "Dance the first S seconds of each held-out piece (null: the whole piece, as Bailando's test)."}
    )
    fid_div_seconds: float = field(
        default=20.0, metadata={"help": "FID and Div score the first S seconds of each dance (Bailando: 20); BAS the whole dance."}
    )
    do_sample: bool = field(default=False, metadata={"help": "Sample the dances (seeded) instead of decoding greedily (Bailando's test)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with do_sample)."})
    top_k: int | None = field(default=None, metadata={"help": "Sample from the k most likely codes only (with do_sample)."})
    resamples: int = field(default=1000, metadata={"help": "Bootstrap draws of the pieces for the 95% intervals (0: none)."})
    noise_level_demos: int = field(default=1, metadata={"help": "Table 3: demonstrations per training sequence and noise level (0: no Table 3)."})
    seen_unseen: bool = field(default=True, metadata={"help": "Table 5: the BC policy on the training music too."})
    batch_size: int = field(default=64, metadata={"help": "Pieces generated together."})
    seed: int = 0

    def __post_init__(self):
        run = RunLayout(self.run_dir)
        self.output_dir = self.output_dir or str(run.eval)
        self.data_path = self.data_path or str(run.data)
        self.bc_path = self.bc_path or str(run.bc)
        self.e3d2_path = self.e3d2_path or str(run.ppo_policy)
        self.beat_path = self.beat_path or str(run.ppo_beat_policy)
        self.reward_model_path = self.reward_model_path or str(run.reward)
        self.demonstrations_path = self.demonstrations_path or str(run.demonstrations)
        if self.dance_seconds is not None and self.dance_seconds <= 0:
            raise E3D2Error(f"eval: dance_seconds must be positive (or null), got {self.dance_seconds}")
        if self.fid_div_seconds <= 0:
            raise E3D2Error(f"eval: fid_div_seconds must be positive, got {self.fid_div_seconds}")
        if self.batch_size < 1 or self.temperature <= 0:
            raise E3D2Error("eval: batch_size and temperature must be positive")
        if self.resamples < 0 or self.noise_level_demos < 0:
            raise E3D2Error(f"eval: resamples and noise_level_demos must not be negative, got {self.resamples}, {self.noise_level_demos}")


def dance_protocol(config: EvalConfig) -> dict[str, Any]:
    """How long the dances are and which part of them each metric scores, as metrics.json records it."""
    return {"dance_seconds": config.dance_seconds, "fid_div_seconds": config.fid_div_seconds, "bas_scope": "whole dance"}


def describe_dances(protocol: dict[str, Any]) -> str:
    """`whole pieces (FID/Div: first 20.0 s, BAS: whole dance)` from a protocol record.

    A record from before the whole-piece protocol has `eval_seconds` instead: the dance was cut
    there and every metric scored the cut.
    """
    if "eval_seconds" in protocol and "dance_seconds" not in protocol:
        seconds = protocol["eval_seconds"]
        return "whole pieces (every metric on all of it)" if seconds is None else f"first {seconds} s of each piece (every metric on the cut)"
    length = "whole pieces" if protocol.get("dance_seconds") is None else f"first {protocol['dance_seconds']} s of each piece"
    return f"{length} (FID/Div: first {protocol.get('fid_div_seconds')} s, BAS: {protocol.get('bas_scope', '?')})"


def policy_evaluation(
    policy_path: str, config: EvalConfig, data: Any, ground_truth: GroundTruth, reward: LearnedReward | None
) -> tuple[E3D2PolicyModel, HeldOutEvaluation, Any]:
    """A policy, the held-out evaluation of it and the run's pose codes under its VQ-VAE (the pieces' first codes a_0)."""
    policy = load_run_policy(policy_path).eval()
    vqvae = policy.load_vqvae()
    codes = load_or_encode_codes(config.run_dir, vqvae, data_path=config.data_path, progress=False)
    evaluation = HeldOutEvaluation(
        held_out_pieces(codes, data, config.splits, config.dance_seconds, vqvae.config),
        ground_truth,
        reward,
        batch_size=config.batch_size,
        do_sample=config.do_sample,
        temperature=config.temperature,
        top_k=config.top_k,
        seed=config.seed,
        fid_div_seconds=config.fid_div_seconds,
    )
    return policy, evaluation, codes


def _row(evaluation: HeldOutEvaluation, clips: dict[str, Any], learned_return: float | None, what: str, config: EvalConfig) -> dict[str, Any]:
    """One row: the metrics, their intervals, the learned return, and the bootstrap draws (popped before writing)."""
    row = evaluation.scores(clips, what, intervals=config.resamples, keep_draws=True)
    row["learned_return"] = learned_return
    return row


def _dance_row(evaluation: HeldOutEvaluation, dances: HeldOutDances, what: str, config: EvalConfig) -> dict[str, Any]:
    return _row(evaluation, dances.clips, dances.learned_return, what, config)


def _paired_with_bc(rows: dict[str, dict[str, Any]]) -> None:
    """Each row's "minus_bc_ci95": the interval of (row - BC) over the same draws of the same pieces; pops the draws."""
    draws = {label: row.pop("draws", None) for label, row in rows.items()}
    if draws.get("bc") is None:
        return
    for label, row in rows.items():
        if label != "bc" and draws[label] is not None:
            row["minus_bc_ci95"] = paired_interval(draws[label], draws["bc"])


def _check_splits(data: Any, config: EvalConfig) -> None:
    unknown = [split for split in config.splits if split not in data]
    if unknown:
        raise E3D2Error(f"eval: splits {unknown} are not splits of {config.data_path} ({', '.join(data)})")
    for split in config.splits:
        if len(data[split]) < MIN_HELDOUT_PIECES:
            raise E3D2Error(
                f"eval: held-out split '{split}' of {config.data_path} has {len(data[split])} piece(s); "
                f"Div and the intervals need at least {MIN_HELDOUT_PIECES} (the paper scores 40 val + test pieces)"
            )


def evaluate_run(config: EvalConfig) -> dict[str, Any]:
    """Table 1 (+ Tables 3 and 5) of a run folder -> `config.output_dir`/metrics.json and metrics.md; returns the table."""
    data = load_prepared(config.data_path)
    _check_splits(data, config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricWarning)
        ground_truth = GroundTruth.from_prepared(data, config.data_path)
    for message in dict.fromkeys(str(warning.message) for warning in caught):
        logger.warning("eval: %s", message)
    reward_model = load_run_reward_model(config.reward_model_path, required=False)
    reward = LearnedReward(reward_model) if reward_model is not None else None

    bc_policy, evaluation, codes = policy_evaluation(config.bc_path, config, data, ground_truth, reward)
    evaluations = [evaluation]
    rows = {  # the reward model scores codes: the ground truth's learned return is the vqvae row's
        "ground_truth": _row(evaluation, ground_truth.clips(evaluation.pieces), None, "ground truth", config),
        "vqvae": _dance_row(evaluation, evaluation.reconstruct(bc_policy.load_vqvae()), "VQ-VAE (the ground truth's codes)", config),
        "bc": _dance_row(evaluation, evaluation.dance(bc_policy), config.bc_path, config),
    }
    for label, path in (("e3d2", config.e3d2_path), ("beat", config.beat_path)):
        if (Path(path) / "config.json").is_file():
            policy, policy_evaluation_, _ = policy_evaluation(path, config, data, ground_truth, reward)
            rows[label] = _dance_row(policy_evaluation_, policy_evaluation_.dance(policy), path, config)
            evaluations.append(policy_evaluation_)
        elif label == "e3d2":
            logger.warning("eval: no PPO policy at %s (run scripts/ppo.py); the table has no E3D2 row", path)
    rows["random"] = _dance_row(evaluation, evaluation.dance(bc_policy, noise_level=1.0), "random codes (eps = 1)", config)
    _paired_with_bc(rows)
    table: dict[str, Any] = {label: rows[label] for label in ROW_LABELS if label in rows}

    seen = training_music_evaluation(config, bc_policy, codes, data, ground_truth, reward)
    evaluations.append(seen)
    table["noise_levels"] = noise_level_table(config, bc_policy, seen, Path(config.demonstrations_path))
    if config.seen_unseen:
        table["seen_unseen"] = seen_unseen_table(config, bc_policy, seen, rows["bc"], len(evaluation.pieces))
    ablation = table_2({"e3d2": Path(config.e3d2_path).parent, "beat": Path(config.beat_path).parent})
    if ablation is not None:
        table["table_2"] = ablation
    diagnostics_file = Path(config.reward_model_path) / "diagnostics.json"
    if diagnostics_file.is_file():
        diagnostics = json.loads(diagnostics_file.read_text())
        table["reward_model"] = {key: diagnostics.get(key) for key in REWARD_MODEL_KEYS}
    table["protocol"] = {
        "pieces": len(evaluation.pieces),
        "pieces_per_split": {split: len(data[split]) for split in config.splits},
        "splits": list(config.splits),
        **dance_protocol(config),
        "decoding": "sampled" if config.do_sample else "greedy",
        "generation": "cache",  # E3D2PolicyModel.generate's strategy: the rolling KV cache (= one banded forward)
        "intervals": {"level": DEFAULT_LEVEL, "resamples": config.resamples, "over": "held-out pieces", "method": "percentile bootstrap"},
        "ground_truth_clips": len(ground_truth.dances),
        "fid_div_reference": (
            "every motion of the dataset minus the ignore list, whole (Bailando's extract_aist_features.py)"
            if (Path(config.data_path) / REFERENCE_MOTIONS).is_file()
            else f"the prepared splits' dances only ({REFERENCE_MOTIONS} missing: prepared before the reference set had it)"
        ),
        "config": dataclasses.asdict(config),
    }
    table["warnings"] = list(dict.fromkeys([str(warning.message) for warning in caught] + [m for e in evaluations for m in e.warnings]))
    table["versions"] = environment_versions()
    output_dir = Path(config.output_dir)
    with atomic_file(output_dir / METRICS_FILE, "w") as handle:
        handle.write(json.dumps(table, indent=2) + "\n")
    with atomic_file(output_dir / TABLE_FILE, "w") as handle:
        handle.write(format_table_1(table) + "\n")
    logger.info("eval -> %s\n%s", output_dir, format_table_1(table))
    return table


DIGITS = {"FID_k": 1, "FID_g": 1, "Div_k": 2, "Div_g": 2, "BAS": 4, "PFC": 4, "learned_return": 2}


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.3e}" if abs(value) >= 1e6 else f"{value:.{digits}f}"


def _cell(row: dict[str, Any], column: str) -> str:
    """`307.9 [290.1, 325.3]`: the number and its 95% interval, when the row has one."""
    text = _number(row.get(column), DIGITS[column])
    interval = (row.get("ci95") or {}).get(column)
    if interval is not None and row.get(column) is not None:
        text += f" [{_number(interval[0], DIGITS[column])}, {_number(interval[1], DIGITS[column])}]"
    return text


def _markdown_rows(first_column: str, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    columns = [*METRIC_KEYS, "learned_return"]
    lines = [f"| {first_column} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    return lines + [f"| {label} | " + " | ".join(_cell(row, column) for column in columns) + " |" for label, row in rows]


def format_table_1(table: dict[str, Any]) -> str:
    """Markdown: Table 1 in the paper's layout (+ learned return, each number with its 95% interval), the
    reward model's accuracy, Tables 2, 3 and 5, and where Table 4 and Figure 6 are."""
    lines = _markdown_rows("Method", [(label, table[key]) for key, label in ROW_LABELS.items() if key in table])
    protocol = table.get("protocol", {})
    per_split = ", ".join(f"{split} {count}" for split, count in protocol.get("pieces_per_split", {}).items())
    intervals = protocol.get("intervals") or {}
    lines += [
        "",
        f"{protocol.get('pieces', '?')} held-out pieces ({per_split or ', '.join(protocol.get('splits', []))}), "
        f"{describe_dances(protocol)}, {protocol.get('decoding', '?')} decoding ({protocol.get('generation', '?')} generation); [low, high]: 95% bootstrap interval "
        f"over the pieces ({intervals.get('resamples', 0)} draws; a draw repeats pieces, which raises FID: its interval sits "
        "above the number, wholly so where the FID is near 0).",
    ]
    accuracy = table.get("reward_model")
    if accuracy:
        lines.append(
            f"Reward model, held-out pair accuracy: seen music {_number(accuracy['pair_accuracy_seen'], 3)}, "
            f"unseen music {_number(accuracy['pair_accuracy_unseen'], 3)}; own vs another piece's music (chance 0.5): "
            f"seen {_number(accuracy.get('mismatched_music_accuracy_seen'), 3)}, unseen {_number(accuracy.get('mismatched_music_accuracy_unseen'), 3)}."
        )
    paired = [(label, table[key]["minus_bc_ci95"]) for key, label in ROW_LABELS.items() if "minus_bc_ci95" in table.get(key, {})]
    if paired:
        lines += ["", "Paired with BC (row - BC over the same draws of the same pieces; an interval without 0 is beyond their noise):", ""]
        lines += ["| Method | " + " | ".join(f"{key} - BC" for key in INTERVAL_METRICS) + " |", "|---|" + "---:|" * len(INTERVAL_METRICS)]
        for label, differences in paired:
            cells = ["-" if differences.get(key) is None else "[" + ", ".join(f"{value:+.{DIGITS[key]}f}" for value in differences[key]) + "]"
                     for key in INTERVAL_METRICS]  # fmt: skip
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if table.get("table_2"):
        lines += ["", "Table 2: PPO's held-out evaluations over its interaction steps, learned reward vs hand-designed beat reward", ""]
        lines += format_table_2(table["table_2"], ROW_LABELS)
    if table.get("noise_levels"):
        lines += ["", "Table 3: demonstrations by noise level eps, on training music (RUN/demos, eval_seen)", ""]
        lines += _markdown_rows("eps", list(table["noise_levels"].items()))
    if table.get("seen_unseen"):
        lines += ["", "Table 5: the BC policy on the training music (seen) and on the held-out music (unseen)", ""]
        lines += _markdown_rows("Music", [(f"{name} ({row['pieces']} pieces)", row) for name, row in table["seen_unseen"].items()])
    run_dir = (protocol.get("config") or {}).get("run_dir", "RUN")
    lines += [
        "",
        f"Table 4 (BC next-code accuracy): {run_dir}/bc/diagnostics.json. Figure 6 (reward model accuracy curve): "
        f"{run_dir}/reward/diagnostics.json and diagnostics.png.",
    ]
    return "\n".join(lines)


__all__ = ["EvalConfig", "dance_protocol", "describe_dances", "evaluate_run", "format_table_1", "policy_evaluation"]
