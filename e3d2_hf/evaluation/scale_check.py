"""Paper-scale cost check (issue 17): every training stage at a recipe's real sizes, for a few optimiser steps.

    python scripts/scale_check.py recipes/e3d2.yaml [--device cpu|cuda] [--dtype fp32|bf16] [--steps N]

`--dtype` forces every stage's mixed precision (`TrainingArguments.bf16`, `mixed_precision`); without
it each stage runs as its recipe section says, and the projection "as the recipe runs" uses each
stage's own precision.

No dataset is needed. Each stage builds its model from the recipe's section exactly as the stage
does and trains it through the stage's own code on seeded synthetic inputs of the real shapes (the
recipe's windows and batch sizes): `VQVAETrainer` (pose phase, then the root-velocity phase),
`BCTrainer`, the demonstrations' `roll_out`, `RewardTrainer` (Bradley-Terry on ranked pairs) and
`PPOTrainer.ppo_step` for `ppo` and, when the recipe has the section, `ppo_beat`. One PPO step here
is one minibatch of episodes (`train_batch_size`, paper 512): its rollouts, their scoring
(log-probs, values, reference log-probs, the reward) and the update.

Per stage it records
- parameters of the model it trains and of the frozen ones it runs (sum of `numel`);
- FLOPs of one step, counted by `torch.utils.flop_counter.FlopCounterMode`: matrix products,
  convolutions and attention, forward and backward. Element-wise work and the optimiser are not
  counted. The count does not depend on the device;
- aten operators per step (views left out; on a GPU each is at least one kernel launch) and host
  synchronisations (`.item()`, `bool(tensor)` of a GPU tensor), which set the pace of small steps on a GPU;
- measured seconds per step: the mean of `steps` steps after `warmup` steps and the counted step;
- peak memory: `torch.cuda.max_memory_allocated` on a GPU; on a CPU the process's peak resident set
  (VmHWM, reset through /proc/self/clear_refs before the stage's counted step; it includes the
  Python and torch baseline and every model the stage holds);
- the steps the recipe asks for at AIST++ size (`AISTPP`, which says where its numbers come from);
- projected hours on each device of `DEVICE_PEAKS`: FLOPs x steps / (peak x utilisation); the
  host-overhead floor operators x steps x `seconds_per_op` (an assumption, not a measurement);
  the larger of the two; and measured seconds x steps on the device the check ran on.

Not counted: the pose-code encoding, PPO's held-out evaluations and Table 1 (inference on 40
pieces: small next to the stages), reward normalisation rollouts (off in the paper recipe), data
loading of real files.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from e3d2_hf.data.windows import window_index
from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.models.modeling_reward import E3D2RewardModel
from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
from e3d2_hf.recipe import load_recipe, parse_recipe
from e3d2_hf.rl.environment import MusicSegments, Piece
from e3d2_hf.rl.rewards import BeatAlignmentReward, LearnedReward
from e3d2_hf.trainers import bc, demos, reward_model, vqvae
from e3d2_hf.trainers.ppo_config import PPOConfig
from e3d2_hf.trainers.ppo_trainer import PPOTrainer
from e3d2_hf.utils import E3D2Error, atomic_file
from e3d2_hf.versions import environment_versions

logger = logging.getLogger(__name__)

STAGES = ("vqvae", "vqvae_root", "bc", "demos", "reward", "ppo", "ppo_beat")
SECTIONS = ("vqvae", "bc", "demos", "reward", "ppo", "ppo_beat")  # the recipe sections the stages read
DTYPES = ("fp32", "bf16")
RESULT_FILE = "scale_check.json"
TABLE_FILE = "scale_check.md"
MUSIC_DIM = 438
NUM_JOINTS = 24


@dataclass(frozen=True)
class DatasetSize:
    """The dataset the projection assumes: `train_sequences` training dances of `mean_frames` frames (60 fps) each."""

    train_sequences: int
    heldout_sequences: int
    mean_frames: int
    source: str

    def steps(self, frames_per_step: int) -> int:
        """Pose-code steps of the mean dance."""
        return self.mean_frames // frames_per_step


AISTPP = DatasetSize(
    train_sequences=952,
    heldout_sequences=40,
    mean_frames=808,
    source=(
        "952 training and 40 evaluation sequences: E3D2 paper (Experiments) and Bailando's crossmodal split after AIST++'s "
        "ignore list. Every dance assumed 101 pose-code steps long (808 frames, 13.5 s at 60 fps): the length at which "
        "30-step segments every 2 steps (ppo.segment_stride 2) give 952 x 36 = 34,272 segments, the paper's PPO buffer "
        "of 34,319 (Table 7) to 0.14%. Cross-check: AIST++'s site (google/aistplusplus_dataset) lists 10,108,015 frames "
        "with images of 1,408 sequences; read as 9 camera views of each motion frame, 798 frames per sequence."
    ),
)

# Dense (no sparsity) peak FLOP/s.
DEVICE_PEAKS = {
    "H100 SXM": {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12},
    "A100 SXM": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}
PEAK_SOURCES = (
    "NVIDIA datasheets, dense (half the sparsity figures): H100 SXM5 BF16 989 TFLOP/s, TF32 495, FP32 67; A100 SXM4 "
    "BF16 312, TF32 156, FP32 19.5. An fp32 stage runs as torch does by default: convolutions in TF32 (cuDNN may), "
    "matrix products in full FP32 (torch.backends.cuda.matmul.allow_tf32 is off)."
)
UTILISATION = 0.4
SECONDS_PER_OP = 10e-6


# ----------------------------------------------------------------------------------------------
# Counting and timing
# ----------------------------------------------------------------------------------------------
class OperatorCounter(TorchDispatchMode):
    """Counts aten operators that do work (views left out) and host synchronisations: scalar reads of accelerator tensors.

    A scalar read (`.item()`, `bool(tensor)`: `_local_scalar_dense`) of a CPU tensor (an optimiser's
    step count, say) makes the host wait for nothing, so only those of GPU tensors count; a CPU run counts none.
    """

    def __init__(self) -> None:
        super().__init__()
        self.operators = 0
        self.host_syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.operators += 1
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type != "cpu":
            self.host_syncs += 1
        return func(*args, **(kwargs or {}))


class _GlobalOnly:
    """Stands in for `FlopCounterMode`'s module tracker, so that every FLOP is counted once, under 'Global'.

    The tracker's hooks flatten each module's output with pytree, which fails on a `ModelOutput` with
    a field named like a dict method (`PolicyValueOutput.values`); the per-module breakdown is not needed.
    """

    parents = ("Global",)

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *args: Any) -> None:
        return None


def flop_counter() -> FlopCounterMode:
    """A `FlopCounterMode` that counts the total only (see `_GlobalOnly`)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    return counter


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> str:
    """Start a new peak; returns how the peak is measured."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "torch.cuda.max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "peak resident set of the process (VmHWM, reset before the stage's counted step)"
    except OSError:
        return "peak resident set of the process since it started (ru_maxrss; VmHWM could not be reset)"


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class StepMeter:
    """Step `warmup` is counted (FLOPs, operators), the `timed` steps after it are timed; peak memory over both.

    Call `begin(step)` / `end(step)` around each step 0 .. `total_steps - 1`; `part(name, fn)` wraps a
    piece of the step to count and time it on its own.
    """

    def __init__(self, warmup: int, timed: int, device: torch.device):
        if warmup < 0 or timed < 1:
            raise E3D2Error(f"scale check: warmup must not be negative and steps must be positive, got {warmup}, {timed}")
        self.warmup, self.timed, self.device = warmup, timed, device
        self.total_steps = warmup + 1 + timed
        self.flops = 0
        self.convolution_flops = 0
        self.operators = 0
        self.host_syncs = 0
        self.seconds_per_step = math.nan
        self.peak_memory_bytes = 0
        self.memory_measure = ""
        self.part_flops: dict[str, int] = {}
        self.part_seconds: dict[str, float] = {}
        self._step = -1
        self._counters: tuple[FlopCounterMode, OperatorCounter] | None = None
        self._started = 0.0

    @property
    def timing(self) -> bool:
        return self._step > self.warmup

    def begin(self, step: int) -> None:
        self._step = step
        if step == self.warmup:
            self.memory_measure = _reset_peak_memory(self.device)
            self._counters = (flop_counter(), OperatorCounter())
            for counter in self._counters:
                counter.__enter__()
        elif step == self.warmup + 1:
            _synchronize(self.device)
            self._started = time.perf_counter()

    def end(self, step: int) -> None:
        if step == self.warmup and self._counters is not None:
            flop_counter, operator_counter = self._counters
            operator_counter.__exit__(None, None, None)
            flop_counter.__exit__(None, None, None)
            self.flops = int(flop_counter.get_total_flops())
            counts = flop_counter.get_flop_counts().get("Global", {})
            self.convolution_flops = int(sum(flops for op, flops in counts.items() if "convolution" in str(op)))
            self.operators, self.host_syncs = operator_counter.operators, operator_counter.host_syncs
            self._counters = None
        elif step == self.total_steps - 1:
            _synchronize(self.device)
            self.seconds_per_step = (time.perf_counter() - self._started) / self.timed
            self.peak_memory_bytes = _peak_memory(self.device)

    def part(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function` counted (in the counted step) and timed (per timed step, mean) under `name`."""

        def measured(*args: Any, **kwargs: Any) -> Any:
            if self._counters is not None:
                counter = self._counters[0]
                before = counter.get_total_flops()
                result = function(*args, **kwargs)
                self.part_flops[name] = self.part_flops.get(name, 0) + int(counter.get_total_flops() - before)
                return result
            if not self.timing:
                return function(*args, **kwargs)
            _synchronize(self.device)
            started = time.perf_counter()
            result = function(*args, **kwargs)
            _synchronize(self.device)
            self.part_seconds[name] = self.part_seconds.get(name, 0.0) + (time.perf_counter() - started) / self.timed
            return result

        return measured

    def run(self, step: Callable[[int], Any]) -> None:
        """Run `step(index)` for every step, measured."""
        for index in range(self.total_steps):
            self.begin(index)
            step(index)
            self.end(index)


class MeterCallback(TrainerCallback):
    """Lets a `StepMeter` follow a `transformers.Trainer`'s optimiser steps."""

    def __init__(self, meter: StepMeter):
        self.meter = meter

    def on_step_begin(self, args, state, control, **kwargs):
        self.meter.begin(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.meter.end(state.global_step - 1)


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------
@dataclass
class StageCost:
    """What one stage costs: measured on a few steps, and projected to the steps the recipe asks for."""

    model: str
    step: str
    dtype: str
    parameters: int
    trainable_parameters: int
    frozen_parameters: int
    steps: int
    steps_rule: str
    meter: StepMeter

    def to_dict(self) -> dict[str, Any]:
        meter = self.meter
        return {
            "model": self.model,
            "step": self.step,
            "dtype": self.dtype,
            "parameters": self.parameters,
            "trainable_parameters": self.trainable_parameters,
            "frozen_parameters": self.frozen_parameters,
            "flops_per_step": meter.flops,
            "convolution_flops_per_step": meter.convolution_flops,
            "flops_per_step_parts": meter.part_flops,
            "operators_per_step": meter.operators,
            "host_syncs_per_step": meter.host_syncs,
            "seconds_per_step": meter.seconds_per_step,
            "seconds_per_step_parts": meter.part_seconds,
            "peak_memory_bytes": meter.peak_memory_bytes,
            "memory_measure": meter.memory_measure,
            "steps": self.steps,
            "steps_rule": self.steps_rule,
        }


def _count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad or not trainable_only)


@dataclass
class ScaleCheck:
    """One run of the check: the recipe, where it runs, and how long it measures."""

    recipe_path: str
    device: torch.device
    dtype: str | None
    warmup: int
    steps: int
    overrides: dict[str, list[str]] = field(default_factory=dict)
    dataset: DatasetSize = AISTPP
    seed: int = 0
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))

    def config(self, config_cls: type, section: str, *extra: str) -> Any:
        """The stage's config as the stage would parse it from the recipe on this device, its outputs in the work folder."""
        argv = [self.recipe_path, "--run_dir", str(self.work_dir / "run"), "--output_dir", str(self.work_dir / section)]
        argv += ["--use_cpu", str(self.device.type == "cpu").lower(), *extra]
        return parse_recipe(config_cls, section, [*argv, *self.overrides.get(section, [])])

    def trainer_config(self, config_cls: type, section: str) -> Any:
        """A Trainer stage's config for `StepMeter`'s steps: no checkpoints, logs or evaluation (`config` is the recipe's own)."""
        precision = [] if self.dtype is None else ["--bf16", str(self.dtype == "bf16").lower()]
        return self.config(
            config_cls, section,
            "--max_steps", str(self.warmup + 1 + self.steps), "--save_strategy", "no", "--eval_strategy", "no",
            "--report_to", "none", "--logging_steps", "1000000", "--disable_tqdm", "true", "--dataloader_num_workers", "0", *precision,
        )  # fmt: skip

    def mixed_precision(self, config: Any) -> str:
        """The `mixed_precision` of an Accelerate stage (demos, PPO): `--dtype`'s, else the recipe's."""
        return config.mixed_precision if self.dtype is None else ("bf16" if self.dtype == "bf16" else "no")

    def frames_per_step(self) -> int:
        """Frames per pose-code step of the recipe's VQ-VAE."""
        return self.config(vqvae.VQVAETrainingConfig, "vqvae").model_config().frames_per_code

    def meter(self) -> StepMeter:
        return StepMeter(self.warmup, self.steps, self.device)

    def rng(self, offset: int) -> np.random.Generator:
        return np.random.default_rng(self.seed + offset)

    @property
    def total_steps(self) -> int:
        return self.warmup + 1 + self.steps


def _trainer_configs(check: ScaleCheck, config_cls: type, section: str) -> tuple[Any, Any, int]:
    """A Trainer stage's config from the recipe, the one its measured steps run with, and its examples per optimiser step."""
    config = check.config(config_cls, section)
    return config, check.trainer_config(config_cls, section), config.per_device_train_batch_size * config.gradient_accumulation_steps


def _trainer_steps(trainer: Any, meter: StepMeter) -> None:
    trainer.remove_callback(PrinterCallback)  # the Trainer's log lines; the check prints its own
    trainer.add_callback(MeterCallback(meter))
    trainer.train()


def _update_steps(items: int, batch_size: int, epochs: float, config: Any) -> tuple[int, str]:
    """Optimiser steps a Trainer takes on `items` examples per epoch (its `max_steps` wins when set)."""
    if config.max_steps > 0:
        return config.max_steps, f"max_steps {config.max_steps}"
    per_epoch = math.ceil(math.ceil(items / batch_size) / config.gradient_accumulation_steps)
    return math.ceil(epochs * per_epoch), f"{epochs:g} epochs x ceil({items:,} / {batch_size})"


def _random_walk_joints(rng: np.random.Generator, count: int, frames: int) -> list[np.ndarray]:
    """Motion-like joints (metres): each joint a random walk around a standing height."""
    walks = np.cumsum(rng.normal(0.0, 0.01, (count, frames, NUM_JOINTS, 3)), axis=1) + [0.0, 0.9, 0.0]
    return list(walks.astype(np.float32))


def _code_sequences(rng: np.random.Generator, count: int, steps: int, codebook_size: int) -> dict[str, list[np.ndarray]]:
    return {
        "upper_codes": list(rng.integers(0, codebook_size, (count, steps))),
        "lower_codes": list(rng.integers(0, codebook_size, (count, steps))),
        "music_features_7p5": list(rng.standard_normal((count, steps, MUSIC_DIM), dtype=np.float32)),
    }


def check_vqvae(check: ScaleCheck, root_phase: bool) -> StageCost:
    """Stage 1a: a pose-phase (or root-velocity-phase) step of `VQVAETrainer` on windows of the recipe's length."""
    config = check.config(vqvae.VQVAETrainingConfig, "vqvae")
    measured = check.trainer_config(vqvae.VQVAETrainingConfig, "vqvae")
    arguments = measured.root_phase_arguments(check.work_dir / "vqvae_root") if root_phase else measured
    batch = arguments.per_device_train_batch_size * arguments.gradient_accumulation_steps
    windows = vqvae.training_windows(_random_walk_joints(check.rng(1), batch * check.total_steps, config.window), config.window, config.window, "synthetic")
    torch.manual_seed(check.seed)
    model = E3D2VQVAE(config.model_config())
    for parameter in model.pose_parameters():
        parameter.requires_grad_(not root_phase)
    for parameter in model.root_velocity_parameters():
        parameter.requires_grad_(root_phase)
    meter = check.meter()
    trainer = vqvae.VQVAETrainer(
        model=model, args=arguments, train_dataset=windows, data_collator=vqvae.collate_windows, root_velocity_only=root_phase,
        lr_decay_epochs=arguments.lr_decay_epochs, lr_decay_factor=arguments.lr_decay_factor,
    )  # fmt: skip
    _trainer_steps(trainer, meter)
    frames = [check.dataset.mean_frames] * check.dataset.train_sequences
    stride = config.root_window_stride if root_phase else config.window_stride
    epochs = config.root_num_train_epochs if root_phase else config.num_train_epochs
    windows_per_epoch = len(window_index(frames, config.window, stride))
    batch_size = config.root_per_device_train_batch_size if root_phase else config.per_device_train_batch_size
    steps, rule = _update_steps(windows_per_epoch, batch_size, epochs, config)
    if root_phase and config.max_steps <= 0 and config.root_num_train_epochs == 0:
        steps, rule = 0, "root_num_train_epochs 0: the phase is skipped"
    phase = "root-velocity phase, VQ-VAEs frozen" if root_phase else "pose phase"
    return StageCost(
        model="E3D2VQVAE (upper + lower + root-velocity decoder)",
        dtype=_trainer_precision(arguments),
        step=f"{arguments.per_device_train_batch_size} windows of {config.window} frames ({phase})",
        parameters=_count(model), trainable_parameters=_count(model, trainable_only=True), frozen_parameters=0,
        steps=steps, steps_rule=rule + f" windows of {config.window} frames every {stride}", meter=meter,
    )  # fmt: skip


def check_bc(check: ScaleCheck) -> StageCost:
    """Stage 1b: a `BCTrainer` step on windows of the recipe's length (CE(upper) + CE(lower))."""
    config, measured, batch = _trainer_configs(check, bc.BCTrainingConfig, "bc")
    model_config = config.model_config()
    sequences = _code_sequences(check.rng(2), batch * check.total_steps, config.window, model_config.codebook_size)
    windows = bc.code_windows(sequences, config.window, config.window, "synthetic")
    torch.manual_seed(check.seed)
    policy = E3D2PolicyModel(model_config)
    meter = check.meter()
    trainer = bc.BCTrainer(
        model=policy, args=measured, train_dataset=windows, data_collator=bc.collate_code_windows,
        lr_decay_epochs=config.lr_decay_epochs, lr_decay_factor=config.lr_decay_factor,
    )  # fmt: skip
    _trainer_steps(trainer, meter)
    frames_per_step = check.frames_per_step()
    lengths = np.full(check.dataset.train_sequences, check.dataset.steps(frames_per_step))
    index = window_index(lengths, config.window, config.window_stride)
    counts = {"all": len(index), "bailando": int(bc.bailando_start_mask(index, lengths, frames_per_step).sum())}
    steps, rule = _update_steps(counts[config.window_starts], config.per_device_train_batch_size, config.num_train_epochs, config)
    other = next(starts for starts in counts if starts != config.window_starts)
    return StageCost(
        model="E3D2PolicyModel",
        dtype=_trainer_precision(measured),
        step=f"{config.per_device_train_batch_size} windows of {config.window} steps",
        parameters=_count(policy), trainable_parameters=_count(policy, trainable_only=True), frozen_parameters=0,
        steps=steps,
        steps_rule=f"{rule} windows (window_starts {config.window_starts}; {other}: {counts[other]:,} windows per epoch)",
        meter=meter,
    )  # fmt: skip


def check_demos(check: ScaleCheck) -> StageCost:
    """Stage 2: one `roll_out` batch of eps-greedy dances as long as the assumed mean dance."""
    recipe_config = check.config(demos.DemosConfig, "demos")
    config = dataclasses.replace(recipe_config, mixed_precision=check.mixed_precision(recipe_config))
    bc_config = check.config(bc.BCTrainingConfig, "bc")
    torch.manual_seed(check.seed)
    policy = E3D2PolicyModel(bc_config.model_config()).to(check.device).eval()
    rng = check.rng(3)
    size = config.per_device_batch_size
    steps = check.dataset.steps(check.frames_per_step())
    steps = steps if config.max_steps is None else min(config.max_steps, steps)
    pieces = [
        Piece(f"synthetic_{index}", f"m{index}", int(rng.integers(policy.config.codebook_size)), int(rng.integers(policy.config.codebook_size)),
              rng.standard_normal((steps, MUSIC_DIM), dtype=np.float32))
        for index in range(size)
    ]  # fmt: skip
    items = tuple((index, 0) for index in range(size))
    meter = check.meter()
    roll_out = meter.part("generation", demos.roll_out)
    meter.run(lambda step: roll_out(policy, pieces, demos.RolloutBatch("train", config.noise_levels[0], items, step), config))
    per_split = {
        "train": check.dataset.train_sequences * config.demos_per_music,
        "eval_seen": check.dataset.train_sequences * config.eval_seen_demos_per_music,
        "eval_unseen": check.dataset.heldout_sequences * config.eval_unseen_demos_per_music,
    }
    batches = len(config.noise_levels) * sum(math.ceil(count / size) for count in per_split.values())
    rollouts = len(config.noise_levels) * sum(per_split.values())
    return StageCost(
        model="E3D2PolicyModel (generation, no gradients)",
        step=f"{size} eps-greedy dances of {steps} steps",
        dtype="fp32",  # roll_out does not autocast, whatever the accelerator's mixed_precision
        parameters=_count(policy), trainable_parameters=0, frozen_parameters=_count(policy),
        steps=batches,
        steps_rule=f"{rollouts:,} rollouts ({len(config.noise_levels)} noise levels x {per_split}) in batches of {size} per noise level and split",
        meter=meter,
    )  # fmt: skip


def _pair_snippets(rng: np.random.Generator, count: int, steps: int, codebook_size: int) -> list[dict[str, np.ndarray]]:
    pairs = []
    for _ in range(count):
        pair = {}
        for side in ("chosen", "rejected"):
            pair[f"{side}_music_features"] = rng.standard_normal((steps, MUSIC_DIM), dtype=np.float32)
            pair[f"{side}_upper_codes"] = rng.integers(0, codebook_size, steps)
            pair[f"{side}_lower_codes"] = rng.integers(0, codebook_size, steps)
        pairs.append(pair)
    return pairs


def check_reward(check: ScaleCheck) -> StageCost:
    """Stage 3: a `RewardTrainer` step (Bradley-Terry loss) on ranked pairs of the recipe's snippet length."""
    config, measured, batch = _trainer_configs(check, reward_model.RewardTrainingConfig, "reward")
    model_config = config.model_config()
    pairs = _pair_snippets(check.rng(4), batch * check.total_steps, model_config.context_steps, model_config.codebook_size)
    torch.manual_seed(check.seed)
    model = E3D2RewardModel(model_config)
    optimizer = None
    if config.use_adam:
        optimizer = (torch.optim.Adam, {"lr": config.learning_rate, "betas": (config.adam_beta1, config.adam_beta2), "eps": config.adam_epsilon})
    meter = check.meter()
    trainer = reward_model.RewardTrainer(
        model=model, args=measured, train_dataset=pairs, data_collator=reward_model.collate_pair_snippets, optimizer_cls_and_kwargs=optimizer
    )
    _trainer_steps(trainer, meter)
    steps, rule = _update_steps(config.num_train_pairs, config.per_device_train_batch_size, config.num_train_epochs, config)
    return StageCost(
        model="E3D2RewardModel",
        dtype=_trainer_precision(measured),
        step=f"{config.per_device_train_batch_size} ranked pairs of {model_config.context_steps} steps",
        parameters=_count(model), trainable_parameters=_count(model, trainable_only=True), frozen_parameters=0,
        steps=steps, steps_rule=f"{rule} pairs", meter=meter,
    )  # fmt: skip


def _precision(mixed_precision: str) -> str:
    """Accelerate's or TrainingArguments' precision name -> the dtype the projection uses."""
    return "fp32" if mixed_precision == "no" else mixed_precision


def _trainer_precision(arguments: Any) -> str:
    return "bf16" if arguments.bf16 else "fp16" if arguments.fp16 else "fp32"


def _music_segments(rng: np.random.Generator, count: int, steps: int, codebook_size: int, stride: int, frames_per_step: int) -> MusicSegments:
    """`count` synthetic training sequences of one segment each, with a music beat every 30 frames."""
    beats = np.zeros((count, frames_per_step * steps), dtype=np.float32)
    beats[:, ::30] = 1.0
    return MusicSegments(
        [f"synthetic_{index}" for index in range(count)],
        list(rng.integers(0, codebook_size, (count, steps))),
        list(rng.integers(0, codebook_size, (count, steps))),
        list(rng.standard_normal((count, steps, MUSIC_DIM), dtype=np.float32)),
        list(beats),
        segment_steps=steps,
        stride=stride,
        frames_per_step=frames_per_step,
    )


def check_ppo(check: ScaleCheck, section: str) -> StageCost:
    """Stage 4: `PPOTrainer.ppo_step` on a buffer of one minibatch: rollouts, scoring, rewards, the update(s)."""
    recipe_config = check.config(PPOConfig, section)
    config = dataclasses.replace(
        recipe_config,
        rollout_segments=recipe_config.train_batch_size,
        report_to="none",
        eval_steps=0,
        mixed_precision=check.mixed_precision(recipe_config),
    )
    bc_config = check.config(bc.BCTrainingConfig, "bc")
    reward_config = check.config(reward_model.RewardTrainingConfig, "reward")
    torch.manual_seed(check.seed)
    policy = E3D2PolicyModel(bc_config.model_config())
    learned = LearnedReward(E3D2RewardModel(reward_config.model_config()))
    frozen = [learned.reward_model]
    if config.reward == "learned":
        reward_function = learned
    else:
        beat_vqvae = E3D2VQVAE(check.config(vqvae.VQVAETrainingConfig, "vqvae").model_config())
        reward_function = BeatAlignmentReward(beat_vqvae, config.beat_reward, config.orientation_weight)
        frozen.append(beat_vqvae)
    segments = _music_segments(
        check.rng(5), config.train_batch_size, config.segment_steps, policy.config.codebook_size, config.segment_stride, check.frames_per_step()
    )
    trainer = PPOTrainer(config, policy, reward_function, segments, learned_reward=learned)
    meter = check.meter()
    for name, method in (("rollout generation", "generate_episodes"), ("scoring (policy, value, pi_BC)", "score_episodes"), ("update", "optimize")):
        setattr(trainer, method, meter.part(name, getattr(trainer, method)))
    learned.returns = meter.part("learned return", learned.returns)
    meter.run(trainer.ppo_step)

    lengths = [check.dataset.steps(check.frames_per_step())] * check.dataset.train_sequences
    buffer = recipe_config.rollout_segments or len(window_index(lengths, recipe_config.segment_steps, recipe_config.segment_stride))
    minibatches = math.ceil(buffer / recipe_config.train_batch_size)
    model = trainer.accelerator.unwrap_model(trainer.model)
    frozen_parameters = _count(trainer.ref_policy) + sum(_count(module) for module in frozen)
    reward_name = "the reward model" if config.reward == "learned" else "the beat reward (VQ-VAE decoding) + the reward model's return, logged"
    return StageCost(
        model="PolicyWithValueHead (+ frozen pi_BC, reward model" + (", VQ-VAE" if config.reward != "learned" else "") + ")",
        dtype=_precision(config.mixed_precision),  # the prepared model's scoring and update; rollouts and pi_BC stay fp32
        step=(
            f"{config.train_batch_size} episodes of {config.segment_steps - 1} actions: rollout, scoring, {reward_name}, "
            f"{config.num_ppo_epochs} update(s)"
        ),
        parameters=_count(model), trainable_parameters=_count(model, trainable_only=True), frozen_parameters=frozen_parameters,
        steps=recipe_config.max_steps * minibatches,
        steps_rule=(
            f"max_steps {recipe_config.max_steps} x ceil({buffer:,} episodes per buffer / {recipe_config.train_batch_size}); "
            f"buffer: {'rollout_segments' if recipe_config.rollout_segments else f'every {recipe_config.segment_steps}-step segment every {recipe_config.segment_stride} steps'}"
        ),
        meter=meter,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Projection, the whole check, its files
# ----------------------------------------------------------------------------------------------
def project(stage: dict[str, Any], utilisation: float, seconds_per_op: float) -> dict[str, Any]:
    """Hours of `stage`'s steps on each device of `DEVICE_PEAKS`: FLOP-bound, host-overhead floor and their max, per dtype
    and "as_run" (the stage's own precision; fp16 counts at the bf16 peak, the same tensor-core rate).

    fp32 is torch's default: convolutions at the TF32 peak, everything else at the FP32 peak.
    """
    floor_hours = stage["operators_per_step"] * stage["steps"] * seconds_per_op / 3600
    convolutions, others = stage["convolution_flops_per_step"], stage["flops_per_step"] - stage["convolution_flops_per_step"]
    projection = {}
    for device, peaks in DEVICE_PEAKS.items():
        projection[device] = {}
        seconds_per_step = {
            "bf16": stage["flops_per_step"] / (peaks["bf16"] * utilisation),
            "fp32": convolutions / (peaks["tf32"] * utilisation) + others / (peaks["fp32"] * utilisation),
        }
        for dtype in DTYPES:
            flop_hours = seconds_per_step[dtype] * stage["steps"] / 3600
            projection[device][dtype] = {"flop_hours": flop_hours, "floor_hours": floor_hours, "hours": max(flop_hours, floor_hours)}
        projection[device]["as_run"] = projection[device]["fp32" if stage["dtype"] == "fp32" else "bf16"]
    return projection


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def conditions(device: torch.device, dtype: str | None, warmup: int, steps: int) -> dict[str, Any]:
    """What the measured times depend on: device, threads, load, versions."""
    return {
        "device": device.type,
        "device_name": _device_name(device),
        "dtype": dtype or "as the recipe says, per stage",
        "autocast": "through each stage's own mixed-precision setting (TrainingArguments.bf16, mixed_precision)",
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cuda": torch.version.cuda,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "versions": environment_versions(),
    }


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def run_scale_check(
    recipe_path: str | os.PathLike,
    *,
    device: str | None = None,
    dtype: str | None = None,
    steps: int = 3,
    warmup: int = 1,
    only: list[str] | None = None,
    overrides: dict[str, list[str]] | None = None,
    utilisation: float = UTILISATION,
    seconds_per_op: float = SECONDS_PER_OP,
) -> dict[str, Any]:
    """Measure every stage of the recipe (or `only` those), then project; returns the JSON-able result."""
    recipe = load_recipe(recipe_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") or dtype not in (*DTYPES, None):
        raise E3D2Error(f"scale check: device must be cpu or cuda and dtype one of {DTYPES}, got {device!r}, {dtype!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise E3D2Error(f"scale check: --device cuda, but torch {torch.__version__} sees no CUDA device")
    if warmup < 0 or steps < 1:
        raise E3D2Error(f"scale check: warmup must not be negative and steps must be positive, got {warmup}, {steps}")
    if not 0 < utilisation <= 1 or seconds_per_op < 0:
        raise E3D2Error(f"scale check: utilisation must lie in (0, 1] and seconds_per_op must not be negative, got {utilisation}, {seconds_per_op}")
    stages = list(only or STAGES)
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise E3D2Error(f"scale check: unknown stage(s) {unknown}; the stages are {', '.join(STAGES)}")
    unknown = sorted(set(overrides or {}) - set(SECTIONS))
    if unknown:
        raise E3D2Error(f"scale check: --set names unknown section(s) {unknown}")
    skipped = {}
    if "ppo_beat" in stages and "ppo_beat" not in recipe:
        stages.remove("ppo_beat")
        skipped["ppo_beat"] = "the recipe has no ppo_beat section"
    torch_device = torch.device(device)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "recipe": str(recipe_path),
        "conditions": conditions(torch_device, dtype, warmup, steps),
        "overrides": overrides or {},
        "assumptions": {
            "dataset": dataclasses.asdict(AISTPP),
            "utilisation": utilisation,
            "seconds_per_op": seconds_per_op,
            "seconds_per_op_note": "host time per aten operator of an eager step (Python, dispatch, kernel launch): an assumption; "
            "a GPU waits on it when its kernels are shorter. Replace it with scripts/gpu_check.sh's measured seconds.",
            "device_peaks_flops": DEVICE_PEAKS,
            "device_peaks_source": PEAK_SOURCES,
            "flop_count": "torch.utils.flop_counter.FlopCounterMode on one step: matrix products, convolutions, attention, forward and "
            "backward; element-wise work and the optimiser not counted; partial last batches counted as full",
        },
        "skipped": skipped,
        "stages": {},
    }
    checks: dict[str, Callable[[ScaleCheck], StageCost]] = {
        "vqvae": lambda check: check_vqvae(check, root_phase=False),
        "vqvae_root": lambda check: check_vqvae(check, root_phase=True),
        "bc": check_bc,
        "demos": check_demos,
        "reward": check_reward,
        "ppo": lambda check: check_ppo(check, "ppo"),
        "ppo_beat": lambda check: check_ppo(check, "ppo_beat"),
    }
    with tempfile.TemporaryDirectory(prefix="e3d2_scale_check_") as work_dir, _quiet_transformers():
        check = ScaleCheck(str(recipe_path), torch_device, dtype, warmup, steps, overrides or {}, seed=int(recipe.get("seed") or 0), work_dir=Path(work_dir))
        for stage in stages:
            logger.info("scale check: %s, %d warm-up + 1 counted + %d timed step(s) on %s", stage, warmup, steps, device)
            cost = checks[stage](check).to_dict()
            cost["projection"] = project(cost, utilisation, seconds_per_op)
            cost["measured_hours"] = cost["seconds_per_step"] * cost["steps"] / 3600
            result["stages"][stage] = cost
            logger.info(
                "scale check: %s: %.3g GFLOP, %d ops, %.3g s per step, peak memory %.2f GB; %s steps", stage, cost["flops_per_step"] / 1e9,
                cost["operators_per_step"], cost["seconds_per_step"], cost["peak_memory_bytes"] / 1e9, f"{cost['steps']:,}",
            )  # fmt: skip
            gc.collect()
            if torch_device.type == "cuda":
                torch.cuda.empty_cache()
    result["conditions"]["load_average_at_end"] = list(os.getloadavg())
    result["conditions"]["wall_seconds"] = time.perf_counter() - started
    result["models"] = _model_parameters(result["stages"])
    result["totals"] = _totals(result["stages"])
    return result


def _model_parameters(stages: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Parameters of each model class, from the stages that trained it."""
    sources = {"vqvae": "vqvae", "vqvae_root": "vqvae", "bc": "policy", "demos": "policy", "reward": "reward_model", "ppo": "policy_with_value"}
    return {model: stages[stage]["parameters"] for stage, model in sources.items() if stage in stages}


def _totals(stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"measured_hours": sum(stage["measured_hours"] for stage in stages.values()), "projection": {}}
    for device in DEVICE_PEAKS:
        totals["projection"][device] = {
            dtype: {key: sum(stage["projection"][device][dtype][key] for stage in stages.values()) for key in ("flop_hours", "floor_hours", "hours")}
            for dtype in (*DTYPES, "as_run")
        }
    return totals


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _count_text(count: int) -> str:
    return f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count:,}"


def markdown_table(result: dict[str, Any]) -> str:
    """scale_check.md: the cost table, the projection and what they assume."""
    conditions, assumptions = result["conditions"], result["assumptions"]
    where = f"{conditions['device_name']} ({conditions['device']}, {conditions['dtype']}, {conditions['torch_threads']} torch threads)"
    lines = [
        f"# Scale check of {result['recipe']}",
        "",
        f"Measured on {where}, {conditions['warmup_steps']} warm-up + 1 counted + {conditions['timed_steps']} timed step(s) per stage; "
        f"load average {conditions['load_average_at_start'][0]:.1f} at the start, {conditions['load_average_at_end'][0]:.1f} at the end "
        "(other processes on the machine inflate the times).",
        "",
        "| stage | one step | dtype | parameters (trained / frozen) | GFLOP per step | aten ops per step | host syncs | s per step | peak memory GB | steps at AIST++ size | hours at the measured speed |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    def syncs(stage: dict[str, Any]) -> str:
        return "n/a (CPU)" if conditions["device"] == "cpu" else f"{stage['host_syncs_per_step']:,}"

    for name, stage in result["stages"].items():
        lines.append(
            f"| {name} | {stage['step']} | {stage['dtype']} | {_count_text(stage['trainable_parameters'])} / {_count_text(stage['frozen_parameters'])} "
            f"| {_number(stage['flops_per_step'] / 1e9)} | {stage['operators_per_step']:,} | {syncs(stage)} "
            f"| {_number(stage['seconds_per_step'])} | {stage['peak_memory_bytes'] / 1e9:.2f} | {stage['steps']:,} | {_number(stage['measured_hours'])} |"
        )
    totals = result["totals"]
    lines += [f"| **total** | | | | | | | | | | **{_number(totals['measured_hours'])}** |", ""]
    columns = [(device, dtype) for device in DEVICE_PEAKS for dtype in DTYPES]
    names = " | ".join(f"{device} {dtype}" for device, dtype in columns)
    lines += [
        f"Projected hours on one GPU. FLOP-bound: FLOPs x steps / ({assumptions['utilisation']:.0%} of the dense peak). Host floor: "
        f"aten ops x steps x {assumptions['seconds_per_op'] * 1e6:g} us of host time per op (assumed). Projected: the larger of the two.",
        "",
        f"| stage | FLOP-bound: {names} | host floor | projected: {names} |",
        "|---|" + "---:|" * (2 * len(columns) + 1),
    ]

    def cells(projection: dict[str, Any]) -> str:
        flop_bound = [_number(projection[device][dtype]["flop_hours"]) for device, dtype in columns]
        projected = [_number(projection[device][dtype]["hours"]) for device, dtype in columns]
        floor = _number(projection[columns[0][0]][columns[0][1]]["floor_hours"])
        return " | ".join([*flop_bound, floor, *projected])

    for name, stage in result["stages"].items():
        lines.append(f"| {name} | {cells(stage['projection'])} |")
    lines.append(f"| **total** | {cells(totals['projection'])} |")
    as_run = ", ".join(f"{_number(totals['projection'][device]['as_run']['hours'])} h on one {device}" for device in DEVICE_PEAKS)
    lines += ["", f"**Projected, each stage in its own precision (the dtype column): {as_run}.**"]
    lines += [
        "",
        f"Steps per stage: " + "; ".join(f"{name}: {stage['steps_rule']}" for name, stage in result["stages"].items()) + ".",
        "",
        f"Dataset: {assumptions['dataset']['source']}",
        "",
        f"Peaks: {assumptions['device_peaks_source']}",
        "",
        f"FLOPs: {assumptions['flop_count']}. Host-overhead floor: {assumptions['seconds_per_op_note']}",
        "",
        f"Memory: {next(iter(result['stages'].values()))['memory_measure'] if result['stages'] else '-'}.",
    ]
    if result["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{name} ({why})" for name, why in result["skipped"].items()) + "."]
    return "\n".join(lines) + "\n"


def write_scale_check(result: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """scale_check.json and scale_check.md in `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    paths = out_dir / RESULT_FILE, out_dir / TABLE_FILE
    with atomic_file(paths[0], "w") as handle:
        handle.write(json.dumps(result, indent=2) + "\n")
    with atomic_file(paths[1], "w") as handle:
        handle.write(markdown_table(result))
    return paths


__all__ = [
    "AISTPP",
    "DEVICE_PEAKS",
    "STAGES",
    "DatasetSize",
    "OperatorCounter",
    "StepMeter",
    "markdown_table",
    "project",
    "run_scale_check",
    "write_scale_check",
]
