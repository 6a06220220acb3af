"""The package imports lazily: the command line starts without torch, and the Auto classes still know our models."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_cli_imports_no_torch():
    loaded = run_python("import sys, e3d2_hf.cli; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    assert loaded == "[]"


@pytest.mark.parametrize("order", ["e3d2_hf first", "transformers first"])
def test_auto_classes_know_our_models(order):
    imports = "import e3d2_hf; import transformers" if order == "e3d2_hf first" else "import transformers; import e3d2_hf"
    code = (
        f"{imports}\n"
        "from transformers import AutoConfig, AutoModel, AutoModelForCausalLM\n"
        "from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING\n"
        "policy, reward, vqvae = (AutoConfig.for_model(t) for t in ('e3d2_policy', 'e3d2_reward', 'e3d2_vqvae'))\n"
        "print(MODEL_FOR_CAUSAL_LM_MAPPING[type(policy)].__name__, MODEL_MAPPING[type(reward)].__name__, MODEL_MAPPING[type(vqvae)].__name__)"
    )
    assert run_python(code) == "E3D2PolicyModel E3D2RewardModel E3D2VQVAE"


def test_a_configuration_module_imported_alone_registers_every_model():
    code = (
        "from e3d2_hf.models.configuration_reward import RewardModelConfig\n"
        "from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING\n"
        "from transformers import AutoConfig\n"
        "print(MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.for_model('e3d2_policy'))].__name__)"
    )
    assert run_python(code) == "E3D2PolicyModel"


def test_public_api_loads_on_first_use():
    import e3d2_hf

    assert callable(e3d2_hf.dance) and callable(e3d2_hf.load_policy) and callable(e3d2_hf.evaluate_dances)
    assert {"dance", "publish", "Dance"} <= set(dir(e3d2_hf))
    with pytest.raises(AttributeError):
        e3d2_hf.no_such_thing  # noqa: B018


def test_version_flag():
    result = subprocess.run([sys.executable, "-m", "e3d2_hf.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("e3d2-hf ")


# The floors of the house, ground floor first (README "Code layout"): a module imports only from its own floor or below.
FLOORS = {
    "utils": 0, "recipe": 0, "versions": 0, "motion": 1, "metrics": 2, "render": 2, "data": 2, "models": 3, "rl": 4, "trainers": 5,
    "evaluation": 6, "inference": 7, "hub": 7, "dance_files": 7, "cli": 8, "pipeline": 8, "launch": 8,
}  # fmt: skip
SIBLINGS_APART = {("metrics", "data"), ("render", "data"), ("data", "metrics"), ("data", "render")}  # one floor, no stairs between


def _imported_e3d2_modules(path):
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("e3d2_hf."):
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names if alias.name.startswith("e3d2_hf."))


def test_imports_flow_one_way():
    from pathlib import Path

    import e3d2_hf

    package = Path(e3d2_hf.__file__).parent
    upward = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts == ("__init__",):
            continue
        floor = parts[0]
        for module, line in _imported_e3d2_modules(path):
            other = module.split(".")[1]
            if FLOORS[other] > FLOORS[floor] or (floor, other) in SIBLINGS_APART:
                upward.append(f"{path.relative_to(package)}:{line} imports {module}")
    assert upward == []
