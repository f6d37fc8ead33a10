"""Reproducibility: one seed controls numpy and torch randomness."""

from __future__ import annotations

import random

import numpy as np


def seed_everything(seed: int | None) -> np.random.Generator:
    """Seed Python's, numpy's and torch's global generators.

    Returns a ``numpy.random.Generator`` built from the same seed: engine
    code should draw numpy randomness from it rather than the legacy global
    state. ``seed=None`` means non-deterministic (fresh entropy).
    torch is seeded only if it is installed; it is imported here because a
    job that asks for a seed is about to compute anyway.
    """
    if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    rng = np.random.default_rng(seed)
    if seed is None:
        return rng
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    from expertloop.engine.backend import get_torch

    torch = get_torch()
    torch.manual_seed(seed)
    return rng
