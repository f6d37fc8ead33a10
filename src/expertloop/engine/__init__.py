"""Compute engine: torch, numpy and scikit-* only; never Qt or napari.

Submodules (import the one you need; torch is imported lazily on first use):

- :mod:`~expertloop.engine.jobs`: the job protocol (generators of progress)
- :mod:`~expertloop.engine.device`: CUDA / MPS / CPU choice
- :mod:`~expertloop.engine.persistence`: model files with JSON metadata
- :mod:`~expertloop.engine.seed`: one seed for numpy and torch
- :mod:`~expertloop.engine.tiling`: tiles with halos
- :mod:`~expertloop.engine.features`: registry of torchvision backbones
- :mod:`~expertloop.engine.backend`: the one place that imports torch
"""

from expertloop.engine.jobs import (
    CancelToken,
    Job,
    JobCancelled,
    JobError,
    Progress,
    run_job,
)

__all__ = ["CancelToken", "Job", "JobCancelled", "JobError", "Progress", "run_job"]
