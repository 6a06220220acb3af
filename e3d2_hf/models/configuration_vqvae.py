"""Configuration of the E3D2 VQ-VAE, Bailando's "choreographic memory".

Defaults are Bailando's (lisiyao21/Bailando `config/sep_vqvae*.yaml`, see
../shared/docs/bailando-reference.md): width 512, 3 x2 downsamplings (x8 in time), residual stacks
of depth 3 with dilations growing x3 (1, 3, 9), 512-entry codebooks of 512-d codes, EMA decay
0.99, dead-code threshold 1, commitment weight 0.02, velocity and acceleration losses weight 1.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import PretrainedConfig

from e3d2_hf.motion.skeleton import BUILTIN_GENDERS
from e3d2_hf.utils import E3D2Error


class VQVAEConfig(PretrainedConfig):
    """Sizes and loss weights of `E3D2VQVAE` (one VQ-VAE per body half, same sizes for both).

    Args:
        channels: width of every convolution in the encoders and decoders.
        codebook_size: codes per body half (the policy's action space per half).
        codebook_dim: width of one code (the encoder's output channels).
        downsampling_layers: stride-2 stages; the time resolution shrinks by `2 ** downsampling_layers`.
        residual_depth: residual blocks per stage; the dilations are `dilation_growth_rate ** i`.
        codebook_decay: EMA decay of the codebook counts and sums.
        dead_code_threshold: a code whose EMA count falls below this is reset to an encoder output of the batch.
        kmeans_iters: Lloyd iterations of the first-batch initialisation (codes start at encoder outputs).
        commitment_weight, velocity_loss_weight, acceleration_loss_weight: loss weights (reconstruction is 1).
        fps: frame rate of the joints the model encodes and decodes.
        rest_skeleton: the SMPL body ("male", "neutral") whose bones decoded dances are put on
            (`e3d2_hf.motion.fitting.fit_rest_skeleton`); None: the decoder's raw joints.
    """

    model_type: ClassVar[str] = "e3d2_vqvae"

    channels: int = 512
    codebook_size: int = 512
    codebook_dim: int = 512
    downsampling_layers: int = 3
    residual_depth: int = 3
    dilation_growth_rate: int = 3
    codebook_decay: float = 0.99
    dead_code_threshold: float = 1.0
    kmeans_iters: int = 1
    commitment_weight: float = 0.02
    velocity_loss_weight: float = 1.0
    acceleration_loss_weight: float = 1.0
    fps: float = 60.0
    rest_skeleton: str | None = "male"

    def __post_init__(self, **kwargs):
        positive = {
            "channels": self.channels,
            "codebook_size": self.codebook_size,
            "codebook_dim": self.codebook_dim,
            "downsampling_layers": self.downsampling_layers,
            "residual_depth": self.residual_depth,
            "dilation_growth_rate": self.dilation_growth_rate,
            "kmeans_iters": self.kmeans_iters,
        }
        problems = [f"{name} must be a positive integer, got {value}" for name, value in positive.items() if int(value) < 1]
        if not 0.0 < self.codebook_decay < 1.0:
            problems.append(f"codebook_decay must lie in (0, 1), got {self.codebook_decay}")
        weights = {
            "dead_code_threshold": self.dead_code_threshold,
            "commitment_weight": self.commitment_weight,
            "velocity_loss_weight": self.velocity_loss_weight,
            "acceleration_loss_weight": self.acceleration_loss_weight,
        }
        problems += [f"{name} must not be negative, got {value}" for name, value in weights.items() if value < 0]
        if self.rest_skeleton not in (None, *BUILTIN_GENDERS):
            problems.append(f"rest_skeleton must be one of {', '.join(BUILTIN_GENDERS)} or null, got {self.rest_skeleton!r}")
        if self.fps <= 0:
            problems.append(f"fps must be positive, got {self.fps}")
        if problems:
            raise E3D2Error("VQVAEConfig: " + "; ".join(problems))
        super().__post_init__(**kwargs)

    @property
    def frames_per_code(self) -> int:
        """Motion frames one pose code stands for (8 in Bailando: 60 fps motion, 7.5 codes per second)."""
        return 2**self.downsampling_layers


__all__ = ["VQVAEConfig"]
