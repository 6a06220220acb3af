"""Stage 4: PPO fine-tuning of the behaviour-cloning policy against the learned reward (paper stage 4, Table 7).

TRL 1.x has no PPOTrainer any more, so this trainer owns its loop (CleanRL style, top to bottom);
it reuses TRL's `selective_log_softmax`, `entropy_from_logits` and `disable_dropout_in_model`, and
Accelerate for devices, DDP gradient sync, gathering statistics and trackers.

One PPO step (`PPOTrainer.train`):

1. Rollouts. `rollout_segments` training music segments (the buffer; paper: all of them, 34,319 on
   AIST++), drawn from a reshuffled stream of all segments (train shuffle on), split evenly over
   the processes. For each: initial codes a_0 from the data, the policy samples a_1..a_29
   (temperature / top-k from the recipe, no eps noise), deterministic transitions
   (`e3d2_hf.rl.environment`). Then, with the same sampling settings:
       log pi_old(a_t|s_t), log pi_BC(a_t|s_t) (frozen BC policy), V(s_t).
2. Rewards: the task reward (`e3d2_hf.rl.rewards`: the learned return at the last step,
   paper Eq. 4, or Bailando's beat reward), optionally normalised, plus the per-step KL penalty
       r_t = r_task,t - beta * (log pi_old(a_t|s_t) - log pi_BC(a_t|s_t))          (RLHF, method.md)
   beta fixed (paper 5e-3) or adapted towards `kl_target` (Ziegler et al. 2019). The logged `kl` is
   exactly the per-step log-ratio that enters the reward.
3. Advantages (gamma = 1):
       return-based (paper Eq. 14, default):  A_t = G_t - V(s_t),  G_t = sum_{k>=t} gamma^(k-t) r_k
       GAE (lambda):  delta_t = r_t + gamma V(s_{t+1}) - V(s_t),  A_t = sum_l (gamma lambda)^l delta_{t+l}
   value targets G_t (return-based) or A_t + V(s_t) (GAE); advantages whitened over the whole
   buffer (all processes).
4. `num_ppo_epochs` (paper: 1) passes over the buffer in minibatches of `train_batch_size` (global,
   paper 512), each:
       ratio = exp(log pi(a_t|s_t) - log pi_old(a_t|s_t))
       L_clip = mean(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)))      (eps = 0.2, paper Eq. 16)
       L_V = 0.5 mean((V(s_t) - G_t)^2)
       loss = L_clip + c_V L_V - c_H mean(H(pi(.|s_t)))                     (c_V 0.1, c_H 0)
   gradient norm clipped to 0.5, AdamW lr 3e-4.
5. Logging (trackers, `RUN/ppo/log.jsonl`), evaluation on held-out music every `eval_steps`,
   checkpoints every `save_steps`.

Policy and value network are one module (`PolicyWithValueHead`): the value network shares the
policy's first `value_shared_layers` blocks (paper 6), then has its own `value_num_layers` blocks
(paper 3) and a zero-initialised scalar head. Dropout is switched off for PPO (recomputed
log-probs must equal the rollout's; the saved config keeps the BC values).

Reads RUN/bc (policy + its VQ-VAE), RUN/reward, RUN/data and the shared pose-code cache RUN/pose_codes
(`e3d2_hf.trainers.pose_codes`, encoded there with the policy's VQ-VAE when missing or stale).
Outputs in `output_dir` (RUN/ppo):
    checkpoints/checkpoint-NNNNNN/  model.safetensors (policy + value network), optimizer.pt,
                           rng_state.pt, trainer_state.json; written atomically, the last
                           `save_total_limit` kept; `--resume` continues from the newest
    log.jsonl              one line per PPO step (and per evaluation)
    tensorboard/           tracker logs
    policy/                the final policy: `save_pretrained` + its VQ-VAE (policy/vqvae) + model
                           card; `AutoModelForCausalLM.from_pretrained(RUN/ppo/policy)` after
                           `import e3d2_hf.models.modeling_policy`
    summary.json           written last: BC vs final learned return and metrics on held-out music,
                           KL, steps, samples/s, curves

Processes: one CPU process, one GPU, or DDP over several processes. On CPU-only machines,
`accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.15's simple launcher);
start real gloo ranks with
    accelerate launch --multi_gpu --num_processes 2 scripts/ppo.py recipes/tiny.yaml
(or `torchrun --nproc_per_node 2 scripts/ppo.py recipes/tiny.yaml`): the trainer asks Accelerate for
CPU ranks whenever no GPU is visible, so the processes join one gloo group.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from transformers import set_seed
from trl.trainer.utils import disable_dropout_in_model, entropy_from_logits, selective_log_softmax

from e3d2_hf.trainers.pose_codes import load_or_encode_codes
from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.models.value import PolicyWithValueHead, ValueHead
from e3d2_hf.trainers import distributed
from e3d2_hf.trainers.distributed import seed_of
from e3d2_hf.trainers.loading import load_policy, load_reward_model
from e3d2_hf.rl.environment import Episodes, HeldOutPieces, MusicSegments
from e3d2_hf.rl.rewards import (
    BAILANDO_BEAT_REWARD,
    BeatAlignmentReward,
    LearnedReward,
    RewardFunction,
    RewardNormalization,
)
from e3d2_hf.recipe import RunLayout
from e3d2_hf.utils import E3D2Error, atomic_directory, atomic_file

logger = logging.getLogger(__name__)

REWARDS = ("learned", "beat")
ADVANTAGE_ESTIMATORS = ("return", "gae")
TOP_K_FLOOR = -1e4  # logit of codes outside the top-k: probability 0 in float32, yet finite gradients
CHECKPOINTS = "checkpoints"
LOG_FILE = "log.jsonl"
SUMMARY_FILE = "summary.json"
POLICY_FOLDER = "policy"


# ==============================================================================================
# Configuration (the recipe's `ppo:` section)
# ==============================================================================================
@dataclass
class PPOConfig:
    """The `ppo:` section of a recipe. Defaults are the paper's (Table 7) where it gives them."""

    # Where things are
    run_dir: str = field(default="runs/e3d2", metadata={"help": "Run folder (data, bc, reward are read from it)."})
    output_dir: str | None = field(default=None, metadata={"help": "Default <run_dir>/ppo."})
    policy_path: str | None = field(default=None, metadata={"help": "Behaviour-cloning policy folder (default <run_dir>/bc)."})
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model folder (default <run_dir>/reward)."})
    data_path: str | None = field(default=None, metadata={"help": "Prepared dataset (default <run_dir>/data)."})
    seed: int = 0

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
    reward_normalization: bool = field(default=False, metadata={"help": "Rescale the task return to mean 0, std 1 on BC rollouts."})
    normalization_segments: int = field(default=512, metadata={"help": "BC rollouts that estimate the normalisation."})

    # KL penalty to the BC policy
    kl_beta: float = field(default=5e-3, metadata={"help": "beta of the per-step KL penalty (paper 5e-3)."})
    kl_target: float | None = field(default=None, metadata={"help": "Per-step KL target of the adaptive beta; None: fixed beta."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon (episodes) of the adaptive beta."})

    # Advantages and losses
    advantage_estimator: str = field(default="return", metadata={"help": "'return' (A = G - V, paper Eq. 14) or 'gae'."})
    gamma: float = 1.0
    gae_lambda: float = 0.95
    whiten_advantages: bool = True
    clip_ratio: float = 0.2
    value_loss_weight: float = 0.1
    entropy_loss_weight: float = 0.0

    # Value network
    value_shared_layers: int | None = field(default=None, metadata={"help": "Policy blocks shared with the value network (None: the policy's num_base_layers)."})
    value_num_layers: int = field(default=3, metadata={"help": "Own blocks of the value network (paper 3)."})
    value_num_attention_heads: int | None = field(default=None, metadata={"help": "Heads of the value blocks (None: the policy's)."})

    # Optimisation
    max_steps: int = field(default=100, metadata={"help": "PPO steps (rollouts + update each)."})
    num_ppo_epochs: int = field(default=1, metadata={"help": "Passes over each buffer (paper: 1)."})
    train_batch_size: int = field(default=512, metadata={"help": "Global minibatch of episodes per optimiser step (paper 512)."})
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-4
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (torch's default; the paper names none)."})
    max_grad_norm: float = 0.5
    per_device_rollout_batch_size: int = field(default=256, metadata={"help": "Episodes per generation / scoring batch."})

    # Evaluation, logging, checkpoints
    eval_steps: int = field(default=10, metadata={"help": "Evaluate on held-out music every N steps (0: only BC and final)."})
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"], metadata={"help": "Held-out splits to dance to."})
    eval_seconds: float | None = field(default=20.0, metadata={"help": "Dance the first S seconds of each piece (None: all)."})
    eval_do_sample: bool = field(default=True, metadata={"help": "Sample evaluation dances (seeded) as in training; false: greedy."})
    eval_metrics: bool = field(default=True, metadata={"help": "Compute the paper's metrics (FID, Div, BAS) at each evaluation."})
    report_to: str = field(default="tensorboard", metadata={"help": "Accelerate tracker ('tensorboard', 'wandb', ... or 'none')."})
    logging_steps: int = 1
    save_steps: int = 10
    save_total_limit: int = 2
    resume: bool = field(default=False, metadata={"help": "Continue from the newest checkpoint in <output_dir>/checkpoints."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start over, deleting earlier checkpoints and logs."})
    push_to_hub: bool = False
    hub_model_id: str | None = None
    use_cpu: bool = False
    mixed_precision: str = "no"

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
            "normalization_segments": self.normalization_segments - 1,
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
        if self.eval_steps < 0 or (self.eval_seconds is not None and self.eval_seconds <= 0):
            problems.append("eval_steps must not be negative and eval_seconds must be positive (or null)")
        if problems:
            raise E3D2Error("ppo: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ==============================================================================================
# The formulas, one function each
# ==============================================================================================
def sampling_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """Logits of the distribution actions are sampled from: divided by the temperature, top-k kept."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, TOP_K_FLOOR)
    return logits


def action_log_probs(
    upper_logits: torch.Tensor,
    lower_logits: torch.Tensor,
    upper_actions: torch.Tensor,
    lower_actions: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(a_t|s_t) = log p(upper_t) + log p(lower_t) (halves chosen independently) and H = H_upper + H_lower.

    Logits (B, T, codebook), actions (B, T); both results (B, T), under the sampling distribution.
    """
    upper = sampling_logits(upper_logits, temperature, top_k)
    lower = sampling_logits(lower_logits, temperature, top_k)
    log_probs = selective_log_softmax(upper, upper_actions) + selective_log_softmax(lower, lower_actions)
    return log_probs, entropy_from_logits(upper) + entropy_from_logits(lower)


def kl_penalized_rewards(
    task_rewards: torch.Tensor, log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kl_beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = r_task,t - beta * kl_t with kl_t = log pi(a_t|s_t) - log pi_BC(a_t|s_t); returns (r, kl)."""
    kl = log_probs - ref_log_probs
    return task_rewards - kl_beta * kl, kl


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1}, G after the last step = 0 (the episode ends with the music segment)."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns


def return_advantages(rewards: torch.Tensor, values: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper Eq. 14: A_t = G_t - V(s_t); value targets G_t. Returns (advantages, value targets)."""
    returns = discounted_returns(rewards, gamma)
    return returns - values, returns


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE: delta_t = r_t + gamma V(s_{t+1}) - V(s_t) (V = 0 after the end), A_t = delta_t + gamma lambda A_{t+1}.

    Returns (advantages, value targets A_t + V(s_t)).
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = rewards + gamma * next_values - values
    for t in reversed(range(rewards.shape[1])):
        running = deltas[:, t] + gamma * gae_lambda * running
        advantages[:, t] = running
    return advantages, advantages + values


def whiten(values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / (std + 1e-8): advantages with zero mean and unit scale over the buffer."""
    return (values - mean) / (std + 1e-8)


def clipped_surrogate_loss(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, clip_ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped objective (paper Eq. 16) as a loss, with its clip fraction and approximate KL.

    ratio = exp(log pi - log pi_old); loss = mean(max(-A ratio, -A clip(ratio, 1-eps, 1+eps)));
    clip fraction = share of |ratio - 1| > eps; approx KL = mean((ratio - 1) - log ratio) (k3).
    """
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        clip_fraction = ((ratio - 1.0).abs() > clip_ratio).float().mean()
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
    return loss, clip_fraction, approx_kl


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """L_V = 0.5 * mean((V(s_t) - G_t)^2)."""
    return 0.5 * (values - returns).pow(2).mean()


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(G - V) / Var(G): 1 for a perfect critic, 0 for a constant one (nan if G is constant)."""
    variance = returns.float().var()
    return float("nan") if variance == 0 else float(1.0 - (returns - values).float().var() / variance)


class KLController:
    """beta of the KL penalty: fixed, or adaptive (Ziegler et al. 2019) towards a per-step KL target.

    Adaptive: e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n / horizon), n = episodes.
    """

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, num_episodes: int) -> None:
        if self.target is None:
            return
        error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * num_episodes / self.horizon


# ==============================================================================================
# Helpers: processes, the reference policy, RNG state
# ==============================================================================================
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


def _rng_states() -> dict[str, Any]:
    """Global RNG states in a form `torch.load(weights_only=True)` reads back."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *map(float, numpy_state[2:])],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(position), int(has_gauss), float(cached)))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


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


# ==============================================================================================
# The trainer
# ==============================================================================================
class PPOTrainer:
    """PPO on the dance MDP: rollouts -> rewards -> advantages -> clipped updates -> logs, evaluations, checkpoints.

    Args:
        config: the recipe's `ppo:` section.
        policy: the behaviour-cloning policy (trained in place; a frozen copy becomes pi_BC).
        reward_function: the task reward (`LearnedReward`, `BeatAlignmentReward` or any `RewardFunction`).
        segments: the training music segments (the environment's episodes).
        learned_reward: the learned reward for logging and evaluation when training on another reward
            (defaults to `reward_function` when that is a `LearnedReward`).
        held_out: held-out music for evaluation (main process); None skips evaluation.
        ground_truth: `ground_truth_features` of the dataset for the paper's metrics; None skips them.
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
        held_out: HeldOutPieces | None = None,
        ground_truth: Any | None = None,
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
        self.held_out = held_out
        self.ground_truth = ground_truth

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
        model = PolicyWithValueHead(policy, value_head, config.value_shared_layers).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
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
        self.normalization: RewardNormalization | None = None
        self.state = TrainerState(kl_beta=config.kl_beta)

    # ------------------------------------------------------------------------------------------
    # Small utilities
    # ------------------------------------------------------------------------------------------
    @property
    def policy(self) -> E3D2PolicyModel:
        return self.accelerator.unwrap_model(self.model).policy

    def _global_mean(self, value: torch.Tensor | float) -> float:
        """Mean over processes of a per-process mean (every process holds the same number of items)."""
        tensor = torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device).reshape(1)
        return float(self.accelerator.reduce(tensor, reduction="mean"))

    def _any_process(self, condition: bool) -> bool:
        """True on every process when `condition` holds on any (so all stop together)."""
        flag = torch.tensor([float(condition)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum") > 0)

    def _stop(self, problem: str) -> None:
        latest = self._latest_checkpoint()
        kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
        raise E3D2Error(f"ppo step {self.state.step + 1}: {problem}; training stopped, {kept}")

    # ------------------------------------------------------------------------------------------
    # 1. Rollouts
    # ------------------------------------------------------------------------------------------
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

    def optimizer_step(self) -> float:
        """Clip the gradient norm (0.5), step AdamW, clear gradients; returns the norm before clipping."""
        grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm))
        if self._any_process(not math.isfinite(grad_norm)):
            self._stop("non-finite gradient norm")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

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
                stats["grad_norm"] = self.optimizer_step()
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                updates += 1
        return {key: self._global_mean(value / updates) for key, value in totals.items()}

    # ------------------------------------------------------------------------------------------
    # One PPO step, statistics
    # ------------------------------------------------------------------------------------------
    def ppo_step(self, step: int) -> dict[str, float]:
        """Rollouts, rewards, advantages and the update of PPO step `step` (0-based); returns its statistics."""
        started = time.perf_counter()
        rollouts = self.collect_rollouts(step)
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
    # Reward normalisation on BC samples
    # ------------------------------------------------------------------------------------------
    def fit_reward_normalization(self) -> RewardNormalization:
        """Shift and scale of the task return of BC rollouts on `normalization_segments` training segments."""
        count = min(self.config.normalization_segments, len(self.segments))
        count -= count % self.accelerator.num_processes
        rows = np.random.default_rng(seed_of(self.config.seed, 1, 2, 3)).permutation(len(self.segments))[:count]
        share = count // self.accelerator.num_processes
        rank = self.accelerator.process_index
        rows = rows[rank * share : (rank + 1) * share]
        generator = torch.Generator(device=self.accelerator.device).manual_seed(seed_of(self.config.seed, -1, rank))
        returns = []
        for first in range(0, len(rows), self.config.per_device_rollout_batch_size):
            episodes = self.segments.batch(rows[first : first + self.config.per_device_rollout_batch_size]).to(self.accelerator.device)
            returns.append(self.reward_function(self.generate_episodes(episodes, generator)).sum(-1).float())
        return RewardNormalization.fit(self.accelerator.gather(torch.cat(returns)).cpu())

    # ------------------------------------------------------------------------------------------
    # 5. Evaluation on held-out music
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any] | None:
        """Dances for the held-out music: learned return, exact per-step KL to pi_BC and the paper's metrics.

        Main process only (returns None elsewhere, or without held-out music). The sampling seed is
        fixed, so the BC policy and later policies face the same random numbers.
        """
        if self.held_out is None or len(self.held_out) == 0 or not self.accelerator.is_main_process:
            return None
        pieces, policy, device = self.held_out, self.policy, self.accelerator.device
        generator = torch.Generator(device=device).manual_seed(seed_of(self.config.seed, -2))
        returns, kls, clips = [], [], {}
        for rows in pieces.batches(self.config.per_device_rollout_batch_size):
            upper, lower, music, steps = pieces.dance(
                policy, rows, do_sample=self.config.eval_do_sample, temperature=self.config.temperature, top_k=self.config.top_k, generator=generator
            )
            mask = torch.arange(1, upper.shape[1], device=device)[None] < torch.as_tensor(steps, device=device)[:, None]
            if self.learned_reward is not None:
                episodes = Episodes(upper, lower, music, torch.zeros(0))
                returns.append(self.learned_reward.returns(episodes, steps=torch.as_tensor(steps)).cpu())
            kls.append(self._exact_kl(upper, lower, music, mask).cpu())
            if policy.vqvae is not None and self.config.eval_metrics:
                clips.update(pieces.joints(policy.vqvae, rows, upper, lower))
        result: dict[str, Any] = {
            "learned_return": float(torch.cat(returns).mean()) if returns else None,
            "learned_return_per_step": float((torch.cat(returns) / torch.as_tensor(pieces.steps - 1)).mean()) if returns else None,
            "kl": float(torch.cat(kls).sum() / float((pieces.steps - 1).sum())),
            "metrics": self._metrics(clips) if clips else None,
        }
        return result

    def _exact_kl(self, upper: torch.Tensor, lower: torch.Tensor, music: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per dance, sum over steps of KL(pi(.|s_t) || pi_BC(.|s_t)) = KL_upper + KL_lower (exact, from the logits)."""
        ours = self.policy.log_probs(upper, lower, music)
        reference = self.ref_policy.log_probs(upper, lower, music)
        total = torch.zeros_like(mask, dtype=torch.float32)
        for half in ("upper_logits", "lower_logits"):
            log_p = sampling_logits(getattr(ours, half), self.config.temperature, self.config.top_k).log_softmax(-1)
            log_q = sampling_logits(getattr(reference, half), self.config.temperature, self.config.top_k).log_softmax(-1)
            total += (log_p.exp() * (log_p - log_q)).sum(-1)
        return (total * mask).sum(-1)

    def _metrics(self, clips: dict[str, np.ndarray]) -> dict[str, Any] | None:
        """The paper's metrics of the generated clips against the dataset (None when they cannot be computed)."""
        if self.ground_truth is None or len(clips) < 2:
            return None
        from e3d2_hf.metrics import evaluate_dances

        beats = {name: self.held_out.music_beats[name] for name in clips}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                metrics = evaluate_dances(clips, self.ground_truth, beats)
            except E3D2Error as exc:
                logger.warning("evaluation metrics skipped: %s", exc)
                return None
        if caught:
            logger.info("evaluation metrics: %d warning(s), e.g. %s", len(caught), caught[0].message)
        return metrics

    # ------------------------------------------------------------------------------------------
    # Checkpoints
    # ------------------------------------------------------------------------------------------
    def _checkpoint_dirs(self) -> list[Path]:
        folder = self.output_dir / CHECKPOINTS
        found = [path for path in folder.glob("checkpoint-*") if (path / "trainer_state.json").is_file()] if folder.is_dir() else []
        return sorted(found, key=lambda path: int(path.name.split("-")[-1]))

    def _latest_checkpoint(self) -> Path | None:
        found = self._checkpoint_dirs()
        return found[-1] if found else None

    def save_checkpoint(self) -> Path:
        """Weights (policy + value network), optimizer, RNG and trainer state of the current step, atomically."""
        folder = self.output_dir / CHECKPOINTS / f"checkpoint-{self.state.step:06d}"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.state.kl_beta = self.kl_controller.value
            self.state.reward_normalization = self.normalization.to_dict() if self.normalization else None
            weights = {name: tensor.detach().cpu().contiguous() for name, tensor in self.accelerator.unwrap_model(self.model).state_dict().items()}
            with atomic_directory(folder) as tmp:
                save_file(weights, str(tmp / "model.safetensors"))
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(_rng_states(), tmp / "rng_state.pt")
                (tmp / "trainer_state.json").write_text(json.dumps(dataclasses.asdict(self.state), indent=2) + "\n")
            for old in self._checkpoint_dirs()[: -self.config.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return folder

    def load_checkpoint(self, folder: Path) -> None:
        """Continue from `folder`: weights, optimizer, RNG, step, beta, normalisation, evaluations."""
        device = self.accelerator.device
        try:
            weights = load_file(str(folder / "model.safetensors"), device=str(device))
            optimizer_state = torch.load(folder / "optimizer.pt", map_location=device, weights_only=True)
            rng_states = torch.load(folder / "rng_state.pt", weights_only=True)
            state = json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError, RuntimeError) as exc:
            raise E3D2Error(f"{folder}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
        self.accelerator.unwrap_model(self.model).load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer_state)
        _restore_rng_states(rng_states)
        self.state = TrainerState(**state)
        self.kl_controller.value = self.state.kl_beta
        self.normalization = RewardNormalization(**self.state.reward_normalization) if self.state.reward_normalization else None
        logger.info("resumed from %s (step %d)", folder, self.state.step)

    def _prepare_output_dir(self) -> None:
        """Resume from the newest checkpoint, or start clean (refusing to mix with an earlier run's files)."""
        earlier = [self.output_dir / name for name in (CHECKPOINTS, LOG_FILE, SUMMARY_FILE, POLICY_FOLDER)]
        latest = self._latest_checkpoint()
        if self.config.resume and latest is not None:
            self.load_checkpoint(latest)
            if self.accelerator.is_main_process and (self.output_dir / LOG_FILE).is_file():
                kept = [line for line in (self.output_dir / LOG_FILE).read_text().splitlines() if json.loads(line)["step"] <= self.state.step]
                with atomic_file(self.output_dir / LOG_FILE, "w") as handle:
                    handle.write("".join(line + "\n" for line in kept))
            return
        if any(path.exists() for path in earlier):
            if not (self.config.overwrite_output_dir or self.config.resume):
                raise E3D2Error(
                    f"{self.output_dir}: holds an earlier PPO run; pass --resume true to continue it "
                    "or --overwrite_output_dir true to start over"
                )
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                for path in earlier:
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------
    # Logging
    # ------------------------------------------------------------------------------------------
    def log(self, record: dict[str, Any], step: int) -> None:
        """To the trackers (numbers only) and as one line of `log.jsonl` (main process)."""
        numbers = {key: value for key, value in _flatten(record).items() if isinstance(value, (int, float)) and value is not None}
        if self.accelerator.trackers:
            self.accelerator.log(numbers, step=step)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / LOG_FILE, "a") as handle:
                handle.write(json.dumps({"step": step, **record}) + "\n")

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
            if config.reward_normalization:
                self.normalization = self.fit_reward_normalization()
                logger.info("reward normalisation on BC rollouts: shift %.4g, scale %.4g", self.normalization.shift, self.normalization.scale)

        for step in range(self.state.step, config.max_steps):
            stats = self.ppo_step(step)
            self.state.step = step + 1
            self.state.history.append({"step": self.state.step, **{key: stats[key] for key in ("learned_return", "task_return", "kl") if key in stats}})
            if self.state.step % config.logging_steps == 0 or self.state.step == config.max_steps:
                self.log(stats, step=self.state.step)
            if config.eval_steps and self.state.step % config.eval_steps == 0 and self.state.step != config.max_steps:
                evaluation = self.evaluate()
                if evaluation is not None:
                    self.state.evaluations.append({"step": self.state.step, **evaluation})
                    self.log({"eval": evaluation}, step=self.state.step)
            if self.state.step % config.save_steps == 0 or self.state.step == config.max_steps:
                self.save_checkpoint()

        final = self.evaluate()
        if final is not None:
            self.state.evaluations.append({"step": self.state.step, **final})
            self.log({"eval": final}, step=self.state.step)
        summary = self.summary(final)
        self.save_model(self.output_dir / POLICY_FOLDER, summary)
        if config.push_to_hub:
            summary["pushed_to_hub"] = self.push_to_hub()
        if self.accelerator.is_main_process:  # written last: its presence marks a finished run
            with atomic_file(self.output_dir / SUMMARY_FILE, "w") as handle:
                handle.write(json.dumps(summary, indent=2) + "\n")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return summary

    def summary(self, final: dict[str, Any] | None) -> dict[str, Any]:
        """summary.json: BC vs final policy on held-out music, KL, throughput, curves."""
        bc = self.state.bc_evaluation or {}
        final = final or {}
        last = self.state.history[-1] if self.state.history else {}
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
            "reward_normalization": self.normalization.to_dict() if self.normalization else None,
            "held_out_pieces": len(self.held_out) if self.held_out is not None else 0,
            "evaluations": self.state.evaluations,
            "training_curve": self.state.history,
            "notes": {
                "learned_return": "mean over held-out pieces of the reward model's return, steps 1..S-1 in 29-step windows",
                "kl_final": "mean per-step log pi - log pi_BC of the last step's rollouts (the KL in the reward)",
                "kl_final_heldout": "exact mean per-step KL(pi || pi_BC) on the final held-out dances",
            },
        }

    # ------------------------------------------------------------------------------------------
    # The final policy
    # ------------------------------------------------------------------------------------------
    def save_model(self, directory: Path, summary: dict[str, Any]) -> None:
        """`save_pretrained` of the trained policy with its VQ-VAE, a model card and the recipe, atomically."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            with atomic_directory(directory) as tmp:
                self.policy.save_pretrained(tmp)
                (tmp / "README.md").write_text(model_card(self.config, summary))
                (tmp / "training_config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        self.accelerator.wait_for_everyone()

    def push_to_hub(self) -> bool:
        """Publish the final policy folder; a failure (offline, no token) is reported, never raised."""
        if not self.accelerator.is_main_process:
            return False
        folder = self.output_dir / POLICY_FOLDER
        repo_id = self.config.hub_model_id or f"e3d2-{Path(self.config.run_dir).name}"
        try:
            from huggingface_hub import HfApi

            api = HfApi()
            repo = api.create_repo(repo_id, exist_ok=True)
            api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message="E3D2 PPO policy")
        except Exception as exc:  # offline mode, missing token, network: the trained policy stays on disk
            logger.error("push_to_hub: could not publish %s to '%s' (%s: %s); the policy is saved locally", folder, repo_id, type(exc).__name__, exc)
            return False
        logger.info("push_to_hub: published %s as %s", folder, repo.repo_id)
        return True


# ==============================================================================================
# Model card, tracker config
# ==============================================================================================
CARD_KEYS = (
    "reward", "segment_steps", "segment_stride", "rollout_segments", "temperature", "top_k", "kl_beta", "kl_target",
    "advantage_estimator", "gamma", "gae_lambda", "whiten_advantages", "clip_ratio", "value_loss_weight",
    "entropy_loss_weight", "value_shared_layers", "value_num_layers", "max_steps", "num_ppo_epochs",
    "train_batch_size", "learning_rate", "weight_decay", "max_grad_norm", "reward_normalization", "seed",
)  # fmt: skip
METRIC_ORDER = ("FID_k", "FID_g", "Div_k", "Div_g", "BAS", "PFC")


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(config: PPOConfig, summary: dict[str, Any]) -> str:
    """README.md of the final policy: what it is, what it reached against the BC policy, the recipe."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name="transformers", tags=["e3d2", "dance-generation", "ppo", "reinforcement-learning", "music-to-dance"])
    metrics_bc, metrics_final = summary.get("metrics_bc") or {}, summary.get("metrics_final") or {}
    lines = [
        "# E3D2 dance policy (PPO)",
        "",
        "A GPT policy over VQ-VAE pose codes that dances to music (E3D2, \"Explore 3D Dance Generation via Reward Model",
        "from Automatically-Ranked Demonstrations\"). Fine-tuned from the behaviour-cloning policy with PPO on the "
        f"**{summary['reward']}** reward for {summary['steps']} steps ({summary['episodes']} episodes of "
        f"{config.segment_steps - 1} actions), with a per-step KL penalty to the behaviour-cloning policy.",
        "",
        f"## Held-out music ({summary['held_out_pieces']} pieces)",
        "",
        "| policy | learned return | " + " | ".join(METRIC_ORDER) + " |",
        "|---|---|" + "---|" * len(METRIC_ORDER),
        f"| behaviour cloning | {_cell(summary['learned_return_bc'])} | " + " | ".join(_cell(metrics_bc.get(key)) for key in METRIC_ORDER) + " |",
        f"| PPO (this model) | {_cell(summary['learned_return_final'])} | " + " | ".join(_cell(metrics_final.get(key)) for key in METRIC_ORDER) + " |",
        "",
        f"Per-step KL to the behaviour-cloning policy: {_cell(summary['kl_final'])} (last training rollouts), "
        f"{_cell(summary['kl_final_heldout'])} (exact, held-out dances).",
        "",
        "## Recipe (section `ppo`)",
        "",
        "| key | value |",
        "|---|---|",
        *(f"| {key} | {_cell(getattr(config, key))} |" for key in CARD_KEYS),
        "",
        "## Use",
        "",
        "```python",
        "import e3d2_hf.models.modeling_policy  # registers the policy with the Auto classes",
        "from transformers import AutoModelForCausalLM",
        "from e3d2_hf.models.modeling_policy import music_to_joints",
        "policy = AutoModelForCausalLM.from_pretrained(PATH)  # its VQ-VAE is in PATH/vqvae",
        "joints = music_to_joints(policy, music_features_7p5, seed_motion=first_frames)  # (8 * steps, 24, 3) at 60 fps",
        "```",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines)))


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


# ==============================================================================================
# From a run folder
# ==============================================================================================
def train_ppo(config: PPOConfig) -> Path:
    """Stage 4 from a run folder: BC policy + reward + prepared data -> `config.output_dir` (RUN/ppo); returns it."""
    from e3d2_hf.data.prepare import load_prepared

    accelerator = make_accelerator(config)
    try:  # a process that stops (even on an error) leaves the process group cleanly, not with gloo's abort
        set_seed(config.seed)
        device = accelerator.device
        policy = load_policy(config.policy_path).to(device)
        vqvae = policy.load_vqvae().to(device)
        reward_model = load_reward_model(config.reward_model_path, required=config.reward == "learned")
        learned_reward = LearnedReward(reward_model) if reward_model is not None else None
        if config.reward == "learned":
            reward_function: RewardFunction = learned_reward
        else:
            reward_function = BeatAlignmentReward(vqvae, config.beat_reward, config.orientation_weight)
        for reward in (reward_function, learned_reward):
            if reward is not None:
                reward.check_policy(policy.config)

        data = load_prepared(config.data_path)
        unknown = [split for split in config.eval_splits if split not in data]
        if unknown:
            raise E3D2Error(f"ppo: eval_splits {unknown} are not splits of {config.data_path} ({', '.join(data)})")
        with accelerator.main_process_first():  # the main process encodes RUN/pose_codes if needed, the others read it
            codes = load_or_encode_codes(config.run_dir, vqvae, data_path=config.data_path, progress=accelerator.is_main_process)
        frames_per_step = vqvae.config.frames_per_code
        segments = MusicSegments.from_codes(codes["train"], config.segment_steps, config.segment_stride, frames_per_step)
        held_out = ground_truth = None
        if accelerator.is_main_process:
            max_steps = None if config.eval_seconds is None else max(2, round(config.eval_seconds * vqvae.config.fps / frames_per_step))
            held_out = HeldOutPieces.from_codes(
                [codes[split] for split in config.eval_splits], [data[split] for split in config.eval_splits], frames_per_step, max_steps
            )
            if config.eval_metrics:
                from e3d2_hf.metrics import ground_truth_features

                every_dance = {
                    row["name"]: np.asarray(row["joints"], dtype=np.float32)
                    for split in data.values()
                    for row in split.with_format("numpy", columns=["name", "joints"])
                }
                ground_truth = ground_truth_features(every_dance)
        trainer = PPOTrainer(
            config, policy, reward_function, segments, learned_reward=learned_reward, held_out=held_out, ground_truth=ground_truth, accelerator=accelerator
        )
        summary = trainer.train()
        if accelerator.is_main_process:
            logger.info(
                "PPO -> %s: learned return BC %s -> final %s, per-step KL %s, %.1f episodes/s",
                config.output_dir, _cell(summary["learned_return_bc"]), _cell(summary["learned_return_final"]),
                _cell(summary["kl_final"]), summary["samples_per_second"] or 0.0,
            )  # fmt: skip
    finally:
        accelerator.state.destroy_process_group()
    return Path(config.output_dir)


__all__ = [
    "KLController",
    "PPOConfig",
    "PPOTrainer",
    "TrainerState",
    "action_log_probs",
    "clipped_surrogate_loss",
    "discounted_returns",
    "explained_variance",
    "frozen_reference",
    "gae_advantages",
    "kl_penalized_rewards",
    "make_accelerator",
    "model_card",
    "return_advantages",
    "sampling_logits",
    "train_ppo",
    "value_loss",
    "whiten",
]
