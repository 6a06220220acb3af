"""Recipes: one YAML file describes a whole run, one section per stage.

```yaml
run_name: tiny          # the run folder is <runs_dir>/<run_name>
runs_dir: runs
seed: 0                 # default seed of every stage
vqvae:                  # fields of the stage's config dataclass
  learning_rate: 3.0e-4
```

`parse_recipe(VQVAETrainingConfig, "vqvae")` turns `scripts/vqvae.py recipes/tiny.yaml
--learning_rate 1e-4` into the stage's config: the section's values replace the dataclass defaults
and command-line flags replace the section's values (`transformers.HfArgumentParser` does the
parsing). Unknown keys are rejected, naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from e3d2_hf.utils import E3D2Error

ConfigT = TypeVar("ConfigT")

# Keys of the recipe's top level that are not stage sections.
RUN_KEYS = ("run_name", "runs_dir", "seed")


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read a recipe with `yaml.safe_load` and check its top level."""
    path = Path(path)
    try:
        recipe = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise E3D2Error(f"{path}: cannot read recipe ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise E3D2Error(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(recipe, dict) or not isinstance(recipe.get("run_name"), str):
        raise E3D2Error(f"{path}: a recipe is a mapping with at least a string 'run_name'")
    for key, value in recipe.items():
        if key not in RUN_KEYS and not isinstance(value, dict):
            raise E3D2Error(f"{path}: top-level key '{key}' is neither a run setting {RUN_KEYS} nor a stage section")
    return recipe


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """Every path of a run folder, in one place: each stage reads its inputs and writes its outputs here."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def data(self) -> Path:
        """Prepared datasets (Arrow) + manifest.json (stage 0)."""
        return self.root / "data"

    @property
    def pose_codes(self) -> Path:
        """The prepared data encoded by the VQ-VAE, cached for the stages after it."""
        return self.root / "pose_codes"

    @property
    def vqvae(self) -> Path:
        return self.root / "vqvae"

    @property
    def bc(self) -> Path:
        """The behaviour-cloning policy (with its vqvae/)."""
        return self.root / "bc"

    @property
    def demos(self) -> Path:
        return self.root / "demos"

    @property
    def demonstrations(self) -> Path:
        """The ranked demonstrations themselves (a `datasets.DatasetDict`)."""
        return self.demos / "demonstrations"

    @property
    def reward(self) -> Path:
        """The reward model (stage 3)."""
        return self.root / "reward"

    @property
    def ppo(self) -> Path:
        """PPO's checkpoints, logs and final policy."""
        return self.root / "ppo"

    @property
    def ppo_policy(self) -> Path:
        """The E3D2 policy PPO made."""
        return self.ppo / "policy"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def dance(self) -> Path:
        """The pipeline's closing dance (BC | E3D2 side by side)."""
        return self.eval / "dance"

    @property
    def timings(self) -> Path:
        """Wall time of every pipeline stage."""
        return self.root / "pipeline.json"


def run_dir_of(recipe: dict[str, Any]) -> Path:
    """The run folder every stage of this recipe reads from and writes to."""
    return Path(recipe.get("runs_dir", "runs")) / recipe["run_name"]


def parse_recipe(config_cls: type[ConfigT], section: str, argv: list[str] | None = None) -> ConfigT:
    """Build `config_cls` from `argv = [RECIPE, --field value ...]` and the recipe's `section`.

    Fields named `run_dir`, `output_dir` and `seed`, when the dataclass has them, default to the
    run folder, `<run folder>/<section>` and the recipe's top-level seed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        raise E3D2Error(f"usage: {Path(sys.argv[0]).name} RECIPE.yaml [--field value ...]")
    recipe_path, overrides = argv[0], argv[1:]
    recipe = load_recipe(recipe_path)
    values = dict(recipe.get(section) or {})
    field_names = {field.name for field in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - field_names)
    if unknown:
        raise E3D2Error(f"{recipe_path}: unknown key '{unknown[0]}' in section '{section}' ({config_cls.__name__} has no such field)")
    run_dir = _overridden_run_dir(overrides) or values.get("run_dir") or run_dir_of(recipe)
    run_dir = Path(run_dir)
    implied = {"run_dir": str(run_dir), "output_dir": str(run_dir / section), "seed": recipe.get("seed")}
    for name, value in implied.items():
        if name in field_names and name not in values and value is not None:
            values[name] = value
    from transformers import HfArgumentParser  # imported on use: `e3d2 --help` loads no torch

    parser = HfArgumentParser(config_cls)
    parser.set_defaults(**values)
    try:
        (config,) = parser.parse_args_into_dataclasses(args=overrides, look_for_args_file=False)
    except SystemExit as exc:  # argparse already printed which value it rejected
        raise E3D2Error(f"{recipe_path}: bad command-line override in {overrides}") from exc
    except ValueError as exc:  # flags that name no field
        raise E3D2Error(f"{recipe_path}: unknown command-line override ({exc})") from exc
    return config


def _overridden_run_dir(overrides: list[str]) -> str | None:
    """`--run_dir X` on the command line moves the stage's default `output_dir` with it."""
    for index, flag in enumerate(overrides):
        if flag == "--run_dir" and index + 1 < len(overrides):
            return overrides[index + 1]
        if flag.startswith("--run_dir="):
            return flag.split("=", 1)[1]
    return None


def run_stage(section: str, config_cls: type[ConfigT], stage: Callable[[ConfigT], Any], argv: list[str] | None = None) -> int:
    """What every `scripts/<stage>.py` does: parse the recipe's section, run the stage, report user errors in one line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        stage(parse_recipe(config_cls, section, argv))
    except E3D2Error as exc:
        print(f"{section}: error: {exc}", file=sys.stderr)
        return 2
    return 0
