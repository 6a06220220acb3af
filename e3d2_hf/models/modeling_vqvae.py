"""E3D2 VQ-VAE: Bailando's "choreographic memory", the pose-code vocabulary of the policy.

Two VQ-VAEs, one per body half (Bailando's SepVQVAE): lower = joints [0,1,2,4,5,7,8,10,11]
(27 dims), upper = the other 15 joints (45 dims). Each sees the joints relative to the frame's
root (the root itself zeroed), 60 fps, and turns 8 frames into one code:

- Encoder: `downsampling_layers` x [Conv1d(k4, s2, p1) + dilated residual stack (depth 3, dilations
  1, 3, 9; block = ReLU, Conv k3 dilated, ReLU, Conv k1, added to its input)], then Conv k3 to the
  code width. Decoder: Conv k3, then per stage the residual stack (dilations reversed: 9, 3, 1) and
  ConvTranspose1d(k4, s2, p1), then Conv k3 to the joints (Jukebox/Bailando layout).
- Codebook: `codebook_size` codes of `codebook_dim`, nearest code by Euclidean distance, EMA updates
  (decay 0.99), codes whose EMA count falls below 1 reset to random encoder outputs of the current
  batch, codes initialised from the first batch's encoder outputs, straight-through gradients.
- Loss per half: L1 reconstruction + L1 velocity + L1 acceleration + 0.02 x commitment
  (MSE between encoder output and its code, gradient to the encoder only); the two halves averaged.

The codebook is `vector_quantize_pytorch.VectorQuantize` (v1.32), which reproduces these
semantics when configured as below (checked against its source):
`decay` = EMA decay (`lerp` of counts and sums, codes = sums / Laplace-smoothed counts);
`kmeans_init=True, kmeans_iters=1` = codes start at random encoder outputs of the first batch
(one Lloyd step; `kmeans_iters=0` is not accepted by the library); `threshold_ema_dead_code=1` =
codes with EMA count < 1 are replaced by random vectors of the current batch (their count reset to
1, as Jukebox's fresh codes start); `rotation_trick=False` = the plain straight-through estimator.
Its codebook state lives in buffers (`embed`, `embed_avg`, `cluster_size`, `initted`), so it is in
`state_dict` and saved with `save_pretrained` (safetensors). Two differences are deliberate: the
library's commitment weight is 0 and the commitment loss is computed here (same formula), because
the library only returns it in training mode and held-out evaluation wants it too; and codes are
found with `freeze_codebook=True` outside training steps (`encode`, the root-velocity phase), so
that encoding never moves the codebook.

Root motion: Bailando's VQ-VAE never sees the root; a separate decoder predicts the root's velocity
per frame from the codes, trained as a second step on frozen codes (`forward(...,
root_velocity_only=True)`, see `e3d2_hf.trainers.vqvae`). Here that decoder (same layout as a pose
decoder, output 3) reads both halves' code vectors (Bailando's reads the lower half's only; the
arms carry momentum too and it costs nothing). The decoder outputs metres per *second* and
`predict_root_velocity` divides by `fps`: per-frame velocities are ~5 mm, and a decoder asked for
them directly learned them ~4x too small (held-out R^2 0.04-0.1 per axis after the tiny recipe's
root phase, against 0.22-0.39 in m/s; the ceiling's FID_k 134 -> 75). `decode` integrates it:
root[0] = `root_start` (default: standing on the floor above the origin), root[t] = root[t-1] +
velocity[t-1], so decoded dances travel.

Decoded poses are put on the SMPL rest skeleton (`rest_skeleton`, default male: the bodies the
data were made from), keeping each bone's direction: a decoder regressing positions shortens the
bones it is unsure of (forearms to ~77% on the tiny run), which no body has.

Inputs must have a multiple of 8 frames (`frames_per_code`); other lengths raise `E3D2Error`
rather than being cropped silently (`crop_to_codes` crops explicitly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput
from vector_quantize_pytorch import VectorQuantize

from e3d2_hf.models.configuration_vqvae import VQVAEConfig
from e3d2_hf.motion.fitting import fit_rest_skeleton
from e3d2_hf.motion.skeleton import LOWER_BODY_JOINTS, NUM_JOINTS, UPPER_BODY_JOINTS, rest_joints
from e3d2_hf.utils import E3D2Error


@dataclass
class VQVAEOutput(ModelOutput):
    """What `E3D2VQVAE.forward` returns.

    Pose training (`root_velocity_only=False`): `loss` is the halves' mean of reconstruction +
    velocity + acceleration + commitment terms (each term also reported, averaged over halves);
    `reconstruction` (B, T, 24, 3) is root-relative; `upper_codes`, `lower_codes` (B, T/8).
    Root phase (`root_velocity_only=True`): `loss` = `root_velocity_loss`, `root_velocity` (B, T, 3)
    the predicted per-frame root velocity (metres per frame).
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    upper_codes: torch.LongTensor | None = None
    lower_codes: torch.LongTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    velocity_loss: torch.FloatTensor | None = None
    acceleration_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    root_velocity: torch.FloatTensor | None = None
    root_velocity_loss: torch.FloatTensor | None = None


class ResidualConvBlock(nn.Module):
    """x + Conv1x1(ReLU(Conv3_dilated(ReLU(x)))): Jukebox's ResConv1DBlock (Bailando keeps it)."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, padding=dilation, dilation=dilation),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=1),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.block(hidden)


def residual_stack(channels: int, depth: int, growth_rate: int, reverse: bool = False) -> nn.Sequential:
    """`depth` residual blocks with dilations growth_rate**0, **1, ... (reversed in the decoder)."""
    dilations = [growth_rate**level for level in range(depth)]
    return nn.Sequential(*(ResidualConvBlock(channels, dilation) for dilation in (dilations[::-1] if reverse else dilations)))


class MotionEncoder(nn.Module):
    """(B, C_in, T) -> (B, codebook_dim, T / 2**downsampling_layers)."""

    def __init__(self, input_dim: int, config: VQVAEConfig):
        super().__init__()
        layers: list[nn.Module] = []
        for stage in range(config.downsampling_layers):
            layers.append(nn.Conv1d(input_dim if stage == 0 else config.channels, config.channels, kernel_size=4, stride=2, padding=1))
            layers.append(residual_stack(config.channels, config.residual_depth, config.dilation_growth_rate))
        layers.append(nn.Conv1d(config.channels, config.codebook_dim, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        return self.layers(motion)


class MotionDecoder(nn.Module):
    """(B, C_latent, n) -> (B, output_dim, n * 2**downsampling_layers); mirrors `MotionEncoder`."""

    def __init__(self, latent_dim: int, output_dim: int, config: VQVAEConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(latent_dim, config.channels, kernel_size=3, padding=1)]
        for _ in range(config.downsampling_layers):
            layers.append(residual_stack(config.channels, config.residual_depth, config.dilation_growth_rate, reverse=True))
            layers.append(nn.ConvTranspose1d(config.channels, config.channels, kernel_size=4, stride=2, padding=1))
        layers.append(nn.Conv1d(config.channels, output_dim, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.layers(latents)


class BodyHalfVQVAE(nn.Module):
    """Encoder, codebook and decoder of one body half; motion tensors are (B, T, dims)."""

    def __init__(self, input_dim: int, config: VQVAEConfig):
        super().__init__()
        self.encoder = MotionEncoder(input_dim, config)
        self.quantizer = VectorQuantize(
            dim=config.codebook_dim,
            codebook_size=config.codebook_size,
            decay=config.codebook_decay,
            kmeans_init=True,
            kmeans_iters=config.kmeans_iters,
            threshold_ema_dead_code=config.dead_code_threshold,
            commitment_weight=0.0,  # computed in `E3D2VQVAE` (also in eval mode); same formula
            rotation_trick=False,  # plain straight-through estimator, as Bailando
            channel_last=True,
            sync_codebook=None,  # the library syncs EMA statistics across processes when distributed
        )
        self.decoder = MotionDecoder(config.codebook_dim, input_dim, config)

    def encode_latents(self, motion: torch.Tensor) -> torch.Tensor:
        """(B, T, dims) -> encoder outputs (B, T/8, codebook_dim)."""
        return self.encoder(motion.transpose(1, 2)).transpose(1, 2)

    def quantize(self, latents: torch.Tensor, update_codebook: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codes of `latents`: (straight-through code vectors (B, n, d), codes (B, n) long).

        The codebook's EMA statistics and dead-code resets advance only when `update_codebook`
        and the module is training.
        """
        quantized, codes, _ = self.quantizer(latents, freeze_codebook=not update_codebook)
        return quantized, codes

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook rows of `codes` (B, n) -> (B, n, codebook_dim)."""
        return self.quantizer.get_codes_from_indices(codes)

    def decode_latents(self, quantized: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, n, d) -> motion (B, 8n, dims)."""
        return self.decoder(quantized.transpose(1, 2)).transpose(1, 2)


def motion_l1_losses(predicted: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L1 of positions, of their frame-to-frame velocity and of their acceleration; time is dim 1."""
    reconstruction = F.l1_loss(predicted, target)
    predicted_velocity, target_velocity = predicted.diff(dim=1), target.diff(dim=1)
    velocity = F.l1_loss(predicted_velocity, target_velocity)
    acceleration = F.l1_loss(predicted_velocity.diff(dim=1), target_velocity.diff(dim=1))
    return reconstruction, velocity, acceleration


class E3D2VQVAE(PreTrainedModel):
    """Upper- and lower-body VQ-VAEs plus the root-velocity decoder (see the module docstring).

    `encode(joints (B,T,24,3)) -> (upper_codes, lower_codes)` each (B, T/8) long;
    `decode(upper_codes, lower_codes, root_start=None) -> joints (B, 8n, 24, 3)` at 60 fps, on the rest skeleton;
    `forward(joints)` -> `VQVAEOutput` with the training loss.
    """

    config_class = VQVAEConfig
    base_model_prefix = "vqvae"
    main_input_name = "joints"

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        self.upper = BodyHalfVQVAE(3 * len(UPPER_BODY_JOINTS), config)
        self.lower = BodyHalfVQVAE(3 * len(LOWER_BODY_JOINTS), config)
        self.root_velocity_decoder = MotionDecoder(2 * config.codebook_dim, 3, config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's default convolution initialisation (what Jukebox and Bailando train from)."""
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * module.weight.shape[2]
                if isinstance(module, nn.ConvTranspose1d):
                    fan_in = module.weight.shape[0] * module.weight.shape[2]
                bound = 1.0 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)

    # ------------------------------------------------------------------------------------------
    # Joints <-> body-half motion
    # ------------------------------------------------------------------------------------------
    def _check_joints(self, joints: torch.Tensor) -> None:
        if not torch.is_tensor(joints) or joints.dim() != 4 or tuple(joints.shape[2:]) != (NUM_JOINTS, 3):
            shape = tuple(joints.shape) if torch.is_tensor(joints) else type(joints).__name__
            raise E3D2Error(f"VQ-VAE: joints must be a (batch, frames, {NUM_JOINTS}, 3) tensor, got {shape}")
        frames, step = joints.shape[1], self.config.frames_per_code
        if frames < step or frames % step:
            raise E3D2Error(f"VQ-VAE: the number of frames must be a positive multiple of {step}, got {frames} (crop with crop_to_codes)")

    def crop_to_codes(self, joints: torch.Tensor) -> torch.Tensor:
        """The longest prefix of `joints` (B, T, ...) whose length is a multiple of `frames_per_code`."""
        step = self.config.frames_per_code
        return joints[:, : joints.shape[1] // step * step]

    def split_body(self, joints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Absolute joints (B,T,24,3) -> root-relative (upper (B,T,45), lower (B,T,27)); the root row is zero."""
        relative = joints - joints[:, :, :1]
        return relative[:, :, UPPER_BODY_JOINTS].flatten(2), relative[:, :, LOWER_BODY_JOINTS].flatten(2)

    def join_body(self, upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
        """Inverse of `split_body` (without the root): (B,T,45), (B,T,27) -> (B,T,24,3)."""
        batch, frames = upper.shape[:2]
        joints = upper.new_zeros(batch, frames, NUM_JOINTS, 3)
        joints[:, :, UPPER_BODY_JOINTS] = upper.reshape(batch, frames, -1, 3)
        joints[:, :, LOWER_BODY_JOINTS] = lower.reshape(batch, frames, -1, 3)
        return joints

    # ------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, joints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joints (B, T, 24, 3) at 60 fps -> (upper_codes, lower_codes), each (B, T/8) long. Never moves the codebook."""
        self._check_joints(joints)
        upper, lower = self.split_body(joints.to(self.dtype))
        _, upper_codes = self.upper.quantize(self.upper.encode_latents(upper), update_codebook=False)
        _, lower_codes = self.lower.quantize(self.lower.encode_latents(lower), update_codebook=False)
        return upper_codes, lower_codes

    def _check_codes(self, upper_codes: torch.Tensor, lower_codes: torch.Tensor) -> None:
        for name, codes in (("upper_codes", upper_codes), ("lower_codes", lower_codes)):
            if not torch.is_tensor(codes) or codes.dim() != 2 or codes.dtype not in (torch.int32, torch.int64):
                raise E3D2Error(f"VQ-VAE: {name} must be a (batch, steps) integer tensor")
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.codebook_size):
                raise E3D2Error(f"VQ-VAE: {name} must lie in [0, {self.config.codebook_size})")
        if upper_codes.shape != lower_codes.shape or upper_codes.shape[1] < 1:
            raise E3D2Error(f"VQ-VAE: upper_codes {tuple(upper_codes.shape)} and lower_codes {tuple(lower_codes.shape)} must match and be non-empty")

    def predict_root_velocity(self, upper_vectors: torch.Tensor, lower_vectors: torch.Tensor) -> torch.Tensor:
        """Per-frame root velocity (B, 8n, 3), metres per frame, from both halves' code vectors (B, n, d).

        The decoder itself speaks metres per second (targets of order 1, see the module docstring).
        """
        latents = torch.cat((upper_vectors, lower_vectors), dim=-1).transpose(1, 2)
        return self.root_velocity_decoder(latents).transpose(1, 2) / self.config.fps

    @torch.no_grad()
    def decode_root_relative(self, upper_codes: torch.Tensor, lower_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (B, n) -> root-relative joints (B, 8n, 24, 3), the root at 0, and the root velocity (B, 8n, 3), metres per frame.

        What the decoders themselves output, before the root is integrated (Bailando's `decode`, which
        its actor-critic reward reads as it is).
        """
        self._check_codes(upper_codes, lower_codes)
        upper_vectors = self.upper.code_vectors(upper_codes.long())
        lower_vectors = self.lower.code_vectors(lower_codes.long())
        relative = self.join_body(self.upper.decode_latents(upper_vectors), self.lower.decode_latents(lower_vectors))
        relative[:, :, 0] = 0.0
        if self.config.rest_skeleton is not None:
            relative = self._on_rest_skeleton(relative)
        return relative, self.predict_root_velocity(upper_vectors, lower_vectors)

    @torch.no_grad()
    def decode(self, upper_codes: torch.Tensor, lower_codes: torch.Tensor, root_start: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (B, n) -> joints (B, 8n, 24, 3) at 60 fps, the root integrated from predicted velocities.

        `root_start` (B, 3) places the first frame's root; by default the dancer starts above the
        origin with the first frame's lowest joint on the floor (y = 0, y up). The root joint sits
        exactly on the integrated root, every other joint at its decoded offset from it.
        """
        relative, velocity = self.decode_root_relative(upper_codes, lower_codes)
        batch = upper_codes.shape[0]
        if root_start is None:
            root_start = F.pad(-relative[:, 0, :, 1].amin(dim=1, keepdim=True), (1, 1))
        elif tuple(root_start.shape) != (batch, 3):
            raise E3D2Error(f"VQ-VAE: root_start must be ({batch}, 3), got {tuple(root_start.shape)}")
        root = root_start.to(velocity)[:, None] + F.pad(velocity[:, :-1].cumsum(dim=1), (0, 0, 1, 0))
        return relative + root[:, :, None]

    def _on_rest_skeleton(self, relative: torch.Tensor) -> torch.Tensor:
        """Root-relative poses (B, T, 24, 3) with the rest skeleton's bone lengths (`fit_rest_skeleton`, per frame)."""
        rest = rest_joints(self.config.rest_skeleton)
        poses = relative.detach().cpu().double().numpy().reshape(-1, NUM_JOINTS, 3)
        fitted = fit_rest_skeleton(poses, rest).reshape(relative.shape)
        return torch.from_numpy(fitted).to(relative)

    def forward(self, joints: torch.Tensor, root_velocity_only: bool = False, return_dict: bool | None = None) -> VQVAEOutput | tuple:
        """Training losses for a batch of windows (B, T, 24, 3), T a multiple of 8.

        `root_velocity_only=False` trains the VQ-VAEs (the codebooks' EMA advances in training mode);
        `True` is Bailando's second step: the codes are found with the VQ-VAEs frozen (no gradient,
        no codebook update) and only the root-velocity decoder gets a loss: L1 of the velocity
        root[t+1] - root[t] plus L1 of its change (weighted like the pose acceleration term), both in
        metres per second (the decoder's own unit).
        """
        self._check_joints(joints)
        joints = joints.to(self.dtype)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        upper, lower = self.split_body(joints)
        if root_velocity_only:
            with torch.no_grad():
                upper_vectors, upper_codes = self.upper.quantize(self.upper.encode_latents(upper), update_codebook=False)
                lower_vectors, lower_codes = self.lower.quantize(self.lower.encode_latents(lower), update_codebook=False)
            velocity = self.predict_root_velocity(upper_vectors.detach(), lower_vectors.detach())
            fps = self.config.fps
            predicted, target = velocity[:, :-1] * fps, (joints[:, 1:, 0] - joints[:, :-1, 0]) * fps
            change_loss = F.l1_loss(predicted.diff(dim=1), target.diff(dim=1))
            loss = F.l1_loss(predicted, target) + self.config.acceleration_loss_weight * change_loss
            output = VQVAEOutput(
                loss=loss, upper_codes=upper_codes, lower_codes=lower_codes, root_velocity=velocity, root_velocity_loss=loss
            )
        else:
            terms = []
            reconstructions, codes = [], []
            for half, motion in ((self.upper, upper), (self.lower, lower)):
                latents = half.encode_latents(motion)
                quantized, half_codes = half.quantize(latents, update_codebook=True)
                reconstruction = half.decode_latents(quantized)
                commitment = F.mse_loss(latents, quantized.detach())
                terms.append(torch.stack((*motion_l1_losses(reconstruction, motion), commitment)))
                reconstructions.append(reconstruction)
                codes.append(half_codes)
            reconstruction_loss, velocity_loss, acceleration_loss, commitment_loss = torch.stack(terms).mean(dim=0)
            loss = (
                reconstruction_loss
                + self.config.velocity_loss_weight * velocity_loss
                + self.config.acceleration_loss_weight * acceleration_loss
                + self.config.commitment_weight * commitment_loss
            )
            output = VQVAEOutput(
                loss=loss,
                reconstruction=self.join_body(*reconstructions),
                upper_codes=codes[0],
                lower_codes=codes[1],
                reconstruction_loss=reconstruction_loss,
                velocity_loss=velocity_loss,
                acceleration_loss=acceleration_loss,
                commitment_loss=commitment_loss,
            )
        return output if return_dict else output.to_tuple()

    def pose_parameters(self) -> list[nn.Parameter]:
        """Parameters of the two VQ-VAEs (trained in the pose phase)."""
        return [*self.upper.parameters(), *self.lower.parameters()]

    def root_velocity_parameters(self) -> list[nn.Parameter]:
        """Parameters of the root-velocity decoder (trained in the root phase)."""
        return list(self.root_velocity_decoder.parameters())


# Importing this module (e3d2_hf does) makes AutoConfig / AutoModel.from_pretrained(dir) work.
AutoConfig.register(VQVAEConfig.model_type, VQVAEConfig, exist_ok=True)
AutoModel.register(VQVAEConfig, E3D2VQVAE, exist_ok=True)

__all__ = ["BodyHalfVQVAE", "E3D2VQVAE", "MotionDecoder", "MotionEncoder", "VQVAEOutput", "motion_l1_losses"]
