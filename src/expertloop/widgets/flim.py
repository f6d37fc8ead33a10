"""FLIM widgets: "Marker encoder" and "Image recommendation".

Thin front ends over :mod:`expertloop.engine.flim`; every fit, training,
segmentation and recommendation runs through a :class:`JobRunner`.
Images are a single 2D image, a 3D volume, or a stack of 2D images (a 3D
layer with "planes are separate images" ticked, e.g. a folder opened with
"Open folder as stack"). Markers are a Labels layer of the same shape:
0 = unmarked, 1 = background, 2.. = object classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    Label,
    PushButton,
    Select,
)

from expertloop.engine.jobs import Progress
from expertloop.widgets._common import (
    ConfigControls,
    fit_dock,
    layer_array,
    layer_picker,
    notify,
)
from expertloop.widgets._jobs import JobRunner

if TYPE_CHECKING:
    import napari

FILES_KEY = "flim_files"
LIMITS_KEY = "flim_plane_limits"  # per plane (min, max) of a folder stack, computed in the reading job


def _plane_limits(stack) -> np.ndarray:
    """(min, max) of each plane of a (N, H, W) stack (vectorised; run in the worker),
    with max > min so a flat plane still has a usable contrast."""
    flat = np.asarray(stack).reshape(len(stack), -1)
    lims = np.stack([flat.min(axis=1), flat.max(axis=1)], axis=1).astype(float)
    lims[:, 1] = np.where(lims[:, 1] > lims[:, 0], lims[:, 1], lims[:, 0] + 1)
    return lims


def _range(a) -> tuple[float, float]:
    """Contrast limits of ``a`` (computed where ``a`` is made: napari would scan it on the GUI thread)."""
    lo, hi = float(np.min(a)), float(np.max(a))
    return lo, hi if hi > lo else lo + 1


def _spec_from(config, ndim: int, path):
    """The spec file if one is chosen, else ``config``'s architecture."""
    if path is not None and str(path) not in ("", "."):
        return str(path)
    return config.spec(ndim)


def _images_and_markers(data, markers, stack: bool):
    """Split a layer into (images, markers, indices); a stack gives one image per plane."""
    img, mk = data, markers  # may be lazy (dask, zarr): the jobs read them in the worker thread
    if tuple(mk.shape) != tuple(img.shape):
        raise ValueError(f"markers of shape {tuple(mk.shape)} do not match the image of shape {tuple(img.shape)}")
    if stack:
        if img.ndim != 3:
            raise ValueError(f"a stack of 2D images must be a 3D layer, got shape {img.shape}")
        return list(img), list(mk), list(range(len(img)))
    return [img], [mk], [0]


class _Base(Container):
    def __init__(self, viewer, widgets):
        self._viewer = viewer
        super().__init__(widgets=widgets)
        fit_dock(self)
        for combo in self._layer_combos():
            viewer.layers.events.inserted.connect(combo.reset_choices)
            viewer.layers.events.removed.connect(combo.reset_choices)
        viewer.dims.events.current_step.connect(self._plane_contrast)

    def _plane_contrast(self, *_) -> None:
        """Folder stacks get the contrast of the plane shown (images of a folder differ in
        range: limits from the whole stack would show some planes black)."""
        step = self._viewer.dims.current_step
        for layer in self._viewer.layers:
            if FILES_KEY in layer.metadata and getattr(layer, "ndim", 0) == 3 and not layer.rgb:
                i = min(int(step[-3]), len(layer.data) - 1)
                lims = layer.metadata.get(LIMITS_KEY)
                # limits read with the folder (no pixel read on the GUI thread per step)
                limits = tuple(lims[i]) if lims is not None and len(lims) == len(layer.data) \
                    else _range(layer.data[i])
                if tuple(layer.contrast_limits) != limits:
                    layer.contrast_limits = limits

    def _layer_combos(self):
        return []

    def _image_layer(self):
        layer = self.image.value
        if layer is None:
            notify("FLIM", "open an image first")
        return layer

    def _markers_layer(self):
        layer = self.markers.value
        if layer is None:
            notify("FLIM", "add a markers (Labels) layer and draw scribbles: 1 = background, 2 = object")
        return layer

    def _gather(self, stack: bool):
        """``(layer, images, markers)`` from the chosen layers, or None (with a notification)."""
        layer, mlayer = self._image_layer(), self._markers_layer()
        if layer is None or mlayer is None:
            return None
        if layer.rgb:
            notify("FLIM", "convert the RGB image to greyscale (or one channel) first")
            return None
        try:
            imgs, mks, _ = _images_and_markers(layer_array(layer)[0], layer_array(mlayer)[0], stack)
        except ValueError as exc:
            notify("FLIM", str(exc))
            return None
        return layer, imgs, mks

    def open_folder(self, *_):
        """Read the chosen folder as one stack (in the runner's worker); returns the worker."""
        from expertloop.io.flim_images import read_image_folder_job

        folder = self.folder.value
        if self.runner.running:
            notify("FLIM", "wait for the running step to finish (or cancel it)")
            return None

        def job():
            stack, names = yield from read_image_folder_job(folder)
            lims = _plane_limits(stack) if stack.ndim == 3 else None  # greyscale planes
            return stack, names, lims

        def show(result):
            stack, names, lims = result
            meta = {FILES_KEY: names} if lims is None else {FILES_KEY: names, LIMITS_KEY: lims}
            kw = {} if lims is None else {"contrast_limits": (float(lims[:, 0].min()), float(lims[:, 1].max()))}
            layer = self._viewer.add_image(stack, name=f"{folder.name or 'images'} stack", metadata=meta, **kw)
            self.image.reset_choices()
            self.image.value = layer
            if hasattr(self, "stack"):
                self.stack.value = True
            self._plane_contrast()

        return self.runner.start(job(), description=f"reading {folder}",
                                 on_result=show)

    def new_markers(self, *_):
        layer = self._image_layer()
        if layer is None:
            return None
        data, scale, translate = layer_array(layer)
        shape = data.shape[:-1] if layer.rgb else data.shape
        lab = self._viewer.add_labels(np.zeros(shape, np.uint8), name=f"{layer.name} markers",
                                      scale=scale[-len(shape):], translate=translate[-len(shape):])
        lab.brush_size = 3
        lab.selected_label = 2
        lab.mode = "paint"
        self.markers.reset_choices()
        self.markers.value = lab
        return lab


class FlimEncoderWidget(_Base):
    """Marker encoder: scribble, fit the FLIM encoder, view features, train a decoder, segment."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.image = layer_picker(viewer, "Image", "images")
        self.stack = CheckBox(text="planes are separate 2D images", value=False)
        self.folder = FileEdit(label="folder", mode="d")
        self.open_btn = PushButton(text="Open folder as stack")
        self.markers = layer_picker(viewer, "Labels", "markers")
        self.new_btn = PushButton(text="New markers layer")
        from expertloop.engine.flim.params import FlimFit

        # parameters from the engine's FlimFit (defaults, ranges, help live there)
        self.params = ConfigControls(FlimFit)
        p = self.params
        self.n_layers, self.kernel, self.filters, self.stride = (
            p["n_layers"], p["kernel_size"], p["filters_per_class"], p["pool_stride"])
        self.spec_file = FileEdit(label="or spec (JSON/YAML)", mode="r", filter="*.json *.yaml *.yml",
                                  value="")
        self.fit_btn = PushButton(text="Fit encoder")
        self.decoder, self.steps = p["decoder"], p["steps"]
        self.train_labels = layer_picker(viewer, "Labels", "decoder labels", optional=True)
        self.train_labels.tooltip = "dense labels to train the decoder on (e.g. ground truth); empty: the markers"
        self.binary_mask = CheckBox(text="decoder labels are a mask (0 = background)", value=True)
        self.train_btn = PushButton(text="Train decoder")
        self.background = CheckBox(text="class 1 is background (shown as 0)", value=True)
        self.segment_btn = PushButton(text="Segment")
        self.model_file = FileEdit(label="model file", mode="w", filter="*.pt")
        self.save_btn = PushButton(text="Save network")
        self.load_btn = PushButton(text="Load network")
        self.package = FileEdit(label="bioimage.io package", mode="r", filter="*.zip")
        self.package.tooltip = "a FLIM network exported to bioimage.io ('expertloop flim export')"
        self.package_btn = PushButton(text="Load bioimage.io package")
        self.runner = JobRunner()
        self.encoder = None
        self.network = None
        self.report = None
        super().__init__(viewer, [
            self.image, self.stack, self.folder, self.open_btn, self.markers, self.new_btn,
            self.n_layers, self.kernel, self.filters, self.stride, self.spec_file, self.fit_btn,
            self.decoder, self.steps, self.train_labels, self.binary_mask, self.train_btn, self.background, self.segment_btn,
            self.model_file, self.save_btn, self.load_btn, self.package, self.package_btn, self.runner,
        ])
        self.open_btn.changed.connect(self.open_folder)
        self.new_btn.changed.connect(self.new_markers)
        self.fit_btn.changed.connect(self.fit)
        self.train_btn.changed.connect(self.train)
        self.segment_btn.changed.connect(self.segment)
        self.save_btn.changed.connect(self.save)
        self.load_btn.changed.connect(self.load)
        self.package_btn.changed.connect(self.load_package)

    def _layer_combos(self):
        return [self.image, self.markers, self.train_labels]

    def _ndim(self, layer) -> int:
        nd = layer_array(layer)[0].ndim - (1 if layer.rgb else 0)  # level 0 (a multiscale layer's data is a list)
        return 2 if (self.stack.value or nd == 2) else 3

    def _current_plane(self, layer) -> int:
        return int(self._viewer.dims.current_step[0]) if self.stack.value else 0

    def fit(self, *_):
        from expertloop.engine.flim import feature_stack, fit_encoder

        got = self._gather(self.stack.value)
        if got is None:
            return None
        layer, imgs, mks = got
        from expertloop.engine.config import build
        from expertloop.engine.flim.params import FlimFit

        spec = _spec_from(build(FlimFit, self.params.values()), self._ndim(layer), self.spec_file.value)
        plane = min(self._current_plane(layer), len(imgs) - 1)

        def job():
            enc, report = yield from fit_encoder(imgs, mks, spec)
            feats = feature_stack(enc, imgs[plane])
            return enc, report, feats, _range(feats)

        def show(result):
            self.encoder, self.report, feats, limits = result
            self.network = None
            name = f"{layer.name} FLIM features"
            translate = list(layer.translate)
            scale = list(layer.scale)
            data = feats[:, None] if self.stack.value else feats
            if self.stack.value:
                translate = [0.0, translate[0] + plane * scale[0]] + translate[1:]
                scale = [1.0] + scale
            else:
                translate, scale = [0.0] + translate, [1.0] + scale
            if name in self._viewer.layers:
                self._viewer.layers.remove(name)
            self._viewer.add_image(data, name=name, colormap="magma", blending="additive", opacity=0.6,
                                   scale=scale, translate=translate, contrast_limits=limits)
            r = self.report
            notify("FLIM", f"encoder fitted in {r.seconds:.2f} s: {r.filters_per_layer} filters, "
                   f"marker patches per layer {r.patches_per_layer}")

        return self.runner.start(job(), description="fitting FLIM encoder", on_result=show)

    def train(self, *_):
        from expertloop.engine.flim import build_network, fit_pixel_head, train_decoder

        if self.encoder is None:
            notify("FLIM", "fit the encoder first")
            return None
        got = self._gather(self.stack.value)
        if got is None:
            return None
        _, imgs, mks = got
        enc, kind, steps = self.encoder, self.decoder.value, self.steps.value
        if self.train_labels.value is not None:
            # dense labels (e.g. ground truth of more images) instead of the markers
            lab = layer_array(self.train_labels.value)[0]
            planes = list(lab) if self.stack.value else [lab]
            if len(planes) != len(imgs) or any(p.shape != i.shape for p, i in zip(planes, imgs)):
                notify("FLIM", f"decoder labels of shape {lab.shape} do not match the images")
                return None
            mks = [(p > 0).astype(np.int64) + 1 for p in planes] if self.binary_mask.value else planes

        def job():
            if kind == "pixel":
                return (yield from fit_pixel_head(enc, imgs, mks))
            classes = sorted({int(c) for m in mks for c in np.unique(m[m > 0])})
            net = build_network(enc, classes, "unet")
            yield from train_decoder(net, imgs, mks, steps=steps)
            return net

        def done(net):
            self.network = net
            notify("FLIM", f"{kind} decoder trained (classes {net.classes})")

        return self.runner.start(job(), description=f"training {kind} decoder", on_result=done)

    def segment(self, *_):
        from expertloop.engine.flim import segment

        if self.network is None:
            notify("FLIM", "train (or load) a decoder first")
            return None
        layer = self._image_layer()
        if layer is None:
            return None
        data, scale, translate = layer_array(layer)  # level 0, read plane by plane in the worker
        imgs = list(data) if self.stack.value else [data]
        bg, stack = self.background.value, self.stack.value

        def job():  # the label image is made in the worker too
            maps = yield from segment(self.network, imgs)
            out = (np.stack(maps) if stack else maps[0]).astype(np.int32)
            if bg:
                out[out == 1] = 0
            return out

        def show(out):
            name = f"{layer.name} FLIM segmentation"
            if name in self._viewer.layers:
                self._viewer.layers[name].data = out
            else:
                self._viewer.add_labels(out, name=name, scale=scale, translate=translate)

        return self.runner.start(job(), description="segmenting", on_result=show)

    def save(self, *_):
        """Save the network (in the runner's worker); returns the worker."""
        from expertloop.engine.flim import save_network
        from expertloop.engine.jobs import call_job

        if self.network is None:
            notify("FLIM", "nothing to save yet: train a decoder first")
            return None
        path = self.model_file.value
        return self.runner.start(call_job(f"saving {path}", save_network, path, self.network),
                                 description="saving network",
                                 on_result=lambda out: notify("FLIM", f"network saved to {out}"))

    def load(self, *_):
        """Load a network (in the runner's worker); the controls then show its architecture."""
        from expertloop.engine.flim import load_network
        from expertloop.engine.jobs import call_job

        path = self.model_file.value
        return self.runner.start(call_job(f"loading {path}", load_network, path),
                                 description="loading network", on_result=self._network_loaded)

    def load_package(self, *_):
        """Load a FLIM network from a bioimage.io package (in the runner's worker); without
        the bioimageio extra, a notification says how to install it."""
        from expertloop.engine.flim.bioimageio import import_flim_model
        from expertloop.engine.jobs import call_job

        path = str(self.package.value or "")
        if path in ("", "."):
            notify("FLIM", "choose a bioimage.io package (.zip) first")
            return None
        return self.runner.start(call_job(f"reading {path}", import_flim_model, path),
                                 description="loading bioimage.io package", on_result=self._network_loaded)

    def _network_loaded(self, network) -> None:
        self.network = network
        self.encoder = network.encoder
        from expertloop.engine.flim.params import FlimFit

        shown = FlimFit.from_spec(self.encoder.spec, network.kind)
        if shown is not None:  # the controls show the loaded network's architecture
            self.params.fill(shown, lock_fixed=False)
        notify("FLIM", f"loaded {network.kind} network (classes {network.classes})"
                       + ("" if shown is not None else "; its encoder comes from a spec file"))


class FlimRecommendWidget(_Base):
    """Image recommendation: t-SNE of FLIM descriptors, nearest / farthest images, inspect, mark next."""

    COLOURS = {"marked": "*", "nearest": "o", "farthest": "s", "other": "."}

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from expertloop.widgets._plot import PlotWidget

        self.image = layer_picker(viewer, "Image", "image stack")
        self.folder = FileEdit(label="folder", mode="d")
        self.open_btn = PushButton(text="Open folder as stack")
        self.markers = layer_picker(viewer, "Labels", "markers")
        self.new_btn = PushButton(text="New markers layer")
        from expertloop.engine.flim.params import FlimRecommend

        self.params = ConfigControls(FlimRecommend)
        p = self.params
        self.k, self.n_segments, self.filters, self.projection = (
            p["k"], p["n_segments"], p["filters_per_class"], p["projection"])
        self.run_btn = PushButton(text="Recommend images")
        self.plot = PlotWidget("FLIM descriptors", "", "", on_pick=self._picked)
        self.hover = Label(value="hover a point to see its file")
        self.ranked = Select(label="recommended", choices=[])
        self.mark_btn = PushButton(text="Mark this image next")
        self.runner = JobRunner()
        self.result = None
        self.names: list[str] = []
        self.groups: dict[str, list[int]] = {}
        self.inspected: int | None = None
        self.next_image: int | None = None
        super().__init__(viewer, [
            self.image, self.folder, self.open_btn, self.markers, self.new_btn, self.k, self.n_segments,
            self.filters, self.projection, self.run_btn, self.plot, self.hover, self.ranked, self.mark_btn,
            self.runner,
        ])
        self.open_btn.changed.connect(self.open_folder)
        self.new_btn.changed.connect(self.new_markers)
        self.run_btn.changed.connect(self.run)
        self.ranked.changed.connect(self._ranked_changed)
        self.mark_btn.changed.connect(self.mark_next)
        self.plot.canvas.mpl_connect("motion_notify_event", self._hovered)

    def _layer_combos(self):
        return [self.image, self.markers]

    def run(self, *_):
        from expertloop.engine.flim import recommend_images

        got = self._gather(True)
        if got is None:
            return None
        layer, imgs, mks = got
        self.names = list(layer.metadata.get(FILES_KEY, [])) or [f"{layer.name} [{i}]" for i in range(len(imgs))]
        self._images = imgs
        from expertloop.engine.config import build
        from expertloop.engine.flim.params import FlimRecommend

        cfg = build(FlimRecommend, self.params.values())
        job = recommend_images(imgs, mks, cfg.spec(2), k=cfg.k, n_segments=cfg.n_segments,
                               projection=cfg.projection)
        return self.runner.start(job, description="recommending images", on_result=self.show_result)

    def show_result(self, result) -> None:
        self.result = result
        rec = result.recommendation
        special = set(rec.marked) | set(rec.nearest) | set(rec.farthest)
        self.groups = {"marked": list(rec.marked), "nearest": list(rec.nearest),
                       "farthest": list(rec.farthest),
                       "other": [i for i in range(len(result.points)) if i not in special]}
        pts = result.points
        self.plot.set_series({g: (pts[ix, 0], pts[ix, 1]) for g, ix in self.groups.items() if ix}, style="o")
        for line in self.plot.axes.get_lines():
            line.set_marker(self.COLOURS.get(line.get_gid(), "o"))
            line.set_markersize(11 if line.get_gid() == "marked" else 7)
        self.plot.axes.legend(fontsize=7)
        self.plot.axes.set_title(f"FLIM descriptors ({result.projection})", fontsize=9)
        self.plot.draw()
        choices = [f"near {i}: {self.names[i]} (d={rec.distance[i]:.3g})" for i in rec.nearest]
        choices += [f"far {i}: {self.names[i]} (d={rec.distance[i]:.3g})" for i in rec.farthest]
        self.ranked.choices = choices

    def _index_at(self, x: float, y: float, tol_px: float = 8.0) -> int | None:
        if self.result is None:
            return None
        disp = self.plot.axes.transData.transform(self.result.points)
        d = np.hypot(disp[:, 0] - x, disp[:, 1] - y)
        i = int(np.argmin(d))
        return i if d[i] <= tol_px else None

    def _hovered(self, event) -> None:
        if event.inaxes is not self.plot.axes:
            return
        i = self._index_at(event.x, event.y)
        if i is not None:
            d = self.result.recommendation.distance[i]
            self.hover.value = f"{self.names[i]} (image {i}, distance {d:.3g})"
            self.plot.canvas.setToolTip(self.names[i])

    def _picked(self, group: str, index: int) -> None:
        self.inspect(self.groups[group][index])

    def _ranked_changed(self, value) -> None:
        if value:
            self.inspect(int(value[-1].split(":")[0].split()[1]))

    def inspect(self, i: int):
        """Load image ``i`` and its feature heatmap into the viewer (computed in the runner's worker)."""
        from expertloop.engine.flim import heatmap

        if self.result is None:
            return None
        if self.runner.running:
            notify("FLIM", "wait for the running step to finish (or cancel it)")
            return None
        i = int(i)
        encoder, source = self.result.encoder, self._images[i]  # may be lazy: read in the worker

        def job():
            yield Progress(0, 2, f"reading image {i}")
            img = np.asarray(source)
            yield Progress(1, 2, f"heatmap of image {i}")
            h = heatmap(encoder, img)
            return img, h, _range(img), _range(h)

        return self.runner.start(job(), description=f"heatmap of {self.names[i]}",
                                 on_result=lambda r: self._show_inspected(i, *r))

    def _show_inspected(self, i: int, img, h, img_limits=None, h_limits=None) -> None:
        self.inspected = i
        layer = self.image.value
        if layer is not None:
            step = list(self._viewer.dims.current_step)
            step[0] = int(i)
            self._viewer.dims.current_step = tuple(step)
        for name, data, limits, kw in (("FLIM inspected image", img, img_limits, {"colormap": "gray"}),
                                       ("FLIM heatmap", h, h_limits, {"colormap": "inferno", "blending": "additive",
                                                                     "opacity": 0.5})):
            limits = limits or _range(data)  # this image's range (computed in the job), not the last one's
            if name in self._viewer.layers:
                self._viewer.layers[name].data = data
                self._viewer.layers[name].contrast_limits = limits
                self._viewer.layers[name].visible = True
            else:
                self._viewer.add_image(data, name=name, contrast_limits=limits, **kw)
        self.hover.value = f"inspecting {self.names[i]} (image {i})"

    def mark_next(self, *_) -> None:
        """Go to the inspected image and switch the markers layer to painting."""
        if self.inspected is None:
            notify("FLIM", "click a point (or pick a recommended image) first")
            return
        self.next_image = self.inspected
        step = list(self._viewer.dims.current_step)
        step[0] = self.next_image
        self._viewer.dims.current_step = tuple(step)
        for name in ("FLIM inspected image", "FLIM heatmap"):
            if name in self._viewer.layers:
                self._viewer.layers[name].visible = False
        mlayer = self.markers.value
        if mlayer is not None:
            self._viewer.layers.selection.active = mlayer
            mlayer.mode = "paint"
        notify("FLIM", f"mark {self.names[self.next_image]} (image {self.next_image}), then recommend again")
