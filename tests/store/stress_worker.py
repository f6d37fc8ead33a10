"""One writer process of the concurrency stress test (run by test_store_concurrency).

usage: stress_worker.py LOCATION ANNOTATOR N GO_FILE

Waits until GO_FILE exists (so both writers start together), then saves N
annotations of collection 'stress', one transaction each, and prints 'done N'.
"""

import sys
import time
from pathlib import Path

from expertloop.store import Store

LABELS = ["a", "b", "c"]


def expected_label(annotator: str, i: int) -> str:
    return LABELS[(i * 7 + len(annotator)) % 3]


def main() -> None:
    location, annotator, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    waits = []
    store = Store.open(location, busy_timeout=0.2, lock_timeout=120, on_wait=waits.append)
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("GO file never appeared")
        time.sleep(0.01)
    for i in range(n):
        store.annotate_many(annotator, "stress", [
            {"image": f"/img/{i:05d}.png", "label": expected_label(annotator, i),
             "time_spent": float(i)}])
    store.close()
    print(f"done {n} waits {len(waits)}", flush=True)


if __name__ == "__main__":
    main()
