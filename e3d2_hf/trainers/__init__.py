"""Training stages of E3D2, each a `train_*` function driven by a recipe section's config dataclass."""
