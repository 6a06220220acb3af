"""Every `Trainer` stage gives on 2 gloo ranks what it gives in 1 process with the same global batch; PPO resumes under DDP.

This file is also the 2-rank worker: `launch_ranks` runs `python tests/test_ranks.py RANKS_2` once (one start of two
processes for every stage), and the tests run the same stages here, in 1 process, on a copy of the same inputs.

What makes the runs comparable, and what is left out:

- Per-device batch = global batch / processes. Accelerate's seedable sampler draws one permutation per epoch on every
  rank and hands rank r every 2nd per-device batch, so each optimiser step sees the same windows as the 1-process step.
  Each training set is a whole number of global batches: a last partial batch would be padded on rank 1 by cycling
  to the start of the epoch, and so differ.
- Dropout is off: its masks come from each rank's own random stream.
- VQ-VAE: the codebook starts initialised (the same state loaded on both sides) and dead-code resets are off, because
  the k-means initialisation and the resets draw random encoder outputs per rank. The EMA statistics are all-reduced
  by the library, so the codebooks must still match the 1-process ones; a separate run with k-means and resets on
  checks that both ranks then hold one codebook.
- Gradients are averaged over ranks instead of over one batch, so the weights are equal up to float rounding:
  `assert_close` at atol 1e-5 / rtol 1e-4 after a few Adam steps (identical results are not expected).
- Reward model: the Bradley-Terry loss sees only differences of returns, so the two biases that add one constant to
  every reward (`REWARD_SHIFTS`) get no gradient but rounding noise, which Adam scales into full steps (1e-3 apart
  after 12). They are left out of the weights compared, and the returns are compared up to that constant.
- PPO draws its rollouts per rank (`seed_of(seed, step, rank)`), so 2 ranks do not repeat 1 process (test_ppo.py
  compares their gradient of one minibatch); here a 2-rank run killed after a checkpoint and resumed must end
  bit for bit where a 2-rank run that was never stopped ends.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import distributed

from e3d2_hf.recipe import parse_recipe, run_stage
from e3d2_hf.trainers import vqvae
from e3d2_hf.trainers.bc import BCTrainingConfig, train_bc
from e3d2_hf.trainers.reward_model import RewardTrainingConfig, train_reward_model

import conftest as shared
from test_bc import TINY_TRAINING, write_run
from test_ppo import toy_trainer, train_until_killed_after_checkpoint
from test_reward import toy_demonstrations

RUN = "run"  # the run folder's name under each side's folder
VQVAE_GLOBAL_BATCH, BC_GLOBAL_BATCH, REWARD_GLOBAL_BATCH = 8, 6, 16
VQVAE_SEQUENCES = [shared.dance_like_joints(176, seed) for seed in range(3)]  # 3 x 8 windows of 64 frames every 16
# 3 noise levels x 8 music x 3 demos (test_reward's toy set); 96 pairs = 6 global batches; 50 eval pairs: uneven shards
REWARD = {
    "codebook_size": 4, "num_train_pairs": 96, "num_eval_pairs": 50, "hidden_size": 16, "num_attention_heads": 2,
    "attention_dropout": 0.0, "residual_dropout": 0.0, "num_train_epochs": 2, "per_device_eval_batch_size": 16,
    "eval_strategy": "epoch", "use_cpu": True, "disable_tqdm": True, "report_to": "none",
}  # fmt: skip
REWARD_SHIFTS = ("reward_head.bias", "blocks.0.mlp_norm.bias")  # the last (post-LN) block's output norm feeds the head


def write_inputs(side: Path, processes: int) -> None:
    """One side's inputs: the recipe (per-device batches for `processes`), a BC run folder, demonstrations, a VQ-VAE."""
    recipe = {
        "run_name": RUN, "runs_dir": str(side), "seed": 0,
        "vqvae": {
            "channels": 8, "codebook_dim": 8, "residual_depth": 1, "codebook_size": 16, "dead_code_threshold": 0.0,
            "window": 64, "window_stride": 16, "root_window_stride": 16, "learning_rate": 1e-3, "root_learning_rate": 1e-3,
            "per_device_train_batch_size": VQVAE_GLOBAL_BATCH // processes, "root_per_device_train_batch_size": VQVAE_GLOBAL_BATCH // processes,
            "num_train_epochs": 2, "lr_decay_epochs": [], "root_num_train_epochs": 1, "root_lr_decay_epochs": [],
            "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, "report_to": "none",
        },
        # 18 windows (test_bc's data) = 3 global batches a epoch
        "bc": {**TINY_TRAINING, "embedding_dropout": 0.0, "residual_dropout": 0.0, "attention_dropout": 0.0, "num_train_epochs": 2,
               "per_device_train_batch_size": BC_GLOBAL_BATCH // processes, "report_to": "none"},
        "reward": {**REWARD, "per_device_train_batch_size": REWARD_GLOBAL_BATCH // processes},
    }  # fmt: skip
    side.mkdir(parents=True)
    (side / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    write_run(side / RUN)
    toy_demonstrations().save_to_disk(str(side / RUN / "demos" / "demonstrations"))
    initial = shared.tiny_vqvae().state_dict()  # codebook initialised by one training-mode pass
    save_file({name: tensor.clone() for name, tensor in initial.items()}, str(side / "vqvae_initial.safetensors"))


def train_vqvae_phases(side: Path, from_state: Path | None) -> vqvae.E3D2VQVAE:
    """The VQ-VAE stage's phases (`vqvae._run_phase`: its Trainer, schedule and freezing) on `VQVAE_SEQUENCES`.

    From the state in `from_state` both phases; or untrained, with the k-means initialisation and dead-code resets
    on (None), the pose phase only: the root phase's forward passes would copy rank 0's codebooks to rank 1 (DDP
    broadcasts buffers), hiding codebooks that went apart. The arguments are made first: they form the process
    group, which the codebooks must see to sync.
    """
    arguments = parse_recipe(vqvae.VQVAETrainingConfig, "vqvae", [str(side / "recipe.yaml")])
    model_config = arguments.model_config()
    if from_state is None:
        model_config.dead_code_threshold = 1.0
    model = vqvae.E3D2VQVAE(model_config)
    if from_state is not None:
        model.load_state_dict(load_file(str(from_state)))
    folder = side / ("vqvae" if from_state else "vqvae_from_scratch")
    phases = (("pose", arguments.window_stride, False), ("root", arguments.root_window_stride, True))
    for phase, stride, root_only in phases if from_state else phases[:1]:
        windows = vqvae.training_windows(VQVAE_SEQUENCES, arguments.window, stride, "test sequences")
        phase_arguments = arguments.trainer_arguments(folder / phase) if phase == "pose" else arguments.root_phase_arguments(folder / phase)
        model = vqvae._run_phase(model, phase_arguments, windows, root_velocity_only=root_only).model
    return model


def run_stages(side: Path) -> None:
    """VQ-VAE phases, behaviour cloning and the reward model on `side`'s inputs; run once per side."""
    model = train_vqvae_phases(side, side / "vqvae_initial.safetensors")
    if int(os.environ.get("RANK", "0")) == 0:
        save_file(model.state_dict(), str(side / "vqvae.safetensors"))
    for stage, config_class, train in (("bc", BCTrainingConfig, train_bc), ("reward", RewardTrainingConfig, train_reward_model)):
        assert run_stage(stage, config_class, train, [str(side / "recipe.yaml")]) == 0, stage


def run_ppo_straight_and_resumed(side: Path) -> None:
    """Two 2-rank PPO runs: one stopped after its last (step-4) checkpoint, one killed after step 2's and resumed.

    The straight run stops before `train` ends because its end leaves the process group, which the next run needs.
    """
    options = {"save_steps": 2, "kl_target": 0.01, "reward_normalization": True, "advantage_estimator": "gae", "value_learning_rate": 3e-3}
    with pytest.MonkeyPatch.context() as patch:
        train_until_killed_after_checkpoint(toy_trainer(side / "ppo_straight", **options), 4, patch)
        train_until_killed_after_checkpoint(toy_trainer(side / "ppo_resumed", **options), 2, patch)
    resumed = toy_trainer(side / "ppo_resumed", **options, resume=True)
    (side / "ppo_processes.json").write_text(json.dumps(resumed.accelerator.num_processes))
    resumed.train()


def worker(side: Path) -> None:
    """What the 2 ranks run: the stages, the VQ-VAE from scratch (each rank keeps its codebooks), PPO."""
    rank = int(os.environ["RANK"])
    run_stages(side)
    assert distributed.is_initialized() and distributed.get_world_size() == 2, "the launched processes formed no group of 2"
    codebooks = {name: tensor for name, tensor in train_vqvae_phases(side, None).state_dict().items() if ".quantizer." in name}
    save_file(codebooks, str(side / f"codebooks_rank{rank}.safetensors"))
    run_ppo_straight_and_resumed(side)


@pytest.fixture(scope="module")
def sides(tmp_path_factory) -> dict[int, Path]:
    """Folder of each side, by processes: 2 (launched first) and 1 (this process), trained on the same inputs."""
    root = tmp_path_factory.mktemp("ranks")
    folders = {processes: root / f"processes-{processes}" for processes in (2, 1)}
    for processes, side in folders.items():
        write_inputs(side, processes)
    shared.launch_ranks(Path(__file__), str(folders[2]), timeout=600)
    run_stages(folders[1])
    return folders


def assert_same_weights(two: dict[str, torch.Tensor], one: dict[str, torch.Tensor]) -> None:
    assert two.keys() == one.keys()
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def test_vqvae_weights_and_codebooks_match_one_process(sides):
    one, two = (load_file(str(sides[processes] / "vqvae.safetensors")) for processes in (1, 2))
    initial = load_file(str(sides[1] / "vqvae_initial.safetensors"))
    for name in ("upper.quantizer._codebook.embed", "upper.encoder.layers.0.weight", "root_velocity_decoder.layers.0.weight"):
        assert not torch.equal(one[name], initial[name]), f"{name} did not train"
    assert_same_weights(two, one)


def test_vqvae_ranks_hold_one_codebook_with_kmeans_and_dead_code_resets(sides):
    rank0, rank1 = (load_file(str(sides[2] / f"codebooks_rank{rank}.safetensors")) for rank in (0, 1))
    assert rank0.keys() == rank1.keys() and any(name.endswith("_codebook.embed") for name in rank0)
    for name, tensor in rank0.items():
        assert torch.equal(rank1[name], tensor), name


def test_bc_policy_and_diagnostics_match_one_process(sides):
    one, two = (sides[processes] / RUN / "bc" for processes in (1, 2))
    assert_same_weights(load_file(str(two / "model.safetensors")), load_file(str(one / "model.safetensors")))
    assert json.loads((two / "diagnostics.json").read_text()) == json.loads((one / "diagnostics.json").read_text())


def test_reward_model_and_pair_accuracies_match_one_process(sides):
    one, two = (load_file(str(sides[processes] / RUN / "reward" / "model.safetensors")) for processes in (1, 2))
    assert set(REWARD_SHIFTS) <= one.keys()
    assert_same_weights(*({name: tensor for name, tensor in weights.items() if name not in REWARD_SHIFTS} for weights in (two, one)))
    diagnostics = {processes: json.loads((side / RUN / "reward" / "diagnostics.json").read_text()) for processes, side in sides.items()}
    for key in ("pair_accuracy_seen", "pair_accuracy_unseen", "pair_accuracy_train"):
        assert diagnostics[2][key] == diagnostics[1][key], key  # every eval pair counted once, rank 1's padding left out
    # Mismatched-music pairs hold the same codes twice: near-ties, which weights equal to 1e-5 may flip one of.
    for key in ("mismatched_music_accuracy_seen", "mismatched_music_accuracy_unseen"):
        assert diagnostics[2][key] == pytest.approx(diagnostics[1][key], abs=0.02), key
    for two, one in zip(diagnostics[2]["accuracy_per_epoch"], diagnostics[1]["accuracy_per_epoch"], strict=True):
        assert two.keys() == one.keys() and {"seen_mismatched", "unseen_mismatched"} <= one.keys()
        assert {k: v for k, v in two.items() if not k.endswith("_mismatched")} == {k: v for k, v in one.items() if not k.endswith("_mismatched")}
    returns = {processes: found["return_by_noise"] for processes, found in diagnostics.items()}
    shift = returns[2]["0.02"]["mean"] - returns[1]["0.02"]["mean"]
    for level, values in returns[1].items():
        assert returns[2][level]["mean"] - shift == pytest.approx(values["mean"], rel=1e-4, abs=1e-4), level
        assert returns[2][level]["std"] == pytest.approx(values["std"], rel=1e-4, abs=1e-4), level


def test_ppo_killed_and_resumed_on_two_ranks_ends_where_the_straight_run_ends(sides):
    assert json.loads((sides[2] / "ppo_processes.json").read_text()) == 2
    straight, resumed = (sides[2] / run / "ppo" for run in ("ppo_straight", "ppo_resumed"))
    final = Path("checkpoints") / "checkpoint-000004"
    expected, weights = (load_file(str(out / final / "model.safetensors")) for out in (straight, resumed))
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name
    optimizers = [torch.load(out / final / "optimizer.pt", weights_only=True)["state"] for out in (straight, resumed)]
    for index, state in optimizers[0].items():
        assert all(torch.equal(optimizers[1][index][key], value) for key, value in state.items()), index
    states = [json.loads((out / final / "trainer_state.json").read_text()) for out in (straight, resumed)]
    assert states[1]["kl_beta"] == states[0]["kl_beta"] and states[1]["reward_normalization"] == states[0]["reward_normalization"]
    assert [json.loads(line)["step"] for line in (resumed / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert (resumed / "summary.json").is_file() and not list((resumed / "checkpoints").glob(".checkpoint-*"))


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
