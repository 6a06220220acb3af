"""Stage 4's trainer: PPO fine-tunes the behaviour-cloning policy against a reward (paper stage 4, Table 7).

TRL 1.x has no PPOTrainer any more, so this trainer owns its loop and reads top to bottom like
CleanRL's ppo.py: `train`, then each `ppo_step`: rollouts -> rewards -> advantages -> update, every
formula a named function of `e3d2_hf.rl.ppo_formulas` (whose docstring lists the equations).
Accelerate gives devices, DDP gradient sync, gathering statistics and trackers.

1. Rollouts: `rollout_segments` training music segments (the buffer; paper: all 34,319 of AIST++),
   a window of a reshuffled stream of all segments, split evenly over the processes. Each episode
   starts from the data's a_0; the policy samples a_1..a_29 (the recipe's temperature / top-k, no
   eps noise) through deterministic transitions (`e3d2_hf.rl.environment`); then, under the same
   distribution, log pi_old(a_t|s_t), log pi_BC(a_t|s_t) (the frozen BC policy) and V(s_t).
2. Rewards: the task reward (`e3d2_hf.rl.rewards`: the learned return at the last step, paper
   Eq. 4, or Bailando's beat reward), optionally normalised (`reward_normalization`: by the running
   mean and std of every return gathered so far, this buffer's included), minus beta times the
   per-step KL log pi_old - log pi_BC (the logged `kl`); beta fixed (paper 5e-3) or adapted to `kl_target`.
3. Advantages (gamma = 1): A_t = G_t - V(s_t) (paper Eq. 14, default) or GAE, whitened over the
   whole buffer (all processes).
4. Update: `num_ppo_epochs` (paper: 1) passes over the buffer in minibatches of `train_batch_size`
   (global, paper 512) on L_clip + c_V L_V - c_H H (eps 0.2, paper Eq. 16; c_V 0.1, c_H 0),
   AdamW lr 3e-4 (the value network's own weights: `value_learning_rate`), the gradient norms of
   the policy and of the value network's own weights each clipped to 0.5.
5. Logging (trackers, `OUTPUT/log.jsonl`, drawn at the end as `OUTPUT/curves.png`), evaluation
   every `eval_steps` and at the end by the `evaluator` it is given (`train_ppo` gives the held-out
   evaluation), checkpoints every `save_steps` (`e3d2_hf.trainers.checkpoints`). The saved policy
   is the last one, or with `best_policy_metric` that of the PPO evaluation (step >= 1) best on the
   `best_policy_split` dances alone (val: never the test numbers Table 1 reports), a guard
   against a learned return that rises while the dances get worse (reward hacking).

Policy and value network are one module (`PolicyWithValueHead`): the value network shares the
policy's first `value_shared_layers` blocks (paper 6), then has its own `value_num_layers` blocks
(paper 3) and a zero-initialised scalar head; with `value_detach_base` the value loss does not
train the shared blocks. Dropout is switched off for PPO (recomputed log-probs must equal the
rollout's; the saved config keeps the BC values).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from trl.trainer.utils import disable_dropout_in_model

from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.models.value import PolicyWithValueHead, ValueHead
from e3d2_hf.models.weights import short_reason
from e3d2_hf.rl.environment import Episodes, MusicSegments
from e3d2_hf.rl.ppo_formulas import (
    KLController,
    action_log_probs,
    clipped_surrogate_loss,
    explained_variance,
    gae_advantages,
    kl_penalized_rewards,
    return_advantages,
    value_loss,
    whiten,
)
from e3d2_hf.rl.rewards import LearnedReward, RewardFunction, RewardNormalization
from e3d2_hf.rl.seeding import seed_of
from e3d2_hf.trainers import checkpoints, distributed
from e3d2_hf.trainers.ppo_config import BEST_POLICY_METRICS, PPOConfig
from e3d2_hf.trainers.ppo_curves import CURVES_FILE, plot_curves
from e3d2_hf.trainers.ppo_model_card import model_card, push_to_hub
from e3d2_hf.utils import E3D2Error, atomic_directory, atomic_file

logger = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
SUMMARY_FILE = "summary.json"
POLICY_FOLDER = "policy"


@dataclass
class TrainerState:
    """What a checkpoint records besides weights, optimizer and RNG (trainer_state.json)."""

    step: int = 0
    kl_beta: float = 0.0
    reward_normalization: dict[str, float] | None = None
    bc_evaluation: dict[str, Any] | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    total_samples: int = 0
    train_seconds: float = 0.0
    config_changes: list[dict[str, Any]] = field(default_factory=list)  # settings a resume changed, and from which step
    best_policy: dict[str, Any] | None = None  # the evaluation that chose the saved policy so far: step, split, metric, value


class PolicyEvaluator(Protocol):
    """What the trainer calls to evaluate the policy (`e3d2_hf.rl.heldout.HeldOutEvaluation` in a run).

    `len()` is the number of pieces it dances to; `evaluate` returns a record with at least
    `learned_return`, `kl` and `metrics` (the summary reads them), JSON-serialisable.
    """

    def __len__(self) -> int: ...

    def evaluate(self, policy: E3D2PolicyModel, reference_policy: E3D2PolicyModel) -> dict[str, Any]: ...


class PPOTrainer:
    """PPO on the dance MDP: rollouts -> rewards -> advantages -> clipped updates -> logs, evaluations, checkpoints.

    Args:
        config: the recipe's `ppo:` section.
        policy: the behaviour-cloning policy (trained in place; a frozen copy becomes pi_BC).
        reward_function: the task reward (`LearnedReward`, `BeatAlignmentReward` or any `RewardFunction`).
        segments: the training music segments (the environment's episodes).
        learned_reward: the learned reward for logging when training on another reward
            (defaults to `reward_function` when that is a `LearnedReward`).
        evaluator: evaluates the policy before training, every `eval_steps` and at the end (main
            process); None skips evaluation.
        accelerator: default `make_accelerator(config)`.
    """

    def __init__(
        self,
        config: PPOConfig,
        policy: E3D2PolicyModel,
        reward_function: RewardFunction,
        segments: MusicSegments,
        *,
        learned_reward: LearnedReward | None = None,
        evaluator: PolicyEvaluator | None = None,
        accelerator: Accelerator | None = None,
    ):
        self.config = config
        self.accelerator = accelerator or make_accelerator(config)
        self.output_dir = Path(config.output_dir)
        device = self.accelerator.device
        if learned_reward is None and isinstance(reward_function, LearnedReward):
            learned_reward = reward_function
        for reward in (reward_function, learned_reward):
            if reward is not None:
                reward.check_policy(policy.config)
        if segments.music_dim != policy.config.music_dim:
            raise E3D2Error(f"music segments: music features of width {segments.music_dim}, the policy expects {policy.config.music_dim}")
        if segments.segment_steps - 1 > policy.config.context_length:
            raise E3D2Error(
                f"ppo: episodes of {segments.segment_steps - 1} actions exceed the policy's context of "
                f"{policy.config.context_length} steps (segment_steps must be at most context_length + 1)"
            )
        self.reward_function = reward_function.to(device)
        self.learned_reward = learned_reward.to(device) if learned_reward is not None else None
        self.segments = segments
        self.evaluator = evaluator

        policy.to(device)
        disable_dropout_in_model(policy)
        self.ref_policy = frozen_reference(policy)
        value_head = ValueHead(
            policy.config.hidden_size,
            num_layers=config.value_num_layers,
            num_attention_heads=config.value_num_attention_heads or policy.config.num_attention_heads,
            context_length=policy.config.context_length,
            intermediate_size=policy.config.intermediate_size,
            layer_norm_eps=policy.config.layer_norm_eps,
            initializer_range=policy.config.initializer_range,
        )
        model = PolicyWithValueHead(policy, value_head, config.value_shared_layers, detach_base=config.value_detach_base).to(device)
        optimizer = torch.optim.AdamW(
            [{"params": list(model.policy.parameters())}, {"params": list(model.value_head.parameters())}],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        self._set_learning_rates(optimizer)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

        world = self.accelerator.num_processes
        buffer = config.rollout_segments or len(segments)
        if buffer < world or config.train_batch_size % world:
            raise E3D2Error(
                f"ppo: {world} processes need at least {world} rollout segments (have {buffer}) and a train_batch_size "
                f"divisible by {world} (got {config.train_batch_size})"
            )
        self.rollout_segments = buffer - buffer % world  # every process holds the same number of episodes
        self.local_segments = self.rollout_segments // world
        self.local_batch_size = min(config.train_batch_size // world, self.local_segments)
        if self.local_batch_size < config.gradient_accumulation_steps:
            raise E3D2Error(
                f"ppo: a minibatch of {self.local_batch_size} episodes per process cannot be split into "
                f"{config.gradient_accumulation_steps} gradient-accumulation steps"
            )
        self.kl_controller = KLController(config.kl_beta, config.kl_target, config.kl_horizon)
        self.normalization = RewardNormalization() if config.reward_normalization else None
        self.state = TrainerState(kl_beta=config.kl_beta)
        self.best_weights: dict[str, torch.Tensor] | None = None  # the policy of `state.best_policy` (main process)

    @property
    def policy(self) -> E3D2PolicyModel:
        return self.accelerator.unwrap_model(self.model).policy

    # ------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run PPO to `max_steps`, then save the final policy and write summary.json; returns the summary."""
        config = self.config
        self._prepare_output_dir()
        if self.accelerator.trackers == [] and config.report_to not in ("none", "", None):
            self.accelerator.init_trackers("tensorboard" if config.report_to == "tensorboard" else "ppo", config=_tracker_config(config))
        if self.accelerator.is_main_process:
            logger.info(
                "PPO: %d process(es) (%s), %d training segments, %d episodes per step, minibatch %d, reward '%s'",
                self.accelerator.num_processes, self.accelerator.distributed_type, len(self.segments),
                self.rollout_segments, config.train_batch_size, self.reward_function.name,
            )  # fmt: skip
        if self.state.step == 0:
            self.state.bc_evaluation = self.evaluate()
            if self.state.bc_evaluation is not None:
                self.log({"eval": self.state.bc_evaluation}, step=0)

        for step in range(self.state.step, config.max_steps):
            stats = self.ppo_step(step)
            self.state.step = step + 1
            self.state.history.append({"step": self.state.step, **{key: stats[key] for key in ("learned_return", "task_return", "kl") if key in stats}})
            if self.state.step % config.logging_steps == 0 or self.state.step == config.max_steps:
                self.log(stats, step=self.state.step)
            if config.eval_steps and self.state.step % config.eval_steps == 0 or self.state.step == config.max_steps:
                evaluation = self.evaluate()
                if evaluation is not None:
                    self.state.evaluations.append({"step": self.state.step, **evaluation})
                    self.log({"eval": evaluation}, step=self.state.step)
                    self.consider_best_policy(evaluation)
            if self.state.step % config.save_steps == 0 or self.state.step == config.max_steps:
                self.save_checkpoint()

        summary = self.summary()
        self.save_model(self.output_dir / POLICY_FOLDER, summary)
        if config.push_to_hub:
            summary["pushed_to_hub"] = self.accelerator.is_main_process and push_to_hub(config, self.output_dir / POLICY_FOLDER)
        if self.accelerator.is_main_process:  # curves beside the log; summary.json last: its presence marks a finished run
            plot_curves(self.output_dir / LOG_FILE, self.output_dir / CURVES_FILE, saved_step=summary["policy_step"])
            with atomic_file(self.output_dir / SUMMARY_FILE, "w") as handle:
                handle.write(json.dumps(summary, indent=2) + "\n")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return summary

    def ppo_step(self, step: int) -> dict[str, float]:
        """Rollouts, rewards, advantages and the update of PPO step `step` (0-based); returns its statistics."""
        started = time.perf_counter()
        rollouts = self.collect_rollouts(step)
        if self.normalization is not None:  # this buffer's returns join the statistics before they rescale it
            self.normalization.update(self.accelerator.gather(rollouts["task_rewards"].sum(-1)))
        rollouts.update(self.advantages_and_returns(rollouts))
        gathered = {key: self.accelerator.gather(rollouts[key]) for key in ("values", "returns")}
        stats = {
            "learned_return": self._global_mean(rollouts["learned_returns"].mean()),
            "task_return": self._global_mean(rollouts["task_rewards"].sum(-1).mean()),
            "kl": self._global_mean(rollouts["kl"].mean()),
            "kl_sequence": self._global_mean(rollouts["kl"].sum(-1).mean()),
            "non_score_reward": self._global_mean((-self.kl_controller.value * rollouts["kl"]).sum(-1).mean()),
            "entropy": self._global_mean(rollouts["entropy"].mean()),
            "value_mean": self._global_mean(rollouts["values"].mean()),
            "explained_variance": explained_variance(gathered["values"], gathered["returns"]),
            "kl_beta": self.kl_controller.value,
        }
        if self.normalization is not None:
            stats.update(reward_shift=self.normalization.shift, reward_scale=self.normalization.scale)
        stats.update(self.optimize(rollouts, step))
        self.kl_controller.update(stats["kl"], self.rollout_segments)
        seconds = time.perf_counter() - started
        stats["samples_per_second"] = self.rollout_segments / seconds
        self.state.total_samples += self.rollout_segments
        self.state.train_seconds += seconds
        stats["interaction_steps"] = self.state.total_samples * (self.segments.segment_steps - 1)  # paper Table 2's "steps"
        if math.isnan(stats["learned_return"]):
            del stats["learned_return"]
        return stats

    # ------------------------------------------------------------------------------------------
    # 1. Rollouts
    # ------------------------------------------------------------------------------------------
    def collect_rollouts(self, step: int, rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Episodes of this step's buffer with their log-probs, values and task rewards (this process's share)."""
        rows = self.buffer_rows(step) if rows is None else rows
        device = self.accelerator.device
        generator = torch.Generator(device=device).manual_seed(seed_of(self.config.seed, step, self.accelerator.process_index))
        parts: dict[str, list[torch.Tensor]] = {}
        chunk = self.config.per_device_rollout_batch_size
        problem = None
        for first in range(0, len(rows), chunk):
            episodes = self.generate_episodes(self.segments.batch(rows[first : first + chunk]).to(device), generator)
            scored = self.score_episodes(episodes)
            try:
                task_rewards = self.reward_function(episodes).to(device).float()
                if self.learned_reward is self.reward_function:
                    learned_returns = task_rewards.sum(-1)
                elif self.learned_reward is not None:  # training on another reward: still watch the learned one
                    learned_returns = self.learned_reward.returns(episodes).to(device)
                else:
                    learned_returns = torch.full((len(episodes),), float("nan"), device=device)
            except E3D2Error as exc:  # e.g. the reward model's own non-finite check
                problem = str(exc)
                break
            if not bool(torch.isfinite(task_rewards).all()):
                problem = "non-finite task reward (NaN or inf)"
                break
            batch = {
                "upper_codes": episodes.upper_codes,
                "lower_codes": episodes.lower_codes,
                "music_features": episodes.music_features,
                "task_rewards": task_rewards,
                "learned_returns": learned_returns,
                **scored,
            }
            for key, value in batch.items():
                parts.setdefault(key, []).append(value)
        if self._any_process(problem is not None):  # every process stops, not only the one that saw it
            self._stop(f"the '{self.reward_function.name}' reward failed: {problem or 'on another process'}")
        return {key: torch.cat(values) for key, values in parts.items()}

    def buffer_rows(self, step: int) -> np.ndarray:
        """This process's segments of PPO step `step`: a window of a stream of shuffled passes over all segments."""
        total = len(self.segments)
        start = step * self.rollout_segments
        epoch, offset = divmod(start, total)
        rows: list[np.ndarray] = []
        remaining = self.rollout_segments
        while remaining:
            order = np.random.default_rng(seed_of(self.config.seed, epoch)).permutation(total)
            taken = order[offset : offset + remaining]
            rows.append(taken)
            remaining -= len(taken)
            epoch, offset = epoch + 1, 0
        global_rows = np.concatenate(rows)
        rank = self.accelerator.process_index
        return global_rows[rank * self.local_segments : (rank + 1) * self.local_segments]

    @torch.no_grad()
    def generate_episodes(self, episodes: Episodes, generator: torch.Generator) -> Episodes:
        """The policy's dances from each episode's a_0 to the end of its music (a_1..a_{T-1} sampled)."""
        policy = self.policy
        tokens = policy.generate(
            episodes.music_features,
            upper_codes=episodes.upper_codes[:, :1],
            lower_codes=episodes.lower_codes[:, :1],
            do_sample=True,
            temperature=self.config.temperature,
            top_k=self.config.top_k,
            generator=generator,
        )
        return episodes.with_actions(*policy.split_pose_tokens(tokens))

    @torch.no_grad()
    def score_episodes(self, episodes: Episodes) -> dict[str, torch.Tensor]:
        """log pi_old, log pi_BC, V and the entropy of every action, with the rollout's sampling settings."""
        upper, lower, music = episodes.upper_codes, episodes.lower_codes, episodes.music_features
        output = self.model(upper, lower, music)
        log_probs, entropy = action_log_probs(
            output.upper_logits, output.lower_logits, upper[:, 1:], lower[:, 1:], self.config.temperature, self.config.top_k
        )
        reference = self.ref_policy.log_probs(upper, lower, music)
        ref_log_probs, _ = action_log_probs(
            reference.upper_logits, reference.lower_logits, upper[:, 1:], lower[:, 1:], self.config.temperature, self.config.top_k
        )
        return {"log_probs": log_probs, "ref_log_probs": ref_log_probs, "values": output.values.float(), "entropy": entropy}

    # ------------------------------------------------------------------------------------------
    # 2.-3. Rewards and advantages
    # ------------------------------------------------------------------------------------------
    def advantages_and_returns(self, rollouts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-step rewards with the KL penalty, advantages (whitened over all processes) and value targets."""
        task_rewards = rollouts["task_rewards"]
        if self.normalization is not None:
            task_rewards = self.normalization(task_rewards.clone())
        rewards, kl = kl_penalized_rewards(task_rewards, rollouts["log_probs"], rollouts["ref_log_probs"], self.kl_controller.value)
        if self.config.advantage_estimator == "return":
            advantages, returns = return_advantages(rewards, rollouts["values"], self.config.gamma)
        else:
            advantages, returns = gae_advantages(rewards, rollouts["values"], self.config.gamma, self.config.gae_lambda)
        if self.config.whiten_advantages:
            everything = self.accelerator.gather(advantages)
            advantages = whiten(advantages, everything.mean(), everything.std())
        return {"rewards": rewards, "kl": kl, "advantages": advantages, "returns": returns}

    # ------------------------------------------------------------------------------------------
    # 4. The update
    # ------------------------------------------------------------------------------------------
    def optimize(self, rollouts: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """`num_ppo_epochs` shuffled passes over the buffer in minibatches of `train_batch_size` episodes."""
        keys = ("upper_codes", "lower_codes", "music_features", "log_probs", "advantages", "returns")
        data = {key: rollouts[key] for key in keys}
        totals: dict[str, float] = {}
        updates = 0
        for epoch in range(self.config.num_ppo_epochs):
            order = np.random.default_rng(seed_of(self.config.seed, step, epoch, self.accelerator.process_index)).permutation(self.local_segments)
            for first in range(0, self.local_segments, self.local_batch_size):
                rows = torch.as_tensor(order[first : first + self.local_batch_size], device=self.accelerator.device)
                stats = self.backward_minibatch({key: value[rows] for key, value in data.items()})
                stats["grad_norm"], stats["value_grad_norm"] = self.optimizer_step()
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                updates += 1
        return {key: self._global_mean(value / updates) for key, value in totals.items()}

    def backward_minibatch(self, minibatch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Gradients of the minibatch's mean loss, in `gradient_accumulation_steps` pieces (synced on the last)."""
        size = minibatch["upper_codes"].shape[0]
        pieces = np.array_split(np.arange(size), self.config.gradient_accumulation_steps)
        totals: dict[str, float] = {}
        for index, piece in enumerate(pieces):
            micro = {key: value[piece] for key, value in minibatch.items()}
            last = index == len(pieces) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
                loss, stats = self.compute_loss(micro)
                if self._any_process(not bool(torch.isfinite(loss))):
                    self._stop(f"non-finite loss (policy loss {float(stats['policy_loss']):g}, value loss {float(stats['value_loss']):g})")
                self.accelerator.backward(loss * (len(piece) / size))
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(piece) / size
        return totals

    def compute_loss(self, minibatch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """loss = L_clip + c_V L_V - c_H H on one (micro)batch of episodes."""
        upper, lower = minibatch["upper_codes"], minibatch["lower_codes"]
        output = self.model(upper, lower, minibatch["music_features"])
        log_probs, entropy = action_log_probs(
            output.upper_logits, output.lower_logits, upper[:, 1:], lower[:, 1:], self.config.temperature, self.config.top_k
        )
        policy_loss, clip_fraction, approx_kl = clipped_surrogate_loss(
            log_probs, minibatch["log_probs"], minibatch["advantages"], self.config.clip_ratio
        )
        critic_loss = value_loss(output.values.float(), minibatch["returns"])
        loss = policy_loss + self.config.value_loss_weight * critic_loss - self.config.entropy_loss_weight * entropy.mean()
        stats = {
            "policy_loss": policy_loss.detach(),
            "value_loss": critic_loss.detach(),
            "clip_fraction": clip_fraction,
            "approx_kl": approx_kl,
            "entropy_update": entropy.mean().detach(),
        }
        return loss, stats

    def optimizer_step(self) -> tuple[float, float]:
        """Clip the gradient norms of the policy and of the value network's own weights (0.5 each), step AdamW,
        clear gradients; returns both norms before clipping.

        Clipped apart so that the value loss's gradients, large while the critic is wrong, do not
        shrink the policy's step (clipped together, a value gradient 30x the policy's cut the policy's
        step 30-fold in the tiny run).
        """
        self.accelerator.unscale_gradients()
        policy_group, value_group = (group["params"] for group in self.optimizer.param_groups)
        norms = [float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)) for params in (policy_group, value_group)]
        if self._any_process(not all(math.isfinite(norm) for norm in norms)):
            self._stop("non-finite gradient norm")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norms[0], norms[1]

    def _set_learning_rates(self, optimizer: torch.optim.Optimizer) -> None:
        """The recipe's learning rates and weight decay on the policy's and the value network's parameter groups."""
        for group, lr in zip(optimizer.param_groups, (self.config.learning_rate, self.config.value_learning_rate or self.config.learning_rate)):
            group["lr"], group["weight_decay"] = lr, self.config.weight_decay

    # ------------------------------------------------------------------------------------------
    # 5. Evaluation, summary, logging
    # ------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any] | None:
        """The evaluator's record of the current policy against pi_BC (main process; None elsewhere or without one)."""
        if self.evaluator is None or len(self.evaluator) == 0 or not self.accelerator.is_main_process:
            return None
        return self.evaluator.evaluate(self.policy, self.ref_policy)

    def consider_best_policy(self, evaluation: dict[str, Any]) -> None:
        """Keep the current policy's weights when its evaluation is the best so far by `best_policy_metric` on `best_policy_split`."""
        metric, split = self.config.best_policy_metric, self.config.best_policy_split
        if metric is None:
            return
        value = selection_value(evaluation, split, metric)
        if value is None:
            logger.warning("step %d: no %s of the %s dances; this policy cannot be chosen as the best", self.state.step, metric, split)
            return
        best = self.state.best_policy
        if best is None or BEST_POLICY_METRICS[metric] * (value - best["value"]) > 0:
            self.state.best_policy = {"step": self.state.step, "split": split, "metric": metric, "value": value}
            self.best_weights = {name: tensor.detach().cpu().clone() for name, tensor in self.policy.state_dict().items()}

    def summary(self) -> dict[str, Any]:
        """summary.json: BC vs the saved policy on held-out music, KL, throughput, curves, which policy was saved and why."""
        bc = self.state.bc_evaluation or {}
        best = self.state.best_policy if self.best_weights is not None else None
        policy_step = best["step"] if best else self.state.step
        final = next((record for record in reversed(self.state.evaluations) if record["step"] == policy_step), {})
        last = next((point for point in reversed(self.state.history) if point["step"] == policy_step), {})
        return {
            "reward": self.reward_function.name,
            "steps": self.state.step,
            "episodes": self.state.total_samples,
            "interaction_steps": self.state.total_samples * (self.segments.segment_steps - 1),
            "num_processes": self.accelerator.num_processes,
            "samples_per_second": self.state.total_samples / self.state.train_seconds if self.state.train_seconds else None,
            "learned_return_bc": bc.get("learned_return"),
            "learned_return_final": final.get("learned_return"),
            "kl_final": last.get("kl"),
            "kl_final_heldout": final.get("kl"),
            "kl_beta_final": self.kl_controller.value,
            "metrics_bc": bc.get("metrics"),
            "metrics_final": final.get("metrics"),
            "policy_step": policy_step,
            "best_policy": {**best, "bc_value": selection_value(bc, best["split"], best["metric"])} if best else None,
            "reward_normalization": self.normalization.to_dict() if self.normalization else None,
            "held_out_pieces": len(self.evaluator) if self.evaluator is not None else 0,
            "evaluations": self.state.evaluations,
            "config_changes": self.state.config_changes,
            "training_curve": self.state.history,
            "notes": {
                "learned_return": "mean over held-out pieces of the reward model's return, steps 1..S-1 in 29-step windows",
                "final": "*_final and metrics_final describe the saved policy (RUN/ppo/policy), that of step policy_step",
                "kl_final": "mean per-step log pi - log pi_BC of step policy_step's rollouts (the KL in the reward)",
                "kl_final_heldout": "exact mean per-step KL(pi || pi_BC) on the saved policy's held-out dances",
                "best_policy": "the evaluation (step >= 1) that chose the saved policy, and the BC policy's value of the same number",
            },
        }

    def log(self, record: dict[str, Any], step: int) -> None:
        """To the trackers (numbers only) and as one line of `log.jsonl` (main process)."""
        numbers = {key: value for key, value in _flatten(record).items() if isinstance(value, (int, float)) and value is not None}
        if self.accelerator.trackers:
            self.accelerator.log(numbers, step=step)
        if self.accelerator.is_main_process:
            try:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                with open(self.output_dir / LOG_FILE, "a") as handle:
                    handle.write(json.dumps({"step": step, **record}) + "\n")
            except OSError as exc:  # a full disk: a line cut short is dropped on resume (`keep_log_until`)
                self._stop(f"{self.output_dir / LOG_FILE}: cannot write ({exc.strerror or exc})")

    # ------------------------------------------------------------------------------------------
    # Checkpoints and resume (`e3d2_hf.trainers.checkpoints`)
    # ------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Weights (policy + value network), optimizer, RNG and trainer state of the current step, atomically."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.state.kl_beta = self.kl_controller.value
            self.state.reward_normalization = self.normalization.to_dict() if self.normalization else None
            weights = {name: tensor.detach().cpu().contiguous() for name, tensor in self.accelerator.unwrap_model(self.model).state_dict().items()}
            checkpoints.save_checkpoint(
                self.output_dir, self.state.step, weights, self.optimizer.state_dict(), dataclasses.asdict(self.state), self.config.save_total_limit,
                config=self.config.to_dict(), best_weights=self.best_weights,
            )  # fmt: skip
        self.accelerator.wait_for_everyone()
        return checkpoints.checkpoint_folder(self.output_dir, self.state.step)

    def resume_from(self, checkpoint: checkpoints.Checkpoint) -> None:
        """Continue from `checkpoint`: weights, optimizer, RNG, step, beta, normalisation, evaluations, the best policy so far.

        Refused when the checkpoint is past `max_steps`, or was made with settings that alter the run
        and `resume_with_changes` does not accept them; accepted changes take effect from the next
        step and are logged and recorded (`config_changes` in summary.json).
        """
        folder, config = checkpoint.folder, self.config
        try:
            state = TrainerState(**checkpoint.trainer_state)
        except TypeError as exc:
            raise E3D2Error(f"{folder / checkpoints.STATE_FILE}: not a PPO trainer state ({exc})") from exc
        if state.step > config.max_steps:
            raise E3D2Error(
                f"{folder}: the run is at step {state.step}, past max_steps {config.max_steps}; pass --max_steps {state.step} "
                "or more to continue it, or --overwrite_output_dir true to start over"
            )
        if checkpoint.config is None:
            logger.warning("%s records no config: resuming without checking that the settings are the same", folder)
        changes = config.changes_from(checkpoint.config or {})
        described = ", ".join(f"{name} {then!r} -> {now!r}" for name, (then, now) in changes.items())
        if changes and not config.resume_with_changes:
            raise E3D2Error(
                f"{folder}: made with other settings ({described}); resume with the checkpoint's settings, pass "
                "--resume_with_changes true to accept the changes, or --overwrite_output_dir true to start over"
            )
        try:
            self.accelerator.unwrap_model(self.model).load_state_dict(checkpoint.weights)
            self.optimizer.load_state_dict(checkpoint.optimizer_state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise E3D2Error(f"{folder}: its weights or optimizer do not fit this run's model ({short_reason(exc)}); the model cannot change on resume") from exc
        self._set_learning_rates(self.optimizer)  # the optimizer's state carries the old values
        checkpoints.restore_rng_states(checkpoint.rng_states)
        self.state = state
        self.kl_controller.value = config.kl_beta if "kl_beta" in changes else state.kl_beta
        reward_changed = bool(changes.keys() & {"reward", "reward_model_path", "beat_reward", "orientation_weight"})
        if state.reward_normalization and config.reward_normalization and not reward_changed:
            self.normalization = RewardNormalization(**state.reward_normalization)
        else:  # off now, or gathered afresh from the next step on (a new reward, or switched on)
            self.normalization = RewardNormalization() if config.reward_normalization else None
        if state.best_policy and checkpoint.best_weights is not None and not changes.keys() & {"best_policy_metric", "best_policy_split"}:
            self.best_weights = checkpoint.best_weights
        else:  # none kept yet, or chosen by another number: chosen afresh from the next evaluation on
            self.state.best_policy, self.best_weights = None, None
        if changes:
            logger.warning("resuming %s at step %d with changed settings, in effect from step %d: %s", folder, state.step, state.step + 1, described)
            self.state.config_changes.append({"step": state.step + 1, "changes": {name: {"from": then, "to": now} for name, (then, now) in changes.items()}})
        logger.info("resumed from %s (step %d)", folder, self.state.step)

    def _prepare_output_dir(self) -> None:
        """Resume from the newest readable checkpoint, or start clean (refusing to mix with an earlier run's files)."""
        earlier = [self.output_dir / name for name in (checkpoints.CHECKPOINTS, LOG_FILE, SUMMARY_FILE, POLICY_FOLDER)]
        checkpoint = checkpoints.load_latest_readable(self.output_dir, self.accelerator.device) if self.config.resume else None
        if checkpoint is not None:
            self.resume_from(checkpoint)
            if self.accelerator.is_main_process:
                checkpoints.keep_log_until(self.output_dir / LOG_FILE, self.state.step)
            return
        if any(path.exists() for path in earlier):
            if not (self.config.overwrite_output_dir or self.config.resume):
                raise E3D2Error(
                    f"{self.output_dir}: holds an earlier PPO run; pass --resume true to continue it "
                    "or --overwrite_output_dir true to start over"
                )
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                checkpoints.remove_outputs(earlier)
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------
    # The final policy
    # ------------------------------------------------------------------------------------------
    def save_model(self, directory: Path, summary: dict[str, Any]) -> None:
        """`save_pretrained` of the trained policy (the best one when `best_policy_metric` chose one) with its VQ-VAE,
        a model card and the recipe, atomically."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            policy = self.policy
            if self.best_weights is not None:
                policy = frozen_reference(self.policy)  # a copy sharing the VQ-VAE
                policy.load_state_dict(self.best_weights)
            with atomic_directory(directory) as tmp:
                policy.save_pretrained(tmp)
                model_card(self.config, summary).save(tmp / "README.md")
                (tmp / "training_config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------
    # Across processes
    # ------------------------------------------------------------------------------------------
    def _global_mean(self, value: torch.Tensor | float) -> float:
        """Mean over processes of a per-process mean (every process holds the same number of items)."""
        tensor = torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device).reshape(1)
        return float(self.accelerator.reduce(tensor, reduction="mean"))

    def _any_process(self, condition: bool) -> bool:
        """True on every process when `condition` holds on any (so all stop together)."""
        flag = torch.tensor([float(condition)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum") > 0)

    def _stop(self, problem: str) -> None:
        latest = checkpoints.latest_checkpoint(self.output_dir)
        kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
        raise E3D2Error(f"ppo step {self.state.step + 1}: {problem}; training stopped, {kept}")


def make_accelerator(config: PPOConfig) -> Accelerator:
    """The Accelerator of a PPO run (one CPU process, GPUs, or CPU ranks over gloo: `e3d2_hf.trainers.distributed`)."""
    return distributed.make_accelerator(
        "ppo", use_cpu=config.use_cpu, mixed_precision=config.mixed_precision, report_to=config.report_to, project_dir=config.output_dir
    )


def frozen_reference(policy: E3D2PolicyModel) -> E3D2PolicyModel:
    """A frozen copy of the BC policy, pi_BC of the KL penalty (what TRL's `create_reference_model` does;
    written here so that the attached VQ-VAE is shared, not copied)."""
    vqvae = policy.vqvae
    reference = copy.deepcopy(policy, memo={id(vqvae): vqvae} if vqvae is not None else None)
    return reference.requires_grad_(False).eval()


def selection_value(record: dict[str, Any], split: str, metric: str) -> float | None:
    """An evaluation record's `metric` on the dances of `split` (the whole record when it holds one split only); None if missing."""
    part = (record.get("splits") or {}).get(split, record)
    value = part.get("learned_return") if metric == "learned_return" else (part.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def _tracker_config(config: PPOConfig) -> dict[str, Any]:
    """Hyper-parameters as trackers accept them (scalars and strings only)."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in config.to_dict().items()}


__all__ = ["POLICY_FOLDER", "PPOTrainer", "PolicyEvaluator", "TrainerState", "frozen_reference", "make_accelerator", "selection_value"]
