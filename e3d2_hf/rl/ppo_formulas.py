"""PPO's formulas on the dance MDP, one named function each, with the equation it computes.

`e3d2_hf.trainers.ppo_trainer` uses them in this order every PPO step (method.md, paper Eqs. 14, 16):

    log pi(a_t|s_t)    = log p(upper_t) + log p(lower_t)                       `action_log_probs`
    r_t                = r_task,t - beta * (log pi_old(a_t|s_t) - log pi_BC(a_t|s_t))   `kl_penalized_rewards`
    G_t                = r_t + gamma G_{t+1}                                    `discounted_returns`
    A_t                = G_t - V(s_t)                          (Eq. 14)         `return_advantages`
                  or   = sum_l (gamma lambda)^l delta_{t+l},  delta_t = r_t + gamma V(s_{t+1}) - V(s_t)   `gae_advantages`
    A_t               <- (A_t - mean A) / (std A + 1e-8)                        `whiten`
    L_clip             = mean(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)))   (Eq. 16)   `clipped_surrogate_loss`
    L_V                = 0.5 mean((V(s_t) - G_t)^2)                             `value_loss`
    beta              <- beta (1 + clip(KL / target - 1, -0.2, 0.2) n / horizon) `KLController`

plus the critic's `explained_variance` and the exact `categorical_kl` of the held-out evaluation.
Every distribution is the one actions are sampled from (`sampling_logits`: temperature, top-k), so
recomputed log-probabilities equal the rollout's. They live in `rl/`, below the trainer, because
the held-out evaluation measures the KL to pi_BC with the same distributions.
"""

from __future__ import annotations

import numpy as np
import torch
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

TOP_K_FLOOR = -1e4  # logit of codes outside the top-k: probability 0 in float32, yet finite gradients


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


def categorical_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_c p_c (log p_c - log q_c) over the last axis, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


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


__all__ = [
    "TOP_K_FLOOR",
    "KLController",
    "action_log_probs",
    "categorical_kl",
    "clipped_surrogate_loss",
    "discounted_returns",
    "explained_variance",
    "gae_advantages",
    "kl_penalized_rewards",
    "return_advantages",
    "sampling_logits",
    "value_loss",
    "whiten",
]
