"""e3d2-hf: E3D2 (dance generation with reinforcement learning from a learned reward) on the Hugging Face stack.

Importing the package registers our models with the `transformers` Auto classes, so
`AutoModelForCausalLM.from_pretrained(<policy folder>)` and `AutoModel.from_pretrained(<reward or
VQ-VAE folder>)` work without `trust_remote_code`.
"""

__version__ = "0.1.0"

from e3d2_hf.models import modeling_policy, modeling_reward, modeling_vqvae  # noqa: E402,F401  (Auto* registration)
from e3d2_hf.inference import Dance, dance, generate_dances  # noqa: E402,F401
from e3d2_hf.hub import PublishResult, publish  # noqa: E402,F401
