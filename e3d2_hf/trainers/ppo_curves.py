"""RUN/ppo/curves.png: PPO's training at a glance, drawn from its log.jsonl.

Eight panels over PPO steps: the learned return (training rollouts, and the held-out dances at each
evaluation), the per-step KL to the behaviour-cloning policy and the policy's entropy (the same two),
the value network's explained variance, the held-out FID_k, Div_k and BAS (paper Table 1) at each
evaluation, and beta of the KL penalty. Side by side they show reward hacking: a learned return
that rises while the held-out metrics fall. Step 0 is the behaviour-cloning policy's evaluation, the
reference the others move from; a dashed line marks the step of the saved policy when it is not the last.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from e3d2_hf.utils import E3D2Error, atomic_file

CURVES_FILE = "curves.png"
# (panel title, key of a training step's line, key of an evaluation's record or None, key of its metrics or None)
PANELS = (
    ("learned return", "learned_return", "learned_return", None),
    ("per-step KL to the BC policy", "kl", "kl", None),
    ("entropy per step", "entropy", "entropy", None),
    ("explained variance", "explained_variance", None, None),
    ("held-out FID_k (lower is better)", None, None, "FID_k"),
    ("held-out Div_k", None, None, "Div_k"),
    ("held-out BAS", None, None, "BAS"),
    ("beta of the KL penalty", "kl_beta", None, None),
)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def read_log(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The training steps' lines and the evaluations (step + record) of a PPO log.jsonl."""
    steps, evaluations = [], []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise E3D2Error(f"{path}: cannot read the PPO log ({exc.strerror or exc})") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise E3D2Error(f"{path}: line {number} is not JSON ({exc})") from exc
        if isinstance(entry.get("eval"), dict):
            evaluations.append({"step": entry.get("step"), **entry["eval"]})
        else:
            steps.append(entry)
    return steps, evaluations


def _series(entries: list[dict[str, Any]], key: str, metrics: bool = False) -> tuple[list[float], list[float]]:
    points = [(entry.get("step"), _number((entry.get("metrics") or {}).get(key) if metrics else entry.get(key))) for entry in entries]
    points = [(float(step), value) for step, value in points if _number(step) is not None and value is not None]
    return [step for step, _ in points], [value for _, value in points]


def plot_curves(log_path: str | os.PathLike, out: str | os.PathLike, saved_step: int | None = None) -> Path:
    """Draw the PPO curves of `log_path` into `out` (a PNG, written atomically), `saved_step` marked when it is not the last step; returns `out`."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, no display needed (Agg canvas)

    steps, evaluations = read_log(log_path)
    last_step = max((entry["step"] for entry in steps if _number(entry.get("step")) is not None), default=None)
    figure = Figure(figsize=(16, 6.4), dpi=100)
    for axes, (title, step_key, eval_key, metric_key) in zip(figure.subplots(2, 4).flat, PANELS):
        if step_key is not None:
            axes.plot(*_series(steps, step_key), color="C0", label="training rollouts", linewidth=1.2)
        if eval_key is not None or metric_key is not None:
            x, y = _series(evaluations, eval_key or metric_key, metrics=metric_key is not None)
            axes.plot(x, y, color="C1", marker="o", label="held-out music (step 0: BC)", linewidth=1.2)
        if step_key is not None and (eval_key is not None or metric_key is not None):
            axes.legend(fontsize=7)
        if saved_step is not None and saved_step != last_step:
            axes.axvline(saved_step, color="C3", linestyle="--", linewidth=1.0)
        axes.set(title=title, xlabel="PPO step")
        axes.grid(alpha=0.3)
    figure.suptitle(f"PPO: {len(steps)} logged steps, {len(evaluations)} evaluations ({Path(log_path).name})", fontsize=10)
    figure.tight_layout()
    out = Path(out)
    with atomic_file(out) as handle:
        figure.savefig(handle, format="png")
    return out


__all__ = ["CURVES_FILE", "PANELS", "plot_curves", "read_log"]
