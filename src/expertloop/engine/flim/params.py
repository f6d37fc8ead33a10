"""The FLIM front ends' parameters, owned once (see :mod:`expertloop.engine.config`).

:class:`FlimFit` is the simple architecture the "Marker encoder" widget and
``expertloop flim fit`` build when no spec file is given (every layer alike),
plus the decoder; :class:`FlimRecommend` is what "Image recommendation" and
``expertloop flim recommend`` use.
"""

from __future__ import annotations

from dataclasses import dataclass

from expertloop.engine.config import param
from expertloop.engine.flim.encoder import EncoderSpec, LayerSpec


def _layers_spec(n_layers: int, kernel_size: int, filters_per_class: int, pool_stride: int,
                 ndim: int) -> EncoderSpec:
    layer = {"kernel_size": kernel_size, "filters_per_class": filters_per_class, "pool": "max",
             "pool_size": LayerSpec.pool_size, "pool_stride": pool_stride}
    return EncoderSpec(ndim=ndim, layers=[dict(layer) for _ in range(n_layers)])


@dataclass
class FlimFit:
    """Encoder (when no spec file is given) and decoder of a FLIM network."""

    n_layers: int = param(2, help="encoder layers (all alike)", label="layers", min=1, max=4,
                          flag="--layers")
    kernel_size: int = param(LayerSpec.kernel_size, help="convolution kernel size (odd)", label="kernel size",
                             min=1, max=11, step=2)
    filters_per_class: int = param(LayerSpec.filters_per_class, help="filters learnt per marker class "
                                   "in each layer", label="filters per class", min=1, max=64, flag="--filters")
    pool_stride: int = param(2, help="stride of each layer's max pooling (3x3)", label="pool stride",
                             min=1, max=4)
    decoder: str = param("pixel", help="pixel: a per-pixel head on the features (fast); unet: a small "
                         "U-Net decoder trained on the markers", choices=("pixel", "unet"), cli=False)
    steps: int = param(200, help="U-Net decoder training steps", label="decoder steps", min=1, max=10000)

    def spec(self, ndim: int = 2) -> EncoderSpec:
        return _layers_spec(self.n_layers, self.kernel_size, self.filters_per_class, self.pool_stride, ndim)

    @classmethod
    def from_spec(cls, spec: EncoderSpec, decoder: str | None = None) -> FlimFit | None:
        """The FlimFit that builds ``spec`` (and ``decoder``, if one of ours), or
        None when ``spec`` is not of that simple form (e.g. from a spec file)."""
        first = spec.layers[0]
        n = len(spec.layers)
        cfg = cls(n_layers=n, kernel_size=first.kernel_size, filters_per_class=first.filters_per_class,
                  pool_stride=first.pool_stride,
                  **({"decoder": decoder} if decoder in ("pixel", "unet") else {}))
        return cfg if cfg.spec(spec.ndim).to_dict() == spec.to_dict() else None


@dataclass
class FlimRecommend:
    """Parameters of the image recommendation."""

    k: int = param(3, help="images recommended nearest to and farthest from the marked ones",
                   label="recommend k", min=1, max=50, flag="-k")
    n_segments: int = param(40, help="superpixels per image for the descriptors", label="superpixels",
                            min=4, max=2000, flag="--superpixels")
    filters_per_class: int = param(LayerSpec.filters_per_class, help="filters per marker class of the "
                                   "one-layer encoder (when no spec file is given)", label="filters per class",
                                   min=1, max=64, flag="--filters")
    projection: str = param("tsne", help="2D projection of the descriptors", choices=("tsne", "pca"))

    def spec(self, ndim: int = 2) -> EncoderSpec:
        return _layers_spec(1, LayerSpec.kernel_size, self.filters_per_class, 2, ndim)
