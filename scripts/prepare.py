"""Stage 0: AIST++ (or the embedded synthetic dataset) -> RUN/data (train/val/test datasets + manifest).

    python scripts/prepare.py recipes/tiny.yaml [--field value ...]
"""

import sys

from e3d2_hf.data.prepare import PrepareConfig, prepare_from_config
from e3d2_hf.recipe import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("prepare", PrepareConfig, prepare_from_config, argv)


if __name__ == "__main__":
    sys.exit(main())
