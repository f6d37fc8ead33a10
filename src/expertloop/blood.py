"""Blood-cell detection and multi-label classification: the public API.

::

    from expertloop.blood import load_blood_model, predict_image, run_job

    model = load_blood_model("bccd_model.pt")
    result = run_job(predict_image(model, image))
    print(result.summary(model.score_threshold, model.type_threshold))

Importing this module does not import torch. The rest is in :mod:`expertloop.engine.blood`.
"""

from expertloop.engine.blood.model import (
    BloodModel,
    BloodSample,
    load_blood_model,
    new_blood_model,
    save_blood_model,
)
from expertloop.engine.blood.pipeline import (
    BloodTraining,
    predict_folder,
    predict_image,
    predict_images,
    train_blood_model,
)
from expertloop.engine.jobs import run_job

__all__ = ["BloodModel", "BloodSample", "BloodTraining", "load_blood_model", "new_blood_model",
           "predict_folder", "predict_image", "predict_images", "run_job", "save_blood_model",
           "train_blood_model"]
