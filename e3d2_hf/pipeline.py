"""The whole E3D2 pipeline from one recipe, stage after stage, in one command.

    e3d2 pipeline recipes/tiny.yaml [--music song.mp3] [--force] [--stages prepare vqvae ...]

prepare -> vqvae -> bc -> demos -> reward -> ppo -> [ppo_beat] -> eval -> dance. Each stage is the
library function its `scripts/<stage>.py` calls, on the recipe's section (so a stage run here and one
run by its script are the same). ppo_beat, the paper's Table 2 ablation (PPO with the hand-designed
beat reward into RUN/ppo_beat), runs only when the recipe has a `ppo_beat:` section. A stage whose output is already in the run folder, made with the same recipe section
after the same upstream stages (its `stage_recipe.json`, `e3d2_hf.recipe.stage_change`), is skipped,
so a re-run continues where the last one stopped; a stage whose section was edited runs again, and
the run says why. Once a stage runs, every later one runs again (its inputs changed). `--force`
redoes them all. The last stage dances the BC and E3D2 policies side by side to a real piece of
music (`--music`, by default a track of the `immich-memories-music` package, MIT) into
RUN/eval/dance. At the end the paper's Table 1 for the run is printed with where the dance video
and PPO's training curves are, and the wall time of every stage goes to RUN/pipeline.json.

`run_seeds` (scripts/seeds.py) runs the pipeline of a recipe once per seed and writes mean +- std of
Table 1 over the seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e3d2_hf.recipe import OPTIONAL_STAGES, RunLayout, load_recipe, parse_recipe, record_stage, run_dir_of, stage_change
from e3d2_hf.trainers.ppo_curves import CURVES_FILE
from e3d2_hf.utils import E3D2Error, atomic_file, existing_file, positive_float, run_lock

logger = logging.getLogger(__name__)

DEFAULT_TRACK = ("happy", "happy_electronic_1.opus")  # 123 bpm, inside the synthetic genres' 84-132 bpm


@dataclass(frozen=True)
class Stage:
    """One stage: the library function its script calls, on the recipe section of its name, and the file that means it is done."""

    name: str
    module: str
    config: str
    function: str
    done_marker: str
    rerun_flags: tuple[str, ...] = ()

    def parse(self, recipe: str, flags: list[str]) -> Any:
        """`parse_recipe(module.config, name, [recipe, *flags])`: the stage's config, importing the stage only now."""
        import importlib

        return parse_recipe(getattr(importlib.import_module(self.module), self.config), self.name, [recipe, *flags])

    def run(self, recipe: str, flags: list[str]) -> Any:
        """`module.function(parse(recipe, flags))`."""
        import importlib

        return getattr(importlib.import_module(self.module), self.function)(self.parse(recipe, flags))


OVERWRITE = ("--overwrite_output_dir", "true")
STAGES = (
    Stage("prepare", "e3d2_hf.data.prepare", "PrepareConfig", "prepare_from_config", "data/manifest.json"),
    Stage("vqvae", "e3d2_hf.trainers.vqvae", "VQVAETrainingConfig", "train_vqvae", "vqvae/eval.json"),
    Stage("bc", "e3d2_hf.trainers.bc", "BCTrainingConfig", "train_bc", "bc/diagnostics.json"),
    Stage("demos", "e3d2_hf.trainers.demos", "DemosConfig", "generate_demonstrations", "demos/summary.json", OVERWRITE),
    Stage("reward", "e3d2_hf.trainers.reward_model", "RewardTrainingConfig", "train_reward_model", "reward/diagnostics.json"),
    Stage("ppo", "e3d2_hf.trainers.ppo", "PPOConfig", "train_ppo", "ppo/summary.json", OVERWRITE),
    Stage("ppo_beat", "e3d2_hf.trainers.ppo", "PPOConfig", "train_ppo", "ppo_beat/summary.json", OVERWRITE),
    Stage("eval", "e3d2_hf.evaluation.table_1", "EvalConfig", "evaluate_run", "eval/metrics.json"),
)
STAGE_NAMES = [stage.name for stage in STAGES] + ["dance"]


def default_music() -> Path:
    """The pipeline's default song: a track that ships inside the `immich-memories-music` wheel."""
    try:
        from immich_memories_music import tracks_dir
    except ImportError as exc:
        raise E3D2Error("no --music given and the default track's package is missing: pip install immich-memories-music") from exc
    path = tracks_dir().joinpath(*DEFAULT_TRACK)
    if not path.is_file():
        raise E3D2Error(f"{path}: the default track is missing from immich-memories-music; pass --music FILE")
    return path


def dance_stage(run: RunLayout, music: Path, seconds: float | None) -> Path:
    """BC and E3D2 side by side to `music`, with npz and BVH of each, into RUN/eval/dance; returns the video."""
    from e3d2_hf.inference import write_dances

    models = [str(run.bc)] + ([str(run.ppo_policy)] if (run.ppo_policy / "config.json").is_file() else [])
    dances, written = write_dances(models, music, run.dance, seconds=seconds, progress=True)
    print(f"{len(dances)} dance(s) of {dances[0].joints.shape[0] / dances[0].fps:.1f} s for {music}:")
    for path in written:
        print(f"  {path}")
    return run.dance / f"{music.stem}.mp4"


def run_pipeline(recipe: str, **options: Any) -> dict[str, Any]:
    """Run (or continue) every stage of `recipe`, the only writer of its run folder (`run_lock`); returns
    {"timings": ..., "table": ..., "video": ...}. Options as `_run_pipeline`."""
    with run_lock(run_dir_of(load_recipe(recipe))):
        return _run_pipeline(recipe, **options)


def _run_pipeline(recipe: str, *, music: str | None = None, seconds: float | None = None, force: bool = False, stages: list[str] | None = None) -> dict[str, Any]:
    sections = load_recipe(recipe)
    run = RunLayout(run_dir_of(sections))
    selected = stages or STAGE_NAMES
    unknown = sorted(set(selected) - set(STAGE_NAMES))
    if unknown:
        raise E3D2Error(f"pipeline: unknown stage(s) {unknown}; the stages are {STAGE_NAMES}")
    missing = [name for name in OPTIONAL_STAGES if name in (stages or []) and name not in sections]
    if missing:
        raise E3D2Error(f"{recipe}: stage {missing[0]} asked for, but the recipe has no '{missing[0]}' section")
    runnable = [stage for stage in STAGES if stage.name in selected and (stage.name not in OPTIONAL_STAGES or stage.name in sections)]
    music_path = Path(music) if music else (default_music() if "dance" in selected else None)
    if music_path is not None:
        existing_file(music_path, "music file")
    timings_file = run.timings
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.is_file() and not force else {}
    redo = "--force" if force else None  # why every stage from here on runs again
    total = len(runnable) + ("dance" in selected)
    for number, stage in enumerate(runnable, start=1):
        flags = list(stage.rerun_flags)  # a stage the pipeline runs replaces what an earlier, unfinished one left
        config = stage.parse(recipe, flags)
        done = (run.root / stage.done_marker).is_file()
        why = redo if done and redo else stage_change(config, stage.name, run.root) if done else None
        if done and why is None:
            print(f"[{number}/{total}] {stage.name}: done already ({run.root / stage.done_marker}); --force redoes it", flush=True)
            continue
        print(f"[{number}/{total}] {stage.name}: running again: {why}" if done else f"[{number}/{total}] {stage.name} ...", flush=True)
        started = time.perf_counter()
        stage.run(recipe, flags)
        record_stage(config, stage.name, run.root)
        timings[stage.name] = round(time.perf_counter() - started, 1)
        print(f"[{number}/{total}] {stage.name}: done in {timings[stage.name]:.1f} s", flush=True)
        redo = f"{stage.name} ran again"  # every later stage read what this one wrote
        _save_timings(timings_file, timings)
    video = None
    if "dance" in selected:
        video = run.dance / f"{music_path.stem}.mp4"
        if video.is_file() and not redo:
            print(f"[{total}/{total}] dance: done already ({video})", flush=True)
        else:
            print(f"[{total}/{total}] dance to {music_path} ...", flush=True)
            started = time.perf_counter()
            video = dance_stage(run, music_path, seconds)
            timings["dance"] = round(time.perf_counter() - started, 1)
            _save_timings(timings_file, timings)
    table = _report(run, video)
    return {"timings": timings, "table": table, "video": str(video) if video else None}


def _save_timings(path: Path, timings: dict[str, float]) -> None:
    with atomic_file(path, "w") as handle:
        handle.write(json.dumps(timings, indent=2) + "\n")


def _report(run: RunLayout, video: Path | None) -> dict[str, Any] | None:
    """Print Table 1 of the run (RUN/eval/metrics.json) and where the video is."""
    from e3d2_hf.evaluation.table_1 import METRICS_FILE, format_table_1

    metrics_file = run.eval / METRICS_FILE
    table = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    print()
    if table is not None:
        print(f"Table 1 on held-out music ({metrics_file}):\n")
        print(format_table_1(table))
    curves = run.ppo / CURVES_FILE
    if curves.is_file():
        print(f"\nPPO's training curves (learned return, KL and beta, entropy, explained variance, held-out FID_k, Div_k, BAS): {curves}")
    if video is not None:
        print(f"The dance (BC | E3D2, with the music): {video}")
    return table


SEEDS_FILE, SEEDS_TABLE = "seeds.json", "seeds.md"


def seeds_dir_of(recipe: dict[str, Any]) -> Path:
    """Where the seeds of a recipe keep their recipes and the aggregate: <runs_dir>/<run_name>_seeds."""
    return Path(recipe.get("runs_dir", "runs")) / f"{recipe['run_name']}_seeds"


def run_seeds(recipe: str, seeds: list[int], *, vary_data: bool = False) -> dict[str, Any]:
    """The pipeline of `recipe` once per seed, each into its own run folder (`e3d2_hf.evaluation.seeds.seed_recipe`),
    then mean +- std of every Table 1 metric over the seeds -> <runs_dir>/<run_name>_seeds/seeds.json and seeds.md.

    Each seed's recipe is written to <run_name>_seeds/recipes/ and its pipeline skips what is done, so a
    killed run continues; the closing dance is left out. Returns the aggregate.
    """
    from e3d2_hf.evaluation.seeds import aggregate_seeds, format_seeds, seed_recipe, seed_variation
    from e3d2_hf.evaluation.table_1 import METRICS_FILE

    if len(set(seeds)) != len(seeds) or not seeds:
        raise E3D2Error(f"seeds: give distinct seeds, got {seeds}")
    base = load_recipe(recipe)
    out = seeds_dir_of(base)
    metrics_files = {}
    for seed in seeds:
        derived = seed_recipe(base, seed, vary_data=vary_data, where=recipe)
        path = out / "recipes" / f"{derived['run_name']}.yaml"
        with atomic_file(path, "w") as handle:
            handle.write(f"# {recipe} with seed {seed} (scripts/seeds.py)\n" + yaml.safe_dump(derived, sort_keys=False))
        print(f"=== seed {seed}: {run_dir_of(derived)} ({path})", flush=True)
        stages = [name for name in STAGE_NAMES if name != "dance" and (name not in OPTIONAL_STAGES or name in derived)]
        run_pipeline(str(path), stages=stages)
        metrics_files[seed] = RunLayout(run_dir_of(derived)).eval / METRICS_FILE
    result = aggregate_seeds(metrics_files, seed_variation(base, vary_data))
    with atomic_file(out / SEEDS_FILE, "w") as handle:
        handle.write(json.dumps(result, indent=2) + "\n")
    with atomic_file(out / SEEDS_TABLE, "w") as handle:
        handle.write(format_seeds(result) + "\n")
    print(f"\n{format_seeds(result)}\n\n-> {out / SEEDS_FILE}, {out / SEEDS_TABLE}")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", default="recipes/tiny.yaml", help="the run's recipe (default: recipes/tiny.yaml)")
    parser.add_argument("--music", default=None, help="music for the final dance (default: a track of immich-memories-music)")
    parser.add_argument("--seconds", type=positive_float, default=None, help="dance to the first S seconds of the music only")
    parser.add_argument("--force", action="store_true", help="redo every stage, even those already done")
    parser.add_argument("--stages", nargs="+", choices=STAGE_NAMES, default=None, help="run only these stages (default: all)")


def run(args: argparse.Namespace) -> int:
    run_pipeline(args.recipe, music=args.music, seconds=args.seconds, force=args.force, stages=args.stages)
    return 0


__all__ = ["STAGES", "STAGE_NAMES", "default_music", "run_pipeline", "run_seeds", "seeds_dir_of"]
