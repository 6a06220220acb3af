"""The `generation` and `generation_roofline` sections of scripts/bench.py with their knobs.

    python scripts/bench_generation.py [--steps 450] [--recompute-steps 60 | --recompute-steps 0 (all)]
                                       [--batch-sizes 1 32] [--device cpu|cuda] [--threads N] [--json OUT]
    python scripts/bench_generation.py --roofline [--steps 450] [--batch-sizes 32 1]
                                       [--dtypes float32 bfloat16] [--threads N] [--json OUT]

The full 450-step re-encoding baseline at batch 32 takes minutes on 2 CPU cores; by default it runs
60 chosen steps and is extrapolated from its steady state (column baseline_measured_steps).
--roofline runs the CPU roofline section instead: generation against this machine's matmul peak
and memory bandwidth, measured in the same run with the same threads, and a profile.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench import _print_table, bench_generation, bench_generation_roofline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=450, help="dance steps incl. the given first code (450 = 60 s at 7.5 fps)")
    parser.add_argument("--recompute-steps", type=int, default=60, help="chosen steps the baseline runs (0: all), the rest extrapolated")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 32 (roofline: 32 1)")
    parser.add_argument("--roofline", action="store_true", help="the generation_roofline section instead (CPU)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"], help="roofline section: weight dtypes")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the rows as JSON")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.roofline:
        section, rows = "generation_roofline", bench_generation_roofline(args.steps, tuple(args.batch_sizes or (32, 1)), tuple(args.dtypes))
    else:
        section, rows = "generation", bench_generation(args.steps, args.recompute_steps or None, tuple(args.batch_sizes or (1, 32)), args.device)
    _print_table({section: rows})
    if args.json is not None:
        from e3d2_hf.utils import atomic_file

        with atomic_file(args.json, "w") as handle:
            json.dump({section: rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
