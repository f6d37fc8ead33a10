"""FLIM engine: encoder fitting from markers, decoders, descriptors, recommendation."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from expertloop.engine.flim import (
    EncoderSpec,
    build_network,
    compute_descriptors,
    descriptor,
    descriptor_matrix,
    encode,
    extract_markers,
    fit_encoder,
    fit_pixel_head,
    heatmap,
    load_encoder,
    load_network,
    parse_spec,
    predict,
    project,
    random_encoder_like,
    recommend,
    recommendation_loop,
    save_encoder,
    save_network,
    simulate_markers,
    superpixels,
    train_decoder,
)
from expertloop.engine.jobs import run_job
from expertloop.engine.metrics import dice
from expertloop.engine.persistence import ModelFileError

ONE_LAYER = {"ndim": 2, "layers": [{"kernel_size": 3, "filters_per_class": 2, "pool": "none"}]}


@pytest.fixture
def nuclei(data_dir):
    d = data_dir / "flim"
    img = tifffile.imread(d / "dsb2018_nuclei_128.tif").astype(np.float32)
    mask = tifffile.imread(d / "dsb2018_nuclei_128_mask.tif")
    return img, mask


def _same_rows(a, b, atol=1e-5) -> bool:
    """The rows of ``a`` and ``b`` match one to one (in any order)."""
    left = list(range(len(b)))
    for row in a:
        hit = [j for j in left if np.allclose(row, b[j], atol=atol)]
        if not hit:
            return False
        left.remove(hit[0])
    return not left


def _raw_patches(img, coords, k=3):
    """Reference (numpy) zero-padded k×k patches of a single-channel image."""
    r = k // 2
    p = np.pad(img, r)
    return np.stack([p[y:y + k, x:x + k].ravel() for y, x in coords])


def test_filters_are_unit_norm_normalised_marker_patches_hand_made():
    # 2 patches per class and 2 filters per class: the k-means centres are the patches
    img = np.arange(81, dtype=np.float32).reshape(9, 9) % 7
    mk = np.zeros((9, 9), int)
    mk[2, 2] = mk[2, 6] = 1
    mk[6, 3] = mk[5, 5] = 2
    enc, rep = run_job(fit_encoder([img], [mk], ONE_LAYER, seed=0))
    lay = enc.layers[0]
    coords = np.argwhere(mk > 0)
    raw = _raw_patches(img, coords)  # markers are away from the border: all pixels inside
    mean, std = raw.mean(), raw.std()
    assert float(lay.mean.flatten()[0]) == pytest.approx(mean, rel=1e-5)
    assert float(lay.std.flatten()[0]) == pytest.approx(std, rel=1e-5)
    normed = _raw_patches((img - mean) / std, coords)  # zero padding in normalised space
    w = lay.conv.weight.detach().numpy().reshape(4, -1)
    order = np.argsort(mk[tuple(coords.T)], kind="stable")  # class 1 filters first
    expected = normed[order] / np.linalg.norm(normed[order], axis=1, keepdims=True)
    # within a class the order of centres is arbitrary: compare as sets
    for cls_rows in (slice(0, 2), slice(2, 4)):
        assert _same_rows(w[cls_rows], expected[cls_rows])
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-5)
    assert rep.classes == [1, 2] and rep.patches_per_layer == [{1: 2, 2: 2}]
    assert np.all(lay.conv.bias.detach().numpy() == 0)


def test_filters_equal_kmeans_centres_when_clustering(nuclei):
    from sklearn.cluster import KMeans

    img, mask = nuclei
    mk = simulate_markers(mask, n_objects=3, seed=1)
    spec = {"ndim": 2, "layers": [{"kernel_size": 3, "filters_per_class": 3, "pool": "none"}]}
    enc, _ = run_job(fit_encoder([img], [mk], spec, seed=5))
    lay = enc.layers[0]
    mean, std = float(lay.mean.flatten()[0]), float(lay.std.flatten()[0])
    m = extract_markers(mk)
    normed = _raw_patches((img - mean) / std, m.coords).astype(np.float64)
    w = lay.conv.weight.detach().numpy().reshape(6, -1)
    for i, c in enumerate((1, 2)):
        km = KMeans(n_clusters=3, n_init=1, random_state=5, max_iter=100).fit(normed[m.classes == c])
        centres = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
        np.testing.assert_allclose(w[3 * i:3 * i + 3], centres, atol=1e-4)


def test_no_gradients_during_fitting(nuclei, monkeypatch):
    import torch

    img, mask = nuclei
    mk = simulate_markers(mask, n_objects=3, seed=0)
    seen = []
    real_conv = torch.nn.functional.conv2d

    def spy(*a, **k):
        seen.append(torch.is_grad_enabled())
        return real_conv(*a, **k)

    def refuse(*a, **k):
        raise AssertionError("backpropagation during FLIM fitting")

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    spec = {"ndim": 2, "layers": [{"filters_per_class": 4, "pool_stride": 2}, {"filters_per_class": 4}]}
    enc, _ = run_job(fit_encoder([img], [mk], spec))
    assert seen and not any(seen)
    assert all(not p.requires_grad and p.grad is None for p in enc.parameters())


def test_encoder_output_shape_and_determinism(nuclei):
    img, mask = nuclei
    mk = simulate_markers(mask, n_objects=4, seed=0)
    spec = {"ndim": 2, "layers": [{"filters_per_class": 4, "pool": "max", "pool_stride": 2},
                                  {"filters_per_class": 3, "pool": "avg", "pool_stride": 2}]}
    a, _ = run_job(fit_encoder([img], [mk], spec, seed=3))
    b, _ = run_job(fit_encoder([img], [mk], spec, seed=3))
    outs = encode(a, img[:127, :125], all_layers=True)
    assert [o.shape for o in outs] == [(8, 64, 63), (6, 32, 32)]
    assert (outs[-1] >= 0).all()  # ReLU
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and np.array_equal(va.numpy(), vb.numpy())
    np.testing.assert_array_equal(encode(a, img), encode(b, img))


def test_3d_encoder_from_supervoxel_markers(data_dir):
    d = data_dir / "flim"
    vol = tifffile.imread(d / "cells3d_nuclei_16x64x64.tif").astype(np.float32)
    lab = tifffile.imread(d / "cells3d_nuclei_16x64x64_labels.tif")
    mk = simulate_markers(lab, n_objects=3, seed=0)
    assert mk.ndim == 3 and {1, 2} <= set(np.unique(mk))
    spec = {"ndim": 3, "layers": [{"kernel_size": 3, "filters_per_class": 4, "pool_stride": 2}]}
    enc, rep = run_job(fit_encoder([vol], [mk], spec))
    assert encode(enc, vol).shape == (8, 8, 32, 32)
    net = run_job(fit_pixel_head(enc, [vol], [mk]))
    pred, probs = predict(net, vol)
    assert pred.shape == vol.shape and probs.shape == (2,) + vol.shape
    assert dice(pred == 2, lab > 0) > 0.5
    sp = superpixels(vol, 20, ndim=3)
    desc = run_job(compute_descriptors(enc, [vol, vol[:, ::-1]], n_segments=20))
    assert sp.shape == vol.shape and desc.shape == (2, 8 * 20)


def test_descriptor_sorted_one_entry_per_superpixel_per_map():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 40, 40))
    sp = np.repeat(np.arange(1, 9), 200).reshape(40, 40)  # 8 superpixels of 5 rows
    d = descriptor(maps, sp)
    assert d.shape == (3, 8)
    assert np.all(np.diff(d, axis=1) <= 0)  # non-increasing
    expected = np.array([[maps[c][sp == i].mean() for i in range(1, 9)] for c in range(3)])
    np.testing.assert_allclose(d, -np.sort(-expected, axis=1))
    with pytest.raises(ValueError, match="differ in shape"):
        descriptor(maps, sp[:20])
    # curves of different lengths are resampled to a common length
    m = descriptor_matrix([d, d[:, ::2]], n_points=8)
    assert m.shape == (2, 24)


def test_recommend_finds_the_known_farthest_and_nearest():
    X = np.array([[0.0, 0], [1, 0], [0, 1.5], [10, 10], [0.2, 0.1], [4, 4]])
    rec = recommend(X, [0], k=2)
    assert rec.farthest == [3, 5] and rec.nearest == [4, 1]
    assert rec.distance[0] == 0 and rec.distance[3] == pytest.approx(np.hypot(10, 10))
    # with two marked images, distance is to the closest marked one
    rec2 = recommend(X, [0, 3], k=1)
    assert rec2.farthest == [5] and rec2.distance[5] == pytest.approx(np.hypot(4, 4))
    with pytest.raises(ValueError, match="mark at least one"):
        recommend(X, [])
    with pytest.raises(ValueError, match="out of range"):
        recommend(X, [9])


def test_projection_tsne_and_small_sets():
    X = np.random.default_rng(0).random((12, 5))
    p, how = project(X, perplexity=30)
    assert p.shape == (12, 2) and how == "tsne" and np.isfinite(p).all()
    p, how = project(X[:3])
    assert p.shape == (3, 2) and how == "pca"


def test_recommendation_loop_and_descriptor_distances(nuclei):
    img, mask = nuclei
    # four images: three nuclei crops and one mostly empty (background) crop
    imgs = [img[:64, :64], img[64:, :64], img[:64, 64:], np.full((64, 64), img.min(), np.float32)
            + np.random.default_rng(0).normal(0, 2, (64, 64)).astype(np.float32)]
    masks = [mask[:64, :64], mask[64:, :64], mask[:64, 64:]]
    spec = {"ndim": 2, "layers": [{"filters_per_class": 2, "pool": "none"}]}
    enc, _ = run_job(fit_encoder([imgs[0]], [simulate_markers(masks[0], n_objects=3)], spec))
    D = run_job(compute_descriptors(enc, imgs, n_segments=16))
    rec = recommend(D, [0], k=1)
    assert rec.farthest == [3]  # the empty image is the most different
    chosen = run_job(recommendation_loop(
        imgs[:3], lambda i: simulate_markers(masks[i], n_objects=3), n_images=3, spec=spec, n_segments=16))
    assert chosen[0] == 0 and sorted(chosen) == [0, 1, 2]
    with pytest.raises(ValueError, match="choose must be"):
        run_job(recommendation_loop(imgs[:3], lambda i: None, choose="best"))
    h = heatmap(enc, imgs[1])
    assert h.shape == (64, 64) and h.min() == 0 and h.max() == pytest.approx(1)


def test_decoders_segment_real_nuclei(nuclei):
    img, mask = nuclei
    mk = simulate_markers(mask, n_objects=4, seed=0)
    spec = {"ndim": 2, "layers": [{"filters_per_class": 4, "pool_stride": 2}, {"filters_per_class": 4}]}
    enc, _ = run_job(fit_encoder([img], [mk], spec))
    head = run_job(fit_pixel_head(enc, [img], [mk]))
    pred, _ = predict(head, img)
    assert set(np.unique(pred)) <= {1, 2}
    assert dice(pred == 2, mask > 0) > 0.7
    net = build_network(enc, [1, 2], "unet", width=8)
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    hist = run_job(train_decoder(net, [img], [(mask > 0) + 1], steps=15, lr=5e-3))
    assert hist[-1]["loss"] < hist[0]["loss"]
    for k, v in net.encoder.state_dict().items():  # encoder frozen
        assert np.array_equal(v.numpy(), before[k].numpy())
    assert dice(predict(net, img)[0] == 2, mask > 0) > 0.5
    # the backprop baseline trains the same architecture end to end
    base = build_network(random_encoder_like(spec, 1, enc.out_channels), [1, 2], "unet", width=8)
    w0 = base.encoder.layers[0].conv.weight.detach().clone()
    run_job(train_decoder(base, [img], [(mask > 0) + 1], steps=3, train_encoder=True))
    assert not np.array_equal(w0.numpy(), base.encoder.layers[0].conv.weight.detach().numpy())


def test_save_and_load_encoder_and_network(nuclei, tmp_path):
    img, mask = nuclei
    mk = simulate_markers(mask, n_objects=4, seed=0)
    enc, _ = run_job(fit_encoder([img], [mk], {"layers": [{"filters_per_class": 3, "pool_stride": 2}]}))
    save_encoder(tmp_path / "enc", enc, class_names=["background", "nucleus"])
    again = load_encoder(tmp_path / "enc")
    np.testing.assert_array_equal(encode(enc, img), encode(again, img))
    net = run_job(fit_pixel_head(enc, [img], [mk]))
    save_network(tmp_path / "net", net)
    net2 = load_network(tmp_path / "net.pt")
    np.testing.assert_array_equal(predict(net, img)[0], predict(net2, img)[0])
    np.testing.assert_array_equal(encode(load_encoder(tmp_path / "net"), img), encode(enc, img))
    with pytest.raises(ModelFileError, match="not an encoder \\+ decoder"):
        load_network(tmp_path / "enc")
    (tmp_path / "enc.pt").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="checksum"):
        load_encoder(tmp_path / "enc")


def test_spec_from_json_and_yaml(tmp_path):
    y = tmp_path / "arch.yaml"
    y.write_text("ndim: 2\nlayers:\n  - {kernel_size: 5, filters_per_class: 4, dilation: 2}\n  - {pool: avg}\n")
    s = parse_spec(y)
    assert isinstance(s, EncoderSpec) and s.layers[0].kernel_size == 5 and s.layers[1].pool == "avg"
    assert parse_spec('{"ndim": 3, "layers": [{}]}').ndim == 3
    assert parse_spec(s.to_dict()).to_dict() == s.to_dict()
    with pytest.raises(ValueError, match="odd"):
        parse_spec({"layers": [{"kernel_size": 4}]})
    with pytest.raises(ValueError, match="unknown parameter"):
        parse_spec({"layers": [{"filtres": 4}]})
    with pytest.raises(FileNotFoundError):
        parse_spec(tmp_path / "missing.json")


def test_bad_inputs_have_clear_messages(nuclei):
    img, mask = nuclei
    mk = simulate_markers(mask, n_objects=2, seed=0)
    with pytest.raises(ValueError, match="no markers"):
        run_job(fit_encoder([img], [np.zeros_like(mk)], ONE_LAYER))
    with pytest.raises(ValueError, match="one class only"):
        run_job(fit_encoder([img], [(mk == 2).astype(int) * 2], ONE_LAYER))
    with pytest.raises(ValueError, match="do not match the image"):
        run_job(fit_encoder([img], [mk[:100]], ONE_LAYER))
    with pytest.raises(ValueError, match="filters per class were requested"):
        run_job(fit_encoder([img], [mk], {"layers": [{"filters_per_class": 10_000}]}))
    with pytest.raises(ValueError, match="2D images"):
        run_job(fit_encoder([img[None, None]], [mk], ONE_LAYER))
    enc, _ = run_job(fit_encoder([img], [mk], ONE_LAYER))
    with pytest.raises(ValueError, match="channel"):
        encode(enc, np.stack([img, img]))
    with pytest.raises(ValueError, match="one class only"):
        run_job(fit_pixel_head(enc, [img], [(mk == 1).astype(int)]))


def test_marker_statistics_ignore_pixels_outside_the_image():
    img = (np.arange(81, dtype=np.float32).reshape(9, 9) * 7) % 11 + 5
    mk = np.zeros((9, 9), int)
    mk[0, 0] = mk[0, 8] = 1  # corners: patches reach outside the image
    mk[8, 8] = mk[4, 4] = 2
    enc, _ = run_job(fit_encoder([img], [mk], ONE_LAYER))
    lay = enc.layers[0]
    inside = np.concatenate([img[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].ravel() for y, x in np.argwhere(mk)])
    assert float(lay.mean.flatten()[0]) == pytest.approx(inside.mean(), rel=1e-5)
    assert float(lay.std.flatten()[0]) == pytest.approx(inside.std(), rel=1e-5)
    normed = _raw_patches((img - inside.mean()) / inside.std(), np.argwhere(mk))  # conv's zero padding
    w = lay.conv.weight.detach().numpy().reshape(4, -1)
    want = normed / np.linalg.norm(normed, axis=1, keepdims=True)
    assert _same_rows(w, want)


def test_recommendation_loop_can_be_cancelled_inside_a_round(nuclei):
    """Issue 18 defect 16: the encoder fit and descriptors of a round ran as
    one synchronous step, so Cancel waited for the whole round."""
    from expertloop.engine.jobs import CancelToken, drive

    img, mask = nuclei
    imgs = [img[:64, :64], img[64:, :64], img[:64, 64:]]
    masks = [mask[:64, :64], mask[64:, :64], mask[:64, 64:]]
    spec = {"ndim": 2, "layers": [{"filters_per_class": 2, "pool": "none"}]}
    asked = []

    def annotate(i):
        asked.append(i)
        return simulate_markers(masks[i], n_objects=3)

    token = CancelToken()
    seen = []
    for rec in drive(recommendation_loop(imgs, annotate, n_images=3, spec=spec, n_segments=16), token):
        seen.append(rec)
        if rec.message.startswith("descriptor"):  # inside round 1: cancel there
            token.cancel()
    assert asked == [0]  # no second image was chosen or asked for
    assert any(r.message.startswith("superpixels") for r in seen)
    steps = [r.step for r in seen]
    assert steps == sorted(steps) and all(r.total == 300 for r in seen)
