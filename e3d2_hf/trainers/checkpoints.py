"""Resumable checkpoints for a trainer that owns its loop (PPO): written atomically, read back whole, the oldest dropped.

    OUTPUT/checkpoints/checkpoint-NNNNNN/
        model.safetensors     the trained weights (PPO: policy + value network)
        optimizer.pt          the optimizer's state
        rng_state.pt          the global torch / numpy / python (/ CUDA) RNG states
        trainer_state.json    everything else the loop needs to continue (step, beta, curves ...)

A checkpoint folder appears only once it is complete (`atomic_directory`), so a killed run never
leaves a half-written one; a resumed run restores every RNG, so it draws the same numbers as one
that was never stopped. The trainer decides when to save and what its state is; this module knows
the layout and how to write, find and read it.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from e3d2_hf.utils import E3D2Error, atomic_directory, atomic_file

CHECKPOINTS = "checkpoints"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng_state.pt"
STATE_FILE = "trainer_state.json"


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
    found = [path for path in folder.glob("checkpoint-*") if (path / STATE_FILE).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda path: int(path.name.split("-")[-1]))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = checkpoint_folders(output_dir)
    return found[-1] if found else None


def save_checkpoint(
    output_dir: Path, step: int, weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any], trainer_state: dict[str, Any], keep: int
) -> Path:
    """Write the checkpoint of `step` atomically (with the current RNG states), then delete all but the newest `keep`."""
    folder = checkpoint_folder(output_dir, step)
    with atomic_directory(folder) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        torch.save(capture_rng_states(), tmp / RNG_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n")
    for old in checkpoint_folders(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


@dataclass
class Checkpoint:
    """The contents of one checkpoint folder, read back."""

    weights: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    rng_states: dict[str, Any]
    trainer_state: dict[str, Any]


def load_checkpoint(folder: Path, device: torch.device | str) -> Checkpoint:
    """Every file of a checkpoint (weights and optimizer onto `device`); `E3D2Error` if one is unreadable."""
    try:
        return Checkpoint(
            weights=load_file(str(folder / WEIGHTS_FILE), device=str(device)),
            optimizer_state=torch.load(folder / OPTIMIZER_FILE, map_location=device, weights_only=True),
            rng_states=torch.load(folder / RNG_FILE, weights_only=True),
            trainer_state=json.loads((folder / STATE_FILE).read_text()),
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise E3D2Error(f"{folder}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc


def keep_log_until(log_file: Path, step: int) -> None:
    """On resume: drop the lines of a JSON-lines log written after `step` (the resumed run writes them again)."""
    if log_file.is_file():
        kept = [line for line in log_file.read_text().splitlines() if json.loads(line)["step"] <= step]
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
    "remove_outputs",
    "restore_rng_states",
    "save_checkpoint",
]
