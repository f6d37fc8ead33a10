"""napari-expertloop: make scarce expert time count in bioimage analysis.

Importing this package is cheap: it never imports torch, Qt or napari.
The compute engine lives in :mod:`expertloop.engine`, readers and writers in
:mod:`expertloop.io`, the napari widgets in :mod:`expertloop.widgets`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
