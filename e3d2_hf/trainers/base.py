"""A `transformers.Trainer` with Bailando's step learning-rate decay and a guard against non-finite losses.

The VQ-VAE and the behaviour-cloning policy train the same way: Adam with the rate multiplied by
`lr_decay_factor` at `lr_decay_epochs` (Bailando's MultiStepLR), and a run that diverges stops with
a clear error before the optimiser step, so the checkpoints written so far stay the last good ones.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from e3d2_hf.utils import E3D2Error


class StepDecayTrainer(Trainer):
    """`Trainer` whose scheduler is multiplied by `lr_decay_factor` at each of `lr_decay_epochs`."""

    stage_name = "training"

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

    def check_finite(self, loss: torch.Tensor, what: str) -> None:
        """Stop with `E3D2Error` (naming the kept checkpoints) when `loss` is NaN or infinite."""
        if not torch.isfinite(loss.detach()).all():
            raise E3D2Error(
                f"{what} at step {self.state.global_step} (epoch {self.state.epoch or 0:.2f}); "
                f"the checkpoints in {self.args.output_dir} are kept: lower the learning rate and run again to resume"
            )
