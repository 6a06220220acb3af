"""Table 1's held-out dances generated with the rolling KV cache vs a window re-encoded at every step (issue 14, point 5).

    python scripts/generation_modes.py recipes/tiny.yaml [--field value ...]   # -> RUN/eval/generation_modes.json, .md

Reads the recipe's `eval:` section (the same pieces, seconds, decoding and intervals as Table 1);
see e3d2_hf.evaluation.generation_modes.
"""

import logging
import sys

from e3d2_hf.evaluation.generation_modes import compare_generation_modes
from e3d2_hf.evaluation.table_1 import EvalConfig
from e3d2_hf.recipe import parse_recipe
from e3d2_hf.utils import E3D2Error, run_lock


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = parse_recipe(EvalConfig, "eval", argv)
        with run_lock(config.run_dir):
            compare_generation_modes(config)
    except E3D2Error as exc:
        print(f"generation_modes: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
