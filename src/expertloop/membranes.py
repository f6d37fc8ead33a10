"""Membrane segmentation by transfer learning and expert-guided active learning: the public API.

The handful of entry points a script needs (see ``docs/membranes.md``)::

    from expertloop.membranes import MembraneConfig, MembraneProject, NetConfig

    project = MembraneProject.create("proj", targets, labels, config=MembraneConfig(lam=0.3))
    run_job(project.train_source(source_images, source_labels))
    run_job(project.transfer())                    # round 0
    out = run_job(project.propose())               # a region for the expert
    project.accept(corrected_labels)
    run_job(project.retrain())                     # round 1

Everything else (the network, the region search, the abundance) lives in
:mod:`expertloop.engine.membranes`. Importing this module does not import torch.
"""

from expertloop.engine.config import FixedParameterError
from expertloop.engine.jobs import run_job
from expertloop.engine.membranes import (  # re-exported from the engine package, not repeated
    MembraneConfig,
    MembraneProject,
    NetConfig,
    f_score,
    membrane_labels,
    prefill_region,
    run_simulated_rounds,
    simulated_expert,
    simulated_round,
)

__all__ = [
    "FixedParameterError", "MembraneConfig", "MembraneProject", "NetConfig", "f_score",
    "membrane_labels", "prefill_region", "run_job", "run_simulated_rounds", "simulated_expert",
    "simulated_round",
]
