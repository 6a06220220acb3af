"""Behaviour cloning: pose-code sequences and their alignment, training windows, a tiny end-to-end run, bad input."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Trainer

import e3d2_hf  # noqa: F401  (registers the policy with AutoModelForCausalLM)
from e3d2_hf.data.music import BEAT_COLUMN
from e3d2_hf.data.windows import SequenceWindows, code_sequences
from e3d2_hf.models.configuration_vqvae import VQVAEConfig
from e3d2_hf.models.configuration_policy import PolicyConfig
from e3d2_hf.inference import music_to_joints
from e3d2_hf.models.modeling_policy import E3D2PolicyModel, PolicyOutput
from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
from e3d2_hf.recipe import RunLayout, parse_recipe
from e3d2_hf.trainers import bc, pose_codes
from e3d2_hf.utils import E3D2Error

import conftest as shared

ROOT = Path(__file__).resolve().parents[1]
CODEBOOK = 16
MUSIC_DIM = 438
TINY_POLICY = {
    "codebook_size": CODEBOOK,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_base_layers": 1,
    "num_attention_heads": 4,
    "window": 12,
    "window_stride": 2,
    "context_length": 11,
}
TINY_TRAINING = {
    **TINY_POLICY,
    "per_device_train_batch_size": 16,
    "learning_rate": 3e-3,
    "num_train_epochs": 3,
    "lr_decay_epochs": [2],
    "logging_steps": 5,
    "save_strategy": "epoch",
    "use_cpu": True,
    "disable_tqdm": True,
}
SPLIT_FRAMES = {"train": [200, 176, 160], "val": [120], "test": [104]}


def write_prepared(data_dir: Path, frames_per_split: dict[str, list[int]] = SPLIT_FRAMES, music_dim: int = MUSIC_DIM) -> None:
    shared.write_prepared(data_dir, frames_per_split, music_dim)


def prepared_dataset(frames_per_split: dict[str, list[int]] = SPLIT_FRAMES, music_dim: int = MUSIC_DIM) -> datasets.DatasetDict:
    return shared.prepared_dataset(frames_per_split, music_dim)


def tiny_vqvae(seed: int = 0, codebook_size: int = CODEBOOK) -> E3D2VQVAE:
    return shared.tiny_vqvae(seed, codebook_size)


def write_run(run_dir: Path, **prepared_kwargs) -> Path:
    write_prepared(run_dir / "data", **prepared_kwargs)
    tiny_vqvae().save_pretrained(run_dir / "vqvae")
    return run_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "tiny")


def tiny_config(run_dir: Path, **overrides) -> bc.BCTrainingConfig:
    return bc.BCTrainingConfig(run_dir=str(run_dir), **{**TINY_TRAINING, **overrides})


# ----------------------------------------------------------------------------------------------
# Pose-code sequences
# ----------------------------------------------------------------------------------------------
def test_pose_codes_align_step_i_with_frames_8i_and_music_row_i(tiny_run, monkeypatch):
    vqvae = E3D2VQVAE.from_pretrained(tiny_run / "vqvae").eval()
    codes = pose_codes.load_or_encode_codes(tiny_run, vqvae, progress=False)
    assert (RunLayout(tiny_run).pose_codes / "fingerprint.json").is_file()
    prepared = datasets.load_from_disk(str(tiny_run / "data"))
    assert set(codes) == {"train", "val", "test"}
    for split, lengths in SPLIT_FRAMES.items():
        assert list(codes[split]["name"]) == list(prepared[split]["name"]) and list(codes[split]["music_id"]) == list(prepared[split]["music_id"])
        for index, frames in enumerate(lengths):
            row, source = codes[split].with_format("numpy")[index], prepared[split].with_format("numpy")[index]
            steps = frames // 8  # 104 frames -> 13 steps; 7.5 fps music has 13 rows, cut to 13
            assert row["upper_codes"].shape == row["lower_codes"].shape == (steps,)
            upper, lower = vqvae.encode(torch.from_numpy(np.asarray(source["joints"][: 8 * steps]))[None])
            np.testing.assert_array_equal(row["upper_codes"], upper[0].numpy())
            np.testing.assert_array_equal(row["lower_codes"], lower[0].numpy())
            np.testing.assert_array_equal(row["music_features_7p5"], np.asarray(source["music_features_7p5"])[:steps])
            np.testing.assert_array_equal(row["music_beats"], np.asarray(source["music_features"])[: 8 * steps, BEAT_COLUMN] > 0.5)

    # a second call reads the cache; another VQ-VAE re-encodes
    def no_encoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(pose_codes, "encode_pose_codes", no_encoding)
        again = pose_codes.load_or_encode_codes(tiny_run, vqvae, progress=False)
    assert list(again["train"]["upper_codes"]) == list(codes["train"]["upper_codes"])
    other = tiny_vqvae(seed=1)
    recoded = pose_codes.load_or_encode_codes(tiny_run, other, cache_path=tiny_run / "other_codes", progress=False)
    first = torch.from_numpy(np.asarray(prepared["train"].with_format("numpy")[0]["joints"][:200]))[None]
    np.testing.assert_array_equal(np.asarray(recoded["train"][0]["upper_codes"]), other.encode(first)[0][0].numpy())


def test_training_windows_follow_bailandos_shift(tiny_run):
    vqvae = E3D2VQVAE.from_pretrained(tiny_run / "vqvae").eval()
    codes = pose_codes.load_or_encode_codes(tiny_run, vqvae, progress=False)
    sequences = code_sequences(codes["train"])
    windows = SequenceWindows(sequences, window=30, stride=1)
    steps = [len(upper) for upper in sequences["upper_codes"]]  # 25, 22, 20 steps: only the first has windows
    assert len(windows) == sum(max(0, length - 30 + 1) for length in steps) == 0
    windows = SequenceWindows(sequences, window=12, stride=1)
    assert len(windows) == sum(length - 12 + 1 for length in steps)
    batch = bc.collate_code_windows([windows[3], windows[5]])
    upper, music = sequences["upper_codes"][0], sequences["music_features_7p5"][0]
    assert batch["upper_codes"].shape == (2, 11) and batch["music_features"].shape == (2, 11, MUSIC_DIM)
    np.testing.assert_array_equal(batch["upper_codes"][0].numpy(), upper[3:14])  # inputs: steps 0..W-2 of the window
    np.testing.assert_array_equal(batch["upper_labels"][0].numpy(), upper[4:15])  # targets: steps 1..W-1
    np.testing.assert_array_equal(batch["music_features"][1].numpy(), music[6:17])  # music: frames 1..W-1
    np.testing.assert_array_equal(batch["lower_labels"][1].numpy(), sequences["lower_codes"][0][6:17])


def test_bailando_window_starts_keep_only_the_first_eighth_of_each_dance():
    steps = [101, 40, 29]  # AIST++'s mean dance (101 steps), a short one, one shorter than a window
    sequences = {
        "upper_codes": [np.arange(n) % CODEBOOK for n in steps],
        "lower_codes": [np.zeros(n, dtype=np.int64) for n in steps],
        "music_features_7p5": [np.zeros((n, 3), dtype=np.float32) for n in steps],
    }
    windows = bc.code_windows(sequences, 30, 1, "test")
    assert len(windows) == 72 + 11  # ours: a window at every step
    kept = bc.bailando_window_starts(windows, frames_per_step=8)
    # Bailando's loop written out: dance frames i = 0, 8, 16, ... below the 7.5 fps music's length, whole windows only
    expected = [(sequence, i // 8) for sequence, n in enumerate(steps) for i in range(0, n, 8) if i // 8 + 30 <= n]
    assert [tuple(windows.index[index]) for index in kept.indices] == expected and len(expected) == 13 + 5
    np.testing.assert_array_equal(kept[14]["upper_codes"], sequences["upper_codes"][1][1:31])


def test_window_starts_select_the_training_windows(tiny_run, monkeypatch):
    with pytest.raises(E3D2Error, match="window_starts must be one of"):
        tiny_config(tiny_run, window_starts="every")
    sizes = {}

    class Stop(Exception):
        pass

    def record_and_stop(self, *args, **kwargs):
        sizes[self.args.output_dir] = len(self.train_dataset)
        raise Stop

    monkeypatch.setattr(bc.BCTrainer, "train", record_and_stop)
    for starts in bc.WINDOW_STARTS:
        with pytest.raises(Stop):
            bc.train_bc(tiny_config(tiny_run, window_starts=starts, window_stride=1, output_dir=str(tiny_run / f"bc_{starts}")))
    by_rule = {starts: sizes[str(tiny_run / f".bc_{starts}.training")] for starts in bc.WINDOW_STARTS}
    # 25, 22 and 20 steps, windows of 12: every step gives 14 + 11 + 9; the first eighth 4 + 3 + 3 (8k < steps)
    assert by_rule == {"all": 14 + 11 + 9, "bailando": 4 + 3 + 3}


def test_next_code_accuracy_counts_complete_and_partial_poses():
    sequences = {
        "upper_codes": [np.arange(6, dtype=np.int64) % 4],
        "lower_codes": [np.array([0, 1, 1, 2, 3, 0], dtype=np.int64)],
        "music_features_7p5": [np.zeros((6, 4), np.float32)],
    }
    windows = SequenceWindows(sequences, window=3, stride=2)  # targets steps 1, 2 and 3, 4
    policy = E3D2PolicyModel(PolicyConfig(codebook_size=4, music_dim=4, hidden_size=8, num_hidden_layers=1, num_base_layers=0, num_attention_heads=2))

    def always_code_1(**inputs):
        return PolicyOutput(
            upper_logits=torch.nn.functional.one_hot(torch.ones_like(inputs["upper_codes"]), 4).float(),
            lower_logits=torch.nn.functional.one_hot(torch.ones_like(inputs["lower_codes"]), 4).float(),
        )

    policy.forward = always_code_1
    result = bc.next_code_accuracy(policy, windows, batch_size=1, progress=False)
    # targets: upper [1, 2, 3, 0], lower [1, 1, 2, 3]; predictions 1 everywhere
    assert result["predictions"] == 4 and result["windows"] == 2
    assert result["upper"] == 0.25 and result["lower"] == 0.5 and result["complete"] == 0.25 and result["partial"] == 0.5


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------
def test_bc_script_end_to_end_writes_a_policy_that_dances(tmp_path, monkeypatch):
    """`scripts/bc.py RECIPE` on a run folder holding prepared data and a VQ-VAE."""
    run_dir = write_run(tmp_path / "runs" / "toy")
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(yaml.safe_dump({"run_name": "toy", "runs_dir": str(tmp_path / "runs"), "seed": 0, "bc": TINY_TRAINING}))
    script = ROOT / "scripts" / "bc.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(recipe)])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_status.value.code == 0
    final = run_dir / "bc"
    names = {path.name for path in final.iterdir()}
    assert {"config.json", "model.safetensors", "vqvae", "README.md", "diagnostics.json", "training_config.json", "runs"} <= names
    assert not list(run_dir.glob(".bc*")), "the work folder is removed once the policy is complete"
    assert list((final / "runs").rglob("events.out.tfevents*"))
    assert (RunLayout(run_dir).pose_codes / "fingerprint.json").is_file()

    diagnostics = json.loads((final / "diagnostics.json").read_text())
    for key in ("seen", "unseen"):
        values = diagnostics[key]
        assert 0.0 <= values["complete"] <= min(values["upper"], values["lower"]) <= max(values["upper"], values["lower"]) <= values["partial"] <= 1.0
    # every step after a sequence's first is predicted once, up to the tails: 25 + 22 + 20 steps, windows of 11 targets
    assert diagnostics["seen"]["predictions"] == 11 * (2 + 1 + 1) and diagnostics["unseen"]["predictions"] == 11 * (1 + 1)
    # chance is 1/256; a smooth dance often repeats its code, which a trained policy learns to copy
    assert diagnostics["seen"]["complete"] > 0.3, "training on the seen windows learnt them"
    card = (final / "README.md").read_text()
    assert "complete pose" in card and "| learning_rate | 0.003 |" in card

    policy = AutoModelForCausalLM.from_pretrained(final)
    assert isinstance(policy, E3D2PolicyModel) and policy.config.codebook_size == CODEBOOK and not policy.training
    assert policy.load_vqvae().config.codebook_size == CODEBOOK
    music = np.random.default_rng(0).standard_normal((6, MUSIC_DIM)).astype(np.float32)
    joints = music_to_joints(policy, music, first_codes=(1, 2))
    assert joints.shape == (48, 24, 3) and np.isfinite(joints).all()
    training = json.loads((final / "training_config.json").read_text())
    assert training["window"] == 12 and training["hidden_size"] == 32


def test_training_resumes_and_refuses_changed_settings(tmp_path, monkeypatch):
    run_dir = write_run(tmp_path / "run")
    config = tiny_config(run_dir, num_train_epochs=2)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(bc, "next_code_accuracy", crash)
        bc.train_bc(config)
    work = run_dir / ".bc.training"
    checkpoints = sorted((path.name for path in work.glob("checkpoint-*")), key=lambda name: int(name.split("-")[-1]))
    assert len(checkpoints) == 2 and not (run_dir / "bc").exists()
    with pytest.raises(E3D2Error, match="policy.hidden_size"):
        bc.train_bc(tiny_config(run_dir, hidden_size=16, num_train_epochs=2))
    # the optimiser's settings too: its restored state would silently keep the old learning rate
    with pytest.raises(E3D2Error, match="other settings \\(learning_rate 0.003 -> 0.01\\) is there; rerun with --resume false"):
        bc.train_bc(tiny_config(run_dir, learning_rate=1e-2, num_train_epochs=2))
    with pytest.raises(E3D2Error, match="at epoch 2, past num_train_epochs 1"):  # Trainer would stop there silently
        bc.train_bc(tiny_config(run_dir, num_train_epochs=1))
    manifest = run_dir / "data" / "manifest.json"
    original = manifest.read_text()
    manifest.write_text('{"source": {"kind": "prepared again"}}')
    with pytest.raises(E3D2Error, match="other settings \\(data '[0-9a-f]+' -> '[0-9a-f]+'\\)"):
        bc.train_bc(tiny_config(run_dir, num_train_epochs=2))
    manifest.write_text(original)
    newest = work / checkpoints[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # unreadable: the previous checkpoint is resumed instead

    resumed_from = []
    train = bc.BCTrainer.train

    def recording_train(self, resume_from_checkpoint=None, **kwargs):
        resumed_from.append(resume_from_checkpoint)
        return train(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(bc.BCTrainer, "train", recording_train)
        bc.train_bc(config)
    assert resumed_from == [str(work / checkpoints[0])]
    assert (run_dir / "bc" / "model.safetensors").is_file() and not work.exists()


def test_a_non_finite_gradient_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A loss that stays finite while its gradient is NaN (0 * inf) got past a loss check; the Trainer would save NaN weights."""
    run_dir = write_run(tmp_path / "run")
    forward, calls = E3D2PolicyModel.forward, []

    def nan_gradient_forward(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) > 2:
                output.loss.register_hook(lambda gradient: gradient * float("nan"))
        return output

    monkeypatch.setattr(E3D2PolicyModel, "forward", nan_gradient_forward)
    with pytest.raises(E3D2Error, match="bc: non-finite gradient at step 3 .*last good checkpoint is .*checkpoint-2"):
        bc.train_bc(tiny_config(run_dir, save_strategy="steps", save_steps=1))
    work = run_dir / ".bc.training"
    assert sorted(path.name for path in work.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert all(torch.isfinite(tensor).all() for tensor in load_file(str(work / "checkpoint-2" / "model.safetensors")).values())
    assert not (run_dir / "bc").exists()


def test_bad_input_is_refused_clearly(tmp_path, tiny_run, monkeypatch):
    with pytest.raises(E3D2Error, match="no VQ-VAE here"):
        bc.train_bc(tiny_config(tmp_path / "nowhere"))
    with pytest.raises(E3D2Error, match="16 codes per body half, the policy's codebook_size is 32"):
        bc.train_bc(tiny_config(tiny_run, codebook_size=32))
    with pytest.raises(E3D2Error, match="more than the policy's context of 11"):
        tiny_config(tiny_run, window=13)

    fresh = tmp_path / "fresh"
    write_prepared(fresh / "data")
    E3D2VQVAE(VQVAEConfig(channels=8, codebook_dim=8, residual_depth=1, codebook_size=CODEBOOK)).save_pretrained(fresh / "vqvae")
    with pytest.raises(E3D2Error, match="never initialised"):
        bc.train_bc(tiny_config(fresh))

    narrow = write_run(tmp_path / "narrow", music_dim=40)
    with pytest.raises(E3D2Error, match="music features of width 40, the policy expects 438"):
        bc.train_bc(tiny_config(narrow))

    # `datasets` cannot even reload an empty split from disk; an in-memory one must be refused all the same
    with monkeypatch.context() as patch, pytest.raises(E3D2Error, match="val \\+ test splits are empty"):
        patch.setattr(bc, "load_prepared", lambda path: prepared_dataset({"train": [200], "val": [], "test": []}))
        bc.train_bc(tiny_config(tiny_run))
    empty = prepared_dataset({"train": [], "val": [], "test": []})
    with pytest.raises(E3D2Error, match="the val \\+ test split\\(s\\) hold no sequence"):
        bc.gather_code_sequences(pose_codes.encode_pose_codes(empty, tiny_vqvae(), progress=False), bc.UNSEEN_SPLITS, "codes")
    short = write_run(tmp_path / "short", frames_per_split={"train": [64, 80], "val": [120], "test": [104]})
    with pytest.raises(E3D2Error, match="no sequence is as long as one window \\(12 steps"):
        bc.train_bc(tiny_config(short))

    forward = E3D2PolicyModel.forward

    def diverging_forward(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        if self.training:
            output.loss = output.loss * float("nan")
        return output

    with monkeypatch.context() as patch, pytest.raises(E3D2Error, match="non-finite loss at step 1 .*no checkpoint was written yet"):
        patch.setattr(E3D2PolicyModel, "forward", diverging_forward)
        bc.train_bc(tiny_config(tiny_run, output_dir=str(tmp_path / "nan_bc")))
    assert not (tmp_path / "nan_bc").exists()


@pytest.mark.parametrize("recipe", ["tiny.yaml", "e3d2.yaml"])
def test_recipes_parse_into_the_training_config(recipe):
    config = parse_recipe(bc.BCTrainingConfig, "bc", [str(ROOT / "recipes" / recipe)])
    assert config.output_dir.endswith("bc") and config.vqvae_path.endswith("vqvae") and config.report_to == ["tensorboard"]
    assert config.window - 1 <= config.context_length
    config.model_config()  # consistent sizes
    if recipe == "e3d2.yaml":  # Bailando's cc_motion_gpt values
        assert (config.window, config.window_stride, config.context_length, config.per_device_train_batch_size) == (30, 1, 29, 32)
        assert (config.num_hidden_layers, config.num_base_layers, config.num_attention_heads, config.hidden_size) == (12, 6, 12, 768)
        assert (config.learning_rate, config.adam_beta1, config.adam_beta2, config.lr_decay_epochs) == (3e-4, 0.5, 0.999, [250, 400])
        assert config.num_train_epochs == 400 and config.attention_dropout == config.residual_dropout == config.embedding_dropout == 0.1


def test_the_pose_code_cache_key_ignores_where_the_vqvae_was_loaded_from(tmp_path):
    vqvae = tiny_vqvae()
    for folder in ("bc/vqvae", "ppo/policy/vqvae"):
        vqvae.save_pretrained(tmp_path / folder)
    first, second = (E3D2VQVAE.from_pretrained(tmp_path / folder) for folder in ("bc/vqvae", "ppo/policy/vqvae"))
    assert pose_codes.vqvae_fingerprint(first) == pose_codes.vqvae_fingerprint(second) == pose_codes.vqvae_fingerprint(vqvae)
    with torch.no_grad():
        second.root_velocity_decoder.layers[-1].bias.add_(1.0)
    assert pose_codes.vqvae_fingerprint(second) != pose_codes.vqvae_fingerprint(first)


def test_a_checkpoint_that_cannot_be_written_is_named_and_removed(tmp_path, monkeypatch):
    """A full disk half-way through a Trainer checkpoint: torch's writer raises a RuntimeError from deep inside."""
    run_dir = write_run(tmp_path / "run")
    save, saves = Trainer._save_optimizer_and_scheduler, []

    def disk_full_at_the_second(self, output_dir):
        saves.append(output_dir)
        if len(saves) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed")
        return save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", disk_full_at_the_second)
    work = run_dir / ".bc.training"
    with pytest.raises(E3D2Error, match=f"^{work / 'checkpoint-2'}: cannot write the checkpoint \\(RuntimeError: .*file write failed\\); the earlier ones are kept$"):
        bc.train_bc(tiny_config(run_dir, save_strategy="steps", save_steps=1))
    assert sorted(path.name for path in work.glob("checkpoint-*")) == ["checkpoint-1"] and bc.last_checkpoint(tiny_config(run_dir, output_dir=str(work)))
    assert not (run_dir / "bc").exists()
