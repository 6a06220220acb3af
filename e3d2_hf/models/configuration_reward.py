"""Configuration of the E3D2 reward model (paper Table 6, "Reward Model").

The defaults are the paper's: hidden 768, 12 heads, 1 block, post-LN ("Layer Norm First: False"),
causal, attention and residual dropout 0.1, context 2 x 29 tokens (29 music + 29 action tokens),
action dim 512 (the VQ-VAE codebook size of each body half) and music dim 438.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from e3d2_hf.utils import E3D2Error


class RewardModelConfig(PretrainedConfig):
    """Sizes of `E3D2RewardModel`.

    Args:
        music_dim: width of one music token (Bailando's 438-d features at 7.5 fps).
        codebook_size: pose codes per body half (the VQ-VAE codebooks; upper and lower share the size).
        context_steps: steps the transformer attends over; one step is a music token and an action
            token, so the token context is `2 * context_steps` (paper: 29).
        hidden_size, num_attention_heads, num_hidden_layers, intermediate_size: transformer sizes
            (`intermediate_size` defaults to `4 * hidden_size`).
        attention_dropout: dropout on the attention probabilities.
        residual_dropout: dropout on the embeddings and on each sub-layer's output before the residual sum.
        layer_norm_first: pre-LN (True) or post-LN as in the paper (False).
    """

    model_type = "e3d2_reward"

    music_dim: int = 438
    codebook_size: int = 512
    context_steps: int = 29
    hidden_size: int = 768
    num_attention_heads: int = 12
    num_hidden_layers: int = 1
    intermediate_size: int | None = None
    attention_dropout: float = 0.1
    residual_dropout: float = 0.1
    layer_norm_first: bool = False
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        positive = {
            "music_dim": self.music_dim,
            "codebook_size": self.codebook_size,
            "context_steps": self.context_steps,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "intermediate_size": self.intermediate_size,
        }
        for name, value in positive.items():
            if int(value) < 1:
                raise E3D2Error(f"RewardModelConfig: {name} must be a positive integer, got {value}")
        if self.hidden_size % self.num_attention_heads:
            raise E3D2Error(
                f"RewardModelConfig: hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        for name in ("attention_dropout", "residual_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise E3D2Error(f"RewardModelConfig: {name} must lie in [0, 1), got {getattr(self, name)}")
        super().__post_init__(**kwargs)


__all__ = ["RewardModelConfig"]
