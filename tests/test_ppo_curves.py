"""RUN/ppo/curves.png from log.jsonl: every panel's series comes from the log's lines, training and evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from e3d2_hf.trainers.ppo_curves import _series, plot_curves, read_log
from e3d2_hf.utils import E3D2Error


def write_log(path, steps=4):
    lines = [{"step": 0, "eval": {"learned_return": -2.0, "kl": 0.0, "metrics": {"FID_k": 60.0, "Div_k": 5.0}}}]
    for step in range(1, steps + 1):
        lines.append(
            {"step": step, "learned_return": -2.0 + 0.5 * step, "kl": 0.01 * step, "entropy": 3.0 - 0.1 * step, "explained_variance": 0.2 * step, "kl_beta": 0.1}
        )
        if step % 2 == 0:
            metrics = {"FID_k": 60.0 - step, "Div_k": 5.0 + step, "BAS": 0.2 + 0.01 * step}
            lines.append({"step": step, "eval": {"learned_return": -2.0 + 0.4 * step, "kl": 0.02 * step, "entropy": 3.0 - 0.2 * step, "metrics": metrics}})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_the_curves_read_every_series_from_the_log(tmp_path):
    write_log(tmp_path / "log.jsonl")
    steps, evaluations = read_log(tmp_path / "log.jsonl")
    assert len(steps) == 4 and [entry["step"] for entry in evaluations] == [0, 2, 4]
    assert _series(steps, "explained_variance") == ([1.0, 2.0, 3.0, 4.0], pytest.approx([0.2, 0.4, 0.6, 0.8]))
    assert _series(evaluations, "FID_k", metrics=True) == ([0.0, 2.0, 4.0], [60.0, 58.0, 56.0])
    assert _series(evaluations, "BAS", metrics=True) == ([2.0, 4.0], pytest.approx([0.22, 0.24]))  # step 0's record has no BAS
    assert _series(evaluations, "entropy") == ([2.0, 4.0], pytest.approx([2.6, 2.2]))
    path = plot_curves(tmp_path / "log.jsonl", tmp_path / "curves.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1600, 640)
        assert np.asarray(image.convert("L")).std() > 10  # lines were drawn, not a blank canvas


def test_a_broken_log_is_named(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(E3D2Error, match="log.jsonl: line 2 is not JSON"):
        plot_curves(tmp_path / "log.jsonl", tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
