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

A derived section starts from another section's values (`DERIVED_SECTIONS`): `ppo_beat:` is the
`ppo:` section with Bailando's hand-designed reward (the paper's Table 2 ablation), its own keys
replacing the inherited ones, its output folder its own (RUN/ppo_beat). An optional stage
(`OPTIONAL_STAGES`) runs only when its recipe has its section.

A stage that finishes records the parsed section it ran with beside its output
(`RUN/<folder>/stage_recipe.json`, `record_stage`), together with a hash of the records of the
stages before it (the previous one, and any optional ones in between); `stage_change` then says why
a stage must run again (its section changed, or a stage upstream ran since), which is how
`e3d2 pipeline` notices an edited recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar

import yaml

from e3d2_hf.utils import E3D2Error, atomic_file, finite_float, run_lock

ConfigT = TypeVar("ConfigT")

# Keys of the recipe's top level that are not stage sections.
# Keys of older recipes and what took their place, named in the error that refuses them.
RENAMED_KEYS = {
    "eval_seconds": "eval: dance_seconds (null: whole pieces) and fid_div_seconds; ppo: eval_dance_seconds and eval_fid_div_seconds",
}
RUN_KEYS = ("run_name", "runs_dir", "seed")
# The stages in the order they run, each with the run folder's sub-folder it writes (where its record sits).
STAGE_FOLDERS = {
    "prepare": "data", "vqvae": "vqvae", "bc": "bc", "demos": "demos", "reward": "reward", "ppo": "ppo", "ppo_beat": "ppo_beat", "eval": "eval",
}  # fmt: skip
# Stages that run only when the recipe has their section; the stage after one depends on it only when it ran.
OPTIONAL_STAGES = frozenset({"ppo_beat"})
# section -> (the section it starts from, values it fixes): the beat ablation is PPO with the hand-designed reward.
DERIVED_SECTIONS = {"ppo_beat": ("ppo", {"reward": "beat"})}
# Keys a derived section does not inherit: its outputs go to its own folder.
NOT_INHERITED = frozenset({"output_dir"})
STAGE_RECORD = "stage_recipe.json"
# Fields that steer how a stage runs, not what it makes: changing them is no reason to run it again.
HOW_IT_RUNS = frozenset({"overwrite_output_dir", "resume", "disable_tqdm", "feature_threads"})


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
    def ppo_beat(self) -> Path:
        """The ablation of paper Table 2: PPO with the hand-designed beat reward (the `ppo_beat:` section)."""
        return self.root / "ppo_beat"

    @property
    def ppo_beat_policy(self) -> Path:
        return self.ppo_beat / "policy"

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
    run folder, `<run folder>/<section>` and the recipe's top-level seed. A derived section
    (`DERIVED_SECTIONS`) starts from its base section's values and may not change the ones it fixes.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(recipe_help(config_cls, section))
        raise SystemExit(0)
    if not argv or argv[0].startswith("-"):
        raise E3D2Error(f"usage: {Path(sys.argv[0]).name} RECIPE.yaml [--field value ...] (--help lists the fields)")
    recipe_path, overrides = argv[0], argv[1:]
    recipe = load_recipe(recipe_path)
    field_names = {field.name for field in dataclasses.fields(config_cls)}
    base, fixed = DERIVED_SECTIONS.get(section, (None, {}))
    values, where = {}, {}
    for source in filter(None, (base, section)):
        own = dict(recipe.get(source) or {})
        unknown = sorted(set(own) - field_names)
        if unknown:
            hint = f"; it was renamed: {RENAMED_KEYS[unknown[0]]}" if unknown[0] in RENAMED_KEYS else ""
            raise E3D2Error(f"{recipe_path}: unknown key '{unknown[0]}' in section '{source}' ({config_cls.__name__} has no such field{hint})")
        if source == base:
            own = {name: value for name, value in own.items() if name not in NOT_INHERITED} | fixed
        refused = [name for name in own if source == section and name in fixed and own[name] != fixed[name]]
        if refused:
            name = refused[0]
            raise E3D2Error(f"{recipe_path}: section '{section}', key '{name}': fixed to {fixed[name]!r} in this section, got {own[name]!r}")
        values.update(own)
        where.update({name: f"section '{source}', key '{name}'" for name in own})
    run_dir = _overridden_run_dir(overrides) or values.get("run_dir") or run_dir_of(recipe)
    run_dir = Path(run_dir)
    implied = {"run_dir": str(run_dir), "output_dir": str(run_dir / section), "seed": recipe.get("seed")}
    for name, value in implied.items():
        if name in field_names and name not in values and value is not None:
            values[name] = value
            where[name] = f"top-level key '{name}'"
    from transformers import HfArgumentParser  # imported on use: `e3d2 --help` loads no torch

    parser = HfArgumentParser(config_cls)
    actions = _field_actions(parser)

    def override_error(message: str) -> NoReturn:  # argparse's `error` would print the whole usage and exit
        raise E3D2Error(f"{recipe_path}: command-line override: {message}")

    parser.error = override_error  # type: ignore[method-assign]
    hints = _type_hints(config_cls)
    values = {name: _checked_value(actions.get(name), hints.get(name), value, f"{recipe_path}: {where[name]}") for name, value in values.items()}
    parser.set_defaults(**values)
    try:
        (config,) = parser.parse_args_into_dataclasses(args=overrides, look_for_args_file=False)
    except ValueError as exc:  # flags that name no field
        raise E3D2Error(f"{recipe_path}: unknown command-line override ({exc})") from exc
    for name, value in fixed.items():
        if getattr(config, name) != value:
            raise E3D2Error(f"{recipe_path}: command-line override: {name} is fixed to {value!r} in stage '{section}', got {getattr(config, name)!r}")
    return config


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else "(required)"


def _type_name(annotation: Any) -> str:
    """A field's type as its annotation reads (HfArgumentParser replaces the annotation strings by the types themselves)."""
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def recipe_help(config_cls: type, section: str) -> str:
    """`scripts/<stage>.py --help`: the stage's own fields first, then the `TrainingArguments` fields it sets, then the rest.

    Every field with its type, default and help text; each is a key of the recipe's section and a `--field value` flag.
    """
    import textwrap

    from transformers import TrainingArguments

    trainer_fields = {field.name: field for field in dataclasses.fields(TrainingArguments)} if issubclass(config_cls, TrainingArguments) else {}
    groups: dict[str, list[str]] = {
        f"fields of the `{section}` section ({config_cls.__module__}.{config_cls.__name__})": [],
        "TrainingArguments fields this stage gives its own default": [],
        "the other TrainingArguments fields (transformers' defaults)": [],
    }
    titles = list(groups)
    for field in dataclasses.fields(config_cls):
        if not field.init or field.name.startswith("_"):
            continue
        default = _field_default(field)
        base = trainer_fields.get(field.name)
        group = titles[0] if base is None else titles[1] if repr(_field_default(base)) != repr(default) else titles[2]
        default_text = getattr(default, "value", default)  # enums as a recipe writes them
        help_text = " ".join(str(field.metadata.get("help", "")).split())
        groups[group].append(f"  --{field.name} {_type_name(field.type)} (default: {default_text!r})")
        if help_text:
            groups[group].append(textwrap.fill(help_text, 100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    description = " ".join((config_cls.__doc__ or "").strip().split("\n\n")[0].split())
    lines = [f"usage: {Path(sys.argv[0]).name} RECIPE.yaml [--field value ...]", "", description]
    for title, entries in groups.items():
        if entries:
            lines += ["", f"{title}:", *entries]
    return "\n".join(lines)
def _field_actions(parser: Any) -> dict[str, Any]:
    """Each field's argparse action, its float types replaced by the finite-number check (recipe values and flags alike)."""
    actions = {}
    for action in parser._actions:
        if f"--{action.dest}" in action.option_strings:
            if action.type is float:
                action.type = finite_float
            actions[action.dest] = action
    return actions


def _type_hints(config_cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_cls)
    except Exception:  # a hint that does not resolve: values are still converted by argparse's types
        return {}


def _checked_value(action: Any, hint: Any, value: Any, where: str) -> Any:
    """A recipe value converted as its command-line flag would be; `E3D2Error` naming `where` when it does not fit.

    argparse converts only string defaults, so a YAML number, list or null would otherwise reach
    the dataclass unchecked (3.5 in an int field, `.nan` in a float one).
    """
    if action is None or action.type is None:
        return value
    admits = {typing.get_origin(kind) or kind for kind in (hint, *typing.get_args(hint))} if hint is not None else None
    if value is None:
        if admits is not None and type(None) not in admits:
            raise E3D2Error(f"{where}: needs a value, got null")
        return value
    if action.nargs in ("+", "*"):
        if not isinstance(value, list):
            raise E3D2Error(f"{where}: needs a list, got {value!r}")
        return [_converted(action, item, where) for item in value]
    if isinstance(value, (list, dict)):
        if admits is not None and not admits & {list, dict}:
            raise E3D2Error(f"{where}: needs a single value, got {value!r}")
        return value
    return _converted(action, value, where)


def _converted(action: Any, value: Any, where: str) -> Any:
    try:
        converted = action.type(value if isinstance(value, (str, bool)) else str(value))
    except argparse.ArgumentTypeError as exc:
        raise E3D2Error(f"{where}: {exc}") from None
    except (TypeError, ValueError):
        raise E3D2Error(f"{where}: {value!r} is not a valid {getattr(action.type, '__name__', 'value')}") from None
    if action.choices is not None and converted not in action.choices:
        raise E3D2Error(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return converted


def _overridden_run_dir(overrides: list[str]) -> str | None:
    """`--run_dir X` on the command line moves the stage's default `output_dir` with it."""
    for index, flag in enumerate(overrides):
        if flag == "--run_dir" and index + 1 < len(overrides):
            return overrides[index + 1]
        if flag.startswith("--run_dir="):
            return flag.split("=", 1)[1]
    return None


def stage_values(config: Any) -> dict[str, Any]:
    """A parsed section as JSON values, without what only steers how it runs (`HOW_IT_RUNS`) and without tokens."""
    values = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    values = json.loads(json.dumps(values, sort_keys=True, default=str))
    return {key: value for key, value in values.items() if key not in HOW_IT_RUNS and "token" not in key}


def _record_path(run_dir: str | os.PathLike, section: str) -> Path:
    return Path(run_dir) / STAGE_FOLDERS[section] / STAGE_RECORD


def _upstream_stages(section: str) -> list[str]:
    """The stages whose records `section` depends on: the optional ones just before it and the first required one before those."""
    order = list(STAGE_FOLDERS)
    upstream = []
    for name in reversed(order[: order.index(section)]):
        upstream.append(name)
        if name not in OPTIONAL_STAGES:
            break
    return upstream


def _upstream_digest(run_dir: str | os.PathLike, section: str) -> str | None:
    """SHA-256 of the record of the stage before `section` (which holds its own upstream's), or of the records'
    digests when optional stages in between ran too: None for the first stage, or when there is no record."""
    paths = [_record_path(run_dir, name) for name in _upstream_stages(section)]
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths if path.is_file()]
    if len(digests) <= 1:
        return digests[0] if digests else None
    return hashlib.sha256(" ".join(digests).encode()).hexdigest()


def record_stage(config: Any, section: str, run_dir: str | os.PathLike) -> Path:
    """Write `RUN/<folder>/stage_recipe.json`: the section `config` the stage just ran with, when, and its upstream's record hash.

    The time makes every run's record new, so the stages after it see that it ran again even with the same recipe.
    """
    record = {
        "stage": section, "values": stage_values(config), "upstream_sha256": _upstream_digest(run_dir, section),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished_ns": time.time_ns(),
    }  # fmt: skip
    path = _record_path(run_dir, section)
    with atomic_file(path, "w") as handle:
        handle.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def stage_change(config: Any, section: str, run_dir: str | os.PathLike) -> str | None:
    """Why the stage of `section` must run again with `config`, or None when its record says it ran with exactly this."""
    path = _record_path(run_dir, section)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"no record of the recipe it ran with ({path})"
    before, now = record.get("values", {}), stage_values(config)
    changed = sorted(key for key in {*before, *now} if before.get(key) != now.get(key))
    if changed:
        shown = ", ".join(f"{key}: {json.dumps(before.get(key))} -> {json.dumps(now.get(key))}" for key in changed[:4])
        return f"its recipe section changed ({shown}{', ...' if len(changed) > 4 else ''})"
    if record.get("upstream_sha256") != _upstream_digest(run_dir, section):
        ran = [name for name in _upstream_stages(section) if _record_path(run_dir, name).is_file()] or _upstream_stages(section)[-1:]
        return f"{' or '.join(ran)} ran again since"
    return None


def run_stage(section: str, config_cls: type[ConfigT], stage: Callable[[ConfigT], Any], argv: list[str] | None = None) -> int:
    """What every `scripts/<stage>.py` does: parse the recipe's section, run the stage holding the run folder's
    lock (`run_lock`: one writer per run folder), record it, report user errors in one line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = parse_recipe(config_cls, section, argv)
        with run_lock(config.run_dir) if hasattr(config, "run_dir") else contextlib.nullcontext():
            stage(config)
            if int(os.environ.get("RANK", "0") or 0) == 0 and hasattr(config, "run_dir") and section in STAGE_FOLDERS:  # once, on the main process
                record_stage(config, section, config.run_dir)
    except E3D2Error as exc:
        print(f"{section}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{section}: interrupted", file=sys.stderr)
        return 130
    return 0
