"""Annotation projects: a shared store of images, tasks, annotators and annotations.

A project is a SQLite file in a project folder (default; WAL mode, safe for
several napari processes on one machine) or any SQLAlchemy URL, e.g. a
PostgreSQL server for a team. Images are indexed by URI or path, never
copied. See ``docs/store.md``.

The generic API for other workflows (active-learning loops):

* :func:`push_review_tasks` puts model predictions into a collection as review
  tasks (the annotator sees the predicted label and accepts or corrects it);
* :func:`accepted_annotations` reads the reviewed labels back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from expertloop.store.agreement import cohen_kappa, fleiss_kappa, fleiss_table
from expertloop.store.core import (
    AnnotationRecord,
    CollectionInfo,
    ImageRecord,
    NotFound,
    PermissionDenied,
    PredictionRecord,
    Store,
    StoreError,
    StoreLockedError,
    StoreValidationError,
    format_report,
    local_path,
    migrate,
    review_source,
)
from expertloop.store.models import ROLES, SCHEMA_VERSION, SOURCES, TASK_TYPES

__all__ = [
    "ROLES", "SCHEMA_VERSION", "SOURCES", "TASK_TYPES", "AnnotationRecord",
    "CollectionInfo", "ImageRecord", "NotFound", "PermissionDenied", "PredictionRecord",
    "Store", "StoreError", "StoreLockedError", "StoreValidationError",
    "accepted_annotations", "cohen_kappa", "fleiss_kappa", "fleiss_table", "format_report",
    "local_path",
    "migrate", "push_review_tasks", "review_source",
]

_ITEM_FIELDS = ("uri", "label", "confidence", "probabilities", "meta", "image_meta", "tags")


def _as_mapping(item: Any) -> dict:
    if isinstance(item, Mapping):
        out = dict(item)
    else:  # a dataclass / simple object with attributes
        out = {k: getattr(item, k) for k in _ITEM_FIELDS if hasattr(item, k)}
    if "uri" not in out and "path" in out:
        out["uri"] = out.pop("path")
    if "uri" not in out:
        raise StoreValidationError(f"a review item needs a 'uri': {item!r}")
    out["uri"] = str(out["uri"])
    for key in ("label", "confidence"):
        val = out.get(key)
        if val is not None and hasattr(val, "item"):  # numpy scalars
            out[key] = val.item()
    if out.get("probabilities") is not None and not isinstance(out["probabilities"], Mapping):
        out["probabilities"] = [float(p) for p in out["probabilities"]]
    return out


def push_review_tasks(store: Store, collection: str, items: Iterable[Any], *,
                      actor: str, labels: Sequence[str] | None = None,
                      template: str | None = None, assign_to: Sequence[str] = (),
                      model: str = "", description: str = "") -> CollectionInfo:
    """Put model predictions into ``collection`` for expert review.

    ``items``: mappings (or objects with these attributes) with ``uri`` (path
    or URL of the image), ``label`` (the predicted label), ``confidence``,
    ``probabilities`` (a list in label order, or a ``{label: p}`` mapping),
    ``meta`` (anything JSON the caller wants back, e.g. a sample index),
    optionally ``image_meta`` and ``tags`` (searchable image attributes).

    The collection is created when missing, with ``template`` or else a new
    image-label template named ``"<collection> labels"`` over ``labels``.
    ``actor`` must be an admin; ``assign_to`` annotators are assigned.
    Pushing an image again replaces its prediction (annotations stay).
    """
    items = [_as_mapping(x) for x in items]
    names = {c.name for c in store.collections(actor)}
    if collection not in names:
        if template is None:
            if not labels:
                raise StoreValidationError(
                    f"collection {collection!r} does not exist: pass labels= (or template=)"
                    " to create it")
            template = f"{collection} labels"
            if template not in {t.name for t in store.templates()}:
                store.add_template(actor, template, "label", labels=[str(x) for x in labels],
                                   description=f"review of {model or 'model'} predictions")
        store.add_collection(actor, collection, template, description=description)
    store.push_predictions(actor, collection, items, model=model)
    for user in assign_to:
        store.assign(actor, collection, user)
    return store.collection(actor, collection)


def accepted_annotations(store: Store, collection: str, *, actor: str,
                         resolve: str = "majority", annotator: str | None = None
                         ) -> list[dict]:
    """The reviewed labels of ``collection``: one record per reviewed image.

    Each record: ``uri``, ``label`` (the expert's), ``source``
    (``accepted-model`` when the expert kept the prediction, ``manual`` when
    they changed it), ``predicted_label``, ``confidence``, ``probabilities``,
    ``meta`` (what was pushed), ``annotators``, ``n_votes``, ``updated_at``
    and ``time_spent`` (seconds, of the latest annotation with that label,
    None when unknown). With several
    annotators per image, ``resolve="majority"`` takes the most frequent label
    (ties: the latest annotation), ``"latest"`` the latest one. Images not
    reviewed yet are not returned.
    """
    if resolve not in ("majority", "latest"):
        raise StoreValidationError("resolve must be 'majority' or 'latest'")
    preds = store.predictions(actor, collection)
    by_image: dict[int, list[AnnotationRecord]] = {}
    for rec in store.annotations(actor, collection, annotator=annotator):
        if rec.label is None:
            continue
        by_image.setdefault(rec.image_id, []).append(rec)
    out = []
    for iid, recs in sorted(by_image.items()):
        recs.sort(key=lambda r: (r.updated_at, r.id))
        latest = recs[-1]
        if resolve == "majority":
            counts = Counter(r.label for r in recs)
            top = max(counts.values())
            label = next(r.label for r in reversed(recs) if counts[r.label] == top)
        else:
            label = latest.label
        pred = preds.get(iid)
        chosen = [r for r in recs if r.label == label]
        out.append({
            "uri": latest.uri, "image_id": iid, "label": label,
            "source": review_source(pred.label if pred else None, label)
            if pred else chosen[-1].source,
            "predicted_label": pred.label if pred else None,
            "confidence": pred.confidence if pred else None,
            "probabilities": pred.probabilities if pred else None,
            "meta": pred.meta if pred else {},
            "annotators": [r.annotator for r in chosen],
            "n_votes": len(recs),
            "updated_at": chosen[-1].updated_at,
            "time_spent": chosen[-1].time_spent,
        })
    return out
