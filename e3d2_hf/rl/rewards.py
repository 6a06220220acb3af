"""Reward functions PPO can optimise, behind one small interface.

A `RewardFunction` maps finished episodes (`Episodes`: T steps, step 0 the data's a_0) to the task
reward of each of the T-1 actions, a (B, T-1) tensor; the PPO trainer adds the KL penalty per step.

- `LearnedReward` (E3D2, paper Eq. 4): the reward model's per-step rewards summed over the episode
  and given once, at the last step; every other step gets 0 (sparse):
      r_t = 0 for t < T-1,   r_{T-1} = R(tau) = sum_t r_theta(s_t, a_t).
  The reward model scores actions a_1..a_{T-1} with their music m_1..m_{T-1}, exactly the 29-step
  snippets it was trained to rank (step 0 is dropped, as in the demonstrations' pairs).
- `BeatAlignmentReward` (paper Eq. 8 and Table 2's ablation): Bailando's hand-designed reward,
      r_t = r_beat,t + lambda * r_orientation,t
  per action t, as its actor-critic computes it (lisiyao21/Bailando `actor_critic.py` lines
  172-191 and `models/up_down_half_reward.py` lines 13-83; see `BeatAlignmentReward`).

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
JOINT = {name: index for index, name in enumerate(SMPL_JOINT_NAMES)}


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


def bailando_orientation(pose: torch.Tensor) -> torch.Tensor:
    """Per frame (B, F): Bailando's upper / lower orientation agreement on root-relative joints (B, F, 24, 3).

    `up_down_half_reward.py` lines 57-73: the unit normal of the plane through the root and the
    collars (cross(right collar, left collar)) and that of the plane through the root and the knees
    (cross(left knee, right knee)), both signed by the upper body's direction (the sign of the
    normal's dot with neck -> head, softened by 1e-5; Bailando computes the lower body's own sign and
    uses the upper one for both, kept), their vertical components zeroed (not renormalised); the
    frame's value is the dot product of the two.
    """

    def unit_normal(first: str, second: str) -> torch.Tensor:
        normal = torch.linalg.cross(pose[..., JOINT[first], :], pose[..., JOINT[second], :], dim=-1)
        return normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # a degenerate plane: 0, where Bailando's gives NaN

    upper = unit_normal("right_collar", "left_collar")
    lower = unit_normal("left_knee", "right_knee")
    direction = (upper * (pose[..., JOINT["head"], :] - pose[..., JOINT["neck"], :])).sum(-1, keepdim=True)
    direction = direction / (direction.abs() + 1e-5)
    horizontal = torch.ones(3, dtype=pose.dtype, device=pose.device)
    horizontal[UP_AXIS] = 0.0
    return (upper * direction * horizontal * lower * direction * horizontal).sum(-1)


class BeatAlignmentReward(RewardFunction):
    """Bailando's hand-designed reward, r_t = r_beat,t + lambda * r_orientation,t per action (dense).

    As Bailando's actor-critic (lisiyao21/Bailando `actor_critic.py` lines 172-191,
    `models/up_down_half_reward.py` lines 13-83, `configs/actor_critic.yaml`):

    - the actions alone are decoded, a_0 (the data's, not chosen) left out: Bailando decodes codes
      1..28 of its 30-code window (`rewards_input`, line 173), and its reward reads the decoder's
      raw output: joints relative to the root, the root joint's place holding the root velocity
      (`models/vqvae_root.py` `_decode`), which `E3D2VQVAE.decode_root_relative` gives;
    - music beats: the 60 fps beat track (column 53) of the actions' frames, step 0's 8 frames left
      out (Bailando's `beat_seq[:, 8:-8]`, the frames of codes 1..28);
    - motion beats: `kinematic_beats` (its `calc_db`, the local minima of the smoothed mean joint
      speed) of that decoded output; r_beat,t = +beat_reward (5) when step t's 8 frames hold both a
      music beat and a motion beat, else -beat_reward (`ba_reward`: (beats * dance_beats - 0.5) * 10);
    - r_orientation,t: the minimum over step t's 8 frames of `bailando_orientation`, 1 where that
      minimum is >= 0 (lines 73-74); lambda is `orientation_weight` (Bailando's `rate`, 0 in its
      released config, so its reward is the beat term alone).

    One difference, kept on purpose: Bailando scores 28 of the 29 actions of its window, because its
    critic's 29-step context holds no value for the state after the 29th (lines 172-202: values of
    states 0..28, rewards of codes 1..28); our PPO ends the episode there (no value to bootstrap),
    so every action a_1..a_{T-1} of the episode is decoded and scored.
    """

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

    def decoded_actions(self, episodes: Episodes) -> torch.Tensor:
        """The actions a_1..a_{T-1} decoded as Bailando's reward sees them (B, 8(T-1), 24, 3): root-relative joints, root velocity at joint 0."""
        device = self.vqvae.device
        relative, velocity = self.vqvae.decode_root_relative(episodes.upper_codes[:, 1:].to(device), episodes.lower_codes[:, 1:].to(device))
        pose = relative.float()
        pose[:, :, 0] = velocity.float()
        if not bool(torch.isfinite(pose).all()):
            raise E3D2Error("beat reward: the VQ-VAE decoded non-finite joints")
        return pose

    @torch.no_grad()
    def __call__(self, episodes: Episodes) -> torch.Tensor:
        pose = self.decoded_actions(episodes)
        batch, frames = pose.shape[:2]
        actions, frames_per_step = episodes.upper_codes.shape[1] - 1, self.vqvae.config.frames_per_code
        motion_beats = np.zeros((batch, frames), dtype=bool)
        for index, clip in enumerate(pose.cpu().numpy()):
            motion_beats[index, kinematic_beats(clip)] = True
        music_beats = episodes.music_beats[:, frames_per_step : frames_per_step + frames].to(pose.device) > 0.5
        if music_beats.shape[1] != frames:
            raise E3D2Error(f"beat reward: {music_beats.shape[1]} music-beat frames for the actions' {frames} motion frames")
        motion_in_step = torch.from_numpy(motion_beats).to(pose.device).view(batch, actions, frames_per_step).any(-1)
        music_in_step = music_beats.view(batch, actions, frames_per_step).any(-1)
        beat = torch.where(music_in_step & motion_in_step, self.beat_reward, -self.beat_reward)
        if self.orientation_weight == 0.0:  # Bailando's released weight: the beat term alone
            return beat.float()
        orientation = bailando_orientation(pose).view(batch, actions, frames_per_step).amin(-1)
        orientation = torch.where(orientation >= 0, torch.ones_like(orientation), orientation)
        return (beat + self.orientation_weight * orientation).float()


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
    "bailando_orientation",
]
