"""Paper-scale cost check: every training stage at the recipe's real model sizes for a few optimiser steps (issue 17).

    python scripts/scale_check.py recipes/e3d2.yaml [--device cpu|cuda] [--dtype fp32|bf16] [--steps N] [--out DIR]

Writes DIR/scale_check.json and DIR/scale_check.md (default DIR: RUN/scale_check) and prints the table:
parameters, FLOPs, operators and seconds per step, peak memory, the steps the recipe asks for at AIST++
size and the projected hours on one H100 / A100; see e3d2_hf.evaluation.scale_check.
"""

import argparse
import logging
import sys
from pathlib import Path

from e3d2_hf.utils import E3D2Error


def parse_overrides(values: list[str]) -> dict[str, list[str]]:
    """`SECTION.FIELD=VALUE` flags -> per section command-line overrides (`--FIELD VALUE`)."""
    overrides: dict[str, list[str]] = {}
    for value in values:
        name, equals, setting = value.partition("=")
        section, dot, field = name.partition(".")
        if not (equals and dot and section and field):
            raise E3D2Error(f"--set {value!r}: expected SECTION.FIELD=VALUE, e.g. bc.per_device_train_batch_size=256")
        overrides.setdefault(section, []).extend([f"--{field}", setting])
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when torch sees one, else cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="force every stage's precision (default: each as its recipe section says)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per stage (after the warm-up and the counted step)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the counted one")
    parser.add_argument("--only", nargs="+", metavar="STAGE", help="these stages only (vqvae vqvae_root bc demos reward ppo ppo_beat)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a recipe field (repeatable)")
    parser.add_argument("--utilisation", type=float, default=None, help="share of the dense peak the FLOP projection assumes (default 0.4)")
    parser.add_argument("--seconds-per-op", type=float, default=None, help="host seconds per aten operator of the floor (default 1e-5)")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/scale_check)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        from e3d2_hf.evaluation import scale_check
        from e3d2_hf.recipe import load_recipe, run_dir_of

        options = {"utilisation": args.utilisation, "seconds_per_op": args.seconds_per_op}
        result = scale_check.run_scale_check(
            args.recipe, device=args.device, dtype=args.dtype, steps=args.steps, warmup=args.warmup, only=args.only,
            overrides=parse_overrides(args.set), **{name: value for name, value in options.items() if value is not None},
        )  # fmt: skip
        out = Path(args.out) if args.out else run_dir_of(load_recipe(args.recipe)) / "scale_check"
        json_path, table_path = scale_check.write_scale_check(result, out)
    except E3D2Error as exc:
        print(f"scale_check: error: {exc}", file=sys.stderr)
        return 2
    print(table_path.read_text())
    print(f"-> {json_path}, {table_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
