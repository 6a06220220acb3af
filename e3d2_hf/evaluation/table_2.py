"""The paper's Table 2 for a run folder: held-out metrics over PPO's interaction steps, learned reward vs hand-designed beat reward.

Built from what PPO recorded rather than by running it again: a finished PPO run's summary.json
(RUN/ppo; RUN/ppo_beat when the recipe has the `ppo_beat:` ablation) holds its held-out evaluation
of the BC policy before training (step 0), one every `eval_steps` and one at the end
(`e3d2_hf.rl.heldout.HeldOutEvaluation.evaluate`). Each evaluation is one row: PPO steps,
interaction steps (steps x episodes per step x 29 actions, the paper's "Steps" column), FID_k,
FID_g, Div_k, Div_g, BAS, the learned return and the exact per-step KL to pi_BC.

These are PPO's periodic evaluations, so they decode as the run's `eval_do_sample` says (sampled with
a seeded generator, or greedy; recorded per run from RUN/<folder>/policy/training_config.json) and
carry no intervals, whereas Table 1's rows are greedy with intervals: the last row of a run need not
equal its Table 1 row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from e3d2_hf.trainers.ppo_trainer import POLICY_FOLDER, SUMMARY_FILE
from e3d2_hf.utils import E3D2Error

TABLE_2_METRICS = ("FID_k", "FID_g", "Div_k", "Div_g", "BAS")  # the paper's Table 2 columns
CONFIG_FILE = "training_config.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except OSError as exc:
        raise E3D2Error(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise E3D2Error(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise E3D2Error(f"{path}: expected a JSON object")
    return value


def _evaluation_protocol(ppo_dir: Path) -> dict[str, Any]:
    """How the run's periodic evaluation danced and scored, from its final config (None where unrecorded).

    `decoding`: 'sampled' or 'greedy' (`eval_do_sample`); `dance_seconds`: each piece danced for so
    long (None: whole); `fid_div_seconds`: the FID/Div window. A run from before the whole-piece
    protocol recorded `eval_seconds`, which cut the dance and scored all of it.
    """
    config_file = ppo_dir / POLICY_FOLDER / CONFIG_FILE
    config = _read_json(config_file) if config_file.is_file() else {}
    do_sample = config.get("eval_do_sample")
    protocol = {"decoding": None if do_sample is None else "sampled" if do_sample else "greedy"}
    if "eval_seconds" in config:
        return protocol | {"dance_seconds": config["eval_seconds"], "fid_div_seconds": config["eval_seconds"]}
    return protocol | {"dance_seconds": config.get("eval_dance_seconds"), "fid_div_seconds": config.get("eval_fid_div_seconds")}


def _describe(run: dict[str, Any]) -> str:
    danced = "whole pieces" if run.get("dance_seconds") is None else f"the first {run['dance_seconds']:g} s of each piece"
    window = "unrecorded" if run.get("fid_div_seconds") is None else f"the first {run['fid_div_seconds']:g} s"
    return f"{run['decoding'] or 'unrecorded'} decoding (the run's eval_do_sample), {danced}, FID/Div on {window}"


def ppo_evaluations(ppo_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """A finished PPO run's protocol and its held-out evaluations as Table 2 rows (step 0 = the BC policy); None when unfinished."""
    ppo_dir = Path(ppo_dir)
    summary_file = ppo_dir / SUMMARY_FILE
    if not summary_file.is_file():
        return None
    summary = _read_json(summary_file)
    missing = [key for key in ("reward", "steps", "interaction_steps", "evaluations", "metrics_bc", "learned_return_bc") if key not in summary]
    if missing:
        raise E3D2Error(f"{summary_file}: no '{missing[0]}' (not a PPO summary, or one from an older trainer)")
    steps = summary["steps"]
    per_step = summary["interaction_steps"] / steps if steps else 0  # episodes per step are fixed by rollout_segments
    bc = {"step": 0, "learned_return": summary["learned_return_bc"], "kl": 0.0, "metrics": summary["metrics_bc"]}  # pi = pi_BC at step 0
    rows = []
    for record in [bc, *summary["evaluations"]]:
        if not isinstance(record, dict) or "step" not in record:
            raise E3D2Error(f"{summary_file}: an evaluation without its step ({record!r:.80})")
        metrics = record.get("metrics") or {}
        row = {"step": record["step"], "interaction_steps": round(record["step"] * per_step)}
        row |= {key: metrics.get(key) for key in TABLE_2_METRICS}
        rows.append(row | {"learned_return": record.get("learned_return"), "kl": record.get("kl")})
    protocol = {
        "folder": str(ppo_dir),
        "reward": summary["reward"],
        **_evaluation_protocol(ppo_dir),
        "held_out_pieces": summary.get("held_out_pieces"),
        "steps": steps,
        "interaction_steps": summary["interaction_steps"],
    }
    return protocol, rows


def table_2(ppo_dirs: dict[str, str | Path]) -> dict[str, Any] | None:
    """Table 2 of the finished PPO runs among `ppo_dirs` (Table 1's row key -> its PPO folder): {"rows": [...], "runs": {key: protocol}}.

    Every row names its run (`method`, Table 1's row key) and its reward; None when no run has finished.
    """
    runs, rows = {}, []
    for method, ppo_dir in ppo_dirs.items():
        found = ppo_evaluations(ppo_dir)
        if found is None:
            continue
        protocol, evaluations = found
        runs[method] = protocol
        rows += [{"method": method, "reward": protocol["reward"], **row} for row in evaluations]
    return {"rows": rows, "runs": runs} if rows else None


DIGITS = {"FID_k": 1, "FID_g": 1, "Div_k": 2, "Div_g": 2, "BAS": 4, "learned_return": 2, "kl": 3}


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table_2(table: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Markdown lines: one row per evaluation, the runs' decoding and sizes below (`labels`: row key -> method name)."""
    columns = [*TABLE_2_METRICS, "learned_return", "kl"]
    lines = ["| Method | Reward | PPO steps | Interaction steps | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (2 + len(columns))]
    for row in table["rows"]:
        cells = [labels.get(row["method"], row["method"]), row["reward"], str(row["step"]), f"{row['interaction_steps']:,}"]
        lines.append("| " + " | ".join(cells + [_number(row[column], DIGITS[column]) for column in columns]) + " |")
    for method, run in table["runs"].items():
        lines.append(f"{labels.get(method, method)}: {run['folder']}/{SUMMARY_FILE}, {run['held_out_pieces']} held-out pieces, {_describe(run)}, no intervals.")
    if len({_describe(run) for run in table["runs"].values()}) > 1:
        lines.append("The runs were evaluated differently (above): their rows compare within a run, not across runs.")
    return lines


__all__ = ["TABLE_2_METRICS", "format_table_2", "ppo_evaluations", "table_2"]
