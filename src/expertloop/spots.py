"""Spot detection from timed clicks (the L-CNN): the public API.

::

    from expertloop.spots import SpotConfig, detect_spots, prepare_scan, run_job, train_spot_detector

    ts = run_job(prepare_scan(volume, clicks, SpotConfig()))
    detector = run_job(train_spot_detector([ts]))
    found = run_job(detect_spots(detector, other_volume))
    spots = found.spots()                      # SpotSelection's threshold and join radius

Importing this module does not import torch. The rest is in :mod:`expertloop.engine.spots`.
"""

from expertloop.engine.jobs import run_job
from expertloop.engine.spots.lcnn import (
    SpotConfig,
    SpotDetector,
    SpotSelection,
    detect_spots,
    prepare_scan,
    train_spot_detector,
)
from expertloop.engine.spots.phantom import make_phantom, simulate_expert

__all__ = ["SpotConfig", "SpotDetector", "SpotSelection", "detect_spots", "make_phantom", "prepare_scan",
           "run_job", "simulate_expert", "train_spot_detector"]
