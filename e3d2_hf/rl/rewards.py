"""Reward functions PPO can optimise, behind one small interface.

A `RewardFunction` maps finished episodes (`Episodes`: T steps, step 0 the data's a_0) to the task
reward of each of the T-1 actions, a (B, T-1) tensor; the PPO trainer adds the KL penalty per step.

- `LearnedReward` (E3D2, paper Eq. 4): the reward model's per-step rewards summed over the episode
  and given once, at the last step; every other step gets 0 (sparse):
      r_t = 0 for t < T-1,   r_{T-1} = R(tau) = sum_t r_theta(s_t, a_t).
  The reward model scores actions a_1..a_{T-1} with their music m_1..m_{T-1}, exactly the 29-step
  snippets it was trained to rank (step 0 is dropped, as in the demonstrations' pairs).
- `BeatAlignmentReward` (paper Table 2 ablation, Bailando's hand-designed reward):
      r_t = r_beat,t + lambda * r_orientation,t
  per action t, on the dance decoded to joints by the VQ-VAE. r_beat,t = +beat_reward if a music
  beat and a motion beat both fall in step t's 8-frame window, else -beat_reward (Bailando's
  actor-critic fine-tuning: +/-5; music beats = column 53 of the 60 fps features, motion beats =
  local minima of the smoothed joint speed, `e3d2_hf.metrics.kinematic_beats`).
  r_orientation,t = mean over the window's frames of the cosine between the horizontal directions
  of the shoulder line and the hip line: 1 when upper and lower body face the same way ("the
  consistency of the upper and lower half body", paper Table 2 discussion). Bailando ships the
  orientation term with weight 0; `orientation_weight` (lambda) is the recipe's.

`RewardNormalization` optionally rescales the task reward so that the episode return has mean 0
and standard deviation 1 under the running statistics of every return PPO has gathered so far
(Welford's mean and sum of squared deviations, merged buffer by buffer as Chan et al. do): every
step is divided by `scale` and `shift / scale` is taken off the last step, so the return becomes
(R - shift) / scale for sparse and dense rewards alike. The value network then learns targets of
unit scale whatever the reward model's scale is, and beta of the KL penalty keeps its meaning
(nats per standard deviation of return) when the reward model changes. The trainer updates it
with each step's buffer before computing advantages and records it in checkpoints.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch

from e3d2_hf.metrics.scores import kinematic_beats
from e3d2_hf.models.configuration_policy import PolicyConfig
from e3d2_hf.models.modeling_reward import E3D2RewardModel
from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
from e3d2_hf.motion.skeleton import SMPL_JOINT_NAMES
from e3d2_hf.rl.environment import Episodes
from e3d2_hf.utils import E3D2Error

BAILANDO_BEAT_REWARD = 5.0  # lisiyao21/Bailando actor-critic fine-tuning: +5 / -5 per 8-frame window
UP_AXIS = 1  # joints are y up (contract)
HIP_JOINTS = (SMPL_JOINT_NAMES.index("left_hip"), SMPL_JOINT_NAMES.index("right_hip"))
SHOULDER_JOINTS = (SMPL_JOINT_NAMES.index("left_shoulder"), SMPL_JOINT_NAMES.index("right_shoulder"))


class RewardFunction(ABC):
    """Task reward of every action of finished episodes: `reward(episodes) -> (B, T-1)` float tensor."""

    name: ClassVar[str]
    sparse: ClassVar[bool]

    def check_policy(self, config: PolicyConfig) -> None:
        """Raise `E3D2Error` if this reward cannot score the policy's actions (vocabulary, music width)."""

    def to(self, device: torch.device | str) -> RewardFunction:
        """Move the reward's models to `device`; returns self."""
        return self

    @abstractmethod
    def __call__(self, episodes: Episodes) -> torch.Tensor: ...


class LearnedReward(RewardFunction):
    """The reward model's return, given once at the end of the episode (paper Eq. 4)."""

    name = "learned"
    sparse = True

    def __init__(self, reward_model: E3D2RewardModel):
        self.reward_model = reward_model.eval().requires_grad_(False)

    def check_policy(self, config: PolicyConfig) -> None:
        reward_config = self.reward_model.config
        if reward_config.codebook_size != config.codebook_size:
            raise E3D2Error(
                f"reward model: scores {reward_config.codebook_size} codes per body half, but the policy chooses among "
                f"{config.codebook_size} (the reward model was trained on another VQ-VAE's vocabulary)"
            )
        if reward_config.music_dim != config.music_dim:
            raise E3D2Error(f"reward model: music features of width {reward_config.music_dim}, the policy's are {config.music_dim}")

    def to(self, device: torch.device | str) -> LearnedReward:
        self.reward_model.to(device)
        return self

    @torch.no_grad()
    def returns(self, episodes: Episodes, steps: torch.Tensor | None = None) -> torch.Tensor:
        """R(tau) = sum of r_theta(s_t, a_t) over the actions t = 1..T-1 (B,), in 29-step windows when longer.

        `steps` (B,) gives each episode's own length when right-padded episodes share a batch.
        """
        device = self.reward_model.device
        mask = None
        if steps is not None:
            mask = torch.arange(1, episodes.upper_codes.shape[1], device=device)[None, :] < torch.as_tensor(steps, device=device)[:, None]
        output = self.reward_model.score_trajectory(
            episodes.music_features[:, 1:].to(device),
            episodes.upper_codes[:, 1:].to(device),
            episodes.lower_codes[:, 1:].to(device),
            attention_mask=mask,
        )
        return output.returns.float()

    def __call__(self, episodes: Episodes) -> torch.Tensor:
        returns = self.returns(episodes)
        rewards = torch.zeros(len(episodes), episodes.upper_codes.shape[1] - 1, device=returns.device)
        rewards[:, -1] = returns
        return rewards


def orientation_consistency(joints: torch.Tensor) -> torch.Tensor:
    """Per frame (B, F): cosine between the horizontal shoulder line and the horizontal hip line."""
    horizontal = [axis for axis in range(3) if axis != UP_AXIS]
    shoulders = (joints[:, :, SHOULDER_JOINTS[1]] - joints[:, :, SHOULDER_JOINTS[0]])[..., horizontal]
    hips = (joints[:, :, HIP_JOINTS[1]] - joints[:, :, HIP_JOINTS[0]])[..., horizontal]
    return torch.nn.functional.cosine_similarity(shoulders, hips, dim=-1, eps=1e-8)


class BeatAlignmentReward(RewardFunction):
    """Bailando's hand-designed reward: beat alignment per 8-frame window plus lambda * orientation (dense)."""

    name = "beat"
    sparse = False

    def __init__(self, vqvae: E3D2VQVAE, beat_reward: float = BAILANDO_BEAT_REWARD, orientation_weight: float = 0.0):
        self.vqvae = vqvae.eval().requires_grad_(False)
        self.beat_reward = float(beat_reward)
        self.orientation_weight = float(orientation_weight)

    def check_policy(self, config: PolicyConfig) -> None:
        if self.vqvae.config.codebook_size != config.codebook_size:
            raise E3D2Error(f"VQ-VAE: {self.vqvae.config.codebook_size} codes per half, the policy chooses among {config.codebook_size}")

    def to(self, device: torch.device | str) -> BeatAlignmentReward:
        self.vqvae.to(device)
        return self

    @torch.no_grad()
    def __call__(self, episodes: Episodes) -> torch.Tensor:
        device = self.vqvae.device
        joints = self.vqvae.decode(episodes.upper_codes.to(device), episodes.lower_codes.to(device)).float()
        batch, frames = joints.shape[:2]
        steps, frames_per_step = episodes.upper_codes.shape[1], self.vqvae.config.frames_per_code
        if not bool(torch.isfinite(joints).all()):
            raise E3D2Error("beat reward: the VQ-VAE decoded non-finite joints")
        motion_beats = np.zeros((batch, frames), dtype=bool)
        for index, clip in enumerate(joints.cpu().numpy()):
            motion_beats[index, kinematic_beats(clip)] = True
        music_beats = episodes.music_beats[:, :frames].to(device) > 0.5
        if music_beats.shape[1] != frames:
            raise E3D2Error(f"beat reward: {music_beats.shape[1]} music-beat frames for {frames} motion frames")
        motion_in_window = torch.from_numpy(motion_beats).to(device).view(batch, steps, frames_per_step).any(-1)
        music_in_window = music_beats.view(batch, steps, frames_per_step).any(-1)
        beat = torch.where(music_in_window & motion_in_window, self.beat_reward, -self.beat_reward)
        orientation = orientation_consistency(joints).view(batch, steps, frames_per_step).mean(-1)
        return (beat + self.orientation_weight * orientation)[:, 1:].float()


@dataclass
class RewardNormalization:
    """Running mean and standard deviation of the task return; R becomes (R - shift) / scale (see module docstring).

    `count`, `mean` and `m2` (the sum of squared deviations from the mean) are all the state; they
    are plain floats so that a checkpoint's trainer_state.json restores them exactly.
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, returns: torch.Tensor) -> None:
        """Merge a buffer of episode returns into the statistics (Chan et al.'s pairwise update)."""
        returns = returns.detach().double().flatten().cpu()
        if returns.numel() == 0 or not bool(torch.isfinite(returns).all()):
            raise E3D2Error(f"reward normalisation: needs finite returns, got {returns.numel()} with some non-finite or none")
        count, mean = returns.numel(), float(returns.mean())
        m2 = float(((returns - mean) ** 2).sum())
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    @property
    def shift(self) -> float:
        return self.mean

    @property
    def scale(self) -> float:
        """Standard deviation of every return seen (population, as numpy's default), at least 1e-8."""
        return max(math.sqrt(self.m2 / self.count), 1e-8) if self.count else 1.0

    def __call__(self, rewards: torch.Tensor) -> torch.Tensor:
        normalised = rewards / self.scale
        normalised[:, -1] -= self.shift / self.scale
        return normalised

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


__all__ = [
    "BAILANDO_BEAT_REWARD",
    "BeatAlignmentReward",
    "LearnedReward",
    "RewardFunction",
    "RewardNormalization",
    "orientation_consistency",
]
