"""Publish a trained policy on the Hugging Face Hub: a ready-to-upload folder, then the upload.

    e3d2 publish runs/tiny/ppo --repo-id USER/e3d2-tiny [--private] [--music song.mp3]
    >>> from e3d2_hf.hub import publish
    >>> publish("runs/tiny/ppo", "USER/e3d2-tiny").folder

The folder (default RUN/ppo/hub, or `<policy folder>-hub` next to a plain policy folder such as RUN/bc)
holds what `AutoModelForCausalLM.from_pretrained("USER/NAME")` and `e3d2 dance --model USER/NAME`
need: the policy's `save_pretrained` files, its VQ-VAE in `vqvae/`, a model card README.md with the
recipe and the training summary, and `dance.gif`, a short dance it rendered. The folder is built
first and completely (atomically), so when the upload fails (offline, no token, no network) it is
kept and the message says how to upload it later.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e3d2_hf.utils import E3D2Error, atomic_directory

logger = logging.getLogger(__name__)

TAGS = ["e3d2", "dance-generation", "music-to-dance"]
GIF_SECONDS = 4.0
GIF_SIZE = (320, 240)
SYNTHETIC_GENRE, SYNTHETIC_BPM = "HO", 124.0  # a steady four-on-the-floor beat to show the dance off


@dataclass
class PublishResult:
    """The built folder and the upload's outcome; `message` says what happened and, if it failed, how to retry."""

    folder: Path
    repo_id: str
    uploaded: bool
    message: str


def find_policy(source: str | os.PathLike) -> tuple[Path, Path | None]:
    """The policy folder and the PPO summary.json (if any) of RUN/ppo, RUN/ppo/policy or a plain policy folder."""
    source = Path(source)
    policy = source / "policy" if (source / "policy" / "config.json").is_file() else source
    if not (policy / "config.json").is_file():
        raise E3D2Error(f"{source}: no policy here (expected RUN/ppo with policy/config.json, or a policy folder with config.json)")
    summary = policy.parent / "summary.json"  # the PPO trainer writes RUN/ppo/summary.json next to RUN/ppo/policy
    return policy, summary if policy.name == "policy" and summary.is_file() else None


def default_folder(policy: Path) -> Path:
    """RUN/ppo/hub for a PPO run's policy, `<folder>-hub` next to any other policy folder."""
    return policy.parent / "hub" if policy.name == "policy" else policy.with_name(f"{policy.name}-hub")


def _check_replaceable(out: Path, policy: Path) -> None:
    """The folder is replaced as a whole, so it must be new, empty, or an earlier build, and never hold the policy."""
    if out.resolve() == policy.resolve() or out.resolve() in policy.resolve().parents:
        raise E3D2Error(f"{out}: the Hub folder would replace the policy it is built from; choose another --out")
    earlier_build = (out / "dance.gif").is_file() and (out / "config.json").is_file()
    if out.exists() and not (out.is_dir() and (earlier_build or not any(out.iterdir()))):
        raise E3D2Error(f"{out}: exists and is not a folder built by `e3d2 publish`; choose another --out or remove it")


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise E3D2Error(f"{path}: cannot read JSON ({exc})") from exc


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(repo_id: str, policy: Any, summary: dict[str, Any], recipe: dict[str, Any], gif_note: str) -> str:
    """README.md: what the model is, a dance, how to use it, the recipe values and the training summary."""
    from huggingface_hub import ModelCard, ModelCardData

    from e3d2_hf.trainers import bc, ppo

    config = policy.config
    if summary or "kl_beta" in recipe:  # keys only the PPO trainer writes
        how = f" Fine-tuned from the behaviour-cloning policy with PPO on the {summary.get('reward', 'learned')} reward."
    else:
        how = " Trained by behaviour cloning." if "window" in recipe else ""
    lines = [
        f"# E3D2 dance policy `{repo_id}`",
        "",
        "A GPT policy over VQ-VAE pose codes that turns music into 3D dance (E3D2, \"Explore 3D Dance Generation via",
        "Reward Model from Automatically-Ranked Demonstrations\"). At each 8-frame step it reads the music (438-d",
        "librosa features at 7.5 fps) and the pose codes so far and picks the next upper- and lower-body codes; its",
        f"VQ-VAE (in `vqvae/`) turns them into SMPL 24-joint positions at 60 fps.{how}",
        "",
        gif_note,
        "",
        "## Use",
        "",
        "```python",
        "import e3d2_hf  # registers the E3D2 models with the transformers Auto classes",
        "from transformers import AutoModelForCausalLM",
        "",
        f'policy = AutoModelForCausalLM.from_pretrained("{repo_id}")  # its VQ-VAE comes along',
        f'dance = e3d2_hf.dance("{repo_id}", "song.mp3")  # joints (T, 24, 3) at 60 fps',
        'dance.save_bvh("song.bvh"); dance.render("song.mp4")',
        "```",
        "",
        f"or from the command line: `e3d2 dance --model {repo_id} --music song.mp3` (writes npz, BVH and an mp4 with the music).",
        "",
        "## Model",
        "",
        "| layers (base + head) | width | heads | context (steps) | codes per body half |",
        "|---|---|---|---|---|",
        (
            f"| {config.num_hidden_layers} ({config.num_base_layers} + {config.num_hidden_layers - config.num_base_layers}) "
            f"| {config.hidden_size} | {config.num_attention_heads} | {config.context_length} | {config.codebook_size} |"
        ),
        "",
    ]
    if summary:
        metrics_bc, metrics_final = summary.get("metrics_bc") or {}, summary.get("metrics_final") or {}
        lines += [
            "## Training summary",
            "",
            (
                f"{_cell(summary.get('steps'))} PPO steps at {_cell(summary.get('samples_per_second'))} episodes/s; per-step KL to the "
                f"behaviour-cloning policy at the end: {_cell(summary.get('kl_final'))}."
            ),
            "",
            "| policy | learned return | " + " | ".join(ppo.METRIC_ORDER) + " |",
            "|---|---|" + "---|" * len(ppo.METRIC_ORDER),
            f"| behaviour cloning | {_cell(summary.get('learned_return_bc'))} | " + " | ".join(_cell(metrics_bc.get(key)) for key in ppo.METRIC_ORDER) + " |",
            f"| this model | {_cell(summary.get('learned_return_final'))} | " + " | ".join(_cell(metrics_final.get(key)) for key in ppo.METRIC_ORDER) + " |",
            "",
        ]
    keys = [key for key in dict.fromkeys(ppo.CARD_KEYS + bc.CARD_KEYS) if key in recipe]
    if keys:
        lines += ["## Recipe", "", "| key | value |", "|---|---|", *(f"| {key} | {_cell(recipe[key])} |" for key in keys), ""]
    data = ModelCardData(library_name="transformers", tags=TAGS)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines)))


def render_card_gif(policy: Any, path: Path, music: str | os.PathLike | None) -> str:
    """`dance.gif`: a few seconds danced to `music`, or to the synthetic generator's music; returns its caption."""
    from e3d2_hf.data.synthetic import GENRES, SAMPLE_RATE, compose_music
    from e3d2_hf.inference import dance

    with tempfile.TemporaryDirectory() as scratch:
        if music is None:
            import soundfile

            genre = next(genre for genre in GENRES if genre.code == SYNTHETIC_GENRE)
            audio, _ = compose_music(genre, SYNTHETIC_BPM, GIF_SECONDS, np.random.default_rng(0))
            music = Path(scratch) / "synthetic.wav"
            soundfile.write(music, audio, SAMPLE_RATE)
            about = f"{SYNTHETIC_BPM:g} bpm music from `e3d2_hf.data.synthetic`"
        else:
            about = f"the start of `{Path(music).name}`"
        result = dance(policy, music, seconds=GIF_SECONDS, seed=0)
        result.render(path, size=GIF_SIZE)
    return f"![A dance by this model](dance.gif)\n\n*{result.joints.shape[0] / result.fps:g} s danced to {about}; sampled, seed 0.*"


def build_folder(source: str | os.PathLike, repo_id: str, out: str | os.PathLike | None = None, music: str | os.PathLike | None = None) -> Path:
    """The Hub-ready folder of a run (see the module docstring), written atomically; returns its path."""
    from e3d2_hf.inference import load_policy

    policy_dir, summary_path = find_policy(source)
    if music is not None and not Path(music).is_file():
        raise E3D2Error(f"{music}: no such music file")
    out = Path(out) if out is not None else default_folder(policy_dir)
    _check_replaceable(out, policy_dir)
    summary, recipe = _read_json(summary_path), _read_json(policy_dir / "training_config.json")
    policy = load_policy(policy_dir)  # raises for a missing VQ-VAE
    try:
        with atomic_directory(out) as tmp:
            policy.save_pretrained(tmp)
            gif_note = render_card_gif(policy, tmp / "dance.gif", music)
            (tmp / "README.md").write_text(model_card(repo_id, policy, summary, recipe, gif_note))
    except OSError as exc:
        raise E3D2Error(f"{out}: cannot write the Hub folder ({exc.strerror or exc})") from exc
    return out


def _upload(folder: Path, repo_id: str, private: bool, api: Any = None) -> str | None:
    """Create the repository (if needed) and upload `folder`; None on success, else why not and how to retry."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalTokenNotFoundError, OfflineModeIsEnabled

    try:
        api = api if api is not None else HfApi()
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), folder_path=str(folder), commit_message="Upload E3D2 dance policy")
        return None
    except Exception as exc:  # offline, no token, no network, refused: the folder stays for a later upload
        if isinstance(exc, OfflineModeIsEnabled):
            reason = "HF_HUB_OFFLINE is set, and uploading needs a network connection"
        elif isinstance(exc, LocalTokenNotFoundError) or getattr(getattr(exc, "response", None), "status_code", None) in (401, 403):
            reason = f"the Hub refused the upload ({type(exc).__name__}: {exc}); log in with `hf auth login`"
        else:
            reason = f"uploading needs a network connection and a Hugging Face token ({type(exc).__name__}: {exc})"
    private_flag = " --private" if private else ""
    return f"{folder} was not uploaded to {repo_id}: {reason}. Upload it later with `hf upload {repo_id} {folder} .{private_flag}`, or rerun `e3d2 publish`."


def upload_folder_or_explain(folder: str | os.PathLike, repo_id: str, private: bool = False, api: Any = None) -> bool:
    """Upload a finished folder (e.g. the PPO trainer's policy for `push_to_hub`); never raises, so a
    failed upload cannot lose a training run: it logs why and how to upload later, and returns False."""
    try:
        problem = _upload(Path(folder), repo_id, private, api)
    except Exception as exc:  # the upload helper itself failing must not end a training run either
        problem = f"{folder} was not uploaded to {repo_id} ({type(exc).__name__}: {exc})"
    if problem:
        logger.error(problem)
        return False
    logger.info("uploaded %s to https://huggingface.co/%s", folder, repo_id)
    return True


def publish(
    source: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    out: str | os.PathLike | None = None,
    music: str | os.PathLike | None = None,
    api: Any = None,
) -> PublishResult:
    """Build the Hub folder of `source` (RUN/ppo or a policy folder) and upload it as `repo_id`.

    `api` is anything with `HfApi`'s `create_repo` and `upload_folder` (default `HfApi()`). Bad
    input raises `E3D2Error`; a failed upload does not: the result says so and keeps the folder.
    """
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except Exception as exc:
        raise E3D2Error(f"--repo-id {repo_id!r}: {exc}") from exc
    folder = build_folder(source, repo_id, out, music)
    problem = _upload(folder, repo_id, private, api)
    message = problem or f"uploaded {folder} to https://huggingface.co/{repo_id}"
    return PublishResult(folder=folder, repo_id=repo_id, uploaded=problem is None, message=message)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="RUN/ppo (its final policy and summary.json) or a policy folder such as RUN/bc")
    parser.add_argument("--repo-id", required=True, help="Hub repository USER/NAME (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--out", default=None, help="where to build the folder (default: RUN/ppo/hub, or <policy folder>-hub)")
    parser.add_argument("--music", default=None, help="music for the model card's dance.gif (default: synthetic music)")


def run(args: argparse.Namespace) -> int:
    result = publish(args.source, args.repo_id, private=args.private, out=args.out, music=args.music)
    print(f"Hub folder: {result.folder}")
    if not result.uploaded:
        print(f"e3d2 publish: {result.message}", file=sys.stderr)
        return 1
    print(result.message)
    return 0
