"""e3d2-hf: E3D2 (dance generation with reinforcement learning from a learned reward) on the Hugging Face stack.

`import e3d2_hf` registers our models with the `transformers` Auto classes, so
`AutoModelForCausalLM.from_pretrained(<policy>)` and `AutoModel.from_pretrained(<reward model or
VQ-VAE>)` work without `trust_remote_code`. The package imports lazily, as transformers does: the
public API (`dance`, `load_policy`, `publish`, `evaluate_dances`, ...) loads on first use, and the
registration runs as soon as `transformers` is imported (at once if it already is), so the command
line (`e3d2 --help`) starts without torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY_API = {
    "Dance": "e3d2_hf.inference",
    "dance": "e3d2_hf.inference",
    "generate_dances": "e3d2_hf.inference",
    "load_policy": "e3d2_hf.inference",
    "music_to_joints": "e3d2_hf.inference",
    "PublishResult": "e3d2_hf.hub",
    "publish": "e3d2_hf.hub",
    "evaluate_dances": "e3d2_hf.metrics",
}
# each registers its configuration and model with the Auto classes when imported
_MODELING_MODULES = ("e3d2_hf.models.modeling_vqvae", "e3d2_hf.models.modeling_policy", "e3d2_hf.models.modeling_reward")


def register_auto_classes() -> None:
    """Import our modeling modules (each registers itself); one being imported right now registers when it finishes."""
    for name in _MODELING_MODULES:
        if name not in sys.modules:
            importlib.import_module(name)


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs `register_auto_classes` right after `transformers` is first imported, whoever imports it."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)  # once; the real finders now locate transformers
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        register_auto_classes()


if "transformers" in sys.modules:
    register_auto_classes()
elif not any(isinstance(finder, _RegisterAfterTransformers) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformers())


def __getattr__(name: str) -> Any:
    if name in _LAZY_API:
        return getattr(importlib.import_module(_LAZY_API[name]), name)
    raise AttributeError(f"module 'e3d2_hf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_API])


__all__ = ["__version__", "register_auto_classes", *_LAZY_API]
