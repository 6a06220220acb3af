"""Resumable checkpoints for a trainer that owns its loop (PPO): written atomically, read back whole, the oldest dropped.

    OUTPUT/checkpoints/checkpoint-NNNNNN/
        model.safetensors     the trained weights (PPO: policy + value network)
        best_policy.safetensors  the weights kept as the best so far, when the trainer keeps one (PPO: `best_policy_metric`)
        optimizer.pt          the optimizer's state
        rng_state.pt          the global torch / numpy / python (/ CUDA) RNG states
        trainer_state.json    everything else the loop needs to continue (step, beta, curves ...)
        training_config.json  the config the run was made with (a resume compares it with its own)

A checkpoint folder appears only once it is complete (`atomic_directory`), so a killed run never
leaves a half-written one; a resumed run restores every RNG, so it draws the same numbers as one
that was never stopped. A checkpoint that is unreadable all the same (a disk error, a copy cut
short) is passed over, with a warning, for the newest one that reads. The trainer decides when to save and what its state is; this module knows
the layout and how to write, find and read it.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from e3d2_hf.models.weights import check_finite_weights, read_safetensors, short_reason
from e3d2_hf.utils import E3D2Error, atomic_directory, atomic_file

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
WEIGHTS_FILE = "model.safetensors"
BEST_WEIGHTS_FILE = "best_policy.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng_state.pt"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "training_config.json"
_FOLDER_NAME = re.compile(r"^checkpoint-(\d+)$")


def capture_rng_states() -> dict[str, Any]:
    """Global RNG states in a form `torch.load(weights_only=True)` reads back."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *map(float, numpy_state[2:])],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back the global RNG states `capture_rng_states` recorded."""
    torch.set_rng_state(states["torch"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(position), int(has_gauss), float(cached)))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def checkpoint_folder(output_dir: Path, step: int) -> Path:
    return output_dir / CHECKPOINTS / f"checkpoint-{step:06d}"


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The complete checkpoints under `output_dir`, oldest first."""
    folder = output_dir / CHECKPOINTS
    found = [path for path in folder.glob("checkpoint-*") if _FOLDER_NAME.match(path.name) and (path / STATE_FILE).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda path: int(_FOLDER_NAME.match(path.name)[1]))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = checkpoint_folders(output_dir)
    return found[-1] if found else None


def save_checkpoint(
    output_dir: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int,
    config: dict[str, Any] | None = None,
    best_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the checkpoint of `step` atomically (with the current RNG states, `config` and the `best_weights` kept so far),
    then delete all but the newest `keep`."""
    folder = checkpoint_folder(output_dir, step)
    with atomic_directory(folder) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        if best_weights is not None:
            save_file(best_weights, str(tmp / BEST_WEIGHTS_FILE))
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        torch.save(capture_rng_states(), tmp / RNG_FILE)
        if config is not None:
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n")
    for old in checkpoint_folders(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


@dataclass
class Checkpoint:
    """The contents of one checkpoint folder, read back."""

    folder: Path
    weights: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    rng_states: dict[str, Any]
    trainer_state: dict[str, Any]
    config: dict[str, Any] | None  # None: written before checkpoints recorded their config
    best_weights: dict[str, torch.Tensor] | None = None  # None: the trainer kept none


def load_checkpoint(folder: Path, device: torch.device | str) -> Checkpoint:
    """Every file of a checkpoint (weights and optimizer onto `device`); `E3D2Error` naming the file that is unreadable.

    Any CPU device loads onto plain "cpu": Accelerate gives each gloo rank `cpu:<rank>`, which safetensors and
    `torch.load` refuse (and which would make every checkpoint look unreadable).
    """
    device = torch.device(device)
    if device.type == "cpu":
        device = torch.device("cpu")
    weights = read_safetensors(folder / WEIGHTS_FILE, device)
    check_finite_weights(weights, folder / WEIGHTS_FILE)
    best_weights = read_safetensors(folder / BEST_WEIGHTS_FILE, "cpu") if (folder / BEST_WEIGHTS_FILE).is_file() else None
    if best_weights is not None:
        check_finite_weights(best_weights, folder / BEST_WEIGHTS_FILE)
    config_file = folder / CONFIG_FILE
    return Checkpoint(
        folder=folder,
        weights=weights,
        optimizer_state=_read(folder / OPTIMIZER_FILE, lambda path: torch.load(path, map_location=device, weights_only=True)),
        rng_states=_read(folder / RNG_FILE, lambda path: torch.load(path, weights_only=True)),
        trainer_state=_read(folder / STATE_FILE, lambda path: json.loads(path.read_text())),
        config=_read(config_file, lambda path: json.loads(path.read_text())) if config_file.is_file() else None,
        best_weights=best_weights,
    )


def _read(path: Path, reader: Any) -> Any:
    try:
        return reader(path)
    except Exception as exc:  # torch.load of a cut file: RuntimeError, EOFError, UnpicklingError ...
        raise E3D2Error(f"{path}: unreadable checkpoint file ({short_reason(exc)})") from exc


def load_latest_readable(output_dir: Path, device: torch.device | str) -> Checkpoint | None:
    """The newest checkpoint that reads back whole; newer unreadable ones are passed over with a warning.

    None when there is no checkpoint; `E3D2Error` when there are some but none reads.
    """
    found = checkpoint_folders(output_dir)
    problems = []
    for folder in reversed(found):
        try:
            checkpoint = load_checkpoint(folder, device)
        except E3D2Error as exc:
            problems.append(str(exc))
            continue
        for problem in problems:
            logger.warning("%s; resuming from the previous checkpoint, %s", problem, folder.name)
        return checkpoint
    if problems:
        raise E3D2Error(f"no readable checkpoint in {output_dir / CHECKPOINTS} (newest: {problems[0]}); pass --overwrite_output_dir true to start over")
    return None


def keep_log_until(log_file: Path, step: int) -> None:
    """On resume: drop the lines of a JSON-lines log written after `step` (the resumed run writes them again),
    and a last line a killed run left half-written."""
    if log_file.is_file():
        kept = []
        for line in log_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        with atomic_file(log_file, "w") as handle:
            handle.write("".join(line + "\n" for line in kept))


def remove_outputs(paths: list[Path]) -> None:
    """Delete an earlier run's outputs (folders and files) before starting over."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


__all__ = [
    "CHECKPOINTS",
    "Checkpoint",
    "capture_rng_states",
    "checkpoint_folder",
    "checkpoint_folders",
    "keep_log_until",
    "latest_checkpoint",
    "load_checkpoint",
    "load_latest_readable",
    "remove_outputs",
    "restore_rng_states",
    "save_checkpoint",
]
