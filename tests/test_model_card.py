"""The one model-card builder: every stage's card parses as a Hub `ModelCard`, has the shared sections, carries its facts."""

from __future__ import annotations

import json
import re
from importlib import metadata

import pytest
from huggingface_hub import ModelCard
from transformers.trainer_utils import SchedulerType

from e3d2_hf.trainers import bc, ppo_model_card, reward_model, vqvae
from e3d2_hf.trainers.model_card import (
    TAGS, TRAINING_DATA, CardTable, build_model_card, eval_results, format_value, install_line, metric_value, recipe_values, training_data,
)  # fmt: skip
from e3d2_hf.trainers.ppo_config import PPOConfig
from e3d2_hf.trainers.publishing import record_upload


def headings(card: ModelCard) -> list[str]:
    return re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", card.text, flags=re.S), flags=re.M)


def reparsed(card: ModelCard) -> ModelCard:
    """The card as the Hub reads its README.md back."""
    again = ModelCard(str(card))
    assert again.data.to_dict() == card.data.to_dict() and again.text == card.text
    assert again.data.eval_results == card.data.eval_results  # the model-index parses back into the same results
    return again


def results(card: ModelCard) -> dict[tuple[str, str], float]:
    """(metric name, dataset split) -> value of the card's model-index."""
    return {(result.metric_name, result.dataset_split): result.metric_value for result in card.data.eval_results or []}


def synthetic_run(tmp_path):
    """A run folder whose prepare stage recorded the synthetic dataset."""
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"source": {"kind": "synthetic", "num_sequences": 8}}))
    return tmp_path


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
    assert card.data.license == "other" and card.data.license_name == "training-data-unrecorded" and card.data.eval_results is None
    assert headings(card) == ["A model", "Use", "Intended use and limitations", "Citation"]
    for text in (f"```bash\n{install_line()}\n```", "import e3d2_hf", "model = AutoModel.from_pretrained(PATH)", "siyao2022bailando",
                 "arXiv:2312.11442", "li2021aichoreographer", "loper2015smpl", "its licence: it follows that data's", "non-commercial research"):  # fmt: skip
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
    assert headings(card) == ["A policy", "Use", "Results", "Recipe (section `ppo`)", "Intended use and limitations", "Citation"]
    text = card.text
    assert text.index("What it is.") < text.index("![A dance](dance.gif)") < text.index("## Use")
    assert 'policy = AutoModelForCausalLM.from_pretrained("me/model")\njoints = music_to_joints(policy, music)\n```\n\nor `e3d2 dance`.' in text
    assert "Measured on held-out music.\n\n| a | b |\n|---|---|\n| 0.5 | - |" in text
    assert "| learning_rate | 0.0003 |\n| lr_scheduler_type | constant |" in text


def test_the_stage_cards_carry_their_facts(tmp_path):
    common = {"run_dir": str(synthetic_run(tmp_path)), "use_cpu": True, "report_to": "none"}
    evaluation = {"heldout": {"num_sequences": 2, "mpjpe_cm": 3.25, "mpjpe_global_cm": 12.5, "codebook_usage": {"upper": {"codes_used": 7}, "lower": {"codes_used": 9}}}}
    card = reparsed(vqvae.model_card(vqvae.VQVAETrainingConfig(**common), evaluation, {"train_sequences": 5, "pose_windows": 52, "root_windows": 60}))
    assert {"vq-vae", "choreographic-memory"} <= set(card.data.tags)
    assert headings(card) == ["E3D2 VQ-VAE (choreographic memory)", "Use", "Held-out reconstruction", "Recipe (section `vqvae`)",
                              "Intended use and limitations", "Citation"]  # fmt: skip
    assert card.data.license == "mit" and card.data.datasets == ["e3d2_hf.data.synthetic"]
    assert results(card) == {("MPJPE root-relative (cm)", "val+test"): 3.25, ("MPJPE with integrated root (cm)", "val+test"): 12.5}
    for text in ("| 3.25 | 12.5 | 7 | 9 |", "The 2 held-out (val + test) sequences", "52 windows of 240 frames", "on 60 windows", "| lr_decay_epochs | [100, 200] |"):
        assert text in card.text, text

    accuracy = {"upper": 0.5, "lower": 0.25, "complete": 0.125, "partial": 0.625}
    counts = {"train_sequences": 3, "train_windows": 40, "epochs": 3.0, "steps": 12, "seconds": 4.2}
    card = reparsed(bc.model_card(bc.BCTrainingConfig(**common), {"seen": accuracy, "unseen": accuracy}, counts))
    assert {"bailando", "behaviour-cloning"} <= set(card.data.tags)
    assert results(card)[("next-pose-code accuracy, complete pose, unseen music", "val+test")] == 0.125
    assert results(card)[("next-pose-code accuracy, partial pose, seen music", "train")] == 0.625
    for text in ("| seen | 50 | 25 | 12.5 | 62.5 | 54.69 | 73.44 |", "| unseen | 50 | 25 | 12.5 | 62.5 | 2.32 | 7.52 |",
                 "40 windows of 30 steps per epoch, 3 epochs, 12 optimiser steps in 4 s", "AutoModelForCausalLM.from_pretrained(PATH)",
                 "e3d2 dance --model PATH", "## Recipe (section `bc`)", "| num_train_epochs | 400 |"):  # fmt: skip
        assert text in card.text, text

    diagnostics = {
        "pair_accuracy_train": 0.9, "pair_accuracy_seen": 0.8125, "pair_accuracy_unseen": 0.75, "monotonic": True,
        "mismatched_music_accuracy_seen": 0.625, "mismatched_music_accuracy_unseen": 0.5,
        "return_by_noise": {"1": {"mean": -3.5, "std": 1.25, "count": 4}, "0.02": {"mean": 0.5, "std": 0.25, "count": 4}},
    }  # fmt: skip
    pairs = {"train": 256, "eval_seen": 64, "eval_unseen": 32}
    card = reparsed(reward_model.model_card(reward_model.RewardTrainingConfig(**common), diagnostics, pairs))
    assert {"reward-model", "bradley-terry", "rlhf"} <= set(card.data.tags)
    assert results(card) == {("pair accuracy, seen music", "eval_seen"): 0.8125, ("pair accuracy, unseen music", "eval_unseen"): 0.75}
    for text in ("| 0.9 | 0.8125 | 0.75 | 0.625 | 0.5 |", "| 0.02 | 0.5 | 0.25 | 4 |\n| 1 | -3.5 | 1.25 | 4 |", "**True**", "256 train, 64 held-out on seen music, 32",
                 "snippets of 29 steps", "| lr_scheduler_type | constant |", "reward_model.score_trajectory"):  # fmt: skip
        assert text in card.text, text


PPO_SUMMARY = {
    "reward": "learned", "steps": 2, "episodes": 32, "held_out_pieces": 4, "learned_return_bc": -1.5, "learned_return_final": -0.75,
    "kl_final": 0.0125, "kl_final_heldout": 0.02,
    "metrics_bc": {"FID_k": 60.5, "FID_g": 31.25, "Div_k": 5.5, "Div_g": 4.75, "BAS": 0.1875, "PFC": 1.5},
    "metrics_final": {"FID_k": 48.25, "FID_g": 27.5, "Div_k": 6.25, "Div_g": 5.0, "BAS": 0.2125, "PFC": None},
}  # fmt: skip


def test_the_ppo_card_holds_the_runs_held_out_metrics_and_its_parent(tmp_path):
    run = synthetic_run(tmp_path)
    record_upload(run / "bc", "me/e3d2-bc")  # the BC policy it was fine-tuned from is on the Hub
    card = reparsed(ppo_model_card.model_card(PPOConfig(run_dir=str(run)), PPO_SUMMARY))
    metadata_block = card.data.to_dict()
    assert metadata_block["base_model"] == "me/e3d2-bc" and metadata_block["license"] == "mit"
    assert {"ppo", "rlhf", "music-to-dance"} <= set(metadata_block["tags"])
    assert results(card) == {(key, "val+test"): value for key, value in PPO_SUMMARY["metrics_final"].items() if value is not None}
    (index,) = metadata_block["model-index"]
    assert index["name"] == "E3D2 dance policy (PPO)" and index["results"][0]["task"]["type"] == "music-to-dance"
    assert "| PPO (this model) | -0.75 | 48.25 | 27.5 | 6.25 | 5 | 0.2125 | - |" in card.text


def test_figures_are_read_defensively():
    assert metric_value(0.5) == 0.5 and metric_value({"value": 2.0, "ci95": [1.0, 3.0]}) == 2.0 and metric_value({"mean": 1}) == 1.0
    assert metric_value(None) is None and metric_value(float("nan")) is None and metric_value(True) is None and metric_value("x") is None
    measured = eval_results({"FID_k": {"value": 3.0, "ci95": [2.0, 4.0]}, "BAS": None, "Div_k": float("inf")}, TRAINING_DATA["aistpp"])
    assert [(result.metric_name, result.metric_value, result.dataset_name) for result in measured] == [("FID_k", 3.0, "AIST++")]
    assert training_data(None).kind == "unknown" and TRAINING_DATA["aistpp"].license == "other"


class FakeDistribution:
    def __init__(self, direct_url):
        self.version, self.direct_url = "0.1.0", direct_url

    def read_text(self, name):
        return None if self.direct_url is None else json.dumps(self.direct_url)


@pytest.mark.parametrize(
    ("direct_url", "line"),
    [(None, "pip install e3d2-hf==0.1.0"),
     ({"url": "https://github.com/me/e3d2-hf", "vcs_info": {"vcs": "git", "commit_id": "abc123"}}, 'pip install "e3d2-hf @ git+https://github.com/me/e3d2-hf@abc123"'),
     ({"url": "file:///home/me/e3d2-hf", "dir_info": {"editable": True}}, "pip install ./e3d2-hf  # e3d2-hf 0.1.0 from a checkout of its source")],
)  # fmt: skip
def test_the_install_line_is_the_one_that_installed_this_copy(monkeypatch, direct_url, line):
    monkeypatch.setattr(metadata, "distribution", lambda name: FakeDistribution(direct_url))
    assert install_line().startswith(line)
