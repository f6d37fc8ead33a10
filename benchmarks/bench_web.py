"""Benchmark of the web service (``expertloop serve``): saves, pages and images.

Starts the real server (``expertloop serve`` in a subprocess, uvicorn, access log
off) over a fresh project on SQLite and, when a PostgreSQL URL is given
(``--postgres-url`` or ``EXPERTLOOP_TEST_POSTGRES_URL``; ``source .ci/postgres.sh``
starts one), on PostgreSQL, and measures from this process (httpx, async):

* "save annotation" through the JSON API with 1 annotator (sequential) and 20
  concurrent annotators (one API token each) saving back to back (the worst case),
  and 20 annotators each saving once a second (people at work): saves/s, p50/p95
  latency, and lost / duplicated / misattributed writes checked in the store;
* the annotation page: server time of the HTML (p50 of 20 GETs) and, when Debian's
  chromium + chromedriver are present, time to first render in a real headless
  browser (navigation start to the first image drawn, median of 3 loads);
* bytes sent per image view for a 512 x 512 16-bit image: full-size PNG, JPEG,
  and a 96-pixel strip thumbnail, against the file size; image endpoint p50
  latency uncached (first view) and cached.

Prints readable lines, then ONE JSON line with the figures.

    python benchmarks/bench_web.py [--quick] [--postgres-url URL] [--no-browser]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine  # noqa: E402

LABELS = ["normal", "abnormal", "unsure"]
PASSWORD = "bench-password-1"


def build(location: str, files_dir: Path, root: Path, n_images: int):
    import numpy as np
    import tifffile

    from expertloop.store import Store, auth

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    big = root / "view.tif"
    tifffile.imwrite(big, (rng.normal(1000, 200, (512, 512)) + np.linspace(0, 3000, 512))
                     .clip(0, 65535).astype(np.uint16))
    store = Store.create(location, admin="ada", files_dir=files_dir)
    auth.set_password(store, None, "ada", PASSWORD)
    store.add_template("ada", "kind", "label", labels=LABELS)
    uris = [str(big)] + [str(root / f"img{k:05d}.png") for k in range(n_images - 1)]
    store.add_collection("ada", "bench", "kind")
    store.push_predictions("ada", "bench", [
        {"uri": u, "label": LABELS[k % 3], "confidence": 0.5} for k, u in enumerate(uris)])
    return store, big


class Server:
    def __init__(self, location: str, root: Path, files_dir: Path) -> None:
        from expertloop.web.testing import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[1] / "src")
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "expertloop.cli", "serve", location, "--port",
             str(self.port), "--image-root", str(root), "--files-dir", str(files_dir),
             "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL)
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/login", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("expertloop serve did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def saves(store, server: Server, n_users: int, per_user: int, prefix: str,
          pace: float = 0.0) -> dict:
    from expertloop.web.loadtest import check_store, make_annotators, save_storm

    tokens = make_annotators(store, "ada", "bench", n_users, prefix=prefix)
    cid = store.collection("ada", "bench").id
    ids = [im.id for im in store.images("ada", "bench")]
    res = asyncio.run(save_storm(tokens, cid, ids, LABELS, per_user, base_url=server.url,
                                 pace=pace))
    check = check_store(store, "ada", "bench", res)
    return {"annotators": n_users, "saves": res.saves, "errors": len(res.errors),
            "saves_per_s": res.saves / res.wall, "p50_ms": 1000 * res.percentile(50),
            "p95_ms": 1000 * res.percentile(95), "lost": check["lost"],
            "duplicated": check["duplicated"], "misattributed": check["misattributed"]}


def session_client(server: Server):
    import re

    import httpx

    c = httpx.Client(base_url=server.url, timeout=60)
    page = c.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    c.post("/login", data={"username": "ada", "password": PASSWORD, "csrf": csrf})
    assert "el_session" in c.cookies, "login failed"
    return c


def pages_and_images(store, server: Server, big: Path) -> dict:
    c = session_client(server)
    cid = store.collection("ada", "bench").id
    iid = store.images("ada", "bench")[0].id
    html = []
    for _ in range(20):
        t0 = time.perf_counter()
        r = c.get(f"/c/{cid}")
        html.append(time.perf_counter() - t0)
        assert r.status_code == 200
    out = {"page_html_p50_ms": 1000 * statistics.median(html), "page_html_bytes": len(r.content),
           "file_bytes": big.stat().st_size}
    variants = {"png": "", "jpeg": "fmt=jpeg", "thumb96": "size=96"}
    for name, q in variants.items():
        first = None
        times = []
        for k in range(11):
            # vary the contrast once to measure an uncached render
            url = f"/img/{cid}/{iid}?{q}" + ("&" if q else "") + (f"lo=0&hi={4000 + k}"
                                                                    if k == 0 else "")
            t0 = time.perf_counter()
            r = c.get(url.rstrip("?&"))
            dt = time.perf_counter() - t0
            assert r.status_code == 200, r.text
            if k == 0:
                first = dt
            else:
                times.append(dt)
        out[f"{name}_bytes"] = len(r.content)
        out[f"{name}_uncached_ms"] = 1000 * first
        out[f"{name}_cached_p50_ms"] = 1000 * statistics.median(times)
    c.close()
    return out


def first_render(server: Server, store) -> float | None:
    import shutil

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,900"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        d.get(server.url + "/login")
        d.find_element(By.ID, "username").send_keys("ada")
        d.find_element(By.ID, "password").send_keys(PASSWORD)
        d.find_element(By.ID, "login").click()
        WebDriverWait(d, 30).until(lambda x: x.find_elements(By.ID, "tasks"))
        cid = store.collection("ada", "bench").id
        times = []
        for _ in range(3):
            d.get(f"{server.url}/c/{cid}?page=1")
            WebDriverWait(d, 30).until(lambda x: x.find_element(By.ID, "image")
                                       .get_attribute("data-ready"))
            times.append(float(d.find_element(By.TAG_NAME, "body")
                               .get_attribute("data-first-image-ms")))
        return statistics.median(times)
    finally:
        d.quit()


def run_backend(name: str, location: str, tmp: Path, args) -> dict:
    files, root = tmp / f"{name}-files", tmp / f"{name}-images"
    files.mkdir(parents=True, exist_ok=True)
    store, big = build(location, files, root, args.images)
    server = Server(location, root, files)
    try:
        one = saves(store, server, 1, args.saves, "solo")
        print(f"[{name}] 1 annotator: {one['saves_per_s']:.0f} saves/s, p50 "
              f"{one['p50_ms']:.1f} ms, p95 {one['p95_ms']:.1f} ms, lost {one['lost']}")
        many = saves(store, server, 20, args.saves, "crowd")
        print(f"[{name}] 20 annotators x {args.saves}: {many['saves_per_s']:.0f} saves/s, "
              f"p50 {many['p50_ms']:.1f} ms, p95 {many['p95_ms']:.1f} ms, lost "
              f"{many['lost']}, duplicated {many['duplicated']}, misattributed "
              f"{many['misattributed']}, errors {many['errors']}")
        paced = saves(store, server, 20, args.paced, "paced", pace=1.0)
        print(f"[{name}] 20 annotators each saving once a second x {args.paced}: "
              f"{paced['saves_per_s']:.0f} saves/s, p50 {paced['p50_ms']:.1f} ms, "
              f"p95 {paced['p95_ms']:.1f} ms, lost {paced['lost']}")
        out = {"save_1": one, "save_20": many, "save_20_paced_1s": paced}
        if name == "sqlite":
            out["views"] = pages_and_images(store, server, big)
            v = out["views"]
            print(f"[{name}] annotation page HTML p50 {v['page_html_p50_ms']:.1f} ms "
                  f"({v['page_html_bytes']} bytes); image view of a {v['file_bytes']}-byte "
                  f"512x512 uint16 TIFF: PNG {v['png_bytes']} bytes "
                  f"({v['png_uncached_ms']:.0f} ms uncached, {v['png_cached_p50_ms']:.1f} ms "
                  f"cached), JPEG {v['jpeg_bytes']}, thumbnail {v['thumb96_bytes']}")
            if not args.no_browser:
                fr = first_render(server, store)
                out["first_render_ms"] = fr
                print(f"[{name}] time to first render in headless Chromium: "
                      + (f"{fr:.0f} ms" if fr is not None else "skipped (no chromium)"))
        return out
    finally:
        server.stop()
        store.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="50 saves per annotator")
    p.add_argument("--postgres-url", default=os.environ.get("EXPERTLOOP_TEST_POSTGRES_URL"))
    p.add_argument("--no-browser", action="store_true")
    args = p.parse_args(argv)
    args.saves = 50 if args.quick else 200
    args.images = 150 if args.quick else 500
    args.paced = 15 if args.quick else 60
    figures = {"benchmark": "web", "machine": machine(), "quick": args.quick,
               "saves_per_annotator": args.saves}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        figures["sqlite"] = run_backend("sqlite", str(tmp / "project"), tmp, args)
        if args.postgres_url:
            from expertloop.store.testing import fresh_location

            os.environ.setdefault("EXPERTLOOP_TEST_POSTGRES_URL", args.postgres_url)
            url, _ = fresh_location("postgresql", tmp)
            figures["postgresql"] = run_backend("postgresql", url, tmp, args)
    s20 = figures["sqlite"]["save_20"]
    figures["target_p95_le_100ms_sqlite_20"] = s20["p95_ms"] <= 100.0
    figures["paced_p95_le_100ms_sqlite_20"] = \
        figures["sqlite"]["save_20_paced_1s"]["p95_ms"] <= 100.0
    figures["lost_writes"] = sum(figures[b][k]["lost"] for b in ("sqlite", "postgresql")
                                 if b in figures
                                 for k in ("save_1", "save_20", "save_20_paced_1s"))
    emit(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
