"""Project benchmarks: each section times our implementation against a baseline on the same inputs.

    python scripts/bench.py [--only NAME ...] [--json OUT]

A section is a function in BENCHES returning rows (dicts); the rows of all sections are printed as
one table and, with --json, written as {section: rows}. Add a section by writing a function and
registering it in BENCHES.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Row = dict[str, Any]


def _seconds(function: Callable[[], Any], repeats: int) -> float:
    """Best wall time of `repeats` calls (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def bench_metric_features(num_clips: int = 3, num_frames: int = 1200) -> list[Row]:
    """Kinetic + manual features of 20 s clips: vectorised (features.py) vs per frame (reference.py)."""
    from e3d2_hf.metrics.features import kinetic_features, manual_features
    from e3d2_hf.metrics.reference import kinetic_features_per_frame, manual_features_per_frame, random_dance

    rng = np.random.default_rng(0)
    clips = [random_dance(rng, num_frames) for _ in range(num_clips)]
    rows = []
    for label, fast, slow in (
        ("kinetic", kinetic_features, kinetic_features_per_frame),
        ("manual", manual_features, manual_features_per_frame),
        ("kinetic+manual", lambda c: (kinetic_features(c), manual_features(c)),
         lambda c: (kinetic_features_per_frame(c), manual_features_per_frame(c))),
    ):  # fmt: skip
        ours = np.mean([_seconds(lambda c=clip: fast(c), repeats=5) for clip in clips])
        baseline = np.mean([_seconds(lambda c=clip: slow(c), repeats=1) for clip in clips])
        if label == "kinetic+manual":
            difference = max(
                float(np.max(np.abs(np.concatenate(fast(clip)) - np.concatenate(slow(clip))))) for clip in clips
            )
        else:
            difference = max(float(np.max(np.abs(fast(clip) - slow(clip)))) for clip in clips)
        rows.append({
            "case": f"{label} features, {num_frames} frames",
            "ours_s": round(float(ours), 5),
            "baseline_s": round(float(baseline), 4),
            "speedup": round(float(baseline / ours), 1),
            "max_abs_difference": difference,
        })  # fmt: skip
    return rows


BENCHES: dict[str, Callable[[], list[Row]]] = {
    "metric_features": bench_metric_features,
}


def _print_table(results: dict[str, list[Row]]) -> None:
    columns = ["section"] + list(dict.fromkeys(key for rows in results.values() for row in rows for key in row))
    lines = [[name] + [row.get(column, "") for column in columns[1:]] for name, rows in results.items() for row in rows]
    cells = [[str(value) for value in line] for line in [columns] + lines]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    for number, line in enumerate(cells):
        print("  ".join(value.ljust(width) for value, width in zip(line, widths)))
        if number == 0:
            print("  ".join("-" * width for width in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), metavar="NAME", help=f"sections to run: {', '.join(BENCHES)}")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    args = parser.parse_args(argv)
    results = {name: BENCHES[name]() for name in (args.only or BENCHES)}
    _print_table(results)
    if args.json is not None:
        from e3d2_hf.utils import atomic_file

        machine = {"python": sys.version.split()[0], "numpy": np.__version__, "platform": platform.platform()}
        with atomic_file(args.json, "w") as handle:
            json.dump({"machine": machine, "results": results}, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
