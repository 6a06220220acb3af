"""Table 1 of a tiny run folder: its rows (ceiling, floor, intervals), Tables 3 and 5, versions, and bad held-out splits."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from e3d2_hf.evaluation.table_1 import EvalConfig, evaluate_run, format_table_1, policy_evaluation
from e3d2_hf.metrics import MetricWarning, evaluate_dances
from e3d2_hf.models.configuration_reward import RewardModelConfig
from e3d2_hf.models.modeling_reward import E3D2RewardModel
from e3d2_hf.recipe import run_stage
from e3d2_hf.rl.heldout import GroundTruth
from e3d2_hf.trainers.demos import DemosConfig, generate_demonstrations
from e3d2_hf.utils import E3D2Error
from e3d2_hf.versions import PACKAGES, environment_versions

from conftest import tiny_dancing_policy, tiny_vqvae, write_prepared

CODEBOOK = 32
SPLITS = {"train": [320] * 4, "val": [320] * 3, "test": [320] * 3}
NOISE_LEVELS = [0.02, 0.5, 1.0]
ROOT = Path(__file__).resolve().parents[1]


def _config(run_dir: Path, **overrides) -> EvalConfig:
    return EvalConfig(run_dir=str(run_dir), **({"dance_seconds": 2.0, "batch_size": 4} | overrides))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """RUN/data, RUN/bc (tiny random policy + VQ-VAE), RUN/reward and RUN/demos, then Table 1 of it."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    write_prepared(run_dir / "data", SPLITS)
    policy = tiny_dancing_policy(CODEBOOK)
    policy.attach_vqvae(tiny_vqvae(codebook_size=CODEBOOK))  # its codebooks initialised, as a trained one's are
    policy.save_pretrained(run_dir / "bc")
    torch.manual_seed(0)
    E3D2RewardModel(RewardModelConfig(codebook_size=CODEBOOK, hidden_size=32, num_attention_heads=4)).save_pretrained(run_dir / "reward")
    recipe = run_dir.parent / "tiny.yaml"
    demos = {"noise_levels": NOISE_LEVELS, "demos_per_music": 1, "per_device_batch_size": 8, "disable_tqdm": True}
    recipe.write_text(f"run_name: tiny\nruns_dir: {run_dir.parent}\nseed: 0\ndemos:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in demos.items()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("E3D2_CACHE", str(run_dir.parent / "cache"))
        assert run_stage("demos", DemosConfig, generate_demonstrations, [str(recipe)]) == 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)  # a random policy on random data: the metrics warn, as they should
            evaluate_run(_config(run_dir))
    return run_dir


@pytest.fixture(autouse=True)
def private_cache(tiny_run, monkeypatch):
    monkeypatch.setenv("E3D2_CACHE", str(tiny_run.parent / "cache"))


def test_table_1_has_its_ceiling_floor_intervals_and_tables_3_and_5(tiny_run):
    table = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert [key for key in table if key in ("ground_truth", "vqvae", "bc", "e3d2", "beat", "random")] == ["ground_truth", "vqvae", "bc", "random"]
    for row in ("ground_truth", "vqvae", "bc", "random"):
        assert set(table[row]["ci95"]) == {"FID_k", "FID_g", "Div_k", "Div_g", "BAS"}, row
        for key, (low, high) in table[row]["ci95"].items():
            assert np.isfinite(table[row][key]) and low <= high, (row, key)
    assert all(set(table[row]["minus_bc_ci95"]) == set(table[row]["ci95"]) for row in ("ground_truth", "vqvae", "random"))
    assert "minus_bc_ci95" not in table["bc"] and "draws" not in table["bc"]
    assert table["protocol"]["pieces"] == 6 and table["protocol"]["decoding"] == "greedy" and table["protocol"]["generation"] == "cache"
    assert table["protocol"]["intervals"]["resamples"] == 1000
    assert table["ground_truth"]["learned_return"] is None and np.isfinite(table["vqvae"]["learned_return"])
    assert set(table["noise_levels"]) == {"0.02", "0.5", "1"}
    for level in table["noise_levels"].values():
        assert level["demonstrations"] == 4 and np.isfinite(level["learned_return"]) and "ci95" in level
    assert table["seen_unseen"]["seen"]["pieces"] == 4 and table["seen_unseen"]["unseen"]["FID_k"] == table["bc"]["FID_k"]
    markdown = (tiny_run / "eval" / "metrics.md").read_text()
    assert "| VQ-VAE (ceiling) |" in markdown and "| Random (floor) |" in markdown and "Table 3" in markdown and "Table 5" in markdown
    bc_line = next(line for line in markdown.splitlines() if line.startswith("| BC (Bailando) |"))
    assert bc_line.count(" [") == 5  # FID_k, FID_g, Div_k, Div_g, BAS with their intervals
    assert "Paired with BC" in markdown and "| Random (floor) | [" in markdown
    assert "tiny/bc/diagnostics.json" in markdown and "tiny/reward/diagnostics.json and diagnostics.png" in markdown  # Table 4, Figure 6


def test_a_cell_shows_the_number_and_its_interval():
    row = {"FID_k": 307.94, "FID_g": 12.0, "Div_k": 5.0, "Div_g": 4.0, "BAS": 0.25, "PFC": 1.0, "learned_return": None,
           "ci95": {"FID_k": [290.12, 325.33], "FID_g": [10.0, 14.0], "Div_k": [4.5, 5.5], "Div_g": [3.5, 4.5], "BAS": [0.2, 0.3]}}  # fmt: skip
    line = format_table_1({"bc": row}).splitlines()[2]
    assert line.startswith("| BC (Bailando) | 307.9 [290.1, 325.3] | 12.0 [10.0, 14.0] | 5.00 [4.50, 5.50] |")
    assert line.endswith("| 0.2500 [0.2000, 0.3000] | 1.0000 | - |")


def test_metrics_json_records_the_versions(tiny_run):
    versions = json.loads((tiny_run / "eval" / "metrics.json").read_text())["versions"]
    assert set(versions) == {"python", *PACKAGES, "e3d2_hf", "git_commit", "git_dirty"}
    assert versions["numpy"] == np.__version__ and versions["torch"].startswith(torch.__version__.split("+")[0])
    fresh = environment_versions()
    if (ROOT / ".git").exists():  # a checkout (a worktree's .git is a file): the commit is recorded
        assert len(fresh["git_commit"]) == 40 and isinstance(fresh["git_dirty"], bool)


def _evaluation(run_dir: Path, **overrides):
    data = datasets.load_from_disk(str(run_dir / "data"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        ground_truth = GroundTruth.from_prepared(data, run_dir / "data")
    return policy_evaluation(str(run_dir / "bc"), _config(run_dir, **overrides), data, ground_truth, None), data


def test_the_vqvae_row_is_the_cached_pose_codes_decoded(tiny_run):
    (policy, evaluation, _), data = _evaluation(tiny_run)
    vqvae = policy.load_vqvae()
    clips = evaluation.reconstruct(vqvae).clips
    cached = datasets.load_from_disk(str(tiny_run / "pose_codes"))
    for split in ("val", "test"):
        for codes, prepared in zip(cached[split], data[split].with_format("numpy")):
            steps = len(clips[codes["name"]]) // 8
            upper, lower = (torch.tensor(codes[half][:steps])[None] for half in ("upper_codes", "lower_codes"))
            decoded = vqvae.decode(upper, lower, torch.as_tensor(prepared["joints"][0, 0:1]))[0].numpy()
            np.testing.assert_allclose(clips[codes["name"]], decoded, atol=1e-6)
    table = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        again = evaluation.scores(clips, "vqvae")
    assert again["FID_k"] == pytest.approx(table["vqvae"]["FID_k"]) and again["BAS"] == pytest.approx(table["vqvae"]["BAS"])


def test_greedy_dances_are_deterministic_and_sampled_ones_follow_the_seed(tiny_run):
    (policy, first, _), _ = _evaluation(tiny_run, seed=1)
    (_, second, _), _ = _evaluation(tiny_run, seed=2)
    greedy = [evaluation.dance(policy).clips for evaluation in (first, second, first)]
    for name in greedy[0]:
        np.testing.assert_array_equal(greedy[0][name], greedy[1][name])
        np.testing.assert_array_equal(greedy[0][name], greedy[2][name])
    (_, sampled_1, _), _ = _evaluation(tiny_run, seed=1, do_sample=True)
    (_, sampled_2, _), _ = _evaluation(tiny_run, seed=2, do_sample=True)
    one, two = sampled_1.dance(policy).clips, sampled_2.dance(policy).clips
    assert any(not np.array_equal(one[name], two[name]) for name in one)
    random_1, random_2 = first.dance(policy, noise_level=1.0).clips, second.dance(policy, noise_level=1.0).clips
    assert any(not np.array_equal(random_1[name], greedy[0][name]) for name in random_1)  # the floor is not the policy
    assert any(not np.array_equal(random_1[name], random_2[name]) for name in random_1)  # and it follows the seed


def test_the_beat_row_appears_when_its_policy_exists(tiny_run, tmp_path):
    shutil.copytree(tiny_run / "bc", tiny_run / "ppo_beat" / "policy")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            table = evaluate_run(_config(tiny_run, output_dir=str(tmp_path / "eval"), resamples=200, noise_level_demos=0, seen_unseen=False))
    finally:
        shutil.rmtree(tiny_run / "ppo_beat")
    assert table["beat"]["FID_k"] == pytest.approx(table["bc"]["FID_k"])  # the same policy, the same dances
    assert all(interval == [0.0, 0.0] for interval in table["beat"]["minus_bc_ci95"].values())  # paired: exactly no difference
    assert table["protocol"]["intervals"]["resamples"] == 200 and table["noise_levels"] is None and "seen_unseen" not in table


def test_a_held_out_split_of_one_piece_is_refused_by_name(tmp_path):
    write_prepared(tmp_path / "run" / "data", {"train": [320] * 2, "val": [320] * 2, "test": [320]})
    with pytest.raises(E3D2Error, match=r"held-out split 'test' of .*data has 1 piece\(s\); Div and the intervals need at least 2"):
        evaluate_run(_config(tmp_path / "run"))


def test_the_protocols_scores_are_the_rows(tiny_run):
    """The rows are evaluate_dances of the clips, nothing else (a guard against a table that drifts from the protocol)."""
    (policy, evaluation, _), data = _evaluation(tiny_run)
    clips = evaluation.dance(policy).clips
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        direct = evaluate_dances(clips, GroundTruth.from_prepared(data, tiny_run / "data").features, evaluation.pieces.music_beats)
    table = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    for key in ("FID_k", "FID_g", "Div_k", "Div_g", "BAS", "PFC"):
        assert table["bc"][key] == pytest.approx(direct[key], rel=1e-9), key


def test_dances_are_whole_pieces_fid_and_div_score_their_first_seconds_and_bas_all_of_them(tiny_run):
    """Bailando's protocol: whole pieces danced (mc_gpt_all.py eval), FID/Div on the first 20 s (metrics_new.py [:1200]), BAS on all."""
    assert EvalConfig().dance_seconds is None and EvalConfig().fid_div_seconds == 20.0
    (policy, evaluation, _), data = _evaluation(tiny_run, dance_seconds=None, fid_div_seconds=2.0)
    clips = evaluation.dance(policy).clips
    assert {len(clip) for clip in clips.values()} == {320}  # every frame of every piece
    beats = evaluation.pieces.music_beats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        features = GroundTruth.from_prepared(data, tiny_run / "data").features
        scores = evaluation.scores(clips, "whole pieces")
        first_two_seconds = evaluate_dances({name: clip[:120] for name, clip in clips.items()}, features, beats)
        whole = evaluate_dances(clips, features, beats)
    for key in ("FID_k", "FID_g", "Div_k", "Div_g"):
        assert scores[key] == pytest.approx(first_two_seconds[key], rel=1e-9), key
    assert scores["BAS"] == pytest.approx(whole["BAS"], rel=1e-12) and scores["BAS"] != pytest.approx(first_two_seconds["BAS"])
    assert scores["FID_k"] != pytest.approx(whole["FID_k"])
    protocol = json.loads((tiny_run / "eval" / "metrics.json").read_text())["protocol"]
    assert (protocol["dance_seconds"], protocol["fid_div_seconds"], protocol["bas_scope"]) == (2.0, 20.0, "whole dance")
    assert protocol["ground_truth_clips"] == 10 and protocol["fid_div_reference"].startswith("every motion of the dataset")
    with pytest.raises(E3D2Error, match="fid_div_seconds: must be positive"):
        evaluate_dances(clips, features, beats, fid_div_seconds=0)
    with pytest.raises(E3D2Error, match="eval: fid_div_seconds must be positive"):
        EvalConfig(fid_div_seconds=-1.0)
