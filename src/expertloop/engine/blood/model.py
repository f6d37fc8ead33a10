"""Detector, region features, per-type heads, abnormal classifier, one bundle.

The pipeline of Qiu et al. (multi-label RBC detection and classification):

1. a Faster R-CNN proposes (single- or multi-cell) regions on the whole image;
2. each region, resized to ``patch_size``², is embedded by a CNN;
3. one small binary network per cell type (``dim -> 512 -> 1``) gives the
   probability that the region contains that type (multi-label, independent);
4. a gradient-boosting classifier on the per-type probabilities scores the
   region as abnormal.

Torch and torchvision are imported lazily (through ``engine.backend``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expertloop.engine.backend import get_torch, get_torchvision
from expertloop.engine.blood.regions import (
    PAPER_ABNORMAL,
    PAPER_TYPES,
    as_boxes,
    clip_boxes,
)
from expertloop.engine.config import param
from expertloop.engine.device import select_device
from expertloop.engine.features import (
    EMBEDDERS,
    images_to_batch,
    load_torchvision_model,
)
from expertloop.engine.jobs import Job, Progress
from expertloop.engine.seed import seed_everything

WORKFLOW = "blood"

#: detector backbones: name -> (torchvision builder, ImageNet weights, note)
DETECTOR_BACKBONES = {
    "resnet50_fpn": ("resnet50", "ResNet50_Weights.IMAGENET1K_V1",
                     "ResNet-50 + FPN (as in the paper's family; slow on CPU)"),
    "mobilenet_v3_fpn": ("mobilenet_v3_large", "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
                         "MobileNetV3-Large + FPN (light)"),
    "mobilenet_v2": ("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1",
                     "MobileNetV2, single feature map (light)"),
    "mobilenet_v2_small": ("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1",
                           "MobileNetV2 cut at stride 16, anchors from 8 px (small cells such as platelets)"),
}


# ------------------------------------------------------------ images
def to_rgb01(image) -> np.ndarray:
    """A 2D grey / RGB / RGBA image of any dtype -> ``(H, W, 3)`` float32 in [0, 1].

    8-bit data is divided by 255; other types (16-bit, float) are stretched
    between their 0.5 and 99.5 percentiles. An alpha channel is dropped and a
    single channel is repeated.
    """
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    elif not (a.ndim == 3 and a.shape[-1] in (3, 4)):
        raise ValueError(
            f"expected a 2D grey, RGB or RGBA image, got shape {a.shape}; "
            "for a stack, pass one plane at a time"
        )
    a = a[..., :3]
    if min(a.shape[:2]) < 8:
        raise ValueError(f"image too small for detection: {a.shape[:2]}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == bool:
        return a.astype(np.float32)
    f = a.astype(np.float32)
    lo, hi = np.percentile(f, (0.5, 99.5))
    return np.clip((f - lo) / (hi - lo if hi > lo else 1.0), 0, 1).astype(np.float32)


# ------------------------------------------------------------ detector
def build_detector(backbone: str = "mobilenet_v2", n_classes: int = 1, *,
                   pretrained: bool | str = "auto", min_size: int = 480, max_size: int = 640,
                   frozen_bn: bool | None = None, max_regions: int = 300):
    """A torchvision Faster R-CNN for ``n_classes`` foreground classes.

    Returns ``(model, used_pretrained_backbone)``. ``backbone`` is one of
    :data:`DETECTOR_BACKBONES`. ImageNet backbone weights come through
    torchvision's weights API (``pretrained="auto"``: random init with a
    ``WeightsUnavailableWarning`` when the file is not in the torch cache).
    With ImageNet weights the batch norms are frozen (as torchvision does);
    ``frozen_bn`` forces the choice (used when loading a saved model).
    """
    torch = get_torch()
    tv = get_torchvision()
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

    if backbone not in DETECTOR_BACKBONES:
        raise ValueError(f"unknown detector backbone {backbone!r}; choose one of {sorted(DETECTOR_BACKBONES)}")
    if n_classes < 1:
        raise ValueError("the detector needs at least one class")
    builder, weights, _ = DETECTOR_BACKBONES[backbone]
    used = False
    norm = None
    if pretrained and frozen_bn is not False:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            net, used = load_torchvision_model(builder, weights, pretrained, norm_layer=FrozenBatchNorm2d)
        for w in caught:  # re-emit with our context
            warnings.warn(f"detector backbone {backbone}: {w.message}", w.category, stacklevel=2)
        if not used:
            net = None
    else:
        net = None
    if net is None:
        norm = FrozenBatchNorm2d if frozen_bn else torch.nn.BatchNorm2d
        net = getattr(tv.models, builder)(weights=None, norm_layer=norm)
    # cells are few per image (tens to a few hundred): fewer proposals than
    # torchvision's defaults for natural images keep CPU inference fast
    kw = dict(min_size=min_size, max_size=max_size, box_score_thresh=0.01,
              box_detections_per_img=max_regions, rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=1000,
              rpn_pre_nms_top_n_test=600, rpn_post_nms_top_n_test=300)
    if backbone == "resnet50_fpn":
        from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

        body = _resnet_fpn_extractor(net, 3 if used else 5)
        model = FasterRCNN(body, num_classes=n_classes + 1, **kw)
    elif backbone == "mobilenet_v3_fpn":
        from torchvision.models.detection.backbone_utils import _mobilenet_extractor

        body = _mobilenet_extractor(net, True, 3 if used else 6)
        anchors = AnchorGenerator(((16, 32, 64, 128, 256),) * 3, ((0.5, 1.0, 2.0),) * 3)
        model = FasterRCNN(body, num_classes=n_classes + 1, rpn_anchor_generator=anchors,
                           rpn_score_thresh=0.05, **kw)
    else:
        from torchvision.models.detection.faster_rcnn import (
            FastRCNNPredictor,
            TwoMLPHead,
        )

        # MobileNetV2 features (1280 channels, stride 32; "mobilenet_v2_small": 96, stride 16) reduced to 256
        # channels by a 1x1 convolution, so the box head stays small
        if used:  # as torchvision does for pretrained backbones: train only the later stages
            for p in net.features[:7].parameters():
                p.requires_grad_(False)
        if backbone == "mobilenet_v2_small":
            # small objects: the stride-16 feature map (96 channels, block 13) instead of the
            # stride-32 one, so a platelet (~15-30 px) covers a few feature cells, and anchors
            # from 8 px; the later, stride-32 blocks are dropped (also fewer operations)
            features, c_out, sizes = net.features[:14], 96, (8, 16, 32, 64, 128, 256)
        else:
            features, c_out, sizes = net.features, 1280, (16, 32, 64, 128, 256)
        body = torch.nn.Sequential(features, torch.nn.Conv2d(c_out, 256, 1), torch.nn.ReLU(inplace=True))
        body.out_channels = 256
        anchors = AnchorGenerator((sizes,), ((0.5, 1.0, 2.0),))
        pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
        model = FasterRCNN(body, num_classes=None, rpn_anchor_generator=anchors, box_roi_pool=pool,
                           box_head=TwoMLPHead(256 * 49, 512), box_predictor=FastRCNNPredictor(512, n_classes + 1),
                           **kw)
    return model, used


def _augment(img: np.ndarray, boxes: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, 90° rotations and brightness/contrast jitter (cells have no up)."""
    h, w = img.shape[:2]
    b = boxes.copy()
    if rng.random() < 0.5:
        img = img[:, ::-1]
        b[:, [0, 2]] = w - b[:, [2, 0]]
    if rng.random() < 0.5:
        img = img[::-1]
        b[:, [1, 3]] = h - b[:, [3, 1]]
    if rng.random() < 0.5:  # transpose (with the flips: all 8 dihedral symmetries)
        img = np.swapaxes(img, 0, 1)
        b = b[:, [1, 0, 3, 2]]
    gain = rng.uniform(0.85, 1.15)
    bias = rng.uniform(-0.06, 0.06)
    img = np.clip(img * gain + bias, 0, 1)
    return np.ascontiguousarray(img, dtype=np.float32), b


@dataclass
class BloodSample:
    """One annotated image: region boxes, their detector class and their types."""

    image: np.ndarray
    boxes: np.ndarray
    labels: list[str] = field(default_factory=list)  # detector class per box
    types: list[frozenset] = field(default_factory=list)  # cell types per box (may be empty)
    name: str = ""

    def checked(self) -> BloodSample:
        """Validated copy: boxes clipped to the image, labels/types filled in.

        The image itself is kept as given (no intensity conversion), so that
        checking twice changes nothing; consumers convert it once with
        :func:`to_rgb01`, as prediction does.
        """
        img = to_rgb01(self.image)  # validates shape and size (the result is not kept)
        b = as_boxes(self.boxes)
        labels = list(self.labels) if self.labels else ["cell"] * len(b)
        types = list(self.types) if self.types else [frozenset()] * len(b)
        if not (len(labels) == len(b) == len(types)):
            raise ValueError(f"{self.name or 'sample'}: {len(b)} boxes, {len(labels)} labels, {len(types)} type sets")
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            b, keep = clip_boxes(b, img.shape, what=f"boxes of {self.name or 'an image'}")
        labels = [x for x, k in zip(labels, keep) if k]
        types = [frozenset(t) for t, k in zip(types, keep) if k]
        return BloodSample(self.image, b, labels, types, self.name)


def train_detector(model: BloodModel, samples: Sequence[BloodSample], *, epochs: int = 10,
                   batch_size: int = 2, lr: float = 0.005, momentum: float = 0.9,
                   weight_decay: float = 1e-4, augment: bool = True, seed: int | None = 0,
                   time_limit: float | None = None, device=None, heartbeat: float = 1.0) -> Job[list[float]]:
    """Job: train (or fine-tune) the bundle's Faster R-CNN; returns the loss per iteration.

    SGD with momentum (as in the paper), a step every ``batch_size`` images.
    ``time_limit`` (seconds) stops early after the current iteration. A
    progress record comes at least every ``heartbeat`` seconds, also while
    one iteration runs (its fraction follows the iterations, estimated within
    one from the last one's duration, or the clock against ``time_limit``,
    whichever is further).
    """
    torch = get_torch()
    samples = [s if isinstance(s, BloodSample) else BloodSample(*s) for s in samples]
    samples = [s.checked() for s in samples]
    samples = [s for s in samples if len(s.boxes)]
    if not samples:
        raise ValueError("no annotated boxes to train the detector on")
    unknown = sorted({lab for s in samples for lab in s.labels} - set(model.det_classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not detector classes {model.det_classes}")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    rng = seed_everything(seed) if seed is not None else np.random.default_rng()
    images = [to_rgb01(s.image) for s in samples]  # once, as at prediction
    model.train_image_size = tuple(int(x) for x in np.max([im.shape[:2] for im in images], axis=0))
    dev = select_device(device)
    det = model.detector.to(dev)
    params = [p for p in det.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    cls_index = {c: i + 1 for i, c in enumerate(model.det_classes)}
    n_iter = epochs * -(-len(samples) // batch_size)
    warm = min(50, max(1, n_iter // 10))
    losses: list[float] = []

    def step(imgs, targets, lr_now):  # one SGD iteration (run in the helper thread)
        for g in opt.param_groups:
            g["lr"] = lr_now
        loss_dict = det(imgs, targets)
        loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"detector loss became {float(loss)}; try a lower learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    t0 = time.perf_counter()
    it = 0
    last_dt = None  # seconds the last iteration took (to estimate progress within one)
    det.train()
    yield Progress(0, n_iter, f"detector: first of {n_iter} iterations"
                   + (f" (at most {time_limit:g} s)" if time_limit is not None else ""))
    # each iteration runs in a helper thread while this generator yields a record every
    # ``heartbeat`` seconds: on a loaded CPU one iteration can take many seconds, and the
    # progress bar (and Cancel) must not wait for it
    pool = ThreadPoolExecutor(1, thread_name_prefix="blood-detector")
    try:
        for epoch in range(epochs):
            order = rng.permutation(len(samples))
            for start in range(0, len(order), batch_size):
                imgs, targets = [], []
                for k in order[start:start + batch_size]:
                    s = samples[k]
                    img, b = _augment(images[k], s.boxes, rng) if augment else (images[k], s.boxes)
                    imgs.append(torch.from_numpy(np.moveaxis(img, -1, 0).copy()).to(dev))
                    targets.append({
                        "boxes": torch.as_tensor(b, dtype=torch.float32, device=dev),
                        "labels": torch.as_tensor([cls_index[x] for x in s.labels], dtype=torch.int64, device=dev),
                    })
                t_it = time.perf_counter()
                fut = pool.submit(step, imgs, targets, lr * min(1.0, (it + 1) / warm))
                while not wait([fut], timeout=heartbeat).done:
                    el = time.perf_counter() - t_it
                    within = min(el / last_dt, 0.9) if last_dt else 0.0
                    yield _detector_progress(it + within, n_iter, time.perf_counter() - t0, time_limit,
                                             f"epoch {epoch + 1}/{epochs}, iteration {it + 1} running "
                                             f"({el:.0f} s)")
                losses.append(fut.result())
                last_dt = time.perf_counter() - t_it
                it += 1
                yield _detector_progress(it, n_iter, time.perf_counter() - t0, time_limit,
                                         f"epoch {epoch + 1}/{epochs}, loss {losses[-1]:.3f}")
                if time_limit is not None and time.perf_counter() - t0 > time_limit:
                    yield Progress(it, it, f"detector: time limit reached after {it} iterations")
                    return losses
    finally:
        pool.shutdown(wait=True)  # a cancelled job: the running iteration ends first
        det.eval()
    return losses


def _detector_progress(done: float, n_iter: int, elapsed: float, time_limit: float | None,
                       what: str) -> Progress:
    """Progress of detector training: iterations done (``done`` may be
    fractional while one runs), or time used when a time limit will stop it
    first, whichever is further (per mille)."""
    frac = min(done / n_iter, 1.0)
    msg = f"detector: iteration {int(done)}/{n_iter}, {what}"
    if time_limit is not None and time_limit > 0:
        frac = max(frac, min(elapsed / time_limit, 1.0))
        msg += f", {max(time_limit - elapsed, 0):.0f} s left"
    return Progress(round(1000 * frac), 1000, msg)


def _nms(boxes, scores, labels, iou: float):
    torch = get_torch()
    from torchvision.ops import batched_nms

    if not len(boxes):
        return np.zeros(0, int)
    keep = batched_nms(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32),
                       torch.as_tensor(labels, dtype=torch.int64), iou)
    return keep.numpy()


def detect(model: BloodModel, image, *, score_threshold: float = 0.05, device=None,
           tile_factor: float = 2.0) -> Job[dict]:
    """Job: the detector's regions on one image: ``{"boxes", "scores", "labels"}``.

    An image more than ``tile_factor`` times larger (per side) than the
    images the detector was trained on is processed in overlapping tiles of
    the training size (with a message), and the tiles' boxes are merged by
    non-maximum suppression.
    """
    torch = get_torch()
    img = to_rgb01(image)
    h, w = img.shape[:2]
    dev = select_device(device)
    det = model.detector.to(dev).eval()
    ref = model.train_image_size or (model.min_size, model.max_size)
    th, tw = int(max(ref[0], 64)), int(max(ref[1], 64))
    tiled = h > tile_factor * th or w > tile_factor * tw
    if tiled:
        ov = max(32, min(th, tw) // 8)
        ys = list(range(0, max(h - th, 0) + 1, th - ov))
        xs = list(range(0, max(w - tw, 0) + 1, tw - ov))
        if ys[-1] + th < h:
            ys.append(h - th)
        if xs[-1] + tw < w:
            xs.append(w - tw)
        windows = [(y, x) for y in ys for x in xs]
        yield Progress(0, len(windows), f"image {w}x{h} is much larger than the training images "
                       f"({tw}x{th}): detecting in {len(windows)} tiles")
    else:
        windows = [(0, 0)]
        th, tw = h, w
        yield Progress(0, 1, "detecting")
    all_b, all_s, all_l = [], [], []
    with torch.inference_mode():
        for i, (y, x) in enumerate(windows):
            tile = img[y:y + th, x:x + tw]
            out = det([torch.from_numpy(np.moveaxis(tile, -1, 0).copy()).to(dev)])[0]
            b = out["boxes"].cpu().numpy().astype(np.float64) + [x, y, x, y]
            s = out["scores"].cpu().numpy().astype(np.float64)
            lab = out["labels"].cpu().numpy()
            if tiled:  # drop boxes cut by an inner tile edge
                m = np.ones(len(b), bool)
                m &= (b[:, 0] > x + 1) | (x == 0)
                m &= (b[:, 1] > y + 1) | (y == 0)
                m &= (b[:, 2] < x + tw - 1) | (x + tw >= w)
                m &= (b[:, 3] < y + th - 1) | (y + th >= h)
                b, s, lab = b[m], s[m], lab[m]
            keep = s >= score_threshold
            all_b.append(b[keep])
            all_s.append(s[keep])
            all_l.append(lab[keep])
            yield Progress(i + 1, len(windows), f"detecting: tile {i + 1}/{len(windows)}" if tiled else "detecting")
    b = np.concatenate(all_b) if all_b else np.zeros((0, 4))
    s = np.concatenate(all_s) if all_s else np.zeros(0)
    lab = np.concatenate(all_l) if all_l else np.zeros(0, int)
    if tiled and len(b):
        keep = _nms(b, s, lab, 0.5)
        b, s, lab = b[keep], s[keep], lab[keep]
    order = np.argsort(-s, kind="stable")
    return {"boxes": as_boxes(b[order]), "scores": s[order],
            "labels": [model.det_classes[int(k) - 1] for k in lab[order]]}


# ------------------------------------------------------------ region features
def crop_regions(image, boxes, *, pad: float = 0.05) -> list[np.ndarray]:
    """Crops of ``image`` under ``boxes`` (grown by ``pad`` x their size, clipped)."""
    img = np.asarray(image)
    h, w = img.shape[:2]
    out = []
    for x0, y0, x1, y1 in as_boxes(boxes):
        px, py = pad * (x1 - x0), pad * (y1 - y0)
        a0, b0 = int(max(0, np.floor(x0 - px))), int(max(0, np.floor(y0 - py)))
        a1, b1 = int(min(w, np.ceil(x1 + px))), int(min(h, np.ceil(y1 + py)))
        if a1 <= a0 or b1 <= b0:
            raise ValueError(f"box {[x0, y0, x1, y1]} has no pixels inside the {w}x{h} image")
        out.append(img[b0:b1, a0:a1])
    return out


def region_features(model: BloodModel, image, boxes, *, batch_size: int = 16, device=None) -> Job[np.ndarray]:
    """Job: one ``(dim,)`` embedding per region (crop resized to ``patch_size``²)."""
    torch = get_torch()
    crops = crop_regions(to_rgb01(image), boxes)
    dim = EMBEDDERS[model.embedder_name].dim
    out = np.zeros((len(crops), dim), np.float32)
    if not crops:
        return out
    dev = select_device(device)
    emb = model.embedder.to(dev).eval()
    n = -(-len(crops) // batch_size)
    with torch.inference_mode():
        for k in range(n):
            chunk = crops[k * batch_size:(k + 1) * batch_size]
            x = torch.from_numpy(images_to_batch(chunk, model.patch_size, "percentile")).to(dev)
            out[k * batch_size:k * batch_size + len(chunk)] = emb(x).float().cpu().numpy()
            yield Progress(k + 1, n, f"region features: batch {k + 1}/{n}")
    return out


# ------------------------------------------------------------ per-type heads
def build_type_heads(dim: int, n_types: int, hidden: int = 512, dropout: float = 0.2):
    """``n_types`` independent binary networks ``dim -> hidden -> 1`` (the paper: 2048 -> 512 -> 1)."""
    torch = get_torch()
    nn = torch.nn

    class TypeHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(dim, elementwise_affine=False)
            self.heads = nn.ModuleList(
                nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
                for _ in range(n_types)
            )

        def forward(self, x):
            x = self.norm(x)
            return torch.cat([h(x) for h in self.heads], dim=1)

    return TypeHeads()


def types_to_matrix(type_sets: Sequence, type_names: Sequence[str]) -> np.ndarray:
    """Sets of type names -> ``(N, T)`` 0/1 matrix (unknown names raise)."""
    idx = {t: i for i, t in enumerate(type_names)}
    y = np.zeros((len(type_sets), len(type_names)), np.float32)
    for r, ts in enumerate(type_sets):
        for t in ts:
            if t not in idx:
                raise ValueError(f"type {t!r} is not one of the model's types {list(type_names)}")
            y[r, idx[t]] = 1
    return y


def train_type_heads(model: BloodModel, features, type_sets, *, epochs: int = 60, lr: float = 1e-3,
                     batch_size: int = 64, seed: int | None = 0, device=None) -> Job[list[float]]:
    """Job: train the per-type heads with binary cross-entropy (one loss per type).

    Each type's positives are up-weighted by its negative/positive ratio
    (capped at 20). Types with no positive example are left untrained and
    reported in a warning. Returns the mean loss per epoch.
    """
    torch = get_torch()
    x = np.asarray(features, np.float32)
    y = types_to_matrix(type_sets, model.type_names)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features {x.shape} do not match {len(y)} type sets")
    if len(x) < 2:
        raise ValueError("need at least 2 annotated regions to train the type heads")
    pos = y.sum(0)
    missing = [t for t, p in zip(model.type_names, pos) if p == 0]
    if missing:
        warnings.warn(f"no training region contains {missing}: their heads stay untrained", UserWarning, stacklevel=2)
    if seed is not None:
        seed_everything(seed)
    rng = np.random.default_rng(seed)
    dev = select_device(device)
    heads = model.heads.to(dev)
    pw = torch.as_tensor(np.clip((len(y) - pos) / np.maximum(pos, 1), 1, 20), dtype=torch.float32, device=dev)
    mask = torch.as_tensor(pos > 0, device=dev)
    opt = torch.optim.Adam(heads.parameters(), lr=lr, weight_decay=1e-4)
    xt = torch.from_numpy(x).to(dev)
    yt = torch.from_numpy(y).to(dev)
    hist = []
    try:
        for ep in range(epochs):
            heads.train()
            perm = rng.permutation(len(x))
            tot = 0.0
            for s in range(0, len(x), batch_size):
                idx = torch.as_tensor(perm[s:s + batch_size], device=dev)
                logits = heads(xt[idx])
                per = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, yt[idx], pos_weight=pw, reduction="none")
                loss = per[:, mask].mean() if bool(mask.any()) else per.mean() * 0
                opt.zero_grad(set_to_none=True)
                if loss.requires_grad:
                    loss.backward()
                    opt.step()
                tot += float(loss.detach()) * len(idx)
            hist.append(tot / len(x))
            yield Progress(ep + 1, epochs, f"type heads: epoch {ep + 1}/{epochs}, loss {hist[-1]:.4f}")
    finally:
        heads.eval()
    before = set(model.trained_types)  # heads trained earlier keep their training (their loss was masked out)
    model.trained_types = [t for t in model.type_names if t in before or t not in missing]
    return hist


def type_probabilities(model: BloodModel, features, device=None) -> np.ndarray:
    """``(N, T)`` independent per-type probabilities (they need not sum to 1)."""
    torch = get_torch()
    x = np.asarray(features, np.float32)
    if len(x) == 0:
        return np.zeros((0, len(model.type_names)), np.float32)
    dev = select_device(device)
    heads = model.heads.to(dev).eval()
    with torch.inference_mode():
        return torch.sigmoid(heads(torch.from_numpy(x).to(dev))).cpu().numpy()


# ------------------------------------------------------------ abnormal classifier
class AbnormalClassifier:
    """Gradient boosting (scikit-learn) on per-type probabilities -> P(abnormal).

    Fitted with :class:`sklearn.ensemble.GradientBoostingClassifier`, then
    kept as plain arrays (its regression trees), so it is saved as tensors
    (no pickle) and predicts identically after loading.
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.a = {k: np.asarray(v) for k, v in arrays.items()}
        for k in ("init", "learning_rate"):  # scalars (bundles saved before the fix hold them as (1,))
            if k in self.a:
                self.a[k] = self.a[k].reshape(())

    @classmethod
    def fit(cls, probs, y, *, n_estimators: int = 100, max_depth: int = 3, learning_rate: float = 0.1,
            seed: int | None = 0) -> AbnormalClassifier:
        from sklearn.ensemble import GradientBoostingClassifier

        x = np.asarray(probs, np.float64)
        y = np.asarray(y).astype(int)
        if len(np.unique(y)) < 2:
            raise ValueError("the abnormal classifier needs both normal and abnormal regions to train")
        gbc = GradientBoostingClassifier(n_estimators=n_estimators, max_depth=max_depth,
                                         learning_rate=learning_rate, random_state=seed).fit(x, y)
        left, right, feat, thr, val, offs = [], [], [], [], [], [0]
        for est in gbc.estimators_[:, 0]:
            t = est.tree_
            left.append(t.children_left)
            right.append(t.children_right)
            feat.append(t.feature)
            thr.append(t.threshold)
            val.append(t.value[:, 0, 0])
            offs.append(offs[-1] + t.node_count)
        arrays = {
            "left": np.concatenate(left).astype(np.int64), "right": np.concatenate(right).astype(np.int64),
            "feature": np.concatenate(feat).astype(np.int64), "threshold": np.concatenate(thr),
            "value": np.concatenate(val), "offsets": np.asarray(offs, np.int64),
            "learning_rate": np.asarray(learning_rate, np.float64), "init": np.asarray(0.0),
        }
        clf = cls(arrays)
        clf.a["init"] = np.asarray(float(np.mean(gbc.decision_function(x) - clf._trees_sum(x))))
        return clf

    def _trees_sum(self, x) -> np.ndarray:
        a = self.a
        x = np.asarray(x, np.float64)
        total = np.zeros(len(x))
        for k in range(len(a["offsets"]) - 1):
            o = int(a["offsets"][k])
            node = np.zeros(len(x), np.int64)
            while True:
                lt = a["left"][o + node]
                leaf = lt < 0
                if leaf.all():
                    break
                f = a["feature"][o + node]
                go_left = x[np.arange(len(x)), np.where(leaf, 0, f)] <= a["threshold"][o + node]
                nxt = np.where(go_left, lt, a["right"][o + node])
                node = np.where(leaf, node, nxt)
            total += a["value"][o + node]
        return float(a["learning_rate"]) * total

    def predict_proba(self, probs) -> np.ndarray:
        """P(abnormal) per region, ``(N,)``."""
        x = np.asarray(probs, np.float64)
        if len(x) == 0:
            return np.zeros(0)
        raw = float(self.a["init"]) + self._trees_sum(x)
        return 1.0 / (1.0 + np.exp(-raw))


# ------------------------------------------------------------ the bundle
#: the named thresholds a :class:`BloodModel` carries, used by every detection path
THRESHOLDS = ("candidate_floor", "score_threshold", "type_threshold")


@dataclass
class BloodModel:
    """Everything the workflow needs, saved and loaded as one bundle."""

    detector: Any
    embedder: Any
    heads: Any
    det_backbone: str = "mobilenet_v2"
    det_classes: list[str] = field(default_factory=lambda: ["cell"])
    embedder_name: str = "mobilenet_v2"
    type_names: list[str] = field(default_factory=lambda: list(PAPER_TYPES))
    abnormal_types: list[str] = field(default_factory=lambda: list(PAPER_ABNORMAL))
    abnormal: AbnormalClassifier | None = None
    patch_size: int = 224
    min_size: int = 480
    max_size: int = 640
    frozen_bn: bool = False
    backbone_pretrained: bool = False
    embedder_pretrained: bool = False
    train_image_size: tuple | None = None
    trained_types: list[str] = field(default_factory=list)
    type_threshold: float = param(0.5, help="a type is shown/exported for a region when its probability "
                                  "reaches this", min=0.0, max=1.0, step=0.001, control="FloatSlider")
    score_threshold: float = param(0.5, help="a region is shown/exported when its detection score reaches this",
                                   min=0.0, max=1.0, step=0.001, control="FloatSlider")
    candidate_floor: float = param(0.05, help="the detector keeps regions down to this score (so the shown "
                                   "threshold can be lowered without re-running)", min=0.0, max=1.0,
                                   step=0.001, control="FloatSlider", widget=False)

    def thresholds(self) -> dict[str, float]:
        """The three named thresholds in force (saved with the model)."""
        return {k: float(getattr(self, k)) for k in THRESHOLDS}

    def set_thresholds(self, **values) -> None:
        """Set some of :data:`THRESHOLDS` (each in [0, 1]); ``None`` values are skipped."""
        for k, v in values.items():
            if k not in THRESHOLDS:
                raise ValueError(f"unknown threshold {k!r}; choose among {THRESHOLDS}")
            if v is None:
                continue
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{k} must be within [0, 1], got {v}")
            setattr(self, k, float(v))

    @property
    def max_regions(self) -> int:
        """At most this many regions per image (or per tile)."""
        return int(self.detector.roi_heads.detections_per_img)

    @property
    def abnormal_trained(self) -> bool:
        """Whether the abnormal score means anything: the abnormal classifier
        is trained, or at least one abnormal type's head is."""
        return self.abnormal is not None or any(t in self.trained_types for t in self.abnormal_types)

    def abnormal_scores(self, probs) -> np.ndarray:
        """P(abnormal) per region: the gradient-boosting classifier, or (before
        it is trained) the highest probability among the abnormal types whose
        heads are trained (0 when none is)."""
        p = np.asarray(probs, np.float64)
        if self.abnormal is not None:
            return self.abnormal.predict_proba(p)
        idx = [self.type_names.index(t) for t in self.abnormal_types
               if t in self.type_names and t in self.trained_types]
        return p[:, idx].max(axis=1) if idx and len(p) else np.zeros(len(p))


def new_blood_model(*, det_classes: Sequence[str] = ("cell",), type_names: Sequence[str] = PAPER_TYPES,
                    abnormal_types: Sequence[str] | None = None, det_backbone: str = BloodModel.det_backbone,
                    embedder: str = BloodModel.embedder_name, pretrained: bool | str = "auto",
                    patch_size: int = BloodModel.patch_size, min_size: int = BloodModel.min_size,
                    max_size: int = BloodModel.max_size, hidden: int = 512, max_regions: int = 300,
                    seed: int | None = 0) -> BloodModel:
    """A fresh (untrained) model.

    Parameters
    ----------
    det_classes : sequence of str
        The detector's classes (e.g. ``["cell"]``, or BCCD's RBC, WBC, Platelets).
    type_names : sequence of str
        The multi-label cell types of the type heads.
    abnormal_types : sequence of str, optional
        The types counted as abnormal.
    det_backbone, embedder : str
        Detector backbone and feature network (see :class:`BloodTraining`).
    pretrained : bool or "auto"
        ImageNet weights; "auto": when available, else random init with a clear warning.
    patch_size, min_size, max_size, hidden, max_regions, seed
        Region patch side, detector input size, head width, regions kept per image, seed.

    Returns
    -------
    BloodModel
    """
    from expertloop.engine.features import build_embedder

    type_names = [str(t) for t in type_names]
    if not type_names or len(set(type_names)) != len(type_names):
        raise ValueError(f"type names must be non-empty and unique, got {type_names}")
    det_classes = [str(c) for c in det_classes]
    if not det_classes or len(set(det_classes)) != len(det_classes):
        raise ValueError(f"detector classes must be non-empty and unique, got {det_classes}")
    if abnormal_types is None:
        abnormal_types = [t for t in PAPER_ABNORMAL if t in type_names]
    bad = [t for t in abnormal_types if t not in type_names]
    if bad:
        raise ValueError(f"abnormal types {bad} are not among the types {type_names}")
    if embedder not in EMBEDDERS:
        raise ValueError(f"unknown embedder {embedder!r}; choose one of {sorted(EMBEDDERS)}")
    if seed is not None:
        seed_everything(seed)
    det, used = build_detector(det_backbone, len(det_classes), pretrained=pretrained,
                               min_size=min_size, max_size=max_size, max_regions=max_regions)
    emb, spec, emb_used = build_embedder(embedder, pretrained, device="cpu")
    if not emb_used and embedder == "mobilenet_v2":
        warnings.warn("a randomly initialised mobilenet_v2 embedder gives nearly constant features; "
                      "prefer resnet18 without ImageNet weights", UserWarning, stacklevel=2)
    heads = build_type_heads(spec.dim, len(type_names), hidden)
    return BloodModel(det, emb, heads, det_backbone, det_classes, embedder, type_names, list(abnormal_types),
                      None, patch_size, min_size, max_size, bool(used), bool(used), bool(emb_used))


def save_blood_model(path, model: BloodModel):
    """Save the whole pipeline (detector, embedder, heads, abnormal trees, thresholds) as one bundle.

    Parameters
    ----------
    path : path
        The ``.pt`` file to write (with its ``.json``).
    model : BloodModel

    Returns
    -------
    pathlib.Path
        The file written.
    """
    from expertloop.engine.persistence import save_model

    state = {
        "detector": model.detector, "embedder": model.embedder, "heads": model.heads,
        "abnormal": dict(model.abnormal.a) if model.abnormal is not None else None,
    }
    spec = {"channels": "grey, RGB or RGBA (alpha dropped)", "patch_size": model.patch_size,
            "min_size": model.min_size, "max_size": model.max_size,
            "train_image_size": list(model.train_image_size) if model.train_image_size else None}
    extra = {
        "det_backbone": model.det_backbone, "det_classes": model.det_classes,
        "embedder": model.embedder_name, "abnormal_types": model.abnormal_types,
        "frozen_bn": model.frozen_bn, "backbone_pretrained": model.backbone_pretrained,
        "embedder_pretrained": model.embedder_pretrained, "trained_types": model.trained_types,
        "hidden": int(model.heads.heads[0][0].out_features),
        "max_regions": model.max_regions, **model.thresholds(),
    }
    return save_model(path, state, workflow=WORKFLOW, class_names=model.type_names, input_spec=spec, extra=extra)


def load_blood_model(path, device=None) -> BloodModel:
    """Load a bundle saved by :func:`save_blood_model` (no pickle; checksum checked).

    Parameters
    ----------
    path : path
        The ``.pt`` file.
    device : str, optional
        Where to put the networks (None: automatic).

    Returns
    -------
    BloodModel
        With its thresholds as saved.
    """
    from expertloop.engine.features import build_embedder
    from expertloop.engine.persistence import (
        Field,
        ModelFileError,
        check_fields,
        load_model,
    )

    bundle = load_model(path, workflow=WORKFLOW)
    names = Field(list, item=str, max_len=1000)
    ex = check_fields(bundle.metadata.get("extra", {}), {
        "det_backbone": Field(str, max_len=40), "det_classes": names, "embedder": Field(str, max_len=40),
        "abnormal_types": names, "frozen_bn": Field(bool), "backbone_pretrained": Field(bool),
        "embedder_pretrained": Field(bool), "trained_types": Field(list, item=str, required=False),
        "hidden": Field(int, 1, 8192), "max_regions": Field(int, 1, 10_000, required=False),
        **{k: Field(float, 0, 1, required=False) for k in THRESHOLDS}}, f"{path}: extra")
    spec = check_fields(bundle.input_spec, {
        "patch_size": Field(int, 16, 1024), "min_size": Field(int, 32, 8192), "max_size": Field(int, 32, 8192),
        "train_image_size": Field(list, 1, 100_000, item=int, max_len=3, required=False, nullable=True)},
        f"{path}: input_spec")
    st = bundle.state
    try:
        det, _ = build_detector(ex["det_backbone"], len(ex["det_classes"]), pretrained=False,
                                min_size=spec["min_size"], max_size=spec["max_size"], frozen_bn=ex["frozen_bn"],
                                max_regions=int(ex.get("max_regions", 300)))
        emb, espec, _ = build_embedder(ex["embedder"], False, device="cpu")
        heads = build_type_heads(espec.dim, len(bundle.class_names), ex["hidden"])
        det.load_state_dict(st["detector"])
        emb.load_state_dict(st["embedder"])
        heads.load_state_dict(st["heads"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a complete blood-cell model: {type(exc).__name__}: {exc}") from exc
    abn = st.get("abnormal")
    m = BloodModel(
        det.eval(), emb.eval(), heads.eval(), ex["det_backbone"], list(ex["det_classes"]), ex["embedder"],
        bundle.class_names, list(ex["abnormal_types"]),
        AbnormalClassifier({k: v.numpy() for k, v in abn.items()}) if abn else None,
        int(spec["patch_size"]), int(spec["min_size"]), int(spec["max_size"]), bool(ex["frozen_bn"]),
        bool(ex["backbone_pretrained"]), bool(ex["embedder_pretrained"]),
        tuple(spec["train_image_size"]) if spec.get("train_image_size") else None,
        # bundles written before the field existed: every head counts as trained
        list(ex["trained_types"]) if "trained_types" in ex else list(bundle.class_names),
    )
    m.set_thresholds(**{k: ex[k] for k in THRESHOLDS if k in ex})
    if device is not None:
        dev = select_device(device)
        for mod in (m.detector, m.embedder, m.heads):
            mod.to(dev)
    return m
