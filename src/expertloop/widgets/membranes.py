"""'Membrane active learning' widget: transfer a membrane classifier to a new
EM domain and improve it with one expert-corrected region per round.

Thin: every heavy step is an engine job (:mod:`expertloop.engine.membranes`)
run by the shared :class:`~expertloop.widgets._jobs.JobRunner`. All state
lives in the project folder, so the widget resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox

from expertloop.engine.membranes.loop import MembraneConfig
from expertloop.widgets._common import (
    ConfigControls,
    fit_dock,
    follow_layers,
    image_layer_choices,
    layer_array,
    layer_by_name,
    notify,
)
from expertloop.widgets._jobs import JobRunner
from expertloop.widgets._plot import PlotWidget

if TYPE_CHECKING:
    import napari

NONE = "(none)"
REGION_LAYER = "proposed region"
UNCERTAINTY_LAYER = "uncertainty"
#: certain pixels fully transparent, the most uncertain opaque red: the EM stays readable
UNCERTAINTY_COLORMAP = {"colors": [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]],
                        "name": "transparent to red"}


def _data_layer_choices(viewer) -> list[str]:
    from napari.layers import Image, Labels

    return [NONE] + [ly.name for ly in viewer.layers if isinstance(ly, (Image, Labels))]


def _labels_layer_choices(viewer) -> list[str]:
    from napari.layers import Labels

    return [NONE] + [ly.name for ly in viewer.layers if isinstance(ly, Labels)]


def _planes(data: Any) -> list[np.ndarray]:
    """A 2D layer is one image, a 3D layer a stack of images."""
    arr = np.asarray(data)
    if arr.ndim == 2:
        return [arr]
    if arr.ndim == 3:
        return list(arr)
    raise ValueError(f"expected a 2D image or a stack of 2D images, got shape {arr.shape}")


def read_source_model(path) -> Any:
    """A membrane network from a saved model (``.pt`` + ``.json``) or a
    bioimage.io package (``.zip``, written by ``expertloop membranes export``;
    needs the bioimageio extra, else a BioimageioError that says how to install it)."""
    path = Path(str(path))
    if path.suffix.lower() == ".zip":
        from expertloop.engine.membranes.bioimageio import import_membrane_model

        return import_membrane_model(path)
    from expertloop.engine.membranes.net import load_net

    return load_net(path.with_suffix(""))[0]


class MembraneWidget(Container):
    """Membrane active learning (see docs/membranes.md)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.project = None
        self.folder = FileEdit(label="project folder", mode="d")
        self.open_btn = PushButton(text="Open / create project")
        # source domain
        self.source_image = ComboBox(label="source images", choices=lambda _: [NONE] + image_layer_choices(viewer))
        self.source_labels = ComboBox(label="source truth", choices=lambda _: _data_layer_choices(viewer))
        self.source_value = SpinBox(label="source membrane value", min=0, max=65535, value=1)
        self.source_model = FileEdit(label="or source model", mode="r", filter="*.pt *.zip")
        self.source_model.tooltip = ("a saved source network (.pt), or a bioimage.io package (.zip) exported "
                                     "with 'expertloop membranes export' (needs the bioimageio extra)")
        # target domain
        self.target_image = ComboBox(label="target images", choices=lambda _: [NONE] + image_layer_choices(viewer))
        self.target_labels = ComboBox(label="target labels (1/2)", choices=lambda _: _labels_layer_choices(viewer))
        self.val_image = ComboBox(label="validation image", choices=lambda _: [NONE] + image_layer_choices(viewer))
        self.val_truth = ComboBox(label="validation truth", choices=lambda _: _data_layer_choices(viewer))
        self.val_value = SpinBox(label="validation membrane value", min=0, max=65535, value=1)
        # parameters, from MembraneConfig: a new project takes them; an open
        # project shows its own, fixed ones read-only, the others write back to it
        self.params = ConfigControls(MembraneConfig)
        self.params.bind(self._param_edited)
        # steps
        self.train_btn = PushButton(text="1. Train source")
        self.transfer_btn = PushButton(text="2. Transfer")
        self.propose_btn = PushButton(text="3. Propose region")
        self.accept_btn = PushButton(text="4. Accept && retrain")
        self.info = Label(value="no project")  # round, stage, F-score
        # what to do next; a line of its own, so the F-score line never overwrites it
        self.guidance = Label(value="")
        self.guidance.native.setWordWrap(True)
        self.plot = PlotWidget("F-score per round (validation)", "round", "F-score")
        self.runner = JobRunner()
        super().__init__(widgets=[
            self.folder, self.open_btn,
            self.source_image, self.source_labels, self.source_value, self.source_model,
            self.target_image, self.target_labels, self.val_image, self.val_truth, self.val_value,
            *self.params.widgets,
            self.train_btn, self.transfer_btn, self.propose_btn, self.accept_btn,
            self.info, self.guidance, self.plot, self.runner,
        ])
        fit_dock(self)
        self.open_btn.changed.connect(self.open_project)
        self.folder.changed.connect(self._folder_changed)
        self.train_btn.changed.connect(self.train_source)
        self.transfer_btn.changed.connect(self.transfer)
        self.propose_btn.changed.connect(self.propose)
        self.accept_btn.changed.connect(self.accept)
        follow_layers(viewer, self.source_image, self.source_labels, self.target_image, self.target_labels,
                      self.val_image, self.val_truth)

    # ------------------------------------------------------------- helpers
    def _config(self) -> MembraneConfig:
        from expertloop.engine.config import build

        return build(MembraneConfig, self.params.values())

    def _param_edited(self, values: dict[str, Any]) -> None:
        """A control was edited: an open project's config changes (saved, journalled)."""
        p = self.project
        if p is None:
            return  # taken when the project is created
        if self.runner.running:
            notify("Membranes", "parameters not changed while a step runs: wait for it (or cancel it)")
        else:
            try:
                for name, (old, new) in p.update_config(values, source="widget").items():
                    self.info.value = f"{name}: {old} -> {new} (saved in the project)"
            except ValueError as exc:
                notify("Membranes", str(exc))
        self.params.fill(p.config)  # show what is in force

    def _folder_changed(self, *_) -> None:
        """Another folder: the open project is closed; parameters editable for a new one."""
        if self.project is not None and Path(str(self.folder.value)) != self.project.folder:
            self.project = None
            self.params.fill(self._config(), lock_fixed=False)
            self._refresh()

    def _layer_data(self, combo) -> Any:
        layer = layer_by_name(self._viewer, combo.value)
        return None if layer is None else layer_array(layer)[0]

    def _need_project(self, what: str) -> bool:
        if self.project is None:
            notify("Membranes", f"open or create a project before '{what}'")
            return False
        if self.runner.running:
            notify("Membranes", f"'{what}' not started: wait for the running step to finish (or cancel it)")
            return False
        return True

    def _start(self, make_job, **kw) -> Any:
        """Make the job (its input checks run now: engine.jobs.checks_first) and run it;
        a refused input becomes a notification instead of a started step."""
        try:
            job = make_job()
        except (ValueError, RuntimeError, FileNotFoundError) as exc:
            notify("Membranes", str(exc))
            return None
        return self.runner.start(job, **kw)

    def _target_layer_name(self, i: int) -> str:
        return f"membranes target {i}"

    def _labels_layer_name(self, i: int) -> str:
        return f"membranes target {i} labels"

    def _refresh(self) -> None:
        p = self.project
        if p is None:
            self.info.value = "no project"
            return
        scores = [s for s in p.scores if "f1" in s]
        self.plot.set_series({"validation F-score": ([s["round"] for s in scores], [s["f1"] for s in scores])})
        stage = p.state.get("stage")
        last = f", F-score {scores[-1]['f1']:.3f}" if scores else ""
        self.info.value = f"round {max(p.round, 0)} ({stage}){last}"

    def _show_project_layers(self) -> None:
        p = self.project
        for i, (im, lab) in enumerate(zip(p.target_images, p.target_labels)):
            name, lname = self._target_layer_name(i), self._labels_layer_name(i)
            if name not in self._viewer.layers:
                self._viewer.add_image(im, name=name)
            if lname in self._viewer.layers:
                self._viewer.layers[lname].data = lab.copy()
            else:
                self._viewer.add_labels(lab.copy(), name=lname)

    # ------------------------------------------------------------- steps
    def open_project(self, *_) -> Any:
        """Open the project in ``project folder``, or create it from the chosen
        layers; the layers are read and the project's files read or written in
        the runner's worker."""
        from expertloop.engine.jobs import call_job
        from expertloop.engine.membranes.loop import PROJECT_FILE, MembraneProject
        from expertloop.engine.membranes.net import membrane_labels

        folder = Path(str(self.folder.value))
        if not str(self.folder.value) or str(self.folder.value) == ".":
            notify("Membranes", "choose a project folder first")
            return None
        if self.runner.running:
            notify("Membranes", "wait for the running step to finish (or cancel it)")
            return None
        if (folder / PROJECT_FILE).exists():
            def make():
                return MembraneProject.open(folder)
        else:
            timg = self._layer_data(self.target_image)  # not read yet: lazy layers are read in the worker
            if timg is None:
                notify("Membranes", "choose the target images to create a project")
                return None
            tl, vimg, vtru = (self._layer_data(c) for c in (self.target_labels, self.val_image, self.val_truth))
            config, val_value = self._config(), self.val_value.value

            def make():
                vimgs, vtruths = [], []
                if vimg is not None and vtru is not None:
                    vimgs = _planes(vimg)
                    vtruths = [membrane_labels(t, val_value) for t in _planes(vtru)]
                return MembraneProject.create(folder, _planes(timg), None if tl is None else _planes(tl),
                                              validation_images=vimgs, validation_truths=vtruths, config=config)

        def job():
            project = yield from call_job(f"opening the project in {folder.name}", make)
            prob = yield from call_job("reading the proposal", project.proposal_prob)
            return project, prob

        return self.runner.start(job(), description="opening project", on_result=self._project_opened)

    def _project_opened(self, out) -> None:
        self.project, prob = out
        self.params.fill(self.project.config)  # the values in force, fixed ones read-only
        self._show_project_layers()
        self.guidance.value = (
            "the project works on its own copies of the targets: paint corrections in "
            f"'{self._labels_layer_name(0)}' (your own layers are not changed)")
        prop = self.project.proposal
        if prop is not None and prob is not None:
            self._show_proposal(prop, prob)
        self._refresh()

    def load_source_model(self, path) -> Any:
        """Read a source network (.pt, or a bioimage.io .zip package) and make it
        the project's, in the runner's worker (file reads, the project's copy)."""
        from expertloop.engine.jobs import call_job

        path = Path(str(path))
        project = self.project

        def job():
            model = yield from call_job(f"reading {path.name}", read_source_model, path)
            yield from call_job("saving it in the project", project.set_source_model, model)
            return model

        def done(_):
            notify("Membranes", f"source model {path.name} loaded")
            self._refresh()

        return self.runner.start(job(), description="loading source model", on_result=done)

    def train_source(self, *_) -> Any:
        from expertloop.engine.membranes.net import membrane_labels

        if not self._need_project("train source"):
            return None
        model_path = str(self.source_model.value)
        img, truth = self._layer_data(self.source_image), self._layer_data(self.source_labels)
        try:
            if img is None and model_path not in ("", "."):
                return self.load_source_model(model_path)
            if img is None or truth is None:
                notify("Membranes", "choose source images and their truth (or a saved source model)")
                return None
            images = _planes(img)
            labels = [membrane_labels(t, self.source_value.value) for t in _planes(truth)]
            if len(images) != len(labels):
                raise ValueError(f"{len(images)} source images but {len(labels)} truth images")
        except Exception as exc:  # bad files and inputs become notifications
            notify("Membranes", str(exc))
            return None
        return self._start(lambda: self.project.train_source(images, labels), description="source training",
                                 on_result=lambda _: self._refresh())

    def transfer(self, *_) -> Any:
        if not self._need_project("transfer"):
            return None
        return self._start(self.project.transfer, description="transfer",
                                 on_result=lambda _: self._refresh())

    def propose(self, *_) -> Any:
        if not self._need_project("propose region"):
            return None

        def show(out):
            self._refresh()
            self._show_proposal(out["region"], out["prob"])

        return self._start(self.project.propose, description="region proposal", on_result=show)

    def _show_proposal(self, region, prob) -> None:
        from expertloop.engine.membranes.loop import prefill_region
        from expertloop.engine.membranes.region import uncertainty_map

        i = region.image
        base = layer_by_name(self._viewer, self._target_layer_name(i))
        kw = {} if base is None else {"scale": base.scale, "translate": base.translate}
        for name in (REGION_LAYER, UNCERTAINTY_LAYER):
            if name in self._viewer.layers:
                self._viewer.layers.remove(name)
        self._viewer.add_image(uncertainty_map(prob), name=UNCERTAINTY_LAYER, colormap=UNCERTAINTY_COLORMAP,
                               contrast_limits=(0, 0.5), opacity=0.7, blending="translucent", **kw)
        self._viewer.add_shapes(region.outline(), shape_type="polygon", name=REGION_LAYER,
                                edge_color="yellow", face_color="transparent", edge_width=2, **kw)
        lname = self._labels_layer_name(i)
        labels_layer = layer_by_name(self._viewer, lname)
        if labels_layer is not None:
            labels_layer.data = prefill_region(labels_layer.data, prob, region.mask(prob.shape))
            self._viewer.layers.selection.active = labels_layer
        self.guidance.value = (f"correct the labels inside the yellow region of target {i} "
                               f"({region.n_windows} windows) in layer '{lname}', then Accept & retrain")

    def accept(self, *_) -> Any:
        if not self._need_project("accept"):
            return None
        reg = self.project.proposal
        if reg is None:
            notify("Membranes", "propose a region first")
            return None
        layer = layer_by_name(self._viewer, self._labels_layer_name(reg.image))
        if layer is None:
            notify("Membranes", f"the labels layer '{self._labels_layer_name(reg.image)}' is missing")
            return None
        from expertloop.engine.jobs import call_job

        project, labels = self.project, layer_array(layer)[0]

        def job():  # the corrections are read and saved in the worker, then the retraining
            yield from call_job("saving your corrections", lambda: project.accept(np.asarray(labels)))
            return (yield from project.retrain())

        def done(_):
            for name in (REGION_LAYER, UNCERTAINTY_LAYER):
                if name in self._viewer.layers:
                    self._viewer.layers.remove(name)
            self.guidance.value = "retrained on your corrections: Propose region for the next round"
            self._show_project_layers()
            self._refresh()

        self.guidance.value = "retraining on your corrections; then Propose region for the next round"
        def failed(_):
            self.guidance.value = (f"not accepted (see the message): correct the labels inside the yellow region "
                                   f"in '{layer.name}', then Accept & retrain")

        return self.runner.start(job(), description="retraining", on_result=done, on_error=failed)
