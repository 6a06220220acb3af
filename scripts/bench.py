"""Project benchmarks: each section times our implementation against a baseline on the same inputs.

    python scripts/bench.py [--only NAME ...] [--json OUT] [--ppo-steps N]

A section is a function in BENCHES returning rows (dicts); the rows of all sections are printed as
one table and, with --json, written as {section: rows}. Add a section by writing a function and
registering it in BENCHES.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
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


def _linear_layers(policy: Any) -> list[Any]:
    """The policy's matmuls with weights, in the order a generation step runs them (music embedding, blocks, heads)."""
    import torch

    return [module for module in policy.modules() if isinstance(module, torch.nn.Linear)]


def _matmul_rate(policy: Any, rows: int, passes: int = 5) -> tuple[float, float]:
    """(GFLOP/s, weight GB/s) of the policy's own linear layers on `rows` input rows: the shapes and weights generation uses.

    Every pass runs all layers once, so the weights stream from memory as in a generation step;
    the best of `passes` passes counts.
    """
    import torch
    import torch.nn.functional as F

    layers = _linear_layers(policy)
    inputs = {layer.in_features: torch.randn(rows, layer.in_features, dtype=policy.dtype) for layer in layers}
    flops = sum(2 * rows * layer.in_features * layer.out_features for layer in layers)
    weight_bytes = sum(parameter.nbytes for layer in layers for parameter in layer.parameters())
    with torch.no_grad():
        seconds = _seconds(lambda: [F.linear(inputs[layer.in_features], layer.weight, layer.bias) for layer in layers], passes)
    return flops / seconds / 1e9, weight_bytes / seconds / 1e9


def _square_matmul_rate(dtype: Any, size: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of one large square matmul: the machine's compute peak for `dtype` as torch reaches it."""
    import torch

    left, right = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.matmul(left, right)
    return 2 * size**3 / _seconds(lambda: torch.matmul(left, right), repeats) / 1e9


def _memory_bandwidth(gibibytes: float = 1.0, repeats: int = 3) -> tuple[float, float]:
    """(read GB/s, copy GB/s) over a buffer larger than the last-level cache: a reduction reads it, a copy reads and writes it."""
    import torch

    source = torch.ones(int(gibibytes * 2**30) // 4)
    target = torch.empty_like(source)
    read = source.nbytes / _seconds(lambda: source.sum(), repeats) / 1e9
    copy = 2 * source.nbytes / _seconds(lambda: target.copy_(source), repeats) / 1e9
    return read, copy


def _flops_of_dance(policy: Any, new_steps: int) -> tuple[float, float]:
    """(FLOPs of generating `new_steps` steps of one dance, steady-state FLOPs per token).

    torch's FlopCounterMode counts the matmuls (taught MKL's packed linear) of two short batch-1
    generations past the first window; their difference gives the per-step cost, which is the same
    for every later step. It does not count CPU attention, added from its shape: 2 x 2 x keys x
    hidden per token and block (QK^T and AV).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

    if hasattr(torch.ops.mkl, "_mkl_linear"):  # generation's packed linears (modeling_policy.mkl_packed_linears)

        @register_flop_formula(torch.ops.mkl._mkl_linear)
        def _packed_linear_flops(input_shape, packed_shape, weight_shape, *args, **kwargs) -> int:
            return 2 * math.prod(input_shape[:-1]) * weight_shape[0] * weight_shape[1]

    config = policy.config
    short, longer = config.context_length + 1, 2 * config.context_length + 1
    counted = []
    for steps in (short, longer):
        with FlopCounterMode(display=False) as counter:
            policy.generate(torch.zeros(1, steps + 1, config.music_dim), torch.zeros(1, 1, dtype=torch.long))
        counted.append(counter.get_total_flops())
    per_step = (counted[1] - counted[0]) / (longer - short)
    matmuls = counted[0] + (new_steps - short) * per_step
    attention_per_key = 4 * config.hidden_size * config.num_hidden_layers
    attention = sum(attention_per_key * min(position + 1, config.context_length) for position in range(new_steps))
    return matmuls + attention, per_step + attention_per_key * config.context_length


PROFILE_CATEGORIES = {  # torch ops by what they do in a generation step; the rest is "other ops"
    "matmul": ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "mkl::_mkl_linear", "mkl::_mkl_reorder_linear_weight"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"),
    "copies": ("aten::copy_", "aten::cat", "aten::index_put_", "aten::fill_"),
    "norms_and_activations": ("aten::native_layer_norm", "aten::gelu", "aten::softmax", "aten::_softmax"),
    "elementwise": ("aten::add", "aten::mul", "aten::neg", "aten::div", "aten::argmax", "aten::embedding", "aten::index_select"),
}


def _profile_shares(policy: Any, music: Any, first: Any, new_steps: int) -> dict[str, float]:
    """Share of the wall time of cached generation spent in each category of torch op (torch.profiler, self CPU time).

    "python_and_dispatch" is the wall time no op accounts for: the interpreter, module calls, the loop.
    """
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        policy.generate(music, first, max_new_tokens=new_steps)
    wall_us = (time.perf_counter() - start) * 1e6
    by_op = {event.key: event.self_cpu_time_total for event in profiler.key_averages()}
    shares = {name: sum(by_op.pop(op, 0.0) for op in ops) / wall_us for name, ops in PROFILE_CATEGORIES.items()}
    shares["other_ops"] = sum(by_op.values()) / wall_us
    shares["python_and_dispatch"] = max(0.0, 1.0 - sum(shares.values()))
    return {f"profile_{name}": round(share, 3) for name, share in shares.items()}


def _before_baseline(policy: Any, music: Any, first: Any, new_steps: int, tokens: Any, seconds: float) -> Row:
    """The same generation as before the fast path: transformers' DynamicCache (a torch.cat of the window per layer and step) and plain F.linear."""
    import contextlib
    from unittest import mock

    from transformers import DynamicCache

    from e3d2_hf.models import modeling_policy

    with (
        mock.patch.object(modeling_policy, "sliding_window_cache", lambda config: DynamicCache(config=config)),
        mock.patch.object(modeling_policy, "mkl_packed_linears", lambda module, rows: contextlib.nullcontext()),
    ):
        baseline_tokens, baseline_seconds, _ = _generate_timed(policy, music, first, new_steps, "cache")
    return {
        "before_s": round(baseline_seconds, 2),
        "speedup_vs_before": round(baseline_seconds / seconds, 2),
        "identical_tokens_vs_before": bool(baseline_tokens.equal(tokens)),
    }


def bench_generation_roofline(
    steps: int = 450,
    batch_sizes: tuple[int, ...] = (32, 1),
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    profile_steps: int = 60,
    seed: int = 0,
) -> list[Row]:
    """Cached generation at the paper's size on CPU as a fraction of what this machine's matmuls and memory allow, in one run.

    Rows: the machine (square-matmul peak per dtype, read and copy bandwidth, threads, load
    average), then per dtype and batch the generation of a `steps`-step dance (greedy, random
    weights) against limits measured in the same run with the same threads:
    roofline = min(square-matmul peak, FLOPs per weight byte x memory bandwidth), the classic
    roofline for a step that must stream every weight once (at batch 32 in fp32, 16 FLOP per
    byte); the model's own linear layers run back to back on `batch` rows just before the
    generation (the matmuls alone at generation's shapes); and memory bandwidth (weights read per
    step / bandwidth, the bound at batch 1), bandwidth being the best of a reduction, a copy and the
    batch-1 weight read of those layers. The first batch's fp32 row adds the same generation as
    before the fast path (transformers' DynamicCache, plain F.linear) and a torch.profiler
    breakdown of `profile_steps` steps. Other dtypes compare their greedy tokens with fp32's inside
    the first window.
    """
    import torch

    from e3d2_hf.models.configuration_policy import PolicyConfig
    from e3d2_hf.models.modeling_policy import E3D2PolicyModel

    threads = torch.get_num_threads()
    load_at_start = os.getloadavg()
    config = PolicyConfig()
    torch.manual_seed(seed)
    float_policy = E3D2PolicyModel(config).eval()
    new_steps = steps - 1
    flops_per_dance, flops_per_token = _flops_of_dance(float_policy, new_steps)
    read_bandwidth, copy_bandwidth = _memory_bandwidth()
    weight_read_bandwidth = _matmul_rate(float_policy, rows=1)[1]
    bandwidth = max(read_bandwidth, copy_bandwidth, weight_read_bandwidth)
    rows = [{
        "case": f"machine: cpu x{threads} threads, load average {load_at_start[0]:.2f} at start",
        "threads": threads,
        "square_matmul_gflops": {dtype: round(_square_matmul_rate(getattr(torch, dtype)), 1) for dtype in dtypes},
        "read_gb_s": round(read_bandwidth, 1),
        "copy_gb_s": round(copy_bandwidth, 1),
        "weight_read_gb_s": round(weight_read_bandwidth, 1),
        "mflop_per_token": round(flops_per_token / 1e6, 1),
    }]  # fmt: skip
    peaks = rows[0]["square_matmul_gflops"]
    reference_tokens: dict[int, Any] = {}
    for dtype in dtypes:
        policy = float_policy.to(getattr(torch, dtype))  # in place: fp32 runs first, its tokens are the reference
        weight_bytes = sum(parameter.nbytes for layer in _linear_layers(policy) for parameter in layer.parameters())
        weight_bytes += 2 * config.hidden_size * policy.dtype.itemsize  # the two code-embedding rows of each token
        for batch in batch_sizes:
            generator = torch.Generator().manual_seed(seed + batch)
            music = torch.randn(batch, steps, config.music_dim, generator=generator).to(policy.dtype)
            first = torch.randint(0, config.vocab_size, (batch, 1), generator=generator)
            policy.generate(music[:, : config.context_length + 2], first)  # warm-up: buffers, kernels
            roofline_gflops, roofline_weight_gb_s = _matmul_rate(policy, batch)
            tokens, seconds, _ = _generate_timed(policy, music, first, new_steps, "cache")
            achieved_gflops = batch * flops_per_dance / seconds / 1e9
            roofline = min(peaks[dtype], batch * flops_per_token / weight_bytes * bandwidth)
            row = {
                "case": f"generate {steps} steps, batch {batch}, {dtype}",
                "ours_s": round(seconds, 2),
                "tokens_per_s": round(batch * new_steps / seconds, 1),
                "gflops": round(achieved_gflops, 1),
                "roofline_gflops": round(roofline, 1),
                "fraction_of_roofline": round(achieved_gflops / roofline, 3),
                "shape_roofline_gflops": round(roofline_gflops, 1),
                "fraction_of_shape_roofline": round(achieved_gflops / roofline_gflops, 3),
                "fraction_of_square_peak": round(achieved_gflops / peaks[dtype], 3),
                "weights_gb_s": round(weight_bytes * new_steps / seconds / 1e9, 1),
                "shape_roofline_weights_gb_s": round(roofline_weight_gb_s, 1),
                "fraction_of_bandwidth": round(weight_bytes * new_steps / seconds / 1e9 / bandwidth, 3),
            }
            if dtype == "float32":
                reference_tokens[batch] = tokens
                if batch == batch_sizes[0]:
                    row.update(_before_baseline(policy, music, first, new_steps, tokens, seconds))
                    if profile_steps:
                        row.update(_profile_shares(policy, music, first, min(profile_steps, new_steps)))
            elif batch in reference_tokens:
                first_window = slice(1, min(config.context_length, new_steps) + 1)
                row["identical_first_window_vs_float32"] = round(
                    (tokens[:, first_window] == reference_tokens[batch][:, first_window]).float().mean().item(), 3
                )
            rows.append(row)
    rows[0]["case"] += f", {os.getloadavg()[0]:.2f} at end"
    return rows


def bench_music_features(seconds: float = 60.0) -> list[Row]:
    """Seconds of compute per minute of music for the 438-d features at 60 fps and 7.5 fps (decoding included)."""
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


def bench_rest_skeleton_fit(frames: int = 30_720) -> list[Row]:
    """A decoded batch put on the SMPL rest skeleton (what every decode does): bones placed directly vs rotations + FK.

    30,720 frames: one PPO step of the beat reward at tiny size (128 episodes of 30 steps of 8 frames).
    """
    from e3d2_hf.metrics.reference import random_dance
    from e3d2_hf.motion import fitting

    joints = random_dance(np.random.default_rng(0), frames).astype(np.float64)
    offsets = fitting._rest_offsets(None)
    ours = _seconds(lambda: fitting.reached_positions(joints, offsets), repeats=3)
    baseline = _seconds(lambda: fitting.positions_through_rotations(joints, offsets), repeats=3)
    difference = float(np.max(np.abs(fitting.reached_positions(joints, offsets) - fitting.positions_through_rotations(joints, offsets))))
    return [{
        "case": f"rest-skeleton fit, {frames} frames",
        "ours_s": round(ours, 4),
        "baseline_s": round(baseline, 4),
        "speedup": round(baseline / ours, 1),
        "max_abs_difference": difference,
    }]  # fmt: skip


def _ppo_worker(result: Path, steps: int, threads: int) -> None:
    """One rank of the `ppo` section: a warm-up PPO step, then `steps` timed ones; rank 0 writes the timings.

    Stand-ins at the size of recipes/tiny.yaml (bc:, reward:, ppo:) with random weights and random
    music: generation, scoring by the learned reward model and the update do the same work as with
    trained ones. Every rank builds the same models and segments (seeded), as in a real run.
    """
    import torch

    from e3d2_hf.models.configuration_policy import PolicyConfig
    from e3d2_hf.models.configuration_reward import RewardModelConfig
    from e3d2_hf.models.modeling_policy import E3D2PolicyModel
    from e3d2_hf.models.modeling_reward import E3D2RewardModel
    from e3d2_hf.rl.environment import MusicSegments
    from e3d2_hf.rl.rewards import LearnedReward
    from e3d2_hf.trainers.ppo_config import PPOConfig
    from e3d2_hf.trainers.ppo_trainer import PPOTrainer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    policy = E3D2PolicyModel(PolicyConfig(hidden_size=64, num_hidden_layers=4, num_base_layers=2, num_attention_heads=4))
    reward_model = E3D2RewardModel(RewardModelConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1))
    rng = np.random.default_rng(0)
    sequences, length = 8, 120  # 23 segments each at stride 4: 184 >= the 128 episodes of a step
    segments = MusicSegments(
        [f"random{index}" for index in range(sequences)],
        [rng.integers(0, 512, length) for _ in range(sequences)],
        [rng.integers(0, 512, length) for _ in range(sequences)],
        [rng.standard_normal((length, 438)).astype(np.float32) for _ in range(sequences)],
        [np.zeros(8 * length, np.float32) for _ in range(sequences)],
        stride=4,
    )
    config = PPOConfig(
        run_dir=str(result.parent), max_steps=steps + 1, rollout_segments=128, train_batch_size=64, per_device_rollout_batch_size=128,
        learning_rate=1e-4, value_num_layers=1, eval_steps=0, save_steps=10**9, report_to="none",
    )  # fmt: skip
    trainer = PPOTrainer(config, policy, LearnedReward(reward_model), segments)
    accelerator = trainer.accelerator
    try:
        trainer.ppo_step(0)
        accelerator.wait_for_everyone()
        start = time.perf_counter()
        for step in range(1, steps + 1):
            trainer.ppo_step(step)
        accelerator.wait_for_everyone()
        seconds = time.perf_counter() - start
        if accelerator.is_main_process:
            timings = {
                "processes": accelerator.num_processes,
                "backend": accelerator.distributed_type.value,
                "device": accelerator.device.type,
                "episodes_per_step": trainer.rollout_segments,
                "seconds": seconds,
            }
            result.write_text(json.dumps(timings))
    finally:  # leave the gloo group cleanly before exiting
        accelerator.end_training()
        accelerator.state.destroy_process_group()


def _ppo_run(folder: Path, processes: int, threads: int, steps: int) -> dict[str, Any]:
    """Timings of `_ppo_worker` in `processes` processes: plain Python for one, Accelerate's DDP launcher for more."""
    folder.mkdir()
    result = folder / "timings.json"
    worker = [str(Path(__file__).resolve()), "--ppo-worker", str(result), "--ppo-steps", str(steps), "--ppo-threads", str(threads)]
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads)
    if processes == 1:
        command = [sys.executable, *worker]
    else:
        with socket.socket() as probe:  # a free port: other runs on this machine may hold accelerate's default 29500
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(port), *worker]  # fmt: skip
    finished = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=3600, check=False)
    if finished.returncode != 0 or not result.is_file():
        raise RuntimeError(f"ppo bench with {processes} process(es) failed (exit {finished.returncode}):\n{finished.stderr[-3000:]}")
    timings = json.loads(result.read_text())
    if timings["processes"] != processes:
        raise RuntimeError(f"ppo bench: {processes} processes were launched but they formed a group of {timings['processes']}")
    return timings


def bench_ppo(steps: int = 5) -> list[Row]:
    """PPO training throughput (episodes/s) at recipes/tiny.yaml's sizes with 1 process and 2 DDP ranks.

    The same global work per step everywhere (128 episodes, minibatches of 64; each of 2 ranks
    generates, scores and trains on half). Rows: 1 process and 2 processes with cores / 2 threads
    each (the speed-up of DDP at equal threads per process, the ratio reported), and 1 process on
    all cores (whether intra-op threads do as well). On CPU the ranks are gloo processes; with
    >= 2 GPUs they are GPUs; one GPU cannot host 2 ranks, so there only 1 process runs.
    """
    import torch

    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // 2)
    configurations = [(1, threads), (1, cores)] if cores > threads else [(1, threads)]
    if torch.cuda.device_count() != 1:
        configurations.append((2, threads))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for processes, process_threads in configurations:
            timings = _ppo_run(Path(folder) / f"{processes}x{process_threads}", processes, process_threads, steps)
            seconds_per_step = timings["seconds"] / steps
            rows.append({
                "case": f"PPO {processes} process(es) x {process_threads} thread(s), {timings['device']} ({timings['backend']}), {steps} steps",
                "processes": processes,
                "threads_per_process": process_threads,
                "episodes_per_step": timings["episodes_per_step"],
                "seconds_per_step": round(seconds_per_step, 3),
                "episodes_per_s": round(timings["episodes_per_step"] / seconds_per_step, 1),
            })  # fmt: skip
    for row in rows:
        row["speedup_vs_1_process"] = round(row["episodes_per_s"] / rows[0]["episodes_per_s"], 2)
    return rows

BENCHES: dict[str, Callable[[], list[Row]]] = {
    "music_features": bench_music_features,
    "metric_features": bench_metric_features,
    "rest_skeleton_fit": bench_rest_skeleton_fit,
    "generation": bench_generation,
    "generation_roofline": bench_generation_roofline,
    "ppo": bench_ppo,
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
    parser.add_argument("--ppo-steps", type=int, default=5, metavar="N", help="timed PPO steps of the ppo section (after one warm-up)")
    parser.add_argument("--ppo-worker", type=Path, help=argparse.SUPPRESS)  # a rank of the ppo section: its result file
    parser.add_argument("--ppo-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ppo_worker is not None:
        _ppo_worker(args.ppo_worker, args.ppo_steps, args.ppo_threads)
        return 0
    benches = {**BENCHES, "ppo": functools.partial(bench_ppo, steps=args.ppo_steps)}
    results = {name: benches[name]() for name in (args.only or BENCHES)}
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
