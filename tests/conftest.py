"""Shared by the tests: one torch thread per module, builders (dance-like joints, a prepared dataset on disk, a tiny VQ-VAE), the one-line error check, launching gloo ranks.

Imported by the test modules as `from conftest import ...` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from e3d2_hf.data.music import BEAT_COLUMN
from e3d2_hf.data.prepare import REFERENCE_MOTIONS, write_reference_motions
from e3d2_hf.launch import free_port
from e3d2_hf.models.configuration_policy import PolicyConfig
from e3d2_hf.models.configuration_vqvae import VQVAEConfig
from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
from e3d2_hf.motion.skeleton import forward_kinematics

MUSIC_DIM = 438


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread per test module: the test models are too small to gain from two, and on a busy
    machine OpenMP threads spin. Subprocesses the tests start set OMP_NUM_THREADS themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_error_line(stderr: str, prefix: str) -> str:
    """The one line a failed command prints (asserted: one line, starting with `prefix`, no traceback).

    Progress bars of what ran before the error and log records are not the error, and are left out.
    """
    lines = [line for line in stderr.splitlines() if line.strip() and "%|" not in line and not line.startswith(("INFO ", "WARNING "))]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in stderr, stderr
    return lines[0]


def launch_ranks(script: Path, *args: str, through_accelerate: bool = False, timeout: float = 300) -> str:
    """Run `script args` as 2 gloo ranks of one OpenMP thread each and return its stderr; a failed launch fails the test.

    Through `e3d2 launch` (the project's launcher), or with `through_accelerate` through `accelerate launch --multi_gpu`
    (the other way README gives). A free port: other runs on this machine may hold the default 29500.
    """
    port = str(free_port())
    if through_accelerate:
        launcher = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]  # fmt: skip
    else:
        launcher = ["e3d2_hf.cli", "launch", "--num_processes", "2", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": port}
    launch = subprocess.Popen([sys.executable, "-m", *launcher, str(script), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = launch.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # torch's launcher starts each rank in a session of its own: killing the launcher would leave the ranks
        # running (and loading the machine for every later test). On SIGTERM it stops them itself.
        launch.send_signal(signal.SIGTERM)
        try:
            _, stderr = launch.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            launch.kill()
            _, stderr = launch.communicate()
        pytest.fail(f"2-rank launch of {script.name} still running after {timeout:g} s; stopped. Its stderr ends:\n{stderr[-3000:]}")
    assert launch.returncode == 0, stderr[-3000:]
    return stderr


def dance_like_joints(frames: int, seed: int) -> np.ndarray:
    """A smooth random dance: sinusoidal joint rotations through SMPL FK, a wandering root."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(frames)[:, None, None] / 60.0
    poses = rng.uniform(0.05, 0.35, (24, 3)) * np.sin(2 * np.pi * rng.uniform(0.5, 2.5, (24, 3)) * seconds + rng.uniform(0, 6, (24, 3)))
    root = np.cumsum(rng.normal(0.0, 0.003, (frames, 3)) * [1.0, 0.0, 1.0], axis=0) + [0.0, 0.9, 0.0]
    return forward_kinematics(poses, root).astype(np.float32)


def prepared_dataset(frames_per_split: dict[str, list[int]], music_dim: int = MUSIC_DIM) -> datasets.DatasetDict:
    """A prepared DatasetDict in the contract's layout: dance-like joints, random music with a beat every 30 frames."""
    features = datasets.Features(
        {
            "name": datasets.Value("string"),
            "music_id": datasets.Value("string"),
            "genre": datasets.Value("string"),
            "joints": datasets.Array3D(shape=(None, 24, 3), dtype="float32"),
            "music_features": datasets.Array2D(shape=(None, music_dim), dtype="float32"),
            "music_features_7p5": datasets.Array2D(shape=(None, music_dim), dtype="float32"),
        }
    )
    splits, index = {}, 0
    for split, lengths in frames_per_split.items():
        rows = []
        for frames in lengths:
            rng = np.random.default_rng(index)
            music = rng.standard_normal((frames, music_dim)).astype(np.float32)
            if music_dim > BEAT_COLUMN:
                music[:, BEAT_COLUMN] = 0.0
                music[index % 30 :: 30, BEAT_COLUMN] = 1.0
            rows.append(
                {
                    "name": f"gBR_sBM_cAll_d04_mBR{index}_ch01",
                    "music_id": f"mBR{index}",
                    "genre": "gBR",
                    "joints": dance_like_joints(frames, seed=index),
                    "music_features": music,
                    "music_features_7p5": music[::8],  # ceil(T / 8) rows
                }
            )
            index += 1
        splits[split] = datasets.Dataset.from_dict({key: [row[key] for row in rows] for key in features}, features=features)
    return datasets.DatasetDict(splits)


def write_prepared(data_dir: Path, frames_per_split: dict[str, list[int]], music_dim: int = MUSIC_DIM) -> None:
    """`prepared_dataset` saved where a run folder keeps it (RUN/data), with a manifest."""
    prepared_dataset(frames_per_split, music_dim).save_to_disk(str(data_dir))
    write_reference_motions(data_dir / REFERENCE_MOTIONS, {})  # every motion is in the splits
    (data_dir / "manifest.json").write_text(json.dumps({"source": {"kind": "test"}}))


def tiny_vqvae(seed: int = 0, codebook_size: int = 16) -> E3D2VQVAE:
    """An untrained tiny VQ-VAE whose codebooks were initialised from encoder outputs (one training-mode pass)."""
    torch.manual_seed(seed)
    vqvae = E3D2VQVAE(VQVAEConfig(channels=8, codebook_dim=8, residual_depth=1, codebook_size=codebook_size))
    vqvae.train()(torch.from_numpy(np.stack([dance_like_joints(64, 50 + index) for index in range(6)])))
    return vqvae.eval()


def tiny_dancing_policy(codebook_size: int = 32) -> E3D2PolicyModel:
    """A tiny random policy with a tiny random VQ-VAE attached (its bones stretch from frame to frame, as an untrained one's do)."""
    torch.manual_seed(0)
    vqvae = E3D2VQVAE(VQVAEConfig(channels=8, codebook_dim=8, residual_depth=1, codebook_size=codebook_size)).eval()
    config = PolicyConfig(codebook_size=codebook_size, hidden_size=32, num_hidden_layers=2, num_base_layers=1, num_attention_heads=4)
    policy = E3D2PolicyModel(config)
    policy.attach_vqvae(vqvae)
    return policy
