"""napari widgets: thin front ends over :mod:`expertloop.engine`.

Widget modules never import torchvision (see docs/architecture.md); the
engine imports it lazily, behind the Mesa/triton guard.
"""
