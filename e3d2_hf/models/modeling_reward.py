"""E3D2 reward model: a causal transformer that scores every (music, action) step of a dance.

Paper (Reward Model section, Figure 3, Table 6): a trajectory is interleaved as the token
sequence `m_1, a_1, m_2, a_2, ..., m_T, a_T`; each modality has its own linear embedding, a
learned timestep embedding shared by both modalities is added (as in Decision Transformer), a
causal transformer encodes the sequence and a linear head maps each action token's output feature
to the per-step reward `r(s_t, a_t)`. The trajectory return is `R = sum_t r(s_t, a_t)`.

Choices the paper leaves open, made here:

- Step alignment: `m_t` is the music of step t and `a_t = (upper_t, lower_t)` the pose codes chosen
  at step t. The reward read at `a_t`'s position therefore sees `m_1..m_t` and `a_1..a_t`, i.e. the
  MDP state `s_t = (m_<=t, a_<t)` and the action taken in it.
- Action embedding: `upper_embedding[upper_t] + lower_embedding[lower_t]` (two `nn.Embedding`
  tables of `codebook_size x hidden`). This equals a bias-free linear layer on the concatenated
  one-hot codes (2 x 512 -> hidden), the paper's "linear embedding" of the action, without
  building the one-hots.
- Timesteps count from 0 at the first step of the window the model sees (not the dance's absolute
  step), because the model is trained on 29-step snippets cropped at random offsets.
- A LayerNorm and dropout follow the summed embeddings (Decision Transformer's `embed_ln`): the
  music features are not normalised (Bailando feeds them raw) and this keeps the first block's
  input on one scale.
- Dances longer than the context are scored by `score_trajectory` in consecutive non-overlapping
  windows of `context_steps`, each a fresh context starting at timestep 0, exactly as the training
  snippets were; the per-step rewards are concatenated and summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from e3d2_hf.models.configuration_reward import RewardModelConfig
from e3d2_hf.utils import E3D2Error


@dataclass
class RewardModelOutput(ModelOutput):
    """Per-step rewards `r(s_t, a_t)` (B, T), zero at masked steps, and their sum per trajectory (B,)."""

    rewards: torch.FloatTensor | None = None
    returns: torch.FloatTensor | None = None


class RewardSelfAttention(nn.Module):
    """Multi-head self-attention over the interleaved tokens (scaled dot product, causal or masked)."""

    def __init__(self, config: RewardModelConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, attention_bias: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = hidden.shape
        query, key, value = self.qkv(hidden).view(batch, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_bias,
            dropout_p=self.attention_dropout if self.training else 0.0,
            is_causal=attention_bias is None,
        )
        return self.proj(attended.transpose(1, 2).reshape(batch, length, width))


class RewardBlock(nn.Module):
    """Transformer block; post-LN (`x = LN(x + f(x))`, the paper's) or pre-LN (`x = x + f(LN(x))`)."""

    def __init__(self, config: RewardModelConfig):
        super().__init__()
        self.layer_norm_first = config.layer_norm_first
        self.attention = RewardSelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.GELU(),
            nn.Linear(config.intermediate_size, config.hidden_size),
        )
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.residual_dropout)

    def forward(self, hidden: torch.Tensor, attention_bias: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            hidden = hidden + self.dropout(self.attention(self.attention_norm(hidden), attention_bias))
            return hidden + self.dropout(self.mlp(self.mlp_norm(hidden)))
        hidden = self.attention_norm(hidden + self.dropout(self.attention(hidden, attention_bias)))
        return self.mlp_norm(hidden + self.dropout(self.mlp(hidden)))


class E3D2RewardModel(PreTrainedModel):
    """Learned reward `r_theta(s_t, a_t)` over interleaved music/action tokens (see module docstring).

    `forward(music_features (B,T,438), upper_codes (B,T), lower_codes (B,T), attention_mask (B,T))`
    with `T <= config.context_steps`; `score_trajectory` for any length.
    """

    config_class = RewardModelConfig
    base_model_prefix = "reward_model"
    main_input_name = "music_features"
    _no_split_modules = ["RewardBlock"]

    def __init__(self, config: RewardModelConfig):
        super().__init__(config)
        self.music_embedding = nn.Linear(config.music_dim, config.hidden_size)
        self.upper_embedding = nn.Embedding(config.codebook_size, config.hidden_size)
        self.lower_embedding = nn.Embedding(config.codebook_size, config.hidden_size)
        self.timestep_embedding = nn.Embedding(config.context_steps, config.hidden_size)
        self.embedding_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.embedding_dropout = nn.Dropout(config.residual_dropout)
        self.blocks = nn.ModuleList(RewardBlock(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.layer_norm_first else None
        self.reward_head = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def _check_inputs(self, music_features: torch.Tensor, upper_codes: torch.Tensor, lower_codes: torch.Tensor) -> None:
        if music_features.dim() != 3 or music_features.shape[-1] != self.config.music_dim:
            raise E3D2Error(
                f"music features: shape {tuple(music_features.shape)}, but this reward model expects "
                f"(batch, steps, {self.config.music_dim}) (config.music_dim)"
            )
        if upper_codes.shape != music_features.shape[:2] or lower_codes.shape != music_features.shape[:2]:
            raise E3D2Error(
                f"pose codes: upper {tuple(upper_codes.shape)} and lower {tuple(lower_codes.shape)} must both be "
                f"(batch, steps) = {tuple(music_features.shape[:2])} like the music features"
            )
        for half, codes in (("upper", upper_codes), ("lower", lower_codes)):
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.codebook_size):
                raise E3D2Error(
                    f"{half} pose codes: values in [{int(codes.min())}, {int(codes.max())}] fall outside the codebook "
                    f"[0, {self.config.codebook_size})"
                )

    def forward(
        self,
        music_features: torch.Tensor,
        upper_codes: torch.Tensor,
        lower_codes: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> RewardModelOutput:
        """Per-step rewards at the action tokens and their sum.

        Args:
            music_features: (B, T, music_dim) float, row t the music of step t.
            upper_codes, lower_codes: (B, T) int pose codes chosen at each step.
            attention_mask: optional (B, T), 1 for real steps and 0 for padding (any position);
                padded steps get reward 0 and are never attended to.
        """
        self._check_inputs(music_features, upper_codes, lower_codes)
        batch, steps = upper_codes.shape
        if steps > self.config.context_steps:
            raise E3D2Error(
                f"music features: {steps} steps exceed the reward model's context of {self.config.context_steps} steps; "
                "use score_trajectory() for longer dances"
            )
        timesteps = self.timestep_embedding(torch.arange(steps, device=upper_codes.device))
        music_tokens = self.music_embedding(music_features.to(self.music_embedding.weight.dtype)) + timesteps
        action_tokens = self.upper_embedding(upper_codes) + self.lower_embedding(lower_codes) + timesteps
        # Interleave m_1, a_1, m_2, a_2, ...: token 2t is m_t, token 2t+1 is a_t.
        hidden = torch.stack((music_tokens, action_tokens), dim=2).reshape(batch, 2 * steps, -1)
        hidden = self.embedding_dropout(self.embedding_norm(hidden))

        attention_bias = None
        step_mask = None
        if attention_mask is not None:
            step_mask = attention_mask.to(torch.bool)
            token_mask = step_mask.repeat_interleave(2, dim=1)
            causal = torch.ones(2 * steps, 2 * steps, dtype=torch.bool, device=hidden.device).tril()
            # Every token may always see itself, so no attention row is empty (padding rows are discarded anyway).
            attention_bias = (causal & token_mask[:, None, None, :]) | torch.eye(2 * steps, dtype=torch.bool, device=hidden.device)
        for block in self.blocks:
            hidden = block(hidden, attention_bias)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)

        rewards = self.reward_head(hidden[:, 1::2]).squeeze(-1)
        if step_mask is not None:
            rewards = rewards.masked_fill(~step_mask, 0.0)
        if not bool(torch.isfinite(rewards).all()):
            cause = (
                "the music features contain NaN or inf"
                if not bool(torch.isfinite(music_features).all())
                else "the weights or activations diverged"
            )
            raise E3D2Error(f"reward model: non-finite rewards (NaN or inf); {cause}")
        return RewardModelOutput(rewards=rewards, returns=rewards.sum(dim=1))

    def score_trajectory(
        self,
        music_features: torch.Tensor,
        upper_codes: torch.Tensor,
        lower_codes: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        window: int | None = None,
    ) -> RewardModelOutput:
        """Rewards of dances of any length: consecutive non-overlapping windows, each a fresh context.

        The dance (B, L) is cut into windows of `window` steps (default and maximum:
        `config.context_steps`); the last, shorter window is padded and masked. All windows run as
        one batch; `rewards` is (B, L) and `returns` its sum, i.e. the sum of the windows' returns.
        Callers that need no gradients wrap this in `torch.no_grad()`.
        """
        window = self.config.context_steps if window is None else int(window)
        if not 1 <= window <= self.config.context_steps:
            raise E3D2Error(f"score_trajectory: window {window} must lie in [1, {self.config.context_steps}] (the model's context)")
        self._check_inputs(music_features, upper_codes, lower_codes)
        batch, length = upper_codes.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.bool, device=upper_codes.device)
        num_windows = max(1, -(-length // window))
        pad = num_windows * window - length

        def windows(tensor: torch.Tensor) -> torch.Tensor:
            padded = F.pad(tensor, (0, 0, 0, pad) if tensor.dim() == 3 else (0, pad))
            return padded.reshape(batch * num_windows, window, *tensor.shape[2:])

        output = self(
            windows(music_features),
            windows(upper_codes),
            windows(lower_codes),
            attention_mask=windows(attention_mask.to(torch.bool)),
        )
        rewards = output.rewards.reshape(batch, num_windows * window)[:, :length]
        return RewardModelOutput(rewards=rewards, returns=rewards.sum(dim=1))


AutoConfig.register(RewardModelConfig.model_type, RewardModelConfig, exist_ok=True)
AutoModel.register(RewardModelConfig, E3D2RewardModel, exist_ok=True)

__all__ = ["E3D2RewardModel", "RewardModelOutput"]
