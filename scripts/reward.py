"""Stage 3: train the reward model on ranked pairs of RUN/demos/demonstrations -> RUN/reward (+ diagnostics.json).

    accelerate launch scripts/reward.py recipes/tiny.yaml [--field value ...]
"""

import sys

from e3d2_hf.recipe import run_stage
from e3d2_hf.trainers.reward_model import RewardTrainingConfig, train_reward_model


def main(argv: list[str] | None = None) -> int:
    return run_stage("reward", RewardTrainingConfig, train_reward_model, argv)


if __name__ == "__main__":
    sys.exit(main())
