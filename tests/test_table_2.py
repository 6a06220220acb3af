"""Table 2 from PPO's records: one row per held-out evaluation of each finished run, its decoding, and bad summaries by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e3d2_hf.evaluation.table_1 import ROW_LABELS, format_table_1
from e3d2_hf.evaluation.table_2 import format_table_2, ppo_evaluations, table_2
from e3d2_hf.utils import E3D2Error


def _metrics(fid_k: float) -> dict[str, float]:
    return {"FID_k": fid_k, "FID_g": 2 * fid_k, "Div_k": 5.0, "Div_g": 6.0, "BAS": 0.25, "PFC": 1.0}


def write_ppo_run(
    folder: Path, reward: str, evaluation_steps: list[int], *, do_sample: bool | None = True, episodes_per_step: int = 128, evaluation: dict | None = None
) -> Path:
    """A finished PPO run as the trainer leaves it: summary.json with its evaluations, policy/training_config.json."""
    steps = evaluation_steps[-1]
    summary = {
        "reward": reward, "steps": steps, "episodes": steps * episodes_per_step, "interaction_steps": steps * episodes_per_step * 29,
        "learned_return_bc": 15.0, "metrics_bc": _metrics(100.0), "held_out_pieces": 44,
        "evaluations": [{"step": step, "learned_return": 15.0 + step, "kl": 0.1 * step, "metrics": _metrics(100.0 + step)} for step in evaluation_steps],
    }  # fmt: skip
    (folder / "policy").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    if do_sample is not None:
        config = {"reward": reward, "eval_do_sample": do_sample, **(evaluation or {"eval_dance_seconds": None, "eval_fid_div_seconds": 20.0})}
        (folder / "policy" / "training_config.json").write_text(json.dumps(config))
    return folder


def test_each_evaluation_is_a_row_from_the_bc_policy_on(tmp_path):
    write_ppo_run(tmp_path / "ppo", "learned", [25, 50], evaluation={"eval_seconds": 10.0})  # before the whole-piece protocol
    write_ppo_run(tmp_path / "ppo_beat", "beat", [5, 10], do_sample=False)
    table = table_2({"e3d2": tmp_path / "ppo", "beat": tmp_path / "ppo_beat"})
    assert [(row["method"], row["reward"], row["step"], row["interaction_steps"]) for row in table["rows"]] == [
        ("e3d2", "learned", 0, 0), ("e3d2", "learned", 25, 25 * 128 * 29), ("e3d2", "learned", 50, 50 * 128 * 29),
        ("beat", "beat", 0, 0), ("beat", "beat", 5, 5 * 128 * 29), ("beat", "beat", 10, 10 * 128 * 29),
    ]  # fmt: skip
    first, last = table["rows"][0], table["rows"][2]
    assert (first["FID_k"], first["FID_g"], first["learned_return"], first["kl"]) == (100.0, 200.0, 15.0, 0.0)
    assert (last["FID_k"], last["FID_g"], last["Div_k"], last["BAS"], last["learned_return"], last["kl"]) == (150.0, 300.0, 5.0, 0.25, 65.0, 5.0)
    assert "PFC" not in last  # the paper's Table 2 columns only
    assert table["runs"]["e3d2"]["decoding"] == "sampled" and table["runs"]["beat"]["decoding"] == "greedy"
    assert table["runs"]["beat"] == {
        "folder": str(tmp_path / "ppo_beat"), "reward": "beat", "decoding": "greedy", "dance_seconds": None, "fid_div_seconds": 20.0,
        "held_out_pieces": 44, "steps": 10, "interaction_steps": 10 * 128 * 29,
    }  # fmt: skip

    lines = format_table_2(table, ROW_LABELS)
    assert lines[0].startswith("| Method | Reward | PPO steps | Interaction steps | FID_k | FID_g | Div_k | Div_g | BAS |")
    assert lines[4] == "| E3D2 | learned | 50 | 185,600 | 150.0 | 300.0 | 5.00 | 6.00 | 0.2500 | 65.00 | 5.000 |"
    assert lines[-3] == (
        f"E3D2: {tmp_path / 'ppo'}/summary.json, 44 held-out pieces, sampled decoding (the run's eval_do_sample), "
        "the first 10 s of each piece, FID/Div on the first 10 s, no intervals."
    )
    assert lines[-2] == (
        f"PPO, beat reward: {tmp_path / 'ppo_beat'}/summary.json, 44 held-out pieces, greedy decoding (the run's eval_do_sample), "
        "whole pieces, FID/Div on the first 20 s, no intervals."
    )
    assert lines[-1] == "The runs were evaluated differently (above): their rows compare within a run, not across runs."
    assert "Table 2: PPO's held-out evaluations" in format_table_1({"table_2": table})


def test_unfinished_runs_are_left_out(tmp_path):
    write_ppo_run(tmp_path / "ppo", "learned", [25], do_sample=None)
    (tmp_path / "ppo_beat" / "checkpoints").mkdir(parents=True)  # started, no summary.json yet
    table = table_2({"e3d2": tmp_path / "ppo", "beat": tmp_path / "ppo_beat"})
    assert set(table["runs"]) == {"e3d2"} and table["runs"]["e3d2"]["decoding"] is None
    assert "unrecorded decoding" in format_table_2(table, ROW_LABELS)[-1]
    assert table_2({"beat": tmp_path / "ppo_beat"}) is None and ppo_evaluations(tmp_path / "nowhere") is None


def test_an_evaluation_without_metrics_has_empty_cells(tmp_path):
    folder = write_ppo_run(tmp_path / "ppo", "learned", [1])
    summary = json.loads((folder / "summary.json").read_text())
    summary["evaluations"][0]["metrics"] = None  # eval_metrics: false, or fewer than 2 clips
    (folder / "summary.json").write_text(json.dumps(summary))
    _, rows = ppo_evaluations(folder)
    assert rows[1]["FID_k"] is None and rows[1]["learned_return"] == 16.0
    assert "| 1 | 3,712 | - | - | - | - | - | 16.00 | 0.100 |" in format_table_2(table_2({"e3d2": folder}), ROW_LABELS)[3]


@pytest.mark.parametrize(
    "text,problem",
    [
        ("{not json", "summary.json: not valid JSON"),
        ("[1, 2]", "summary.json: expected a JSON object"),
        ('{"reward": "beat", "steps": 2}', "summary.json: no 'interaction_steps' \\(not a PPO summary, or one from an older trainer\\)"),
    ],
)
def test_a_bad_summary_is_named(tmp_path, text, problem):
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "summary.json").write_text(text)
    with pytest.raises(E3D2Error, match=problem) as raised:
        table_2({"e3d2": tmp_path / "ppo"})
    assert str(tmp_path / "ppo" / "summary.json") in str(raised.value) and "\n" not in str(raised.value)
