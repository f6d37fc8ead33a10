"""Issue 16: the plugin claims only what it adds, and shows in napari's layer menus."""

import numpy as np
import pytest

PLUGIN = "napari-expertloop"


def test_viewer_open_png_and_jpeg_without_plugin_has_no_reader_conflict(make_napari_viewer, tmp_path):
    import imageio.v3 as iio
    from npe2 import PluginManager

    img = (np.arange(32 * 40) % 251).astype(np.uint8).reshape(32, 40)
    png, jpg = tmp_path / "a.png", tmp_path / "b.jpg"
    iio.imwrite(png, img)
    iio.imwrite(jpg, img)
    pm = PluginManager.instance()
    for p in (png, jpg):
        assert PLUGIN not in [r.plugin_name for r in pm.iter_compatible_readers([str(p)])]
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(png))  # would raise MultipleReaderError on a conflict
    np.testing.assert_array_equal(np.asarray(layer.data), img)
    (layer2,) = viewer.open(str(jpg))
    assert np.asarray(layer2.data).shape[:2] == img.shape


def test_tiff_and_nifti_are_still_claimed():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    for name in ("x.tif", "x.tiff", "x.nii", "x.nii.gz"):
        assert PLUGIN in [r.plugin_name for r in pm.iter_compatible_readers([name])], name


@pytest.mark.parametrize(
    ("menu", "title"),
    [
        ("napari/layers/annotate", "Spot annotator (expertloop)"),
        ("napari/layers/segment", "Membrane active learning (expertloop)"),
        ("napari/layers/classify", "Blood cell detector (expertloop)"),
        ("napari/file/io_utilities", "Annotation project admin (expertloop)"),
    ],
)
def test_menu_contributions_appear_in_the_viewer(make_napari_viewer, menu, title):
    from app_model.types import SubmenuItem
    from napari._app_model import get_app_model

    make_napari_viewer()
    app = get_app_model()

    def titles(menu_id):
        out = []
        for item in app.menus.get_menu(menu_id):
            if isinstance(item, SubmenuItem):
                out += titles(item.submenu)
            else:
                out.append(item.command.title)
        return out

    assert title in titles(menu)


@pytest.mark.parametrize("ndim", [2, 3])
def test_labels_round_trip_as_nifti_2d_and_3d(make_napari_viewer, tmp_path, ndim):
    rng = np.random.default_rng(0)
    shape = (12, 10) if ndim == 2 else (3, 12, 10)
    lab = rng.integers(0, 5, shape).astype(np.int32)
    viewer = make_napari_viewer()
    viewer.add_labels(lab, name="lab")
    out = tmp_path / "lab.nii.gz"
    viewer.layers.save(str(out), plugin=PLUGIN)
    (back,) = viewer.open(str(out), plugin=PLUGIN)
    assert back._type_string == "labels"  # the NIfTI 'label' intent
    data = np.asarray(back.data)
    if ndim == 2:
        assert data.shape == (1, *shape)  # a 2D layer is saved as a single-slice volume
        data = data[0]
    np.testing.assert_array_equal(data, lab)
