"""Stage 2: eps-greedy ranked demonstrations: the noise, seeding and batching, the run-folder stage, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from e3d2_hf.data.demonstrations import DEMONSTRATION_SPLITS, load_demonstrations, validate_demonstrations
from e3d2_hf.models.configuration_policy import PolicyConfig
from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.recipe import parse_recipe, run_stage
from e3d2_hf.rl.environment import Piece
from e3d2_hf.trainers.demos import DemosConfig, RolloutBatch, generate_demonstrations, plan_batches, roll_out
from e3d2_hf.utils import E3D2Error

from conftest import launch_ranks, tiny_vqvae, write_prepared

ROOT = Path(__file__).resolve().parents[1]
CODEBOOK = 16
NOISE_LEVELS = [0.02, 0.5, 1.0]
SPLIT_FRAMES = {"train": [320, 272, 248], "val": [256], "test": [240]}


def tiny_policy(seed: int = 0, music_dim: int = 438) -> E3D2PolicyModel:
    torch.manual_seed(seed)
    config = PolicyConfig(codebook_size=CODEBOOK, music_dim=music_dim, hidden_size=32, num_hidden_layers=2, num_base_layers=1, num_attention_heads=4)
    policy = E3D2PolicyModel(config).eval()
    with torch.no_grad():  # a peaked policy (code 3 w.p. 0.96 in both halves, whatever it sees), so that the noise is visible
        policy.final_norm.weight.zero_()
        policy.final_norm.bias.zero_()
        policy.final_norm.bias[0] = 1.0
        for head in (policy.upper_head, policy.lower_head):
            head.weight.zero_()
            head.weight[3, 0] = 6.0
    return policy


def random_pieces(count: int, steps: int, music_dim: int = 438, seed: int = 0) -> list[Piece]:
    rng = np.random.default_rng(seed)
    return [
        Piece(f"piece{index}", f"m{index}", int(rng.integers(CODEBOOK)), int(rng.integers(CODEBOOK)), rng.standard_normal((steps - index, music_dim)).astype(np.float32))
        for index in range(count)
    ]


def chosen_codes(rows: list[dict]) -> np.ndarray:
    return np.concatenate([np.concatenate([row["upper_codes"][1:], row["lower_codes"][1:]]) for row in rows])


def test_noise_one_is_uniform_and_noise_zero_is_the_policy():
    policy, pieces = tiny_policy(), random_pieces(8, 40)
    config = DemosConfig(noise_levels=NOISE_LEVELS)
    items = tuple((index, 0) for index in range(len(pieces)))

    uniform = chosen_codes(roll_out(policy, pieces, RolloutBatch("train", 1.0, items * 4, seed=1), config))
    counts = np.bincount(uniform, minlength=CODEBOOK)
    assert chisquare(counts).pvalue > 1e-3, counts  # eps = 1: every code equally likely, whatever the policy prefers

    clean = roll_out(policy, pieces, RolloutBatch("train", 0.0, items, seed=2), config)
    assert np.bincount(chosen_codes(clean), minlength=CODEBOOK)[3] > 0.9 * len(chosen_codes(clean))  # the policy's favourite
    longest = max(piece.steps for piece in pieces)
    music = torch.zeros(len(pieces), longest, 438)
    for row, piece in enumerate(pieces):
        music[row, : piece.steps] = torch.from_numpy(piece.music_features)
    tokens = policy.generate(
        music,
        upper_codes=torch.tensor([[piece.first_upper] for piece in pieces]),
        lower_codes=torch.tensor([[piece.first_lower] for piece in pieces]),
        do_sample=True,
        generator=torch.Generator().manual_seed(2),
    )
    upper, lower = policy.split_pose_tokens(tokens)
    for row, (piece, demonstration) in enumerate(zip(pieces, clean)):
        assert len(demonstration["upper_codes"]) == piece.steps and demonstration["upper_codes"][0] == piece.first_upper
        np.testing.assert_array_equal(demonstration["upper_codes"], upper[row, : piece.steps].numpy())  # eps = 0: the policy's own samples
        np.testing.assert_array_equal(demonstration["lower_codes"], lower[row, : piece.steps].numpy())


def test_noise_share_grows_with_eps():
    policy, pieces = tiny_policy(), random_pieces(8, 40)
    config = DemosConfig(noise_levels=NOISE_LEVELS, do_sample=False)
    items = tuple((index, k) for index in range(len(pieces)) for k in range(2))
    off_policy = [np.mean(chosen_codes(roll_out(policy, pieces, RolloutBatch("train", eps, items, seed=0), config)) != 3) for eps in NOISE_LEVELS]
    expected = [eps * (CODEBOOK - 1) / CODEBOOK for eps in NOISE_LEVELS]  # greedy always picks code 3; noise picks another w.p. 15/16
    np.testing.assert_allclose(off_policy, expected, atol=0.05)


def test_greedy_demonstrators_leave_only_the_noisy_steps_off_the_greedy_dance():
    """do_sample false (the tiny recipe): eps = 0 is the greedy dance, and eps > 0 departs from it only by whole noisy steps."""
    policy, pieces = tiny_policy(music_dim=8), random_pieces(6, 30, music_dim=8)
    config = DemosConfig(noise_levels=NOISE_LEVELS, do_sample=False)
    items = tuple((index, 0) for index in range(len(pieces)))
    clean = roll_out(policy, pieces, RolloutBatch("train", 0.0, items, seed=4), config)
    assert all((row["upper_codes"][1:] == 3).all() and (row["lower_codes"][1:] == 3).all() for row in clean)  # the peaked policy's argmax
    for row in roll_out(policy, pieces, RolloutBatch("train", 0.5, items, seed=4), config):
        upper_off, lower_off = row["upper_codes"][1:] != 3, row["lower_codes"][1:] != 3
        # a replaced code repeats the greedy one w.p. 1/16, so a noisy step may show one half on the policy, never a lone coin
        assert 0 < np.mean(upper_off | lower_off) < 1 and np.mean(upper_off != lower_off) < 0.25


def test_the_plan_covers_every_rollout_once_with_its_own_seed():
    pieces = random_pieces(5, 30)
    config = DemosConfig(noise_levels=NOISE_LEVELS, per_device_batch_size=4)
    plan = plan_batches("train", 0, pieces, config, demos_per_music=3)
    for level in NOISE_LEVELS:
        items = [item for batch in plan if batch.noise_level == level for item in batch.items]
        assert sorted(items) == [(piece, k) for piece in range(5) for k in range(3)]
    assert len({batch.seed for batch in plan}) == len(plan)
    assert plan == plan_batches("train", 0, pieces, config, demos_per_music=3)  # a function of the config alone
    first = [pieces[piece].steps for piece, _ in plan[0].items]
    assert first == sorted(first, reverse=True)  # longest first: little padding


def write_bc_run(run_dir: Path) -> Path:
    write_prepared(run_dir / "data", SPLIT_FRAMES)
    policy = tiny_policy()
    policy.attach_vqvae(tiny_vqvae(codebook_size=CODEBOOK))
    policy.save_pretrained(run_dir / "bc")
    return run_dir


def write_recipe(run_dir: Path, **section) -> Path:
    section = {"noise_levels": NOISE_LEVELS, "demos_per_music": 2, "per_device_batch_size": 4, "disable_tqdm": True, **section}
    recipe = run_dir.parent / f"{run_dir.name}.yaml"
    lines = [f"run_name: {run_dir.name}", f"runs_dir: {run_dir.parent}", "seed: 0", "demos:"]
    recipe.write_text("\n".join(lines + [f"  {key}: {json.dumps(value)}" for key, value in section.items()]) + "\n")
    return recipe


@pytest.fixture(scope="module")
def demos_run(tmp_path_factory) -> Path:
    run_dir = write_bc_run(tmp_path_factory.mktemp("runs") / "tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("E3D2_CACHE", str(run_dir.parent / "cache"))
        assert run_stage("demos", DemosConfig, generate_demonstrations, [str(write_recipe(run_dir))]) == 0
    return run_dir


def test_stage_writes_demonstrations_the_reward_stage_accepts(demos_run):
    demonstrations = load_demonstrations(demos_run / "demos" / "demonstrations")
    splits = validate_demonstrations(demonstrations, codebook_size=CODEBOOK)  # the contract the reward trainer checks
    assert [len(demonstrations[split]) for split in DEMONSTRATION_SPLITS] == [3 * 3 * 2, 3 * 3 * 1, 2 * 3 * 1]
    assert set(demonstrations["eval_unseen"]["music_id"]) == {"mBR3", "mBR4"}
    codes = datasets.load_from_disk(str(demos_run / "pose_codes"))
    first_codes = {row["name"]: (row["upper_codes"][0], len(row["upper_codes"])) for split in codes.values() for row in split}
    for split in DEMONSTRATION_SPLITS:
        for row in demonstrations[split]:
            first, steps = first_codes[row["name"]]
            assert row["upper_codes"][0] == first and len(row["upper_codes"]) == steps == len(row["music_features_7p5"])
    summary = json.loads((demos_run / "demos" / "summary.json").read_text())
    assert summary["demonstrations"] == {"train": 18, "eval_seen": 9, "eval_unseen": 6}
    assert summary["per_noise_level"]["train"] == {"0.02": 6, "0.5": 6, "1": 6} and summary["steps_per_second"] > 0
    assert splits["train"].noise_levels.tolist().count(np.float32(0.02)) == 6


def test_rerun_is_refused_unless_asked_and_then_identical(demos_run):
    recipe = write_recipe(demos_run)
    with pytest.raises(E3D2Error, match="overwrite_output_dir"):
        generate_demonstrations(parse_recipe(DemosConfig, "demos", [str(recipe)]))
    before = load_demonstrations(demos_run / "demos" / "demonstrations")
    generate_demonstrations(parse_recipe(DemosConfig, "demos", [str(recipe), "--overwrite_output_dir", "true"]))
    after = load_demonstrations(demos_run / "demos" / "demonstrations")
    for split in DEMONSTRATION_SPLITS:
        assert before[split]["upper_codes"] == after[split]["upper_codes"]  # seeded


def test_two_gloo_ranks_make_the_same_demonstrations(demos_run, tmp_path):
    out = tmp_path / "demos"
    stderr = launch_ranks(ROOT / "scripts" / "demos.py", str(write_recipe(demos_run)), "--output_dir", str(out), timeout=180)
    assert "2 process(es)" in stderr, stderr[-3000:]
    single, double = load_demonstrations(demos_run / "demos" / "demonstrations"), load_demonstrations(out / "demonstrations")
    for split in DEMONSTRATION_SPLITS:
        for column in ("name", "noise_level", "demo_index", "upper_codes", "lower_codes"):
            assert single[split][column] == double[split][column], (split, column)


def test_bad_input_is_refused_clearly(tmp_path):
    with pytest.raises(E3D2Error, match="at least two distinct"):
        DemosConfig(noise_levels=[0.5, 0.5])
    with pytest.raises(E3D2Error, match=r"in \[0, 1\]"):
        DemosConfig(noise_levels=[0.1, 1.5])
    with pytest.raises(E3D2Error, match="behaviour-cloning policy"):
        generate_demonstrations(DemosConfig(run_dir=str(tmp_path / "empty")))
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("run_name: typo\ndemos:\n  noise_level: [0.1, 0.2]\n")
    with pytest.raises(E3D2Error, match="noise_level"):
        parse_recipe(DemosConfig, "demos", [str(recipe)])


@pytest.mark.parametrize("name", ["tiny.yaml", "e3d2.yaml"])
def test_shipped_recipes_use_the_paper_noise_schedule(name):
    config = parse_recipe(DemosConfig, "demos", [str(ROOT / "recipes" / name)])
    assert config.noise_levels == [0.02, 0.25, 0.5, 0.75, 1.0] and config.output_dir.endswith("demos")
