"""Stage 1b: behaviour cloning of the GPT policy on the run's pose codes -> RUN/bc (policy + its VQ-VAE, diagnostics).

    accelerate launch scripts/bc.py recipes/tiny.yaml [--field value ...]
"""

import sys

from e3d2_hf.recipe import run_stage
from e3d2_hf.trainers.bc import BCTrainingConfig, train_bc


def main(argv: list[str] | None = None) -> int:
    return run_stage("bc", BCTrainingConfig, train_bc, argv)


if __name__ == "__main__":
    sys.exit(main())
