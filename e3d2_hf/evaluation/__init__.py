"""Held-out evaluation of policies and the paper's tables."""
