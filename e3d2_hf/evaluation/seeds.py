"""Several seeds of one recipe: the recipe of each seed, and mean +- std over seeds of every Table 1 metric.

`seed_recipe` derives the recipe of one seed from a base recipe: the top-level seed (the default of
every stage's `seed`) set to it, and its own run folder `<run_name>_seed<s>` (the base seed keeps
the base run folder, so a finished run of the base recipe is reused through the pipeline's change
detection). The data stay fixed by default: the prepare section's seed (the synthetic dataset's) is
pinned to the base seed, so every seed trains and is scored on the same pieces and only training
varies (VQ-VAE, BC, demonstrations, reward model, PPO, and Table 1's bootstrap draws, plus its
dances when `eval.do_sample`); `vary_data` lets the dataset follow the seed too.

`aggregate_seeds` reads each seed's RUN/eval/metrics.json and gives, for every Table 1 row present in
all of them, each metric's mean, sample standard deviation (n - 1) and per-seed values, and the same
for each row minus BC within a seed (the seeds' paired difference). `scripts/seeds.py` runs the
pipelines (`e3d2_hf.pipeline.run_seeds`) and writes the result.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from e3d2_hf.evaluation.table_1 import DIGITS, ROW_LABELS, describe_dances
from e3d2_hf.metrics.protocol import METRIC_KEYS
from e3d2_hf.recipe import RUN_KEYS
from e3d2_hf.utils import E3D2Error

SEED_METRICS = (*METRIC_KEYS, "learned_return")
DATA_SECTION = "prepare"  # the stage whose seed is the dataset's (the synthetic generator)


def _run_specific_keys(values: dict[str, Any]) -> list[str]:
    """Keys that point into one run folder (its own, or a stage's output): every seed would share them."""
    return [key for key in values if key in ("run_dir", "output_dir") or key.endswith("_path")]


def seed_recipe(recipe: dict[str, Any], seed: int, *, vary_data: bool = False, where: str = "recipe") -> dict[str, Any]:
    """The recipe of one seed (see the module docstring); `E3D2Error` naming `where` when a section would defeat the seeds
    (a path into one run folder, shared by every seed, or a pinned seed)."""
    base_seed = recipe.get("seed", 0)
    for section, values in recipe.items():
        if section in RUN_KEYS:
            continue
        shared = _run_specific_keys(values)
        if shared:
            raise E3D2Error(
                f"{where}: section '{section}' sets '{shared[0]}', which every seed would share; leave it out (it defaults into each seed's run folder)"
            )
        if "seed" in values and (section != DATA_SECTION or vary_data):
            raise E3D2Error(
                f"{where}: section '{section}' pins its seed ({values['seed']}); the seeds vary the top-level seed, which it would ignore"
            )
    derived = copy.deepcopy(recipe)
    derived["seed"] = seed
    if seed != base_seed:
        derived["run_name"] = f"{recipe['run_name']}_seed{seed}"
    if not vary_data:
        data_section = derived.setdefault(DATA_SECTION, {})
        data_section.setdefault("seed", base_seed)
    return derived


def seed_variation(recipe: dict[str, Any], vary_data: bool) -> str:
    """What the seeds of `seed_recipe` change, in words (recorded beside the aggregate)."""
    training = "every training stage's seed (VQ-VAE, BC, demonstrations, reward model, PPO) and Table 1's bootstrap draws"
    if vary_data:
        return training + ", and the dataset (prepare's seed follows the seed)"
    pinned = (recipe.get(DATA_SECTION) or {}).get("seed", recipe.get("seed", 0))
    return training + f"; the data stayed fixed (prepare seed {pinned}: the same training and held-out pieces)"


def _read_table(path: Path, seed: int) -> dict[str, Any]:
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise E3D2Error(f"{path}: seed {seed} has no Table 1 (its pipeline has not finished; run scripts/seeds.py again to continue it)") from None
    except OSError as exc:
        raise E3D2Error(f"{path}: cannot read seed {seed}'s Table 1 ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise E3D2Error(f"{path}: seed {seed}'s Table 1 is not valid JSON ({exc})") from exc
    if not isinstance(table, dict) or "bc" not in table:
        raise E3D2Error(f"{path}: seed {seed}'s Table 1 has no BC row")
    return table


def _statistics(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample std (n - 1; None under 2 values) of the values that exist, and all of them as given."""
    present = [float(value) for value in values if value is not None and math.isfinite(value)]
    mean = sum(present) / len(present) if present else None
    std = math.sqrt(sum((value - mean) ** 2 for value in present) / (len(present) - 1)) if len(present) >= 2 else None
    return {"mean": mean, "std": std, "n": len(present), "values": values}


def aggregate_seeds(metrics_files: dict[int, str | Path], varies: str) -> dict[str, Any]:
    """Mean +- std over seeds of every Table 1 metric from each seed's metrics.json (seed -> file); `varies` says what the seed changed."""
    if not metrics_files:
        raise E3D2Error("seeds: no seeds to aggregate")
    tables = {seed: _read_table(Path(path), seed) for seed, path in metrics_files.items()}
    everywhere = [label for label in ROW_LABELS if all(label in table for table in tables.values())]
    somewhere = [label for label in ROW_LABELS if label not in everywhere and any(label in table for table in tables.values())]
    rows, minus_bc = {}, {}
    for label in everywhere:
        rows[label] = {key: _statistics([table[label].get(key) for table in tables.values()]) for key in SEED_METRICS}
        if label != "bc":
            minus_bc[label] = {
                key: _statistics([None if table[label].get(key) is None or table["bc"].get(key) is None else table[label][key] - table["bc"][key] for table in tables.values()])
                for key in SEED_METRICS
            }  # fmt: skip
    protocol_keys = ("pieces", "splits", "dance_seconds", "fid_div_seconds", "eval_seconds", "bas_scope", "decoding", "generation")
    protocols = {seed: {key: table.get("protocol", {}).get(key) for key in protocol_keys} for seed, table in tables.items()}
    first = next(iter(protocols.values()))
    differing = [seed for seed, protocol in protocols.items() if protocol != first]
    if differing:
        raise E3D2Error(
            f"seeds: {metrics_files[differing[0]]} was evaluated under another protocol than {next(iter(metrics_files.values()))} "
            "(pieces, dance length, FID/Div window, decoding); evaluate every seed the same way"
        )
    return {
        "seeds": list(tables),
        "varies": varies,
        "metrics_files": {str(seed): str(path) for seed, path in metrics_files.items()},
        "rows": rows,
        "minus_bc": minus_bc,
        "rows_not_in_every_seed": somewhere,
        "protocol": {key: value for key, value in first.items() if value is not None or key != "eval_seconds"},
        "notes": {"std": "sample standard deviation over seeds (n - 1)", "minus_bc": "row minus BC within each seed, then over seeds"},
    }


def _cell(statistics: dict[str, Any], digits: int, signed: bool = False) -> str:
    mean, std = statistics["mean"], statistics["std"]
    if mean is None:
        return "-"
    text = f"{mean:{'+' if signed else ''}.{digits}f}"
    return text if std is None else f"{text} +- {std:.{digits}f}"


def format_seeds(result: dict[str, Any]) -> str:
    """Markdown: Table 1 as mean +- std over the seeds, each row minus BC the same way, what the seeds varied."""
    seeds = ", ".join(map(str, result["seeds"]))
    count = len(result["seeds"])
    lines = [f"Table 1 over {count} seed{'' if count == 1 else 's'} ({seeds}): mean +- sample std. The seed varied {result['varies']}.", ""]
    lines += ["| Method | " + " | ".join(SEED_METRICS) + " |", "|---|" + "---:|" * len(SEED_METRICS)]
    lines += [
        f"| {ROW_LABELS[label]} | " + " | ".join(_cell(row[key], DIGITS[key]) for key in SEED_METRICS) + " |" for label, row in result["rows"].items()
    ]
    lines += ["", "Each row minus BC within a seed, then mean +- std over the seeds:", ""]
    lines += ["| Method | " + " | ".join(f"{key} - BC" for key in SEED_METRICS) + " |", "|---|" + "---:|" * len(SEED_METRICS)]
    lines += [
        f"| {ROW_LABELS[label]} | " + " | ".join(_cell(row[key], DIGITS[key], signed=True) for key in SEED_METRICS) + " |"
        for label, row in result["minus_bc"].items()
    ]
    protocol = result.get("protocol") or {}
    lines += [
        "",
        f"Each seed: {protocol.get('pieces')} held-out pieces, {describe_dances(protocol)}, {protocol.get('decoding')} decoding.",
    ]
    if result["rows_not_in_every_seed"]:
        lines.append(f"Rows left out (not in every seed's table): {', '.join(result['rows_not_in_every_seed'])}.")
    lines += [f"seed {seed}: {path}" for seed, path in result["metrics_files"].items()]
    return "\n".join(lines)


__all__ = ["SEED_METRICS", "aggregate_seeds", "format_seeds", "seed_recipe", "seed_variation"]
