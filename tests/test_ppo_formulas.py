"""PPO's formulas (`e3d2_hf.rl.ppo_formulas`) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from e3d2_hf.rl import ppo_formulas as ppo


def test_returns_and_advantages_match_hand_computed_values():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    advantages, returns = ppo.return_advantages(rewards, values, gamma=1.0)
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0, 1.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.8, 0.9]]))
    torch.testing.assert_close(ppo.discounted_returns(rewards, 0.9), torch.tensor([[0.81, 0.9, 1.0]]))

    # GAE: deltas = (0 + 0.2 - 0.5, 0 + 0.1 - 0.2, 1 + 0 - 0.1) = (-0.3, -0.1, 0.9)
    advantages, targets = ppo.gae_advantages(rewards, values, gamma=1.0, gae_lambda=0.95)
    expected = torch.tensor([[-0.3 + 0.95 * (-0.1 + 0.95 * 0.9), -0.1 + 0.95 * 0.9, 0.9]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(targets, expected + values)
    # lambda = 1 telescopes to the paper's return-minus-value form
    torch.testing.assert_close(ppo.gae_advantages(rewards, values, 1.0, 1.0)[0], ppo.return_advantages(rewards, values, 1.0)[0])

    whitened = ppo.whiten(torch.tensor([1.0, 2.0, 3.0]), torch.tensor(2.0), torch.tensor(1.0))
    torch.testing.assert_close(whitened, torch.tensor([-1.0, 0.0, 1.0]))


def test_kl_penalty_clipped_loss_and_value_statistics_match_hand_computed_values():
    rewards, kl = ppo.kl_penalized_rewards(
        torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -2.0, -2.0]]), kl_beta=0.1
    )
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -1.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 3.1]]))

    ratios = torch.tensor([1.5, 0.5, 1.1])
    advantages = torch.tensor([1.0, -1.0, 2.0])
    loss, clip_fraction, approx_kl = ppo.clipped_surrogate_loss(ratios.log(), torch.zeros(3), advantages, clip_ratio=0.2)
    # per element max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2; max(0.5, 0.8) = 0.8; max(-2.2, -2.2) = -2.2
    assert float(loss) == pytest.approx((-1.2 + 0.8 - 2.2) / 3, abs=1e-6)
    assert float(clip_fraction) == pytest.approx(2 / 3)
    assert float(approx_kl) == pytest.approx(float(np.mean([r - 1 - math.log(r) for r in (1.5, 0.5, 1.1)])), abs=1e-6)

    assert float(ppo.value_loss(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))) == pytest.approx(0.5 * (1 + 4) / 2)
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert ppo.explained_variance(returns, returns) == pytest.approx(1.0)
    assert ppo.explained_variance(torch.full((4,), 2.5), returns) == pytest.approx(0.0)

    controller = ppo.KLController(0.1, target=1.0, horizon=1000)
    controller.update(kl=2.0, num_episodes=100)  # error clipped to +0.2 -> beta * (1 + 0.2 * 0.1)
    assert controller.value == pytest.approx(0.1 * 1.02)
    fixed = ppo.KLController(0.1)
    fixed.update(kl=5.0, num_episodes=100)
    assert fixed.value == 0.1


def test_action_log_probs_use_the_sampling_distribution_of_both_halves():
    generator = torch.Generator().manual_seed(0)
    upper_logits, lower_logits = torch.randn(2, 3, 6, generator=generator), torch.randn(2, 3, 6, generator=generator)
    upper, lower = torch.randint(0, 6, (2, 3), generator=generator), torch.randint(0, 6, (2, 3), generator=generator)
    log_probs, entropy = ppo.action_log_probs(upper_logits, lower_logits, upper, lower, temperature=0.7)
    up, low = (upper_logits / 0.7).log_softmax(-1), (lower_logits / 0.7).log_softmax(-1)
    torch.testing.assert_close(log_probs, up.gather(-1, upper[..., None])[..., 0] + low.gather(-1, lower[..., None])[..., 0])
    torch.testing.assert_close(entropy, -(up.exp() * up).sum(-1) - (low.exp() * low).sum(-1))
    # top-k: codes outside the k best get probability 0; the kept ones renormalise
    kept = ppo.sampling_logits(upper_logits, 1.0, top_k=2).softmax(-1)
    assert torch.equal((kept > 0).sum(-1), torch.full((2, 3), 2))
