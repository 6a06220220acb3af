"""A stage's trained inputs from the run folder, with errors that name the folder and the stage that makes it.

Not `e3d2_hf.inference.load_policy`, which resolves Hub ids and any saved policy for dancing: these
read one run's own folders (RUN/bc, RUN/ppo/policy, RUN/reward) for the stages that build on them
(demonstrations, PPO, Table 1), and say which script to run when one is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.models.weights import load_pretrained
from e3d2_hf.utils import E3D2Error


def load_run_policy(path: str | Path) -> E3D2PolicyModel:
    """The behaviour-cloning policy at `path` (a `save_pretrained` folder with its VQ-VAE)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise E3D2Error(f"{path}: no behaviour-cloning policy here (config.json missing); train stage 1 (scripts/bc.py) first")
    return load_pretrained(E3D2PolicyModel, path)


def load_run_reward_model(path: str | Path, required: bool) -> Any | None:
    """The reward model at `path`; None if absent and not `required`."""
    from e3d2_hf.models.modeling_reward import E3D2RewardModel

    path = Path(path)
    if not (path / "config.json").is_file():
        if required:
            raise E3D2Error(f"{path}: no reward model here (config.json missing); train stage 3 (scripts/reward.py) first, or use --reward beat")
        return None
    return load_pretrained(E3D2RewardModel, path).eval()


__all__ = ["load_run_policy", "load_run_reward_model"]
