"""FLIM: encoders learnt from a few markers, decoders, image recommendation: the public API.

::

    from expertloop.flim import FlimFit, fit_encoder, fit_pixel_head, run_job, segment

    encoder, report = run_job(fit_encoder(images, markers, FlimFit().spec()))
    net = run_job(fit_pixel_head(encoder, images, markers))
    class_maps = run_job(segment(net, more_images))

Importing this module does not import torch. The rest is in :mod:`expertloop.engine.flim`.
"""

from expertloop.engine.flim.decoder import (
           build_network,
           fit_pixel_head,
           load_network,
           save_network,
           segment,
           train_decoder,
)
from expertloop.engine.flim.encoder import fit_encoder
from expertloop.engine.flim.markers import simulate_markers
from expertloop.engine.flim.params import FlimFit, FlimRecommend
from expertloop.engine.flim.recommend import recommend_images
from expertloop.engine.jobs import run_job

__all__ = ["FlimFit", "FlimRecommend", "build_network", "fit_encoder", "fit_pixel_head", "load_network",
           "recommend_images", "run_job", "save_network", "segment", "simulate_markers", "train_decoder"]
