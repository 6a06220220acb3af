"""The model card and the Hub upload of PPO's final policy (RUN/ppo/policy), kept apart from the trainer.

`model_card(config, summary)` writes the policy's README.md: what it is, what it reached against
the behaviour-cloning policy on held-out music, the recipe. `push_to_hub(config, folder)` publishes
the folder. Both are PPO's own for now; they sit in this one module so that switching PPO to the
project's shared card builder and upload path is a change of this file and its two call sites in
`PPOTrainer.save_model` and `PPOTrainer.train`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from e3d2_hf.metrics.protocol import METRIC_KEYS
from e3d2_hf.trainers.ppo_config import PPOConfig

logger = logging.getLogger(__name__)

CARD_KEYS = (
    "reward", "segment_steps", "segment_stride", "rollout_segments", "temperature", "top_k", "kl_beta", "kl_target",
    "advantage_estimator", "gamma", "gae_lambda", "whiten_advantages", "clip_ratio", "value_loss_weight",
    "entropy_loss_weight", "value_shared_layers", "value_num_layers", "max_steps", "num_ppo_epochs",
    "train_batch_size", "learning_rate", "weight_decay", "max_grad_norm", "reward_normalization", "seed",
)  # fmt: skip


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(config: PPOConfig, summary: dict[str, Any]) -> str:
    """README.md of the final policy: what it is, what it reached against the BC policy, the recipe."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name="transformers", tags=["e3d2", "dance-generation", "ppo", "reinforcement-learning", "music-to-dance"])
    metrics_bc, metrics_final = summary.get("metrics_bc") or {}, summary.get("metrics_final") or {}
    lines = [
        "# E3D2 dance policy (PPO)",
        "",
        "A GPT policy over VQ-VAE pose codes that dances to music (E3D2, \"Explore 3D Dance Generation via Reward Model",
        "from Automatically-Ranked Demonstrations\"). Fine-tuned from the behaviour-cloning policy with PPO on the "
        f"**{summary['reward']}** reward for {summary['steps']} steps ({summary['episodes']} episodes of "
        f"{config.segment_steps - 1} actions), with a per-step KL penalty to the behaviour-cloning policy.",
        "",
        f"## Held-out music ({summary['held_out_pieces']} pieces)",
        "",
        "| policy | learned return | " + " | ".join(METRIC_KEYS) + " |",
        "|---|---|" + "---|" * len(METRIC_KEYS),
        f"| behaviour cloning | {_cell(summary['learned_return_bc'])} | " + " | ".join(_cell(metrics_bc.get(key)) for key in METRIC_KEYS) + " |",
        f"| PPO (this model) | {_cell(summary['learned_return_final'])} | " + " | ".join(_cell(metrics_final.get(key)) for key in METRIC_KEYS) + " |",
        "",
        f"Per-step KL to the behaviour-cloning policy: {_cell(summary['kl_final'])} (last training rollouts), "
        f"{_cell(summary['kl_final_heldout'])} (exact, held-out dances).",
        "",
        "## Recipe (section `ppo`)",
        "",
        "| key | value |",
        "|---|---|",
        *(f"| {key} | {_cell(getattr(config, key))} |" for key in CARD_KEYS),
        "",
        "## Use",
        "",
        "```python",
        "import e3d2_hf.models.modeling_policy  # registers the policy with the Auto classes",
        "from transformers import AutoModelForCausalLM",
        "from e3d2_hf.models.modeling_policy import music_to_joints",
        "policy = AutoModelForCausalLM.from_pretrained(PATH)  # its VQ-VAE is in PATH/vqvae",
        "joints = music_to_joints(policy, music_features_7p5, seed_motion=first_frames)  # (8 * steps, 24, 3) at 60 fps",
        "```",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines)))


def push_to_hub(config: PPOConfig, folder: Path) -> bool:
    """Publish the final policy folder; a failure (offline, no token) is reported, never raised."""
    repo_id = config.hub_model_id or f"e3d2-{Path(config.run_dir).name}"
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        repo = api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message="E3D2 PPO policy")
    except Exception as exc:  # offline mode, missing token, network: the trained policy stays on disk
        logger.error("push_to_hub: could not publish %s to '%s' (%s: %s); the policy is saved locally", folder, repo_id, type(exc).__name__, exc)
        return False
    logger.info("push_to_hub: published %s as %s", folder, repo.repo_id)
    return True


__all__ = ["CARD_KEYS", "model_card", "push_to_hub"]
