"""Stages 2-3: demonstrations format, ranked pairs, the reward model and its Bradley-Terry training."""

import importlib.util
import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, EvalPrediction

from e3d2_hf.data.demonstrations import (
    DEMONSTRATION_SPLITS,
    build_ranked_pairs,
    demonstration_features,
    ranked_pair_snippets,
    validate_demonstrations,
)
from e3d2_hf.models.configuration_reward import RewardModelConfig
from e3d2_hf.models.modeling_reward import E3D2RewardModel
from e3d2_hf.trainers import reward_model
from e3d2_hf.trainers.reward_model import bradley_terry_loss
from e3d2_hf.utils import E3D2Error

from conftest import one_error_line

ROOT = Path(__file__).resolve().parents[1]
NOISE_LEVELS = (0.02, 0.5, 1.0)
TOY_CODES = 4  # clean and random codes share this range, so only the music tells them apart


def toy_demonstration(rng, music_id, noise_level, demo_index, steps=40):
    """Clean demonstrations follow the music (code = argmax of 4 music columns); noisy steps pick random codes."""
    music = np.zeros((steps, 438), np.float32)
    music[:, :4] = rng.normal(size=(steps, 4))  # only the rule's columns vary, so there is nothing else to memorise
    rule = music[:, :4].argmax(axis=1)
    upper = np.where(rng.random(steps) < noise_level, rng.integers(0, TOY_CODES, steps), rule)
    lower = np.where(rng.random(steps) < noise_level, rng.integers(0, TOY_CODES, steps), rule)
    return {
        "music_id": music_id,
        "name": f"gBR_sBM_cAll_d04_{music_id}_ch01",
        "noise_level": noise_level,
        "demo_index": demo_index,
        "upper_codes": upper.astype(np.int64),
        "lower_codes": lower.astype(np.int64),
        "music_features_7p5": music,
    }


def toy_split(rng, music_ids, demos_per_level, noise_levels=NOISE_LEVELS, steps=40):
    rows = [
        toy_demonstration(rng, music_id, level, k, steps)
        for music_id in music_ids
        for level in noise_levels
        for k in range(demos_per_level)
    ]
    return datasets.Dataset.from_list(rows, features=demonstration_features())


def toy_demonstrations(seed=0, **split_overrides):
    rng = np.random.default_rng(seed)
    train_music = [f"mBR{i}" for i in range(8)]
    splits = {
        "train": toy_split(rng, train_music, 3),
        "eval_seen": toy_split(rng, train_music, 1),
        "eval_unseen": toy_split(rng, ["mPO0", "mPO1", "mPO2", "mPO3"], 2),
    }
    splits.update(split_overrides)
    return datasets.DatasetDict(splits)


@pytest.fixture(scope="module")
def demonstrations():
    return toy_demonstrations()


def tiny_model(**overrides):
    config = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, codebook_size=TOY_CODES)
    config.update(overrides)
    return E3D2RewardModel(RewardModelConfig(**config)).eval()


def random_trajectory(batch, steps, seed=0, codes=TOY_CODES):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, steps, 438, generator=generator),
        torch.randint(0, codes, (batch, steps), generator=generator),
        torch.randint(0, codes, (batch, steps), generator=generator),
    )


# ----------------------------------------------------------------------------------------------
# Ranked pairs
# ----------------------------------------------------------------------------------------------
def test_pair_labels_always_favour_the_lower_noise(demonstrations):
    splits = validate_demonstrations(demonstrations)
    split = splits["train"]
    pairs = build_ranked_pairs(split, num_pairs=600, seed=3)
    chosen, rejected = np.asarray(pairs["chosen_noise_level"]), np.asarray(pairs["rejected_noise_level"])
    assert (chosen < rejected).all()
    np.testing.assert_array_equal(chosen, split.noise_levels[np.asarray(pairs["chosen_row"])])
    np.testing.assert_array_equal(rejected, split.noise_levels[np.asarray(pairs["rejected_row"])])
    # every pair of distinct levels occurs, and pairs across different music occur
    assert {(c, r) for c, r in zip(chosen.tolist(), rejected.tolist())} == {
        (np.float32(a).item(), np.float32(b).item()) for a in NOISE_LEVELS for b in NOISE_LEVELS if a < b
    }
    assert any(c != r for c, r in zip(pairs["chosen_music_id"], pairs["rejected_music_id"]))
    # seeded: the same seed gives the same pairs, another seed others
    assert build_ranked_pairs(split, 600, seed=3)["chosen_offset"] == pairs["chosen_offset"]
    assert build_ranked_pairs(split, 600, seed=4)["chosen_offset"] != pairs["chosen_offset"]


def test_snippets_are_the_29_steps_after_the_crop_start(demonstrations):
    split = validate_demonstrations(demonstrations)["eval_unseen"]
    pairs = build_ranked_pairs(split, num_pairs=50, seed=0)
    offsets = np.asarray(pairs["chosen_offset"])
    assert offsets.min() >= 0 and (offsets + 30 <= split.lengths[np.asarray(pairs["chosen_row"])]).all()
    snippets = ranked_pair_snippets(pairs, split)[:5]
    assert snippets["chosen_music_features"].shape == (5, 29, 438)
    assert snippets["rejected_upper_codes"].shape == (5, 29)
    for j in range(5):
        music, upper, lower = split.demonstration(pairs[j]["chosen_row"])
        start = pairs[j]["chosen_offset"] + 1  # the crop's first step is dropped
        np.testing.assert_array_equal(snippets["chosen_music_features"][j], music[start : start + 29])
        np.testing.assert_array_equal(snippets["chosen_lower_codes"][j], lower[start : start + 29])
        music, upper, lower = split.demonstration(pairs[j]["rejected_row"])
        start = pairs[j]["rejected_offset"] + 1
        np.testing.assert_array_equal(snippets["rejected_upper_codes"][j], upper[start : start + 29])


def test_mismatched_music_pairs_rank_own_music_above_another_pieces(demonstrations):
    split = validate_demonstrations(demonstrations)["train"]
    plain = build_ranked_pairs(split, num_pairs=400, seed=5)
    pairs = build_ranked_pairs(split, num_pairs=400, seed=5, mismatched_music_fraction=0.5)
    kind = np.asarray(pairs["pair_kind"])
    music = kind == "music"
    assert set(plain["pair_kind"]) == {"noise"} and 150 < music.sum() < 250  # binomial(400, 0.5): sd 10
    columns = {name: np.asarray(pairs[name]) for name in pairs.column_names if name != "pair_kind"}
    # a music pair: one snippet of the lowest noise level twice; chosen reads its own music, rejected another piece's
    np.testing.assert_array_equal(columns["chosen_row"][music], columns["rejected_row"][music])
    np.testing.assert_array_equal(columns["chosen_offset"][music], columns["rejected_offset"][music])
    np.testing.assert_array_equal(columns["chosen_music_row"][music], columns["chosen_row"][music])
    assert (columns["chosen_noise_level"][music] == np.float32(min(NOISE_LEVELS))).all()
    assert (columns["rejected_music_id"][music] != columns["chosen_music_id"][music]).all()
    # a noise pair reads each side's own music, as without the option
    for side in ("chosen", "rejected"):
        np.testing.assert_array_equal(columns[f"{side}_music_row"][~music], columns[f"{side}_row"][~music])
    assert (columns["chosen_noise_level"][~music] < columns["rejected_noise_level"][~music]).all()
    snippets = ranked_pair_snippets(pairs, split)[np.flatnonzero(music)[:4].tolist()]
    np.testing.assert_array_equal(snippets["chosen_upper_codes"], snippets["rejected_upper_codes"])
    for j, index in enumerate(np.flatnonzero(music)[:4]):
        other_music = split.demonstration(columns["rejected_music_row"][index])[0]
        start = columns["rejected_music_offset"][index] + 1
        np.testing.assert_array_equal(snippets["rejected_music_features"][j], other_music[start : start + 29])
        assert not np.array_equal(snippets["rejected_music_features"][j], snippets["chosen_music_features"][j])


def test_mismatched_music_pairs_need_two_pieces(demonstrations):
    rng = np.random.default_rng(0)
    split = validate_demonstrations(toy_demonstrations(eval_unseen=toy_split(rng, ["mPO0"], 2)))["eval_unseen"]
    assert len(build_ranked_pairs(split, 10, seed=0)) == 10
    with pytest.raises(E3D2Error, match=r"ranked pairs \[eval_unseen\]: mismatched-music pairs need at least two pieces of music, found 1"):
        build_ranked_pairs(split, 10, seed=0, mismatched_music_fraction=0.1)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def test_single_noise_level_is_rejected():
    rng = np.random.default_rng(1)
    single = toy_split(rng, ["mBR0", "mBR1"], 2, noise_levels=(0.25,))
    with pytest.raises(E3D2Error, match="single noise level"):
        validate_demonstrations(toy_demonstrations(train=single))


def test_snippets_shorter_than_the_crop_are_rejected():
    rng = np.random.default_rng(2)
    short = toy_split(rng, ["mPO0"], 1, steps=20)
    with pytest.raises(E3D2Error, match="shorter than the 30-step"):
        validate_demonstrations(toy_demonstrations(eval_unseen=short))


def test_music_width_mismatch_is_rejected(demonstrations):
    with pytest.raises(E3D2Error, match="width 438, expected 100"):
        validate_demonstrations(demonstrations, music_dim=100)
    model = tiny_model()
    music, upper, lower = random_trajectory(2, 10)
    with pytest.raises(E3D2Error, match="expects .*438"):
        model(music[..., :400], upper, lower)


def test_missing_split_and_leaked_unseen_music_are_rejected(demonstrations):
    with pytest.raises(E3D2Error, match="eval_seen"):
        validate_demonstrations(datasets.DatasetDict({"train": demonstrations["train"], "eval_unseen": demonstrations["eval_unseen"]}))
    rng = np.random.default_rng(3)
    with pytest.raises(E3D2Error, match="unseen music must be held out"):
        validate_demonstrations(toy_demonstrations(eval_unseen=toy_split(rng, ["mBR0"], 1)))
    with pytest.raises(E3D2Error, match="outside the codebook"):
        validate_demonstrations(demonstrations, codebook_size=TOY_CODES - 1)


def test_nan_rewards_raise_a_clear_error():
    model = tiny_model()
    music, upper, lower = random_trajectory(2, 10)
    music[1, 3, 7] = float("nan")
    with pytest.raises(E3D2Error, match="NaN.*music features contain NaN"):
        model(music, upper, lower)


# ----------------------------------------------------------------------------------------------
# Reward model
# ----------------------------------------------------------------------------------------------
def test_rewards_are_causal_and_padding_is_ignored():
    model = tiny_model()
    music, upper, lower = random_trajectory(3, 29)
    output = model(music, upper, lower)
    assert output.rewards.shape == (3, 29)
    torch.testing.assert_close(output.returns, output.rewards.sum(dim=1))
    later = upper.clone()
    later[:, 20] = (later[:, 20] + 1) % TOY_CODES
    changed = model(music, later, lower).rewards
    torch.testing.assert_close(changed[:, :20], output.rewards[:, :20])  # r(s_t, a_t) never sees a later action
    assert not torch.allclose(changed[:, 20], output.rewards[:, 20])
    mask = torch.ones(3, 29, dtype=torch.bool)
    mask[:, 12:] = False
    padded = model(music, upper, lower, attention_mask=mask)
    torch.testing.assert_close(padded.rewards[:, :12], output.rewards[:, :12])
    assert padded.rewards[:, 12:].abs().sum() == 0
    with pytest.raises(E3D2Error, match="score_trajectory"):
        model(*random_trajectory(1, 30))


def test_score_trajectory_sums_the_windows():
    model = tiny_model()
    music, upper, lower = random_trajectory(2, 100, seed=5)
    with torch.no_grad():
        scored = model.score_trajectory(music, upper, lower)
        windows = [model(music[:, s : s + 29], upper[:, s : s + 29], lower[:, s : s + 29]) for s in range(0, 100, 29)]
    assert scored.rewards.shape == (2, 100)
    torch.testing.assert_close(scored.rewards, torch.cat([w.rewards for w in windows], dim=1))
    torch.testing.assert_close(scored.returns, sum(w.returns for w in windows))


def test_bradley_terry_loss_equals_hand_computed_value():
    chosen, rejected = torch.tensor([2.0, -1.0, 0.3]), torch.tensor([0.5, 1.0, 0.3])
    # -log sigmoid(d) = log(1 + exp(-d)) for d = 1.5, -2, 0
    expected = (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(2.0)) + math.log(2.0)) / 3
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    # the same as cross-entropy of logits [R_chosen, R_rejected] against label 0
    logits = torch.stack((chosen, rejected), dim=1)
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(F.cross_entropy(logits, torch.zeros(3, dtype=torch.long)).item(), rel=1e-6)


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = tiny_model(layer_norm_first=True, num_hidden_layers=2)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "e3d2_reward"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, E3D2RewardModel) and loaded.config.layer_norm_first and loaded.config.num_hidden_layers == 2
    music, upper, lower = random_trajectory(2, 29)
    torch.testing.assert_close(loaded(music, upper, lower).rewards, model(music, upper, lower).rewards)


# ----------------------------------------------------------------------------------------------
# End to end: scripts/reward.py with the tiny recipe on toy demonstrations in a run folder
# ----------------------------------------------------------------------------------------------
def reward_script():
    spec = importlib.util.spec_from_file_location("reward_script", ROOT / "scripts" / "reward.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, demonstrations):
    run_dir = tmp_path_factory.mktemp("run")
    demonstrations.save_to_disk(str(run_dir / "demos" / "demonstrations"))
    script = reward_script()
    overrides = ["--run_dir", str(run_dir), "--output_dir", str(run_dir / "reward"), "--codebook_size", str(TOY_CODES)]
    overrides += ["--num_train_pairs", "1280", "--num_eval_pairs", "200", "--num_train_epochs", "3", "--eval_strategy", "epoch", "--disable_tqdm", "true"]
    overrides += ["--mismatched_music_fraction", "0.25"]
    # One thread: this model is too small to gain from two, and a busy machine makes OpenMP threads spin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert script.main([str(ROOT / "recipes" / "tiny.yaml"), *overrides]) == 0
    finally:
        torch.set_num_threads(threads)
    return run_dir


def test_reward_model_learns_the_toy_ranking(trained_run):
    diagnostics = json.loads((trained_run / "reward" / "diagnostics.json").read_text())
    assert diagnostics["pair_accuracy_seen"] > 0.75
    assert diagnostics["pair_accuracy_unseen"] > 0.75
    means = [diagnostics["return_by_noise"][f"{level:g}"]["mean"] for level in NOISE_LEVELS]
    assert means[0] > means[1] > means[2] and diagnostics["monotonic"] is True
    assert [point["epoch"] for point in diagnostics["accuracy_per_epoch"]] == [1.0, 2.0, 3.0]
    assert {"epoch", "train", "seen", "unseen", "seen_mismatched", "unseen_mismatched"} <= set(diagnostics["accuracy_per_epoch"][-1])
    # the toy's clean codes follow the music, so its own music ranks above another piece's
    assert diagnostics["mismatched_music_accuracy_seen"] > 0.75 and diagnostics["mismatched_music_accuracy_unseen"] > 0.75


def test_training_writes_a_complete_reward_folder(trained_run):
    reward_dir = trained_run / "reward"
    for name in ("config.json", "model.safetensors", "README.md", "diagnostics.json", "diagnostics.png", "training_config.json"):
        assert (reward_dir / name).is_file(), name
    assert list((reward_dir / "runs").rglob("events.out.tfevents*")), "tensorboard logs"
    assert (reward_dir / "diagnostics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (reward_dir / "README.md").read_text()
    assert "held-out, unseen music" in card and "| learning_rate | 0.0005 |" in card
    assert not any(path.name.startswith(".reward") for path in trained_run.iterdir())
    pairs = datasets.load_from_disk(str(trained_run / "demos" / "ranked_pairs"))
    assert set(pairs) == {*DEMONSTRATION_SPLITS, "eval_seen_mismatched", "eval_unseen_mismatched"} and len(pairs["train"]) == 1280
    assert 200 < pairs["train"]["pair_kind"].count("music") < 440 and set(pairs["eval_seen_mismatched"]["pair_kind"]) == {"music"}
    assert "own vs other music, unseen" in card and "| mismatched_music_fraction | 0.25 |" in card
    model = AutoModel.from_pretrained(reward_dir)
    assert isinstance(model, E3D2RewardModel) and model.config.context_steps == 29 and model.config.hidden_size == 64


def test_pair_accuracy_counts_a_tie_as_half():
    """A music-blind reward model ties every mismatched-music pair (the same codes twice): chance, 0.5, not 0."""
    returns = np.array([[2.0, 1.0], [1.0, 1.0], [0.0, 3.0], [5.0, 5.0]])
    assert reward_model.pair_accuracy(EvalPrediction(predictions=returns, label_ids=np.zeros(4))) == {"pair_accuracy": 0.5}
    music, upper, lower = random_trajectory(2, 29)
    blind = tiny_model()
    with torch.no_grad():
        blind.music_embedding.weight.zero_()
        blind.music_embedding.bias.zero_()
        own, other = blind(music[:1], upper[:1], lower[:1]).returns, blind(music[1:], upper[:1], lower[:1]).returns
    assert torch.equal(own, other)  # so the ties are real, and counted as half


def test_one_held_out_piece_leaves_its_mismatched_music_accuracy_unmeasured(tmp_path):
    rng = np.random.default_rng(1)
    toy_demonstrations(eval_unseen=toy_split(rng, ["mPO0"], 2)).save_to_disk(str(tmp_path / "demos" / "demonstrations"))
    overrides = ["--run_dir", str(tmp_path), "--output_dir", str(tmp_path / "reward"), "--codebook_size", str(TOY_CODES)]
    overrides += ["--num_train_pairs", "64", "--num_eval_pairs", "16", "--num_train_epochs", "1", "--disable_tqdm", "true"]
    assert reward_script().main([str(ROOT / "recipes" / "tiny.yaml"), *overrides]) == 0
    diagnostics = json.loads((tmp_path / "reward" / "diagnostics.json").read_text())
    assert diagnostics["mismatched_music_accuracy_unseen"] is None
    assert 0.0 <= diagnostics["mismatched_music_accuracy_seen"] <= 1.0
    assert "not measured (one piece)" in (tmp_path / "reward" / "README.md").read_text()


def test_script_without_demonstrations_fails_cleanly(tmp_path, capsys):
    overrides = ["--run_dir", str(tmp_path), "--output_dir", str(tmp_path / "reward")]
    assert reward_script().main([str(ROOT / "recipes" / "tiny.yaml"), *overrides]) == 2
    assert "no demonstrations here" in capsys.readouterr().err
    assert not (tmp_path / "reward").exists()


def test_a_non_finite_loss_stops_training_and_writes_no_reward_model(tmp_path, demonstrations, capsys, monkeypatch):
    """transformers' Trainer goes on after a NaN loss (and leaves it out of its logs); this stage stops at once."""
    demonstrations.save_to_disk(str(tmp_path / "demos" / "demonstrations"))
    monkeypatch.setattr(reward_model, "bradley_terry_loss", lambda chosen, rejected: (chosen - rejected).mean() * float("nan"))
    overrides = ["--run_dir", str(tmp_path), "--output_dir", str(tmp_path / "reward"), "--codebook_size", str(TOY_CODES)]
    overrides += ["--num_train_pairs", "64", "--num_eval_pairs", "16", "--num_train_epochs", "1", "--disable_tqdm", "true"]
    assert reward_script().main([str(ROOT / "recipes" / "tiny.yaml"), *overrides]) == 2
    error = one_error_line(capsys.readouterr().err, "reward: error: ")
    assert error == "reward: error: reward: non-finite Bradley-Terry loss at step 1 (epoch 0.00); training stopped, no checkpoint was written yet"
    assert not (tmp_path / "reward").exists()
