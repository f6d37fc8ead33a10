"""Blood workflow engine: regions, metrics, detector, heads, GBC, bundle."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from expertloop.engine.blood import (
    AbnormalClassifier,
    BloodSample,
    average_precision,
    box_iou,
    clip_boxes,
    coco_map,
    detect,
    detection_ap,
    load_blood_model,
    mask_to_boxes,
    match_detections,
    merge_boxes,
    new_blood_model,
    predict_image,
    samples_from_instances,
    save_blood_model,
    synthetic_smear,
    to_rgb01,
    train_blood_model,
    train_detector,
    train_type_heads,
    type_probabilities,
)
from expertloop.engine.jobs import run_job
from expertloop.engine.persistence import ModelFileError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: much faster than two on a loaded 2-core CI machine."""
    from expertloop.engine.backend import get_torch

    torch = get_torch()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_model(**kw):
    args = dict(det_backbone="mobilenet_v2", embedder="resnet18", pretrained=False, patch_size=32,
                min_size=96, max_size=96, hidden=16, max_regions=12, seed=0)
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return new_blood_model(**args)


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained 2 detector iterations + heads on a synthetic smear."""
    img, inst, kinds = synthetic_smear((96, 96), 6, touching=0.6, radius=9, seed=3)
    sample = samples_from_instances(img, inst, kinds)
    m = _tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_job(train_blood_model(m, [sample], det_epochs=2, head_epochs=5, batch_size=1))
    return m, img


# ------------------------------------------------------------ regions
def test_mask_to_boxes_touching_cells_form_one_region():
    mask = np.zeros((20, 30), np.int32)
    mask[2:6, 2:6] = 1  # cell 1
    mask[2:6, 6:9] = 2  # cell 2, touching cell 1 -> one region
    mask[12:15, 20:25] = 3  # alone
    mask[15:18, 25:27] = 4  # touches cell 3 only diagonally: pixels (14, 24) and (15, 25)
    r = mask_to_boxes(mask, cell_types={1: "A", 2: "B", 3: "A", 4: "C"})
    assert r.boxes.tolist() == [[2, 2, 9, 6], [20, 12, 27, 18]]
    assert r.members == [[1, 2], [3, 4]]
    assert r.types == [frozenset("AB"), frozenset("AC")]
    r4 = mask_to_boxes(mask, connectivity=1, cell_types=["A", "B", "A", "C"])
    assert r4.boxes.tolist() == [[2, 2, 9, 6], [20, 12, 25, 15], [25, 15, 27, 18]]
    assert r4.n_cells.tolist() == [2, 1, 1]
    assert len(mask_to_boxes(mask > 0)) == 2
    assert len(mask_to_boxes(np.zeros((5, 5), bool))) == 0


def test_mask_to_boxes_bad_input():
    with pytest.raises(ValueError, match="2D"):
        mask_to_boxes(np.zeros((2, 5, 5), int))
    with pytest.raises(ValueError, match="integer"):
        mask_to_boxes(np.zeros((5, 5), float))
    with pytest.raises(ValueError, match="no type"):
        mask_to_boxes(np.ones((5, 5), int) * 2, cell_types=["A"])


def test_merge_boxes_chains_and_threshold():
    boxes = [[0, 0, 10, 10], [8, 8, 20, 20], [19, 0, 25, 9], [40, 40, 50, 50], [18, 18, 30, 30]]
    r = merge_boxes(boxes, ["RBC", "RBC", "WBC", "RBC", "Platelets"])
    # any overlap links: 0-1 (4 px²), 1-2 (1 px²), 1-4 (4 px²); box 3 is alone
    assert r.members == [[0, 1, 2, 4], [3]]
    assert r.boxes.tolist() == [[0, 0, 30, 30], [40, 40, 50, 50]]
    assert r.types == [frozenset({"RBC", "WBC", "Platelets"}), frozenset({"RBC"})]
    assert r.n_cells.tolist() == [4, 1]
    # relative to the smaller box: 0-1 4/100, 1-2 1/54, 1-4 4/144
    assert merge_boxes(boxes, min_overlap=0.02).members == [[0, 1, 4], [2], [3]]
    assert merge_boxes(boxes, min_overlap=0.1).members == [[0], [1], [2], [3], [4]]
    # growing each box by 3 px makes the overlaps 64/256, 49/180, 64/324
    assert merge_boxes(boxes, min_overlap=0.1, gap=3).members == [[0, 1, 2, 4], [3]]
    with pytest.raises(ValueError, match="labels"):
        merge_boxes(boxes, ["RBC"])


def test_box_helpers():
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)
    with pytest.warns(UserWarning, match="outside"):
        c, keep = clip_boxes([[-5, 0, 10, 10], [200, 200, 210, 210], [1, 1, 3, 3]], (100, 100))
    assert keep.tolist() == [True, False, True]
    assert c.tolist() == [[0, 0, 10, 10], [1, 1, 3, 3]]
    with pytest.raises(ValueError, match="x1 >= x0"):
        box_iou([[10, 0, 0, 10]], [[0, 0, 1, 1]])


def test_synthetic_smear_has_touching_multi_type_regions():
    img, inst, kinds = synthetic_smear((128, 128), 10, touching=0.8, seed=0)
    assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
    assert inst.max() == len(kinds)
    r = mask_to_boxes(inst, cell_types=kinds)
    assert any(len(m) > 1 for m in r.members)
    assert all(t <= set(kinds) for t in r.types)


# ------------------------------------------------------------ metrics (hand-computed)
def test_average_precision_hand_computed():
    # 2 ground-truth boxes, detections ranked TP, FP, TP:
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    ap = average_precision([0.9, 0.8, 0.7], [True, False, True], 2)
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # COCO: 51 recall points <= 0.5 at precision 1, 50 points above at 2/3
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 2, method="coco") == pytest.approx(
        (51 + 50 * 2 / 3) / 101)
    assert average_precision([], [], 3) == 0.0
    assert np.isnan(average_precision([0.5], [False], 0))


def test_matching_and_detection_ap():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    pred = [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 31]]
    tp = match_detections(pred, [0.9, 0.8, 0.7], gt)
    assert tp.tolist() == [True, False, True]  # the duplicate is a false positive
    preds = [{"boxes": pred, "scores": [0.9, 0.8, 0.7], "labels": ["RBC", "RBC", "WBC"]}]
    gts = [{"boxes": gt, "labels": ["RBC", "WBC"]}]
    ap = detection_ap(preds, gts)
    assert ap == {"RBC": pytest.approx(1.0), "WBC": pytest.approx(1.0)}
    # IoU of the WBC box is 100/110 = 0.909 < 0.95: COCO mAP is below 1
    c = coco_map(preds, gts)
    assert c["mAP50"] == pytest.approx(1.0)
    assert c["per_class"]["RBC"] == pytest.approx(1.0)
    assert c["per_class"]["WBC"] == pytest.approx(9 / 10)  # matched at IoU .50..0.90
    assert c["mAP"] == pytest.approx(0.95)


# ------------------------------------------------------------ images
def test_to_rgb01_handles_16bit_grey_rgba():
    g16 = (np.arange(64 * 64).reshape(64, 64) * 10).astype(np.uint16)
    out = to_rgb01(g16)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    assert out.min() == 0 and out.max() == 1 and np.all(out[..., 0] == out[..., 2])
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 7
    out = to_rgb01(rgba)
    assert out.shape == (20, 30, 3) and out[..., 0].min() == 1 and out[..., 1].max() == 0
    assert to_rgb01(np.zeros((20, 30, 1), np.uint8)).shape == (20, 30, 3)
    with pytest.raises(ValueError, match="grey, RGB or RGBA"):
        to_rgb01(np.zeros((3, 20, 30, 3)))


# ------------------------------------------------------------ detector
def test_detector_loss_falls():
    img, inst, kinds = synthetic_smear((80, 80), 4, touching=0.0, radius=9, seed=5)
    s = samples_from_instances(img, inst, kinds)
    m = _tiny_model(min_size=80, max_size=80)
    losses = run_job(train_detector(m, [s], epochs=8, batch_size=1, lr=0.01, augment=False))
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    assert m.train_image_size == (80, 80)


def test_detector_progress_moves_with_the_time_limit():
    """Issue 19 item 3: with a time limit that stops training long before the
    epochs run out, progress follows the clock instead of sitting near 0 %."""
    img, inst, kinds = synthetic_smear((64, 64), 3, touching=0.0, radius=8, seed=1)
    s = samples_from_instances(img, inst, kinds)
    m = _tiny_model(min_size=64, max_size=64)
    job = train_detector(m, [s], epochs=10_000, batch_size=1, augment=False, time_limit=1.5)
    seen = []
    try:
        while True:
            seen.append(next(job))
    except StopIteration as stop:
        losses = stop.value
    assert seen[0].fraction == 0.0 and "first of 10000 iterations" in seen[0].message
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions)  # never goes back
    assert len(losses) < 10_000  # stopped by the clock
    assert fractions[-2] > 0.5  # before the "time limit reached" record: the clock ran out
    assert "s left" in seen[1].message


def test_detector_progress_comes_while_an_iteration_runs():
    """Issue 19 item 3: an iteration runs in a helper thread and progress comes
    every ``heartbeat`` seconds meanwhile (a slow CPU iteration does not freeze
    the bar); closing the job (Cancel) mid-iteration waits for it and leaves
    the detector in eval mode with no helper thread behind."""
    import threading

    img, inst, kinds = synthetic_smear((96, 96), 4, touching=0.0, radius=8, seed=2)
    s = samples_from_instances(img, inst, kinds)
    m = _tiny_model()
    job = train_detector(m, [s], epochs=3, batch_size=1, augment=False, heartbeat=0.005)
    seen = []
    for p in job:
        seen.append(p)
    running = [p for p in seen if "running" in p.message]
    assert running, [p.message for p in seen]
    assert "iteration 1 running" in running[0].message
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert max(fractions[i] for i, p in enumerate(seen) if "iteration 1 running" in p.message) == 0.0
    # cancel while the second iteration runs
    job = train_detector(m, [s], epochs=50, batch_size=1, augment=False, heartbeat=0.005)
    for p in job:
        if "iteration 2 running" in p.message:
            break
    job.close()
    assert not m.detector.training
    assert not [t for t in threading.enumerate() if t.name.startswith("blood-detector")]


def test_detector_rejects_bad_annotations():
    m = _tiny_model()
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="no annotated boxes"):
        run_job(train_detector(m, [BloodSample(img, np.zeros((0, 4)))]))
    with pytest.raises(ValueError, match="not detector classes"):
        run_job(train_detector(m, [BloodSample(img, [[1, 1, 9, 9]], ["WBC"])]))
    with pytest.raises(ValueError, match="nothing to train"):
        run_job(train_blood_model(m, [BloodSample(img, np.zeros((0, 4)))]))
    with pytest.warns(UserWarning, match="outside"):
        s = BloodSample(img, [[50, 50, 90, 90], [70, 70, 80, 80]], ["cell", "cell"]).checked()
    assert s.boxes.tolist() == [[50, 50, 64, 64]]


def test_large_image_is_tiled(trained):
    m, _ = trained
    big = np.zeros((200, 200, 3), np.uint8)
    messages = []
    run_job(detect(m, big), on_progress=lambda p: messages.append(p.message))
    assert any("much larger" in msg and "tiles" in msg for msg in messages)


# ------------------------------------------------------------ heads and GBC
def test_type_heads_give_independent_multilabel_probabilities():
    rng = np.random.default_rng(0)
    m = _tiny_model(type_names=["A", "B", "C"], abnormal_types=["C"])
    dim = m.heads.heads[0][0].in_features
    base = {t: rng.normal(0, 1, dim) for t in "ABC"}
    sets = [frozenset(s) for s in ["A", "B", "C", "AB", "AC", "BC"] * 8]
    x = np.stack([sum(base[t] for t in s) + rng.normal(0, 0.3, dim) for s in sets]).astype(np.float32)
    run_job(train_type_heads(m, x, sets, epochs=40, lr=3e-3))
    p = type_probabilities(m, x[3:4])  # an "AB" region
    assert p[0, 0] > 0.5 and p[0, 1] > 0.5 and p[0, 2] < 0.5
    assert p.sum() > 1.0  # multi-label: not a softmax
    # independence: changing head C does not change A's or B's output
    with __import__("torch").no_grad():
        m.heads.heads[2][-1].bias += 5
    q = type_probabilities(m, x[3:4])
    assert q[0, :2] == pytest.approx(p[0, :2]) and q[0, 2] > p[0, 2]
    with pytest.raises(ValueError, match="not one of the model's types"):
        run_job(train_type_heads(m, x[:2], [{"A"}, {"Z"}]))


def test_abnormal_classifier_matches_sklearn():
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(1)
    x = rng.random((120, 6))
    y = (x[:, 1:].max(axis=1) > 0.8).astype(int)
    clf = AbnormalClassifier.fit(x, y, seed=0)
    ref = GradientBoostingClassifier(random_state=0).fit(x, y)
    xt = rng.random((50, 6))
    assert clf.predict_proba(xt) == pytest.approx(ref.predict_proba(xt)[:, 1], abs=1e-9)
    assert np.mean((clf.predict_proba(xt) > 0.5) == (xt[:, 1:].max(axis=1) > 0.8)) > 0.85
    with pytest.raises(ValueError, match="both normal and abnormal"):
        AbnormalClassifier.fit(x, np.zeros(120))


# ------------------------------------------------------------ bundle
def test_bundle_round_trip_identical_outputs(trained, tmp_path):
    m, img = trained
    r1 = run_job(predict_image(m, img))
    assert len(r1) > 0 and r1.type_probs.shape == (len(r1), 6)
    save_blood_model(tmp_path / "blood", m)
    m2 = load_blood_model(tmp_path / "blood.pt")
    r2 = run_job(predict_image(m2, img))
    np.testing.assert_array_equal(r1.boxes, r2.boxes)
    np.testing.assert_allclose(r1.type_probs, r2.type_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r1.abnormal, r2.abnormal, rtol=1e-6)
    assert m2.type_names == m.type_names and m2.train_image_size == (96, 96) and m2.max_regions == 12
    assert (m2.abnormal is None) == (m.abnormal is None)
    # corrupt weights file: a clear error
    (tmp_path / "blood.pt").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="corrupt"):
        load_blood_model(tmp_path / "blood")
    with pytest.raises(ModelFileError, match="not found"):
        load_blood_model(tmp_path / "missing")


def test_result_table_and_summary(trained):
    from expertloop.engine.blood import predict_images

    m, img = trained
    r = run_job(predict_image(m, img, score_threshold=0.0))
    batch = run_job(predict_images(m, [img, lambda: img[..., 0]], names=["rgb", "grey"], score_threshold=0.0))
    assert [b.name for b in batch] == ["rgb", "grey"]
    np.testing.assert_allclose(batch[0].boxes, r.boxes)
    tab = r.table(score_threshold=0.0)
    assert len(tab["x0"]) == len(r) and "p_Oval/Disc" in tab and "abnormal_score" in tab
    hi = float(np.median(r.scores))
    assert r.summary(score_threshold=hi)["regions"] == int((r.scores >= hi).sum())
    s = r.summary(score_threshold=0.0, type_threshold=0.0)
    assert all(v == len(r) for v in s["per_type"].values())


def test_new_model_validates_names():
    with pytest.raises(ValueError, match="unique"):
        _tiny_model(type_names=["A", "A"])
    with pytest.raises(ValueError, match="abnormal types"):
        _tiny_model(type_names=["A"], abnormal_types=["B"])
    with pytest.raises(ValueError, match="unknown detector backbone"):
        _tiny_model(det_backbone="vgg")


def test_imagenet_mobilenet_v2_backbone(imagenet_torch_home):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the weights are there: no random-init warning
        m = new_blood_model(det_backbone="mobilenet_v2", embedder="mobilenet_v2", pretrained=True,
                            min_size=64, max_size=64, hidden=8)
    assert m.backbone_pretrained and m.embedder_pretrained and m.frozen_bn
    img = synthetic_smear((64, 64), 2, seed=0)[0]
    assert run_job(detect(m, img))["boxes"].shape[1] == 4


def test_random_init_warns_when_weights_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("EXPERTLOOP_WEIGHTS_DIR", raising=False)
    from expertloop.engine.features import (
        WeightsUnavailableWarning,
        find_offline_weights,
    )

    # ResNet-18's ImageNet file is nowhere here: the embedder warns and is random.
    # MobileNetV2's comes from the offline weights package when it is installed.
    with pytest.warns(WeightsUnavailableWarning, match="RANDOM.*resnet18-f37072fd.pth"):
        m = new_blood_model(det_backbone="mobilenet_v2", embedder="resnet18", pretrained="auto",
                            min_size=64, max_size=64, hidden=8)
    assert not m.embedder_pretrained
    offline = find_offline_weights("MobileNet_V2_Weights.IMAGENET1K_V1")
    assert m.backbone_pretrained is (offline is not None)


def test_checking_a_sample_twice_keeps_its_intensities():
    """Regression: checked() used to convert the image, and a second check
    (train_blood_model then train_detector) re-stretched it, so training saw
    other contrasts than prediction."""
    from expertloop.engine.blood.model import BloodSample, to_rgb01

    rng = np.random.default_rng(0)
    img = rng.integers(60, 200, (40, 50, 3), dtype=np.uint8)
    s = BloodSample(img, np.array([[5, 5, 20, 20]]), ["cell"], [frozenset()])
    twice = s.checked().checked()
    assert twice.image.dtype == np.uint8
    np.testing.assert_array_equal(to_rgb01(twice.image), to_rgb01(img))


def test_small_object_detector_uses_stride_16_features_and_8px_anchors(tmp_path):
    """The small-object variant (issue 17): stride-16 MobileNetV2 features, anchors from 8 px;
    trains, detects, and comes back from a saved file with the same architecture."""
    torch = pytest.importorskip("torch")
    m = _tiny_model(det_backbone="mobilenet_v2_small")
    det = m.detector
    assert det.rpn.anchor_generator.sizes == ((8, 16, 32, 64, 128, 256),)
    with torch.no_grad():
        fmap = det.backbone(torch.zeros(1, 3, 96, 96))
    assert fmap.shape[-2:] == (6, 6)  # stride 16 (the default backbone: stride 32)
    img, inst, kinds = synthetic_smear((96, 96), 4, radius=5, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses = run_job(train_detector(m, [samples_from_instances(img, inst, kinds)], epochs=1, batch_size=1))
    assert len(losses) == 1 and np.isfinite(losses[0])
    out = run_job(detect(m, img))
    save_blood_model(tmp_path / "small", m)
    back = load_blood_model(tmp_path / "small.pt")
    assert back.det_backbone == "mobilenet_v2_small"
    again = run_job(detect(back, img))
    assert np.allclose(again["boxes"], out["boxes"], atol=1e-4)
