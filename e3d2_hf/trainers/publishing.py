"""The one way a finished folder goes to the Hugging Face Hub, for `e3d2 publish` and a stage's `push_to_hub`.

It sits with the trainers (not in `e3d2_hf.hub`, which is above them next to the CLI) so that a
trainer can call it. A stage with `push_to_hub` checks first, before any training, that an upload
can work at all (`check_can_upload`: a valid repository id, not offline, a token), and refuses in
one line if not. The upload itself happens after the training it publishes has been saved, so it
never raises: a failure (no network, refused) comes back as a sentence that says why and how to
upload the kept folder later. A folder that was uploaded records where (`hub_upload.json`), so a
model fine-tuned from it can name it as its `base_model`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from e3d2_hf.utils import E3D2Error, atomic_file

UPLOAD_RECORD = "hub_upload.json"

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
    """`upload_folder` for a trainer: logs what happened (and, on failure, how to upload later); returns whether it uploaded.

    An uploaded folder gets `hub_upload.json` (`record_upload`).
    """
    problem = upload_folder(folder, repo_id, private=private, commit_message=commit_message, api=api)
    if problem:
        logger.error(problem)
        return False
    record_upload(folder, repo_id)
    logger.info("uploaded %s to https://huggingface.co/%s", folder, repo_id)
    return True


def check_can_upload(repo_id: str, stage: str) -> None:
    """Refuse a `push_to_hub` that cannot work, in one line (`E3D2Error`), before the stage trains anything."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except Exception as exc:
        raise E3D2Error(f"{stage}: push_to_hub: {repo_id!r} is not a Hub repository id ({exc}); set hub_model_id to USER/NAME") from exc
    if constants.HF_HUB_OFFLINE:
        raise E3D2Error(
            f"{stage}: push_to_hub needs the network and HF_HUB_OFFLINE is set; unset it, or set push_to_hub false and "
            "upload the finished folder later (`e3d2 publish`, `hf upload`)"
        )
    if get_token() is None:
        raise E3D2Error(f"{stage}: push_to_hub needs a Hugging Face token; log in with `hf auth login` (or set HF_TOKEN) first")


def record_upload(folder: str | os.PathLike, repo_id: str) -> None:
    """Note in `folder` the Hub repository it was uploaded to (`uploaded_as` reads it)."""
    with atomic_file(Path(folder) / UPLOAD_RECORD, "w") as handle:
        handle.write(json.dumps({"repo_id": repo_id}) + "\n")


def uploaded_as(folder: str | os.PathLike | None) -> str | None:
    """The Hub repository `folder` was uploaded to, if it records one."""
    try:
        return str(json.loads((Path(folder) / UPLOAD_RECORD).read_text())["repo_id"]) if folder else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["UPLOAD_RECORD", "check_can_upload", "record_upload", "upload_folder", "upload_folder_or_explain", "uploaded_as"]
