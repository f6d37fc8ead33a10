"""Issue 16: a membrane network exported here is a valid bioimage.io model
that runs in bioimageio.core with the plugin's output, and comes back."""

import zipfile

import numpy as np
import pytest

pytest.importorskip("bioimageio.spec")
core = pytest.importorskip("bioimageio.core")

from expertloop.cli import main  # noqa: E402
from expertloop.engine.jobs import run_job  # noqa: E402
from expertloop.engine.membranes.net import (  # noqa: E402
    NetConfig,
    build_net,
    load_net,
    predict_dense,
    save_net,
)

#: bioimageio.core vs the plugin: float32 arithmetic in another order (its
#: z-score adds eps = 1e-6 to the std)
TOL = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir_module):
    import imageio.v3 as iio

    d = tmp_path_factory.mktemp("bioimageio")
    net = build_net(NetConfig(window=16, channels=4), seed=3)
    save_net(d / "net", net, kind="target")
    img_path = data_dir_module / "membranes" / "vnc_00_raw.png"
    assert main(["membranes", "export", str(d / "net.pt"), "-o", str(d / "pkg.zip"),
                 "--test-image", str(img_path), "--author", "Test Lab"]) == 0
    img = iio.imread(img_path).astype(np.float32)
    return d, net, img


@pytest.fixture(scope="module")
def data_dir_module():
    from pathlib import Path

    return Path(__file__).parent / "data"


def test_export_validates_and_runs_in_bioimageio_core(exported):
    from bioimageio.spec import load_model_description

    d, net, img = exported
    descr = load_model_description(d / "pkg.zip")
    assert descr.validation_summary.status == "valid-format"
    assert {"pytorch_state_dict", "torchscript"} <= {f for f in ("pytorch_state_dict", "torchscript")
                                                     if getattr(descr.weights, f) is not None}
    assert "zero_mean_unit_variance" in [p.id for p in descr.inputs[0].preprocessing]
    assert descr.cite and descr.covers and [a.name for a in descr.authors] == ["Test Lab"]
    with zipfile.ZipFile(d / "pkg.zip") as z:
        assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "test_input.npy", "test_output.npy",
                "cover.png", "README.md"} <= set(z.namelist())
    summary = core.test_model(d / "pkg.zip")  # runs the test tensors through every weight format
    assert summary.status == "passed", summary.format()
    # a new image of another size (not the test tensor), through bioimageio.core, both weight formats
    other = np.ascontiguousarray(img[10:74, 20:100])
    ref = run_job(predict_dense(net, other))
    for got in _predict_each_format(d / "pkg.zip", other[None, None], "membrane_probability"):
        assert got.shape == (1, *ref.shape) and np.abs(got[0] - ref).max() < TOL


def _predict_each_format(package, x, output):
    from bioimageio.core import create_prediction_pipeline, load_model_description

    descr = load_model_description(package)
    for fmt in ("pytorch_state_dict", "torchscript"):
        pipeline = create_prediction_pipeline(descr, weight_format=fmt)
        sample = core.predict(model=pipeline, inputs=x)
        yield np.asarray(sample.members[output].data)[0]


def test_import_gives_the_same_network(exported, tmp_path, capsys):
    import json

    d, net, img = exported
    assert main(["membranes", "import", str(d / "pkg.zip"), "-o", str(tmp_path / "back"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["window"] == 16
    back, meta = load_net(tmp_path / "back.pt")
    np.testing.assert_array_equal(run_job(predict_dense(back, img)), run_job(predict_dense(net, img)))


def test_corrupt_and_incompatible_packages_give_clear_errors(exported, tmp_path, capsys):
    d, _, _ = exported
    bad = tmp_path / "corrupt.zip"
    bad.write_bytes((d / "pkg.zip").read_bytes()[:500])
    assert main(["membranes", "import", str(bad), "-o", str(tmp_path / "x")]) == 2
    assert "not a readable bioimage.io package" in capsys.readouterr().err
    # a valid package whose network is not ours
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(d / "pkg.zip") as src, zipfile.ZipFile(other, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "rdf.yaml":
                data = data.replace(b"membrane_probability_net", b"some_other_net")
            dst.writestr(item, data)
    assert main(["membranes", "import", str(other), "-o", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "not an expertloop membrane model" in err or "not a valid bioimage.io model" in err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


def test_flim_network_round_trips_through_bioimageio(exported, data_dir_module, tmp_path, capsys):
    import json

    import tifffile

    from expertloop.engine.flim import (
        build_network,
        fit_encoder,
        parse_spec,
        save_network,
        train_decoder,
    )
    from expertloop.engine.flim.decoder import load_network, predict
    from expertloop.io.flim_markers import read_lids_markers

    d = data_dir_module / "flim"
    img = tifffile.imread(d / "dsb2018_nuclei_128.tif").astype(np.float32)
    mk = read_lids_markers(d / "dsb2018_nuclei_128_markers.txt")
    spec = parse_spec({"layers": [{"filters_per_class": 2}, {"filters_per_class": 2}]})
    enc, rep = run_job(fit_encoder([img], [mk], spec, seed=0))
    net = build_network(enc, rep.classes, "unet")
    run_job(train_decoder(net, [img], [mk], steps=3, seed=0))
    save_network(tmp_path / "flim", net)
    assert main(["flim", "export", str(tmp_path / "flim.pt"), "-o", str(tmp_path / "flim.zip"),
                 "--test-image", str(d / "dsb2018_nuclei_128.tif")]) == 0
    summary = core.test_model(tmp_path / "flim.zip")
    assert summary.status == "passed", summary.format()
    other = np.ascontiguousarray(img[:96, :80])  # another size than the test tensor
    ref = predict(net, other)[1]
    for got in _predict_each_format(tmp_path / "flim.zip", other[None, None], "class_probabilities"):
        assert got.shape == ref.shape and np.abs(got - ref).max() < TOL
    capsys.readouterr()
    assert main(["flim", "import", str(tmp_path / "flim.zip"), "-o", str(tmp_path / "back"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == net.classes
    np.testing.assert_array_equal(predict(load_network(tmp_path / "back.pt"), img)[1], predict(net, img)[1])
    # a membrane package is not a FLIM network (and the other way round)
    assert main(["flim", "import", str(exported[0] / "pkg.zip"), "-o", str(tmp_path / "x")]) == 2
    assert "not an expertloop FLIM model" in capsys.readouterr().err
    assert main(["membranes", "import", str(tmp_path / "flim.zip"), "-o", str(tmp_path / "y")]) == 2
    assert "not an expertloop membrane model" in capsys.readouterr().err
