"""`e3d2 pipeline`: stages chain, finished ones are skipped, a re-run stage redoes what follows, --force redoes all."""

from __future__ import annotations

import importlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from e3d2_hf import pipeline
from e3d2_hf.cli import main
from e3d2_hf.data.synthetic import GENRES, SAMPLE_RATE, compose_music
from e3d2_hf.trainers.bc import BCTrainingConfig
from e3d2_hf.recipe import STAGE_FOLDERS, STAGE_RECORD, parse_recipe, run_stage
from e3d2_hf.utils import E3D2Error

from conftest import one_error_line

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


# Every stage but the closing dance and the beat ablation, which the toy recipe has no section for.
CORE_STAGES = [name for name in pipeline.STAGE_NAMES if name not in ("dance", "ppo_beat")]


def test_stages_run_once_then_skip_and_a_rerun_redoes_what_follows(fake_stages, tmp_path):
    recipe, calls = fake_stages
    stages = CORE_STAGES
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


def test_an_edited_recipe_section_reruns_that_stage_and_those_after_it(fake_stages, tmp_path, capsys):
    recipe, calls = fake_stages
    stages = CORE_STAGES
    run = tmp_path / "runs" / "toy"
    pipeline.run_pipeline(str(recipe), stages=stages)
    assert all((run / STAGE_FOLDERS[name] / STAGE_RECORD).is_file() for name in stages)

    calls.clear()
    recipe.write_text(recipe.read_text() + "reward:\n  num_train_pairs: 128\n")  # one line of the recipe changed
    capsys.readouterr()
    pipeline.run_pipeline(str(recipe), stages=stages)
    assert [name for name, _ in calls] == ["reward", "ppo", "eval"]
    printed = capsys.readouterr().out
    assert "[5/7] reward: running again: its recipe section changed (num_train_pairs: 30000 -> 128)" in printed
    assert "[6/7] ppo: running again: reward ran again" in printed and "[4/7] demos: done already" in printed

    calls.clear()
    assert run_stage("bc", BCTrainingConfig, lambda config: None, [str(recipe), "--learning_rate", "1e-3"]) == 0  # as scripts/bc.py
    pipeline.run_pipeline(str(recipe), stages=stages)  # the script recorded its override: the recipe's value differs
    assert [name for name, _ in calls] == ["bc", "demos", "reward", "ppo", "eval"]
    assert "bc: running again: its recipe section changed (learning_rate: 0.001 -> 0.0003)" in capsys.readouterr().out

    calls.clear()
    (run / "vqvae" / STAGE_RECORD).unlink()  # done, but with no record of its recipe (an older run): not trusted
    pipeline.run_pipeline(str(recipe), stages=["vqvae", "bc"])
    assert [name for name, _ in calls] == ["vqvae", "bc"] and "vqvae: running again: no record of the recipe it ran with" in capsys.readouterr().out

    calls.clear()
    (run / "demos" / STAGE_RECORD).write_text((run / "demos" / STAGE_RECORD).read_text())  # untouched
    pipeline.run_pipeline(str(recipe), stages=["demos"])  # bc ran again (above) after demos last ran
    assert [name for name, _ in calls] == ["demos"] and "demos: running again: bc ran again since" in capsys.readouterr().out


def test_the_beat_ablation_runs_with_its_section_between_ppo_and_eval(fake_stages, tmp_path, capsys):
    recipe, calls = fake_stages
    run = tmp_path / "runs" / "toy"
    every = [name for name in pipeline.STAGE_NAMES if name != "dance"]
    with pytest.raises(E3D2Error, match=f"{recipe}: stage ppo_beat asked for, but the recipe has no 'ppo_beat' section"):
        pipeline.run_pipeline(str(recipe), stages=every)
    pipeline.run_pipeline(str(recipe), stages=CORE_STAGES)
    assert not (run / "ppo_beat").exists()

    calls.clear()
    recipe.write_text(recipe.read_text() + "ppo:\n  max_steps: 40\nppo_beat:\n  max_steps: 20\n")
    capsys.readouterr()
    pipeline.run_pipeline(str(recipe), stages=every)
    assert [name for name, _ in calls] == ["ppo", "ppo_beat", "eval"] and dict(calls)["ppo_beat"] == ["--overwrite_output_dir", "true"]
    printed = capsys.readouterr().out
    assert "[7/8] ppo_beat ..." in printed and "[8/8] eval: running again: ppo_beat ran again" in printed
    record = json.loads((run / "ppo_beat" / STAGE_RECORD).read_text())["values"]
    assert (record["reward"], record["max_steps"], record["output_dir"]) == ("beat", 20, str(run / "ppo_beat"))

    calls.clear()
    pipeline.run_pipeline(str(recipe), stages=every)
    assert calls == []
    (run / "ppo_beat" / STAGE_RECORD).write_text((run / "ppo_beat" / STAGE_RECORD).read_text().replace('"finished_ns": ', '"finished_ns": 1'))
    pipeline.run_pipeline(str(recipe), stages=every)  # the ablation ran again since eval did: eval runs again
    assert [name for name, _ in calls] == ["eval"]

    calls.clear()
    recipe.write_text(recipe.read_text().replace("  max_steps: 40\n", "  max_steps: 40\n  learning_rate: 1.0e-5\n"))
    pipeline.run_pipeline(str(recipe), stages=every)  # the ablation inherits the ppo section: it runs again too
    assert [name for name, _ in calls] == ["ppo", "ppo_beat", "eval"]
    assert "ppo_beat: running again: ppo ran again" in capsys.readouterr().out

    calls.clear()
    recipe.write_text(recipe.read_text().replace("  max_steps: 20\n", "  max_steps: 30\n"))
    pipeline.run_pipeline(str(recipe), stages=every)  # the ablation's own section changed: it and eval run again, ppo does not
    assert [name for name, _ in calls] == ["ppo_beat", "eval"]
    assert "ppo_beat: running again: its recipe section changed (max_steps: 20 -> 30)" in capsys.readouterr().out


def test_the_stages_run_in_the_order_their_records_chain():
    assert [stage.name for stage in pipeline.STAGES] == list(STAGE_FOLDERS)
    assert all(stage.done_marker.split("/")[0] == STAGE_FOLDERS[stage.name] for stage in pipeline.STAGES)


def test_bad_requests_are_refused(fake_stages, tmp_path):
    recipe, calls = fake_stages
    with pytest.raises(E3D2Error, match="unknown stage"):
        pipeline.run_pipeline(str(recipe), stages=["prepare", "train"])
    with pytest.raises(E3D2Error, match="no such music file"):
        pipeline.run_pipeline(str(recipe), music=str(tmp_path / "missing.mp3"))
    with pytest.raises(E3D2Error, match=f"{tmp_path}: is a folder, not a file"):
        pipeline.run_pipeline(str(recipe), music=str(tmp_path))
    assert calls == []


HOLDER = "import sys, time; from e3d2_hf.utils import run_lock\nwith run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n"


def test_a_second_writer_of_the_run_folder_is_refused_until_the_first_is_gone(fake_stages, tmp_path, capsys):
    recipe, calls = fake_stages
    run_dir = tmp_path / "runs" / "toy"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["pipeline", str(recipe), "--stages", "prepare"]) == 2
        error = one_error_line(capsys.readouterr().err, "e3d2 pipeline: error: ")
        assert f"{run_dir}: process {holder.pid} on " in error and "is writing this run folder" in error
        assert calls == []
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: the kernel drops its lock, nothing stays stuck
        holder.wait()
    assert main(["pipeline", str(recipe), "--stages", "prepare"]) == 0 and [name for name, _ in calls] == ["prepare"]


def test_a_bad_number_is_one_line(fake_stages, capsys):
    recipe, calls = fake_stages
    with pytest.raises(SystemExit) as exit_status:
        main(["pipeline", str(recipe), "--seconds", "nan"])
    assert exit_status.value.code == 2 and calls == []
    assert "argument --seconds: must be a finite number, got 'nan'" in one_error_line(capsys.readouterr().err, "e3d2 pipeline: error: ")


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
            "eval_steps": 1, "eval_dance_seconds": 4.0, "save_steps": 1, "report_to": "none"},
    "ppo_beat": {},  # the ppo section with the beat reward
    "eval": {"dance_seconds": 4.0},
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
    for row in ("ground_truth", "vqvae", "bc", "e3d2", "beat", "random"):
        assert {"FID_k", "FID_g", "Div_k", "Div_g", "BAS", "PFC", "ci95"} <= set(table[row]), row
    assert [(row["method"], row["reward"], row["step"]) for row in table["table_2"]["rows"]] == [
        (method, reward, step) for method, reward in (("e3d2", "learned"), ("beat", "beat")) for step in (0, 1, 2)
    ]  # PPO's held-out evaluations before training, after each step
    assert set(table["noise_levels"]) == {"0.02", "0.5", "1"} and set(table["seen_unseen"]) == {"seen", "unseen"}
    assert 0.0 <= table["reward_model"]["pair_accuracy_unseen"] <= 1.0
    assert (run_dir / "eval" / "metrics.md").read_text().startswith("| Method |")
    assert sorted(path.name for path in (run_dir / "eval" / "dance").iterdir()) == [
        "song.mp4", "song_bc.bvh", "song_bc.npz", "song_bc_smpl.npz", "song_ppo.bvh", "song_ppo.npz", "song_ppo_smpl.npz"
    ]  # fmt: skip
    printed = capsys.readouterr().out
    assert "| E3D2 |" in printed and str(run_dir / "eval" / "dance" / "song.mp4") in printed
    assert set(json.loads((run_dir / "pipeline.json").read_text())) == set(pipeline.STAGE_NAMES)

    assert f"PPO's training curves (learned return, KL and beta, entropy, explained variance, held-out FID_k, Div_k, BAS): {run_dir / 'ppo' / 'curves.png'}" in printed
    assert (run_dir / "eval" / "dance" / "song_bc_smpl.npz").is_file()

    assert main(["pipeline", str(recipe), "--music", str(song)]) == 0  # everything done: only the report
    assert capsys.readouterr().out.count("done already") == len(pipeline.STAGE_NAMES)

    # one line of the recipe changes (PPO's steps): PPO and what follows it run again, the rest is kept
    recipe.write_text(recipe.read_text().replace("  max_steps: 2\n", "  max_steps: 3\n"))
    assert main(["pipeline", str(recipe), "--music", str(song)]) == 0
    printed = capsys.readouterr().out
    print(printed)  # shown with -s: the report's "pipeline rerun after a one-line recipe change"
    assert "[6/9] ppo: running again: its recipe section changed (max_steps: 2 -> 3)" in printed
    assert "[7/9] ppo_beat: running again: ppo ran again" in printed and "[8/9] eval: running again: ppo_beat ran again" in printed
    assert "[9/9] dance to" in printed
    assert [name for name in pipeline.STAGE_NAMES if f"{name}: done already" in printed] == ["prepare", "vqvae", "bc", "demos", "reward"]
    assert json.loads((run_dir / "ppo" / "summary.json").read_text())["steps"] == 3
