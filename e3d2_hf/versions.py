"""The software a result came from, recorded beside it (RUN/eval/metrics.json, the data manifest).

Published dance metrics cannot be reproduced when nobody wrote down which versions made them;
`environment_versions()` reads the installed versions (without importing the packages) and the
git commit of this checkout, when it is one.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "librosa", "numpy", "scipy")


def _git(*args: str) -> str | None:
    """Output of `git args` in the package's folder; None when git or the repository is not there."""
    if shutil.which("git") is None:
        return None
    try:
        result = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def environment_versions() -> dict[str, str | bool | None]:
    """python, each of PACKAGES (None if not installed), e3d2_hf, and the git commit (+ whether the tree had changes)."""
    from e3d2_hf import __version__

    versions: dict[str, str | bool | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["e3d2_hf"] = __version__
    commit = _git("rev-parse", "HEAD")
    versions["git_commit"] = commit
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    versions["git_dirty"] = None if status is None else bool(status)
    return versions


__all__ = ["PACKAGES", "environment_versions"]
