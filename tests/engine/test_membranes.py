"""Membrane workflow engine (issue 4): FCN == windows, transfer, region search, project."""

from __future__ import annotations

import itertools
import json

import imageio.v3 as iio
import numpy as np
import pytest

from expertloop.engine.jobs import run_job
from expertloop.engine.membranes import (
    MembraneConfig,
    MembraneProject,
    NetConfig,
    abundance,
    bounded_abundance,
    build_net,
    grow_region,
    load_net,
    membrane_labels,
    predict_dense,
    predict_per_window,
    predict_windows,
    prefill_region,
    propose_region,
    random_region,
    region_objective,
    region_outline,
    run_simulated_rounds,
    save_net,
    simulated_expert,
    train_net,
    transfer,
    uncertainty_map,
    window_uncertainty,
)
from expertloop.engine.membranes.net import (
    balanced_samples,
    check_domains,
    conv_kernels,
    dihedral,
)
from expertloop.engine.membranes.region import is_contiguous
from expertloop.engine.persistence import ModelFileError

SMALL = dict(channels=(4, 8, 8), hidden=(16, 16))


@pytest.fixture
def crops(data_dir):
    d = data_dir / "membranes"
    src = [iio.imread(d / f"isbi_0{i}_image.png") for i in (0, 1)]
    src_lab = [membrane_labels(iio.imread(d / f"isbi_0{i}_label.png"), 0) for i in (0, 1)]
    tgt = [iio.imread(d / f"vnc_0{i}_raw.png") for i in (0, 1)]
    tgt_truth = [membrane_labels(iio.imread(d / f"vnc_0{i}_membranes.png"), 255) for i in (0, 1)]
    val = [iio.imread(d / "vnc_08_raw.png")]
    val_truth = [membrane_labels(iio.imread(d / "vnc_08_membranes.png"), 255)]
    return src, src_lab, tgt, tgt_truth, val, val_truth


# ----------------------------------------------------------------- network
@pytest.mark.parametrize("window", [16, 24, 32, 64])
def test_fcn_equals_per_window_on_random_windows(window):
    net = build_net(NetConfig(window=window, **SMALL), seed=1)
    rng = np.random.default_rng(window)
    img = rng.integers(0, 255, (window + 37, window + 21)).astype(np.uint8)
    dense = run_job(predict_dense(net, img, tile=window // 2 + 3))  # many tiles, each with a halo
    coords = np.stack([rng.integers(0, img.shape[0], 60), rng.integers(0, img.shape[1], 60)], 1)
    coords[:4] = [[0, 0], [img.shape[0] - 1, img.shape[1] - 1], [0, img.shape[1] - 1], [img.shape[0] - 1, 0]]
    per_window = predict_windows(net, img, coords)
    np.testing.assert_allclose(dense[coords[:, 0], coords[:, 1]], per_window, atol=1e-5)
    assert per_window.std() > 1e-4  # not a constant output that would match trivially


def test_dense_does_not_depend_on_tile_and_matches_full_per_window():
    net = build_net(NetConfig(window=16, **SMALL), seed=2)
    img = np.random.default_rng(3).random((40, 33)).astype(np.float32)
    a = run_job(predict_dense(net, img, tile=7))
    b = run_job(predict_dense(net, img, tile=512))
    c = run_job(predict_per_window(net, img, batch_size=97))
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-5)
    assert a.shape == img.shape and a.dtype == np.float32


def test_window_sizes_and_bad_windows():
    assert conv_kernels(64) == (5, 5, 4) and NetConfig(window=64).fc_kernel == 5
    with pytest.raises(ValueError, match="window size 8 is not supported"):
        NetConfig(window=8)


def test_image_smaller_than_window_is_refused():
    net = build_net(NetConfig(window=32, **SMALL))
    with pytest.raises(ValueError, match="smaller than the 32x32 window"):
        run_job(predict_dense(net, np.zeros((20, 100))))
    with pytest.raises(ValueError, match="2D grayscale"):
        run_job(predict_dense(net, np.zeros((3, 40, 40))))


def test_balanced_sampling_takes_all_membrane_pixels():
    lab = np.full((20, 20), 2, np.uint8)
    lab[5, :] = 1          # 20 membrane pixels
    lab[10:, 10:] = 0      # some unlabelled
    rows = balanced_samples([lab], np.random.default_rng(0))
    mem = rows[rows[:, 3] == 1]
    bg = rows[rows[:, 3] == 0]
    assert len(mem) == len(bg) == 20
    assert set(map(tuple, mem[:, 1:3])) == {(5, x) for x in range(20)}
    assert (lab[bg[:, 1], bg[:, 2]] == 2).all()
    with pytest.raises(ValueError, match="one class only: no membrane"):
        balanced_samples([np.full((5, 5), 2, np.uint8)], np.random.default_rng(0))


def test_label_proportion_sampling_keeps_every_labelled_pixel():
    lab = np.full((20, 20), 2, np.uint8)
    lab[5, :] = 1
    lab[10:, 10:] = 0
    rows = balanced_samples([lab], np.random.default_rng(0), "labels")
    assert len(rows) == int((lab > 0).sum())
    assert (rows[:, 3] == 1).sum() == 20
    assert set(map(tuple, rows[:, 1:3])) == set(map(tuple, np.argwhere(lab > 0)))
    with pytest.raises(ValueError, match="sampling must be"):
        balanced_samples([lab], np.random.default_rng(0), "natural")


def test_weight_averaging_ends_between_the_start_and_the_last_step(crops):
    src, src_lab, *_ = crops
    kw = dict(epochs=1, samples_per_epoch=256, batch_size=32, seed=0)
    start = build_net(NetConfig(window=16, **SMALL), seed=0)
    last, avg = build_net(NetConfig(window=16, **SMALL), seed=0), build_net(NetConfig(window=16, **SMALL), seed=0)
    run_job(train_net(last, src[:1], src_lab[:1], **kw))
    run_job(train_net(avg, src[:1], src_lab[:1], ema=0.9, **kw))
    w0, w1, wa = (n.fc1.weight.detach().numpy() for n in (start, last, avg))
    assert not np.allclose(wa, w1) and not np.allclose(wa, w0)
    # the same steps (same seed): the average lies closer to the last steps than to the start
    assert np.linalg.norm(wa - w1) < np.linalg.norm(w0 - w1)
    with pytest.raises(ValueError, match="ema must be"):
        run_job(train_net(avg, src[:1], src_lab[:1], ema=1.0, **kw))


def test_mc_dropout_prediction_is_a_mean_of_dropout_passes(crops):
    src, src_lab, *_ = crops
    net = build_net(NetConfig(window=16, **SMALL), seed=0)
    run_job(train_net(net, src[:1], src_lab[:1], epochs=1, samples_per_epoch=256, batch_size=32))
    img = src[0][:40, :40]
    det = run_job(predict_dense(net, img))
    import torch

    torch.manual_seed(0)
    mc = run_job(predict_dense(net, img, mc_samples=4))
    torch.manual_seed(0)
    again = run_job(predict_dense(net, img, mc_samples=4))
    np.testing.assert_array_equal(mc, again)  # reproducible under a seed
    assert not np.allclose(mc, det) and 0 <= mc.min() and mc.max() <= 1
    assert not net.training  # back in eval mode
    np.testing.assert_array_equal(run_job(predict_dense(net, img)), det)
    with pytest.raises(ValueError, match="mc_samples"):
        run_job(predict_dense(net, img, mc_samples=-1))


def test_label_polarity_is_explicit(crops, data_dir):
    raw_isbi = iio.imread(data_dir / "membranes" / "isbi_00_label.png")
    raw_vnc = iio.imread(data_dir / "membranes" / "vnc_00_membranes.png")
    a, b = membrane_labels(raw_isbi, 0), membrane_labels(raw_vnc, 255)
    assert 0.02 < (a == 1).mean() < 0.4 and 0.02 < (b == 1).mean() < 0.4
    with pytest.warns(UserWarning, match="polarity inverted"):
        membrane_labels(raw_isbi, 255)  # the wrong value: most pixels "membrane"
    with pytest.raises(ValueError, match="no pixel has the membrane value 7"):
        membrane_labels(raw_isbi, 7)
    with pytest.raises(ValueError, match="one class only"):
        membrane_labels(np.zeros((4, 4)), 0)


def test_source_and_target_must_match():
    with pytest.raises(ValueError, match="same dtype"):
        check_domains([np.zeros((32, 32), np.uint8)], [np.zeros((32, 32), np.uint16)])
    with pytest.raises(ValueError, match="2D grayscale"):
        check_domains([np.zeros((32, 32), np.uint8)], [np.zeros((2, 32, 32), np.uint8)])


def test_frozen_layers_do_not_change_and_fine_tuned_do(crops):
    src, src_lab, tgt, tgt_truth, *_ = crops
    source = build_net(NetConfig(window=16, **SMALL), seed=0)
    frozen = transfer(source, 3, "frozen", seed=5)
    tuned = transfer(source, 3, "fine-tuned", seed=5)
    for name in ("conv1", "conv2", "conv3"):
        assert np.array_equal(getattr(frozen, name).weight.detach(), getattr(source, name).weight.detach())
    assert not np.array_equal(frozen.fc1.weight.detach(), source.fc1.weight.detach())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    kw = dict(epochs=1, samples_per_epoch=256, batch_size=32, seed=0)
    run_job(train_net(frozen, tgt[:1], tgt_truth[:1], **kw))
    run_job(train_net(tuned, tgt[:1], tgt_truth[:1], **kw))
    after = frozen.state_dict()
    for k in before:
        same = np.array_equal(before[k], after[k])
        assert same == k.startswith(("conv1", "conv2", "conv3")), k
    assert not np.array_equal(tuned.conv1.weight.detach(), source.conv1.weight.detach())
    with pytest.raises(ValueError, match="mode must be"):
        transfer(source, 3, "thawed")


def test_training_learns_membranes(crops):
    src, src_lab, *_ = crops
    net = build_net(NetConfig(window=16, **SMALL), seed=0)
    hist = run_job(train_net(net, src, src_lab, epochs=3, samples_per_epoch=512, batch_size=32,
                             optimizer="sgd", lr=2e-2))
    assert hist.epochs[-1]["loss"] < hist.epochs[0]["loss"]
    prob = run_job(predict_dense(net, src[0]))
    mem = src_lab[0] == 1
    assert prob[mem].mean() > prob[~mem].mean() + 0.1


def test_dihedral_augmentation_keeps_the_centre_and_gives_all_eight_symmetries():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 1, 7, 7)).astype(np.float32)
    x[:] = x[:1]  # eight copies of one window
    out = dihedral(x, np.arange(8))
    assert np.all(out[:, 0, 3, 3] == x[0, 0, 3, 3])  # odd window: the centre stays in place
    assert np.array_equal(out[0], x[0])  # code 0: identity
    assert np.array_equal(out[1, 0], x[0, 0].T)
    assert np.array_equal(out[2, 0], x[0, 0, ::-1])
    assert np.array_equal(out[4, 0], x[0, 0, :, ::-1])
    assert len({o.tobytes() for o in out}) == 8
    assert np.array_equal(x[1], x[0])  # the input is not modified
    # the windows keep their values (a permutation of the pixels)
    assert np.allclose(np.sort(out.reshape(8, -1), 1), np.sort(x.reshape(8, -1), 1))


def test_training_without_augmentation_is_reproducible_and_differs_with_it(crops):
    src, src_lab, *_ = crops
    kw = dict(epochs=1, samples_per_epoch=128, batch_size=32)
    nets = [build_net(NetConfig(window=16, **SMALL), seed=0) for _ in range(3)]
    for net, aug in zip(nets, (False, False, True)):
        run_job(train_net(net, src[:1], src_lab[:1], augment=aug, **kw))
    w = [n.conv1.weight.detach().numpy() for n in nets]
    assert np.array_equal(w[0], w[1])
    assert not np.allclose(w[0], w[2])


def test_model_file_roundtrip_and_corruption(tmp_path):
    net = transfer(build_net(NetConfig(window=16, **SMALL)), 2, "frozen")
    save_net(tmp_path / "m", net, kind="target")
    loaded, meta = load_net(tmp_path / "m")
    img = np.random.default_rng(0).random((20, 20))
    np.testing.assert_array_equal(run_job(predict_dense(net, img)), run_job(predict_dense(loaded, img)))
    assert loaded.frozen == ("conv1", "conv2") and not loaded.conv1.weight.requires_grad
    assert meta["workflow"] == "membranes"
    (tmp_path / "m.pt").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="checksum"):
        load_net(tmp_path / "m")
    with pytest.raises(ModelFileError, match="not found"):
        load_net(tmp_path / "missing")


# ----------------------------------------------------------------- region search
def test_uncertainty_by_hand():
    p = np.array([[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 0.0, 1.0], [0.9, 0.9, 0.4, 0.6], [0.9, 0.9, 0.6, 0.4]])
    f = window_uncertainty(p, 2)
    np.testing.assert_allclose(f, [[0.0, 0.5], [0.4, 0.1]], atol=1e-6)
    np.testing.assert_allclose(uncertainty_map([0.5, 0.9, 0.0]), [0.5, 0.1, 0.0], atol=1e-6)


def test_abundance_sums_to_one_and_favours_repeated_patterns():
    rng = np.random.default_rng(0)
    w = 16
    yy, xx = np.mgrid[0:w, 0:w]
    pattern = np.sin(xx / 2.0) * 50 + 100  # vertical stripes
    img = np.zeros((4 * w, 4 * w))
    repeated = []
    for r in range(4):
        for c in range(4):
            if (r + c) % 4 == 0 and (r, c) != (3, 1):  # a few unique random windows
                tile = rng.random((w, w)) * 200
            else:
                tile = pattern + rng.normal(0, 3, (w, w))
                repeated.append((r, c))
            img[r * w:(r + 1) * w, c * w:(c + 1) * w] = tile
    a = abundance([img, img[: 2 * w]], w, n_clusters=4, downsample=2)
    assert a.fractions.sum() == pytest.approx(1.0)
    assert len(a.scores) == 2 and a.scores[0].shape == (4, 4) and a.scores[1].shape == (2, 4)
    # every window's score is the fraction of all windows in its cluster
    all_ids = np.concatenate([c.ravel() for c in a.clusters])
    for k, frac in enumerate(a.fractions):
        assert frac == pytest.approx(np.mean(all_ids == k))
    rep = np.array([a.scores[0][r, c] for r, c in repeated])
    uniq = np.array([a.scores[0][r, c] for r in range(4) for c in range(4) if (r, c) not in repeated])
    assert rep.min() > uniq.max()


def test_region_objective_by_hand():
    f = np.array([[0.1, 0.3]])
    s = np.array([[0.2, 0.4]])
    # 0.8 * mean(0.1, 0.3) + 0.2 * (1 - 0.6) = 0.16 + 0.08
    assert region_objective(f, s, [(0, 0), (0, 1)], 0.8) == pytest.approx(0.24)


def _connected_subsets(shape, max_size):
    cells = list(itertools.product(range(shape[0]), range(shape[1])))
    for n in range(1, max_size + 1):
        for sub in itertools.combinations(cells, n):
            if is_contiguous(sub):
                yield sub


def test_greedy_finds_the_known_optimum():
    # an uncertain (low f), abundant L-shaped valley in a confident grid
    f = np.array([[0.45, 0.45, 0.45, 0.45],
                  [0.02, 0.05, 0.45, 0.45],
                  [0.45, 0.03, 0.45, 0.01],
                  [0.45, 0.04, 0.45, 0.45]])
    s = np.full(f.shape, 0.05)
    s[(1, 1, 2, 3), (0, 1, 1, 1)] = 0.3  # abundant pattern along the valley
    best = min(_connected_subsets(f.shape, 5), key=lambda sub: region_objective(f, s, sub, 0.8))
    cells, obj = grow_region(f, s, lam=0.8, max_windows=5, n_seeds=None)
    assert set(cells) == set(best) == {(1, 0), (1, 1), (2, 1), (3, 1)}
    assert obj == pytest.approx(region_objective(f, s, best, 0.8))
    # the isolated, most uncertain window (2, 3) is rare: it loses to the abundant valley
    assert (2, 3) not in cells


def test_region_is_contiguous_whole_windows_and_respects_limits():
    rng = np.random.default_rng(1)
    f_maps = [rng.random((6, 7)) * 0.5 for _ in range(3)]
    s_maps = [rng.random((6, 7)) * 0.05 for _ in range(3)]
    allowed = [np.ones((6, 7), bool) for _ in range(3)]
    allowed[0][:, :4] = False
    reg = propose_region(f_maps, s_maps, 16, lam=0.8, max_windows=5, allowed=allowed, n_seeds=16)
    assert is_contiguous(reg.cells) and 1 <= reg.n_windows <= 5
    assert all(allowed[reg.image][r, c] for r, c in reg.cells)
    mask = reg.mask((6 * 16 + 5, 7 * 16))
    assert mask.sum() == reg.n_windows * 16 * 16 == reg.area
    for r, c in reg.cells:
        assert mask[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].all()
    with pytest.raises(ValueError, match="all are excluded"):
        grow_region(f_maps[0], s_maps[0], lam=0.8, max_windows=6, n_seeds=16,
                    allowed=np.zeros((6, 7), bool))
    rnd = random_region([(6, 7)], 5, 16, np.random.default_rng(0))
    assert rnd.n_windows == 5 and is_contiguous(rnd.cells)


def test_bounded_abundance_keeps_uncertainty_in_charge_on_a_small_pool():
    # one big cluster of CERTAIN windows, the rest rare and uncertain
    f = np.full((4, 4), 0.1)
    s = np.full((4, 4), 0.02)
    f[:, :2], s[:, :2] = 0.45, 0.6  # left half: common and certain
    raw_cells, _ = grow_region(f, s, lam=0.8, max_windows=4, n_seeds=None)
    assert all(c < 2 for _, c in raw_cells)  # unscaled: abundance wins, certain windows are chosen
    (scaled,) = bounded_abundance([s], 4)
    assert np.isclose(np.sort(scaled.ravel())[-4:].sum(), 1.0)
    cells, _ = grow_region(f, scaled, lam=0.8, max_windows=4, n_seeds=None)
    assert all(c >= 2 for _, c in cells)  # scaled: the uncertain windows are chosen
    # a pool whose regions already sum below 1 is left alone; several maps share one scale
    small = [np.full((3, 3), 0.01), np.full((2, 2), 0.02)]
    assert all(np.array_equal(a, b) for a, b in zip(bounded_abundance(small, 6), small))
    big = bounded_abundance([np.full((3, 3), 0.5), np.full((2, 2), 0.25)], 2)
    assert np.isclose(big[0][0, 0], 0.5) and np.isclose(big[1][0, 0], 0.25)


def test_outline_traces_an_l_shape():
    polys = region_outline([(0, 0), (0, 1), (1, 1)], 10)
    assert len(polys) == 1
    assert {tuple(p) for p in polys[0]} == {(0, 0), (0, 20), (20, 20), (20, 10), (10, 10), (10, 0)}
    ring = [(r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)]
    assert len(region_outline(ring, 1)) == 2  # outside and the hole


# ----------------------------------------------------------------- project / loop
def test_project_rounds_resume_and_bad_steps(crops, tmp_path):
    src, src_lab, tgt, tgt_truth, val, val_truth = crops
    few = np.zeros_like(tgt_truth[0])
    few[:32, :32] = tgt_truth[0][:32, :32]
    cfg = MembraneConfig(net=NetConfig(window=16, channels=4), source_epochs=1, target_epochs=1,
                         round_epochs=1, samples_per_epoch=256, max_windows=3)
    project = MembraneProject.create(tmp_path / "p", tgt, [few, np.zeros_like(few)],
                                     validation_images=val, validation_truths=val_truth, config=cfg)
    with pytest.raises(RuntimeError, match="no target network"):
        run_job(project.propose())
    with pytest.raises(RuntimeError, match="no proposed region"):
        project.accept(few)
    with pytest.raises(ValueError, match="same dtype"):
        run_job(project.train_source([s.astype(np.uint16) for s in src], src_lab))
    run_job(project.train_source(src, src_lab))
    rec0 = run_job(project.transfer())
    assert rec0["round"] == 0 and 0 <= rec0["f1"] <= 1
    out = run_job(project.propose())
    reg = out["region"]
    assert out["prob"].shape == tgt[reg.image].shape and out["uncertainty"].max() <= 0.5
    # labelled windows are never proposed
    assert not project.target_labels[reg.image][reg.mask(few.shape)].any()
    # the expert's labels outside the region are ignored
    expert = prefill_region(project.target_labels[reg.image], out["prob"], reg.mask(few.shape))
    expert[:] = np.where(expert == 0, 1, expert)
    taken = project.accept(expert)
    assert taken == reg.area
    outside = ~reg.mask(few.shape)
    initial = [few, np.zeros_like(few)][reg.image]
    assert np.array_equal(project.target_labels[reg.image][outside], initial[outside])
    rec1 = run_job(project.retrain())
    assert rec1["round"] == 1

    again = MembraneProject.open(tmp_path / "p")  # resume after a restart
    assert again.round == 1 and [s["round"] for s in again.scores] == [0, 1]
    assert np.array_equal(again.target_labels[reg.image], project.target_labels[reg.image])
    assert again.model is not None and len(again.state["regions"]) == 1
    records = run_job(run_simulated_rounds(again, tgt_truth, 1, strategy="random"))
    assert records[0]["round"] == 2 and records[0]["region"]["info"]["strategy"] == "random"
    journal = [json.loads(x) for x in (tmp_path / "p" / "journal.jsonl").read_text().splitlines()]
    assert [r["event"] for r in journal].count("trained") == 3
    with pytest.raises(FileExistsError):
        MembraneProject.create(tmp_path / "p", tgt)
    with pytest.raises(FileNotFoundError, match="not a membrane project"):
        MembraneProject.open(tmp_path / "nothing")


def test_simulated_expert_copies_truth_inside_only():
    labels = np.zeros((4, 4), np.uint8)
    truth = np.full((4, 4), 2, np.uint8)
    truth[1] = 1
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    out = simulated_expert(labels, truth, mask)
    assert out[:2, :2].tolist() == [[2, 2], [1, 1]] and not out[~mask].any()


def test_project_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="smaller than the 16x16 window"):
        MembraneProject.create(tmp_path / "a", [np.zeros((10, 40), np.uint8)],
                               config=MembraneConfig(net=NetConfig(window=16, **SMALL)))
    with pytest.raises(ValueError, match="0 = unlabelled, 1 = membrane, 2 = not membrane"):
        MembraneProject.create(tmp_path / "b", [np.zeros((20, 20), np.uint8)], [np.full((20, 20), 255)],
                               config=MembraneConfig(net=NetConfig(window=16, **SMALL)))
    p = MembraneProject.create(tmp_path / "c", [np.zeros((20, 20), np.uint8)],
                               config=MembraneConfig(net=NetConfig(window=16, **SMALL)))
    (tmp_path / "c" / "models").mkdir()
    with pytest.raises(FileNotFoundError, match="no source model"):
        run_job(p.transfer())
