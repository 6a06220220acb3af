"""VQ-VAE choreographic memory: shapes, learning, save/load, bad input and a tiny end-to-end training run."""

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
from transformers import AutoModel

from e3d2_hf.data.windows import SequenceWindows, sliding_windows, window_index
from e3d2_hf.models.configuration_vqvae import VQVAEConfig
from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
from e3d2_hf.recipe import parse_recipe
from e3d2_hf.motion.skeleton import SMPL_PARENTS, forward_kinematics, rest_joints
from e3d2_hf.trainers import vqvae as vqvae_trainer
from e3d2_hf.utils import E3D2Error

ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL = {"channels": 32, "codebook_size": 64, "codebook_dim": 32}


def dance_like_joints(num_sequences: int, frames: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random dances: sums of sinusoidal joint rotations through SMPL FK, a wandering root."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(frames)[:, None, None, None] / 60.0
    dances = []
    for _ in range(num_sequences):
        frequency, phase = rng.uniform(0.5, 2.5, (3, 24, 3)), rng.uniform(0, 2 * np.pi, (3, 24, 3))
        amplitude = rng.uniform(0.05, 0.35, (3, 24, 3))
        poses = (amplitude * np.sin(2 * np.pi * frequency * seconds + phase)).sum(axis=1)
        velocity = np.cumsum(rng.normal(0.0, 0.002, (frames, 3)), axis=0) * [1.0, 0.1, 1.0]
        dances.append(forward_kinematics(poses, np.cumsum(velocity, axis=0) + [0.0, 0.9, 0.0]))
    return dances


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.from_numpy(np.stack(dance_like_joints(4, 96)))


def test_encode_decode_shapes_and_root_integration(batch):
    torch.manual_seed(0)
    model = E3D2VQVAE(VQVAEConfig(**TINY_MODEL)).eval()
    upper, lower = model.encode(batch)
    assert upper.shape == lower.shape == (4, 12) and upper.dtype == torch.long
    assert int(upper.max()) < 64 and int(upper.min()) >= 0
    start = batch[:, 0, 0]
    joints = model.decode(upper, lower, root_start=start)
    assert joints.shape == (4, 96, 24, 3) and torch.isfinite(joints).all()
    torch.testing.assert_close(joints[:, 0, 0], start)
    # the root is the running sum of the predicted velocities: root[t] = root[t-1] + velocity[t-1]
    vectors = model.upper.code_vectors(upper), model.lower.code_vectors(lower)
    velocity = model.predict_root_velocity(*vectors)
    torch.testing.assert_close(joints[:, 1:, 0] - joints[:, :-1, 0], velocity[:, :-1], rtol=1e-4, atol=1e-5)
    standing = model.decode(upper, lower)  # default start: above the origin, lowest joint on the floor
    torch.testing.assert_close(standing[:, 0, :, 1].amin(dim=1), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(standing[:, 0, 0, [0, 2]], torch.zeros(4, 2))
    output = model.train()(batch)
    assert output.reconstruction.shape == batch.shape and output.loss.ndim == 0


def test_decoded_dances_stand_on_the_rest_skeleton(batch):
    """Decoded bones have the SMPL male lengths (`rest_skeleton`); null keeps the decoder's raw, shorter ones."""
    torch.manual_seed(0)
    model = E3D2VQVAE(VQVAEConfig(**TINY_MODEL)).eval()
    codes = model.encode(batch)
    parents = torch.as_tensor(np.maximum(SMPL_PARENTS, 0))[1:]
    rest = torch.as_tensor(rest_joints("male"), dtype=torch.float32)
    joints = model.decode(*codes)
    bones = (joints[:, :, 1:] - joints[:, :, parents]).norm(dim=-1)
    torch.testing.assert_close(bones, (rest[1:] - rest[parents]).norm(dim=-1).expand_as(bones), atol=1e-5, rtol=0)
    model.config.rest_skeleton = None
    raw = model.decode(*codes)
    assert not torch.allclose((raw[:, :, 1:] - raw[:, :, parents]).norm(dim=-1), bones, atol=1e-3)
    with pytest.raises(E3D2Error, match="rest_skeleton"):
        VQVAEConfig(rest_skeleton="giant")


def test_root_velocity_decoder_speaks_metres_per_second(batch):
    """A decoder that outputs 1.5 m/s along x moves the decoded root 1.5 / fps metres per frame; the root loss is in m/s."""
    model = E3D2VQVAE(VQVAEConfig(**TINY_MODEL)).eval()
    last = model.root_velocity_decoder.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.5, 0.0, 0.0]))
    joints = model.decode(*model.encode(batch), root_start=torch.zeros(4, 3))
    steps = joints[:, 1:, 0] - joints[:, :-1, 0]
    torch.testing.assert_close(steps, torch.tensor([1.5 / 60.0, 0.0, 0.0]).expand_as(steps))
    still = batch - batch[:, :, :1] + batch[:, :1, :1]  # a dance whose root never moves: loss = |1.5 m/s|/3 axes
    torch.testing.assert_close(model(still, root_velocity_only=True).loss, torch.tensor(0.5))


def test_bad_input_is_refused_clearly(batch):
    model = E3D2VQVAE(VQVAEConfig(**TINY_MODEL))
    with pytest.raises(E3D2Error, match="multiple of 8"):
        model.encode(batch[:, :90])
    with pytest.raises(E3D2Error, match="24, 3"):
        model(batch[:, :, :22])
    with pytest.raises(E3D2Error, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 2), 64), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(E3D2Error, match="must match"):
        model.decode(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(E3D2Error, match="codebook_decay"):
        VQVAEConfig(codebook_decay=1.5)
    assert model.crop_to_codes(batch[:, :90]).shape[1] == 88


def test_overfits_one_batch(batch):
    """Loss falls far and the reconstruction beats the batch's mean pose (it encodes motion, not just the skeleton)."""
    torch.manual_seed(0)
    model = E3D2VQVAE(VQVAEConfig(**TINY_MODEL, codebook_decay=0.9))
    optimizer = torch.optim.Adam(model.pose_parameters(), lr=3e-3)
    upper, lower = model.split_body(batch)
    motion = torch.cat((upper, lower), dim=-1)
    mean_pose_error = (motion - motion.mean(dim=(0, 1))).abs().mean()
    losses = []
    for _ in range(200):  # ~100 steps to learn the mean skeleton (no normalisation, as Bailando), then motion
        output = model(batch)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert losses[-1] < 0.4 * losses[0]
    assert output.reconstruction_loss < 0.85 * mean_pose_error
    # the root-velocity decoder alone learns on the frozen codes
    codebook = model.upper.quantizer.codebook.clone()
    optimizer = torch.optim.Adam(model.root_velocity_parameters(), lr=3e-3)
    root_losses = []
    for _ in range(30):
        output = model(batch, root_velocity_only=True)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        root_losses.append(output.loss.item())
    assert root_losses[-1] < 0.5 * root_losses[0]
    assert torch.equal(codebook, model.upper.quantizer.codebook)


def test_save_load_round_trip_keeps_codes_and_reconstructions(tmp_path, batch):
    torch.manual_seed(0)
    model = E3D2VQVAE(VQVAEConfig(**TINY_MODEL))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):  # move the weights and the codebooks' EMA state away from their initial values
        loss = model(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and json.loads((tmp_path / "config.json").read_text())["model_type"] == "e3d2_vqvae"
    loaded = AutoModel.from_pretrained(tmp_path).eval()  # registered with the Auto classes on import
    assert isinstance(loaded, E3D2VQVAE)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    codes = model.encode(batch)
    loaded_codes = loaded.encode(batch)
    assert all(torch.equal(a, b) for a, b in zip(codes, loaded_codes))
    assert torch.equal(model.decode(*codes), loaded.decode(*loaded_codes))


def test_windows_cover_every_whole_window():
    assert sliding_windows(100, 40, 20).tolist() == [0, 20, 40, 60]
    assert sliding_windows(39, 40, 8).size == 0
    assert window_index([100, 30, 48], 40, 8).tolist() == [[0, 0], [0, 8], [0, 16], [0, 24], [0, 32], [0, 40], [0, 48], [0, 56], [2, 0], [2, 8]]
    joints = [np.arange(96, dtype=np.float32)[:, None], np.arange(64, dtype=np.float32)[:, None]]
    music = [np.arange(12, dtype=np.float32)[:, None], np.arange(8, dtype=np.float32)[:, None]]
    windows = SequenceWindows({"joints": joints, "music": music}, window=48, stride=16, time_divisors={"music": 8})
    assert len(windows) == 4 + 2
    item = windows[1]
    assert item["joints"][:, 0].tolist() == list(range(16, 64)) and item["music"][:, 0].tolist() == list(range(2, 8))
    with pytest.raises(E3D2Error, match="multiples"):
        SequenceWindows({"joints": joints, "music": music}, window=44, stride=16, time_divisors={"music": 8})


# ----------------------------------------------------------------------------------------------
# Training: a tiny prepared dataset written here (no dependency on `e3d2 prepare`)
# ----------------------------------------------------------------------------------------------
TINY_TRAINING = {
    **TINY_MODEL,
    "window": 48,
    "window_stride": 24,
    "per_device_train_batch_size": 8,
    "learning_rate": 3e-3,
    "codebook_decay": 0.9,
    "num_train_epochs": 4,
    "lr_decay_epochs": [3],
    "root_window_stride": 24,
    "root_per_device_train_batch_size": 8,
    "root_learning_rate": 3e-3,
    "root_num_train_epochs": 1,
    "logging_steps": 5,
    "use_cpu": True,
    "disable_tqdm": True,
}


def write_prepared(data_dir, frames_per_split: dict[str, list[int]], seed: int = 0, corrupt: bool = False) -> None:
    """A prepared DatasetDict in the contract's layout (all columns, manifest.json) with dance-like joints.

    `corrupt` puts a NaN into the first training sequence.
    """
    features = datasets.Features(
        {
            "name": datasets.Value("string"),
            "music_id": datasets.Value("string"),
            "genre": datasets.Value("string"),
            "joints": datasets.Array3D(shape=(None, 24, 3), dtype="float32"),
            "music_features": datasets.Array2D(shape=(None, 438), dtype="float32"),
            "music_features_7p5": datasets.Array2D(shape=(None, 438), dtype="float32"),
        }
    )
    splits = {}
    for offset, (split, lengths) in enumerate(frames_per_split.items()):
        rows = []
        for index, frames in enumerate(lengths):
            (joints,) = dance_like_joints(1, frames, seed=seed + 100 * offset + index)
            if corrupt and split == "train" and index == 0:
                joints[5, 3, 1] = np.nan
            rows.append(
                {
                    "name": f"gBR_sBM_cAll_d04_mBR{index}_ch0{offset}",
                    "music_id": f"mBR{index}",
                    "genre": "gBR",
                    "joints": joints,
                    "music_features": np.zeros((frames, 438), np.float32),
                    "music_features_7p5": np.zeros((-(-frames // 8), 438), np.float32),
                }
            )
        splits[split] = datasets.Dataset.from_list(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(data_dir))
    (data_dir / "manifest.json").write_text(json.dumps({"source": {"kind": "test"}}))


def tiny_config(run_dir, **overrides):
    return vqvae_trainer.VQVAETrainingConfig(run_dir=str(run_dir), **{**TINY_TRAINING, **overrides})


def test_vqvae_script_end_to_end_writes_the_run_folder(tmp_path, monkeypatch):
    """`scripts/vqvae.py RECIPE` on a run folder holding a prepared dataset."""
    run_dir = tmp_path / "runs" / "toy"
    write_prepared(run_dir / "data", {"train": [240, 200, 160, 100], "val": [120], "test": [100]})
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(yaml.safe_dump({"run_name": "toy", "runs_dir": str(tmp_path / "runs"), "seed": 0, "vqvae": TINY_TRAINING}))
    script = ROOT / "scripts" / "vqvae.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(recipe)])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_status.value.code == 0
    final = run_dir / "vqvae"
    names = {path.name for path in final.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "eval.json", "training_config.json", "runs"} <= names
    assert not list(run_dir.glob(".vqvae*")), "the work folder is removed once the model is complete"
    assert list((final / "runs" / "pose").rglob("events.out.tfevents*")) and list((final / "runs" / "root").rglob("events.out.tfevents*"))
    evaluation = json.loads((final / "eval.json").read_text())
    heldout = evaluation["heldout"]
    assert heldout["num_sequences"] == 2 and heldout["num_frames"] == 120 + 96
    assert 0 < heldout["mpjpe_cm"] < 100 and heldout["mpjpe_global_cm"] >= 0
    assert 1 <= heldout["codebook_usage"]["upper"]["codes_used"] <= 64
    training = json.loads((final / "training_config.json").read_text())
    assert training["window"] == 48 and training["root_num_train_epochs"] == 1
    assert "mpjpe" in (final / "README.md").read_text().lower()
    model = E3D2VQVAE.from_pretrained(final).eval()
    joints = torch.from_numpy(dance_like_joints(1, 64, seed=5)[0])[None]
    assert model.decode(*model.encode(joints)).shape == (1, 64, 24, 3)


def test_training_resumes_and_refuses_bad_data(tmp_path, monkeypatch):
    write_prepared(tmp_path / "data", {"train": [160, 120], "val": [64], "test": [64]})
    # an interrupted run: the pose phase finished, then training died; the rerun skips that phase
    config = tiny_config(tmp_path, num_train_epochs=1, root_num_train_epochs=0)
    work = tmp_path / ".vqvae.training"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(vqvae_trainer, "evaluate_reconstruction", crash)
        vqvae_trainer.train_vqvae(config)
    assert (work / "pose_model" / "model.safetensors").is_file() and list((work / "pose").glob("checkpoint-*"))
    assert not (tmp_path / "vqvae").exists()
    with pytest.raises(E3D2Error, match="channels"):
        vqvae_trainer.train_vqvae(tiny_config(tmp_path, channels=16, num_train_epochs=1, root_num_train_epochs=0))
    vqvae_trainer.train_vqvae(config)
    assert (tmp_path / "vqvae" / "model.safetensors").is_file() and not work.exists()

    # a NaN loss stops with a clear error and keeps the checkpoints written before it
    nan_run = tmp_path / "nan"
    write_prepared(nan_run / "data", {"train": [160, 160], "val": [64], "test": [64]})
    forward, calls = E3D2VQVAE.forward, []

    def diverging_forward(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) > 2:
            output.loss = output.loss * float("nan")
        return output

    with monkeypatch.context() as patch, pytest.raises(E3D2Error, match="non-finite pose loss at step 3 .*last good checkpoint is .*checkpoint-2"):
        patch.setattr(E3D2VQVAE, "forward", diverging_forward)
        vqvae_trainer.train_vqvae(tiny_config(nan_run, save_strategy="steps", save_steps=1))
    assert sorted(path.name for path in (nan_run / ".vqvae.training" / "pose").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not (nan_run / "vqvae").exists()

    corrupt = tmp_path / "corrupt"
    write_prepared(corrupt / "data", {"train": [160], "val": [64], "test": [64]}, corrupt=True)
    with pytest.raises(E3D2Error, match="NaN"):
        vqvae_trainer.train_vqvae(tiny_config(corrupt))

    with pytest.raises(E3D2Error, match="train split is empty"):
        vqvae_trainer.training_windows([], 48, 24, "data (train split)")
    short = tmp_path / "short"
    write_prepared(short / "data", {"train": [40, 32], "val": [64], "test": [64]})
    with pytest.raises(E3D2Error, match="as long as one window"):
        vqvae_trainer.train_vqvae(tiny_config(short))


@pytest.mark.parametrize("recipe", ["tiny.yaml", "e3d2.yaml"])
def test_recipes_parse_into_the_training_config(recipe):
    path = ROOT / "recipes" / recipe
    config = parse_recipe(vqvae_trainer.VQVAETrainingConfig, "vqvae", [str(path)])
    assert config.output_dir.endswith("vqvae") and config.data_path.endswith("data")
    assert config.window % 8 == 0 and config.report_to == ["tensorboard"]
    if recipe == "e3d2.yaml":  # Bailando's values
        assert (config.window, config.window_stride, config.per_device_train_batch_size) == (240, 40, 32)
        assert (config.learning_rate, config.adam_beta1, config.lr_decay_epochs, config.num_train_epochs) == (3e-5, 0.5, [100, 200], 500)
        assert (config.root_window_stride, config.root_per_device_train_batch_size, config.root_learning_rate) == (8, 8, 5e-5)
        root = config.root_phase_arguments(Path(config.output_dir) / "root")  # Bailando configs/sep_vqvae_root.yaml
        assert (root.learning_rate, root.adam_beta1, root.adam_beta2, root.lr_decay_epochs) == (5e-5, 0.9, 0.999, [100, 200])
        assert (root.per_device_train_batch_size, root.num_train_epochs) == (8, 500)
        assert (config.channels, config.codebook_size, config.codebook_dim) == (512, 512, 512)
