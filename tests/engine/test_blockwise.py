"""Block-wise prediction (engine/tiling.py read_window + membranes predict_dense)
equals the whole-array result, for numpy, dask and zarr sources and outputs."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from expertloop.engine.jobs import run_job
from expertloop.engine.membranes.net import predict_dense
from expertloop.engine.tiling import mean_std, read_window


def test_read_window_reflects_like_np_pad():
    img = np.arange(7 * 9, dtype=np.float32).reshape(7, 9)
    padded = np.pad(img, 5, mode="reflect")
    for src in (img, da.from_array(img, chunks=(3, 4)), zarr.array(img, chunks=(2, 2))):
        for starts, stops in [((-5, -5), (4, 6)), ((3, 2), (12, 14)), ((-2, -3), (10, 12))]:
            got = read_window(src, starts, stops)
            want = padded[starts[0] + 5:stops[0] + 5, starts[1] + 5:stops[1] + 5]
            np.testing.assert_array_equal(got, want)


def test_mean_std_by_rows_equals_numpy():
    img = np.random.default_rng(0).normal(3.0, 2.0, (301, 17))
    m, s = mean_std(da.from_array(img, chunks=(50, 17)), rows=64)
    assert m == pytest.approx(img.mean(), rel=1e-12) and s == pytest.approx(img.std(), rel=1e-12)


@pytest.mark.parametrize("tile", [24, 61])
def test_blockwise_prediction_equals_the_whole_array(tiny_membrane_model, tmp_path, tile):
    net, _ = tiny_membrane_model
    img = np.random.default_rng(1).integers(0, 255, (150, 130)).astype(np.uint8)
    # the whole-array reference: one tile covering the image (padded in memory)
    whole = run_job(predict_dense(net, img, tile=1000))
    lazy = da.from_array(img, chunks=(37, 41))
    on_disk = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=img.shape, chunks=(50, 50), dtype="u1")
    on_disk[:] = img
    out = zarr.open_array(str(tmp_path / f"out{tile}.zarr"), mode="w", shape=img.shape, chunks=(tile, tile),
                          dtype="f4")
    for src, dst in [(img, None), (lazy, None), (on_disk, out)]:
        got = run_job(predict_dense(net, src, tile=tile, out=dst))
        np.testing.assert_allclose(np.asarray(got), whole, atol=1e-5)
    assert isinstance(got, zarr.Array)  # the result stayed on disk


# ------------------------------------------------------------------ FLIM
def _flim_net(ndim=2, in_channels=1):
    from expertloop.engine.flim import EncoderSpec, build_network, random_encoder_like

    spec = EncoderSpec(ndim=ndim, layers=[
        {"kernel_size": 3, "filters_per_class": 4, "pool": "max", "pool_size": 3, "pool_stride": 2},
        {"kernel_size": 3, "filters_per_class": 4, "dilation": 2, "pool": "avg", "pool_size": 3, "pool_stride": 2}])
    enc = random_encoder_like(spec, in_channels, [6, 8], seed=3)
    return build_network(enc, [1, 2, 3], "unet", width=6)


@pytest.mark.parametrize("tile", [32, 36, 1000])
def test_flim_blockwise_equals_the_whole_image(tmp_path, tile):
    from expertloop.engine.flim import predict, predict_blocks

    net = _flim_net()
    img = np.random.default_rng(2).normal(0, 1, (96, 84)).astype(np.float32)  # sides: multiples of stride 4
    cls, probs = predict(net, img)
    assert len(np.unique(cls)) > 1
    on_disk = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=img.shape, chunks=(30, 30), dtype="f4")
    on_disk[:] = img
    out = zarr.open_array(str(tmp_path / "cls.zarr"), mode="w", shape=img.shape, chunks=(32, 32), dtype="i4")
    p_out = np.zeros_like(probs)
    for src, dst, pdst in [(img, None, p_out), (da.from_array(img, chunks=(25, 40)), None, None),
                           (on_disk, out, None)]:
        got = run_job(predict_blocks(net, src, tile=tile, out=dst, probs_out=pdst))
        np.testing.assert_array_equal(np.asarray(got), cls)
    np.testing.assert_allclose(p_out, probs, atol=1e-5)
    assert isinstance(got, zarr.Array)


def test_flim_blockwise_3d_and_channels():
    from expertloop.engine.flim import predict, predict_blocks

    net = _flim_net(ndim=3, in_channels=2)
    img = np.random.default_rng(4).normal(0, 1, (2, 8, 40, 48)).astype(np.float32)
    cls, _ = predict(net, img)
    got = run_job(predict_blocks(net, da.from_array(img, chunks=(2, 4, 20, 20)), tile=20))
    np.testing.assert_array_equal(got, cls)
    with pytest.raises(ValueError, match="2 channel"):
        run_job(predict_blocks(net, img[:1], tile=20))


# ------------------------------------------------------------------ features
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_value_range_counted_by_rows_equals_numpy(dtype):
    from expertloop.engine.features import _value_range

    rng = np.random.default_rng(5)
    img = rng.normal(100, 30, (203, 77, 4)).clip(0, 255).astype(dtype)
    for plane in (img[..., 0], img):  # grey, and RGBA (alpha left out)
        want = np.percentile((plane[..., :3] if plane.ndim == 3 else plane).astype(np.float32), (0.5, 99.5))
        got = _value_range(da.from_array(plane, chunks=(50, 30) + plane.shape[2:]), rows=40)
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("tile", [40, 56])
def test_features_blockwise_from_dask_and_zarr(tmp_path, tile):
    from expertloop.engine.features import BACKBONES, extract_features

    img = np.random.default_rng(6).integers(0, 4000, (2, 90, 70)).astype(np.uint16)
    want = run_job(extract_features(img, "resnet18", pretrained=False, tile=1024, seed=0))
    c = BACKBONES["resnet18"].channels
    out = zarr.open_array(str(tmp_path / f"f{tile}.zarr"), mode="w", shape=want.shape, chunks=(1, c, 8, 8),
                          dtype="f4")
    got = run_job(extract_features(da.from_array(img, chunks=(1, 30, 30)), "resnet18", pretrained=False,
                                   tile=tile, seed=0, out=out))
    assert isinstance(got, zarr.Array)
    np.testing.assert_allclose(got[:], want, atol=1e-4)
    plane = zarr.array(img[1], chunks=(32, 32))  # a 2D zarr source, numpy result
    np.testing.assert_allclose(run_job(extract_features(plane, "resnet18", pretrained=False, tile=tile, seed=0)),
                               want[1], atol=1e-4)


# ------------------------------------------------------------------ memory
def _peak_numpy_bytes(job) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        run_job(job)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_blockwise_memory_is_bounded_by_the_tile_not_the_image(tmp_path, tiny_membrane_model):
    """zarr in, zarr out: the numpy memory a step allocates stays that of a few
    tiles when the image grows 4x (tracemalloc sees numpy's buffers; torch's
    per-tile activations are bounded by the tile anyway; the statistics pass
    reads 256 x 256 blocks)."""
    from expertloop.engine.flim import predict_blocks

    flim = _flim_net()
    membranes, _ = tiny_membrane_model
    peaks = {}
    for side in (256, 512):  # both at least the 256 x 256 blocks of the statistics pass
        src = zarr.open_array(str(tmp_path / f"in{side}.zarr"), mode="w", shape=(side, side), chunks=(128, 128),
                              dtype="u1")
        src[:] = np.random.default_rng(0).integers(0, 255, (side, side), dtype=np.uint8)
        cls = zarr.open_array(str(tmp_path / f"c{side}.zarr"), mode="w", shape=(side, side), chunks=(128, 128),
                              dtype="i4")
        prob = zarr.open_array(str(tmp_path / f"p{side}.zarr"), mode="w", shape=(side, side), chunks=(128, 128),
                               dtype="f4")
        peaks["flim", side] = _peak_numpy_bytes(predict_blocks(flim, src, tile=128, out=cls))
        peaks["membranes", side] = _peak_numpy_bytes(predict_dense(membranes, src, tile=128, out=prob))
    for step in ("flim", "membranes"):
        # what grows is zarr's and asyncio's bookkeeping (small objects), not pixels:
        # below a quarter of one float32 copy of the big image (1 MiB)
        assert peaks[step, 512] - peaks[step, 256] < 512 * 512 * 4 / 4, peaks
