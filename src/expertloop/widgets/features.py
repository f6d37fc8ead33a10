"""'Deep features' widget: look at what a CNN backbone sees in an image.

Thin: reads parameters, starts :func:`expertloop.engine.features.feature_pca`
through the shared :class:`~expertloop.widgets._jobs.JobRunner`, adds the
result as an RGB layer aligned with the source image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, PushButton

from expertloop.engine.features import FeatureConfig, feature_pca
from expertloop.widgets._common import (
    ConfigControls,
    fit_dock,
    follow_layers,
    image_layer_choices,
    layer_array,
    layer_by_name,
    notify,
)
from expertloop.widgets._jobs import JobRunner

if TYPE_CHECKING:
    import napari


class FeaturesWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.image = ComboBox(label="image", choices=lambda _: image_layer_choices(viewer))
        # parameters from the engine's FeatureConfig (defaults, ranges, help live there)
        self.params = ConfigControls(FeatureConfig)
        self.backbone, self.tile = self.params["backbone"], self.params["tile"]
        self.pretrained = CheckBox(text="ImageNet weights (if available)", value=True)
        self.run_btn = PushButton(text="Compute features")
        self.runner = JobRunner()
        super().__init__(
            widgets=[self.image, self.backbone, self.pretrained, self.tile, self.run_btn, self.runner]
        )
        fit_dock(self)
        self.run_btn.changed.connect(self.run)
        follow_layers(viewer, self.image)

    def run(self, *_):
        layer = layer_by_name(self._viewer, self.image.value)
        if layer is None:

            notify("Deep features", "open an image first")
            return None
        # pass the layer's data as is: the job converts it (e.g. a lazy dask
        # array is read) in the worker thread, not here on the GUI thread
        data, base_scale, base_translate = layer_array(layer)  # level 0 of a multiscale layer
        job = feature_pca(
            data,
            self.backbone.value,
            pretrained="auto" if self.pretrained.value else False,
            tile=self.tile.value,
            rgb=layer.rgb,
        )

        def show(result):
            rgb, stride = result
            scale, translate = base_scale.copy(), base_translate.copy()
            scale[-2:] *= stride  # features are computed at 1/stride resolution
            translate[-2:] += base_scale[-2:] * (stride - 1) / 2
            self._viewer.add_image(
                rgb,
                rgb=True,
                name=f"{layer.name} {self.backbone.value} features",
                scale=scale,
                translate=translate,
                opacity=0.7,
                blending="additive",
            )

        return self.runner.start(job, description=f"{self.backbone.value} features", on_result=show)
