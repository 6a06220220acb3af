"""Project benchmarks: each section times our implementation against a baseline on the same inputs.

    python scripts/bench.py [--only NAME ...] [--json OUT]

A section is a function in BENCHES returning rows (dicts); the rows of all sections are printed as
one table and, with --json, written as {section: rows}. Add a section by writing a function and
registering it in BENCHES.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Row = dict[str, Any]


def _seconds(function: Callable[[], Any], repeats: int) -> float:
    """Best wall time of `repeats` calls (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def bench_metric_features(num_clips: int = 3, num_frames: int = 1200) -> list[Row]:
    """Kinetic + manual features of 20 s clips: vectorised (features.py) vs per frame (reference.py)."""
    from e3d2_hf.metrics.features import kinetic_features, manual_features
    from e3d2_hf.metrics.reference import kinetic_features_per_frame, manual_features_per_frame, random_dance

    rng = np.random.default_rng(0)
    clips = [random_dance(rng, num_frames) for _ in range(num_clips)]
    rows = []
    for label, fast, slow in (
        ("kinetic", kinetic_features, kinetic_features_per_frame),
        ("manual", manual_features, manual_features_per_frame),
        ("kinetic+manual", lambda c: (kinetic_features(c), manual_features(c)),
         lambda c: (kinetic_features_per_frame(c), manual_features_per_frame(c))),
    ):  # fmt: skip
        ours = np.mean([_seconds(lambda c=clip: fast(c), repeats=5) for clip in clips])
        baseline = np.mean([_seconds(lambda c=clip: slow(c), repeats=1) for clip in clips])
        if label == "kinetic+manual":
            difference = max(
                float(np.max(np.abs(np.concatenate(fast(clip)) - np.concatenate(slow(clip))))) for clip in clips
            )
        else:
            difference = max(float(np.max(np.abs(fast(clip) - slow(clip)))) for clip in clips)
        rows.append({
            "case": f"{label} features, {num_frames} frames",
            "ours_s": round(float(ours), 5),
            "baseline_s": round(float(baseline), 4),
            "speedup": round(float(baseline / ours), 1),
            "max_abs_difference": difference,
        })  # fmt: skip
    return rows


def _generate_timed(policy: Any, music: Any, first: Any, new_steps: int, strategy: str) -> tuple[Any, float, list[float]]:
    """Greedy tokens, total seconds and each chosen step's seconds.

    On CPU a hook on the policy's final norm (run once per chosen step) stamps every step; on a GPU
    that would need a sync per step and hide the launch overlap, so steps share the total evenly.
    """
    import torch

    on_gpu = policy.device.type == "cuda"
    stamps: list[float] = []
    hook = None if on_gpu else policy.final_norm.register_forward_hook(lambda *_: stamps.append(time.perf_counter()))
    if on_gpu:
        torch.cuda.synchronize(policy.device)
    start = time.perf_counter()
    try:
        tokens = policy.generate(music, first, max_new_tokens=new_steps, strategy=strategy)
    finally:
        if hook is not None:
            hook.remove()
    if on_gpu:
        torch.cuda.synchronize(policy.device)
    total = time.perf_counter() - start
    if on_gpu:
        return tokens, total, [total / new_steps] * new_steps
    return tokens, total, [stamps[0] - start] + [later - earlier for earlier, later in zip(stamps, stamps[1:])]


def bench_generation(
    steps: int = 450,
    recompute_steps: int | None = 60,
    batch_sizes: tuple[int, ...] = (1, 32),
    device: str = "cpu",
    seed: int = 0,
) -> list[Row]:
    """GPT policy dancing to 60 s of music (450 steps at 7.5 fps) at the paper's size (12 x 768, 12 heads).

    Ours: rolling sliding-window KV cache. Baseline: Bailando's inference, re-encoding the last 29
    steps for every new step. Random weights, greedy, the same first codes. The baseline runs
    `recompute_steps` chosen steps (None: all) and is extrapolated from its steady state: every step
    after the first window costs the same. Token agreement is over the steps both ran; inside the
    first window the two strategies are identical by construction, beyond it they are different
    models of the past (see the policy's docstring).
    """
    import torch

    from e3d2_hf.models.configuration_policy import PolicyConfig
    from e3d2_hf.models.modeling_policy import E3D2PolicyModel

    config = PolicyConfig()
    torch.manual_seed(seed)
    policy = E3D2PolicyModel(config).eval().to(device)
    policy.generate(torch.zeros(1, 3, config.music_dim, device=device), torch.zeros(1, 1, dtype=torch.long, device=device))
    new_steps = steps - 1  # the first pose code is given
    on_gpu = policy.device.type == "cuda"
    baseline_steps = new_steps if recompute_steps is None or on_gpu else min(recompute_steps, new_steps)
    where = "cuda" if on_gpu else f"cpu x{torch.get_num_threads()}"
    rows = []
    for batch in batch_sizes:
        generator = torch.Generator().manual_seed(seed + batch)
        music = torch.randn(batch, steps, config.music_dim, generator=generator).to(device)
        first = torch.randint(0, config.vocab_size, (batch, 1), generator=generator).to(device)
        cached, ours, _ = _generate_timed(policy, music, first, new_steps, "cache")
        recomputed, measured, per_step = _generate_timed(policy, music, first, baseline_steps, "recompute_window")
        steady = per_step[config.context_length :] or per_step[-1:]
        baseline = measured + (new_steps - baseline_steps) * sum(steady) / len(steady)
        compared, first_window = slice(1, baseline_steps + 1), slice(1, min(config.context_length, baseline_steps) + 1)
        dance_seconds = batch * steps / 7.5
        rows.append({
            "case": f"generate {steps} steps, batch {batch}, {where}",
            "ours_s": round(ours, 2),
            "baseline_s": round(baseline, 1),
            "baseline_measured_steps": baseline_steps,
            "speedup": round(baseline / ours, 1),
            "ours_dance_s_per_s": round(dance_seconds / ours, 2),
            "baseline_dance_s_per_s": round(dance_seconds / baseline, 2),
            "identical_tokens": round((cached[:, compared] == recomputed[:, compared]).float().mean().item(), 3),
            "identical_first_window": bool(torch.equal(cached[:, first_window], recomputed[:, first_window])),
        })  # fmt: skip
    return rows


def bench_music_features(seconds: float = 60.0) -> list[Row]:
    """Seconds of compute per minute of music for the 438-d features at 60 fps and 7.5 fps (decoding included)."""
    import tempfile

    import soundfile

    from e3d2_hf.data.music import extract_music_features

    clip = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "music" / "Kevin_MacLeod_-_Vibe_Ace.ogg"
    with tempfile.TemporaryDirectory() as folder:
        if clip.is_file():
            source = f"real music ({clip.name})"
        else:  # no shared data: a synthetic piece of the same length
            from e3d2_hf.data.synthetic import GENRES, SAMPLE_RATE, compose_music

            audio, _ = compose_music(GENRES[0], 110.0, seconds, np.random.default_rng(0))
            clip = Path(folder) / "synthetic.wav"
            soundfile.write(clip, audio, SAMPLE_RATE)
            source = "synthetic music"
        duration = soundfile.info(clip).duration
        extract_music_features(clip, 60.0)  # warm-up: numba compiles librosa's kernels once per process
        rows = []
        for fps in (60.0, 7.5):
            elapsed = _seconds(lambda fps=fps: extract_music_features(clip, fps), repeats=2)
            rows.append({"case": f"music features @ {fps:g} fps, {source}", "ours_s": round(elapsed, 3), "seconds_per_minute_of_music": round(60.0 * elapsed / duration, 2)})
    return rows


BENCHES: dict[str, Callable[[], list[Row]]] = {
    "music_features": bench_music_features,
    "metric_features": bench_metric_features,
    "generation": bench_generation,
}


def _print_table(results: dict[str, list[Row]]) -> None:
    columns = ["section"] + list(dict.fromkeys(key for rows in results.values() for row in rows for key in row))
    lines = [[name] + [row.get(column, "") for column in columns[1:]] for name, rows in results.items() for row in rows]
    cells = [[str(value) for value in line] for line in [columns] + lines]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    for number, line in enumerate(cells):
        print("  ".join(value.ljust(width) for value, width in zip(line, widths)))
        if number == 0:
            print("  ".join("-" * width for width in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), metavar="NAME", help=f"sections to run: {', '.join(BENCHES)}")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    args = parser.parse_args(argv)
    results = {name: BENCHES[name]() for name in (args.only or BENCHES)}
    _print_table(results)
    if args.json is not None:
        from e3d2_hf.utils import atomic_file

        machine = {"python": sys.version.split()[0], "numpy": np.__version__, "platform": platform.platform()}
        with atomic_file(args.json, "w") as handle:
            json.dump({"machine": machine, "results": results}, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
