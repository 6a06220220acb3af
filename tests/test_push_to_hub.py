"""`push_to_hub` on a stage: the finished, loadable folder is published (a BC policy with its VQ-VAE), or the
stage is refused in one line before it trains."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import pytest

from e3d2_hf.recipe import run_stage
from e3d2_hf.trainers import bc
from e3d2_hf.trainers.ppo_config import PPOConfig
from e3d2_hf.trainers.reward_model import RewardTrainingConfig
from e3d2_hf.trainers.vqvae import VQVAETrainingConfig
from e3d2_hf.utils import E3D2Error

from test_bc import tiny_config, write_run


class RecordingApi:
    """`HfApi` without the network: records each call and what the uploaded folder held at that moment."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        RecordingApi.calls.append(("create_repo", repo_id))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, commit_message):
        files = sorted(path.relative_to(folder_path).as_posix() for path in Path(folder_path).rglob("*") if path.is_file())
        RecordingApi.calls.append(("upload_folder", repo_id, folder_path, files))


@pytest.fixture
def online(monkeypatch):
    """A machine that could upload: not offline, a token, and an `HfApi` that records instead of sending."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    RecordingApi.calls = []


def test_bc_publishes_its_finished_folder_with_the_vqvae(tmp_path, online):
    run = write_run(tmp_path / "tiny")
    bc.train_bc(tiny_config(run, push_to_hub=True, hub_model_id="me/e3d2-bc", report_to="none"))
    (create, upload) = RecordingApi.calls  # the Trainer itself pushed nothing (its checkpoints stay local)
    assert create == ("create_repo", "me/e3d2-bc")
    assert upload[:3] == ("upload_folder", "me/e3d2-bc", str(run / "bc"))
    assert {"config.json", "model.safetensors", "README.md", "vqvae/config.json", "vqvae/model.safetensors", "diagnostics.json"} <= set(upload[3])
    assert not any(name.startswith("checkpoint-") for name in upload[3])
    assert (run / "bc" / "hub_upload.json").is_file()  # a PPO card can now name it as its base_model


@pytest.mark.parametrize("config_class", [VQVAETrainingConfig, bc.BCTrainingConfig, RewardTrainingConfig, PPOConfig])
def test_a_push_that_cannot_work_is_refused_before_training(config_class, tmp_path, monkeypatch):
    common = {"run_dir": str(tmp_path)} if config_class is PPOConfig else {"run_dir": str(tmp_path), "use_cpu": True, "report_to": "none"}
    with pytest.raises(E3D2Error, match="push_to_hub needs the network and HF_HUB_OFFLINE is set"):
        config_class(**common, push_to_hub=True)  # the tests run offline
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(E3D2Error, match="push_to_hub needs a Hugging Face token; log in with `hf auth login`"):
        config_class(**common, push_to_hub=True)
    with pytest.raises(E3D2Error, match="'not a repo id' is not a Hub repository id"):
        config_class(**common, push_to_hub=True, hub_model_id="not a repo id")


def test_the_stage_script_says_so_in_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run_name: r\nruns_dir: {tmp_path}\nbc:\n  push_to_hub: true\n")
    assert run_stage("bc", bc.BCTrainingConfig, bc.train_bc, [str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bc: error: bc: push_to_hub needs the network")
    assert not (tmp_path / "r").exists()  # nothing was trained or written
