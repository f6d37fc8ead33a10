"""Semi-automatic labelling: self-training with a hard-case review queue.

See ``docs/semiauto.md``. Compute only: no Qt, no napari; torch is imported
lazily by the classifiers that need it.
"""

from expertloop.engine.semiauto.classifiers import (
    CLASSIFIERS,
    CNNClassifier,
    SklearnClassifier,
    calibration_report,
    fit_temperature,
    make_classifier,
    softmax,
)
from expertloop.engine.semiauto.data import (
    UNLABELLED,
    ImageSet,
    from_stack,
    load_class_folders,
    load_folder,
    parse_class_names,
    read_labels_csv,
    write_labels_csv,
)
from expertloop.engine.semiauto.loop import (
    MissingClassWarning,
    Proposal,
    SemiAutoConfig,
    SemiAutoLoop,
    SimulatedAnnotator,
    simulate,
)
from expertloop.engine.semiauto.queue import QueueItem, ReviewQueue
from expertloop.engine.semiauto.strategies import (
    STRATEGIES,
    Split,
    split_batch,
    threshold_split,
)

__all__ = [
    "CLASSIFIERS", "CNNClassifier", "ImageSet", "SemiAutoConfig", "MissingClassWarning", "Proposal",
    "QueueItem", "ReviewQueue", "STRATEGIES", "SemiAutoLoop", "SimulatedAnnotator", "SklearnClassifier",
    "Split", "UNLABELLED", "calibration_report", "fit_temperature", "from_stack", "load_class_folders",
    "load_folder", "make_classifier", "parse_class_names", "read_labels_csv", "simulate", "softmax",
    "split_batch", "threshold_split", "write_labels_csv",
]
