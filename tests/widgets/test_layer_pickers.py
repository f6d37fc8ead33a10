"""Docks keep their layer pickers current when any dock or the user adds,
removes or renames layers (issue 19 item 6)."""

from __future__ import annotations

import numpy as np


def test_pickers_follow_renames_and_other_docks_layers(make_napari_viewer, qtbot, tmp_path):
    from expertloop.widgets.blood import BloodWidget
    from expertloop.widgets.features import FeaturesWidget
    from expertloop.widgets.membranes import MembraneWidget
    from expertloop.widgets.spots import SpotAnnotatorWidget, SpotDetectorWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 16, 16), np.float32), name="scan")
    viewer.add_image(np.zeros((16, 16, 3), np.uint8), name="smear", rgb=True)
    viewer.add_shapes([np.array([[1, 1], [1, 5], [5, 5], [5, 1]])], shape_type="rectangle", name="boxes")
    blood, feats, mem = BloodWidget(viewer), FeaturesWidget(viewer), MembraneWidget(viewer)
    ann, det = SpotAnnotatorWidget(viewer), SpotDetectorWidget(viewer)
    blood.image.value, blood.annotations.value = "smear", "boxes"
    feats.image.value, mem.target_image.value = "smear", "scan"
    # another dock adds a layer: the spot detector lists the annotated image at once
    ann.folder.value, ann.image.value = tmp_path, "scan"
    ann.start()
    assert "scan" in det.train_images.choices
    det.train_images.value = ["scan"]
    # the user renames layers: every picker shows the new names, selections follow
    viewer.layers["smear"].name = "smear 1"
    viewer.layers["boxes"].name = "my boxes"
    viewer.layers["scan"].name = "brain"
    assert blood.image.value == "smear 1" and "smear" not in blood.image.choices
    assert blood.annotations.value == "my boxes" and feats.image.value == "smear 1"
    assert mem.target_image.value == "brain" and "brain" in mem.val_image.choices
    assert det.image.value in det.image.choices and "brain" in det.image.choices
    # the annotated image's spots layer is still 'scan spots': not a training image until it follows
    assert "brain" not in det.train_images.choices
    viewer.layers["scan spots"].name = "brain spots"
    assert "brain" in det.train_images.choices
    # a removed layer leaves every picker
    viewer.layers.remove("my boxes")
    assert "my boxes" not in blood.annotations.choices
