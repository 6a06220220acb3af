"""Stage 3: train the reward model on automatically-ranked pairs with the Bradley-Terry loss.

Reads `RUN/demos/demonstrations` (format: `e3d2_hf.data.demonstrations`), builds seeded ranked
pairs (train pairs from the `train` split; held-out pairs from `eval_seen`, training music, and
`eval_unseen`, music the model never saw), writes their index tables to `RUN/demos/ranked_pairs`
and trains `E3D2RewardModel` with a `transformers.Trainer` subclass:

    loss = -log sigmoid(R(chosen) - R(rejected)),   R = sum of the 29 per-step rewards,

i.e. the cross-entropy of the Bradley-Terry model `P(chosen > rejected) = exp R_c / (exp R_c + exp R_r)`
against the noise-level label (paper Eq. for the ranking predictor; method.md stage 3). TRL's
`RewardTrainer` is not used: it tokenises text pairs, and our inputs are music features and pose codes.

Each epoch it reports the pair accuracy (R(chosen) > R(rejected)) on a slice of the training pairs and
on the two held-out pair sets (paper Figure 6). At the end `RUN/reward` holds a `save_pretrained`
folder (config.json, model.safetensors, a model card README.md with the recipe values and
accuracies), `training_config.json`, the TensorBoard logs under `runs/`, and the paper's Table 3
check: `diagnostics.json` + `diagnostics.png` (learned return per noise level on held-out music).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from tqdm.auto import tqdm
from transformers import EvalPrediction, set_seed
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from e3d2_hf.data.demonstrations import (
    CODEBOOK_SIZE,
    DEMONSTRATION_SPLITS,
    MUSIC_DIM,
    SNIPPET_LENGTH,
    DemonstrationSplit,
    build_ranked_pairs,
    load_demonstrations,
    ranked_pair_snippets,
    validate_demonstrations,
)
from e3d2_hf.models.configuration_reward import RewardModelConfig
from e3d2_hf.models.modeling_reward import E3D2RewardModel
from e3d2_hf.recipe import RunLayout
from e3d2_hf.trainers.base import GuardedTrainer, StageTrainingArguments, finish
from e3d2_hf.trainers.model_card import PREFERENCE_TASK, CardTable, build_model_card, eval_results, recipe_values, training_data
from e3d2_hf.utils import E3D2Error, atomic_directory

logger = logging.getLogger(__name__)

# Held-out evaluation sets: metric name -> demonstrations split the pairs come from. The first two
# hold the paper's noise-ranked pairs; the music sets only mismatched-music pairs (own music above
# another piece's, same codes), which a reward model that ignores the music ranks at chance.
HELDOUT_PAIR_SETS = {"seen": "eval_seen", "unseen": "eval_unseen"}
MISMATCHED_MUSIC_SETS = {"seen_mismatched": "eval_seen", "unseen_mismatched": "eval_unseen"}


@dataclass
class RewardTrainingConfig(StageTrainingArguments):
    """The `reward:` section of a recipe: pair and model sizes plus `TrainingArguments`.

    Defaults are the paper's (Table 6): Adam, lr 5e-4, weight decay 2.5e-3, 10 epochs, batch 32,
    grad-norm clip 0.25, seed 0, no learning-rate schedule, and a 1-block, 768-wide, 12-head post-LN
    transformer; the defaults shared with the other stages are `StageTrainingArguments`'.
    """

    stage = "reward"

    demonstrations_path: str | None = field(
        default=None, metadata={"help": "Demonstrations DatasetDict (default: <run_dir>/demos/demonstrations)."}
    )
    snippet_length: int = field(
        default=SNIPPET_LENGTH, metadata={"help": "Steps cropped per demonstration; the first is dropped (paper: 30 -> 29 steps)."}
    )
    num_train_pairs: int = field(default=30000, metadata={"help": "Ranked pairs from the train split (paper: 30,000)."})
    num_eval_pairs: int = field(
        default=30000,
        metadata={"help": "Ranked pairs per held-out set (noise and mismatched-music pairs of eval_seen, eval_unseen); also the size of the train-accuracy slice."},
    )
    mismatched_music_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of the train pairs that rank a snippet with its own music above the same snippet with another "
            "piece's music (not in the paper, which uses noise-ranked pairs only: 0)."
        },
    )
    music_dim: int = field(default=MUSIC_DIM, metadata={"help": "Width of the music features."})
    codebook_size: int = field(default=CODEBOOK_SIZE, metadata={"help": "Pose codes per body half (VQ-VAE codebook size)."})
    hidden_size: int = field(default=768, metadata={"help": "Transformer width."})
    num_attention_heads: int = field(default=12, metadata={"help": "Attention heads."})
    num_hidden_layers: int = field(default=1, metadata={"help": "Transformer blocks."})
    attention_dropout: float = field(default=0.1, metadata={"help": "Dropout on attention probabilities."})
    residual_dropout: float = field(default=0.1, metadata={"help": "Dropout on embeddings and sub-layer outputs."})
    layer_norm_first: bool = field(default=False, metadata={"help": "Pre-LN if true; the paper uses post-LN (false)."})
    use_adam: bool = field(
        default=True,
        metadata={"help": "torch.optim.Adam with L2 weight decay (the paper's 'Adam'); false uses the `optim` field instead."},
    )

    # TrainingArguments defaults replaced by the paper's values (Table 6) and this stage's needs.
    learning_rate: float = 5e-4
    weight_decay: float = 2.5e-3
    num_train_epochs: float = 10.0
    per_device_eval_batch_size: int = 256
    max_grad_norm: float = 0.25
    eval_strategy: IntervalStrategy | str = "epoch"
    save_strategy: SaveStrategy | str = "no"

    def __post_init__(self):
        if self.demonstrations_path is None:
            self.demonstrations_path = str(RunLayout(self.run_dir).demonstrations)
        if self.snippet_length < 2:
            raise E3D2Error(f"reward: snippet_length must be at least 2 (one step is dropped), got {self.snippet_length}")
        if self.num_train_pairs < 1 or self.num_eval_pairs < 1:
            raise E3D2Error("reward: num_train_pairs and num_eval_pairs must be positive")
        if not 0.0 <= self.mismatched_music_fraction <= 1.0:
            raise E3D2Error(f"reward: mismatched_music_fraction must lie in [0, 1], got {self.mismatched_music_fraction}")
        super().__post_init__()

    def model_config(self) -> RewardModelConfig:
        """The reward model these settings describe; its context is the snippet minus the dropped step."""
        return RewardModelConfig(
            music_dim=self.music_dim,
            codebook_size=self.codebook_size,
            context_steps=self.snippet_length - 1,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_hidden_layers=self.num_hidden_layers,
            attention_dropout=self.attention_dropout,
            residual_dropout=self.residual_dropout,
            layer_norm_first=self.layer_norm_first,
        )


# Recipe values shown in the model card.
CARD_KEYS = (
    "snippet_length",
    "num_train_pairs",
    "num_eval_pairs",
    "mismatched_music_fraction",
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "attention_dropout",
    "residual_dropout",
    "layer_norm_first",
    "use_adam",
    "learning_rate",
    "weight_decay",
    "num_train_epochs",
    "per_device_train_batch_size",
    "max_grad_norm",
    "lr_scheduler_type",
    "seed",
)


def bradley_terry_loss(preferred_returns: torch.Tensor, other_returns: torch.Tensor) -> torch.Tensor:
    """Mean of `-log sigmoid(R_preferred - R_other)`: cross-entropy of the Bradley-Terry ranking predictor."""
    return -F.logsigmoid(preferred_returns - other_returns).mean()


def pair_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Share of pairs whose chosen snippet gets the higher return, a tie counting half.

    Half, not wrong: a mismatched-music pair holds the same codes twice, so a reward model that
    ignores the music ties every such pair and should score chance (0.5), not 0.
    """
    returns = np.asarray(prediction.predictions)
    wins = (returns[:, 0] > returns[:, 1]) + 0.5 * (returns[:, 0] == returns[:, 1])
    return {"pair_accuracy": float(np.mean(wins))}


def collate_pair_snippets(features: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack the per-pair snippet arrays of `RankedPairSnippets` into batch tensors."""
    return {key: torch.from_numpy(np.stack([feature[key] for feature in features])) for key in features[0]}


class RewardTrainer(GuardedTrainer):
    """`Trainer` whose loss is Bradley-Terry on pairs and whose predictions are the pairs' returns (a NaN or inf stops it).

    Batches hold `chosen_*` and `rejected_*` snippets; both halves run through the model as one
    batch. Predictions are `(n, 2)` returns `[R(chosen), R(rejected)]` and labels are 0 ("the first
    is preferred"), which `pair_accuracy` turns into the ranking accuracy.
    """

    def pair_returns(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 2) trajectory returns of the chosen and rejected snippets."""
        output = model(
            music_features=torch.cat((inputs["chosen_music_features"], inputs["rejected_music_features"])),
            upper_codes=torch.cat((inputs["chosen_upper_codes"], inputs["rejected_upper_codes"])),
            lower_codes=torch.cat((inputs["chosen_lower_codes"], inputs["rejected_lower_codes"])),
        )
        return torch.stack(output.returns.chunk(2), dim=1)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        returns = self.pair_returns(model, inputs)
        loss = bradley_terry_loss(returns[:, 0], returns[:, 1])
        self.check_finite(loss, "reward: non-finite Bradley-Terry loss")
        return (loss, {"returns": returns}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            returns = self.pair_returns(model, inputs)
            loss = bradley_terry_loss(returns[:, 0], returns[:, 1])
        if prediction_loss_only:
            return loss, None, None
        return loss, returns, torch.zeros(len(returns), dtype=torch.long, device=returns.device)


def score_demonstrations(model: E3D2RewardModel, split: DemonstrationSplit, batch_size: int) -> np.ndarray:
    """Learned return of every whole demonstration of `split`, skipping step 0 (the data's `a_0`).

    The steps 1..L-1 are scored in consecutive 29-step windows (`score_trajectory`), the same
    total a PPO rollout of that length would receive as its sparse reward.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    returns = np.empty(len(split), dtype=np.float64)
    with torch.no_grad():
        for first in tqdm(range(0, len(split), batch_size), desc=f"scoring {split.split} demonstrations", leave=False):
            rows = np.arange(first, min(first + batch_size, len(split)))
            steps = split.lengths[rows] - 1
            longest = int(steps.max())
            mask = np.arange(longest)[None, :] < steps[:, None]
            first_steps = split.starts[rows] + 1
            index = np.where(mask, first_steps[:, None] + np.arange(longest), first_steps[:, None])
            output = model.score_trajectory(
                torch.from_numpy(split.music_features[index] * mask[..., None]).to(device),
                torch.from_numpy(split.upper_codes[index]).to(device),
                torch.from_numpy(split.lower_codes[index]).to(device),
                attention_mask=torch.from_numpy(mask).to(device),
            )
            returns[rows] = output.returns.double().cpu().numpy()
    model.train(was_training)
    return returns


def return_by_noise(split: DemonstrationSplit, returns: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean and (population) std of the learned return per noise level, keyed by the level as text."""
    table = {}
    for level in np.unique(split.noise_levels):
        values = returns[split.noise_levels == level]
        table[f"{float(level):g}"] = {"mean": float(values.mean()), "std": float(values.std()), "count": int(values.size)}
    return table


def accuracy_per_epoch(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The per-evaluation pair accuracies from the Trainer's log, one entry per evaluation (paper Figure 6)."""
    by_step: dict[int, dict[str, float]] = {}
    for entry in log_history:
        for name in ("train", *HELDOUT_PAIR_SETS, *MISMATCHED_MUSIC_SETS):
            key = f"eval_{name}_pair_accuracy"
            if key in entry:
                point = by_step.setdefault(entry["step"], {"epoch": float(entry["epoch"]), "step": entry["step"]})
                point[name] = float(entry[key])
    return [by_step[step] for step in sorted(by_step)]


def plot_diagnostics(path: Path, curve: list[dict[str, float]], returns: dict[str, dict[str, float]]) -> None:
    """Small PNG: pair accuracy per epoch (Figure 6) and learned return per noise level (Table 3)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, no display needed (Agg canvas)

    figure = Figure(figsize=(8, 3.2), dpi=100)
    accuracy_axes, return_axes = figure.subplots(1, 2)
    for name, label, style in (
        ("train", "train pairs", "-"),
        ("seen", "held-out, seen music", "-"),
        ("unseen", "held-out, unseen music", "-"),
        ("seen_mismatched", "own vs other music, seen", "--"),
        ("unseen_mismatched", "own vs other music, unseen", "--"),
    ):
        points = [(point["epoch"], point[name]) for point in curve if name in point]
        if points:
            accuracy_axes.plot(*zip(*points), marker="o", linestyle=style, label=label)
    accuracy_axes.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    accuracy_axes.set(xlabel="epoch", ylabel="pair accuracy", ylim=(0.0, 1.02), title="ranking accuracy")
    accuracy_axes.legend(fontsize=7)
    levels = sorted(returns, key=float)
    return_axes.errorbar(
        [float(level) for level in levels],
        [returns[level]["mean"] for level in levels],
        yerr=[returns[level]["std"] for level in levels],
        marker="o",
        capsize=3,
    )
    return_axes.set(xlabel="noise level eps", ylabel="learned return", title="return on unseen music")
    figure.tight_layout()
    figure.savefig(path)


def model_card(config: RewardTrainingConfig, diagnostics: dict[str, Any], pair_counts: dict[str, int]) -> ModelCard:
    """README.md of the saved model: what it is, what it reached, the recipe values that made it."""
    by_noise = sorted(diagnostics["return_by_noise"].items(), key=lambda item: float(item[0]))
    data = training_data(config.run_dir)
    results = [
        result
        for music, split in HELDOUT_PAIR_SETS.items()
        for result in eval_results({f"pair accuracy, {music} music": diagnostics[f"pair_accuracy_{music}"]}, data, task=PREFERENCE_TASK, split=split)
    ]
    return build_model_card(
        title="E3D2 reward model",
        description=(
            "Learned per-step reward `r(s_t, a_t)` over interleaved music / pose-code tokens (E3D2 stage 3), trained with "
            "the Bradley-Terry loss on automatically-ranked pairs of eps-greedy behaviour-cloning demonstrations "
            f"(lower noise preferred). Pairs: {pair_counts['train']} train, {pair_counts['eval_seen']} held-out on seen music, "
            f"{pair_counts['eval_unseen']} held-out on unseen music; snippets of {config.snippet_length - 1} steps."
        ),
        tags=["reward-model", "bradley-terry", "rlhf"],
        auto_class="AutoModel",
        loaded_as="reward_model",
        usage=["total = reward_model.score_trajectory(music_features, upper_codes, lower_codes).returns"],
        tables=[
            CardTable(
                "Pair accuracy (final epoch)",
                note="Own vs other music: the same codes with their own music ranked above another piece's (chance: 0.5).",
                columns=["train pairs", "held-out, seen music", "held-out, unseen music", "own vs other music, seen", "own vs other music, unseen"],
                rows=[
                    [
                        diagnostics["pair_accuracy_train"],
                        diagnostics["pair_accuracy_seen"],
                        diagnostics["pair_accuracy_unseen"],
                        *(
                            "not measured (one piece)" if diagnostics[key] is None else diagnostics[key]
                            for key in ("mismatched_music_accuracy_seen", "mismatched_music_accuracy_unseen")
                        ),
                    ]
                ],
            ),
            CardTable(
                "Learned return per noise level (whole demonstrations on unseen music)",
                note=f"Falls monotonically with the noise level: **{diagnostics['monotonic']}**.",
                columns=["noise level", "mean", "std", "demonstrations"],
                rows=[[level, values["mean"], values["std"], values["count"]] for level, values in by_noise],
            ),
        ],
        recipe=recipe_values(config, CARD_KEYS),
        recipe_section="reward",
        data=data,
        results=results,
    )


def _final_metrics(trainer: RewardTrainer, eval_sets: dict[str, datasets.Dataset]) -> dict[str, float]:
    """Pair accuracies of the final model: the last logged evaluation if it ran at the final step, else a new one."""
    step = trainer.state.global_step
    metrics = {}
    for entry in trainer.state.log_history:  # one entry per evaluated set
        if entry.get("step") == step:
            metrics.update(entry)
    if all(f"eval_{name}_pair_accuracy" in metrics for name in eval_sets):
        return metrics
    for name, dataset in eval_sets.items():
        metrics.update(trainer.evaluate(dataset, metric_key_prefix=f"eval_{name}"))
    return metrics


def train_reward_model(config: RewardTrainingConfig) -> Path:
    """Build the ranked pairs, train the reward model, write `config.output_dir` (RUN/reward); returns it."""
    demonstrations_path = Path(config.demonstrations_path)
    splits = validate_demonstrations(
        load_demonstrations(demonstrations_path),
        snippet_length=config.snippet_length,
        music_dim=config.music_dim,
        codebook_size=config.codebook_size,
        source=str(demonstrations_path),
    )
    # Seeds: train pairs use `seed`, eval_seen pairs `seed + 1`, eval_unseen pairs `seed + 2`, their
    # mismatched-music pairs `seed + 3` and `seed + 4`.
    pair_counts = {"train": config.num_train_pairs, "eval_seen": config.num_eval_pairs, "eval_unseen": config.num_eval_pairs}
    pairs = datasets.DatasetDict(
        {
            name: build_ranked_pairs(
                splits[name],
                pair_counts[name],
                seed=config.seed + offset,
                snippet_length=config.snippet_length,
                mismatched_music_fraction=config.mismatched_music_fraction if name == "train" else 0.0,
            )
            for offset, name in enumerate(DEMONSTRATION_SPLITS)
        }
    )
    for offset, (name, split) in enumerate(MISMATCHED_MUSIC_SETS.items(), start=len(DEMONSTRATION_SPLITS)):
        if len(set(splits[split].music_ids)) < 2:
            logger.warning("reward: %s has one piece of music, so no mismatched-music pairs: %s accuracy not measured", split, name)
            continue
        pairs[f"{split}_mismatched"] = build_ranked_pairs(
            splits[split], config.num_eval_pairs, seed=config.seed + offset, snippet_length=config.snippet_length, mismatched_music_fraction=1.0
        )
    is_main = config.process_index == 0
    work_dir = config.work_dir
    if is_main:
        with atomic_directory(demonstrations_path.parent / "ranked_pairs") as tmp:
            pairs.save_to_disk(str(tmp))
        shutil.rmtree(work_dir, ignore_errors=True)

    def snippets(dataset: datasets.Dataset, split: str) -> datasets.Dataset:
        return ranked_pair_snippets(dataset, splits[split], config.snippet_length)

    eval_sets = {
        "train": snippets(pairs["train"].select(range(min(config.num_eval_pairs, config.num_train_pairs))), "train"),
        **{name: snippets(pairs[split], split) for name, split in HELDOUT_PAIR_SETS.items()},
        **{name: snippets(pairs[f"{split}_mismatched"], split) for name, split in MISMATCHED_MUSIC_SETS.items() if f"{split}_mismatched" in pairs},
    }
    set_seed(config.seed)
    model = E3D2RewardModel(config.model_config())
    # The Trainer works (logs, optional checkpoints) in a hidden sibling; RUN/reward appears only when complete.
    trainer_args = config.trainer_arguments(work_dir)
    optimizer = None
    if config.use_adam:
        adam_kwargs = {"lr": config.learning_rate, "betas": (config.adam_beta1, config.adam_beta2), "eps": config.adam_epsilon}
        optimizer = (torch.optim.Adam, adam_kwargs)
    trainer = RewardTrainer(
        model=model,
        args=trainer_args,
        train_dataset=snippets(pairs["train"], "train"),
        eval_dataset=eval_sets,
        data_collator=collate_pair_snippets,
        compute_metrics=pair_accuracy,
        optimizer_cls_and_kwargs=optimizer,
    )
    trainer.train()
    final = _final_metrics(trainer, eval_sets)
    trainer.accelerator.wait_for_everyone()
    if is_main:
        returns = score_demonstrations(trainer.model, splits["eval_unseen"], config.per_device_eval_batch_size)
        by_noise = return_by_noise(splits["eval_unseen"], returns)
        means = [by_noise[level]["mean"] for level in sorted(by_noise, key=float)]
        diagnostics = {
            "pair_accuracy_seen": float(final["eval_seen_pair_accuracy"]),
            "pair_accuracy_unseen": float(final["eval_unseen_pair_accuracy"]),
            "pair_accuracy_train": float(final["eval_train_pair_accuracy"]),
            **{
                f"mismatched_music_accuracy_{name.removesuffix('_mismatched')}": (
                    float(final[f"eval_{name}_pair_accuracy"]) if name in eval_sets else None
                )
                for name in MISMATCHED_MUSIC_SETS
            },
            "return_by_noise": by_noise,
            "monotonic": bool(np.all(np.diff(means) < 0)),
            "accuracy_per_epoch": accuracy_per_epoch(trainer.state.log_history),
            "return_scope": "whole eval_unseen demonstrations, steps 1..L-1, 29-step windows summed",
        }
        final_dir = finish(
            config,
            trainer.model,
            model_card(config, diagnostics, pair_counts),
            {"diagnostics.json": diagnostics},
            write_extra=lambda folder: plot_diagnostics(folder / "diagnostics.png", diagnostics["accuracy_per_epoch"], by_noise),
        )
        logger.info(
            "reward model -> %s: pair accuracy seen %.4f, unseen %.4f; own vs other music seen %s, unseen %s; "
            "return by noise %s (monotonic: %s)",
            final_dir,
            diagnostics["pair_accuracy_seen"],
            diagnostics["pair_accuracy_unseen"],
            diagnostics["mismatched_music_accuracy_seen"],
            diagnostics["mismatched_music_accuracy_unseen"],
            {level: round(values["mean"], 3) for level, values in by_noise.items()},
            diagnostics["monotonic"],
        )
    trainer.accelerator.wait_for_everyone()
    return Path(config.output_dir)


__all__ = [
    "RewardTrainer",
    "RewardTrainingConfig",
    "bradley_terry_loss",
    "collate_pair_snippets",
    "pair_accuracy",
    "return_by_noise",
    "score_demonstrations",
    "train_reward_model",
]
