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
