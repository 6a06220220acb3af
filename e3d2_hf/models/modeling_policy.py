"""The E3D2 GPT policy: Bailando's cross-conditional GPT as a `transformers` causal LM over pose tokens.

Token layout (one token per step)
---------------------------------
Bailando feeds three streams per step, [music | upper code | lower code], causal across steps, every
stream at step i seeing all three streams at steps <= i. This model keeps that information flow with
one token per step whose embedding is the SUM of three embeddings:

    token t = Linear(438 -> H)(music frame t+1) + Embedding_upper(u_t) + Embedding_lower(l_t)

and two linear heads on each token's final hidden state predict the next step's codes u_{t+1} and
l_{t+1} (loss CE(upper) + CE(lower)). So at step t the model sees the music up to the step it predicts
and both halves' codes up to t, exactly Bailando's state s_t, with 3x fewer tokens. The token id of a
step is the joint pose token `upper * codebook_size + lower` (`input_ids`), which makes the policy a
real causal LM over a 512*512 vocabulary; `upper_codes`/`lower_codes` may be passed instead.

Alignment is done by the caller, not inside `forward`: `music_features[:, t]` is the music frame of
the step token t predicts (dance-timeline frame t+1), and `upper_labels[:, t]` / `lower_labels[:, t]`
are the codes of that step. `dance_to_inputs` turns a dance in timeline form (codes and 7.5 fps music
for steps 0..T-1) into these arguments: a Bailando training window of 30 steps gives inputs 0..28,
music frames 1..29 and targets 1..29.

Outputs: `upper_logits` and `lower_logits` (B, T, 512) for training. The joint log-probabilities over
the 512*512 pose vocabulary, `logits = log p_up[u] + log p_low[l]`, are 1 GiB for a batch of 32
windows, so `forward` builds them only for the last `joint_logits_to_keep` positions (what
`transformers`' generation loop needs; 0, the default, builds none).

Positions and long music
------------------------
Positions are rotary (RoPE, relative) and every block uses sliding-window causal attention of width
`context_length` (29): step t attends to steps t-28..t. Within one window this is plain causal
attention, so training on 29-step windows is unchanged. For longer music the per-layer KV cache rolls
(`SlidingWindowBufferLayer`: transformers' `DynamicSlidingWindowLayer`, as in Mistral, in a
preallocated buffer): one new token per step costs one
29-key attention per layer, and cached step-by-step generation equals a single forward over the whole
dance with the banded mask (tested to the token). Beyond the first window this differs from Bailando's
inference, which re-encodes the last steps as a fresh window at every step (so early tokens of that
window see a truncated past, while here every token keeps its 28-step past and information from
further back reaches deeper layers through the band). `generate(..., strategy="recompute_window")`
keeps the reference's re-encoding for comparison, with 29-step windows by default; Bailando's
inference (`CrossCondGPT2.sample`, block size 29 - 1) slides a 28-step one, which
`recompute_steps=BAILANDO_RECOMPUTE_STEPS` reproduces exactly. Inside the first window (the first
`recompute_steps` chosen steps) both strategies give the same tokens. Through the band, information from further back still reaches deeper blocks (the
receptive field of 12 blocks is 12 x 28 steps), as in any sliding-window transformer.

Generation
----------
`generate(music_features (B, S, 438), first codes)` runs its own loop: greedy, or sampling with
temperature and top-k applied to each half's 512 logits (which the joint-vocabulary top-k of
transformers' loop cannot express), stage 2's eps-greedy noise (one coin per step), a seeded `torch.Generator`, a whole
batch of pieces at once, strategy "cache" (default) or "recompute_window". On CPU in fp32 the cached
loop runs MKL's packed GEMM (`mkl_packed_linears`, weights packed once per call). transformers' own loop also
works on this model (`GenerationMixin.generate(policy, input_ids=..., music_features=...)`, greedy gives
the same tokens): `prepare_inputs_for_generation` feeds the music frame of each new token and asks for
the joint log-probs of the last position only. `log_probs` scores whole dances for PPO (per-step
log-probs of the taken codes of both halves, and entropy) with one banded forward, which equals what
the cached generation computed.

Splitting for PPO
-----------------
Blocks `0 .. num_base_layers-1` are the "base" (the paper's value network shares the first 6 blocks),
the rest are the "head" blocks, followed by `final_norm` and the two code heads. `base_hidden_states`
runs the embedding and base blocks; `logits_from_base` runs the rest; `forward(output_hidden_states=True)`
returns every block's output (index k = after k blocks).

The VQ-VAE that turns codes back into joints travels with the policy (`policy_vqvae.CarriesVQVAE`):
`attach_vqvae` (not a submodule, so not in the policy's weights), `save_pretrained` writes it to
`<dir>/<config.vqvae_path>`, `load_vqvae` loads it back lazily.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.utils import ModelOutput

from e3d2_hf.models.configuration_policy import PolicyConfig
from e3d2_hf.models.policy_vqvae import CarriesVQVAE
from e3d2_hf.utils import E3D2Error

if TYPE_CHECKING:  # imported when needed: training and sampling codes never touch the VQ-VAE (or its dependencies)
    from e3d2_hf.models.modeling_vqvae import E3D2VQVAE

IGNORE_INDEX = -100
# Steps Bailando's inference re-encodes for each new step (its GPT's block size 29 minus 1).
BAILANDO_RECOMPUTE_STEPS = 28


@dataclass
class PolicyOutput(ModelOutput):
    """`forward`'s result.

    loss: CE(upper) + CE(lower) when labels are given. logits: joint log-probs over pose tokens
    (B, joint_logits_to_keep, codebook_size**2), only when asked. upper_logits / lower_logits:
    (B, T, codebook_size). hidden_states: embeddings then each block's output (pre-final-norm).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    upper_logits: torch.Tensor | None = None
    lower_logits: torch.Tensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class PolicyLogProbs(ModelOutput):
    """Per-step action statistics of a whole dance, for PPO: entries are (B, T-1) for steps 1..T-1.

    log_probs = upper_log_probs + lower_log_probs (the two halves are chosen independently given
    the state); entropy is the joint entropy, H(upper) + H(lower).
    """

    log_probs: torch.Tensor | None = None
    upper_log_probs: torch.Tensor | None = None
    lower_log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    upper_logits: torch.Tensor | None = None
    lower_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def dance_to_inputs(
    upper_codes: torch.Tensor, lower_codes: torch.Tensor, music_features: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Model arguments for a dance in timeline form: codes (B, T) for steps 0..T-1, music (B, >=T, D) at 7.5 fps.

    Inputs are steps 0..T-2 with music frames 1..T-1; labels are steps 1..T-1 (Bailando's shift:
    a 30-step window gives inputs 0..28, music 1..29, targets 1..29).
    """
    steps = upper_codes.shape[1]
    if lower_codes.shape != upper_codes.shape:
        raise E3D2Error(f"pose codes: upper {tuple(upper_codes.shape)} and lower {tuple(lower_codes.shape)} differ in shape")
    if steps < 2:
        raise E3D2Error(f"pose codes: a dance needs at least 2 steps, got {steps}")
    if music_features.ndim != 3 or music_features.shape[1] < steps:
        raise E3D2Error(
            f"music features: expected (batch, >= {steps}, dim) for {steps} steps of codes, got {tuple(music_features.shape)}"
        )
    return {
        "upper_codes": upper_codes[:, :-1],
        "lower_codes": lower_codes[:, :-1],
        "music_features": music_features[:, 1:steps],
        "upper_labels": upper_codes[:, 1:],
        "lower_labels": lower_codes[:, 1:],
    }


def _rotary_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (T, head_dim) of the rotary angles; computed in float64 so long dances keep precise angles."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def _sliding_window_mask(query_positions: torch.Tensor, num_keys: int, window: int) -> torch.Tensor | None | Literal["causal"]:
    """Boolean (T, num_keys) mask of the banded causal pattern, or a cheaper equivalent.

    Keys are the last `num_keys` positions ending at the last query. Returns None when every query
    may see every key (one query, keys within the window) and "causal" for a plain causal square.
    """
    num_queries = query_positions.shape[0]
    if num_queries == 1 and num_keys <= window:
        return None
    if num_queries == num_keys and num_keys <= window:
        return "causal"
    last = query_positions[-1]
    key_positions = torch.arange(num_keys, device=query_positions.device) + (last - num_keys + 1)
    offsets = query_positions[:, None] - key_positions[None, :]
    return (offsets >= 0) & (offsets < window)


class SlidingWindowBufferLayer(CacheLayerMixin):
    """One layer's rolling KV cache in a preallocated buffer: what `DynamicSlidingWindowLayer` returns, without its copies.

    transformers' sliding layer concatenates the past with the new keys and values at every step
    (two full copies of the window per layer and step). Here the last `sliding_window - 1` steps sit
    in time order in a buffer of `capacity` steps, new steps are written after them and the visible
    keys are a view; only when the buffer is full do the kept steps move to its front, once every
    `capacity - 2 * (sliding_window - 1)` steps. Keys keep their time order, so attention sums in
    the same order as with transformers' layer.
    """

    is_sliding = True

    def __init__(self, sliding_window: int, capacity: int):
        super().__init__()
        self.sliding_window = sliding_window
        self.capacity = max(capacity, 2 * sliding_window - 1)
        self.cumulative_length = 0
        self.start = self.end = 0  # the buffer's steps [start, end) are the kept past

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_empty(*key_states.shape[:2], self.capacity, key_states.shape[-1])
        self.values = value_states.new_empty(*value_states.shape[:2], self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def _make_room(self, new_steps: int) -> None:
        """Move the kept steps to the buffer's front (a larger buffer for a chunk that would not fit)."""
        kept = self.end - self.start
        needed = 2 * (self.sliding_window - 1) + new_steps  # kept steps never overlap their new place
        if needed > self.capacity:
            self.capacity = needed
            keys, values = self.keys, self.values
            self.keys = keys.new_empty(*keys.shape[:2], needed, keys.shape[-1])
            self.values = values.new_empty(*values.shape[:2], needed, values.shape[-1])
        else:
            keys, values = self.keys, self.values
        self.keys[:, :, :kept] = keys[:, :, self.start : self.end]
        self.values[:, :, :kept] = values[:, :, self.start : self.end]
        self.start, self.end = 0, kept

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new steps; return the kept past followed by them (views into the buffer)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new_steps = key_states.shape[-2]
        if self.end + new_steps > self.capacity:
            self._make_room(new_steps)
        self.keys[:, :, self.end : self.end + new_steps] = key_states
        self.values[:, :, self.end : self.end + new_steps] = value_states
        visible = slice(self.start, self.end + new_steps)
        self.end += new_steps
        self.start = max(self.start, self.end - (self.sliding_window - 1))
        self.cumulative_length += new_steps
        return self.keys[:, :, visible], self.values[:, :, visible]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        kept = min(self.cumulative_length, self.sliding_window - 1)
        return kept + query_length, self.cumulative_length - kept

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return self.sliding_window


def sliding_window_cache(config: PolicyConfig, capacity_windows: int = 4) -> Cache:
    """The policy's rolling KV cache: one `SlidingWindowBufferLayer` per block, buffers of `capacity_windows` windows."""
    capacity = capacity_windows * config.context_length
    return Cache(layers=[SlidingWindowBufferLayer(config.context_length, capacity) for _ in range(config.num_hidden_layers)])


def _mkl_packed_forward(linear: nn.Linear, packed_weight: torch.Tensor, rows: int, inputs: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkl._mkl_linear(inputs, packed_weight, linear.weight, linear.bias, rows)


@contextlib.contextmanager
def mkl_packed_linears(module: nn.Module, rows: int) -> Iterator[None]:
    """Inside, `module`'s fp32 CPU linear layers run MKL's packed GEMM on weights packed once for `rows` input rows.

    A cached generation step multiplies every weight by a thin (batch x width) input; plain
    F.linear re-packs the weight panels at each call, the packed form does not (matmuls about
    10-20% faster at 32 rows, see scripts/bench.py's generation_roofline). The packed copy doubles
    the weights' memory while inside. A no-op off CPU, for other dtypes, in training, under CPU
    autocast, or where this torch has no MKL ops (the same ones torch.compile's CPU freezing uses).
    """
    linears = [layer for layer in module.modules() if isinstance(layer, nn.Linear)]
    usable = (
        not module.training
        and not torch.is_autocast_enabled("cpu")  # autocast would not cast the packed op's inputs
        and torch.backends.mkl.is_available()
        and hasattr(torch.ops.mkl, "_mkl_linear")
        and all(layer.weight.device.type == "cpu" and layer.weight.dtype == torch.float32 for layer in linears)
    )
    if not usable:
        yield
        return
    for layer in linears:
        packed = torch.ops.mkl._mkl_reorder_linear_weight(layer.weight.detach(), rows)
        layer.forward = functools.partial(_mkl_packed_forward, layer, packed, rows)
    try:
        yield
    finally:
        for layer in linears:
            del layer.forward  # back to nn.Linear.forward


class PolicyAttention(nn.Module):
    """Multi-head self-attention with rotary positions over a sliding causal window."""

    def __init__(self, config: PolicyConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.window = config.context_length
        self.attention_dropout = config.attention_dropout
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.residual_dropout = nn.Dropout(config.residual_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        positions: torch.Tensor,
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        batch, steps, width = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, steps, 3, self.num_heads, self.head_dim)
        queries, keys, values = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        queries, keys = _apply_rotary(queries, *rotary), _apply_rotary(keys, *rotary)
        if past_key_values is not None:
            keys, values = past_key_values.update(keys, values, self.layer_idx)
        mask = _sliding_window_mask(positions, keys.shape[-2], self.window)
        attended = F.scaled_dot_product_attention(
            queries,
            keys,
            values,
            attn_mask=None if mask is None or isinstance(mask, str) else mask,
            is_causal=isinstance(mask, str),
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        return self.residual_dropout(self.out_proj(attended.transpose(1, 2).reshape(batch, steps, width)))


class PolicyBlock(nn.Module):
    """Pre-LayerNorm transformer block (minGPT style, as Bailando's GPT)."""

    def __init__(self, config: PolicyConfig, layer_idx: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = PolicyAttention(config, layer_idx)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.GELU(),
            nn.Linear(config.intermediate_size, config.hidden_size),
            nn.Dropout(config.residual_dropout),
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        positions: torch.Tensor,
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.attention(self.attention_norm(hidden_states), rotary, positions, past_key_values)
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))


class E3D2PolicyModel(CarriesVQVAE, PreTrainedModel, GenerationMixin):
    __doc__ = __doc__
    config_class = PolicyConfig
    config: PolicyConfig
    base_model_prefix = "policy"
    main_input_name = "input_ids"
    _no_split_modules = ["PolicyBlock"]
    _skip_keys_device_placement = ["past_key_values"]

    def __init__(self, config: PolicyConfig):
        super().__init__(config)
        self.music_embedding = nn.Linear(config.music_dim, config.hidden_size)
        self.upper_embedding = nn.Embedding(config.codebook_size, config.hidden_size)
        self.lower_embedding = nn.Embedding(config.codebook_size, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(PolicyBlock(config, index) for index in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.upper_head = nn.Linear(config.hidden_size, config.codebook_size, bias=False)
        self.lower_head = nn.Linear(config.hidden_size, config.codebook_size, bias=False)
        self._vqvae: E3D2VQVAE | None = None
        self.post_init()

    # ------------------------------------------------------------------------------------------
    # Inputs
    # ------------------------------------------------------------------------------------------
    def split_pose_tokens(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint pose token ids -> (upper_codes, lower_codes)."""
        return torch.div(input_ids, self.config.codebook_size, rounding_mode="floor"), input_ids % self.config.codebook_size

    def join_pose_tokens(self, upper_codes: torch.Tensor, lower_codes: torch.Tensor) -> torch.Tensor:
        """(upper_codes, lower_codes) -> joint pose token ids `upper * codebook_size + lower`."""
        return upper_codes * self.config.codebook_size + lower_codes

    def _resolve_codes(
        self, input_ids: torch.Tensor | None, upper_codes: torch.Tensor | None, lower_codes: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if (input_ids is None) == (upper_codes is None or lower_codes is None):
            raise E3D2Error("pose codes: pass either input_ids (joint pose tokens) or both upper_codes and lower_codes")
        if input_ids is not None:
            upper_codes, lower_codes = self.split_pose_tokens(self._check_codes(input_ids, "input_ids", self.config.vocab_size))
        else:
            self._check_codes(upper_codes, "upper_codes", self.config.codebook_size)
            self._check_codes(lower_codes, "lower_codes", self.config.codebook_size)
            if upper_codes.shape != lower_codes.shape:
                raise E3D2Error(f"pose codes: upper {tuple(upper_codes.shape)} and lower {tuple(lower_codes.shape)} differ in shape")
        return upper_codes, lower_codes

    @staticmethod
    def _check_codes(codes: torch.Tensor, name: str, size: int) -> torch.Tensor:
        if codes.ndim != 2 or codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise E3D2Error(f"{name}: expected an integer tensor (batch, steps), got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size):
            raise E3D2Error(f"{name}: codes must lie in [0, {size}), got values in [{int(codes.min())}, {int(codes.max())}]")
        return codes

    def _check_music(self, music_features: torch.Tensor | None, batch: int, steps: int) -> torch.Tensor:
        if music_features is None:
            raise E3D2Error("music features: the policy is conditioned on music, pass music_features")
        if music_features.ndim != 3 or music_features.shape[-1] != self.config.music_dim:
            raise E3D2Error(
                f"music features: expected (batch, steps, {self.config.music_dim}) (Bailando's 438-d features at 7.5 fps), "
                f"got {tuple(music_features.shape)}"
            )
        if music_features.shape[:2] != (batch, steps):
            raise E3D2Error(
                f"music features: one frame per pose token expected, got {tuple(music_features.shape[:2])} for tokens {(batch, steps)}"
            )
        return music_features.to(self.dtype)

    def embed(self, upper_codes: torch.Tensor, lower_codes: torch.Tensor, music_features: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, H): music + upper-code + lower-code embedding per step."""
        music_features = self._check_music(music_features, *upper_codes.shape)
        summed = self.music_embedding(music_features) + self.upper_embedding(upper_codes) + self.lower_embedding(lower_codes)
        return self.embedding_dropout(summed)

    # ------------------------------------------------------------------------------------------
    # Blocks, heads and the base/head split
    # ------------------------------------------------------------------------------------------
    def run_layers(
        self,
        hidden_states: torch.Tensor,
        layers: range,
        past_key_values: Cache | None = None,
        first_position: int = 0,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Run blocks `layers` on (B, T, H) states whose first token sits at step `first_position`.

        Returns the output and, if asked, each block's output in order.
        """
        positions = torch.arange(first_position, first_position + hidden_states.shape[1], device=hidden_states.device)
        rotary = _rotary_tables(positions, self.config.head_dim, self.config.rope_theta, hidden_states.dtype)
        outputs = []
        for index in layers:
            hidden_states = self.layers[index](hidden_states, rotary, positions, past_key_values)
            if output_hidden_states:
                outputs.append(hidden_states)
        return hidden_states, tuple(outputs)

    def code_logits(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final norm and the two heads: (upper_logits, lower_logits)."""
        normed = self.final_norm(hidden_states)
        return self.upper_head(normed), self.lower_head(normed)

    def base_hidden_states(
        self,
        music_features: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        *,
        upper_codes: torch.Tensor | None = None,
        lower_codes: torch.Tensor | None = None,
        num_layers: int | None = None,
    ) -> torch.Tensor:
        """Hidden states after the first `num_layers` blocks (default `config.num_base_layers`), no cache.

        The PPO value network reads these (the paper shares the policy's first 6 blocks).
        """
        num_layers = self.config.num_base_layers if num_layers is None else num_layers
        if not 0 <= num_layers <= self.config.num_hidden_layers:
            raise E3D2Error(f"num_layers {num_layers} must lie in [0, {self.config.num_hidden_layers}]")
        upper_codes, lower_codes = self._resolve_codes(input_ids, upper_codes, lower_codes)
        hidden = self.embed(upper_codes, lower_codes, music_features)
        return self.run_layers(hidden, range(num_layers))[0]

    def logits_from_base(self, base_hidden_states: torch.Tensor, num_layers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The remaining blocks and heads on top of `base_hidden_states(..., num_layers)`: (upper_logits, lower_logits)."""
        num_layers = self.config.num_base_layers if num_layers is None else num_layers
        hidden = self.run_layers(base_hidden_states, range(num_layers, self.config.num_hidden_layers))[0]
        return self.code_logits(hidden)

    # ------------------------------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------------------------------
    def _code_logits_of_tokens(
        self,
        upper_codes: torch.Tensor,
        lower_codes: torch.Tensor,
        music_features: torch.Tensor,
        past_key_values: Cache | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Embedding, all blocks and heads, continuing `past_key_values` if given.

        Code ranges are the caller's to check (`forward` does; `generate` feeds back codes it chose,
        and skipping the check there saves two host syncs per step on a GPU).
        """
        first_position = past_key_values.get_seq_length() if past_key_values is not None else 0
        embedded = self.embed(upper_codes, lower_codes, music_features)
        hidden, block_outputs = self.run_layers(
            embedded, range(self.config.num_hidden_layers), past_key_values, first_position, output_hidden_states
        )
        upper_logits, lower_logits = self.code_logits(hidden)
        return upper_logits, lower_logits, ((embedded,) + block_outputs if output_hidden_states else None)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        music_features: torch.Tensor | None = None,
        upper_codes: torch.Tensor | None = None,
        lower_codes: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        upper_labels: torch.Tensor | None = None,
        lower_labels: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        joint_logits_to_keep: int = 0,
        return_dict: bool | None = None,
    ) -> PolicyOutput | tuple:
        """One pass over pose tokens (B, T) and their music (B, T, music_dim); see the class docstring.

        Labels are already aligned with the tokens (NOT shifted inside): `labels` (joint ids) or
        `upper_labels`/`lower_labels`, -100 ignored. With labels the window may not exceed
        `context_length` (a training window longer than the model's context is a mistake); without
        labels any length runs with the banded attention. `use_cache=True` (or a `past_key_values`)
        continues from / fills a rolling KV cache.
        """
        upper_codes, lower_codes = self._resolve_codes(input_ids, upper_codes, lower_codes)
        batch, steps = upper_codes.shape
        has_labels = labels is not None or upper_labels is not None or lower_labels is not None
        if has_labels and steps > self.config.context_length:
            raise E3D2Error(
                f"training window of {steps} steps is longer than the policy's context of {self.config.context_length} steps"
            )
        if use_cache and past_key_values is None:
            past_key_values = sliding_window_cache(self.config)
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        upper_logits, lower_logits, hidden_states = self._code_logits_of_tokens(
            upper_codes, lower_codes, music_features, past_key_values, output_hidden_states
        )

        loss = None
        if has_labels:
            if labels is not None:
                if upper_labels is not None or lower_labels is not None:
                    raise E3D2Error("labels: pass either labels (joint pose tokens) or upper_labels and lower_labels")
                ignored = labels == IGNORE_INDEX
                upper_labels, lower_labels = self.split_pose_tokens(labels.clamp(min=0))
                upper_labels, lower_labels = upper_labels.masked_fill(ignored, IGNORE_INDEX), lower_labels.masked_fill(ignored, IGNORE_INDEX)
            if upper_labels is None or lower_labels is None or upper_labels.shape != (batch, steps) or lower_labels.shape != (batch, steps):
                raise E3D2Error(f"labels: both halves' labels of shape {(batch, steps)} are needed")
            for name, half_labels in (("upper_labels", upper_labels), ("lower_labels", lower_labels)):
                valid = (half_labels == IGNORE_INDEX) | ((half_labels >= 0) & (half_labels < self.config.codebook_size))
                if not bool(valid.all()):
                    raise E3D2Error(f"{name}: codes must lie in [0, {self.config.codebook_size}) or be {IGNORE_INDEX} (ignored)")
            loss = F.cross_entropy(upper_logits.flatten(0, 1).float(), upper_labels.flatten(), ignore_index=IGNORE_INDEX)
            loss = loss + F.cross_entropy(lower_logits.flatten(0, 1).float(), lower_labels.flatten(), ignore_index=IGNORE_INDEX)

        joint_logits = None
        if joint_logits_to_keep > 0:
            upper_log_probs = upper_logits[:, -joint_logits_to_keep:].float().log_softmax(-1)
            lower_log_probs = lower_logits[:, -joint_logits_to_keep:].float().log_softmax(-1)
            joint_logits = (upper_log_probs[..., :, None] + lower_log_probs[..., None, :]).flatten(-2)

        output = PolicyOutput(
            loss=loss,
            logits=joint_logits,
            upper_logits=upper_logits,
            lower_logits=lower_logits,
            past_key_values=past_key_values if use_cache or past_key_values is not None else None,
            hidden_states=hidden_states,
        )
        return output if return_dict is not False else output.to_tuple()

    # ------------------------------------------------------------------------------------------
    # Whole-dance statistics (PPO)
    # ------------------------------------------------------------------------------------------
    def log_probs(
        self,
        upper_codes: torch.Tensor,
        lower_codes: torch.Tensor,
        music_features: torch.Tensor,
        *,
        output_hidden_states: bool = False,
    ) -> PolicyLogProbs:
        """Log-probabilities and entropy of the actions of whole dances in timeline form.

        Codes (B, T) for steps 0..T-1 and music (B, >=T, music_dim) at 7.5 fps, music[:, i] belonging
        to step i. Step 0 is the given initial pose (not an action); the result covers steps 1..T-1.
        One banded forward over the whole dance: equal to what cached generation computed step by step.
        Dances of different lengths can share a batch right-padded (causality keeps earlier steps exact).
        """
        self._check_codes(upper_codes, "upper_codes", self.config.codebook_size)
        self._check_codes(lower_codes, "lower_codes", self.config.codebook_size)
        inputs = dance_to_inputs(upper_codes, lower_codes, music_features)
        upper_taken, lower_taken = inputs.pop("upper_labels"), inputs.pop("lower_labels")
        output = self(**inputs, output_hidden_states=output_hidden_states)
        upper_log_probs = output.upper_logits.float().log_softmax(-1)
        lower_log_probs = output.lower_logits.float().log_softmax(-1)
        upper_taken_log_probs = upper_log_probs.gather(-1, upper_taken[..., None]).squeeze(-1)
        lower_taken_log_probs = lower_log_probs.gather(-1, lower_taken[..., None]).squeeze(-1)
        entropy = -(upper_log_probs.exp() * upper_log_probs).sum(-1) - (lower_log_probs.exp() * lower_log_probs).sum(-1)
        return PolicyLogProbs(
            log_probs=upper_taken_log_probs + lower_taken_log_probs,
            upper_log_probs=upper_taken_log_probs,
            lower_log_probs=lower_taken_log_probs,
            entropy=entropy,
            upper_logits=output.upper_logits,
            lower_logits=output.lower_logits,
            hidden_states=output.hidden_states,
        )

    # ------------------------------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------------------------------
    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        past_key_values: Cache | None = None,
        music_features: torch.Tensor | None = None,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """For transformers' own loop (`GenerationMixin.generate(policy, input_ids=..., music_features=...)`).

        `music_features` there is the dance-timeline music (B, S, music_dim); the tokens not yet in
        the cache get their frames by position (token t <- frame t+1), and only the last position's
        joint log-probs are built. Greedy and temperature sampling of that loop match ours in
        distribution (the joint softmax factorises over the halves); its top-k acts on the joint
        vocabulary, ours per half.
        """
        seen = past_key_values.get_seq_length() if past_key_values is not None else 0
        end = input_ids.shape[1] + 1
        if music_features is None or music_features.shape[1] < end:
            have = None if music_features is None else music_features.shape[1]
            raise E3D2Error(f"music features: {end} frames needed to choose step {end - 1}, got {have}")
        return {
            "input_ids": input_ids[:, seen:],
            "music_features": music_features[:, seen + 1 : end],
            "past_key_values": past_key_values,
            "use_cache": use_cache,
            "joint_logits_to_keep": 1,
        }

    @staticmethod
    def _choose_codes(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
        """One half's next codes (B,) from its logits: argmax, or temperature/top-k sampling."""
        if not do_sample:
            return logits.argmax(-1)
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth_best = logits.topk(top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth_best, float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)

    def _eps_greedy(
        self, upper: torch.Tensor, lower: torch.Tensor, noise_level: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2's noise on one step's actions (B,): with probability eps the whole action, both halves, becomes uniform.

        One coin per step, as the paper's eps-greedy replaces the action (the pair of codes), not each
        half on its own coin (which would touch 1 - (1 - eps)^2 of the steps, 75% at eps = 0.5).
        """
        replace = torch.rand(upper.shape, device=upper.device, generator=generator) < noise_level
        uniform = torch.randint(self.config.codebook_size, (2, *upper.shape), device=upper.device, generator=generator)
        return torch.where(replace, uniform[0], upper), torch.where(replace, uniform[1], lower)

    @torch.no_grad()
    def generate(
        self,
        music_features: torch.Tensor | np.ndarray,
        input_ids: torch.Tensor | None = None,
        *,
        upper_codes: torch.Tensor | None = None,
        lower_codes: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        noise_level: float = 0.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        strategy: Literal["cache", "recompute_window"] = "cache",
        recompute_steps: int | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Dance to music: joint pose tokens (B, P + N) = the P prompt steps then N chosen steps.

        music_features: (B, S, music_dim) at 7.5 fps, frame i belonging to step i (frame 0 goes
        with the prompt's first step and is not read). Prompt: `input_ids` (B, P) joint tokens or
        `upper_codes`/`lower_codes` (B, P), normally P = 1, the first pose code from data.
        max_new_tokens: N, default S - P (until the music ends); at most S - P.
        Sampling: greedy unless `do_sample`; `temperature` and `top_k` apply to each half's 512
        logits; `noise_level` is stage 2's eps-greedy (with that probability a step's whole action,
        upper and lower code, is replaced by uniform codes; one coin per step). Randomness comes from `generator`, else a fresh one
        seeded with `seed`, else torch's global generator.
        strategy: "cache" (rolling KV cache, = one banded forward over the whole dance) or
        "recompute_window" (Bailando's inference: re-encode the last `recompute_steps` steps for
        each new step; default `context_length`, Bailando's own `BAILANDO_RECOMPUTE_STEPS` = 28).
        Call `.eval()` first (from_pretrained does) so dropout is off.
        Use `split_pose_tokens` to get (upper, lower) codes back. Pieces of different lengths share
        a batch right-padded with any music; cut each dance at its own length afterwards.
        """
        if strategy not in ("cache", "recompute_window"):
            raise E3D2Error(f"generation strategy must be 'cache' or 'recompute_window', got {strategy!r}")
        if recompute_steps is not None and (strategy != "recompute_window" or not 1 <= recompute_steps <= self.config.context_length):
            raise E3D2Error(
                f"recompute_steps must lie in [1, {self.config.context_length}] and goes with strategy 'recompute_window', "
                f"got {recompute_steps} with {strategy!r}"
            )
        if do_sample and temperature <= 0:
            raise E3D2Error(f"temperature must be positive, got {temperature}")
        if top_k is not None and top_k < 1:
            raise E3D2Error(f"top_k must be at least 1, got {top_k}")
        if not 0.0 <= noise_level <= 1.0:
            raise E3D2Error(f"noise_level must lie in [0, 1], got {noise_level}")
        prompt_upper, prompt_lower = self._resolve_codes(
            None if input_ids is None else torch.as_tensor(input_ids, device=self.device),
            None if upper_codes is None else torch.as_tensor(upper_codes, device=self.device),
            None if lower_codes is None else torch.as_tensor(lower_codes, device=self.device),
        )
        batch, prompt_steps = prompt_upper.shape
        music = torch.as_tensor(music_features, device=self.device, dtype=self.dtype)
        if music.ndim != 3 or music.shape[0] != batch or music.shape[-1] != self.config.music_dim:
            raise E3D2Error(
                f"music features: expected ({batch}, steps, {self.config.music_dim}) (Bailando's 438-d features at 7.5 fps) "
                f"for a prompt of batch {batch}, got {tuple(music.shape)}"
            )
        available = music.shape[1] - prompt_steps
        new_steps = available if max_new_tokens is None else max_new_tokens
        if prompt_steps < 1 or new_steps < 1 or new_steps > available:
            raise E3D2Error(
                f"music features: {music.shape[1]} frames after a {prompt_steps}-step prompt allow 1..{max(available, 0)} "
                f"new steps, asked for {new_steps}"
            )
        if seed is not None and generator is None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        choose = functools.partial(
            self._choose_codes, do_sample=do_sample, temperature=temperature, top_k=top_k, generator=generator
        )

        total = prompt_steps + new_steps
        upper = torch.empty(batch, total, dtype=torch.long, device=self.device)
        lower = torch.empty_like(upper)
        upper[:, :prompt_steps], lower[:, :prompt_steps] = prompt_upper, prompt_lower
        window = self.config.context_length if recompute_steps is None else recompute_steps
        cache = sliding_window_cache(self.config) if strategy == "cache" else None
        packed = mkl_packed_linears(self, batch) if cache is not None else contextlib.nullcontext()
        with packed:
            for step in tqdm(range(prompt_steps, total), desc=f"dance ({strategy})", disable=not progress, leave=False):
                if cache is None:  # re-encode the last `window` steps as a fresh sequence
                    start = max(0, step - window)
                else:  # the prompt once, then only the newest step against the rolling cache
                    start = 0 if step == prompt_steps else step - 1
                upper_logits, lower_logits, _ = self._code_logits_of_tokens(
                    upper[:, start:step], lower[:, start:step], music[:, start + 1 : step + 1], cache
                )
                upper[:, step], lower[:, step] = choose(upper_logits[:, -1]), choose(lower_logits[:, -1])
                if noise_level > 0:
                    upper[:, step], lower[:, step] = self._eps_greedy(upper[:, step], lower[:, step], noise_level, generator)
        return self.join_pose_tokens(upper, lower)


# Importing this module (e3d2_hf does) makes AutoConfig / AutoModelForCausalLM.from_pretrained(dir) work;
# exist_ok keeps re-imports (module reloads, tests) from failing.
AutoConfig.register("e3d2_policy", PolicyConfig, exist_ok=True)
AutoModelForCausalLM.register(PolicyConfig, E3D2PolicyModel, exist_ok=True)
