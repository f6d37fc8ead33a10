"""Spot detection in MRI with labelling latency (L-CNN), and timed spot clicks.

Modules: :mod:`.latency` (cleaning, GMM clusters), :mod:`.candidates`
(superpixel patches, labels), :mod:`.lcnn` (nets, transfer, training,
prediction, 3D joining), :mod:`.phantom` (a documented SIMULATION of spots and
of an expert), :mod:`.evaluate` (leave-one-scan-out, ROC). No torch import at
module level.
"""

from expertloop.engine.spots.candidates import (
    Candidates,
    extract_candidates,
    label_candidates,
)
from expertloop.engine.spots.latency import (
    clean_latencies,
    cluster_latencies,
    random_clusters,
)
from expertloop.engine.spots.lcnn import (
    METHODS,
    Detection,
    SpotConfig,
    SpotDetector,
    TrainingSet,
    build_spotnet,
    detect_spots,
    join_spots,
    predict_patches,
    prepare_scan,
    train_spot_detector,
    transfer_conv_layers,
)
from expertloop.engine.spots.phantom import (
    Phantom,
    make_phantom,
    simulate_expert,
    truth_points,
)

__all__ = [
    "METHODS", "Candidates", "Detection", "Phantom", "SpotConfig", "SpotDetector", "TrainingSet",
    "build_spotnet", "clean_latencies", "cluster_latencies", "detect_spots", "extract_candidates",
    "join_spots", "label_candidates", "make_phantom", "predict_patches", "prepare_scan",
    "random_clusters", "simulate_expert", "train_spot_detector", "transfer_conv_layers", "truth_points",
]
