"""Generation modes on held-out music: the cache mode is Table 1's dances; the modes agree inside one window and part beyond it."""

from __future__ import annotations

import json
import warnings

import datasets
import numpy as np
import pytest
import torch

from e3d2_hf.evaluation.generation_modes import compare_generation_modes, dance_with
from e3d2_hf.evaluation.table_1 import EvalConfig, policy_evaluation
from e3d2_hf.metrics import MetricWarning
from e3d2_hf.models.configuration_policy import PolicyConfig
from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.rl.heldout import GroundTruth

from conftest import tiny_vqvae, write_prepared

CODEBOOK = 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """RUN/data (40-step pieces) and RUN/bc: a tiny random policy with its VQ-VAE.

    3 blocks and initializer_range 0.3: random logits spread enough that what each mode lets a step
    see (the band's further past, or a fresh window) changes some greedy choices.
    """
    run_dir = tmp_path_factory.mktemp("runs") / "modes"
    write_prepared(run_dir / "data", {"train": [320] * 2, "val": [320] * 3, "test": [320] * 3})
    torch.manual_seed(0)
    config = PolicyConfig(
        codebook_size=CODEBOOK, hidden_size=32, num_hidden_layers=3, num_base_layers=2, num_attention_heads=4, initializer_range=0.3
    )
    policy = E3D2PolicyModel(config)
    policy.attach_vqvae(tiny_vqvae(codebook_size=CODEBOOK))
    policy.save_pretrained(run_dir / "bc")
    return run_dir


@pytest.fixture(autouse=True)
def quiet(run_dir, monkeypatch):
    monkeypatch.setenv("E3D2_CACHE", str(run_dir.parent / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # a random policy on random data: the metrics warn, as they should
        yield


def _evaluation(run_dir, seconds: float, **overrides):
    config = EvalConfig(run_dir=str(run_dir), dance_seconds=seconds, batch_size=4, resamples=50, **overrides)
    data = datasets.load_from_disk(str(run_dir / "data"))
    policy, evaluation, _ = policy_evaluation(config.bc_path, config, data, GroundTruth.from_prepared(data, config.data_path), None)
    return policy, evaluation


def test_the_cache_mode_dances_table_1s_dances_and_the_modes_part_after_one_window(run_dir):
    policy, evaluation = _evaluation(run_dir, seconds=5.0)  # 38 steps: past the 29-step window
    assert int(evaluation.pieces.steps.max()) > policy.config.context_length
    table_1 = evaluation.dance(policy).clips
    cached, recomputed = dance_with(policy, evaluation, "cache").clips, dance_with(policy, evaluation, "recompute_window").clips
    assert list(cached) == list(table_1)
    for name in table_1:
        np.testing.assert_array_equal(cached[name], table_1[name])
    assert any(not np.array_equal(cached[name], recomputed[name]) for name in cached)  # the modes part after the first window


def test_inside_one_window_the_modes_give_the_same_scores_and_a_zero_difference(run_dir, tmp_path):
    config = EvalConfig(run_dir=str(run_dir), output_dir=str(tmp_path), dance_seconds=2.0, batch_size=4, resamples=50)
    result = compare_generation_modes(config)
    assert set(result) == {"bc", "protocol"}  # no PPO policy in the run folder
    rows = result["bc"]
    for key in ("FID_k", "FID_g", "Div_k", "Div_g", "BAS", "PFC"):
        assert rows["cache"][key] == rows["recompute_window"][key], key
    assert all(interval == [0.0, 0.0] for interval in rows["recompute_minus_cache_ci95"].values())
    assert json.loads((tmp_path / "generation_modes.json").read_text())["protocol"]["decoding"] == "greedy"
    markdown = (tmp_path / "generation_modes.md").read_text()
    assert "| bc | cache |" in markdown and "| bc | recompute_window |" in markdown and "| bc | [+0.0, +0.0] |" in markdown
