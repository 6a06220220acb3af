"""Evaluation: the paper's Table 1 for a run folder (ground truth, RUN/bc, RUN/ppo/policy on held-out music) -> RUN/eval.

    python scripts/eval.py recipes/tiny.yaml [--field value ...]
"""

import sys

from e3d2_hf.evaluation.table_1 import EvalConfig, evaluate_run
from e3d2_hf.recipe import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("eval", EvalConfig, evaluate_run, argv)


if __name__ == "__main__":
    sys.exit(main())
