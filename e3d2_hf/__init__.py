"""e3d2-hf: E3D2 (dance generation with reinforcement learning from a learned reward) on the Hugging Face stack."""

__version__ = "0.1.0"
