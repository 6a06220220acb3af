"""Configuration of the E3D2 GPT policy (Bailando's cross-conditional GPT as a `transformers` causal LM).

Defaults are the paper's / Bailando's sizes (E3D2 Table 7 and lisiyao21/Bailando `config/cc_motion_gpt.yaml`):
12 blocks of which the first 6 are the "base" shared with the PPO value network, 12 heads, width 768,
dropout 0.1, context 29 steps, two 512-entry codebooks, 438-d music features at 7.5 fps.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import PretrainedConfig

from e3d2_hf.utils import E3D2Error


class PolicyConfig(PretrainedConfig):
    """Sizes of `E3D2PolicyModel`; see its docstring for the token layout.

    `context_length` is both the training window (29 steps) and the width of the sliding attention
    window (each step attends to itself and the 28 steps before it); `sliding_window` is an alias so
    that `transformers.DynamicCache(config=...)` builds rolling per-layer caches of that width.
    `num_base_layers` marks where the policy splits into base blocks (shared with the PPO value
    network) and head blocks. `vqvae_path` is the VQ-VAE folder relative to the policy folder.
    """

    model_type: ClassVar[str] = "e3d2_policy"
    attribute_map: ClassVar[dict[str, str]] = {"sliding_window": "context_length"}
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]

    codebook_size: int = 512
    music_dim: int = 438
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_base_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    context_length: int = 29
    embedding_dropout: float = 0.1
    residual_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    vqvae_path: str | None = "vqvae"

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        problems = []
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 2:
            problems.append(
                f"hidden_size {self.hidden_size} must split into {self.num_attention_heads} heads of even width (rotary positions)"
            )
        if not 0 <= self.num_base_layers <= self.num_hidden_layers:
            problems.append(f"num_base_layers {self.num_base_layers} must lie in [0, num_hidden_layers={self.num_hidden_layers}]")
        if self.context_length < 1 or self.codebook_size < 1 or self.music_dim < 1:
            problems.append("context_length, codebook_size and music_dim must be positive")
        if problems:
            raise E3D2Error("PolicyConfig: " + "; ".join(problems))
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def vocab_size(self) -> int:
        """Size of the joint pose-token vocabulary (token id = upper * codebook_size + lower)."""
        return self.codebook_size * self.codebook_size
