"""The scale check on a tiny recipe, its FLOP and operator counts, bf16 autocast against fp32, scripts/gpu_check.sh without CUDA."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from e3d2_hf.evaluation import scale_check
from e3d2_hf.models.configuration_policy import PolicyConfig
from e3d2_hf.models.modeling_policy import E3D2PolicyModel, dance_to_inputs
from e3d2_hf.models.modeling_reward import E3D2RewardModel
from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
from e3d2_hf.models.value import PolicyWithValueHead, ValueHead
from e3d2_hf.recipe import parse_recipe
from e3d2_hf.trainers.bc import BCTrainingConfig
from e3d2_hf.trainers.ppo_config import PPOConfig
from e3d2_hf.trainers.reward_model import RewardTrainingConfig, bradley_terry_loss
from e3d2_hf.trainers.vqvae import VQVAETrainingConfig
from e3d2_hf.utils import E3D2Error

from conftest import one_error_line

ROOT = Path(__file__).resolve().parents[1]
CODEBOOK = 16
TINY_RECIPE = {
    "run_name": "tiny_scale",
    "seed": 0,
    "vqvae": {"channels": 8, "codebook_dim": 8, "codebook_size": CODEBOOK, "residual_depth": 1, "window": 16,
              "per_device_train_batch_size": 4, "root_per_device_train_batch_size": 2},
    "bc": {"codebook_size": CODEBOOK, "hidden_size": 16, "num_hidden_layers": 2, "num_base_layers": 1, "num_attention_heads": 2,
           "per_device_train_batch_size": 4, "num_train_epochs": 2},
    "demos": {"per_device_batch_size": 3},
    "reward": {"codebook_size": CODEBOOK, "hidden_size": 16, "num_attention_heads": 2, "per_device_train_batch_size": 4},
    "ppo": {"segment_stride": 2, "train_batch_size": 4, "per_device_rollout_batch_size": 4, "value_num_layers": 1, "max_steps": 2},
    "ppo_beat": {},
}  # fmt: skip


def parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("scale")
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RECIPE, "runs_dir": str(folder / "runs")}))
    return recipe, scale_check.run_scale_check(recipe, device="cpu", steps=1, warmup=0)


def test_the_scale_check_measures_every_stage_of_a_tiny_recipe(tiny_check, tmp_path):
    recipe, result = tiny_check
    assert list(result["stages"]) == list(scale_check.STAGES) and not result["skipped"]
    for name, stage in result["stages"].items():
        assert stage["flops_per_step"] > 0 and stage["operators_per_step"] > 0, name
        assert stage["seconds_per_step"] > 0 and stage["peak_memory_bytes"] > 0 and stage["steps"] > 0, name
        assert 0 <= stage["convolution_flops_per_step"] <= stage["flops_per_step"]
        for device, peaks in scale_check.DEVICE_PEAKS.items():
            rate = scale_check.UTILISATION * 3600 / stage["steps"]
            convolutions, others = stage["convolution_flops_per_step"], stage["flops_per_step"] - stage["convolution_flops_per_step"]
            expected = {"bf16": stage["flops_per_step"] / (peaks["bf16"] * rate), "fp32": convolutions / (peaks["tf32"] * rate) + others / (peaks["fp32"] * rate)}
            for dtype in scale_check.DTYPES:
                hours = stage["projection"][device][dtype]
                assert hours["flop_hours"] == pytest.approx(expected[dtype])
                assert hours["hours"] == max(hours["flop_hours"], hours["floor_hours"]) > 0
    # the VQ-VAE is convolutions, the policy none
    assert result["stages"]["vqvae"]["convolution_flops_per_step"] > 0.9 * result["stages"]["vqvae"]["flops_per_step"]
    assert result["stages"]["bc"]["convolution_flops_per_step"] == 0
    # every PPO FLOP is in one of its parts, and the rollouts are part of it
    ppo = result["stages"]["ppo"]
    assert sum(ppo["flops_per_step_parts"].values()) <= ppo["flops_per_step"] and ppo["flops_per_step_parts"]["rollout generation"] > 0

    # parameters: the models the stages build from the recipe
    argv = [str(recipe)]
    vqvae = E3D2VQVAE(parse_recipe(VQVAETrainingConfig, "vqvae", argv).model_config())
    policy = E3D2PolicyModel(parse_recipe(BCTrainingConfig, "bc", argv).model_config())
    reward = E3D2RewardModel(parse_recipe(RewardTrainingConfig, "reward", argv).model_config())
    ppo_config = parse_recipe(PPOConfig, "ppo", argv)
    value = ValueHead(policy.config.hidden_size, num_layers=ppo_config.value_num_layers, num_attention_heads=policy.config.num_attention_heads)
    expected = {"vqvae": parameters(vqvae), "policy": parameters(policy), "reward_model": parameters(reward),
                "policy_with_value": parameters(PolicyWithValueHead(policy, value))}  # fmt: skip
    assert result["models"] == expected
    assert result["stages"]["vqvae_root"]["trainable_parameters"] == parameters(vqvae.root_velocity_decoder) < expected["vqvae"]
    assert result["stages"]["ppo"]["frozen_parameters"] == expected["policy"] + expected["reward_model"]
    assert result["stages"]["ppo_beat"]["frozen_parameters"] == expected["policy"] + expected["reward_model"] + expected["vqvae"]

    # steps at AIST++ size: 952 dances of 101 steps, windows of 30 steps every step, batch 4, 2 epochs
    assert result["stages"]["bc"]["steps"] == 2 * -(-952 * (101 - 30 + 1) // 4)
    assert result["stages"]["ppo"]["steps"] == 2 * -(-952 * 36 // 4)  # 36 segments of 30 steps every 2 steps per dance

    # the recipe runs in fp32: its own-precision total is the fp32 one
    for device in scale_check.DEVICE_PEAKS:
        assert result["totals"]["projection"][device]["as_run"] == result["totals"]["projection"][device]["fp32"]
    # FLOPs do not depend on the precision: bf16 autocast counts the same products
    bf16 = scale_check.run_scale_check(recipe, device="cpu", dtype="bf16", steps=1, warmup=0, only=["bc"])["stages"]["bc"]
    assert bf16["dtype"] == "bf16" and result["stages"]["bc"]["dtype"] == "fp32"
    assert bf16["flops_per_step"] == result["stages"]["bc"]["flops_per_step"]

    json_path, table_path = scale_check.write_scale_check(result, tmp_path / "out")
    assert json.loads(json_path.read_text())["models"] == expected
    table = table_path.read_text()
    assert all(f"| {name} |" in table for name in scale_check.STAGES) and "| **total** |" in table


def test_flops_and_operators_of_one_step_are_counted_exactly():
    layer = torch.nn.Linear(64, 32)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    inputs = torch.randn(8, 64)
    meter = scale_check.StepMeter(warmup=1, timed=2, device=torch.device("cpu"))

    def step(index: int) -> None:
        loss = scale_check_part(layer(inputs).square().mean())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        float(loss.detach())  # a scalar read

    scale_check_part = meter.part("identity", lambda tensor: tensor)
    meter.run(step)
    # forward 2*8*64*32; backward builds the weight's gradient only (the input needs none), as many FLOPs again
    assert meter.flops == 2 * 8 * 64 * 32 + 2 * 8 * 64 * 32
    assert meter.operators > 5 and meter.seconds_per_step > 0
    assert meter.host_syncs == 0  # a scalar read of a CPU tensor waits for no device
    assert meter.part_flops == {"identity": 0} and set(meter.part_seconds) == {"identity"}


def test_bf16_autocast_keeps_a_trained_policys_greedy_tokens_and_the_losses():
    """On the CPU: a policy that has learnt a dance picks the same codes in bf16 as in fp32 inside the first window."""
    torch.manual_seed(0)
    config = PolicyConfig(codebook_size=CODEBOOK, hidden_size=32, num_hidden_layers=2, num_base_layers=1, num_attention_heads=4,
                          intermediate_size=64, embedding_dropout=0.0, residual_dropout=0.0, attention_dropout=0.0)  # fmt: skip
    policy = E3D2PolicyModel(config)
    generator = torch.Generator().manual_seed(1)

    def dances(count: int, steps: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Upper codes step by +1, lower codes by +3 (mod the codebook), from random starts, with random music."""
        time = torch.arange(steps)[None]
        upper = (torch.randint(0, CODEBOOK, (count, 1), generator=generator) + time) % CODEBOOK
        lower = (torch.randint(0, CODEBOOK, (count, 1), generator=generator) + 3 * time) % CODEBOOK
        return upper, lower, torch.randn(count, steps, 438, generator=generator)

    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(120):
        loss = policy(**dance_to_inputs(*dances(16))).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.eval()
    upper, lower, music = dances(8)
    first = policy.join_pose_tokens(upper[:, :1], lower[:, :1])
    tokens = policy.generate(music, first)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens_bf16 = policy.generate(music, first)
    assert torch.equal(policy.split_pose_tokens(tokens)[0], upper), "the policy learnt the dance (the comparison is not between guesses)"
    assert torch.equal(tokens_bf16, tokens)

    inputs = dance_to_inputs(upper, lower, music)
    with torch.no_grad():
        logits, loss = (lambda output: (output.upper_logits, output.loss))(policy(**inputs))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output_bf16 = policy(**inputs)
    assert output_bf16.upper_logits.dtype == torch.bfloat16 and not torch.equal(output_bf16.upper_logits.float(), logits)
    assert float(output_bf16.loss) == pytest.approx(float(loss), rel=0.05, abs=0.02)

    torch.manual_seed(0)
    reward = E3D2RewardModel(scale_check_reward_config()).eval()
    music, upper, lower = torch.randn(16, 29, 438, generator=generator), *torch.randint(0, CODEBOOK, (2, 16, 29), generator=generator)
    with torch.no_grad():
        returns = reward(music, upper, lower).returns
        with torch.autocast("cpu", dtype=torch.bfloat16):
            returns_bf16 = reward(music, upper, lower).returns
    loss, loss_bf16 = (bradley_terry_loss(*values.float().chunk(2)) for values in (returns, returns_bf16))
    assert float(loss_bf16) == pytest.approx(float(loss), rel=0.02)


def scale_check_reward_config():
    from e3d2_hf.models.configuration_reward import RewardModelConfig

    return RewardModelConfig(codebook_size=CODEBOOK, context_steps=29, hidden_size=32, num_attention_heads=4, num_hidden_layers=1)


def test_bad_requests_are_one_line_errors(tiny_check, capsys, monkeypatch):
    recipe, _ = tiny_check
    main = runpy.run_path(str(ROOT / "scripts" / "scale_check.py"))["main"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, message in (
        (["--set", "bc.hidden_size"], "scale_check: error: --set 'bc.hidden_size': expected SECTION.FIELD=VALUE"),
        (["--set", "critic.hidden_size=3"], "scale_check: error: scale check: --set names unknown section(s) ['critic']"),
        (["--only", "eval"], "scale_check: error: scale check: unknown stage(s) ['eval']"),
        (["--device", "cuda"], "scale_check: error: scale check: --device cuda, but torch"),
        (["--steps", "0"], "scale_check: error: scale check: warmup must not be negative and steps must be positive"),
    ):
        assert main([str(recipe), *argv]) == 2
        one_error_line(capsys.readouterr().err, message)


def test_gpu_check_without_cuda_says_so_in_one_line():
    environment = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    one_error_line(result.stderr, "gpu_check: no CUDA GPU visible to")


def test_the_fast_recipe_sees_the_same_samples_in_bigger_batches():
    faithful, fast = (yaml.safe_load((ROOT / "recipes" / name).read_text()) for name in ("e3d2.yaml", "e3d2_fast.yaml"))
    sections = ("vqvae", "bc")
    assert {key: value for key, value in fast.items() if key not in (*sections, "run_name")} == {
        key: value for key, value in faithful.items() if key not in (*sections, "run_name")
    }, "demos, reward and PPO are the faithful recipe's"
    for section, batch, rate, epochs in (
        ("vqvae", "per_device_train_batch_size", "learning_rate", "num_train_epochs"),
        ("vqvae", "root_per_device_train_batch_size", "root_learning_rate", "root_num_train_epochs"),
        ("bc", "per_device_train_batch_size", "learning_rate", "num_train_epochs"),
    ):
        factor = fast[section][batch] / faithful[section][batch]
        assert factor > 1 and fast[section][epochs] == faithful[section][epochs]
        assert fast[section][rate] == pytest.approx(faithful[section][rate] * factor**0.5, rel=0.01), "the square-root rule"
    factor = fast["vqvae"]["per_device_train_batch_size"] / faithful["vqvae"]["per_device_train_batch_size"]
    assert fast["vqvae"]["codebook_decay"] == pytest.approx(faithful["vqvae"]["codebook_decay"] ** factor, abs=1e-4)
    assert fast["vqvae"]["dead_code_threshold"] == faithful["vqvae"]["dead_code_threshold"] * factor
    changed = {(section, key) for section in sections for key in set(fast[section]) | set(faithful[section]) if fast[section].get(key) != faithful[section].get(key)}
    assert changed == {
        ("vqvae", "per_device_train_batch_size"), ("vqvae", "learning_rate"), ("vqvae", "codebook_decay"), ("vqvae", "dead_code_threshold"),
        ("vqvae", "root_per_device_train_batch_size"), ("vqvae", "root_learning_rate"),
        ("bc", "per_device_train_batch_size"), ("bc", "learning_rate"), ("bc", "bf16"),
    }  # fmt: skip
    for config_cls, section in ((VQVAETrainingConfig, "vqvae"), (BCTrainingConfig, "bc")):
        assert parse_recipe(config_cls, section, [str(ROOT / "recipes" / "e3d2_fast.yaml"), "--use_cpu", "true"]).bf16 == (section == "bc")


def test_gpu_check_runs_the_scale_check_in_bf16_then_fp32(tmp_path):
    """The GPU path's plumbing, with a stand-in python that claims a GPU and records what it is asked to run."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\nif [ "$1" = -c ]; then echo "stand-in GPU"; exit 0; fi\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    environment = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "out"), "STEPS": "2"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 0, result.stderr
    runs = calls.read_text().splitlines()
    assert [run.split()[0] for run in runs] == ["scripts/scale_check.py"] * 2
    for run, dtype in zip(runs, ("bf16", "fp32")):
        assert f"--device cuda --dtype {dtype} --steps 2 --out {tmp_path / 'out' / dtype}" in run and "recipes/e3d2.yaml" in run


def test_gpu_check_goes_on_to_fp32_when_bf16_fails_and_exits_1(tmp_path):
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(
        f'#!/usr/bin/env bash\nif [ "$1" = -c ]; then echo "stand-in GPU"; exit 0; fi\necho "$@" >> {calls}\n'
        'case "$*" in *"--dtype bf16"*) echo "stand-in: bf16 failed" >&2; exit 1;; esac\n'
    )
    fake.chmod(0o755)
    environment = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "out"), "STEPS": "2"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 1
    assert [line.split("--dtype ")[1].split()[0] for line in calls.read_text().splitlines()] == ["bf16", "fp32"]
    assert "gpu_check: the bf16 check did not finish" in result.stderr and "finished with a failed check" in result.stderr
    assert "gpu_check: done" not in result.stdout
