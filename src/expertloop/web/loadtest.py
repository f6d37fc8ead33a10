"""Many annotators saving at once through the web API, and a check that the store
kept every write: used by the concurrency test and ``benchmarks/bench_web.py``.

Each simulated annotator has its own account and API token and saves, one request
after another, ``saves`` annotations on one collection (annotator ``u`` at step
``j`` labels image ``(u + j) mod n`` with label ``(u + 2j) mod k``), all annotators
at the same time. :func:`check_store` then compares what the store holds with the
last label each annotator sent for each image.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from expertloop.store import Store, auth


@dataclass
class StormResult:
    latencies: list[float] = field(default_factory=list)  # seconds per save
    errors: list[str] = field(default_factory=list)
    expected: dict[tuple[str, int], str] = field(default_factory=dict)
    wall: float = 0.0

    @property
    def saves(self) -> int:
        return len(self.latencies)

    def percentile(self, q: float) -> float:
        xs = sorted(self.latencies)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def make_annotators(store: Store, admin: str, collection: str, n: int,
                    prefix: str = "annotator") -> dict[str, str]:
    """``n`` new annotators assigned to ``collection``: ``{name: API token}``."""
    tokens = {}
    for k in range(n):
        name = f"{prefix}{k:02d}"
        store.add_user(admin, name)
        store.assign(admin, collection, name)
        tokens[name] = auth.create_token(store, admin, name, name="load test")
    return tokens


async def save_storm(tokens: dict[str, str], collection_id: int, image_ids: list[int],
                     labels: list[str], saves: int, *, base_url: str = "http://test",
                     app=None, pace: float = 0.0) -> StormResult:
    """All annotators save ``saves`` annotations each, concurrently (httpx).

    ``pace`` > 0: each annotator starts a save every ``pace`` seconds (a person
    working), instead of back to back (the worst case)."""
    import httpx

    out = StormResult()
    transport = httpx.ASGITransport(app=app) if app is not None else None
    url = f"/api/c/{collection_id}/annotations"

    async def annotator(u: int, name: str, client) -> None:
        hdr = {"Authorization": f"Bearer {tokens[name]}"}
        start = time.perf_counter() + pace * u / max(1, len(tokens))  # staggered
        for j in range(saves):
            if pace > 0:
                await asyncio.sleep(max(0.0, start + j * pace - time.perf_counter()))
            iid = image_ids[(u + j) % len(image_ids)]
            label = labels[(u + 2 * j) % len(labels)]
            t0 = time.perf_counter()
            r = await client.post(url, headers=hdr, json={
                "image_id": iid, "label": label, "time_spent": 1.0 + j})
            out.latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                out.errors.append(f"{name} step {j}: {r.status_code} {r.text[:200]}")
            else:
                out.expected[(name, iid)] = label

    limits = httpx.Limits(max_connections=len(tokens) + 4)
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=120,
                                 limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[annotator(u, name, client)
                               for u, name in enumerate(sorted(tokens))])
        out.wall = time.perf_counter() - t0
    return out


def check_store(store: Store, admin: str, collection: str, result: StormResult) -> dict:
    """``lost`` (sent and acknowledged, not in the store or with another label),
    ``duplicated`` (more than one row per annotator and image) and
    ``misattributed`` (annotator, creator or last writer not the sender)."""
    recs = [r for r in store.annotations(admin, collection)
            if (r.annotator, r.image_id) in result.expected]
    seen: dict[tuple[str, int], int] = {}
    misattributed = 0
    lost = 0
    for r in recs:
        key = (r.annotator, r.image_id)
        seen[key] = seen.get(key, 0) + 1
        if r.updated_by != r.annotator or r.created_by != r.annotator:
            misattributed += 1
        if r.label != result.expected[key]:
            lost += 1
    lost += sum(1 for key in result.expected if key not in seen)
    return {"lost": lost, "duplicated": sum(n - 1 for n in seen.values()),
            "misattributed": misattributed, "rows": len(recs),
            "expected_rows": len(result.expected)}
