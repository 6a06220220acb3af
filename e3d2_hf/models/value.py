"""The PPO value network and the policy + value module PPO trains.

Paper (Appendix, "Exploration with Reinforcement Learning", Table 7): the value network shares the
policy's first 6 transformer blocks as its encoder, then has its own 3 blocks (hidden 768, 12 heads,
context 29) and a scalar head. Here:

    base = policy.base_hidden_states(...)              the policy's embedding + first k blocks (shared)
    V(s_t) = head(LN(blocks(base + timestep_embedding)))  own causal blocks, zero-initialised scalar head

`ValueHead` is the part the value network owns. The timestep embedding is ours: the policy's blocks
use rotary (relative) positions, and with a sparse terminal reward plus a per-step KL penalty the
value of a state depends on how many steps remain. The scalar head starts at zero, so V = 0 and the
first advantages are the returns themselves (no random critic noise in the first updates).

`PolicyWithValueHead` joins policy and value network into one `nn.Module`, so that one optimizer
and one DDP wrapper cover both. By default the value loss trains the shared blocks too ("both
networks share an encoder"); with `detach_base` the value network reads the shared base without
gradient (as Bailando's actor-critic does), so only the policy loss moves the policy's weights.
Its `forward` takes whole dances in timeline form, like `E3D2PolicyModel.log_probs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from e3d2_hf.models.modeling_policy import E3D2PolicyModel, dance_to_inputs
from e3d2_hf.utils import E3D2Error


class ValueHead(nn.Module):
    """Own causal transformer blocks and a zero-initialised scalar head over the policy's base hidden states.

    Blocks are pre-LayerNorm (like the policy's), GELU, no dropout (PPO runs without dropout so that
    recomputed log-probs and values match the rollout's).
    """

    def __init__(
        self,
        hidden_size: int,
        num_layers: int = 3,
        num_attention_heads: int = 12,
        context_length: int = 29,
        intermediate_size: int | None = None,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        if num_layers < 0 or hidden_size % num_attention_heads:
            raise E3D2Error(
                f"value network: {num_layers} blocks of width {hidden_size} with {num_attention_heads} heads "
                "(the width must split evenly into the heads, the block count must not be negative)"
            )
        self.context_length = context_length
        self.timestep_embedding = nn.Embedding(context_length, hidden_size)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                hidden_size,
                num_attention_heads,
                dim_feedforward=intermediate_size or 4 * hidden_size,
                dropout=0.0,
                activation="gelu",
                layer_norm_eps=layer_norm_eps,
                batch_first=True,
                norm_first=True,
            )
            for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.timestep_embedding.weight, std=initializer_range)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, base_hidden_states: torch.Tensor) -> torch.Tensor:
        """Values (B, T) of the states whose base hidden states are (B, T, H); T <= context_length."""
        steps = base_hidden_states.shape[1]
        if steps > self.context_length:
            raise E3D2Error(f"value network: {steps} steps exceed its context of {self.context_length}")
        hidden = base_hidden_states + self.timestep_embedding(torch.arange(steps, device=base_hidden_states.device))
        causal_mask = nn.Transformer.generate_square_subsequent_mask(steps, device=hidden.device, dtype=hidden.dtype)
        for block in self.blocks:
            hidden = block(hidden, src_mask=causal_mask, is_causal=True)
        return self.value_head(self.final_norm(hidden)).squeeze(-1)


@dataclass
class PolicyValueOutput(ModelOutput):
    """Per action of a dance (steps 1..T-1): both halves' code logits (B, T-1, codebook) and V(s_t) (B, T-1)."""

    upper_logits: torch.Tensor | None = None
    lower_logits: torch.Tensor | None = None
    values: torch.Tensor | None = None


class PolicyWithValueHead(nn.Module):
    """Actor and critic sharing the policy's first `shared_layers` blocks (paper: 6).

    forward(upper_codes, lower_codes, music_features) with codes (B, T) for steps 0..T-1 and music
    (B, >=T, D) at 7.5 fps (row i = step i): the token of step t-1 (music frame t) is the state s_t
    in which action a_t is chosen, so output position t-1 holds the logits of a_t and V(s_t).
    `detach_base`: the value loss does not reach the shared blocks.
    """

    def __init__(self, policy: E3D2PolicyModel, value_head: ValueHead, shared_layers: int | None = None, detach_base: bool = False):
        super().__init__()
        shared_layers = policy.config.num_base_layers if shared_layers is None else shared_layers
        if not 0 <= shared_layers <= policy.config.num_hidden_layers:
            raise E3D2Error(
                f"value network: shared_layers {shared_layers} must lie in [0, {policy.config.num_hidden_layers}] "
                "(the policy's number of blocks)"
            )
        if value_head.timestep_embedding.embedding_dim != policy.config.hidden_size:
            raise E3D2Error(
                f"value network: width {value_head.timestep_embedding.embedding_dim} differs from the policy's {policy.config.hidden_size}"
            )
        self.policy = policy
        self.value_head = value_head
        self.shared_layers = shared_layers
        self.detach_base = detach_base

    def forward(self, upper_codes: torch.Tensor, lower_codes: torch.Tensor, music_features: torch.Tensor) -> PolicyValueOutput:
        inputs = dance_to_inputs(upper_codes, lower_codes, music_features)
        base = self.policy.base_hidden_states(
            inputs["music_features"], upper_codes=inputs["upper_codes"], lower_codes=inputs["lower_codes"], num_layers=self.shared_layers
        )
        upper_logits, lower_logits = self.policy.logits_from_base(base, num_layers=self.shared_layers)
        values = self.value_head(base.detach() if self.detach_base else base)
        return PolicyValueOutput(upper_logits=upper_logits, lower_logits=lower_logits, values=values)


__all__ = ["PolicyValueOutput", "PolicyWithValueHead", "ValueHead"]
