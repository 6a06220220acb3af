"""Stage 1a: train the VQ-VAE choreographic memory on the prepared dataset, then its root-velocity decoder.

Two phases, as Bailando trains them (../shared/docs/bailando-reference.md):

1. **pose**: both body-half VQ-VAEs on 240-frame windows every 40 frames, batch 32, Adam lr 3e-5
   betas (0.5, 0.999), lr x0.1 at epochs 100 and 200, 500 epochs (`lr_decay_epochs`,
   `lr_decay_factor`: a step schedule `TrainingArguments` has no name for). The root-velocity
   decoder is frozen.
2. **root**: the VQ-VAEs and codebooks frozen, the root-velocity decoder alone on windows every 8
   frames, batch 8, Adam lr 5e-5 betas (0.9, 0.999), lr x0.1 at epochs 100 and 200, 500 epochs
   (the `root_*` fields; Bailando `configs/sep_vqvae_root.yaml`). Skipped when
   `root_num_train_epochs` is 0 (decoded dances then stand still).

Both run through `transformers.Trainer` (tensorboard logs, checkpoints) inside a hidden work
folder `RUN/.vqvae.training/{pose,root}` (`e3d2_hf.trainers.base`, shared with behaviour cloning).
With `resume` (default) a rerun continues from the last checkpoint there, or skips the pose phase if
it already finished; a rerun with different model sizes is refused. A non-finite loss stops training
with `E3D2Error`, keeping the checkpoints.

At the end `RUN/vqvae` (= `output_dir`) appears complete: the `save_pretrained` folder (config.json,
model.safetensors with the codebook EMA state), `eval.json` (held-out reconstruction MPJPE and
codebook usage on val + test), a model card README.md with the recipe values, `training_config.json`
and the tensorboard logs under `runs/pose` and `runs/root`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelCard
from tqdm.auto import tqdm
from transformers import set_seed

from e3d2_hf.data.windows import SequenceWindows, split_columns
from e3d2_hf.models.configuration_vqvae import VQVAEConfig
from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
from e3d2_hf.models.weights import load_pretrained
from e3d2_hf.motion.skeleton import NUM_JOINTS
from e3d2_hf.trainers.base import BAILANDO_CARD_KEYS, BailandoTrainingArguments, StepDecayTrainer, finish, last_checkpoint, prepare_work_dir
from e3d2_hf.trainers.model_card import RECONSTRUCTION_TASK, CardTable, build_model_card, eval_results, recipe_values, training_data
from e3d2_hf.utils import E3D2Error, atomic_directory

logger = logging.getLogger(__name__)

HELDOUT_SPLITS = ("val", "test")
MODEL_FIELDS = (
    "channels",
    "codebook_size",
    "codebook_dim",
    "downsampling_layers",
    "residual_depth",
    "dilation_growth_rate",
    "codebook_decay",
    "dead_code_threshold",
    "kmeans_iters",
    "commitment_weight",
    "velocity_loss_weight",
    "acceleration_loss_weight",
    "rest_skeleton",
)


@dataclass
class VQVAETrainingConfig(BailandoTrainingArguments):
    """The `vqvae:` section of a recipe: model sizes, windows, the two phases' schedules and `TrainingArguments`.

    Defaults are Bailando's (paper scale); `TrainingArguments` fields (`learning_rate`,
    `num_train_epochs`, `per_device_train_batch_size`, ...) describe the pose phase, the `root_*`
    fields the root-velocity phase. The optimiser and the defaults shared with behaviour cloning are
    `BailandoTrainingArguments`'.
    """

    stage = "vqvae"

    window: int = field(default=240, metadata={"help": "Frames per training window (60 fps; a multiple of 8)."})
    window_stride: int = field(default=40, metadata={"help": "Frames between window starts in the pose phase."})
    channels: int = field(default=512, metadata={"help": "Convolution width of encoders and decoders."})
    codebook_size: int = field(default=512, metadata={"help": "Codes per body half (the policy's action space per half)."})
    codebook_dim: int = field(default=512, metadata={"help": "Width of one code."})
    downsampling_layers: int = field(default=3, metadata={"help": "Stride-2 stages: time shrinks by 2**this (8)."})
    residual_depth: int = field(default=3, metadata={"help": "Residual blocks per stage (dilations 1, 3, 9)."})
    dilation_growth_rate: int = field(default=3, metadata={"help": "Dilation factor between residual blocks."})
    codebook_decay: float = field(default=0.99, metadata={"help": "EMA decay of the codebooks."})
    dead_code_threshold: float = field(default=1.0, metadata={"help": "Codes with EMA count below this are reset to encoder outputs."})
    kmeans_iters: int = field(default=1, metadata={"help": "Lloyd iterations of the first-batch codebook initialisation."})
    commitment_weight: float = field(default=0.02, metadata={"help": "Weight of the commitment loss."})
    velocity_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the L1 velocity loss."})
    acceleration_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the L1 acceleration loss."})
    rest_skeleton: str | None = field(
        default="male", metadata={"help": "SMPL body whose bones decoded dances are put on (the data's: prepare's gender); null: raw joints."}
    )
    lr_decay_epochs: list[int] = field(
        default_factory=lambda: [100, 200], metadata={"help": "Pose phase: epochs at which the learning rate is multiplied by lr_decay_factor."}
    )
    root_window_stride: int = field(default=8, metadata={"help": "Root phase: frames between window starts."})
    root_per_device_train_batch_size: int = field(default=8, metadata={"help": "Root phase: windows per batch and device."})
    root_learning_rate: float = field(default=5e-5, metadata={"help": "Root phase: learning rate."})
    root_adam_beta1: float = field(default=0.9, metadata={"help": "Root phase: Adam beta1 (Bailando's root phase: 0.9; its pose phase 0.5)."})
    root_adam_beta2: float = field(default=0.999, metadata={"help": "Root phase: Adam beta2."})
    root_lr_decay_epochs: list[int] = field(
        default_factory=lambda: [100, 200], metadata={"help": "Root phase: epochs at which the learning rate is multiplied by lr_decay_factor."}
    )
    root_num_train_epochs: float = field(default=500.0, metadata={"help": "Root phase: epochs (0 skips the phase)."})

    # Bailando's pose-phase schedule.
    learning_rate: float = 3e-5
    num_train_epochs: float = 500.0

    def __post_init__(self):
        frames_per_code = 2**self.downsampling_layers
        if self.window < frames_per_code or self.window % frames_per_code:
            raise E3D2Error(f"vqvae: window must be a positive multiple of {frames_per_code} frames, got {self.window}")
        if self.window_stride < 1 or self.root_window_stride < 1 or self.root_per_device_train_batch_size < 1:
            raise E3D2Error("vqvae: window_stride, root_window_stride and root_per_device_train_batch_size must be positive")
        if any(epoch < 1 for epoch in self.root_lr_decay_epochs):
            raise E3D2Error(f"vqvae: root_lr_decay_epochs must be positive, got {self.root_lr_decay_epochs}")
        if self.root_num_train_epochs < 0:
            raise E3D2Error(f"vqvae: root_num_train_epochs must not be negative, got {self.root_num_train_epochs}")
        super().__post_init__()

    def model_config(self) -> VQVAEConfig:
        """The VQ-VAE these settings describe."""
        return VQVAEConfig(**{name: getattr(self, name) for name in MODEL_FIELDS})

    def root_phase_arguments(self, output_dir: Path) -> VQVAETrainingConfig:
        """A copy for the root-velocity phase: its optimiser and schedule, checkpoints in `output_dir`."""
        arguments = self.trainer_arguments(output_dir)
        arguments.learning_rate = self.root_learning_rate
        arguments.adam_beta1, arguments.adam_beta2 = self.root_adam_beta1, self.root_adam_beta2
        arguments.per_device_train_batch_size = self.root_per_device_train_batch_size
        arguments.num_train_epochs = self.root_num_train_epochs
        arguments.lr_decay_epochs = list(self.root_lr_decay_epochs)
        return arguments


# Recipe values shown in the model card.
CARD_KEYS = (
    "window",
    "window_stride",
    *MODEL_FIELDS,
    *BAILANDO_CARD_KEYS,
    "root_window_stride",
    "root_per_device_train_batch_size",
    "root_learning_rate",
    "root_adam_beta1",
    "root_adam_beta2",
    "root_lr_decay_epochs",
    "root_num_train_epochs",
)


class VQVAETrainer(StepDecayTrainer):
    """`Trainer` for one phase: its loss is the model's (pose or root velocity), its schedule a step decay."""

    def __init__(self, *args: Any, root_velocity_only: bool, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.root_velocity_only = root_velocity_only

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(joints=inputs["joints"], root_velocity_only=self.root_velocity_only)
        loss = outputs.loss
        self.check_finite(loss, f"vqvae: non-finite {'root-velocity' if self.root_velocity_only else 'pose'} loss")
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = model(joints=inputs["joints"], root_velocity_only=self.root_velocity_only).loss.detach()
        return loss, None, None


def collate_windows(features: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack the windows' joints into a (B, T, 24, 3) float tensor."""
    return {"joints": torch.from_numpy(np.stack([feature["joints"] for feature in features]))}


def load_prepared_dataset(data_path: str | Path) -> Any:
    """The prepared DatasetDict (`e3d2_hf.data.prepare.load_prepared`, which checks its splits and columns)."""
    from e3d2_hf.data.prepare import load_prepared  # imported on use: the audio stack it pulls in is not needed to import this module

    return load_prepared(data_path)


def load_joint_sequences(data_path: str | Path) -> dict[str, list[np.ndarray]]:
    """Joints of every split of the prepared dataset, checked: (T, 24, 3), finite."""
    dataset = load_prepared_dataset(data_path)
    sequences = {}
    for split, rows in dataset.items():
        names = rows["name"]
        joints = split_columns(rows, ["joints"])["joints"]
        for name, array in zip(names, joints):
            if array.ndim != 3 or array.shape[1:] != (NUM_JOINTS, 3):
                raise E3D2Error(f"{data_path}: split '{split}', sequence '{name}': joints must be (T, {NUM_JOINTS}, 3), got {array.shape}")
            if not np.isfinite(array).all():
                raise E3D2Error(f"{data_path}: split '{split}', sequence '{name}': joints contain NaN or inf")
        sequences[split] = joints
    return sequences


def training_windows(sequences: list[np.ndarray], window: int, stride: int, source: str) -> SequenceWindows:
    """The split's windows; `E3D2Error` when the split is empty or every sequence is shorter than a window."""
    if not sequences:
        raise E3D2Error(f"{source}: the train split is empty")
    windows = SequenceWindows({"joints": sequences}, window=window, stride=stride)
    if len(windows) == 0:
        longest = max(len(sequence) for sequence in sequences)
        raise E3D2Error(f"{source}: no train sequence is as long as one window ({window} frames; the longest has {longest})")
    return windows


@torch.no_grad()
def evaluate_reconstruction(model: E3D2VQVAE, sequences: list[np.ndarray], progress: bool = True) -> dict[str, Any]:
    """Reconstruction error of whole sequences (each cropped to a multiple of 8 frames).

    `mpjpe_cm`: mean per-joint position error of the root-relative pose (what the VQ-VAE encodes),
    centimetres. `mpjpe_global_cm`: of the absolute joints when the root is integrated from the
    predicted velocities starting at the true first root (drift included). `codebook_usage`:
    distinct codes used per half, their share of the codebook and the code perplexity.
    """
    was_training = model.training
    model.eval()
    step = model.config.frames_per_code
    relative_errors, global_errors, upper_codes, lower_codes = [], [], [], []
    for joints in tqdm(sequences, desc="vqvae eval", disable=not progress, leave=False):
        joints = torch.from_numpy(np.asarray(joints[: len(joints) // step * step], dtype=np.float32)).to(model.device)[None]
        if joints.shape[1] == 0:
            continue
        upper, lower = model.encode(joints)
        decoded = model.decode(upper, lower, root_start=joints[:, 0, 0])
        relative_true = joints - joints[:, :, :1]
        relative_decoded = decoded - decoded[:, :, :1]
        relative_errors.append((relative_decoded - relative_true).norm(dim=-1).flatten().cpu())
        global_errors.append((decoded - joints).norm(dim=-1).flatten().cpu())
        upper_codes.append(upper.flatten().cpu())
        lower_codes.append(lower.flatten().cpu())
    model.train(was_training)
    if not relative_errors:
        return {"num_sequences": 0}

    def usage(codes: list[torch.Tensor]) -> dict[str, float]:
        counts = torch.bincount(torch.cat(codes), minlength=model.config.codebook_size).double()
        probabilities = counts / counts.sum()
        entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
        used = int((counts > 0).sum())
        return {"codes_used": used, "fraction_used": used / model.config.codebook_size, "perplexity": float(entropy.exp())}

    return {
        "num_sequences": len(relative_errors),
        "num_frames": int(sum(len(errors) for errors in relative_errors) // NUM_JOINTS),
        "mpjpe_cm": float(torch.cat(relative_errors).mean()) * 100.0,
        "mpjpe_global_cm": float(torch.cat(global_errors).mean()) * 100.0,
        "codebook_usage": {"upper": usage(upper_codes), "lower": usage(lower_codes)},
    }


def model_card(config: VQVAETrainingConfig, evaluation: dict[str, Any], counts: dict[str, int]) -> ModelCard:
    """README.md of the saved model: what it is, what it reached, the recipe values that made it."""
    heldout = evaluation.get("heldout", {})
    usage = heldout.get("codebook_usage", {})
    data = training_data(config.run_dir)
    measured = {"MPJPE root-relative (cm)": heldout.get("mpjpe_cm"), "MPJPE with integrated root (cm)": heldout.get("mpjpe_global_cm")}
    return build_model_card(
        title="E3D2 VQ-VAE (choreographic memory)",
        description=(
            "Bailando's upper/lower-body VQ-VAEs: 60 fps SMPL joints (root-relative) -> one code per 8 frames and body half, "
            f"{config.codebook_size} codes each, plus a root-velocity decoder so decoded dances travel. Trained on "
            f"{counts['train_sequences']} sequences ({counts['pose_windows']} windows of {config.window} frames), the root decoder "
            f"on {counts['root_windows']} windows."
        ),
        tags=["vq-vae", "choreographic-memory"],
        auto_class="AutoModel",
        loaded_as="vqvae",
        usage=[
            "upper_codes, lower_codes = vqvae.encode(joints)  # joints (B, T, 24, 3), T a multiple of 8",
            "joints = vqvae.decode(upper_codes, lower_codes, root_start=None)",
        ],
        tables=[
            CardTable(
                "Held-out reconstruction",
                note=f"The {heldout.get('num_sequences', 0)} held-out ({' + '.join(HELDOUT_SPLITS)}) sequences, whole.",
                columns=["MPJPE root-relative (cm)", "MPJPE with integrated root (cm)", "upper codes used", "lower codes used"],
                rows=[
                    [
                        heldout.get("mpjpe_cm"),
                        heldout.get("mpjpe_global_cm"),
                        usage.get("upper", {}).get("codes_used", 0),
                        usage.get("lower", {}).get("codes_used", 0),
                    ]
                ],
            )
        ],
        recipe=recipe_values(config, CARD_KEYS),
        recipe_section="vqvae",
        data=data,
        results=eval_results(measured, data, task=RECONSTRUCTION_TASK),
    )


def _run_phase(
    model: E3D2VQVAE, arguments: VQVAETrainingConfig, windows: SequenceWindows, root_velocity_only: bool
) -> VQVAETrainer:
    """Train one phase; only that phase's parameters get gradients. Resumes from its last checkpoint."""
    for parameter in model.pose_parameters():
        parameter.requires_grad_(not root_velocity_only)
    for parameter in model.root_velocity_parameters():
        parameter.requires_grad_(root_velocity_only)
    checkpoint = last_checkpoint(arguments)
    set_seed(arguments.seed)
    trainer = VQVAETrainer(
        model=model,
        args=arguments,
        train_dataset=windows,
        data_collator=collate_windows,
        root_velocity_only=root_velocity_only,
        lr_decay_epochs=arguments.lr_decay_epochs,
        lr_decay_factor=arguments.lr_decay_factor,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer


def train_vqvae(config: VQVAETrainingConfig) -> Path:
    """Train both phases on `config.data_path`, evaluate on val + test, write `config.output_dir` (RUN/vqvae); returns it."""
    sequences = load_joint_sequences(config.data_path)
    source = f"{config.data_path} (train split)"
    pose_windows = training_windows(sequences["train"], config.window, config.window_stride, source)
    root_windows = training_windows(sequences["train"], config.window, config.root_window_stride, source)
    model_config = config.model_config()
    is_main = config.process_index == 0
    root_phase = {
        name: getattr(config, name)
        for name in (
            "window", "window_stride", "root_window_stride", "root_per_device_train_batch_size", "root_learning_rate",
            "root_adam_beta1", "root_adam_beta2", "root_lr_decay_epochs",
        )
    }  # fmt: skip
    work_dir = prepare_work_dir(config, {**{name: getattr(model_config, name) for name in MODEL_FIELDS}, **root_phase})

    pose_model_dir = work_dir / "pose_model"
    if config.resume and (pose_model_dir / "config.json").is_file():
        logger.info("vqvae: pose phase already finished, loading %s", pose_model_dir)
        model = load_pretrained(E3D2VQVAE, pose_model_dir)
    else:
        set_seed(config.seed)
        model = E3D2VQVAE(model_config)
        pose_arguments = config.trainer_arguments(work_dir / "pose")
        trainer = _run_phase(model, pose_arguments, pose_windows, root_velocity_only=False)
        model = trainer.model
        trainer.accelerator.wait_for_everyone()
        if is_main:
            with atomic_directory(pose_model_dir) as tmp:
                model.save_pretrained(tmp)

    if config.root_num_train_epochs > 0:
        trainer = _run_phase(model, config.root_phase_arguments(work_dir / "root"), root_windows, root_velocity_only=True)
        model = trainer.model
        trainer.accelerator.wait_for_everyone()
    for parameter in model.parameters():
        parameter.requires_grad_(True)

    if is_main:
        heldout = [joints for split in HELDOUT_SPLITS for joints in sequences[split]]
        evaluation = {
            "heldout": evaluate_reconstruction(model, heldout),
            **{split: evaluate_reconstruction(model, sequences[split], progress=False) for split in HELDOUT_SPLITS},
            "heldout_splits": list(HELDOUT_SPLITS),
            "mpjpe_scope": "whole sequences cropped to a multiple of 8 frames; mpjpe_cm root-relative, mpjpe_global_cm with the integrated root",
        }
        counts = {"train_sequences": len(sequences["train"]), "pose_windows": len(pose_windows), "root_windows": len(root_windows)}
        final_dir = finish(
            config,
            model,
            model_card(config, evaluation, counts),
            {"eval.json": evaluation},
            logs={f"runs/{phase}": work_dir / phase / "runs" for phase in ("pose", "root")},
        )
        logger.info(
            "vqvae -> %s: held-out MPJPE %.2f cm (root-relative), %.2f cm (integrated root); codes used upper %d, lower %d",
            final_dir,
            evaluation["heldout"].get("mpjpe_cm", math.nan),
            evaluation["heldout"].get("mpjpe_global_cm", math.nan),
            evaluation["heldout"].get("codebook_usage", {}).get("upper", {}).get("codes_used", 0),
            evaluation["heldout"].get("codebook_usage", {}).get("lower", {}).get("codes_used", 0),
        )
    return Path(config.output_dir)


__all__ = [
    "VQVAETrainer",
    "VQVAETrainingConfig",
    "collate_windows",
    "evaluate_reconstruction",
    "load_joint_sequences",
    "load_prepared_dataset",
    "train_vqvae",
    "training_windows",
]
