"""Benchmark of the annotation store: write throughput and query/report latency.

Builds a store with ~100k annotations (``--quick``: ~10k) and measures, for
SQLite (a project folder in a temp dir) and PostgreSQL (``--postgres-url`` or
``EXPERTLOOP_TEST_POSTGRES_URL``; ``source .ci/postgres.sh`` starts one):

* bulk writes/s: ``annotate_many`` with 1000 annotations per transaction;
* single writes/s: ``annotate_many`` with one annotation per transaction (the
  dock's ``annotate`` also reads the record back, so it is somewhat slower);
* latency of searches (label, tag + metadata, disagreement), a collection
  report with kappas, and an annotator's progress, each the median of 3 runs.

Prints readable lines, then ONE JSON line with the figures.

    python benchmarks/bench_store.py [--quick] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine  # noqa: E402

LABELS = ["normal", "abnormal", "unsure"]


def _timed(fn, repeat=3):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run_backend(location: str, n_images: int, n_annotators: int, n_single: int,
                files_dir=None) -> dict:
    import numpy as np

    from expertloop.store import Store

    rng = np.random.default_rng(0)
    st = Store.create(location, admin="admin", files_dir=files_dir)
    annotators = [f"a{i}" for i in range(n_annotators)]
    for a in annotators:
        st.add_user("admin", a)
    st.add_template("admin", "kind", "label", labels=LABELS)
    images = [{"uri": f"/archive/scan{i:06d}.png",
               "meta": {"modality": "US" if i % 2 else "MR", "patient": f"p{i % 500}"},
               "tags": ["hard"] if i % 10 == 0 else []} for i in range(n_images)]
    t0 = time.perf_counter()
    st.add_collection("admin", "big", "kind", images=images)
    t_index = time.perf_counter() - t0
    for a in annotators:
        st.assign("admin", "big", a)
    truth = rng.integers(0, 3, n_images)
    total = 0
    t0 = time.perf_counter()
    for k, a in enumerate(annotators):
        noisy = np.where(rng.random(n_images) < 0.8, truth, rng.integers(0, 3, n_images))
        for start in range(0, n_images, 1000):
            batch = [{"image": images[i]["uri"], "label": LABELS[noisy[i]],
                      "annotator": a, "time_spent": 1.0 + k} for i in range(start, min(start + 1000, n_images))]
            total += st.annotate_many("admin", "big", batch)
    t_bulk = time.perf_counter() - t0
    st.analyze()  # planner statistics after the bulk load (as after a big import)
    t0 = time.perf_counter()
    for i in range(n_single):
        st.annotate_many(annotators[0], "big", [{"image": images[i]["uri"],
                                                 "label": LABELS[(i + 1) % 3]}])
    t_single = time.perf_counter() - t0

    q = {}
    q["search_label_limit100_s"], _ = _timed(
        lambda: st.search("admin", collection="big", label="abnormal", limit=100))
    q["search_annotator_label_s"], r = _timed(
        lambda: st.search("admin", collection="big", annotator="a1", label="unsure"))
    q["search_annotator_label_hits"] = len(r)
    q["search_tag_meta_s"], r = _timed(
        lambda: st.search("admin", tag="hard", where={"modality": "MR"}, annotator="a0"))
    q["search_tag_meta_hits"] = len(r)
    q["search_disagree_limit100_s"], _ = _timed(
        lambda: st.search("admin", collection="big", agreement="disagree", limit=100))
    q["progress_s"], _ = _timed(lambda: st.progress("admin", "big"))
    q["report_s"], rep = _timed(lambda: st.report("admin", "big"), repeat=1)
    st.close()
    return {"annotations": total, "index_images_s": t_index,
            "bulk_writes_per_s": total / t_bulk, "single_writes_per_s": n_single / t_single,
            "fleiss_kappa": rep["fleiss_kappa"], **q}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~10k annotations instead of ~100k")
    p.add_argument("--postgres-url", default=os.environ.get("EXPERTLOOP_TEST_POSTGRES_URL"),
                   help="a PostgreSQL database the benchmark may WIPE")
    args = p.parse_args(argv)
    n_images, n_annot, n_single = (2500, 4, 200) if args.quick else (25000, 4, 1000)
    figures = {"benchmark": "store", "quick": args.quick, "machine": machine(),
               "load_avg_1min": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"SQLite: {n_images} images x {n_annot} annotators", flush=True)
        figures["sqlite"] = run_backend(str(Path(tmp) / "proj"), n_images, n_annot, n_single)
        for k, v in figures["sqlite"].items():
            print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
        if args.postgres_url:
            from expertloop.store.testing import PG_ENV, fresh_location

            os.environ[PG_ENV] = args.postgres_url
            loc, files = fresh_location("postgresql", Path(tmp))
            print(f"PostgreSQL: {n_images} images x {n_annot} annotators", flush=True)
            figures["postgresql"] = run_backend(loc, n_images, n_annot, n_single, files)
            for k, v in figures["postgresql"].items():
                print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
        else:
            print("PostgreSQL: skipped (no --postgres-url)")
            figures["postgresql"] = None
    emit(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
