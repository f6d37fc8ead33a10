"""FLIM: encoders learnt from image markers, decoders, and image recommendation.

Compute only (no Qt, no napari); torch is imported inside functions. See
``docs/flim.md``.
"""

from expertloop.engine.flim.decoder import (
    build_network,
    ce_dice_loss,
    fit_pixel_head,
    load_network,
    predict,
    predict_blocks,
    random_encoder_like,
    receptive_halo,
    save_network,
    segment,
    train_decoder,
)
from expertloop.engine.flim.encoder import (
    WORKFLOW,
    EncoderSpec,
    FitReport,
    LayerSpec,
    as_channels_first,
    build_encoder,
    encode,
    feature_stack,
    fit_encoder,
    load_encoder,
    parse_spec,
    save_encoder,
    upsample,
)
from expertloop.engine.flim.markers import (
    Markers,
    extract_markers,
    marker_classes,
    simulate_markers,
)
from expertloop.engine.flim.recommend import (
    Recommendation,
    RecommendResult,
    compute_descriptors,
    descriptor,
    descriptor_matrix,
    heatmap,
    project,
    recommend,
    recommend_images,
    recommendation_loop,
    superpixels,
)

__all__ = [
    "WORKFLOW", "EncoderSpec", "FitReport", "LayerSpec", "Markers", "Recommendation", "RecommendResult",
    "as_channels_first", "build_encoder", "build_network", "ce_dice_loss", "compute_descriptors",
    "descriptor", "descriptor_matrix", "encode", "extract_markers", "feature_stack", "fit_encoder",
    "fit_pixel_head", "heatmap", "load_encoder", "load_network", "marker_classes", "parse_spec",
    "predict", "predict_blocks", "project", "random_encoder_like", "receptive_halo", "recommend", "recommend_images", "recommendation_loop", "save_encoder",
    "save_network", "segment", "simulate_markers", "superpixels", "train_decoder", "upsample",
]
