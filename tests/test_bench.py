"""scripts/bench.py's generation roofline: FLOP counting, the matmul and bandwidth probes, the profile's shares (tiny policy)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from e3d2_hf.models.configuration_policy import PolicyConfig
from e3d2_hf.models.modeling_policy import E3D2PolicyModel

SPEC = importlib.util.spec_from_file_location("bench_script", Path(__file__).resolve().parents[1] / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


@pytest.fixture(scope="module")
def policy() -> E3D2PolicyModel:
    torch.manual_seed(0)
    config = PolicyConfig(hidden_size=32, num_hidden_layers=3, num_base_layers=2, num_attention_heads=4, intermediate_size=64, context_length=5)
    return E3D2PolicyModel(config).eval()


def test_flops_of_a_dance_are_the_matmuls_plus_attention_over_the_visible_keys(policy):
    config = policy.config
    linear_weights = sum(module.weight.numel() for module in policy.modules() if isinstance(module, torch.nn.Linear))
    attention_per_key = 4 * config.hidden_size * config.num_hidden_layers
    total, per_token = bench._flops_of_dance(policy, new_steps=20)
    assert per_token == 2 * linear_weights + attention_per_key * config.context_length
    # steps 1..4 see 1..4 keys, later ones the whole 5-step window
    assert total == 20 * 2 * linear_weights + attention_per_key * (1 + 2 + 3 + 4 + 16 * 5)


def test_matmul_probe_runs_the_policys_own_layers(policy):
    layers = bench._linear_layers(policy)
    assert layers[0] is policy.music_embedding and layers[-1] is policy.lower_head
    assert len(layers) == 1 + 4 * policy.config.num_hidden_layers + 2
    gflops, weight_gb_s = bench._matmul_rate(policy, rows=4, passes=2)
    assert gflops > 0 and weight_gb_s > 0


def test_profile_shares_split_the_wall_time(policy):
    music, first = torch.randn(2, 12, policy.config.music_dim), torch.zeros(2, 1, dtype=torch.long)
    shares = bench._profile_shares(policy, music, first, new_steps=10)
    assert set(shares) == {f"profile_{name}" for name in (*bench.PROFILE_CATEGORIES, "other_ops", "python_and_dispatch")}
    assert shares["profile_matmul"] > 0 and shares["profile_attention"] > 0
    assert all(share >= 0 for share in shares.values()) and sum(shares.values()) >= 0.99
