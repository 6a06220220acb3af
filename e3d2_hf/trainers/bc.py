"""Stage 1b: behaviour cloning, the GPT policy trained to predict the next pose codes of the dataset's dances.

Bailando's recipe (lisiyao21/Bailando `configs/cc_motion_gpt.yaml`, ../shared/docs/bailando-reference.md),
which E3D2 keeps for its behaviour-cloning policy (paper appendix, "Behavior Cloning"):

- Data: the VQ-VAE's pose codes of every training dance (`e3d2_hf.trainers.pose_codes`, encoded once and
  cached in `RUN/pose_codes`), cut into windows of 30 steps (Bailando: 240 frames) every step
  (Bailando: every 8 frames). A window gives inputs steps 0..28 with music frames 1..29 and targets
  steps 1..29 (`dance_to_inputs`); loss CE(upper) + CE(lower), the model's own.
- Where windows start (`window_starts`): ours ("all", the default) start a window at every
  `window_stride`-th step of every dance. Bailando's loader does not: its GPT stage reads the
  7.5 fps music (`external_wav`, rate 8) and `utils/functional.py::load_data_aist` walks dance frames
  `for i in range(0, len(music), move)` (move 8) but stops at the length of the 7.5 fps music, so a
  window starts at step k = i/8 only while 8k < the dance's steps: in the first 1/8 of each dance
  (and only when the whole window fits). A 101-step dance (AIST++'s mean) gives 13 windows there
  and 72 here, so Bailando's 400 epochs are ~5.5x fewer optimiser steps, all on the first ~1/8 + 30
  steps of each dance. `window_starts: bailando` reproduces that rule (`bailando_window_starts`).
- Model: 12 blocks (6 base + 6 head), 12 heads, width 768, dropout 0.1, context 29 steps.
- Optimiser: Adam, lr 3e-4, betas (0.5, 0.999), no weight decay, no gradient clipping, batch 32;
  MultiStepLR x0.1 at epochs 250 and 400 (`lr_decay_epochs`). Bailando's config runs 500 epochs, but
  the checkpoint it evaluates and fine-tunes with RL is epoch 400 (`testing.ckpt_epoch` and
  `actor_critic.yaml: init_weight .../epoch_400.pt`), so the paper recipe stops at 400 epochs.

Training runs through `transformers.Trainer` (tensorboard logs, checkpoints) in a hidden work folder
`RUN/.bc.training` (`e3d2_hf.trainers.base`, shared with the VQ-VAE); with `resume` (default) a rerun
continues from its last checkpoint, and a rerun with other model sizes, window or VQ-VAE is refused. A non-finite loss stops training with
`E3D2Error`, keeping the checkpoints.

Diagnostics (paper Table 4): next-code accuracy with teacher forcing on windows of the training
dances ("seen" music) and of the held-out val + test dances ("unseen" music): per half, "complete
pose" (both halves right) and "partial pose" (at least one right). The windows are the training
windows' shape, one every `window - 1` steps, so every step after a sequence's first is predicted
exactly once (the tail shorter than a window is left out).

At the end `RUN/bc` (= `output_dir`) appears complete: the policy's `save_pretrained` folder with its
VQ-VAE in `RUN/bc/vqvae` (so `AutoModelForCausalLM.from_pretrained("RUN/bc")` can dance),
`diagnostics.json`, a model card README.md with the recipe values and the diagnostics,
`training_config.json` and the tensorboard logs under `runs/`.
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
from torch.utils.data import Subset
from tqdm.auto import tqdm
from transformers import set_seed
from transformers.trainer_utils import IntervalStrategy

from e3d2_hf.data.prepare import load_prepared
from e3d2_hf.data.windows import SequenceWindows
from e3d2_hf.models.configuration_policy import PolicyConfig
from e3d2_hf.models.modeling_policy import E3D2PolicyModel, dance_to_inputs
from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
from e3d2_hf.models.weights import load_pretrained
from e3d2_hf.recipe import RunLayout
from e3d2_hf.trainers.base import BAILANDO_CARD_KEYS, BailandoTrainingArguments, StepDecayTrainer, finish, last_checkpoint, prepare_work_dir
from e3d2_hf.trainers.model_card import CardTable, build_model_card, eval_results, recipe_values, training_data
from e3d2_hf.data.windows import code_sequences
from e3d2_hf.trainers.pose_codes import check_codebooks_initialised, load_or_encode_codes, vqvae_fingerprint
from e3d2_hf.utils import E3D2Error

logger = logging.getLogger(__name__)

SEEN_SPLITS = ("train",)
WINDOW_STARTS = ("all", "bailando")
UNSEEN_SPLITS = ("val", "test")
DIAGNOSTICS_FILE = "diagnostics.json"
# E3D2 paper Table 4: the BC policy's next-pose-code accuracy on AIST++ (percent).
PAPER_TABLE_4 = {"seen": {"complete": 54.69, "partial": 73.44}, "unseen": {"complete": 2.32, "partial": 7.52}}
MODEL_FIELDS = (
    "codebook_size",
    "music_dim",
    "hidden_size",
    "num_hidden_layers",
    "num_base_layers",
    "num_attention_heads",
    "intermediate_size",
    "context_length",
    "embedding_dropout",
    "residual_dropout",
    "attention_dropout",
)


@dataclass
class BCTrainingConfig(BailandoTrainingArguments):
    """The `bc:` section of a recipe: policy sizes, windows, schedule and `TrainingArguments`.

    Defaults are Bailando's (paper scale); the optimiser and the defaults shared with the VQ-VAE are
    `BailandoTrainingArguments`'. `window` is in pose-code steps (8 frames each) and gives
    `window - 1` input tokens, which must fit the policy's `context_length`.
    """

    stage = "bc"

    vqvae_path: str | None = field(default=None, metadata={"help": "Trained VQ-VAE folder (default: <run_dir>/vqvae)."})
    codes_path: str | None = field(default=None, metadata={"help": "Pose-code cache (default: <run_dir>/pose_codes)."})
    window: int = field(default=30, metadata={"help": "Pose-code steps per training window (inputs window-1, targets window-1)."})
    window_stride: int = field(default=1, metadata={"help": "Steps between training window starts."})
    window_starts: str = field(
        default="all",
        metadata={"help": "'all': windows start every window_stride steps of each dance; 'bailando': only in its first 1/8, as Bailando's loader."},
    )
    codebook_size: int = field(default=512, metadata={"help": "Codes per body half; must equal the VQ-VAE's."})
    music_dim: int = field(default=438, metadata={"help": "Width of the 7.5 fps music features."})
    hidden_size: int = field(default=768, metadata={"help": "Transformer width."})
    num_hidden_layers: int = field(default=12, metadata={"help": "Transformer blocks (base + head)."})
    num_base_layers: int = field(default=6, metadata={"help": "Base blocks (shared with the PPO value network)."})
    num_attention_heads: int = field(default=12, metadata={"help": "Attention heads per block."})
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width (default 4 x hidden_size)."})
    context_length: int = field(default=29, metadata={"help": "Steps the policy attends to (its sliding window)."})
    embedding_dropout: float = field(default=0.1, metadata={"help": "Dropout on the summed token embeddings."})
    residual_dropout: float = field(default=0.1, metadata={"help": "Dropout on attention and MLP outputs."})
    attention_dropout: float = field(default=0.1, metadata={"help": "Dropout on attention weights."})
    lr_decay_epochs: list[int] = field(
        default_factory=lambda: [250, 400], metadata={"help": "Epochs at which the learning rate is multiplied by lr_decay_factor."}
    )

    # Bailando's schedule, stopped at the epoch E3D2 fine-tunes (see the module docstring).
    learning_rate: float = 3e-4
    num_train_epochs: float = 400.0
    # The targets, for the loss on the held-out windows when eval_strategy is "epoch" or "steps".
    label_names: list[str] | None = field(default_factory=lambda: ["upper_labels", "lower_labels"])

    def __post_init__(self):
        run = RunLayout(self.run_dir)
        self.vqvae_path = self.vqvae_path or str(run.vqvae)
        self.codes_path = self.codes_path or str(run.pose_codes)
        if self.window < 2 or self.window_stride < 1:
            raise E3D2Error(f"bc: window must be at least 2 steps and window_stride positive, got {self.window}, {self.window_stride}")
        if self.window_starts not in WINDOW_STARTS:
            raise E3D2Error(f"bc: window_starts must be one of {WINDOW_STARTS}, got {self.window_starts!r}")
        if self.window - 1 > self.context_length:
            raise E3D2Error(
                f"bc: a window of {self.window} steps gives {self.window - 1} input tokens, more than the policy's "
                f"context of {self.context_length} steps (lower window or raise context_length)"
            )
        super().__post_init__()

    def model_config(self) -> PolicyConfig:
        """The policy these settings describe (raises `E3D2Error` on inconsistent sizes)."""
        return PolicyConfig(**{name: getattr(self, name) for name in MODEL_FIELDS})


# Recipe values shown in the model card.
CARD_KEYS = ("window", "window_stride", "window_starts", *MODEL_FIELDS, *BAILANDO_CARD_KEYS)


def collate_code_windows(features: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Windows in timeline form (codes and music of steps 0..W-1) -> the policy's arguments (`dance_to_inputs`)."""
    upper = torch.from_numpy(np.stack([feature["upper_codes"] for feature in features]))
    lower = torch.from_numpy(np.stack([feature["lower_codes"] for feature in features]))
    music = torch.from_numpy(np.stack([feature["music_features_7p5"] for feature in features]))
    return dance_to_inputs(upper, lower, music)


class BCTrainer(StepDecayTrainer):
    """`Trainer` whose loss is the policy's CE(upper) + CE(lower), with a step learning-rate decay."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        self.check_finite(loss, "bc: non-finite loss")
        return (loss, outputs) if return_outputs else loss


def load_vqvae(path: str | Path, codebook_size: int) -> E3D2VQVAE:
    """The trained VQ-VAE at `path`, checked against the policy's codebook size; `E3D2Error` if missing or mismatched."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise E3D2Error(f"{path}: no VQ-VAE here (config.json missing); train stage 1a first (scripts/vqvae.py)")
    vqvae = load_pretrained(E3D2VQVAE, path)
    if vqvae.config.codebook_size != codebook_size:
        raise E3D2Error(
            f"{path}: the VQ-VAE has {vqvae.config.codebook_size} codes per body half, the policy's codebook_size is {codebook_size}"
        )
    check_codebooks_initialised(vqvae, str(path))
    return vqvae.eval()


def check_prepared_data(data_path: str | Path, music_dim: int) -> None:
    """Fail before any encoding or training: empty splits, music features of the wrong width."""
    prepared = load_prepared(data_path)
    for group in (SEEN_SPLITS, UNSEEN_SPLITS):
        if sum(len(prepared[split]) for split in group) == 0:
            raise E3D2Error(f"{data_path}: the {' + '.join(group)} split{'s are' if len(group) > 1 else ' is'} empty")
    for split, rows in prepared.items():
        width = rows.features["music_features_7p5"].shape[-1]
        if width != music_dim:
            raise E3D2Error(f"{data_path}: split '{split}' has music features of width {width}, the policy expects {music_dim}")


def gather_code_sequences(codes: Any, splits: tuple[str, ...], source: str) -> dict[str, list[np.ndarray]]:
    """Per-step columns (`code_sequences`) of every sequence of `splits`; `E3D2Error` if they hold none."""
    sequences: dict[str, list[np.ndarray]] = {"upper_codes": [], "lower_codes": [], "music_features_7p5": []}
    for split in splits:
        for column, arrays in code_sequences(codes[split]).items():
            sequences[column].extend(arrays)
    if not sequences["upper_codes"]:
        raise E3D2Error(f"{source}: the {' + '.join(splits)} split(s) hold no sequence")
    return sequences


def code_windows(sequences: dict[str, list[np.ndarray]], window: int, stride: int, description: str) -> SequenceWindows:
    """Windows of `window` steps every `stride` steps; `E3D2Error` when no sequence is as long as one window."""
    windows = SequenceWindows(sequences, window=window, stride=stride)
    if len(windows) == 0:
        longest = max(len(codes) for codes in sequences["upper_codes"])
        raise E3D2Error(f"{description}: no sequence is as long as one window ({window} steps = {8 * window} frames; the longest has {longest} steps)")
    return windows


def bailando_window_starts(windows: SequenceWindows, frames_per_step: int) -> Subset:
    """The windows Bailando's GPT loader cuts: those starting at a step k with `frames_per_step * k` < the dance's steps.

    Its loop runs over dance frames (8 per step) up to the length of the 7.5 fps music (one row per
    step), so starts cover the first 1/frames_per_step of each dance (module docstring).
    """
    steps = np.array([len(music) for music in windows.sequences["music_features_7p5"]], dtype=np.int64)
    return Subset(windows, np.flatnonzero(bailando_start_mask(windows.index, steps, frames_per_step)).tolist())


def bailando_start_mask(index: np.ndarray, steps: np.ndarray, frames_per_step: int) -> np.ndarray:
    """Which rows `[sequence, start]` of a window index Bailando's loader keeps, for dances of `steps` steps."""
    return frames_per_step * index[:, 1] < steps[index[:, 0]]


@torch.no_grad()
def next_code_accuracy(policy: E3D2PolicyModel, windows: SequenceWindows, batch_size: int, progress: bool = True) -> dict[str, float | int]:
    """Teacher-forced next-code accuracy over `windows`: upper, lower, complete (both) and partial (at least one)."""
    was_training = policy.training
    policy.eval()
    hits = torch.zeros(4, dtype=torch.long)
    predictions = 0
    starts = range(0, len(windows), batch_size)
    for start in tqdm(starts, desc="next-code accuracy", disable=not progress, leave=False):
        batch = collate_code_windows([windows[index] for index in range(start, min(start + batch_size, len(windows)))])
        batch = {name: tensor.to(policy.device) for name, tensor in batch.items()}
        upper_labels, lower_labels = batch.pop("upper_labels"), batch.pop("lower_labels")
        output = policy(**batch)
        upper_right = output.upper_logits.argmax(-1) == upper_labels
        lower_right = output.lower_logits.argmax(-1) == lower_labels
        hits += torch.stack([upper_right.sum(), lower_right.sum(), (upper_right & lower_right).sum(), (upper_right | lower_right).sum()]).cpu()
        predictions += upper_right.numel()
    policy.train(was_training)
    accuracy = (hits.double() / max(predictions, 1)).tolist()
    return {
        "upper": accuracy[0],
        "lower": accuracy[1],
        "complete": accuracy[2],
        "partial": accuracy[3],
        "windows": len(windows),
        "predictions": predictions,
    }


def model_card(config: BCTrainingConfig, diagnostics: dict[str, Any], counts: dict[str, Any]) -> ModelCard:
    """README.md of the saved policy: what it is, what it reached, the recipe values that made it."""

    def row(music: str) -> list[Any]:
        values, paper = diagnostics[music], PAPER_TABLE_4[music]
        measured = [100 * values[key] for key in ("upper", "lower", "complete", "partial")]
        return [music, *measured, paper["complete"], paper["partial"]]

    def accuracy(music: str) -> dict[str, float]:
        return {f"next-pose-code accuracy, {pose} pose, {music} music": diagnostics[music][pose] for pose in ("complete", "partial")}

    data = training_data(config.run_dir)
    return build_model_card(
        title="E3D2 behaviour-cloning policy (Bailando's cross-conditional GPT)",
        description=(
            "A GPT over VQ-VAE pose codes that dances to music: at each 8-frame step it reads the music (438-d features at "
            "7.5 fps) and both body halves' codes so far, and predicts the next upper- and lower-body codes. Its VQ-VAE is in "
            "`vqvae/`, so this folder alone turns music into 60 fps SMPL joints. Trained by behaviour cloning (teacher-forced "
            f"CE(upper) + CE(lower)) on {counts['train_sequences']} training dances: {counts['train_windows']} windows of "
            f"{config.window} steps per epoch, {counts['epochs']:g} epochs, {counts['steps']} optimiser steps in {counts['seconds']:.0f} s."
        ),
        tags=["bailando", "behaviour-cloning"],
        auto_class="AutoModelForCausalLM",
        loaded_as="policy",
        imports=["from e3d2_hf.inference import music_to_joints"],
        usage=["joints = music_to_joints(policy, music_features_7p5, first_codes=(upper, lower))  # (8 * steps, 24, 3) at 60 fps"],
        usage_note="or from the command line: `e3d2 dance --model PATH --music song.mp3 --out dances/`.",
        tables=[
            CardTable(
                "Next-pose-code accuracy (teacher forcing, %)",
                note=(
                    f"Seen: windows of the {' + '.join(SEEN_SPLITS)} dances; unseen: windows of the held-out "
                    f"{' + '.join(UNSEEN_SPLITS)} dances. Complete pose: both halves right; partial pose: at least one. "
                    "Paper: E3D2 Table 4 (AIST++, full-size model)."
                ),
                columns=["music", "upper", "lower", "complete pose", "partial pose", "paper complete", "paper partial"],
                rows=[row("seen"), row("unseen")],
            )
        ],
        recipe=recipe_values(config, CARD_KEYS),
        recipe_section="bc",
        data=data,
        results=eval_results(accuracy("unseen"), data) + eval_results(accuracy("seen"), data, split="+".join(SEEN_SPLITS)),
    )


def train_bc(config: BCTrainingConfig) -> Path:
    """Behaviour cloning on the run's pose codes, diagnostics on seen/unseen music, write `config.output_dir` (RUN/bc); returns it."""
    model_config = config.model_config()
    vqvae = load_vqvae(config.vqvae_path, config.codebook_size)
    check_prepared_data(config.data_path, config.music_dim)
    with config.main_process_first(desc="pose codes"):
        codes = load_or_encode_codes(
            config.run_dir, vqvae.to(config.device), data_path=config.data_path, cache_path=config.codes_path, progress=not config.disable_tqdm
        )
    seen = gather_code_sequences(codes, SEEN_SPLITS, config.codes_path)
    unseen = gather_code_sequences(codes, UNSEEN_SPLITS, config.codes_path)
    seen_source, unseen_source = (f"{config.codes_path} ({' + '.join(splits)})" for splits in (SEEN_SPLITS, UNSEEN_SPLITS))
    train_windows = code_windows(seen, config.window, config.window_stride, seen_source)
    if config.window_starts == "bailando":
        train_windows = bailando_window_starts(train_windows, vqvae.config.frames_per_code)
    heldout_windows = code_windows(unseen, config.window, config.window_stride, unseen_source)
    diagnostic_stride = config.window - 1
    logger.info("bc: %d training windows of %d steps from %d dances", len(train_windows), config.window, len(codes["train"]))

    is_main = config.process_index == 0
    settings = {
        **{f"policy.{name}": getattr(model_config, name) for name in MODEL_FIELDS},
        "vqvae": vqvae_fingerprint(vqvae),
        "window": config.window,
    }
    work_dir = prepare_work_dir(config, settings)

    set_seed(config.seed)
    policy = E3D2PolicyModel(model_config)
    arguments = config.trainer_arguments(work_dir)
    checkpoint = last_checkpoint(arguments)
    trainer = BCTrainer(
        model=policy,
        args=arguments,
        train_dataset=train_windows,
        eval_dataset=heldout_windows if arguments.eval_strategy != IntervalStrategy.NO else None,
        data_collator=collate_code_windows,
        lr_decay_epochs=config.lr_decay_epochs,
        lr_decay_factor=config.lr_decay_factor,
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.accelerator.wait_for_everyone()
    policy = trainer.accelerator.unwrap_model(trainer.model)

    if is_main:
        progress = not config.disable_tqdm
        batch_size = config.per_device_eval_batch_size
        diagnostics = {
            "seen": next_code_accuracy(policy, code_windows(seen, config.window, diagnostic_stride, seen_source), batch_size, progress),
            "unseen": next_code_accuracy(policy, code_windows(unseen, config.window, diagnostic_stride, unseen_source), batch_size, progress),
            "seen_splits": list(SEEN_SPLITS),
            "unseen_splits": list(UNSEEN_SPLITS),
            "window": config.window,
            "window_stride": diagnostic_stride,
            "scope": "teacher-forced next-code accuracy (fraction) on windows of the training window's shape; "
            "every step after a sequence's first predicted once, tails shorter than a window left out",
            "paper_table_4_percent": PAPER_TABLE_4,
        }
        counts = {
            "train_sequences": len(codes["train"]),
            "train_windows": len(train_windows),
            "epochs": config.num_train_epochs,
            "steps": trainer.state.global_step,
            "seconds": result.metrics.get("train_runtime", math.nan),
        }
        policy.attach_vqvae(vqvae.eval())
        final_dir = finish(config, policy, model_card(config, diagnostics, counts), {DIAGNOSTICS_FILE: diagnostics})
        logger.info(
            "bc -> %s: next-code accuracy seen complete %.2f%% partial %.2f%%, unseen complete %.2f%% partial %.2f%%",
            final_dir,
            100 * diagnostics["seen"]["complete"],
            100 * diagnostics["seen"]["partial"],
            100 * diagnostics["unseen"]["complete"],
            100 * diagnostics["unseen"]["partial"],
        )
    return Path(config.output_dir)


__all__ = [
    "BCTrainer",
    "BCTrainingConfig",
    "WINDOW_STARTS",
    "bailando_start_mask",
    "bailando_window_starts",
    "code_windows",
    "collate_code_windows",
    "gather_code_sequences",
    "load_vqvae",
    "model_card",
    "next_code_accuracy",
    "train_bc",
]
