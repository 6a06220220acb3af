"""Publish a trained policy on the Hugging Face Hub: a ready-to-upload folder, then the upload.

    e3d2 publish runs/tiny/ppo --repo-id USER/e3d2-tiny [--private] [--music song.mp3]
    >>> from e3d2_hf.hub import publish
    >>> publish("runs/tiny/ppo", "USER/e3d2-tiny").folder

The folder (default RUN/ppo/hub, or `<policy folder>-hub` next to a plain policy folder such as RUN/bc)
holds what `AutoModelForCausalLM.from_pretrained("USER/NAME")` and `e3d2 dance --model USER/NAME`
need: the policy's `save_pretrained` files, its VQ-VAE in `vqvae/`, a model card README.md with the
recipe and the training summary (`e3d2_hf.trainers.model_card`, the builder every stage's card comes
from), and `dance.gif`, a short dance it rendered. The card's model-index holds the run's Table 1
row for this policy (RUN/eval/metrics.json, when it is newer than the policy), else PPO's held-out
figures (summary.json); its `base_model` is `--base-model`, or for a PPO run the BC policy's Hub
repository when RUN/bc was uploaded (`hub_upload.json`). The folder is built first and completely
(atomically), then uploaded (`e3d2_hf.trainers.publishing`, which the stages' `push_to_hub` uses
too); when the upload fails (offline, no token, no network) the folder is kept and the message says
how to upload it later. An uploaded policy folder records where it went (`hub_upload.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import ModelCard

from e3d2_hf.recipe import RunLayout
from e3d2_hf.trainers.model_card import CardTable, build_model_card, eval_results, format_value, metric_value, recipe_values, training_data
from e3d2_hf.trainers.publishing import record_upload, upload_folder, uploaded_as
from e3d2_hf.utils import E3D2Error, atomic_directory, existing_file

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


def run_of(policy: Path) -> tuple[RunLayout, str | None]:
    """The run folder a policy belongs to, and its row of the run's Table 1 ("e3d2" for RUN/ppo/policy, "bc" for RUN/bc)."""
    if policy.name == "policy" and policy.parent.name == "ppo":
        return RunLayout(policy.parent.parent), "e3d2"
    return RunLayout(policy.parent), "bc" if policy.name == "bc" else None


def table_1_row(policy: Path) -> tuple[dict[str, Any], Path | None]:
    """This policy's row of RUN/eval/metrics.json, when the table was made after the policy (else empty), and the file."""
    from e3d2_hf.evaluation.table_1 import METRICS_FILE

    run, row = run_of(policy)
    metrics_file = run.eval / METRICS_FILE
    weights = policy / "model.safetensors"
    if row is None or not metrics_file.is_file() or (weights.is_file() and metrics_file.stat().st_mtime < weights.stat().st_mtime):
        return {}, None
    found = _read_json(metrics_file).get(row)
    return (found, metrics_file) if isinstance(found, dict) else ({}, None)


def model_card(
    repo_id: str, policy: Any, summary: dict[str, Any], recipe: dict[str, Any], gif_note: str, *,
    policy_dir: Path | None = None, base_model: str | None = None,
) -> ModelCard:  # fmt: skip
    """README.md: what the model is, a dance, how to use it, what it is made of, the training summary, Table 1 and the recipe."""
    from e3d2_hf.metrics.protocol import METRIC_KEYS
    from e3d2_hf.trainers import bc, ppo_model_card

    config = policy.config
    if summary or "kl_beta" in recipe:  # keys only the PPO trainer writes
        how = f" Fine-tuned from the behaviour-cloning policy with PPO on the {summary.get('reward', 'learned')} reward."
        tags = ["ppo", "reinforcement-learning"]
    elif "window" in recipe:
        how, tags = " Trained by behaviour cloning.", ["behaviour-cloning"]
    else:
        how, tags = "", []
    tables = [
        CardTable(
            "Model",
            columns=["layers (base + head)", "width", "heads", "context (steps)", "codes per body half"],
            rows=[
                [
                    f"{config.num_hidden_layers} ({config.num_base_layers} + {config.num_hidden_layers - config.num_base_layers})",
                    config.hidden_size,
                    config.num_attention_heads,
                    config.context_length,
                    config.codebook_size,
                ]
            ],
        )
    ]
    if summary:
        metrics_bc, metrics_final = summary.get("metrics_bc") or {}, summary.get("metrics_final") or {}
        tables.append(
            CardTable(
                "Training summary",
                note=(
                    f"{format_value(summary.get('steps'))} PPO steps at {format_value(summary.get('samples_per_second'))} episodes/s; "
                    f"per-step KL to the behaviour-cloning policy at the end: {format_value(summary.get('kl_final'))}."
                ),
                columns=["policy", "learned return", *METRIC_KEYS],
                rows=[
                    ["behaviour cloning", summary.get("learned_return_bc"), *(metrics_bc.get(key) for key in METRIC_KEYS)],
                    ["this model", summary.get("learned_return_final"), *(metrics_final.get(key) for key in METRIC_KEYS)],
                ],
            )
        )
    row, metrics_file = table_1_row(policy_dir) if policy_dir is not None else ({}, None)
    if metrics_file is not None:
        tables.append(
            CardTable(
                "Table 1 on held-out music",
                note=f"The run's evaluation (`{metrics_file.parent.name}/{metrics_file.name}`); the model-index above holds these figures.",
                columns=list(METRIC_KEYS),
                rows=[[metric_value(row.get(key)) for key in METRIC_KEYS]],
            )
        )
    measured = row if metrics_file is not None else (summary.get("metrics_final") or {})
    data = training_data(run_of(policy_dir)[0].root if policy_dir is not None else None)
    return build_model_card(
        title=f"E3D2 dance policy `{repo_id}`",
        description=(
            'A GPT policy over VQ-VAE pose codes that turns music into 3D dance (E3D2, "Explore 3D Dance Generation via '
            'Reward Model from Automatically-Ranked Demonstrations"). At each 8-frame step it reads the music (438-d '
            "librosa features at 7.5 fps) and the pose codes so far and picks the next upper- and lower-body codes; its "
            f"VQ-VAE (in `vqvae/`, loaded with it) turns them into SMPL 24-joint positions at 60 fps.{how}"
        ),
        tags=tags,
        media=gif_note,
        auto_class="AutoModelForCausalLM",
        model_id=repo_id,
        loaded_as="policy",
        usage=[
            f'dance = e3d2_hf.dance("{repo_id}", "song.mp3")  # joints (T, 24, 3) at 60 fps',
            'dance.save_bvh("song.bvh"); dance.render("song.mp4")',
        ],
        usage_note=f"or from the command line: `e3d2 dance --model {repo_id} --music song.mp3` (writes npz, BVH and an mp4 with the music).",
        tables=tables,
        recipe=recipe_values(recipe, dict.fromkeys(ppo_model_card.CARD_KEYS + bc.CARD_KEYS)),
        data=data,
        results=eval_results({key: measured.get(key) for key in METRIC_KEYS}, data),
        base_model=base_model,
    )


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


def build_folder(
    source: str | os.PathLike, repo_id: str, out: str | os.PathLike | None = None, music: str | os.PathLike | None = None,
    base_model: str | None = None,
) -> Path:  # fmt: skip
    """The Hub-ready folder of a run (see the module docstring), written atomically; returns its path."""
    from e3d2_hf.inference import load_policy

    policy_dir, summary_path = find_policy(source)
    if music is not None:
        existing_file(music, "music file")
    out = Path(out) if out is not None else default_folder(policy_dir)
    _check_replaceable(out, policy_dir)
    summary, recipe = _read_json(summary_path), _read_json(policy_dir / "training_config.json")
    policy = load_policy(policy_dir)  # raises for a missing VQ-VAE
    run, row = run_of(policy_dir)
    base_model = base_model or (uploaded_as(run.bc) if row == "e3d2" else None)
    try:
        with atomic_directory(out) as tmp:
            policy.save_pretrained(tmp)
            gif_note = render_card_gif(policy, tmp / "dance.gif", music)
            model_card(repo_id, policy, summary, recipe, gif_note, policy_dir=policy_dir, base_model=base_model).save(tmp / "README.md")
    except OSError as exc:
        raise E3D2Error(f"{out}: cannot write the Hub folder ({exc.strerror or exc})") from exc
    return out


def publish(
    source: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    out: str | os.PathLike | None = None,
    music: str | os.PathLike | None = None,
    base_model: str | None = None,
    api: Any = None,
) -> PublishResult:
    """Build the Hub folder of `source` (RUN/ppo or a policy folder) and upload it as `repo_id`.

    `base_model` is the Hub id of the policy it was fine-tuned from (default: found for a PPO run,
    see the module docstring). `api` is anything with `HfApi`'s `create_repo` and `upload_folder`
    (default `HfApi()`). Bad input raises `E3D2Error`; a failed upload does not: the result says so
    and keeps the folder.
    """
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except Exception as exc:
        raise E3D2Error(f"--repo-id {repo_id!r}: {exc}") from exc
    folder = build_folder(source, repo_id, out, music, base_model)
    problem = upload_folder(folder, repo_id, private=private, commit_message="Upload E3D2 dance policy", api=api)
    if problem is None:
        record_upload(find_policy(source)[0], repo_id)
    message = f"{problem} Or rerun `e3d2 publish`." if problem else f"uploaded {folder} to https://huggingface.co/{repo_id}"
    return PublishResult(folder=folder, repo_id=repo_id, uploaded=problem is None, message=message)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="RUN/ppo (its final policy and summary.json) or a policy folder such as RUN/bc")
    parser.add_argument("--repo-id", required=True, help="Hub repository USER/NAME (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--out", default=None, help="where to build the folder (default: RUN/ppo/hub, or <policy folder>-hub)")
    parser.add_argument("--music", default=None, help="music for the model card's dance.gif (default: synthetic music)")
    parser.add_argument("--base-model", default=None, help="Hub id of the policy this one was fine-tuned from (default: RUN/bc's upload, for a PPO run)")


def run(args: argparse.Namespace) -> int:
    result = publish(args.source, args.repo_id, private=args.private, out=args.out, music=args.music, base_model=args.base_model)
    print(f"Hub folder: {result.folder}")
    if not result.uploaded:
        print(f"e3d2 publish: {result.message}", file=sys.stderr)
        return 1
    print(result.message)
    return 0
