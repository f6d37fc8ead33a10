"""'Start here' dock: what each workflow does, a button that opens its docks
and a link to its docs page; ``expertloop gui`` opens it when no widget is
asked for, and a workflow's sample opens that workflow's docks
(:data:`WORKFLOWS` is the one table both use)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from magicgui.widgets import Container, Label, PushButton

from expertloop import docs_url
from expertloop.widgets._common import fit_dock

if TYPE_CHECKING:
    import napari

PLUGIN = "napari-expertloop"


@dataclass(frozen=True)
class Workflow:
    title: str
    what: str  # one line: what the expert does and gets
    docks: tuple[str, ...]  # the manifest's widget display names, in order
    docs: str  # page under docs/
    samples: tuple[str, ...]  # samples (napari.yaml keys) this workflow starts from


WORKFLOWS: tuple[Workflow, ...] = (
    Workflow("Spots in 3D MRI", "click spots (timed); train a spot detector from the clicks",
             ("Spot annotator", "Spot detector"), "spots.md", ("spots", "mri")),
    Workflow("Membranes (active learning)", "correct the one region the network is least sure of, "
             "round after round", ("Membrane active learning",), "membranes.md", ("membranes",)),
    Workflow("Semi-automatic labelling", "label a few images, review only the hard cases",
             ("Semi-automatic labelling",), "semiauto.md", ("semiauto",)),
    Workflow("Annotation project", "annotate shared images with a team; who did what, agreement",
             ("Annotation project",), "store.md", ()),
    Workflow("Marker encoder (FLIM)", "scribble on a few objects; a network from the scribbles, "
             "and which image to mark next", ("Marker encoder (FLIM)", "Image recommendation (FLIM)"),
             "flim.md", ("flim", "nuclei")),
    Workflow("Blood cells", "detect and type blood cells, flag abnormal ones",
             ("Blood cell detector",), "blood.md", ("blood",)),
)


def docks_for_sample(sample: str | None) -> list[str]:
    """The docks of the workflow that starts from ``sample`` (empty if none)."""
    for wf in WORKFLOWS:
        if sample in wf.samples:
            return list(wf.docks)
    return []


def open_workflow(viewer: napari.viewer.Viewer, wf: Workflow) -> list:
    """Dock ``wf``'s widgets in ``viewer`` (napari's public plugin-dock call)."""
    return [viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in wf.docks]


class StartHereWidget(Container):
    """One row per workflow: what it does, an Open button, its docs page."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.buttons: dict[str, PushButton] = {}
        rows = [Label(value="Pick a workflow. Each has a sample: File > Open Sample > expertloop.")]
        for wf in WORKFLOWS:
            btn = PushButton(text=f"Open {wf.title}")
            btn.changed.connect(lambda *_, wf=wf: open_workflow(self._viewer, wf))
            self.buttons[wf.title] = btn
            link = Label(value=f'{wf.what}. <a href="{docs_url(wf.docs)}">How to ({wf.docs})</a>')
            link.native.setOpenExternalLinks(True)
            link.native.setWordWrap(True)
            rows += [btn, link]
        super().__init__(widgets=rows, labels=False)
        fit_dock(self)
