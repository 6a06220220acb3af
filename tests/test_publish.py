"""`e3d2 publish`: a run's policy -> a Hub-ready folder (weights, VQ-VAE, model card, dance GIF), uploaded."""

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
from huggingface_hub import ModelCard
from PIL import Image

import e3d2_hf
from e3d2_hf.cli import main
from e3d2_hf.hub import publish
from e3d2_hf.models.modeling_policy import E3D2PolicyModel
from e3d2_hf.trainers.publishing import upload_folder_or_explain
from e3d2_hf.utils import E3D2Error

from conftest import tiny_dancing_policy

SUMMARY = {
    "reward": "learned",
    "steps": 12,
    "episodes": 384,
    "samples_per_second": 41.5,
    "learned_return_bc": 0.125,
    "learned_return_final": 0.625,
    "kl_final": 0.0375,
    "metrics_bc": {"FID_k": 51.25, "FID_g": 30.5, "Div_k": 6.5, "Div_g": 5.25, "BAS": 0.1875, "PFC": 1.5},
    "metrics_final": {"FID_k": 42.75, "FID_g": 25.5, "Div_k": 7.25, "Div_g": 5.75, "BAS": 0.2375, "PFC": 1.25},
}


class FakeApi:
    """Records the `HfApi` calls; raises `error` from create_repo when given one."""

    def __init__(self, error: Exception | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.error = error

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        if self.error is not None:
            raise self.error
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


@pytest.fixture(autouse=True)
def light(tmp_path, monkeypatch):
    """A private feature cache and one-second card GIFs unless a test wants more."""
    monkeypatch.setenv("E3D2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("e3d2_hf.hub.GIF_SECONDS", 1.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """RUN with bc/ (a plain policy folder) and ppo/ as the PPO trainer leaves it: policy/ + summary.json."""
    policy = tiny_dancing_policy()
    run = tmp_path_factory.mktemp("runs") / "tiny"
    policy.save_pretrained(run / "bc")
    policy.save_pretrained(run / "ppo" / "policy")
    (run / "ppo" / "policy" / "README.md").write_text("# the trainer's card\n")
    (run / "ppo" / "policy" / "training_config.json").write_text(json.dumps({"kl_beta": 0.05, "learning_rate": 1e-5, "run_dir": "/home/me/runs/tiny"}))
    (run / "ppo" / "summary.json").write_text(json.dumps(SUMMARY))
    return run


def test_publish_builds_a_loadable_folder_and_uploads_it(run_dir, monkeypatch):
    monkeypatch.setattr("e3d2_hf.hub.GIF_SECONDS", 2.0)
    api = FakeApi()
    result = publish(run_dir / "ppo", "me/e3d2-tiny", private=True, api=api)
    folder = run_dir / "ppo" / "hub"
    assert result.uploaded and result.folder == folder and "https://huggingface.co/me/e3d2-tiny" in result.message
    assert api.calls == [
        ("create_repo", {"repo_id": "me/e3d2-tiny", "private": True, "exist_ok": True}),
        ("upload_folder", {"repo_id": "me/e3d2-tiny", "folder_path": str(folder), "commit_message": "Upload E3D2 dance policy"}),
    ]
    assert {"config.json", "model.safetensors", "README.md", "dance.gif", "vqvae"} <= {path.name for path in folder.iterdir()}

    from transformers import AutoModelForCausalLM

    assert e3d2_hf  # the import registers the Auto classes
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    original = E3D2PolicyModel.from_pretrained(run_dir / "ppo" / "policy")
    assert isinstance(loaded, E3D2PolicyModel) and loaded.load_vqvae().config.codebook_size == 32
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and {"e3d2", "dance-generation", "music-to-dance"} <= set(card.data.tags)
    for text in ('AutoModelForCausalLM.from_pretrained("me/e3d2-tiny")', "e3d2 dance --model me/e3d2-tiny --music song.mp3",
                 "import e3d2_hf", "![A dance by this model](dance.gif)", "| this model | 0.625 | 42.75 |", "| behaviour cloning | 0.125 |",
                 "12 PPO steps", "0.0375", "with PPO on the learned reward", "| kl_beta | 0.05 |", "| learning_rate | 1e-05 |"):  # fmt: skip
        assert text in card.text, text
    assert "/home/me" not in card.content  # local paths stay local
    with Image.open(folder / "dance.gif") as gif:
        assert gif.size == (320, 240) and gif.n_frames == 40  # 2 s at 20 fps


def test_offline_keeps_the_folder_and_says_how_to_upload(run_dir, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "hub"
    assert main(["publish", str(run_dir / "ppo"), "--repo-id", "me/e3d2-tiny", "--out", str(out), "--private"]) == 1
    captured = capsys.readouterr()
    assert "HF_HUB_OFFLINE" in captured.err and f"hf upload me/e3d2-tiny {out} . --private" in captured.err
    assert "Traceback" not in captured.err and str(out) in captured.out
    assert (out / "model.safetensors").is_file() and (out / "vqvae" / "config.json").is_file() and (out / "dance.gif").is_file()


def test_plain_policy_folder_with_music(run_dir, tmp_path):
    song = tmp_path / "my_song.wav"
    t = np.arange(3 * 22050) / 22050
    soundfile.write(song, (0.5 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32), 22050)
    result = publish(run_dir / "bc", "me/e3d2-bc", music=song, api=FakeApi())
    assert result.folder == run_dir / "bc-hub" and result.uploaded
    text = (result.folder / "README.md").read_text()
    assert "`my_song.wav`" in text and "Training summary" not in text
    result = publish(run_dir / "bc", "me/e3d2-bc", api=FakeApi())  # an earlier build is replaced
    assert "from `e3d2_hf.data.synthetic`" in (result.folder / "README.md").read_text()


def test_failed_uploads_are_explained_never_raised(run_dir, tmp_path, caplog):
    result = publish(run_dir / "bc", "me/e3d2-bc", out=tmp_path / "hub", api=FakeApi(ConnectionError("network is unreachable")))
    assert not result.uploaded and "network is unreachable" in result.message and "hf upload me/e3d2-bc" in result.message
    assert (tmp_path / "hub" / "config.json").is_file()
    # What the PPO trainer's push_to_hub can call: any failure is logged, never raised.
    assert not upload_folder_or_explain(tmp_path / "hub", "me/e3d2-bc", api=FakeApi(PermissionError("401 Unauthorized")))
    assert "401 Unauthorized" in caplog.text and "hf upload" in caplog.text
    assert not upload_folder_or_explain(tmp_path / "hub", "me/e3d2-bc", api=object())  # not even an API
    api = FakeApi()
    assert upload_folder_or_explain(tmp_path / "hub", "me/e3d2-bc", private=True, api=api)
    assert api.calls[0] == ("create_repo", {"repo_id": "me/e3d2-bc", "private": True, "exist_ok": True})


def test_bad_input_fails_clearly_and_leaves_nothing(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert main(["publish", str(empty), "--repo-id", "me/x"]) == 2
    assert "empty_run: no policy here" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(run_dir / "bc", bare)
    shutil.rmtree(bare / "vqvae")
    with pytest.raises(E3D2Error, match="no VQ-VAE"):
        publish(bare, "me/x", api=FakeApi())
    with pytest.raises(E3D2Error, match="repo-id"):
        publish(run_dir / "bc", "not a repo id", api=FakeApi())
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"not audio" * 50)
    with pytest.raises(E3D2Error, match="broken.mp3"):
        publish(run_dir / "bc", "me/x", out=tmp_path / "hub", music=broken, api=FakeApi())
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(E3D2Error, match="not a folder built by `e3d2 publish`"):
        publish(run_dir / "bc", "me/x", out=keep, api=FakeApi())
    with pytest.raises(E3D2Error, match="would replace the policy"):
        publish(run_dir / "ppo", "me/x", out=run_dir, api=FakeApi())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bare", "broken.mp3", "cache", "empty_run", "keep"]
    assert (keep / "notes.txt").read_text() == "mine" and not (bare.parent / "bare-hub").exists()


def test_the_card_holds_the_runs_table_1_row_and_names_its_parent(run_dir, tmp_path):
    run = tmp_path / "tiny"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("hub", "bc-hub", "hub_upload.json"))
    (run / "data").mkdir()
    (run / "data" / "manifest.json").write_text(json.dumps({"source": {"kind": "synthetic"}}))
    row = {"FID_k": 33.5, "FID_g": 21.25, "Div_k": 7.5, "Div_g": 6.0, "BAS": {"value": 0.25, "ci95": [0.2, 0.3]}, "PFC": 1.75, "learned_return": 0.5}
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"e3d2": row, "bc": {"FID_k": 99.0}}))  # written after the policy

    assert publish(run / "bc", "me/e3d2-bc", api=FakeApi()).uploaded
    assert json.loads((run / "bc" / "hub_upload.json").read_text()) == {"repo_id": "me/e3d2-bc"}  # where it went
    result = publish(run / "ppo", "me/e3d2-tiny", api=FakeApi())
    card = ModelCard.load(result.folder / "README.md")
    assert card.data.base_model == "me/e3d2-bc" and card.data.license == "mit" and card.data.datasets == ["e3d2_hf.data.synthetic"]
    measured = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert measured == {"FID_k": 33.5, "FID_g": 21.25, "Div_k": 7.5, "Div_g": 6.0, "BAS": 0.25, "PFC": 1.75}  # the run's Table 1 row, not PPO's summary
    assert "## Table 1 on held-out music" in card.text and "| 33.5 | 21.25 | 7.5 | 6 | 0.25 | 1.75 |" in card.text
    assert (run / "ppo" / "policy" / "hub_upload.json").is_file()

    (run / "eval" / "metrics.json").touch()
    os.utime(run / "eval" / "metrics.json", (0, 0))  # a table older than the policy is not its table: PPO's summary then
    card = ModelCard.load(publish(run / "ppo", "me/e3d2-tiny", base_model="me/other", api=FakeApi()).folder / "README.md")
    assert card.data.base_model == "me/other" and "Table 1 on held-out music" not in card.text
    assert {result.metric_name: result.metric_value for result in card.data.eval_results}["FID_k"] == SUMMARY["metrics_final"]["FID_k"]
