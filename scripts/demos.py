"""Stage 2: automatically-ranked demonstrations, the BC policy RUN/bc with eps-greedy noise -> RUN/demos/demonstrations.

    accelerate launch scripts/demos.py recipes/tiny.yaml [--field value ...]
    accelerate launch --multi_gpu --num_processes 2 scripts/demos.py recipes/tiny.yaml   # 2 CPU ranks (gloo)
"""

import sys

from e3d2_hf.recipe import run_stage
from e3d2_hf.trainers.demos import DemosConfig, generate_demonstrations


def main(argv: list[str] | None = None) -> int:
    return run_stage("demos", DemosConfig, generate_demonstrations, argv)


if __name__ == "__main__":
    sys.exit(main())
