"""Stage 2: automatically-ranked demonstrations, the behaviour-cloning policy with eps-greedy noise (D-REX).

For every noise level eps of the schedule (paper: 0.02, 0.25, 0.50, 0.75, 1.00) and every piece of
music, the BC policy dances K times; at each step, with probability eps (one coin per step), the
action, i.e. both body halves' codes, is drawn uniformly from the codebooks, otherwise the policy
chooses it, sampled or, with `do_sample: false`, greedily (`E3D2PolicyModel.generate(noise_level=eps)`).
Lower eps ranks higher. Each episode starts from the
piece's first ground-truth pose code a_0 (the MDP's initial state) and runs until the music ends.

Three splits (`e3d2_hf.data.demonstrations`, which documents the columns):
    train        K = demos_per_music rollouts per training piece and noise level (the training pairs)
    eval_seen    fresh rollouts on the same training music (held-out pairs on music the reward model saw)
    eval_unseen  rollouts on the held-out music (`heldout_splits`, paper Figure 6 and Table 3)

Reads RUN/bc (policy + VQ-VAE), RUN/data and the run's pose codes (RUN/pose_codes, encoded with the
policy's VQ-VAE when missing or stale). Writes RUN/demos/demonstrations (a `datasets.DatasetDict`,
atomically) and RUN/demos/summary.json (counts, seconds, steps per second).

Generation is batched by noise level, pieces sorted by length (right-padded, each cut at its own
length afterwards). Batches are formed once for the whole work list and seeded by their index, then
dealt round-robin to the processes (`accelerate launch`): the demonstrations are the same for any
number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from e3d2_hf.data.demonstrations import DEMONSTRATION_SPLITS, demonstration_features
from e3d2_hf.data.prepare import load_prepared
from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.recipe import RunLayout
from e3d2_hf.rl.environment import Piece, pieces_of
from e3d2_hf.rl.seeding import seed_of
from e3d2_hf.trainers.distributed import make_accelerator
from e3d2_hf.trainers.loading import load_run_policy
from e3d2_hf.trainers.pose_codes import load_or_encode_codes
from e3d2_hf.utils import E3D2Error, atomic_directory, atomic_file, non_finite_fields

logger = logging.getLogger(__name__)

DEMONSTRATIONS_FOLDER = "demonstrations"
SUMMARY_FILE = "summary.json"
PAPER_NOISE_LEVELS = [0.02, 0.25, 0.5, 0.75, 1.0]


@dataclass
class DemosConfig:
    """The `demos:` section of a recipe. Defaults are the paper's (Appendix D) where it gives them."""

    run_dir: str = field(default="runs/e3d2", metadata={"help": "Run folder (bc, data are read from it)."})
    output_dir: str | None = field(default=None, metadata={"help": "Default <run_dir>/demos."})
    policy_path: str | None = field(default=None, metadata={"help": "Behaviour-cloning policy folder (default <run_dir>/bc)."})
    data_path: str | None = field(default=None, metadata={"help": "Prepared dataset (default <run_dir>/data)."})
    seed: int = field(default=0, metadata={"help": "Seed of the demonstrators' sampling and noise."})
    noise_levels: list[float] = field(
        default_factory=lambda: list(PAPER_NOISE_LEVELS), metadata={"help": "eps of each demonstrator (paper: 0.02 .. 1.0)."}
    )
    demos_per_music: int = field(default=1, metadata={"help": "K: rollouts per training piece and noise level (train split)."})
    eval_seen_demos_per_music: int = field(default=1, metadata={"help": "Fresh rollouts per training piece and noise level (eval_seen)."})
    eval_unseen_demos_per_music: int = field(default=1, metadata={"help": "Rollouts per held-out piece and noise level (eval_unseen)."})
    heldout_splits: list[str] = field(default_factory=lambda: ["val", "test"], metadata={"help": "Prepared splits whose music is unseen."})
    max_steps: int | None = field(default=None, metadata={"help": "Cut each piece to its first N pose-code steps (None: the whole piece)."})
    do_sample: bool = field(default=True, metadata={"help": "Sample the policy's codes (false: greedy) when no noise replaces them."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the BC policy's pose codes."})
    top_k: int | None = field(default=None, metadata={"help": "Sample each body half's code among its k likeliest (null: all)."})
    per_device_batch_size: int = field(default=64, metadata={"help": "Rollouts generated together."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace demonstrations written by an earlier run."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})
    use_cpu: bool = field(default=False, metadata={"help": "Generate on the CPU even when a GPU is visible."})
    mixed_precision: str = field(default="no", metadata={"help": "Accelerate mixed precision: 'no', 'fp16' or 'bf16'."})

    def __post_init__(self):
        run = RunLayout(self.run_dir)
        self.output_dir = self.output_dir or str(run.demos)
        self.policy_path = self.policy_path or str(run.bc)
        self.data_path = self.data_path or str(run.data)
        problems = []
        levels = [float(level) for level in self.noise_levels]
        if len(set(levels)) < 2 or any(not 0.0 <= level <= 1.0 for level in levels):
            problems.append(f"noise_levels must hold at least two distinct probabilities in [0, 1], got {self.noise_levels}")
        self.noise_levels = sorted(set(levels))
        counts = ("demos_per_music", "eval_seen_demos_per_music", "eval_unseen_demos_per_music", "per_device_batch_size")
        problems += [f"{name} must be positive, got {getattr(self, name)}" for name in counts if getattr(self, name) < 1]
        if self.max_steps is not None and self.max_steps < 2:
            problems.append(f"max_steps must be at least 2 (a_0 and one action), got {self.max_steps}")
        if self.temperature <= 0 or (self.top_k is not None and self.top_k < 1):
            problems.append(f"temperature must be positive and top_k at least 1, got {self.temperature}, {self.top_k}")
        if not self.heldout_splits:
            problems.append("heldout_splits must name at least one prepared split (the unseen music)")
        problems += non_finite_fields(self)
        if problems:
            raise E3D2Error("demos: " + "; ".join(problems))


@dataclass(frozen=True)
class RolloutBatch:
    """Rollouts generated together: one noise level, `items` = (piece index, demo index) pairs, one seed."""

    split: str
    noise_level: float
    items: tuple[tuple[int, int], ...]
    seed: int


def plan_batches(split: str, split_index: int, pieces: list[Piece], config: DemosConfig, demos_per_music: int) -> list[RolloutBatch]:
    """Every rollout of a split, grouped by noise level, longest pieces first, in batches of `per_device_batch_size`."""
    by_length = sorted(range(len(pieces)), key=lambda index: (-pieces[index].steps, index))
    items = [(piece, demo) for piece in by_length for demo in range(demos_per_music)]
    size = config.per_device_batch_size
    batches = []
    for level_index, level in enumerate(config.noise_levels):
        for batch_index, start in enumerate(range(0, len(items), size)):
            seed = seed_of(config.seed, split_index, level_index, batch_index)
            batches.append(RolloutBatch(split, level, tuple(items[start : start + size]), seed))
    return batches


@torch.no_grad()
def roll_out(policy: E3D2PolicyModel, pieces: list[Piece], batch: RolloutBatch, config: DemosConfig) -> list[dict[str, Any]]:
    """The eps-greedy rollouts of one batch: a row of the demonstrations format per item."""
    chosen = [pieces[piece] for piece, _ in batch.items]
    longest = max(piece.steps for piece in chosen)
    music = np.zeros((len(chosen), longest, chosen[0].music_features.shape[-1]), dtype=np.float32)
    for row, piece in enumerate(chosen):
        music[row, : piece.steps] = piece.music_features
    device = policy.device
    tokens = policy.generate(
        torch.from_numpy(music).to(device),
        upper_codes=torch.tensor([[piece.first_upper] for piece in chosen], device=device),
        lower_codes=torch.tensor([[piece.first_lower] for piece in chosen], device=device),
        do_sample=config.do_sample,
        temperature=config.temperature,
        top_k=config.top_k,
        noise_level=batch.noise_level,
        generator=torch.Generator(device=device).manual_seed(batch.seed),
    )
    upper, lower = (codes.cpu().numpy() for codes in policy.split_pose_tokens(tokens))
    rows = []
    for row, (piece, (_, demo_index)) in enumerate(zip(chosen, batch.items)):
        rows.append(
            {
                "music_id": piece.music_id,
                "name": piece.name,
                "noise_level": batch.noise_level,
                "demo_index": demo_index,
                "upper_codes": upper[row, : piece.steps],
                "lower_codes": lower[row, : piece.steps],
                "music_features_7p5": piece.music_features,
            }
        )
    return rows


def _dataset(rows: list[dict[str, Any]], music_dim: int) -> datasets.Dataset:
    """Rows in a fixed order (piece name, noise level, demo index), whatever order the processes produced them in."""
    rows = sorted(rows, key=lambda row: (row["name"], row["noise_level"], row["demo_index"]))
    columns = {name: [row[name] for row in rows] for name in demonstration_features(music_dim)}
    return datasets.Dataset.from_dict(columns, features=demonstration_features(music_dim))


def generate_demonstrations(config: DemosConfig) -> Path:
    """Stage 2 from a run folder: BC policy + prepared data -> `config.output_dir`/demonstrations; returns the output folder."""
    output_dir = Path(config.output_dir)
    target = output_dir / DEMONSTRATIONS_FOLDER
    if target.exists() and not config.overwrite_output_dir:
        raise E3D2Error(f"{target}: demonstrations from an earlier run are here; pass --overwrite_output_dir true to make new ones")
    accelerator = make_accelerator("demos", use_cpu=config.use_cpu, mixed_precision=config.mixed_precision)
    try:
        torch.manual_seed(config.seed)
        policy = load_run_policy(config.policy_path).to(accelerator.device).eval()
        vqvae = policy.load_vqvae().to(accelerator.device)
        data = load_prepared(config.data_path)
        missing = [split for split in ("train", *config.heldout_splits) if split not in data]
        if missing:
            raise E3D2Error(f"demos: {config.data_path} has no split(s) {missing} (it has {', '.join(data)})")
        with accelerator.main_process_first():  # the main process encodes RUN/pose_codes if needed, the others read it
            codes = load_or_encode_codes(config.run_dir, vqvae, data_path=config.data_path, progress=accelerator.is_main_process)
        if codes["train"].features["music_features_7p5"].shape[-1] != policy.config.music_dim:
            raise E3D2Error(f"demos: the prepared music features are not {policy.config.music_dim} wide, as the policy expects")
        training = pieces_of(codes["train"], config.max_steps)
        heldout = [piece for split in config.heldout_splits for piece in pieces_of(codes[split], config.max_steps)]
        sources = {"train": training, "eval_seen": training, "eval_unseen": heldout}
        counts = {
            "train": config.demos_per_music,
            "eval_seen": config.eval_seen_demos_per_music,
            "eval_unseen": config.eval_unseen_demos_per_music,
        }
        plan = [
            batch
            for split_index, split in enumerate(DEMONSTRATION_SPLITS)
            for batch in plan_batches(split, split_index, sources[split], config, counts[split])
        ]
        mine = plan[accelerator.process_index :: accelerator.num_processes]
        if accelerator.is_main_process:
            rollouts = sum(len(batch.items) for batch in plan)
            logger.info("demos: %d process(es) (%s), %d rollouts in %d batches", accelerator.num_processes, accelerator.distributed_type, rollouts, len(plan))
        started = time.perf_counter()
        rows = []
        for batch in tqdm(mine, desc="demonstrations", unit="batch", disable=config.disable_tqdm or not accelerator.is_main_process):
            rows += [{"split": batch.split, **row} for row in roll_out(policy, sources[batch.split], batch, config)]
        if accelerator.num_processes > 1:
            rows = gather_object(rows)
        seconds = time.perf_counter() - started
        if accelerator.is_main_process:
            write_demonstrations(output_dir, rows, policy.config.music_dim, config, seconds)
        accelerator.wait_for_everyone()
    finally:
        accelerator.state.destroy_process_group()
    return output_dir


def write_demonstrations(output_dir: Path, rows: list[dict[str, Any]], music_dim: int, config: DemosConfig, seconds: float) -> None:
    """RUN/demos/demonstrations (atomically) and summary.json: counts per split and noise level, speed."""
    splits = {split: _dataset([row for row in rows if row["split"] == split], music_dim) for split in DEMONSTRATION_SPLITS}
    demonstrations = datasets.DatasetDict(splits)
    steps = sum(len(row["upper_codes"]) - 1 for row in rows)
    summary = {
        "demonstrations": {split: len(dataset) for split, dataset in splits.items()},
        "per_noise_level": {
            split: {f"{level:g}": int(sum(1 for value in dataset["noise_level"] if np.isclose(value, level))) for level in config.noise_levels}
            for split, dataset in splits.items()
        },
        "music": {split: len(set(dataset["music_id"])) for split, dataset in splits.items()},
        "policy_steps": steps,
        "seconds": round(seconds, 2),
        "steps_per_second": round(steps / seconds, 1) if seconds > 0 else None,
        "config": dataclasses.asdict(config),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_directory(output_dir / DEMONSTRATIONS_FOLDER) as folder:
        demonstrations.save_to_disk(str(folder))
    with atomic_file(output_dir / SUMMARY_FILE, "w") as handle:
        handle.write(json.dumps(summary, indent=2) + "\n")
    logger.info(
        "demos -> %s: %s demonstrations, %d policy steps in %.1f s (%.0f steps/s)",
        output_dir, summary["demonstrations"], steps, seconds, summary["steps_per_second"] or 0.0,
    )  # fmt: skip


__all__ = ["DemosConfig", "RolloutBatch", "generate_demonstrations", "plan_batches", "roll_out"]
