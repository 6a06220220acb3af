"""`e3d2 pipeline`: stages chain, finished ones are skipped, a re-run stage redoes what follows, --force redoes all."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from e3d2_hf import pipeline
from e3d2_hf.recipe import parse_recipe
from e3d2_hf.utils import E3D2Error

ROOT = Path(__file__).resolve().parents[1]


class RecordedStage(pipeline.Stage):
    """A stage whose work is writing its done-marker, and noting the call."""

    calls: list = []

    def run(self, recipe: str, flags: list[str]) -> None:
        RecordedStage.calls.append((self.name, flags))
        marker = pipeline.run_dir_of(pipeline.load_recipe(recipe)) / self.done_marker
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("{}")


@pytest.fixture
def fake_stages(monkeypatch, tmp_path):
    """The real stage list, each stage's work replaced by a `RecordedStage`'s."""
    RecordedStage.calls = []
    fakes = tuple(RecordedStage(**{field: getattr(stage, field) for field in stage.__dataclass_fields__}) for stage in pipeline.STAGES)
    monkeypatch.setattr(pipeline, "STAGES", fakes)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(f"run_name: toy\nruns_dir: {tmp_path / 'runs'}\n")
    return recipe, RecordedStage.calls


def test_stages_run_once_then_skip_and_a_rerun_redoes_what_follows(fake_stages, tmp_path):
    recipe, calls = fake_stages
    stages = [name for name in pipeline.STAGE_NAMES if name != "dance"]
    result = pipeline.run_pipeline(str(recipe), stages=stages)
    assert [name for name, _ in calls] == stages and all(flags == [] for _, flags in calls)
    assert set(result["timings"]) == set(stages)
    assert json.loads((tmp_path / "runs" / "toy" / "pipeline.json").read_text()).keys() == set(stages)

    calls.clear()
    pipeline.run_pipeline(str(recipe), stages=stages)
    assert calls == []  # all done: nothing runs again

    (tmp_path / "runs" / "toy" / "demos" / "summary.json").unlink()
    pipeline.run_pipeline(str(recipe), stages=stages)
    assert [name for name, _ in calls] == ["demos", "reward", "ppo", "eval"]  # the missing stage and everything after it
    assert dict(calls)["ppo"] == ["--overwrite_output_dir", "true"]  # a stage that refuses to overwrite is told to

    calls.clear()
    pipeline.run_pipeline(str(recipe), stages=stages, force=True)
    assert [name for name, _ in calls] == stages


def test_bad_requests_are_refused(fake_stages, tmp_path):
    recipe, calls = fake_stages
    with pytest.raises(E3D2Error, match="unknown stage"):
        pipeline.run_pipeline(str(recipe), stages=["prepare", "train"])
    with pytest.raises(E3D2Error, match="no such music file"):
        pipeline.run_pipeline(str(recipe), music=str(tmp_path / "missing.mp3"))
    assert calls == []


def test_default_music_ships_in_a_wheel():
    pytest.importorskip("immich_memories_music", reason="the music extra is not installed (pip install -e .[music])")
    path = pipeline.default_music()
    assert path.is_file() and path.suffix == ".opus"


@pytest.mark.parametrize("recipe", ["tiny.yaml", "e3d2.yaml"])
def test_every_stage_of_the_shipped_recipes_parses(recipe):
    for stage in pipeline.STAGES:
        config_class = getattr(importlib.import_module(stage.module), stage.config)
        parsed = parse_recipe(config_class, stage.name, [str(ROOT / "recipes" / recipe)])
        assert Path(parsed.run_dir).name == recipe.removesuffix(".yaml"), stage.name
        assert callable(getattr(importlib.import_module(stage.module), stage.function))
