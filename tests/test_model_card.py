"""The one model-card builder: every stage's card parses as a Hub `ModelCard`, has the shared sections, carries its facts."""

from __future__ import annotations

import re

import pytest
from huggingface_hub import ModelCard
from transformers.trainer_utils import SchedulerType

from e3d2_hf.trainers import bc, reward_model, vqvae
from e3d2_hf.trainers.model_card import TAGS, CardTable, build_model_card, format_value, recipe_values


def headings(card: ModelCard) -> list[str]:
    return re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", card.text, flags=re.S), flags=re.M)


def reparsed(card: ModelCard) -> ModelCard:
    """The card as the Hub reads its README.md back."""
    again = ModelCard(str(card))
    assert again.data.to_dict() == card.data.to_dict() and again.text == card.text
    return again


@pytest.mark.parametrize(
    ("value", "cell"),
    [(None, "-"), (True, "True"), (3, "3"), (3.0, "3"), (0.003, "0.003"), (1e-05, "1e-05"), (0.98437, "0.9844"), (2575.73, "2576"),
     (123456.7, "123457"), (float("nan"), "nan"), (SchedulerType.CONSTANT, "constant"), ([250, 400], "[250, 400]"), ("2 (1 + 1)", "2 (1 + 1)")],
)  # fmt: skip
def test_format_value(value, cell):
    assert format_value(value) == cell


def test_recipe_values_read_configs_and_saved_recipes_alike(tmp_path):
    config = vqvae.VQVAETrainingConfig(run_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert recipe_values(config, ["window", "not_a_field"]) == {"window": 240}
    assert recipe_values({"window": 12, "run_dir": "/home/me"}, ["window", "kl_beta"]) == {"window": 12}


def test_a_minimal_card_has_the_shared_sections_and_no_gaps():
    card = reparsed(build_model_card(title="A model", description="What it is.", auto_class="AutoModel"))
    assert card.data.library_name == "transformers" and card.data.tags == list(TAGS)
    assert headings(card) == ["A model", "Use", "Citation"]
    for text in ("pip install e3d2-hf", "import e3d2_hf", "model = AutoModel.from_pretrained(PATH)", "siyao2022bailando", "arXiv:2312.11442"):
        assert text in card.text, text
    assert "\n\n\n" not in str(card) and str(card).endswith("```\n")


def test_a_full_card_places_every_part():
    card = reparsed(
        build_model_card(
            title="A policy",
            description="What it is.",
            auto_class="AutoModelForCausalLM",
            tags=["ppo", "e3d2"],
            media="![A dance](dance.gif)",
            model_id="me/model",
            loaded_as="policy",
            imports=["from e3d2_hf.inference import music_to_joints"],
            usage=["joints = music_to_joints(policy, music)"],
            usage_note="or `e3d2 dance`.",
            tables=[CardTable("Results", columns=["a", "b"], rows=[[0.5, None]], note="Measured on held-out music.")],
            recipe={"learning_rate": 3e-4, "lr_scheduler_type": SchedulerType.CONSTANT},
            recipe_section="ppo",
        )
    )
    assert card.data.tags == [*TAGS, "ppo"]
    assert headings(card) == ["A policy", "Use", "Results", "Recipe (section `ppo`)", "Citation"]
    text = card.text
    assert text.index("What it is.") < text.index("![A dance](dance.gif)") < text.index("## Use")
    assert 'policy = AutoModelForCausalLM.from_pretrained("me/model")\njoints = music_to_joints(policy, music)\n```\n\nor `e3d2 dance`.' in text
    assert "Measured on held-out music.\n\n| a | b |\n|---|---|\n| 0.5 | - |" in text
    assert "| learning_rate | 0.0003 |\n| lr_scheduler_type | constant |" in text


def test_the_stage_cards_carry_their_facts(tmp_path):
    common = {"run_dir": str(tmp_path), "use_cpu": True, "report_to": "none"}
    evaluation = {"heldout": {"num_sequences": 2, "mpjpe_cm": 3.25, "mpjpe_global_cm": 12.5, "codebook_usage": {"upper": {"codes_used": 7}, "lower": {"codes_used": 9}}}}
    card = reparsed(vqvae.model_card(vqvae.VQVAETrainingConfig(**common), evaluation, {"train_sequences": 5, "pose_windows": 52, "root_windows": 60}))
    assert {"vq-vae", "choreographic-memory"} <= set(card.data.tags)
    assert headings(card) == ["E3D2 VQ-VAE (choreographic memory)", "Use", "Held-out reconstruction", "Recipe (section `vqvae`)", "Citation"]
    for text in ("| 3.25 | 12.5 | 7 | 9 |", "The 2 held-out (val + test) sequences", "52 windows of 240 frames", "on 60 windows", "| lr_decay_epochs | [100, 200] |"):
        assert text in card.text, text

    accuracy = {"upper": 0.5, "lower": 0.25, "complete": 0.125, "partial": 0.625}
    counts = {"train_sequences": 3, "train_windows": 40, "epochs": 3.0, "steps": 12, "seconds": 4.2}
    card = reparsed(bc.model_card(bc.BCTrainingConfig(**common), {"seen": accuracy, "unseen": accuracy}, counts))
    assert {"bailando", "behaviour-cloning"} <= set(card.data.tags)
    for text in ("| seen | 50 | 25 | 12.5 | 62.5 | 54.69 | 73.44 |", "| unseen | 50 | 25 | 12.5 | 62.5 | 2.32 | 7.52 |",
                 "40 windows of 30 steps per epoch, 3 epochs, 12 optimiser steps in 4 s", "AutoModelForCausalLM.from_pretrained(PATH)",
                 "e3d2 dance --model PATH", "## Recipe (section `bc`)", "| num_train_epochs | 400 |"):  # fmt: skip
        assert text in card.text, text

    diagnostics = {
        "pair_accuracy_train": 0.9, "pair_accuracy_seen": 0.8125, "pair_accuracy_unseen": 0.75, "monotonic": True,
        "return_by_noise": {"1": {"mean": -3.5, "std": 1.25, "count": 4}, "0.02": {"mean": 0.5, "std": 0.25, "count": 4}},
    }  # fmt: skip
    pairs = {"train": 256, "eval_seen": 64, "eval_unseen": 32}
    card = reparsed(reward_model.model_card(reward_model.RewardTrainingConfig(**common), diagnostics, pairs))
    assert {"reward-model", "bradley-terry"} <= set(card.data.tags)
    for text in ("| 0.9 | 0.8125 | 0.75 |", "| 0.02 | 0.5 | 0.25 | 4 |\n| 1 | -3.5 | 1.25 | 4 |", "**True**", "256 train, 64 held-out on seen music, 32",
                 "snippets of 29 steps", "| lr_scheduler_type | constant |", "reward_model.score_trajectory"):  # fmt: skip
        assert text in card.text, text
