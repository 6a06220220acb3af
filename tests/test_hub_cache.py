"""The Hub round trip: a policy in a real `huggingface_hub` cache loads with its VQ-VAE, offline.

The cache is laid out as `huggingface_hub` lays it out (blobs named by their hash, snapshots of
symlinks, refs naming commits), and a fresh Python process reads it with HF_HUB_CACHE pointing at
it and HF_HUB_OFFLINE=1: `AutoModelForCausalLM.from_pretrained(ID)` then `load_vqvae()` (also with
`subfolder=` and a `revision`), `e3d2_hf.dance(ID, ...)` and `e3d2 dance --model ID`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from conftest import tiny_dancing_policy, tiny_vqvae

ROOT = Path(__file__).resolve().parents[1]
MAIN_COMMIT, V2_COMMIT = "a" * 40, "b" * 40


def add_to_hub_cache(cache: Path, repo_id: str, commit: str, files: dict[str, Path], refs: tuple[str, ...]) -> None:
    """Put `files` (path in the repository -> local file) into the cache as commit `commit`, named by `refs`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    return {prefix + path.relative_to(folder).as_posix(): path for path in folder.rglob("*") if path.is_file()}


def vqvae_checksum(vqvae) -> float:
    return float(sum(tensor.double().abs().sum() for tensor in vqvae.state_dict().values()))


CHECKS = """
import json, sys
import e3d2_hf
from e3d2_hf.cli import main
from transformers import AutoModelForCausalLM

def checksum(vqvae):
    return float(sum(tensor.double().abs().sum() for tensor in vqvae.state_dict().values()))

song, out = sys.argv[1], sys.argv[2]
result = {}
policy = AutoModelForCausalLM.from_pretrained("me/e3d2-tiny")
result["main"] = [type(policy).__name__, checksum(policy.load_vqvae())]
policy = AutoModelForCausalLM.from_pretrained("me/e3d2-tiny", subfolder="policies/ppo", revision="v2")
result["v2"] = checksum(policy.load_vqvae())
policy = AutoModelForCausalLM.from_pretrained("me/e3d2-tiny", subfolder="policies/ppo", revision="%(v2)s")
result["v2_by_commit"] = checksum(policy.load_vqvae())
result["dance"] = list(e3d2_hf.dance("me/e3d2-tiny", song, seconds=1.0).joints.shape)
result["cli"] = main(["dance", "--model", "me/e3d2-tiny", "--music", song, "--out", out, "--format", "none"])
result["missing"] = main(["dance", "--model", "me/not-in-the-cache", "--music", song, "--out", out])
print(json.dumps(result))
""" % {"v2": V2_COMMIT}


def test_a_policy_from_the_hub_cache_brings_its_vqvae_offline(tmp_path):
    main_policy = tiny_dancing_policy()
    main_policy.save_pretrained(tmp_path / "main")
    v2_policy = tiny_dancing_policy()
    v2_policy.attach_vqvae(tiny_vqvae(seed=3, codebook_size=32))  # another VQ-VAE: the revision must pick this one
    v2_policy.save_pretrained(tmp_path / "v2")
    cache = tmp_path / "hub"
    add_to_hub_cache(cache, "me/e3d2-tiny", MAIN_COMMIT, folder_files(tmp_path / "main"), refs=("main",))
    add_to_hub_cache(cache, "me/e3d2-tiny", V2_COMMIT, folder_files(tmp_path / "v2", "policies/ppo/"), refs=("v2",))
    song = tmp_path / "song.wav"
    t = np.arange(2 * 22050) / 22050
    soundfile.write(song, (0.5 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32), 22050)

    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf_home"),
        "E3D2_CACHE": str(tmp_path / "e3d2_cache"), "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    done = subprocess.run([sys.executable, "-c", CHECKS, str(song), str(tmp_path / "dances")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    main_sum, v2_sum = vqvae_checksum(main_policy.vqvae), vqvae_checksum(v2_policy.vqvae)
    assert main_sum != v2_sum
    assert result["main"][0] == "E3D2PolicyModel" and np.isclose(result["main"][1], main_sum, rtol=1e-6)
    assert np.isclose(result["v2"], v2_sum, rtol=1e-6) and np.isclose(result["v2_by_commit"], v2_sum, rtol=1e-6)
    assert result["dance"] == [60, 24, 3] and result["cli"] == 0
    assert {"song.npz", "song.bvh", "song_smpl.npz"} <= {path.name for path in (tmp_path / "dances").iterdir()}
    assert result["missing"] == 2
    message = [line for line in done.stderr.splitlines() if "not-in-the-cache" in line]
    assert len(message) == 1 and "cannot download from the Hub" in message[0] and "offline, pass a local folder" in message[0]
