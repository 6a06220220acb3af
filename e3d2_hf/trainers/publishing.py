"""The one way a finished folder goes to the Hugging Face Hub, for `e3d2 publish` and a trainer's `push_to_hub`.

It sits with the trainers (not in `e3d2_hf.hub`, which is above them next to the CLI) so that a
trainer can call it. An upload happens after the training it would publish has been saved, so it
never raises: a failure (offline, no token, no network, refused) comes back as a sentence that says
why and how to upload the kept folder later.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def upload_folder(
    folder: str | os.PathLike, repo_id: str, *, private: bool = False, commit_message: str = "Upload E3D2 model", api: Any = None
) -> str | None:
    """Create the repository (if needed) and upload `folder`; None when it is uploaded, else why not and how to retry.

    `api` is anything with `HfApi`'s `create_repo` and `upload_folder` (default `HfApi()`).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalTokenNotFoundError, OfflineModeIsEnabled

    folder = Path(folder)
    try:
        api = api if api is not None else HfApi()
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), folder_path=str(folder), commit_message=commit_message)
        return None
    except Exception as exc:  # the folder stays on disk for a later upload
        if isinstance(exc, OfflineModeIsEnabled):
            reason = "HF_HUB_OFFLINE is set, and uploading needs a network connection"
        elif isinstance(exc, LocalTokenNotFoundError) or getattr(getattr(exc, "response", None), "status_code", None) in (401, 403):
            reason = f"the Hub refused the upload ({type(exc).__name__}: {exc}); log in with `hf auth login`"
        else:
            reason = f"uploading needs a network connection and a Hugging Face token ({type(exc).__name__}: {exc})"
    private_flag = " --private" if private else ""
    return f"{folder} was not uploaded to {repo_id}: {reason}. Upload it later with `hf upload {repo_id} {folder} .{private_flag}`."


def upload_folder_or_explain(
    folder: str | os.PathLike, repo_id: str, *, private: bool = False, commit_message: str = "Upload E3D2 model", api: Any = None
) -> bool:
    """`upload_folder` for a trainer: logs what happened (and, on failure, how to upload later); returns whether it uploaded."""
    problem = upload_folder(folder, repo_id, private=private, commit_message=commit_message, api=api)
    if problem:
        logger.error(problem)
        return False
    logger.info("uploaded %s to https://huggingface.co/%s", folder, repo_id)
    return True


__all__ = ["upload_folder", "upload_folder_or_explain"]
