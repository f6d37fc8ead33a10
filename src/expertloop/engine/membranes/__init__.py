"""Membrane segmentation by transfer learning with expert-guided active-learning regions.

* :mod:`.net`: the window classifier / FCN, training, transfer, dense prediction;
* :mod:`.region`: uncertainty, abundance, greedy region search;
* :mod:`.loop`: the project folder and the active-learning rounds.

Importing this package does not import torch.
"""

from expertloop.engine.membranes.loop import (
    MembraneConfig,
    MembraneProject,
    f_score,
    prefill_region,
    run_simulated_rounds,
    simulated_expert,
    simulated_round,
)
from expertloop.engine.membranes.net import (
    BACKGROUND,
    MEMBRANE,
    UNLABELLED,
    NetConfig,
    build_net,
    load_net,
    membrane_labels,
    predict_dense,
    predict_per_window,
    predict_windows,
    save_net,
    train_net,
    transfer,
)
from expertloop.engine.membranes.region import (
    Abundance,
    Region,
    abundance,
    bounded_abundance,
    grow_region,
    propose_region,
    random_region,
    region_objective,
    region_outline,
    uncertainty_map,
    window_uncertainty,
)

__all__ = [
    "BACKGROUND", "MEMBRANE", "UNLABELLED", "Abundance", "MembraneConfig", "MembraneProject",
    "NetConfig", "Region", "abundance", "bounded_abundance", "build_net", "f_score", "grow_region",
    "load_net",
    "membrane_labels", "predict_dense", "predict_per_window", "predict_windows",
    "prefill_region", "propose_region", "random_region", "region_objective", "region_outline",
    "run_simulated_rounds", "save_net", "simulated_expert", "simulated_round", "train_net", "transfer",
    "uncertainty_map", "window_uncertainty",
]
