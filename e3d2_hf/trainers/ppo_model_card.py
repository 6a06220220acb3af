"""The model card and the Hub upload of PPO's final policy (RUN/ppo/policy).

`model_card(config, summary)` supplies PPO's facts to the shared card builder: what the policy is,
what it reached against the behaviour-cloning policy on held-out music (also its model-index), the
recipe, and the behaviour-cloning policy as `base_model` when that was uploaded to the Hub.
`push_to_hub(config, folder)` publishes the finished folder through the one upload path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from e3d2_hf.metrics.protocol import METRIC_KEYS
from e3d2_hf.trainers.model_card import CardTable, build_model_card, eval_results, format_value, recipe_values, training_data
from e3d2_hf.trainers.ppo_config import PPOConfig
from e3d2_hf.trainers.publishing import upload_folder_or_explain, uploaded_as

CARD_KEYS = (
    "reward", "segment_steps", "segment_stride", "rollout_segments", "temperature", "top_k", "kl_beta", "kl_target",
    "advantage_estimator", "gamma", "gae_lambda", "whiten_advantages", "clip_ratio", "value_loss_weight",
    "entropy_loss_weight", "value_shared_layers", "value_num_layers", "max_steps", "num_ppo_epochs",
    "train_batch_size", "learning_rate", "weight_decay", "max_grad_norm", "reward_normalization", "value_learning_rate",
    "value_detach_base", "best_policy_metric", "seed",
)  # fmt: skip


def model_card(config: PPOConfig, summary: dict[str, Any]) -> ModelCard:
    """README.md of the final policy: what it is, what it reached against the BC policy, the recipe."""
    metrics_bc, metrics_final = summary.get("metrics_bc") or {}, summary.get("metrics_final") or {}
    data = training_data(config.run_dir)
    return build_model_card(
        title="E3D2 dance policy (PPO)",
        description=(
            'A GPT policy over VQ-VAE pose codes that dances to music (E3D2, "Explore 3D Dance Generation via Reward Model '
            'from Automatically-Ranked Demonstrations"). Fine-tuned from the behaviour-cloning policy with PPO on the '
            f"**{summary['reward']}** reward for {summary['steps']} steps ({summary['episodes']} episodes of "
            f"{config.segment_steps - 1} actions), with a per-step KL penalty to the behaviour-cloning policy. "
            + _saved_policy(summary)
            + "Its VQ-VAE is in `vqvae/` and loads with it."
        ),
        tags=["ppo", "reinforcement-learning", "rlhf"],
        auto_class="AutoModelForCausalLM",
        loaded_as="policy",
        imports=["from e3d2_hf.inference import music_to_joints"],
        usage=["joints = music_to_joints(policy, music_features_7p5, seed_motion=first_frames)  # (8 * steps, 24, 3) at 60 fps"],
        tables=[
            CardTable(
                f"Held-out music ({summary['held_out_pieces']} pieces)",
                note=(
                    f"Per-step KL to the behaviour-cloning policy: {format_value(summary['kl_final'])} (last training rollouts), "
                    f"{format_value(summary['kl_final_heldout'])} (exact, held-out dances)."
                ),
                columns=["policy", "learned return", *METRIC_KEYS],
                rows=[
                    ["behaviour cloning", summary["learned_return_bc"], *(metrics_bc.get(key) for key in METRIC_KEYS)],
                    ["PPO (this model)", summary["learned_return_final"], *(metrics_final.get(key) for key in METRIC_KEYS)],
                ],
            )
        ],
        recipe=recipe_values(config, CARD_KEYS),
        recipe_section="ppo",
        data=data,
        results=eval_results({key: metrics_final.get(key) for key in METRIC_KEYS}, data),
        base_model=uploaded_as(config.policy_path),
    )


def _saved_policy(summary: dict[str, Any]) -> str:
    """Which step's policy this is, when an evaluation chose it rather than the last step."""
    best = summary.get("best_policy")
    if not best:
        return ""
    return (
        f"This is the policy of step {best['step']}, the evaluation with the best {best['metric']} on the held-out "
        f"{best['split']} music ({format_value(best['value'])}; behaviour cloning: {format_value(best['bc_value'])}). "
    )


def push_to_hub(config: PPOConfig, folder: Path) -> bool:
    """Publish the final policy folder; a failure (no network, refused) is logged with how to upload later, never raised."""
    return upload_folder_or_explain(folder, config.hub_repo_id, commit_message="Upload E3D2 PPO policy")


__all__ = ["CARD_KEYS", "model_card", "push_to_hub"]
