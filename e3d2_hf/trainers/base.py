"""What the `transformers.Trainer` stages (VQ-VAE, behaviour cloning, reward model) share.

Each stage is a `TrainingArguments` subclass (its recipe section) and a `Trainer` subclass, run from a
run folder, and they work alike:

- `StageTrainingArguments`: this project's `TrainingArguments` defaults (seed 0, a constant learning
  rate, tensorboard logs every 50 steps, batches of 32, our collators' columns kept) and `output_dir`
  = the stage's folder of the run (`RunLayout`).
- `BailandoTrainingArguments`: E3D2's stage 1 is Bailando, so the VQ-VAE and the behaviour-cloning
  policy also share Bailando's optimiser (Adam, betas (0.5, 0.999), no weight decay, no gradient
  clipping), its step learning-rate decay (`StepDecayTrainer`), a checkpoint every epoch, and
  resuming an interrupted run (`prepare_work_dir`, `last_checkpoint`).
- The Trainer works in a hidden sibling of `output_dir` (`work_dir`); `finish` then writes
  `output_dir` at once, so a stage folder that exists is complete: the model, its results, the
  logs, the model card and the recipe.
- `push_to_hub` publishes that finished folder (`e3d2_hf.trainers.publishing`), never the work
  folder's checkpoints: the Trainer gets a copy of the arguments with it off (`trainer_arguments`),
  and a push that cannot work is refused before training (no token, offline, a bad repository id).
- Safe to stop and resume: a work folder records the settings its checkpoints fit (a resume with
  others is refused, naming them), an unreadable newest checkpoint is passed over for the previous
  one, and a NaN or infinite loss or gradient stops training before the optimiser step
  (`GuardedTrainer`), so the checkpoints written so far stay the last good ones.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import ModelCard
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy, SaveStrategy, SchedulerType, get_last_checkpoint

from e3d2_hf.data.prepare import MANIFEST_NAME
from e3d2_hf.models.weights import check_safetensors, short_reason
from e3d2_hf.recipe import RunLayout
from e3d2_hf.trainers.publishing import check_can_upload, upload_folder_or_explain
from e3d2_hf.utils import E3D2Error, atomic_directory, atomic_file, file_sha256, non_finite_fields

logger = logging.getLogger(__name__)

WORK_SETTINGS_FILE = "training_inputs.json"
# The optimiser and schedule values a stage-1 model card shows, after the stage's own.
BAILANDO_CARD_KEYS = (
    "learning_rate",
    "adam_beta1",
    "adam_beta2",
    "weight_decay",
    "max_grad_norm",
    "per_device_train_batch_size",
    "num_train_epochs",
    "lr_decay_epochs",
    "lr_decay_factor",
    "seed",
)


@dataclass
class StageTrainingArguments(TrainingArguments):
    """`TrainingArguments` of one recipe section, with the defaults every stage shares."""

    stage: ClassVar[str]  # the recipe section, and the run folder's sub-folder (a `RunLayout` name) it writes

    run_dir: str = field(default="runs/e3d2", metadata={"help": "Run folder: the stage reads its inputs from it and writes its output into it."})

    # TrainingArguments defaults replaced in every stage.
    seed: int = 0
    per_device_train_batch_size: int = 32
    lr_scheduler_type: SchedulerType | str = "constant"  # stage 1 applies its step decay on top (StepDecayTrainer)
    logging_steps: float = 50
    report_to: None | str | list[str] = "tensorboard"
    remove_unused_columns: bool = False  # the collators build the model's arguments; no signature inspection needed

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = str(getattr(RunLayout(self.run_dir), self.stage))
        problems = non_finite_fields(self)
        if problems:
            raise E3D2Error(f"{self.stage}: " + "; ".join(problems))
        super().__post_init__()
        if self.push_to_hub:
            check_can_upload(self.hub_repo_id, self.stage)

    @property
    def hub_repo_id(self) -> str:
        """Where `push_to_hub` publishes the finished folder: `hub_model_id`, or e3d2-<run>-<stage> in the user's namespace."""
        return self.hub_model_id or f"e3d2-{Path(self.run_dir).name}-{self.stage}"

    def trainer_arguments(self, output_dir: str | Path) -> StageTrainingArguments:
        """A copy for a `Trainer` working in `output_dir`; it never pushes (`finish` publishes the finished folder)."""
        arguments = copy.copy(self)
        arguments.output_dir = str(output_dir)
        arguments.push_to_hub = False
        return arguments

    @property
    def work_dir(self) -> Path:
        """Hidden sibling of `output_dir` (RUN/.bc.training) where the Trainer writes checkpoints and logs."""
        final_dir = Path(self.output_dir)
        return final_dir.with_name(f".{final_dir.name}.training")


@dataclass
class BailandoTrainingArguments(StageTrainingArguments):
    """Stage 1's arguments (VQ-VAE, behaviour cloning): Bailando's optimiser and step decay, resumable checkpoints."""

    data_path: str | None = field(default=None, metadata={"help": "Prepared DatasetDict (default: <run_dir>/data)."})
    lr_decay_epochs: list[int] = field(default_factory=list, metadata={"help": "Epochs at which the learning rate is multiplied by lr_decay_factor."})
    lr_decay_factor: float = field(default=0.1, metadata={"help": "Learning-rate factor applied at each of the decay epochs."})
    resume: bool = field(default=True, metadata={"help": "Continue from the checkpoints of an interrupted run of this stage."})

    # TrainingArguments defaults replaced by Bailando's values.
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    optim: str = "adamw_torch"  # with weight_decay 0 this is Adam
    max_grad_norm: float = 0.0  # Bailando does not clip gradients
    per_device_eval_batch_size: int = 32
    save_strategy: SaveStrategy | str = "epoch"
    save_total_limit: int | None = 2
    eval_strategy: IntervalStrategy | str = "no"
    prediction_loss_only: bool = True

    def __post_init__(self):
        if self.data_path is None:
            self.data_path = str(RunLayout(self.run_dir).data)
        if any(epoch < 1 for epoch in self.lr_decay_epochs) or not 0 < self.lr_decay_factor <= 1:
            raise E3D2Error(
                f"{self.stage}: lr_decay_epochs must be positive and lr_decay_factor in (0, 1], got {self.lr_decay_epochs}, {self.lr_decay_factor}"
            )
        super().__post_init__()


# The training settings a checkpoint's run depends on besides the model's (compared on resume, with the stage's own).
RESUME_SETTINGS = (
    "learning_rate",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "weight_decay",
    "max_grad_norm",
    "optim",
    "lr_scheduler_type",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_decay_epochs",
    "lr_decay_factor",
    "seed",
)


def prepare_work_dir(arguments: BailandoTrainingArguments, settings: dict[str, Any]) -> Path:
    """The stage's work folder, emptied first unless resuming; refuses to resume one made with other settings.

    `settings` (JSON-able, flat) are what a checkpoint only fits: model sizes, windows, the VQ-VAE;
    the optimiser and schedule values of `RESUME_SETTINGS` and the prepared data's manifest are
    added. A new work folder records them. Call it on every process: the main one goes first.
    """
    manifest = Path(arguments.data_path) / MANIFEST_NAME
    settings = {**settings, **{name: _plain(getattr(arguments, name)) for name in RESUME_SETTINGS}}
    settings["data"] = file_sha256(manifest) if manifest.is_file() else None  # data prepared again: other data
    work_dir = arguments.work_dir
    record = work_dir / WORK_SETTINGS_FILE
    with arguments.main_process_first(desc=f"{arguments.stage} work folder"):
        if arguments.process_index == 0 and not arguments.resume:
            shutil.rmtree(work_dir, ignore_errors=True)
        if record.is_file():
            try:
                found = json.loads(record.read_text())
            except (OSError, ValueError) as exc:
                raise E3D2Error(f"{record}: unreadable ({exc}); rerun with --resume false to start over") from exc
            changed = [f"{name} {found[name]!r} -> {settings[name]!r}" for name in sorted(set(found) & set(settings)) if found[name] != settings[name]]
            if changed:
                raise E3D2Error(f"{work_dir}: an interrupted run with other settings ({', '.join(changed)}) is there; rerun with --resume false (or delete that folder) to start over")
        else:
            work_dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(record, "w") as handle:
                handle.write(json.dumps(settings, indent=2) + "\n")
    return work_dir


def _plain(value: Any) -> Any:
    """A settings value as JSON keeps it (enums by their value)."""
    return value.value if isinstance(value, Enum) else value


def last_checkpoint(arguments: BailandoTrainingArguments) -> str | None:
    """The newest readable checkpoint in `arguments.output_dir` to resume from, when `resume` is on and there is one.

    Unreadable newer ones are passed over with a warning; a checkpoint past `num_train_epochs` is
    refused (the Trainer would end there silently, a shorter run than asked for).
    """
    if not arguments.resume or not Path(arguments.output_dir).is_dir():
        return None
    found = sorted(
        (path for path in Path(arguments.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.is_dir() and path.name.split("-")[-1].isdigit()),
        key=lambda path: int(path.name.split("-")[-1]),
    )
    problems = []
    for folder in reversed(found):
        problem = unreadable_checkpoint(folder)
        if problem:
            problems.append(problem)
            continue
        for skipped in problems:
            logger.warning("%s: %s; resuming from the previous checkpoint, %s", arguments.stage, skipped, folder.name)
        epoch = json.loads((folder / TRAINER_STATE_NAME).read_text()).get("epoch") or 0
        if arguments.max_steps <= 0 and epoch > arguments.num_train_epochs + 1e-9:
            raise E3D2Error(
                f"{folder}: the interrupted run is at epoch {epoch:g}, past num_train_epochs {arguments.num_train_epochs:g}; "
                "ask for as many epochs or more to continue it, or rerun with --resume false to start over"
            )
        logger.info("%s: resuming from %s", arguments.stage, folder)
        return str(folder)
    if problems:
        raise E3D2Error(f"{arguments.stage}: no readable checkpoint in {arguments.output_dir} (newest: {problems[0]}); rerun with --resume false to start over")
    return None


def unreadable_checkpoint(folder: Path) -> str | None:
    """What makes a Trainer checkpoint folder unreadable (a file cut short or missing), or None when it reads whole."""
    state = folder / TRAINER_STATE_NAME
    try:
        json.loads(state.read_text())
    except (OSError, ValueError) as exc:
        return f"{state}: unreadable ({getattr(exc, 'strerror', None) or exc})"
    try:
        for weights in folder.glob("*.safetensors"):
            check_safetensors(weights)
    except E3D2Error as exc:
        return str(exc)
    for archive in sorted([*folder.glob("*.pt"), *folder.glob("*.pth"), *folder.glob("*.bin")]):
        try:  # torch.save writes zip archives: every member's CRC is checked
            with zipfile.ZipFile(archive) as opened:
                broken = opened.testzip()
        except (OSError, zipfile.BadZipFile) as exc:
            return f"{archive}: unreadable ({exc})"
        if broken is not None:
            return f"{archive}: corrupt member {broken}"
    if not any(folder.glob("*.safetensors")):
        return f"{folder}: no weights (model.safetensors is missing)"
    return None


def finish(
    arguments: StageTrainingArguments,
    model: PreTrainedModel,
    card: ModelCard,
    results: Mapping[str, Any],
    *,
    logs: Mapping[str, Path] | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write the stage's folder at once and remove the work folder, then publish it with `push_to_hub`; returns the folder. Main process only.

    The folder holds the model's `save_pretrained` files, `results` (file name -> JSON content), the
    Trainer's tensorboard logs (`logs`: destination in the folder -> logs folder; default the work
    folder's `runs/`), whatever `write_extra` writes into it, the model card and the recipe
    (`training_config.json`).
    """
    final_dir, work_dir = Path(arguments.output_dir), arguments.work_dir
    logs = {"runs": work_dir / "runs"} if logs is None else logs
    with atomic_directory(final_dir) as folder:
        model.save_pretrained(folder)
        for destination, source in logs.items():
            if source.is_dir():
                (folder / destination).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(source), str(folder / destination))
        for name, content in results.items():
            (folder / name).write_text(json.dumps(content, indent=2) + "\n")
        if write_extra is not None:
            write_extra(folder)
        card.save(folder / "README.md")
        (folder / "training_config.json").write_text(arguments.to_json_string())
    shutil.rmtree(work_dir, ignore_errors=True)
    if arguments.push_to_hub:
        upload_folder_or_explain(final_dir, arguments.hub_repo_id, private=bool(arguments.hub_private_repo), commit_message=f"Upload E3D2 {arguments.stage}")
    return final_dir


class GuardedTrainer(Trainer):
    """`Trainer` that stops with a clear error when a loss or a gradient is NaN or infinite, or a checkpoint cannot be written.

    transformers' Trainer would go on (it even leaves NaN losses out of its logs) and save NaN
    weights as the next checkpoint. Here the loss (`check_finite`, called by `compute_loss`) and,
    after backward, every gradient are checked before the optimiser step, so the checkpoints
    written so far stay the last good ones and the stage's folder is left as it was. A checkpoint
    that fails half-way (a full disk) is removed, and the error names it.
    """

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as exc:  # torch's writer reports a full disk as a RuntimeError
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            if self.args.should_save:
                shutil.rmtree(folder, ignore_errors=True)
            raise E3D2Error(f"{folder}: cannot write the checkpoint ({short_reason(exc)}); the earlier ones are kept") from exc

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        gradients = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
        if gradients and not bool(torch.stack([torch.isfinite(gradient).all() for gradient in gradients]).all()):
            self._stop(f"{self.args.stage}: non-finite gradient")
        return loss

    def check_finite(self, loss: torch.Tensor, what: str) -> None:
        """Stop with `E3D2Error` (naming the kept checkpoint) when `loss` is NaN or infinite."""
        if not torch.isfinite(loss.detach()).all():
            self._stop(what)

    def _stop(self, what: str) -> None:
        latest = get_last_checkpoint(self.args.output_dir) if Path(self.args.output_dir).is_dir() else None
        kept = f"the last good checkpoint is {latest} (lower the learning rate and run again to resume)" if latest else "no checkpoint was written yet"
        raise E3D2Error(f"{what} at step {self.state.global_step + 1} (epoch {self.state.epoch or 0:.2f}); training stopped, {kept}")


class StepDecayTrainer(GuardedTrainer):
    """`Trainer` with Bailando's step learning-rate decay (and `GuardedTrainer`'s guards).

    The scheduler is multiplied by `lr_decay_factor` at each of `lr_decay_epochs` (Bailando's
    MultiStepLR, which `TrainingArguments` has no name for).
    """

    def __init__(self, *args: Any, lr_decay_epochs: list[int], lr_decay_factor: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lr_decay_epochs = sorted(lr_decay_epochs)
        self.lr_decay_factor = lr_decay_factor
        self.update_steps_per_epoch = 1

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        self.update_steps_per_epoch = max(1, int(values[1]))  # num_update_steps_per_epoch
        return values

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None and self.lr_decay_epochs:
            milestones = [epoch * self.update_steps_per_epoch for epoch in self.lr_decay_epochs]
            factor = self.lr_decay_factor

            def step_decay(step: int) -> float:
                return factor ** sum(step >= milestone for milestone in milestones)

            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, step_decay)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)


__all__ = [
    "BAILANDO_CARD_KEYS",
    "BailandoTrainingArguments",
    "StageTrainingArguments",
    "StepDecayTrainer",
    "GuardedTrainer",
    "finish",
    "last_checkpoint",
    "prepare_work_dir",
]
