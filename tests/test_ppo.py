"""PPO (stage 4): the reward functions, a toy reward PPO must raise, resume, DDP gradients, end to end (formulas: test_ppo_formulas.py)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from PIL import Image
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import e3d2_hf.models.modeling_policy  # noqa: F401  (registers the policy with the Auto classes)
from e3d2_hf.models.configuration_policy import PolicyConfig
from e3d2_hf.models.configuration_reward import RewardModelConfig
from e3d2_hf.models.configuration_vqvae import VQVAEConfig
from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.models.modeling_reward import E3D2RewardModel
from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
from e3d2_hf.motion.skeleton import rest_joints
from e3d2_hf.recipe import parse_recipe, run_stage
from e3d2_hf.rl.environment import Episodes, MusicSegments
from e3d2_hf.rl.rewards import BeatAlignmentReward, LearnedReward, RewardFunction, RewardNormalization, bailando_orientation
from e3d2_hf.trainers.ppo import train_ppo
from e3d2_hf.trainers.ppo_config import PPOConfig
from e3d2_hf.trainers.ppo_trainer import PPOTrainer
from e3d2_hf.utils import E3D2Error

from conftest import dance_like_joints, launch_ranks, one_error_line, write_prepared

ROOT = Path(__file__).resolve().parents[1]
CODEBOOK = 16
TOY_MUSIC_DIM = 8


# ----------------------------------------------------------------------------------------------
# Toy setting: a tiny policy on random music, reward = share of upper-body codes equal to 0.
# ----------------------------------------------------------------------------------------------
class UpperCodeZeroReward(RewardFunction):
    """Sparse toy reward: at the last step, the fraction of the episode's chosen upper codes that are 0."""

    name = "upper_code_zero"
    sparse = True

    def __call__(self, episodes: Episodes) -> torch.Tensor:
        rewards = torch.zeros(len(episodes), episodes.upper_codes.shape[1] - 1)
        rewards[:, -1] = (episodes.upper_codes[:, 1:] == 0).float().mean(-1)
        return rewards


def tiny_policy(seed: int = 0, music_dim: int = TOY_MUSIC_DIM, codebook: int = CODEBOOK) -> E3D2PolicyModel:
    torch.manual_seed(seed)
    config = PolicyConfig(
        codebook_size=codebook, music_dim=music_dim, hidden_size=32, num_hidden_layers=2, num_base_layers=1,
        num_attention_heads=4, intermediate_size=64,
    )  # fmt: skip
    return E3D2PolicyModel(config).eval()


def toy_segments(num_sequences: int = 4, steps: int = 40, seed: int = 0) -> MusicSegments:
    rng = np.random.default_rng(seed)
    return MusicSegments(
        [f"seq{index}" for index in range(num_sequences)],
        [rng.integers(0, CODEBOOK, steps) for _ in range(num_sequences)],
        [rng.integers(0, CODEBOOK, steps) for _ in range(num_sequences)],
        [rng.standard_normal((steps, TOY_MUSIC_DIM)).astype(np.float32) for _ in range(num_sequences)],
        [np.zeros(8 * steps, np.float32) for _ in range(num_sequences)],
    )


def toy_config(tmp_path: Path, **overrides) -> PPOConfig:
    settings = dict(
        run_dir=str(tmp_path), max_steps=4, rollout_segments=64, train_batch_size=32, value_num_layers=1,
        eval_steps=0, report_to="none", learning_rate=1e-3, save_steps=100,
    )  # fmt: skip
    settings.update(overrides)
    return PPOConfig(**settings)


def toy_trainer(tmp_path: Path, **overrides) -> PPOTrainer:
    return PPOTrainer(toy_config(tmp_path, **overrides), tiny_policy(), UpperCodeZeroReward(), toy_segments())


# ----------------------------------------------------------------------------------------------
# The reward functions PPO optimises
# ----------------------------------------------------------------------------------------------
def test_reward_normalization_keeps_the_running_mean_and_std_of_the_stream_and_round_trips():
    rng = np.random.default_rng(0)
    batches = [rng.normal(40.0, 7.0, size) for size in (5, 1, 64, 17)] + [rng.normal(90.0, 2.0, 33)]  # the reward drifts
    normalization, seen = RewardNormalization(), []
    for batch in batches:
        values = batch.astype(np.float32)
        normalization.update(torch.from_numpy(values))
        seen.extend(values.astype(np.float64))
        assert (normalization.shift, normalization.scale) == pytest.approx((np.mean(seen), np.std(seen)), rel=1e-6)
    assert normalization.count == len(seen)
    dense = normalization(torch.tensor([[1.0, 2.0, 3.0]]))  # every step rescaled, the shift taken off the last
    assert float(dense.sum()) == pytest.approx((6.0 - np.mean(seen)) / np.std(seen), rel=1e-5)

    restored = RewardNormalization(**json.loads(json.dumps(normalization.to_dict())))  # as trainer_state.json keeps it
    assert restored == normalization
    for stats in (restored, normalization):
        stats.update(torch.tensor([1.0, 2.0]))
    assert restored == normalization
    with pytest.raises(E3D2Error, match="reward normalisation: needs finite returns"):
        normalization.update(torch.tensor([1.0, float("nan")]))


def test_learned_reward_is_sparse():
    torch.manual_seed(0)
    reward_model = E3D2RewardModel(RewardModelConfig(codebook_size=CODEBOOK, music_dim=TOY_MUSIC_DIM, hidden_size=16, num_attention_heads=2))
    episodes = toy_segments().batch(np.arange(3))
    rewards = LearnedReward(reward_model)(episodes)
    expected = reward_model.eval().score_trajectory(episodes.music_features[:, 1:], episodes.upper_codes[:, 1:], episodes.lower_codes[:, 1:])
    assert rewards.shape == (3, 29)
    assert torch.count_nonzero(rewards[:, :-1]) == 0
    torch.testing.assert_close(rewards[:, -1], expected.returns)


def _bailando_up_down_reward(pose: np.ndarray, beats: np.ndarray, rate: float) -> np.ndarray:
    """lisiyao21/Bailando models/up_down_half_reward.py (UpDownReward.forward, ba_reward, calc_db) restated in numpy, line by line."""
    from scipy.ndimage import gaussian_filter
    from scipy.signal import argrelextrema

    n, t = pose.shape[:2]
    blocks = pose.reshape(n, t // 8, 8, 24, 3)
    up = np.cross(blocks[..., 14, :], blocks[..., 13, :])
    up /= np.linalg.norm(up, axis=-1)[..., None]
    up_direct = np.sum(up * (blocks[..., 15, :] - blocks[..., 12, :]), axis=-1)
    up_direct /= np.abs(up_direct) + 1e-5
    up *= up_direct[..., None]
    up[..., 1] = 0
    down = np.cross(blocks[..., 4, :], blocks[..., 5, :])
    down /= np.linalg.norm(down, axis=-1)[..., None]
    down *= up_direct[..., None]
    down[..., 1] = 0
    reward = (up * down).sum(-1).min(-1)
    reward[reward >= 0] = 1.0
    reward *= rate
    dance_beats = np.zeros((n, t))
    for index, keypoints in enumerate(pose):
        kinetic_vel = np.mean(np.sqrt(np.sum((keypoints[1:] - keypoints[:-1]) ** 2, axis=2)), axis=1)
        dance_beats[index, argrelextrema(gaussian_filter(kinetic_vel, 5), np.less)] = 1
    dance_beats = dance_beats.reshape(n, t // 8, 8).max(2)
    music_beats = beats.reshape(n, t // 8, 8).max(2)
    return reward + (music_beats * dance_beats - 0.5) * 10


def test_beat_reward_is_bailandos_on_the_decoded_actions():
    torch.manual_seed(0)
    vqvae = E3D2VQVAE(VQVAEConfig(channels=8, codebook_dim=8, residual_depth=1, codebook_size=CODEBOOK)).eval()
    episodes = toy_segments().batch(np.arange(4))
    episodes.music_beats[:, ::16] = 1.0  # a music beat in every other 8-frame window
    beat_only = BeatAlignmentReward(vqvae, beat_reward=5.0, orientation_weight=0.0)
    relative, velocity = vqvae.decode_root_relative(episodes.upper_codes[:, 1:], episodes.lower_codes[:, 1:])
    pose = relative.clone()
    pose[:, :, 0] = velocity  # Bailando's decoder output: root-relative joints, the root velocity in the root's place
    torch.testing.assert_close(beat_only.decoded_actions(episodes), pose)
    music = episodes.music_beats[:, 8:].numpy()  # Bailando's beat_seq[:, 8:-8]: the frames of the scored actions
    rewards = beat_only(episodes)
    assert rewards.shape == (4, 29)
    np.testing.assert_array_equal(rewards.numpy(), _bailando_up_down_reward(pose.numpy().astype(np.float64), music, rate=0.0))
    assert set(np.unique(rewards.numpy())) == {-5.0, 5.0}
    rest = torch.as_tensor(rest_joints("male"), dtype=torch.float32)
    facing_alike = pose.clone()
    facing_alike[:, 40:83] = rest - rest[0]  # steps 6-10 whole and 3 frames of step 11 stand in the rest pose, facing alike
    with_orientation = BeatAlignmentReward(vqvae, beat_reward=5.0, orientation_weight=2.0)
    with_orientation.decoded_actions = lambda episodes: facing_alike
    expected = _bailando_up_down_reward(facing_alike.numpy().astype(np.float64), music, rate=2.0)
    np.testing.assert_allclose(with_orientation(episodes).numpy(), expected, atol=1e-5)
    orientation = expected - _bailando_up_down_reward(facing_alike.numpy().astype(np.float64), music, rate=0.0)
    assert (orientation[:, 5:10] == 2.0).all() and (orientation[:, 10] < 0).all() and (orientation < 0).any()  # 1 when >= 0, the min


def test_bailando_orientation_is_positive_when_upper_and_lower_body_face_alike():
    rest = torch.as_tensor(rest_joints("male"), dtype=torch.float32)
    rest = rest - rest[0]
    turned = rest.clone()
    lower = [1, 2, 4, 5, 7, 8, 10, 11]
    turned[lower] = turned[lower] * torch.tensor([-1.0, 1.0, -1.0])  # the legs turned half a circle about the vertical
    values = bailando_orientation(torch.stack([rest, turned])[None])
    assert values[0, 0] > 0.5 and values[0, 1] < -0.5


# ----------------------------------------------------------------------------------------------
# PPO on the toy reward
# ----------------------------------------------------------------------------------------------
def test_ppo_raises_a_known_reward_with_bounded_kl(tmp_path):
    summary = toy_trainer(tmp_path, max_steps=24).train()
    curve = [point["task_return"] for point in summary["training_curve"]]
    assert curve[0] < 0.15  # about 1/16 of the upper codes are 0 under the random policy
    assert np.mean(curve[-3:]) > curve[0] + 0.2, curve
    assert 0.0 < summary["kl_final"] < 5.0
    assert summary["steps"] == 24 and summary["samples_per_second"] > 0
    log = [json.loads(line) for line in (tmp_path / "ppo" / "log.jsonl").read_text().splitlines()]
    for key in ("task_return", "kl", "entropy", "clip_fraction", "approx_kl", "explained_variance", "policy_loss", "value_loss", "samples_per_second"):
        assert all(math.isfinite(entry[key]) for entry in log), key


class FirstMusicFrameReward(RewardFunction):
    """Sparse toy reward the critic can predict from every state: a large affine function of the first action's music."""

    name = "first_music_frame"
    sparse = True

    def __call__(self, episodes: Episodes) -> torch.Tensor:
        rewards = torch.zeros(len(episodes), episodes.upper_codes.shape[1] - 1)
        rewards[:, -1] = 100.0 + 30.0 * episodes.music_features[:, 1, 0]  # far from the zero-initialised head's 0
        return rewards


def test_the_critic_learns_a_return_it_can_predict_whatever_its_scale(tmp_path):
    explained = {}
    for normalised in (True, False):
        config = toy_config(
            tmp_path / str(normalised), max_steps=8, kl_beta=0.0, num_ppo_epochs=4, value_learning_rate=3e-3, value_detach_base=True,
            reward_normalization=normalised,
        )  # fmt: skip
        summary = PPOTrainer(config, tiny_policy(), FirstMusicFrameReward(), toy_segments()).train()
        explained[normalised] = [json.loads(line)["explained_variance"] for line in Path(config.output_dir, "log.jsonl").read_text().splitlines()]
    assert explained[True][0] == 0.0 and np.mean(explained[True][-3:]) > 0.5, explained  # V starts at 0 (a constant), then follows G
    assert summary["reward_normalization"] is None and max(explained[False]) < 0.05, explained  # raw returns ~100: the head lags behind


def train_until_killed_after_checkpoint(trainer: PPOTrainer, step: int, monkeypatch) -> None:
    """Train until the process is killed just after the checkpoint of `step` is written."""
    save = PPOTrainer.save_checkpoint

    def save_then_die(self):
        folder = save(self)
        if self.state.step == step:
            raise KeyboardInterrupt(f"killed after the step-{step} checkpoint")
        return folder

    monkeypatch.setattr(PPOTrainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    monkeypatch.setattr(PPOTrainer, "save_checkpoint", save)


def test_resume_after_a_kill_reaches_the_same_weights(tmp_path, monkeypatch):
    # every piece of state a resume must restore: adaptive beta, the reward normalisation, optimizer moments
    options = dict(save_steps=2, kl_target=0.01, reward_normalization=True, advantage_estimator="gae", value_learning_rate=3e-3)
    straight = toy_trainer(tmp_path / "straight", **options)
    straight.train()
    expected = load_file(str(tmp_path / "straight" / "ppo" / "checkpoints" / "checkpoint-000004" / "model.safetensors"))

    train_until_killed_after_checkpoint(toy_trainer(tmp_path / "killed", **options), 2, monkeypatch)
    with pytest.raises(E3D2Error, match="--resume"):
        toy_trainer(tmp_path / "killed", **options).train()
    resumed = toy_trainer(tmp_path / "killed", **options, resume=True)
    resumed.train()
    assert resumed.kl_controller.value == straight.kl_controller.value != 5e-3
    assert resumed.normalization == straight.normalization and straight.normalization.count == 4 * 64
    weights = load_file(str(tmp_path / "killed" / "ppo" / "checkpoints" / "checkpoint-000004" / "model.safetensors"))
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "ppo" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


class ScriptedEvaluator:
    """Held-out BAS per split, scripted by the trainer's step: val peaks at step 2, test keeps rising (a choice that read it would take step 4)."""

    VAL = (0.9, 0.2, 0.5, 0.3, 0.4)  # by step; step 0: BC, never a candidate
    TEST = (0.1, 0.2, 0.3, 0.4, 0.5)

    def __init__(self):
        self.trainer: PPOTrainer | None = None

    def __len__(self) -> int:
        return 2

    def evaluate(self, policy, reference_policy):
        step = self.trainer.state.step
        splits = {split: {"learned_return": 0.0, "metrics": {"BAS": values[step]}} for split, values in (("val", self.VAL), ("test", self.TEST))}
        return {"learned_return": 0.0, "kl": 0.0, "metrics": {"BAS": (self.VAL[step] + self.TEST[step]) / 2}, "splits": splits}


def scripted_trainer(output: Path, **overrides) -> PPOTrainer:
    evaluator = ScriptedEvaluator()
    config = toy_config(output, max_steps=4, eval_steps=1, save_steps=1, save_total_limit=4, best_policy_metric="BAS", **overrides)
    evaluator.trainer = PPOTrainer(config, tiny_policy(), UpperCodeZeroReward(), toy_segments(), evaluator=evaluator)
    return evaluator.trainer


def test_the_saved_policy_is_the_best_on_val_and_survives_a_resume(tmp_path, monkeypatch):
    summary = scripted_trainer(tmp_path / "straight").train()
    assert summary["best_policy"] == {"step": 2, "split": "val", "metric": "BAS", "value": 0.5, "bc_value": 0.9}
    assert summary["policy_step"] == 2 and summary["metrics_final"] == {"BAS": 0.4} and summary["steps"] == 4
    out = tmp_path / "straight" / "ppo"
    at_step_2 = load_file(str(out / "checkpoints" / "checkpoint-000002" / "model.safetensors"))
    saved = load_file(str(out / "policy" / "model.safetensors"))
    assert saved.keys() == {name.removeprefix("policy.") for name in at_step_2 if name.startswith("policy.")}
    assert all(torch.equal(tensor, at_step_2[f"policy.{name}"]) for name, tensor in saved.items())
    assert "policy of step 2, the evaluation with the best BAS on the held-out val music" in (out / "policy" / "README.md").read_text()

    train_until_killed_after_checkpoint(scripted_trainer(tmp_path / "killed"), 3, monkeypatch)
    assert scripted_trainer(tmp_path / "killed", resume=True).train()["best_policy"] == summary["best_policy"]
    resumed = load_file(str(tmp_path / "killed" / "ppo" / "policy" / "model.safetensors"))
    assert all(torch.equal(tensor, resumed[name]) for name, tensor in saved.items())

    with pytest.raises(E3D2Error, match="best_policy_split 'train' is not one of eval_splits"):
        toy_config(tmp_path, best_policy_metric="BAS", best_policy_split="train")
    with pytest.raises(E3D2Error, match="best_policy_metric must be one of"):
        toy_config(tmp_path, best_policy_metric="Div_k")


def checkpoint_bytes(output_dir: Path) -> dict[str, bytes]:
    return {str(path.relative_to(output_dir)): path.read_bytes() for path in sorted((output_dir / "checkpoints").rglob("*")) if path.is_file()}


def test_resume_with_changed_settings_is_refused_unless_accepted_then_recorded(tmp_path, caplog):
    toy_trainer(tmp_path, max_steps=2, save_steps=1).train()
    out = tmp_path / "ppo"
    before = checkpoint_bytes(out)
    changed = dict(max_steps=4, save_steps=1, resume=True, learning_rate=1e-2, kl_beta=0.1)
    with pytest.raises(E3D2Error, match="checkpoint-000002: made with other settings \\(kl_beta 0.005 -> 0.1, learning_rate 0.001 -> 0.01\\); .*--resume_with_changes true"):
        toy_trainer(tmp_path, **changed).train()
    assert checkpoint_bytes(out) == before  # nothing earlier lost or rewritten

    trainer = toy_trainer(tmp_path, **changed, resume_with_changes=True)
    summary = trainer.train()
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-2 and summary["kl_beta_final"] == 0.1  # applied, not only recorded
    assert summary["config_changes"] == [{"step": 3, "changes": {"kl_beta": {"from": 0.005, "to": 0.1}, "learning_rate": {"from": 0.001, "to": 0.01}}}]
    assert json.loads((out / "summary.json").read_text())["config_changes"] == summary["config_changes"]
    assert "with changed settings, in effect from step 3: kl_beta 0.005 -> 0.1, learning_rate 0.001 -> 0.01" in caplog.text
    assert json.loads((out / "checkpoints" / "checkpoint-000004" / "training_config.json").read_text())["learning_rate"] == 1e-2

    # a checkpoint past max_steps once finished silently as the longer run
    with pytest.raises(E3D2Error, match="checkpoint-000004: the run is at step 4, past max_steps 3; pass --max_steps 4 or more"):
        toy_trainer(tmp_path, **{**changed, "max_steps": 3}).train()
    # the run folder moved: paths inside it are compared relative to it
    shutil.copytree(tmp_path / "ppo", tmp_path / "moved" / "ppo")
    toy_trainer(tmp_path / "moved", **{**changed, "max_steps": 5}).train()


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    toy_trainer(tmp_path / "straight", max_steps=3, save_steps=1).train()
    expected = load_file(str(tmp_path / "straight" / "ppo" / "checkpoints" / "checkpoint-000003" / "model.safetensors"))

    out = tmp_path / "killed" / "ppo"
    toy_trainer(tmp_path / "killed", max_steps=2, save_steps=1).train()
    newest = out / "checkpoints" / "checkpoint-000002" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # a disk error, a copy cut short
    with open(out / "log.jsonl", "a") as log:
        log.write('{"step": 3, "los')  # killed while appending
    (out / "checkpoints" / "checkpoint-foo").mkdir()  # a stray folder is no checkpoint
    (out / "checkpoints" / "checkpoint-foo" / "trainer_state.json").write_text("{}")
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    leftover = out / "checkpoints" / f".checkpoint-000003.tmp-{host}-{process.pid}-abcd"  # killed while writing it
    leftover.mkdir()

    toy_trainer(tmp_path / "killed", max_steps=3, save_steps=1, resume=True).train()
    assert f"{newest}: unreadable weights file (SafetensorError" in caplog.text and "resuming from the previous checkpoint, checkpoint-000001" in caplog.text
    weights = load_file(str(out / "checkpoints" / "checkpoint-000003" / "model.safetensors"))
    assert all(torch.equal(weights[name], tensor) for name, tensor in expected.items())  # as if never stopped
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert not leftover.exists()

    for folder in (out / "checkpoints").glob("checkpoint-00000*"):
        (folder / "optimizer.pt").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(E3D2Error, match="no readable checkpoint in .*checkpoint-000003/optimizer.pt: unreadable checkpoint file"):
        toy_trainer(tmp_path / "killed", max_steps=4, save_steps=1, resume=True).train()


def test_non_finite_reward_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    class BreaksAtStepThree(UpperCodeZeroReward):
        calls = 0

        def __call__(self, episodes):
            self.calls += 1
            rewards = super().__call__(episodes)
            return rewards * float("nan") if self.calls == 3 else rewards

    trainer = PPOTrainer(toy_config(tmp_path, save_steps=1), tiny_policy(), BreaksAtStepThree(), toy_segments())
    with pytest.raises(E3D2Error, match="non-finite task reward.*checkpoint-000002"):
        trainer.train()
    assert (tmp_path / "ppo" / "checkpoints" / "checkpoint-000002" / "model.safetensors").is_file()

    torch.manual_seed(0)
    broken = E3D2RewardModel(RewardModelConfig(codebook_size=CODEBOOK, music_dim=TOY_MUSIC_DIM, hidden_size=16, num_attention_heads=2))
    torch.nn.init.constant_(broken.reward_head.bias, float("nan"))
    trainer = PPOTrainer(toy_config(tmp_path / "nan_model"), tiny_policy(), LearnedReward(broken), toy_segments())
    with pytest.raises(E3D2Error, match="reward model: non-finite rewards.*no checkpoint was written"):
        trainer.train()

    trainer = toy_trainer(tmp_path / "nan_loss")
    before = {name: value.clone() for name, value in trainer.policy.state_dict().items()}
    nan_loss = torch.tensor(float("nan"), requires_grad=True)
    trainer.compute_loss = lambda minibatch: (nan_loss, {"policy_loss": nan_loss.detach(), "value_loss": torch.tensor(0.0)})
    with pytest.raises(E3D2Error, match="non-finite loss"):
        trainer.train()
    assert all(torch.equal(value, trainer.policy.state_dict()[name]) for name, value in before.items())


# ----------------------------------------------------------------------------------------------
# Two gloo ranks vs one process
# ----------------------------------------------------------------------------------------------
def global_minibatch(size: int = 8) -> dict[str, torch.Tensor]:
    """A fixed minibatch of scored toy episodes (the same on every process)."""
    generator = torch.Generator().manual_seed(123)
    episodes = toy_segments().batch(np.arange(size))
    steps = episodes.upper_codes.shape[1] - 1
    return {
        "upper_codes": torch.randint(0, CODEBOOK, episodes.upper_codes.shape, generator=generator),
        "lower_codes": torch.randint(0, CODEBOOK, episodes.lower_codes.shape, generator=generator),
        "music_features": episodes.music_features,
        "log_probs": -3.0 + 0.3 * torch.randn(size, steps, generator=generator),
        "advantages": torch.randn(size, steps, generator=generator),
        "returns": torch.randn(size, steps, generator=generator),
    }


def minibatch_gradients(trainer: PPOTrainer, minibatch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    trainer.backward_minibatch(minibatch)
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {name: parameter.grad.detach().clone() for name, parameter in model.named_parameters()}


DDP_WORKER = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from pathlib import Path
from test_ppo import global_minibatch, minibatch_gradients, toy_trainer
out = Path(sys.argv[1])
trainer = toy_trainer(out / "run", train_batch_size=8, gradient_accumulation_steps=2)
rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
batch = global_minibatch()
share = len(batch["upper_codes"]) // world
local = {{key: value[rank * share:(rank + 1) * share] for key, value in batch.items()}}
gradients = minibatch_gradients(trainer, local)
if rank == 0:
    torch.save({{"world": world, "type": str(trainer.accelerator.distributed_type), "gradients": gradients}}, out / "ddp.pt")
trainer.accelerator.wait_for_everyone()
trainer.accelerator.end_training()  # leave the gloo group before exiting
"""


def test_two_gloo_ranks_compute_the_gradient_of_the_global_minibatch(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(DDP_WORKER.format(tests=str(ROOT / "tests"))))
    launch_ranks(worker, str(tmp_path), through_accelerate=True, timeout=120)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert ddp["world"] == 2 and "MULTI_CPU" in ddp["type"]

    single = minibatch_gradients(toy_trainer(tmp_path / "single", train_batch_size=8), global_minibatch())
    assert single.keys() == ddp["gradients"].keys()
    for name, gradient in single.items():
        torch.testing.assert_close(ddp["gradients"][name], gradient, atol=1e-5, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------------------------
# End to end on a tiny run folder
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """RUN/data, RUN/bc (tiny policy + tiny VQ-VAE) and RUN/reward (tiny reward model), built here."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    write_prepared(run_dir / "data", {"train": [320] * 4, "val": [320] * 2, "test": [320] * 2})
    torch.manual_seed(0)
    vqvae = E3D2VQVAE(VQVAEConfig(channels=8, codebook_dim=8, residual_depth=1, codebook_size=CODEBOOK))
    windows = torch.from_numpy(np.stack([dance_like_joints(64, seed) for seed in range(8)]))
    vqvae.train()(windows)  # the codebook starts at encoder outputs of a first batch
    policy = tiny_policy(music_dim=438)
    policy.attach_vqvae(vqvae.eval())
    policy.save_pretrained(run_dir / "bc")
    reward_model = E3D2RewardModel(RewardModelConfig(codebook_size=CODEBOOK, hidden_size=32, num_attention_heads=4))
    reward_model.save_pretrained(run_dir / "reward")
    return run_dir


def write_recipe(run_dir: Path, **ppo_overrides) -> Path:
    section = dict(
        max_steps=2, rollout_segments=16, train_batch_size=8, value_num_layers=1, eval_steps=1, eval_dance_seconds=3.0,
        save_steps=1, per_device_rollout_batch_size=16,
    )  # fmt: skip
    section.update(ppo_overrides)
    recipe = run_dir.parent / f"{run_dir.name}-{len(list(run_dir.parent.glob('*.yaml')))}.yaml"
    lines = [f"run_name: {run_dir.name}", f"runs_dir: {run_dir.parent}", "seed: 0", "ppo:"]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in section.items()]
    recipe.write_text("\n".join(lines) + "\n")
    return recipe


def test_end_to_end_on_a_tiny_run_folder(tiny_run, monkeypatch, tmp_path):
    monkeypatch.setenv("E3D2_CACHE", str(tmp_path / "cache"))
    assert run_stage("ppo", PPOConfig, train_ppo, [str(write_recipe(tiny_run, best_policy_metric="BAS"))]) == 0
    out = tiny_run / "ppo"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_policy"]["split"] == "val" and summary["policy_step"] == summary["best_policy"]["step"] in (1, 2)
    for evaluation in summary["evaluations"]:  # 2 val + 2 test pieces, each split scored alone too
        parts = evaluation["splits"]
        assert parts.keys() == {"val", "test"} and all(set(part["metrics"]) >= {"FID_k", "BAS"} for part in parts.values())
        assert (parts["val"]["learned_return"] + parts["test"]["learned_return"]) / 2 == pytest.approx(evaluation["learned_return"])
        assert evaluation["entropy"] > 0
    for key in ("learned_return_bc", "learned_return_final", "kl_final", "steps", "samples_per_second"):
        assert isinstance(summary[key], float | int) and math.isfinite(summary[key]), key
    assert summary["steps"] == 2 and summary["held_out_pieces"] == 4
    for key in ("metrics_bc", "metrics_final"):
        assert set(summary[key]) >= {"FID_k", "FID_g", "Div_k", "Div_g", "BAS"}, key
    assert [evaluation["step"] for evaluation in summary["evaluations"]] == [1, 2]
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["checkpoint-000001", "checkpoint-000002"]
    assert (tiny_run / "pose_codes" / "fingerprint.json").is_file()  # the run's shared pose-code cache
    assert any((out / "tensorboard").rglob("events.out.tfevents*"))
    with Image.open(out / "curves.png") as curves:  # beside log.jsonl
        assert curves.format == "PNG" and curves.size == (1600, 640)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if "eval" not in entry] == [1, 2] and "learned_return" in log[1]

    policy = AutoModelForCausalLM.from_pretrained(out / "policy")
    assert isinstance(policy, E3D2PolicyModel) and policy.load_vqvae().config.codebook_size == CODEBOOK
    card = (out / "policy" / "README.md").read_text()
    assert "learned return" in card and "kl_beta" in card

    # publishing offline is refused before training, leaving the run as it was
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    recipe = write_recipe(tiny_run, max_steps=1, eval_metrics=False, push_to_hub=True)
    assert run_stage("ppo", PPOConfig, train_ppo, [str(recipe), "--reward", "beat", "--overwrite_output_dir", "true"]) == 2
    assert json.loads((out / "summary.json").read_text())["steps"] == 2

    # the hand-designed reward (paper Table 2) runs from the same folder, as a recipe override,
    # and an upload that fails after training (no network here) is reported, not raised
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub, "HfApi", UnreachableHub)
    assert run_stage("ppo", PPOConfig, train_ppo, [str(recipe), "--reward", "beat", "--overwrite_output_dir", "true"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward"] == "beat" and summary["steps"] == 1 and summary["learned_return_final"] is not None
    assert summary["pushed_to_hub"] is False and (out / "policy" / "model.safetensors").is_file()


class UnreachableHub:
    """`HfApi` on a machine without a network."""

    def create_repo(self, *args, **kwargs):
        raise ConnectionError("network is unreachable")


def test_the_script_refuses_a_changed_resume_in_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    """A run killed at step 2 once resumed with the beat reward and lr 1e-2 and labelled the whole run 'beat'."""
    monkeypatch.setenv("E3D2_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "tiny"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("ppo"))
    recipe = str(write_recipe(run_dir, eval_steps=0, eval_metrics=False))
    assert run_stage("ppo", PPOConfig, train_ppo, [recipe]) == 0
    before = checkpoint_bytes(run_dir / "ppo")
    capsys.readouterr()
    assert run_stage("ppo", PPOConfig, train_ppo, [recipe, "--resume", "true", "--learning_rate", "1e-2", "--reward", "beat", "--max_steps", "4"]) == 2
    err = one_error_line(capsys.readouterr().err, "ppo: error: ")
    assert "checkpoint-000002: made with other settings (learning_rate 0.0003 -> 0.01, reward 'learned' -> 'beat')" in err
    assert checkpoint_bytes(run_dir / "ppo") == before and json.loads((run_dir / "ppo" / "summary.json").read_text())["reward"] == "learned"


def test_bad_input_is_refused_by_name(tiny_run, tmp_path):
    with pytest.raises(E3D2Error, match="behaviour-cloning policy"):
        train_ppo(PPOConfig(run_dir=str(tmp_path), report_to="none"))
    with pytest.raises(E3D2Error, match="no reward model"):
        train_ppo(PPOConfig(run_dir=str(tiny_run), reward_model_path=str(tmp_path / "none"), report_to="none"))
    wide = E3D2RewardModel(RewardModelConfig(codebook_size=2 * CODEBOOK, hidden_size=16, num_attention_heads=2))
    with pytest.raises(E3D2Error, match="codes per body half"):
        LearnedReward(wide).check_policy(tiny_policy(music_dim=438).config)
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("run_name: typo\nppo:\n  kl_betta: 0.1\n")
    with pytest.raises(E3D2Error, match="kl_betta"):
        parse_recipe(PPOConfig, "ppo", [str(recipe)])
    with pytest.raises(E3D2Error, match="advantage_estimator"):
        PPOConfig(advantage_estimator="td")


@pytest.mark.parametrize("name", ["tiny.yaml", "e3d2.yaml"])
def test_shipped_recipes_parse_into_the_ppo_config(name):
    config = parse_recipe(PPOConfig, "ppo", [str(ROOT / "recipes" / name)])
    assert config.output_dir.endswith("ppo") and config.reward == "learned"
