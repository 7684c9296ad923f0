"""Torch model definitions (our own, gpt-fast style) and, later, drafter modules and training."""
