"""Accelerate for the stages that own their loop (demonstrations, PPO): one CPU, GPUs, or CPU ranks over gloo.

`accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x (its simple
launcher). Processes started by `accelerate launch --multi_gpu --num_processes N` or `torchrun
--nproc_per_node N` join one gloo group on a machine without a GPU only when Accelerate is asked for
CPU, so `make_accelerator` asks for CPU whenever no GPU is visible, and refuses to run when the
launched processes did not form one group (each would otherwise silently repeat the whole work).
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator

from e3d2_hf.utils import E3D2Error


def has_gpu() -> bool:
    """Whether torch sees an accelerator (CUDA, ROCm, MPS, XPU ...)."""
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def make_accelerator(
    stage: str,
    *,
    use_cpu: bool = False,
    mixed_precision: str = "no",
    report_to: str | None = None,
    project_dir: str | None = None,
) -> Accelerator:
    """Accelerator for one CPU process, GPUs, or several CPU processes as real gloo ranks (see the module docstring)."""
    accelerator = Accelerator(
        cpu=use_cpu or not has_gpu(),
        mixed_precision=mixed_precision,
        log_with=None if report_to in ("none", "", None) else report_to,
        project_dir=project_dir,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise E3D2Error(
            f"{stage}: {launched} processes were launched but Accelerate formed a group of {accelerator.num_processes}; "
            "launch CPU ranks with `accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`"
        )
    return accelerator


__all__ = ["has_gpu", "make_accelerator"]
