"""The whole pipeline of a recipe once per seed, then Table 1 as mean +- std over the seeds (issue 14, point 8).

    python scripts/seeds.py recipes/tiny.yaml --seeds 0 1 2 [--vary-data]
    # -> runs/tiny (seed 0, the recipe's own), runs/tiny_seed1, runs/tiny_seed2,
    #    runs/tiny_seeds/seeds.json and seeds.md (+ the seeds' recipes in runs/tiny_seeds/recipes/)

The seed is the recipe's top-level seed, every stage's default. The data stay fixed (prepare's seed
pinned to the recipe's) unless --vary-data, so by default only training varies. Run it again after
a kill: each seed's pipeline skips the stages it finished.
"""

import argparse
import logging
import sys

from e3d2_hf.pipeline import run_seeds
from e3d2_hf.utils import E3D2Error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="the base recipe (its seed is the first run's, its run folder that seed's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the seeds to run (default: 0 1 2)")
    parser.add_argument("--vary-data", action="store_true", help="let the synthetic dataset follow the seed too (default: fixed data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_seeds(args.recipe, args.seeds, vary_data=args.vary_data)
    except E3D2Error as exc:
        print(f"seeds: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seeds: interrupted (run it again to continue)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
