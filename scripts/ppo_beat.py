"""Paper Table 2's ablation: PPO from RUN/bc with Bailando's hand-designed beat reward -> RUN/ppo_beat.

    python scripts/ppo_beat.py recipes/tiny.yaml [--field value ...]

The recipe's `ppo_beat:` section is its `ppo:` section with `reward: beat` and its own keys on top
(e3d2_hf.recipe.DERIVED_SECTIONS); RUN/eval then adds the "beat" row to Table 1 and its held-out
evaluations to Table 2.
"""

import sys

from e3d2_hf.recipe import run_stage
from e3d2_hf.trainers.ppo import train_ppo
from e3d2_hf.trainers.ppo_config import PPOConfig

if __name__ == "__main__":
    sys.exit(run_stage("ppo_beat", PPOConfig, train_ppo))
