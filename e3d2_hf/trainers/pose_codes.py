"""Pose-code sequences: every prepared dance encoded once with the VQ-VAE, cached in the run folder.

Behaviour cloning, the demonstrations and PPO all work on pose codes, not joints, so the whole
prepared dataset is encoded once and kept in `RUN/pose_codes` (`RunLayout.pose_codes`: a
`datasets.DatasetDict` with the prepared splits train/val/test, written with `save_to_disk`, plus
`fingerprint.json`). The cache is keyed by a fingerprint of the VQ-VAE (config and weights) and of
the prepared data (its manifest, which `e3d2 prepare` rewrites on every run, and each split's names
and lengths): a new VQ-VAE or new data re-encodes, anything else reads the cache. It lives with the
trainers, not in `e3d2_hf.data`, because making it takes a trained model (data preparation needs none).

Timeline alignment (the one every stage after the VQ-VAE uses). A sequence of T frames at 60 fps
has S = T // 8 pose-code steps (a last partial step is dropped) and, per step i = 0 .. S-1:

    step i  <->  motion frames 8i .. 8i+7  <->  music_features_7p5[i]  <->  music_beats[8i .. 8i+7]

| column | type | meaning |
|---|---|---|
| `name`, `music_id` | string | as in the prepared dataset |
| `upper_codes`, `lower_codes` | int64 (S,) | the VQ-VAE codes of step i's 8 frames, per body half |
| `music_features_7p5` | float32 (S, 438) | row i: the 7.5 fps music of step i (the prepared ceil(T/8) rows cut to S) |
| `music_beats` | bool (8S,) | the 60 fps beat track (music feature column 53) of the dance's frames |

Each sequence is encoded whole (one convolution pass over all its frames), as the policy's dances
are decoded whole. Bailando instead encodes every 240-frame training window on the fly; codes differ
from it only near window edges, where its convolutions saw padding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from e3d2_hf.data.music import BEAT_COLUMN
from e3d2_hf.data.prepare import MANIFEST_NAME, load_prepared
from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
from e3d2_hf.recipe import RunLayout
from e3d2_hf.utils import E3D2Error, array_sha256, atomic_directory, file_sha256

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"


def vqvae_fingerprint(vqvae: E3D2VQVAE) -> str:
    """Hex SHA-256 of the VQ-VAE's config and weights (what the pose codes depend on; not where it was loaded from)."""
    settings = {key: value for key, value in vqvae.config.to_dict().items() if key != "_name_or_path"}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vqvae.state_dict().items()):
        digest.update(name.encode())
        digest.update(array_sha256(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()).encode())
    return digest.hexdigest()


def _sequence_lengths(split: datasets.Dataset, column: str) -> np.ndarray:
    """Rows of `column` per sequence, read from the Arrow offsets (no data is copied)."""
    chunks = split.with_format("arrow")[:][column].chunks
    chunks = [chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk for chunk in chunks]
    lengths = [pc.list_value_length(chunk).to_numpy(zero_copy_only=False) for chunk in chunks]
    return np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)


def prepared_fingerprint(data_path: str | os.PathLike, prepared: datasets.DatasetDict) -> str:
    """Hex SHA-256 of the prepared data's manifest and each split's sequence names and lengths."""
    manifest = Path(data_path) / MANIFEST_NAME
    digest = hashlib.sha256(file_sha256(manifest).encode() if manifest.is_file() else b"no manifest")
    for split in sorted(prepared):
        digest.update(split.encode())
        digest.update("\n".join(prepared[split]["name"]).encode())
        digest.update(array_sha256(_sequence_lengths(prepared[split], "joints")).encode())
    return digest.hexdigest()


def check_codebooks_initialised(vqvae: E3D2VQVAE, source: str) -> None:
    """`E3D2Error` if a codebook never saw data: encoding would then initialise it from whatever it encodes first."""
    fresh = [name for name, buffer in vqvae.named_buffers() if name.endswith("initted") and not bool(buffer.all())]
    if fresh:
        raise E3D2Error(f"{source}: the VQ-VAE's codebooks were never initialised ({', '.join(fresh)}); is it trained? (scripts/vqvae.py)")


def _features(music_dim: int) -> datasets.Features:
    return datasets.Features(
        {
            "name": datasets.Value("string"),
            "music_id": datasets.Value("string"),
            "upper_codes": datasets.List(datasets.Value("int64")),
            "lower_codes": datasets.List(datasets.Value("int64")),
            "music_features_7p5": datasets.Array2D(shape=(None, music_dim), dtype="float32"),
            "music_beats": datasets.List(datasets.Value("bool")),
        }
    )


@torch.no_grad()
def encode_pose_codes(prepared: datasets.DatasetDict, vqvae: E3D2VQVAE, progress: bool = True) -> datasets.DatasetDict:
    """Every split's sequences as pose-code sequences (see the module docstring for the columns and alignment)."""
    check_codebooks_initialised(vqvae, "pose codes")
    was_training = vqvae.training
    vqvae.eval()
    frames_per_step = vqvae.config.frames_per_code
    encoded = {}
    for split, rows in prepared.items():
        table = rows.with_format("numpy", columns=["name", "music_id", "joints", "music_features", "music_features_7p5"])
        features = _features(rows.features["music_features_7p5"].shape[-1])
        columns: dict[str, list[Any]] = {name: [] for name in features}
        for row in tqdm(table, total=len(table), desc=f"pose codes ({split})", unit="seq", disable=not progress, leave=False):
            joints = np.asarray(row["joints"], dtype=np.float32)
            music = np.asarray(row["music_features_7p5"], dtype=np.float32)
            beats = np.asarray(row["music_features"], dtype=np.float32)
            steps = min(len(joints) // frames_per_step, len(music), len(beats) // frames_per_step)
            if steps < 1:
                raise E3D2Error(f"split '{split}', sequence '{row['name']}': {len(joints)} frames, fewer than one {frames_per_step}-frame pose-code step")
            upper, lower = vqvae.encode(torch.from_numpy(joints[None, : steps * frames_per_step]).to(vqvae.device))
            columns["name"].append(str(row["name"]))
            columns["music_id"].append(str(row["music_id"]))
            columns["upper_codes"].append(upper[0].cpu().numpy().astype(np.int64))
            columns["lower_codes"].append(lower[0].cpu().numpy().astype(np.int64))
            columns["music_features_7p5"].append(music[:steps])
            columns["music_beats"].append(beats[: steps * frames_per_step, BEAT_COLUMN] > 0.5)
        encoded[split] = datasets.Dataset.from_dict(columns, features=features)
    vqvae.train(was_training)
    return datasets.DatasetDict(encoded)


def load_or_encode_codes(
    run_dir: str | os.PathLike,
    vqvae: E3D2VQVAE,
    *,
    data_path: str | os.PathLike | None = None,
    cache_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> datasets.DatasetDict:
    """The run's pose-code sequences (train/val/test), from `RUN/pose_codes` or encoded there when missing or stale.

    `data_path` defaults to `RUN/data`, `cache_path` to `RUN/pose_codes`. Under several processes,
    call it inside `TrainingArguments.main_process_first()` so that only the main process encodes.
    """
    run = RunLayout(run_dir)
    data_path = Path(data_path) if data_path is not None else run.data
    cache_path = Path(cache_path) if cache_path is not None else run.pose_codes
    prepared = load_prepared(data_path)
    fingerprint = {"vqvae": vqvae_fingerprint(vqvae), "data": prepared_fingerprint(data_path, prepared)}
    try:
        if json.loads((cache_path / FINGERPRINT_FILE).read_text()) == fingerprint:
            return datasets.load_from_disk(str(cache_path))
        logger.info("pose codes in %s were made from another VQ-VAE or other data: encoding again", cache_path)
    except (OSError, ValueError):
        pass
    logger.info("encoding the prepared dances of %s into pose codes -> %s", data_path, cache_path)
    encoded = encode_pose_codes(prepared, vqvae, progress=progress)
    with atomic_directory(cache_path) as folder:
        encoded.save_to_disk(str(folder))
        (folder / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n")
    return datasets.load_from_disk(str(cache_path))


__all__ = [
    "check_codebooks_initialised",
    "encode_pose_codes",
    "load_or_encode_codes",
    "prepared_fingerprint",
    "vqvae_fingerprint",
]
