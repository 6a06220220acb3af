"""Reading saved models and weights: any unreadable or wrong file becomes one `E3D2Error` line naming it.

`from_pretrained` fails in many ways (a `SafetensorError` for a truncated file, an `OSError` for a
missing one, a 3,000-character `ValueError` for a folder of another kind of model) and silently
re-initialises tensors a weights file lacks. `load_pretrained` checks what it can name first
(config.json, the kind of model, every weights file), refuses missing or misshapen tensors and
NaN or infinite ones, and turns whatever else goes wrong into one line naming the folder. Every loader of a model folder
(inference, the stages, the VQ-VAE a policy carries) and of a checkpoint's weights goes through it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from e3d2_hf.utils import E3D2Error

ModelT = TypeVar("ModelT")

# What each of our `model_type`s is, for messages ("this is a reward model, not an E3D2 policy").
MODEL_KINDS = {"e3d2_policy": "an E3D2 policy", "e3d2_vqvae": "a VQ-VAE", "e3d2_reward": "a reward model"}


def short_reason(exc: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message`, cut to `limit` characters: what a one-line error can carry."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_safetensors(path: str | Path) -> None:
    """`E3D2Error` naming `path` unless it is a whole safetensors file (its header covers the file exactly)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # SafetensorError (truncated, not safetensors), OSError
        raise E3D2Error(f"{path}: unreadable weights file ({short_reason(exc)})") from exc


def read_safetensors(path: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file onto `device`; `E3D2Error` naming the file if it is unreadable."""
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:
        raise E3D2Error(f"{path}: unreadable weights file ({short_reason(exc)})") from exc


def model_type_of(folder: Path) -> str | None:
    """The `model_type` of a `save_pretrained` folder's config.json; `E3D2Error` naming the file if it is unreadable."""
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise E3D2Error(f"{config_file}: unreadable model config ({short_reason(exc)})") from exc
    if not isinstance(config, dict):
        raise E3D2Error(f"{config_file}: a model config is a JSON object, got {type(config).__name__}")
    return config.get("model_type")


def _without_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


def load_pretrained(model_class: type[ModelT], folder: str | Path, **kwargs: Any) -> ModelT:
    """`model_class.from_pretrained(folder, **kwargs)` of one of our models, with every failure one line naming the file."""
    folder = Path(folder)
    expected = model_class.config_class.model_type
    what = MODEL_KINDS.get(expected, expected)
    if not (folder / "config.json").is_file():
        raise E3D2Error(f"{folder}: not a saved model folder (no config.json); expected {what}")
    found = model_type_of(folder)
    if found != expected:
        raise E3D2Error(f"{folder}: this is {MODEL_KINDS.get(found, f'a {found!r} model')}, not {what}")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise E3D2Error(f"{folder}: no weights (model.safetensors is missing)")
    for path in weights:
        check_safetensors(path)
    # transformers logs a table of missing / misshapen tensors and re-initialises them; they are refused below instead
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_logger.addFilter(_without_load_report)
    try:
        model, report = model_class.from_pretrained(folder, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    except E3D2Error:
        raise
    except Exception as exc:
        raise E3D2Error(f"{folder}: cannot load {what} ({short_reason(exc)})") from exc
    finally:
        report_logger.removeFilter(_without_load_report)
    wrong = sorted(report["missing_keys"]) + sorted(str(key[0] if isinstance(key, tuple) else key) for key in report["mismatched_keys"])
    if wrong:
        raise E3D2Error(f"{weights[0]}: {len(wrong)} tensor(s) missing or of the wrong shape ({', '.join(wrong[:3])}); the file does not fit its config.json")
    check_finite_weights(model.state_dict(), weights[0])
    return model


def check_finite_weights(tensors: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """`E3D2Error` naming `source` when a floating-point tensor holds NaN or inf (a model trained into NaN)."""
    bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise E3D2Error(f"{source}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:3])})")


__all__ = ["MODEL_KINDS", "check_finite_weights", "check_safetensors", "load_pretrained", "model_type_of", "read_safetensors", "short_reason"]
