"""Blood-cell detection and multi-label classification (workflow ``blood``).

After Qiu et al., *Multi-label Detection and Classification of Red Blood
Cells in Microscopic Images*: a Faster R-CNN proposes single- or multi-cell
regions, a CNN embeds each region, one binary head per cell type gives
independent probabilities and a gradient-boosting classifier flags abnormal
regions. Compute only: no Qt, no napari; torch is imported lazily.
"""

from expertloop.engine.blood.metrics import (
    average_precision,
    coco_map,
    detection_ap,
    match_detections,
)
from expertloop.engine.blood.model import (
    DETECTOR_BACKBONES,
    AbnormalClassifier,
    BloodModel,
    BloodSample,
    build_detector,
    build_type_heads,
    crop_regions,
    detect,
    load_blood_model,
    new_blood_model,
    region_features,
    save_blood_model,
    to_rgb01,
    train_detector,
    train_type_heads,
    type_probabilities,
    types_to_matrix,
)
from expertloop.engine.blood.pipeline import (
    BloodResult,
    classify_regions,
    parse_types,
    predict_folder,
    predict_image,
    predict_images,
    sample_from_rectangles,
    samples_from_instances,
    train_blood_model,
)
from expertloop.engine.blood.regions import (
    PAPER_ABNORMAL,
    PAPER_TYPES,
    Regions,
    box_iou,
    clip_boxes,
    mask_to_boxes,
    merge_boxes,
    synthetic_smear,
)

__all__ = [
    "DETECTOR_BACKBONES", "PAPER_ABNORMAL", "PAPER_TYPES", "AbnormalClassifier", "BloodModel", "BloodResult",
    "BloodSample", "Regions", "average_precision", "box_iou", "build_detector", "build_type_heads",
    "classify_regions", "clip_boxes", "coco_map", "crop_regions", "detect", "detection_ap", "load_blood_model",
    "mask_to_boxes", "match_detections", "merge_boxes", "new_blood_model", "predict_folder",
    "predict_image", "predict_images",
    "region_features", "parse_types", "sample_from_rectangles", "samples_from_instances", "save_blood_model", "synthetic_smear", "to_rgb01",
    "train_blood_model", "train_detector", "train_type_heads", "type_probabilities", "types_to_matrix",
]
