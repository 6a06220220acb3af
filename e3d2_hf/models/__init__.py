"""The E3D2 networks as `transformers` models: the VQ-VAE choreographic memory, the GPT policy and the reward model."""
