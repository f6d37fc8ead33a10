"""Semi-automatic labelling (self-training with a review queue): the public API.

::

    from expertloop.semiauto import SemiAutoConfig, SemiAutoLoop, make_classifier, run_job

    loop = SemiAutoLoop(images, ["cat", "dog"], initial_labels, make_classifier("logreg-hand"),
                        config=SemiAutoConfig(t=0.9, batch_size=200))
    proposal = run_job(loop.run_iteration())   # accepted predictions + a review queue
    loop.apply_review({i: 1 for i in proposal.queued})
    run_job(loop.finish())

Importing this module does not import torch. The rest is in :mod:`expertloop.engine.semiauto`.
"""

from expertloop.engine.jobs import run_job
from expertloop.engine.semiauto.classifiers import make_classifier
from expertloop.engine.semiauto.data import ImageSet
from expertloop.engine.semiauto.datasets import digits_dataset, simulation_split
from expertloop.engine.semiauto.loop import (
           SemiAutoConfig,
           SemiAutoLoop,
           random_baseline,
           simulate,
)
from expertloop.engine.semiauto.queue import ReviewQueue

__all__ = ["ImageSet", "ReviewQueue", "SemiAutoConfig", "SemiAutoLoop", "digits_dataset", "make_classifier",
           "random_baseline", "run_job", "simulate", "simulation_split"]
