"""The `ppo:` section of a recipe: every setting of stage 4 (PPO fine-tuning), defaults from the paper's Table 7.

A config dataclass beside its trainer, as TRL keeps them: `e3d2_hf.trainers.ppo_trainer.PPOTrainer`
reads it, `e3d2_hf.trainers.ppo.train_ppo` runs the stage from it, and `e3d2_hf.recipe.parse_recipe`
fills it from a recipe and the command line. Paths default to the run folder's (`RunLayout`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e3d2_hf.recipe import RunLayout
from e3d2_hf.rl.rewards import BAILANDO_BEAT_REWARD
from e3d2_hf.trainers.publishing import check_can_upload
from e3d2_hf.utils import E3D2Error, non_finite_fields

REWARDS = ("learned", "beat")
# The held-out numbers that may choose the saved policy, each with +1 where higher is better, -1 where lower is.
BEST_POLICY_METRICS = {"BAS": 1, "FID_k": -1, "FID_g": -1, "learned_return": 1}
ADVANTAGE_ESTIMATORS = ("return", "gae")
# Fields a resumed run may change freely: where things go, how often they are logged, saved and
# evaluated, on which device. Every other field alters the run (max_steps is checked on its own).
RESUME_NEUTRAL_FIELDS = frozenset(
    {
        "run_dir", "output_dir", "resume", "overwrite_output_dir", "resume_with_changes", "max_steps", "report_to", "logging_steps",
        "save_steps", "save_total_limit", "push_to_hub", "hub_model_id", "use_cpu", "eval_steps", "eval_splits", "eval_dance_seconds",
        "eval_fid_div_seconds", "eval_do_sample", "eval_metrics",
    }
)  # fmt: skip
PATH_FIELDS = ("policy_path", "reward_model_path", "data_path")


@dataclass
class PPOConfig:
    """The `ppo:` section of a recipe. Defaults are the paper's (Table 7) where it gives them."""

    # Where things are
    run_dir: str = field(default="runs/e3d2", metadata={"help": "Run folder (data, bc, reward are read from it)."})
    output_dir: str | None = field(default=None, metadata={"help": "Default <run_dir>/ppo."})
    policy_path: str | None = field(default=None, metadata={"help": "Behaviour-cloning policy folder (default <run_dir>/bc)."})
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model folder (default <run_dir>/reward)."})
    data_path: str | None = field(default=None, metadata={"help": "Prepared dataset (default <run_dir>/data)."})
    seed: int = field(default=0, metadata={"help": "Seed of rollouts, minibatch order and evaluation dances."})

    # Environment (Table 7: trajectory length 29, buffer = number of training music segments)
    segment_steps: int = field(default=30, metadata={"help": "Steps per episode: a_0 from the data + 29 actions."})
    segment_stride: int = field(default=1, metadata={"help": "Steps between the starts of consecutive training segments."})
    rollout_segments: int | None = field(
        default=None, metadata={"help": "Episodes per PPO step (the buffer capacity); None: all training segments."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of rollouts (and recomputed log-probs)."})
    top_k: int | None = field(
        default=None,
        metadata={"help": "Top-k per body half for rollouts; log-probs and KL then use the truncated distributions."},
    )

    # Reward
    reward: str = field(default="learned", metadata={"help": "'learned' (reward model, Eq. 4) or 'beat' (Bailando's, Table 2)."})
    beat_reward: float = field(default=BAILANDO_BEAT_REWARD, metadata={"help": "+/- per 8-frame window (beat reward)."})
    orientation_weight: float = field(default=0.0, metadata={"help": "lambda of the orientation term (beat reward)."})
    reward_normalization: bool = field(
        default=False, metadata={"help": "Rescale the task return by the running mean and std of every return gathered so far."}
    )

    # KL penalty to the BC policy
    kl_beta: float = field(default=5e-3, metadata={"help": "beta of the per-step KL penalty (paper 5e-3)."})
    kl_target: float | None = field(default=None, metadata={"help": "Per-step KL target of the adaptive beta; None: fixed beta."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon (episodes) of the adaptive beta."})

    # Advantages and losses
    advantage_estimator: str = field(default="return", metadata={"help": "'return' (A = G - V, paper Eq. 14) or 'gae'."})
    gamma: float = field(default=1.0, metadata={"help": "Discount of the returns (paper 1: undiscounted)."})
    gae_lambda: float = field(default=0.95, metadata={"help": "lambda of GAE (advantage_estimator gae)."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Normalise the advantages to mean 0, std 1 over the buffer (all processes)."})
    clip_ratio: float = field(default=0.2, metadata={"help": "eps of the clipped surrogate (paper Eq. 16: 0.2)."})
    value_loss_weight: float = field(default=0.1, metadata={"help": "c_V: weight of the value loss (paper 0.1)."})
    entropy_loss_weight: float = field(default=0.0, metadata={"help": "c_H: weight of the entropy bonus (paper 0)."})

    # Value network
    value_shared_layers: int | None = field(default=None, metadata={"help": "Policy blocks shared with the value network (None: the policy's num_base_layers)."})
    value_num_layers: int = field(default=3, metadata={"help": "Own blocks of the value network (paper 3)."})
    value_num_attention_heads: int | None = field(default=None, metadata={"help": "Heads of the value blocks (None: the policy's)."})
    value_detach_base: bool = field(
        default=False, metadata={"help": "Keep the value loss out of the shared blocks (Bailando computes the shared base without gradient)."}
    )
    value_learning_rate: float | None = field(default=None, metadata={"help": "AdamW learning rate of the value network's own parameters (None: learning_rate)."})

    # Optimisation
    max_steps: int = field(default=100, metadata={"help": "PPO steps (rollouts + update each)."})
    num_ppo_epochs: int = field(default=1, metadata={"help": "Passes over each buffer (paper: 1)."})
    train_batch_size: int = field(default=512, metadata={"help": "Global minibatch of episodes per optimiser step (paper 512)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Pieces each minibatch is split into (same update, less memory)."})
    learning_rate: float = field(default=3e-4, metadata={"help": "AdamW learning rate (paper 3e-4)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (torch's default; the paper names none)."})
    max_grad_norm: float = field(default=0.5, metadata={"help": "Gradient norm clip (paper 0.5)."})
    per_device_rollout_batch_size: int = field(default=256, metadata={"help": "Episodes per generation / scoring batch."})

    # Evaluation, logging, checkpoints
    eval_steps: int = field(default=10, metadata={"help": "Evaluate on held-out music every N steps (0: only BC and final)."})
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"], metadata={"help": "Held-out splits to dance to."})
    eval_dance_seconds: float | None = field(
        default=None, metadata={"help": "Dance the first S seconds of each held-out piece (null: the whole piece, as Bailando's test)."}
    )
    eval_fid_div_seconds: float = field(
        default=20.0, metadata={"help": "FID and Div score the first S seconds of each dance (Bailando: 20); BAS the whole dance."}
    )
    eval_do_sample: bool = field(default=True, metadata={"help": "Sample evaluation dances (seeded) as in training; false: greedy."})
    eval_metrics: bool = field(default=True, metadata={"help": "Compute the paper's metrics (FID, Div, BAS) at each evaluation."})
    best_policy_metric: str | None = field(
        default=None,
        metadata={
            "help": "Save as RUN/ppo/policy the policy of the PPO evaluation (step >= 1) with the best value of this held-out number on "
            "best_policy_split: 'BAS' (higher is better), 'FID_k', 'FID_g' (lower), 'learned_return' (higher); None: the last policy."
        },
    )
    best_policy_split: str = field(
        default="val", metadata={"help": "The held-out split (one of eval_splits) whose dances choose the saved policy; not Table 1's test split."}
    )
    report_to: str = field(default="tensorboard", metadata={"help": "Accelerate tracker ('tensorboard', 'wandb', ... or 'none')."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N PPO steps (trackers and log.jsonl)."})
    save_steps: int = field(default=10, metadata={"help": "Checkpoint every N PPO steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (the newest)."})
    resume: bool = field(default=False, metadata={"help": "Continue from the newest checkpoint in <output_dir>/checkpoints."})
    resume_with_changes: bool = field(
        default=False,
        metadata={"help": "Resume even though settings that alter the run differ from the checkpoint's; the changes are logged and kept in summary.json."},
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start over, deleting earlier checkpoints and logs."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final policy (RUN/ppo/policy, with its VQ-VAE) to the Hub after training."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository of push_to_hub (default: e3d2-<run name> in your namespace)."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on the CPU even when a GPU is visible."})
    mixed_precision: str = field(default="no", metadata={"help": "Accelerate mixed precision: 'no', 'fp16' or 'bf16'."})

    def __post_init__(self):
        run = RunLayout(self.run_dir)
        self.output_dir = self.output_dir or str(run.ppo)
        self.policy_path = self.policy_path or str(run.bc)
        self.reward_model_path = self.reward_model_path or str(run.reward)
        self.data_path = self.data_path or str(run.data)
        problems = []
        if self.reward not in REWARDS:
            problems.append(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            problems.append(f"advantage_estimator must be one of {ADVANTAGE_ESTIMATORS}, got {self.advantage_estimator!r}")
        positive = {
            "segment_steps": self.segment_steps - 1,
            "segment_stride": self.segment_stride,
            "max_steps": self.max_steps,
            "num_ppo_epochs": self.num_ppo_epochs,
            "train_batch_size": self.train_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "per_device_rollout_batch_size": self.per_device_rollout_batch_size,
            "logging_steps": self.logging_steps,
            "save_steps": self.save_steps,
            "save_total_limit": self.save_total_limit,
            "kl_horizon": self.kl_horizon,
        }
        problems += [f"{name} is too small ({getattr(self, name)})" for name, value in positive.items() if value < 1]
        if self.rollout_segments is not None and self.rollout_segments < 1:
            problems.append(f"rollout_segments must be positive, got {self.rollout_segments}")
        if self.temperature <= 0 or (self.top_k is not None and self.top_k < 1):
            problems.append(f"temperature must be positive and top_k at least 1, got {self.temperature}, {self.top_k}")
        if self.kl_beta < 0 or (self.kl_target is not None and self.kl_target <= 0):
            problems.append(f"kl_beta must not be negative and kl_target must be positive, got {self.kl_beta}, {self.kl_target}")
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1 and self.clip_ratio > 0 and self.max_grad_norm > 0):
            problems.append("gamma and gae_lambda must lie in [0, 1]; clip_ratio and max_grad_norm must be positive")
        if self.learning_rate <= 0 or (self.value_learning_rate is not None and self.value_learning_rate <= 0):
            problems.append(f"learning_rate and value_learning_rate must be positive, got {self.learning_rate}, {self.value_learning_rate}")
        if self.eval_steps < 0 or (self.eval_dance_seconds is not None and self.eval_dance_seconds <= 0) or self.eval_fid_div_seconds <= 0:
            problems.append("eval_steps must not be negative, eval_dance_seconds must be positive (or null) and eval_fid_div_seconds positive")
        if self.best_policy_metric is not None:
            if self.best_policy_metric not in BEST_POLICY_METRICS:
                problems.append(f"best_policy_metric must be one of {tuple(BEST_POLICY_METRICS)} or null, got {self.best_policy_metric!r}")
            if self.best_policy_split not in self.eval_splits:
                problems.append(f"best_policy_split {self.best_policy_split!r} is not one of eval_splits {self.eval_splits}")
            if self.best_policy_metric != "learned_return" and not self.eval_metrics:
                problems.append(f"best_policy_metric {self.best_policy_metric!r} needs eval_metrics true")
        problems += non_finite_fields(self)
        if problems:
            raise E3D2Error("ppo: " + "; ".join(problems))
        if self.push_to_hub:
            check_can_upload(self.hub_repo_id, "ppo")

    @property
    def hub_repo_id(self) -> str:
        """Where `push_to_hub` publishes the final policy."""
        return self.hub_model_id or f"e3d2-{Path(self.run_dir).name}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changes_from(self, recorded: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The fields that alter the run whose values differ from `recorded` (a checkpoint's config): name -> (then, now).

        Paths inside the run folder are compared relative to it, so a moved run folder resumes.
        """
        now = self.to_dict()
        changes = {}
        for name in sorted(set(now) & set(recorded) - RESUME_NEUTRAL_FIELDS):
            then, current = recorded[name], now[name]
            if name in PATH_FIELDS:
                then, current = _within(then, recorded.get("run_dir")), _within(current, self.run_dir)
            if then != current:
                changes[name] = (recorded[name], now[name])
        return changes


def _within(path: str | None, run_dir: str | None) -> str | None:
    """`path` relative to `run_dir` when it lies inside it, else as an absolute path."""
    if path is None or run_dir is None:
        return path
    absolute, root = os.path.abspath(path), os.path.abspath(run_dir)
    return os.path.relpath(absolute, root) if absolute == root or absolute.startswith(root + os.sep) else absolute


__all__ = ["ADVANTAGE_ESTIMATORS", "BEST_POLICY_METRICS", "PATH_FIELDS", "REWARDS", "RESUME_NEUTRAL_FIELDS", "PPOConfig"]
