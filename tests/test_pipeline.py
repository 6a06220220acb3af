"""`e3d2 pipeline`: stages chain, finished ones are skipped, a re-run stage redoes what follows, --force redoes all."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from e3d2_hf import pipeline
from e3d2_hf.cli import main
from e3d2_hf.data.synthetic import GENRES, SAMPLE_RATE, compose_music
from e3d2_hf.recipe import parse_recipe
from e3d2_hf.utils import E3D2Error

ROOT = Path(__file__).resolve().parents[1]


class RecordedStage(pipeline.Stage):
    """A stage whose work is writing its done-marker, and noting the call; like the real ones, it refuses leftovers unless told."""

    calls: list = []

    def run(self, recipe: str, flags: list[str]) -> None:
        RecordedStage.calls.append((self.name, flags))
        marker = pipeline.run_dir_of(pipeline.load_recipe(recipe)) / self.done_marker
        if marker.parent.exists() and self.rerun_flags and flags != list(self.rerun_flags):
            raise E3D2Error(f"{marker.parent}: earlier outputs here, and no {self.rerun_flags}")  # as demos and ppo refuse
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
    assert [name for name, _ in calls] == stages
    assert dict(calls)["ppo"] == dict(calls)["demos"] == ["--overwrite_output_dir", "true"] and dict(calls)["bc"] == []
    assert set(result["timings"]) == set(stages)
    assert json.loads((tmp_path / "runs" / "toy" / "pipeline.json").read_text()).keys() == set(stages)

    calls.clear()
    pipeline.run_pipeline(str(recipe), stages=stages)
    assert calls == []  # all done: nothing runs again

    (tmp_path / "runs" / "toy" / "demos" / "summary.json").unlink()
    pipeline.run_pipeline(str(recipe), stages=stages)
    assert [name for name, _ in calls] == ["demos", "reward", "ppo", "eval"]  # the unfinished stage and everything after it

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


# ----------------------------------------------------------------------------------------------
# The real chain, at test scale, on the embedded synthetic default
# ----------------------------------------------------------------------------------------------
TEST_SCALE = {
    "prepare": {"synthetic": 9, "synthetic_heldout": 4},
    "vqvae": {"channels": 16, "codebook_dim": 16, "codebook_size": 32, "residual_depth": 1, "window": 48, "window_stride": 48,
              "per_device_train_batch_size": 16, "learning_rate": 3e-3, "codebook_decay": 0.9, "num_train_epochs": 2,
              "root_window_stride": 48, "root_per_device_train_batch_size": 16, "root_num_train_epochs": 1, "use_cpu": True, "disable_tqdm": True},
    "bc": {"codebook_size": 32, "hidden_size": 32, "num_hidden_layers": 2, "num_base_layers": 1, "num_attention_heads": 4,
           "window": 30, "window_stride": 4, "num_train_epochs": 1, "use_cpu": True, "disable_tqdm": True, "report_to": "none"},
    "demos": {"noise_levels": [0.02, 0.5, 1.0], "demos_per_music": 2, "disable_tqdm": True},
    "reward": {"codebook_size": 32, "hidden_size": 32, "num_attention_heads": 4, "num_train_pairs": 256, "num_eval_pairs": 64,
               "num_train_epochs": 1, "use_cpu": True, "disable_tqdm": True, "report_to": "none"},
    "ppo": {"max_steps": 2, "rollout_segments": 16, "train_batch_size": 8, "per_device_rollout_batch_size": 16, "value_num_layers": 1,
            "eval_steps": 1, "eval_seconds": 4.0, "save_steps": 1, "report_to": "none"},
    "eval": {"eval_seconds": 4.0},
}  # fmt: skip


def test_the_whole_pipeline_runs_on_the_synthetic_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("E3D2_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "chain.yaml"
    recipe.write_text(yaml.safe_dump({"run_name": "chain", "runs_dir": str(tmp_path / "runs"), "seed": 0, **TEST_SCALE}))
    song = tmp_path / "song.wav"
    soundfile.write(song, compose_music(GENRES[1], 100.0, 3.0, np.random.default_rng(1))[0], SAMPLE_RATE)

    assert main(["pipeline", str(recipe), "--music", str(song)]) == 0
    run_dir = tmp_path / "runs" / "chain"
    table = json.loads((run_dir / "eval" / "metrics.json").read_text())
    for row in ("ground_truth", "vqvae", "bc", "e3d2", "random"):
        assert {"FID_k", "FID_g", "Div_k", "Div_g", "BAS", "PFC", "ci95"} <= set(table[row]), row
    assert set(table["noise_levels"]) == {"0.02", "0.5", "1"} and set(table["seen_unseen"]) == {"seen", "unseen"}
    assert 0.0 <= table["reward_model"]["pair_accuracy_unseen"] <= 1.0
    assert (run_dir / "eval" / "metrics.md").read_text().startswith("| Method |")
    assert sorted(path.name for path in (run_dir / "eval" / "dance").iterdir()) == [
        "song.mp4", "song_bc.bvh", "song_bc.npz", "song_ppo.bvh", "song_ppo.npz"
    ]  # fmt: skip
    printed = capsys.readouterr().out
    assert "| E3D2 |" in printed and str(run_dir / "eval" / "dance" / "song.mp4") in printed
    assert set(json.loads((run_dir / "pipeline.json").read_text())) == set(pipeline.STAGE_NAMES)

    assert main(["pipeline", str(recipe), "--music", str(song)]) == 0  # everything done: only the report
    assert capsys.readouterr().out.count("done already") == len(pipeline.STAGE_NAMES)
