"""The E3D2 networks as `transformers` models: the VQ-VAE choreographic memory, the GPT policy and the reward model.

`transformers` is imported here, before any of our modeling modules, so that the Auto-class
registration `e3d2_hf` runs after that import (see `e3d2_hf.register_auto_classes`) never meets a
half-imported module of ours. The modeling modules' own imports outside this package (`e3d2_hf.utils`,
`e3d2_hf.motion`) must not import transformers.
"""

import transformers  # noqa: F401  (first, see above)
