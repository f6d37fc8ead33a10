"""Service layer: permissions, validation, authorship, search and reports.

Every test runs on SQLite and PostgreSQL (fixture ``project``).
"""

from __future__ import annotations

import pytest

from expertloop.store import (
    SCHEMA_VERSION,
    NotFound,
    PermissionDenied,
    Store,
    StoreValidationError,
    accepted_annotations,
    push_review_tasks,
)


def _label_all(store):
    """bob and cy label the four scans (hand-made; used by search and report tests).

    image  bob       cy
    s1     normal    normal
    s2     abnormal  normal
    s3     abnormal  abnormal
    s4     normal    -
    """
    for uri, lab, t in [("/data/s1.png", "normal", 2.0), ("/data/s2.png", "abnormal", 4.0),
                        ("/data/s3.png", "abnormal", 6.0), ("/data/s4.png", "normal", 8.0)]:
        store.annotate("bob", "scans", uri, label=lab, time_spent=t)
    for uri, lab in [("/data/s1.png", "normal"), ("/data/s2.png", "normal"),
                     ("/data/s3.png", "abnormal")]:
        store.annotate("cy", "scans", uri, label=lab, time_spent=1.0)


# ------------------------------------------------------------ permissions
def test_annotator_cannot_write_or_read_unassigned_collection(project):
    project.add_collection("ada", "other", "kind", images=["/data/o1.png"])
    with pytest.raises(PermissionDenied, match="not assigned"):
        project.annotate("bob", "other", "/data/o1.png", label="normal")
    with pytest.raises(PermissionDenied, match="not assigned"):
        project.images("bob", "other")
    with pytest.raises(PermissionDenied):
        project.search("bob", collection="other")
    # nothing was written
    assert project.annotations("ada", "other") == []
    # bob sees only his collection; the admin sees both
    assert [c.name for c in project.collections("bob")] == ["scans"]
    assert [c.name for c in project.collections("ada")] == ["other", "scans"]
    # after assignment the same write works
    project.assign("ada", "other", "bob")
    rec = project.annotate("bob", "other", "/data/o1.png", label="normal")
    assert rec.annotator == "bob" and rec.created_by == "bob"


def test_non_admin_cannot_create_or_assign(project):
    with pytest.raises(PermissionDenied, match="only admins can create collections"):
        project.add_collection("bob", "mine", "kind")
    with pytest.raises(PermissionDenied, match="create templates"):
        project.add_template("bob", "t2", "points")
    with pytest.raises(PermissionDenied, match="assign"):
        project.assign("bob", "scans", "dan")
    with pytest.raises(PermissionDenied, match="add users"):
        project.add_user("bob", "eve")
    with pytest.raises(PermissionDenied, match="add images"):
        project.add_images("bob", "scans", ["/data/x.png"])
    with pytest.raises(PermissionDenied, match="reports"):
        project.report("bob", "scans")
    with pytest.raises(PermissionDenied, match="unknown user"):
        project.annotate("mallory", "scans", "/data/s1.png", label="normal")
    assert [c.name for c in project.collections("ada")] == ["scans"]
    assert "eve" not in [u.name for u in project.users()]
    assert [u.name for u in project.users(expertise="cardiology")] == ["bob"]


def test_only_admin_writes_for_another_annotator(project):
    with pytest.raises(PermissionDenied, match="another annotator"):
        project.annotate("bob", "scans", "/data/s1.png", label="normal", annotator="cy")
    rec = project.annotate("ada", "scans", "/data/s1.png", label="normal", annotator="cy")
    # the annotation is cy's, the write is recorded as ada's
    assert rec.annotator == "cy" and rec.created_by == "ada" and rec.updated_by == "ada"
    with pytest.raises(PermissionDenied, match="not assigned"):
        project.annotate("ada", "scans", "/data/s1.png", label="normal", annotator="dan")


def test_every_write_records_its_author(project):
    project.annotate("bob", "scans", "/data/s1.png", label="normal")
    rec = project.annotate("ada", "scans", "/data/s1.png", label="abnormal", annotator="bob")
    # replaced in place: created by bob, updated by ada
    assert (rec.label, rec.created_by, rec.updated_by) == ("abnormal", "bob", "ada")
    assert len(project.annotations("ada", "scans")) == 1
    log = project.audit_log("ada")
    assert [(e["actor"], e["action"]) for e in log[:2]] == [("ada", "annotate"),
                                                             ("bob", "annotate")]
    actions = {(e["actor"], e["action"], e["entity"]) for e in log}
    assert ("ada", "create", "collection") in actions
    assert ("ada", "assign", "collection") in actions
    assert ("ada", "create", "user") in actions
    with pytest.raises(PermissionDenied):
        project.audit_log("bob")


# ------------------------------------------------------------ validation
def test_label_outside_label_set_rejected(project):
    with pytest.raises(StoreValidationError, match="'maybe' is not in template 'kind'"):
        project.annotate("bob", "scans", "/data/s1.png", label="maybe")
    with pytest.raises(StoreValidationError, match="needs a label"):
        project.annotate("bob", "scans", "/data/s1.png")
    with pytest.raises(NotFound, match="not in collection"):
        project.annotate("bob", "scans", "/data/nope.png", label="normal")
    # a batch with one bad row writes nothing
    with pytest.raises(StoreValidationError):
        project.annotate_many("bob", "scans", [
            {"image": "/data/s1.png", "label": "normal"},
            {"image": "/data/s2.png", "label": "bogus"}])
    assert project.annotations("ada", "scans") == []


def test_geometric_templates_validate_labels(project):
    project.add_template("ada", "outline", "contour", labels=["cell", "debris"])
    project.add_collection("ada", "cells", "outline", images=["/data/c1.png"])
    project.assign("ada", "cells", "bob")
    sq = [[0, 0], [0, 5], [5, 5], [5, 0]]
    with pytest.raises(StoreValidationError, match="not in template"):
        project.annotate("bob", "cells", "/data/c1.png",
                         {"shapes": [{"type": "polygon", "points": sq, "label": "dust"}]})
    with pytest.raises(StoreValidationError, match="unknown shape type"):
        project.annotate("bob", "cells", "/data/c1.png",
                         {"shapes": [{"type": "blob", "points": sq}]})
    rec = project.annotate("bob", "cells", "/data/c1.png",
                           {"shapes": [{"type": "polygon", "points": sq, "label": "cell"}]})
    assert rec.value["shapes"][0]["label"] == "cell" and rec.label is None
    with pytest.raises(StoreValidationError, match="task type"):
        project.add_template("ada", "bad", "scribble")
    with pytest.raises(StoreValidationError, match="at least two labels"):
        project.add_template("ada", "one", "label", labels=["x"])


def test_schema_version_and_reopen(project, location):
    assert project.schema_version() == SCHEMA_VERSION
    project.annotate("bob", "scans", "/data/s1.png", label="normal")
    loc, files = location
    with Store.open(loc, files_dir=files) as again:
        assert [r.label for r in again.annotations("ada", "scans")] == ["normal"]
        assert again.schema_version() == SCHEMA_VERSION
    # create() on an existing project keeps its data and does not add a second admin
    with Store.create(loc, admin="someone-else", files_dir=files) as again:
        assert [u.name for u in again.users()] == ["ada", "bob", "cy", "dan"]
        assert len(again.annotations("ada", "scans")) == 1


def test_models_and_migrations_agree(project):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from expertloop.store.models import Base

    with project.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models changed without an Alembic revision: {diff}"


# ------------------------------------------------------------ search and reports
def test_search_against_hand_computed(project):
    _label_all(project)
    key = lambda recs: sorted((r.uri[-6:], r.annotator) for r in recs)  # noqa: E731
    assert key(project.search("ada", label="abnormal")) == [
        ("s2.png", "bob"), ("s3.png", "bob"), ("s3.png", "cy")]
    assert key(project.search("ada", annotator="cy")) == [
        ("s1.png", "cy"), ("s2.png", "cy"), ("s3.png", "cy")]
    assert key(project.search("ada", tag="hard", label="normal")) == [
        ("s1.png", "bob"), ("s1.png", "cy")]
    assert key(project.search("ada", where={"modality": "MR"})) == [
        ("s3.png", "bob"), ("s3.png", "cy"), ("s4.png", "bob")]
    assert key(project.search("ada", where={"modality": "US", "patient": "p2"})) == [
        ("s2.png", "bob"), ("s2.png", "cy")]
    # agreement: s1, s3 agree (2 raters each); s2 disagrees; s4 has one rater only
    assert key(project.search("ada", agreement="agree", annotator="bob")) == [
        ("s1.png", "bob"), ("s3.png", "bob")]
    assert key(project.search("ada", agreement="disagree")) == [
        ("s2.png", "bob"), ("s2.png", "cy")]
    assert len(project.search("ada", task="label")) == 7
    assert len(project.search("ada", task="kind")) == 7
    assert project.search("ada", task="contour") == []
    assert len(project.search("ada", label=["normal", "unsure"], limit=2)) == 2
    project.analyze()  # planner statistics: results must not change
    assert key(project.search("ada", agreement="disagree")) == [
        ("s2.png", "bob"), ("s2.png", "cy")]
    # dan is assigned nowhere: his search sees nothing
    assert project.search("dan") == []
    assert len(project.search("bob")) == 7


def test_report_against_hand_computed(project):
    _label_all(project)
    rep = project.report("ada", "scans")
    assert rep["images"] == 4
    assert rep["images_annotated"] == 4 and rep["images_complete"] == 3
    assert rep["annotators"]["bob"] == {"done": 4, "todo": 0, "fraction": 1.0,
                                        "mean_time_s": 5.0}
    assert rep["annotators"]["cy"]["done"] == 3 and rep["annotators"]["cy"]["todo"] == 1
    assert rep["label_counts"] == {"abnormal": 3, "normal": 4}
    # Cohen's kappa over s1..s3: bob = N A A, cy = N N A
    # po = 2/3; pe = (1/3)(2/3) + (2/3)(1/3) = 4/9; kappa = (2/3-4/9)/(5/9) = 0.4
    ck = rep["cohen_kappa"]["bob|cy"]
    assert ck["items"] == 3 and ck["kappa"] == pytest.approx(0.4)
    # Fleiss with two raters over the same three items:
    # P_i = 1, 0, 1 -> P = 2/3; p_N = 3/6, p_A = 3/6 -> Pe = 1/2; kappa = 1/3
    assert rep["fleiss_items"] == 3
    assert rep["fleiss_kappa"] == pytest.approx(1 / 3)
    prog = project.progress("ada", "scans")
    assert prog == {"bob": {"done": 4, "todo": 0, "total": 4},
                    "cy": {"done": 3, "todo": 1, "total": 4}}
    # an annotator sees only their own progress
    assert project.progress("cy", "scans") == {"cy": {"done": 3, "todo": 1, "total": 4}}
    with pytest.raises(PermissionDenied, match="another annotator"):
        project.progress("cy", "scans", annotator="bob")
    assert project.progress("ada", "scans", annotator="cy")["cy"]["done"] == 3


def test_missing_image_listed_not_fatal(project, tmp_path):
    real = tmp_path / "here.png"
    real.write_bytes(b"\x89PNG")
    project.add_images("ada", "scans", [str(real), "https://example.invalid/remote.png",
                                        "file://" + str(tmp_path / "gone.png")])
    missing = {m.uri for m in project.missing_images("bob", "scans")}
    # the four /data/... paths and gone.png do not exist; remote URLs are not checked
    assert missing == {"/data/s1.png", "/data/s2.png", "/data/s3.png", "/data/s4.png",
                       "file://" + str(tmp_path / "gone.png")}
    assert len(project.images("bob", "scans")) == 7
    # a missing image can still be annotated (the store never needs the pixels)
    project.annotate("bob", "scans", "/data/s1.png", label="unsure")


# ------------------------------------------------------------ review tasks API
def test_push_review_tasks_and_read_accepted(project):
    items = [{"uri": f"/data/r{i}.png", "label": "cat" if i % 2 else "dog",
              "confidence": 0.5 + i / 20, "probabilities": [0.5 + i / 20, 0.5 - i / 20],
              "meta": {"index": i}} for i in range(4)]
    info = push_review_tasks(project, "review-1", items, actor="ada",
                             labels=["dog", "cat"], assign_to=["bob"], model="m0")
    assert info.n_images == 4 and info.annotators == ["bob"] and info.task_type == "label"
    preds = project.predictions("bob", "review-1")
    by_uri = {p.uri: p for p in preds.values()}
    assert by_uri["/data/r1.png"].label == "cat"
    assert by_uri["/data/r1.png"].probabilities == {"dog": 0.55, "cat": 0.45}
    # bob accepts r0, corrects r1; r2, r3 stay pending
    project.annotate("bob", "review-1", "/data/r0.png", label="dog", source="accepted-model")
    project.annotate("bob", "review-1", "/data/r1.png", label="dog")
    out = accepted_annotations(project, "review-1", actor="ada")
    assert [(r["uri"], r["label"], r["source"], r["predicted_label"], r["meta"])
            for r in out] == [
        ("/data/r0.png", "dog", "accepted-model", "dog", {"index": 0}),
        ("/data/r1.png", "dog", "manual", "cat", {"index": 1})]
    assert out[0]["confidence"] == pytest.approx(0.5)
    # pushing to an existing collection replaces predictions, keeps annotations
    push_review_tasks(project, "review-1", [{"uri": "/data/r1.png", "label": "dog",
                                             "confidence": 0.9}], actor="ada")
    out = accepted_annotations(project, "review-1", actor="ada")
    assert out[1]["source"] == "accepted-model" and out[1]["confidence"] == 0.9
    with pytest.raises(StoreValidationError, match="label set"):
        push_review_tasks(project, "review-1", [{"uri": "/data/r9.png", "label": "cow"}],
                          actor="ada")
    with pytest.raises(PermissionDenied):
        push_review_tasks(project, "review-2", items, actor="bob", labels=["dog", "cat"])
    with pytest.raises(StoreValidationError, match="labels="):
        push_review_tasks(project, "review-3", items, actor="ada")


def test_accepted_annotations_majority(project):
    push_review_tasks(project, "rv", [{"uri": "/data/q.png", "label": "a"}], actor="ada",
                      labels=["a", "b"], assign_to=["bob", "cy", "dan"])
    project.annotate("bob", "rv", "/data/q.png", label="b")
    project.annotate("cy", "rv", "/data/q.png", label="b")
    project.annotate("dan", "rv", "/data/q.png", label="a")
    (maj,) = accepted_annotations(project, "rv", actor="ada")
    assert (maj["label"], maj["n_votes"], sorted(maj["annotators"])) == ("b", 3, ["bob", "cy"])
    (latest,) = accepted_annotations(project, "rv", actor="ada", resolve="latest")
    assert latest["label"] == "a" and latest["source"] == "accepted-model"


def test_delete_unassign_and_roles(project):
    project.annotate("bob", "scans", "/data/s1.png", label="normal")
    project.annotate("cy", "scans", "/data/s1.png", label="abnormal")
    with pytest.raises(PermissionDenied, match="another annotator"):
        project.delete_annotation("bob", "scans", "/data/s1.png", annotator="cy")
    assert project.delete_annotation("bob", "scans", "/data/s1.png")
    assert not project.delete_annotation("bob", "scans", "/data/s1.png")
    assert [r.annotator for r in project.annotations("ada", "scans")] == ["cy"]
    with pytest.raises(PermissionDenied, match="unassign"):
        project.unassign("bob", "scans", "cy")
    project.unassign("ada", "scans", "cy")
    with pytest.raises(PermissionDenied, match="not assigned"):
        project.annotate("cy", "scans", "/data/s2.png", label="normal")
    # cy's existing annotation stays (history is kept), she just cannot write any more
    assert len(project.annotations("ada", "scans")) == 1
    with pytest.raises(PermissionDenied, match="change roles"):
        project.set_role("bob", "bob", "admin")
    project.set_role("ada", "bob", "admin")
    project.add_collection("bob", "bobs", "kind")    # bob is an admin now
    with pytest.raises(StoreValidationError, match="role"):
        project.set_role("ada", "bob", "owner")
    log = project.audit_log("bob", limit=5)
    assert [e["action"] for e in log[:3]] == ["create", "set-role", "unassign"]


def test_backend_params_require_postgres(monkeypatch, tmp_path):
    from expertloop.store import testing

    monkeypatch.delenv(testing.PG_ENV, raising=False)
    monkeypatch.setenv(testing.REQUIRE_ENV, "1")
    pg = testing.backend_params()[1]
    assert not pg.marks[0].args[0]       # required: not skipped ...
    with pytest.raises(RuntimeError, match="EXPERTLOOP_TEST_POSTGRES_URL is not set"):
        testing.fresh_location("postgresql", tmp_path)   # ... so it fails loudly
    monkeypatch.delenv(testing.REQUIRE_ENV)
    assert testing.backend_params()[1].marks[0].args[0]  # optional: skipped


def test_save_review_one_transaction_source_from_the_prediction(project):
    """The web service's save: the source follows the model's prediction, read in
    the same transaction; permissions as annotate; one audit row per save."""
    project.push_predictions("ada", "scans", [{"uri": "/data/s1.png", "label": "normal"},
                                              {"uri": "/data/s2.png", "label": "normal"}],
                             model="m")
    ids = {im.uri: im.id for im in project.images("ada", "scans")}
    before = len(project.audit_log("ada", limit=1000))
    assert project.save_review("bob", "scans", ids["/data/s1.png"], label="normal",
                               time_spent=2.0) == "accepted-model"
    assert project.save_review("bob", "scans", ids["/data/s2.png"], label="abnormal") == "manual"
    assert project.save_review("bob", "scans", ids["/data/s3.png"], label="unsure") == "manual"
    got = {r.uri: (r.label, r.source, r.annotator, r.updated_by)
           for r in project.annotations("ada", "scans")}
    assert got == {"/data/s1.png": ("normal", "accepted-model", "bob", "bob"),
                   "/data/s2.png": ("abnormal", "manual", "bob", "bob"),
                   "/data/s3.png": ("unsure", "manual", "bob", "bob")}
    assert len(project.audit_log("ada", limit=1000)) == before + 3
    with pytest.raises(PermissionDenied):
        project.save_review("dan", "scans", ids["/data/s1.png"], label="normal")
    with pytest.raises(StoreValidationError):
        project.save_review("bob", "scans", ids["/data/s1.png"], label="<script>")
    # a state fingerprint for live views: changes with every save, not with reads
    state = project.annotation_state("ada", "scans")
    assert state[0] == 3 and project.annotation_state("ada", "scans") == state
    project.save_review("bob", "scans", ids["/data/s1.png"], label="abnormal")
    assert project.annotation_state("ada", "scans") != state
    assert project.annotation_state("cy", "scans", annotator="cy")[0] == 0
