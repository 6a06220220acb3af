"""The paper's Table 1 for a run folder: ground truth, the BC policy and the E3D2 (PPO) policy on held-out music.

    python scripts/eval.py recipes/tiny.yaml            # -> RUN/eval/metrics.json, RUN/eval/metrics.md

Each policy's row is the held-out evaluation (`e3d2_hf.rl.heldout`, the one PPO's periodic
evaluation uses too): one dance per held-out piece (`splits`, paper: the 40 AIST++ val + test
pieces) from its ground-truth first pose code, the first `eval_seconds` (paper: 20 s), scored by
FID_k, FID_g, Div_k, Div_g, BAS, PFC and, when RUN/reward exists, the mean learned return. The
ground-truth row scores the held-out ground-truth dances, cut the same way, with the same code. The
reward model's held-out pair accuracy (RUN/reward/diagnostics.json) is reported beside the table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e3d2_hf.data.prepare import load_prepared
from e3d2_hf.rl.heldout import GroundTruth, HeldOutEvaluation, held_out_pieces
from e3d2_hf.metrics.protocol import METRIC_KEYS
from e3d2_hf.recipe import RunLayout
from e3d2_hf.rl.rewards import LearnedReward
from e3d2_hf.trainers.loading import load_run_policy, load_run_reward_model
from e3d2_hf.trainers.pose_codes import load_or_encode_codes
from e3d2_hf.utils import E3D2Error, atomic_file

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
TABLE_FILE = "metrics.md"
ROW_LABELS = {"ground_truth": "Ground Truth", "bc": "BC (Bailando)", "e3d2": "E3D2"}


@dataclass
class EvalConfig:
    """The `eval:` section of a recipe."""

    run_dir: str = field(default="runs/e3d2", metadata={"help": "Run folder (data, bc, ppo, reward are read from it)."})
    output_dir: str | None = field(default=None, metadata={"help": "Default <run_dir>/eval."})
    data_path: str | None = field(default=None, metadata={"help": "Prepared dataset (default <run_dir>/data)."})
    bc_path: str | None = field(default=None, metadata={"help": "Behaviour-cloning policy (default <run_dir>/bc)."})
    e3d2_path: str | None = field(default=None, metadata={"help": "PPO policy (default <run_dir>/ppo/policy); skipped when absent."})
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model for the learned return (default <run_dir>/reward)."})
    splits: list[str] = field(default_factory=lambda: ["val", "test"], metadata={"help": "Held-out splits to dance to."})
    eval_seconds: float | None = field(default=20.0, metadata={"help": "Dance the first S seconds of each piece (paper: 20; null: all)."})
    do_sample: bool = field(default=True, metadata={"help": "Sample the dances (seeded), as PPO's evaluation does; false: greedy."})
    temperature: float = 1.0
    top_k: int | None = None
    batch_size: int = field(default=64, metadata={"help": "Pieces generated together."})
    seed: int = 0

    def __post_init__(self):
        run = RunLayout(self.run_dir)
        self.output_dir = self.output_dir or str(run.eval)
        self.data_path = self.data_path or str(run.data)
        self.bc_path = self.bc_path or str(run.bc)
        self.e3d2_path = self.e3d2_path or str(run.ppo_policy)
        self.reward_model_path = self.reward_model_path or str(run.reward)
        if self.eval_seconds is not None and self.eval_seconds <= 0:
            raise E3D2Error(f"eval: eval_seconds must be positive (or null), got {self.eval_seconds}")
        if self.batch_size < 1 or self.temperature <= 0:
            raise E3D2Error("eval: batch_size and temperature must be positive")


def policy_evaluation(
    policy_path: str, config: EvalConfig, data: Any, ground_truth: GroundTruth, reward: LearnedReward | None
) -> tuple[dict[str, Any], HeldOutEvaluation]:
    """One policy's row of the table (the paper's metrics + learned return), and the held-out evaluation it came from.

    The pieces are read from the pose codes of the policy's own VQ-VAE (its first codes a_0).
    """
    policy = load_run_policy(policy_path).eval()
    vqvae = policy.load_vqvae()
    codes = load_or_encode_codes(config.run_dir, vqvae, data_path=config.data_path, progress=False)
    evaluation = HeldOutEvaluation(
        held_out_pieces(codes, data, config.splits, config.eval_seconds, vqvae.config),
        ground_truth,
        reward,
        batch_size=config.batch_size,
        do_sample=config.do_sample,
        temperature=config.temperature,
        top_k=config.top_k,
        seed=config.seed,
    )
    dances = evaluation.dance(policy)
    row = evaluation.scores(dances.clips, policy_path)
    row["learned_return"] = dances.learned_return
    return row, evaluation


def evaluate_run(config: EvalConfig) -> dict[str, Any]:
    """Table 1 of a run folder -> `config.output_dir`/metrics.json and metrics.md; returns the table."""
    data = load_prepared(config.data_path)
    unknown = [split for split in config.splits if split not in data]
    if unknown:
        raise E3D2Error(f"eval: splits {unknown} are not splits of {config.data_path} ({', '.join(data)})")
    ground_truth = GroundTruth.from_prepared(data)
    reward_model = load_run_reward_model(config.reward_model_path, required=False)
    reward = LearnedReward(reward_model) if reward_model is not None else None

    table: dict[str, Any] = {}
    rows = {"bc": config.bc_path, "e3d2": config.e3d2_path}
    if not (Path(config.e3d2_path) / "config.json").is_file():
        logger.warning("eval: no PPO policy at %s (run scripts/ppo.py); the table has ground truth and BC only", config.e3d2_path)
        del rows["e3d2"]
    evaluation = None
    for label, path in rows.items():
        table[label], evaluation = policy_evaluation(path, config, data, ground_truth, reward)
    table = {"ground_truth": evaluation.scores(ground_truth.clips(evaluation.pieces), "ground truth"), **table}

    diagnostics_file = Path(config.reward_model_path) / "diagnostics.json"
    if diagnostics_file.is_file():
        diagnostics = json.loads(diagnostics_file.read_text())
        table["reward_model"] = {key: diagnostics.get(key) for key in ("pair_accuracy_seen", "pair_accuracy_unseen", "pair_accuracy_train", "monotonic")}
    table["protocol"] = {
        "pieces": len(evaluation.pieces),
        "splits": list(config.splits),
        "eval_seconds": config.eval_seconds,
        "ground_truth_clips": len(ground_truth.dances),
        "config": dataclasses.asdict(config),
    }
    output_dir = Path(config.output_dir)
    with atomic_file(output_dir / METRICS_FILE, "w") as handle:
        handle.write(json.dumps(table, indent=2) + "\n")
    with atomic_file(output_dir / TABLE_FILE, "w") as handle:
        handle.write(format_table_1(table) + "\n")
    logger.info("eval -> %s\n%s", output_dir, format_table_1(table))
    return table


def _cell(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.3e}" if abs(value) >= 1e6 else f"{value:.{digits}f}"


def format_table_1(table: dict[str, Any]) -> str:
    """Markdown in the paper's Table 1 layout (+ learned return), with the reward model's accuracy below it."""
    digits = {"FID_k": 2, "FID_g": 2, "Div_k": 2, "Div_g": 2, "BAS": 4, "PFC": 4, "learned_return": 2}
    columns = [*METRIC_KEYS, "learned_return"]
    lines = ["| Method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for key, label in ROW_LABELS.items():
        if key in table:
            lines.append(f"| {label} | " + " | ".join(_cell(table[key].get(column), digits[column]) for column in columns) + " |")
    protocol = table.get("protocol", {})
    lines += ["", f"{protocol.get('pieces', '?')} held-out pieces ({', '.join(protocol.get('splits', []))}), first {protocol.get('eval_seconds')} s each."]
    accuracy = table.get("reward_model")
    if accuracy:
        lines.append(
            f"Reward model, held-out pair accuracy: seen music {_cell(accuracy['pair_accuracy_seen'], 3)}, "
            f"unseen music {_cell(accuracy['pair_accuracy_unseen'], 3)}."
        )
    return "\n".join(lines)


__all__ = ["EvalConfig", "evaluate_run", "format_table_1", "policy_evaluation"]
