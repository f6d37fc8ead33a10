"""Real-size data: block-wise prediction memory/time and batch throughput on dask.distributed.

1. ``membranes predict_dense`` on one big 2D EM image built from tiles of the
   real EM crop in ``tests/data`` (with random flips, so no two tiles are the
   same): the in-memory path (numpy in, numpy out) against the block-wise path
   (zarr on disk in, zarr on disk out). Each runs in a fresh subprocess, so
   its peak RSS is its own; the two paths run interleaved, twice each, and
   the faster run of each is kept (the shared machine's load drifts).
   Reported: peak RSS of each, seconds per megapixel of each and their ratio
   (block-wise / in memory).
2. ``expertloop membranes predict``'s batch engine over N small EM images:
   the serial loop in this process (``workers=0``, no dask, the baseline),
   a LocalCluster of 1 worker process and of 2, each started once, warmed
   (torch imported and the model loaded in every worker) and reused through
   ``client=``. Reported: images/s of the warm engine, the cold start
   (cluster + warm-up) apart, and the ratios 2 workers / 1 worker and
   1 worker / serial.

The network has random weights (speed and memory do not depend on them).

    python benchmarks/bench_scale.py [--quick]

Readable lines, then one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EM = ROOT / "tests" / "data" / "em_crop.png"


def em_tiles(shape, seed=0):
    """Yield ``(y, x, tile)`` covering ``shape`` with flipped copies of the real EM crop."""
    from skimage.io import imread

    tile = np.asarray(imread(EM))
    if tile.ndim == 3:
        tile = tile[..., 0]
    rng = np.random.default_rng(seed)
    th, tw = tile.shape
    for y in range(0, shape[0], th):
        for x in range(0, shape[1], tw):
            t = tile[:: rng.choice([1, -1]), :: rng.choice([1, -1])]
            yield y, x, t[: shape[0] - y, : shape[1] - x]


def model_file(folder: Path) -> str:
    from expertloop.engine.membranes.net import NetConfig, build_net, save_net

    # a small network (window 32) keeps the big image feasible on 2 shared cores
    net = build_net(NetConfig(window=32, channels=(8, 16, 16), hidden=(32, 32)), seed=0)
    return str(save_net(folder / "net", net, kind="target"))


# ------------------------------------------------------------ 1. one big image (subprocess)
def run_case(case: str, folder: Path, side: int, tile: int) -> dict:
    """In a fresh process: predict the big image; peak RSS and time."""
    import resource

    import zarr

    from expertloop.engine.jobs import run_job
    from expertloop.engine.membranes.net import load_net, predict_dense

    model, _ = load_net(folder / "net.pt")
    src = zarr.open_array(str(folder / "image.zarr"), mode="r")
    t0 = time.perf_counter()
    if case == "memory":
        img = src[:]  # the whole image in memory, the result too
        out = run_job(predict_dense(model, img, tile=tile))
        checksum = float(out[::97, ::89].sum())
    else:
        dst = zarr.open_array(str(folder / "prob.zarr"), mode="w", shape=src.shape, chunks=(tile, tile),
                              dtype="f4")
        out = run_job(predict_dense(model, src, tile=tile, out=dst))
        checksum = float(out[::97, ::89].sum())
    seconds = time.perf_counter() - t0
    return {"case": case, "seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "checksum": checksum, "megapixels": side * side / 1e6}


def big_image(folder: Path, side: int, tile: int) -> dict:
    import zarr

    z = zarr.open_array(str(folder / "image.zarr"), mode="w", shape=(side, side), chunks=(tile, tile), dtype="u1")
    for y, x, t in em_tiles((side, side)):
        z[y:y + t.shape[0], x:x + t.shape[1]] = t
    res = {}
    # interleaved, twice each, the faster run of each kept: the machine's
    # load changes over minutes, and both paths see the same changes
    for case in ("memory", "blockwise", "memory", "blockwise"):
        r = subprocess.run([sys.executable, __file__, "--case", case, "--folder", str(folder), "--side", str(side),
                            "--tile", str(tile)], capture_output=True, text=True, env=os.environ.copy())
        if r.returncode:
            raise SystemExit(f"case {case} failed:\n{r.stderr[-2000:]}")
        c = json.loads(r.stdout.strip().splitlines()[-1])
        if case not in res or c["seconds"] < res[case]["seconds"]:
            res[case] = c
        print(f"predict_dense {side}x{side} ({c['megapixels']:.0f} Mpx, {side * side / 2**20:.0f} MiB uint8) "
              f"{case:9s}: {c['seconds']:.1f} s, {c['seconds'] / c['megapixels']:.3f} s/Mpx, "
              f"peak RSS {c['peak_rss_mib']:.0f} MiB")
    assert abs(res["memory"]["checksum"] - res["blockwise"]["checksum"]) < 1e-2 * max(1.0, res["memory"]["checksum"])
    return res


# ------------------------------------------------------------ 2. batch throughput
def _timed_batch(files, out_dir, params, **where):
    from expertloop.engine.batch import run_batch
    from expertloop.engine.batch_tasks import OUTPUTS, membranes_predict
    from expertloop.engine.jobs import run_job

    t0 = time.perf_counter()
    rep = run_job(run_batch(membranes_predict, files, out_dir, OUTPUTS["membranes"], params, **where))
    assert len(rep.done) == len(files), rep.summary()
    return time.perf_counter() - t0


def batch(folder: Path, n: int, side: int) -> dict:
    """Images/s of the serial loop and of LocalClusters of 1 and 2 worker
    processes. Each cluster is started once and warmed (one image per worker:
    torch imported, the model loaded, as ``worker_cache`` does once per worker),
    then the timed batch reuses it through ``client=`` (as a Python caller
    does); the serial loop is warmed the same way in this process. The cold
    start (cluster + warm-up) is reported apart."""
    import tifffile
    from distributed import Client, LocalCluster

    from expertloop.engine.batch import limit_threads

    imgs = folder / "images"
    imgs.mkdir()
    files = []
    for i in range(n):
        plane = np.zeros((side, side), np.uint8)
        for y, x, t in em_tiles((side, side), seed=i):
            plane[y:y + t.shape[0], x:x + t.shape[1]] = t
        files.append(imgs / f"em{i:03d}.tif")
        tifffile.imwrite(files[-1], plane)
    params = {"model": str(folder / "net.pt"), "tile": 256}
    out, cold = {}, {}
    for label, workers in (("serial", 0), ("1 worker", 1), ("2 workers", 2)):
        t0 = time.perf_counter()
        if workers == 0:
            where, cluster, client = {"workers": 0}, None, None
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None,
                                   silence_logs=50)
            client = Client(cluster)
            client.run(limit_threads, threads)  # what run_batch's own LocalCluster does per image
            where = {"client": client}
        _timed_batch(files[:max(1, workers)], folder / f"warm{workers}", params, **where)
        cold[label] = time.perf_counter() - t0
        seconds = _timed_batch(files, folder / f"out{workers}", params, **where)
        out[label] = n / seconds
        print(f"batch of {n} images {side}x{side}, {label:9s}: {seconds:.1f} s, {out[label]:.2f} images/s "
              f"(cold start before it: {cold[label]:.1f} s)")
        if client is not None:
            client.close()
            cluster.close()
    return {"images_per_s": out, "cold_start_s": cold}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a 2048² image and 12 batch images of 256² instead of 8192² and 48 of 512²")
    p.add_argument("--case", choices=["memory", "blockwise"], help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--side", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--tile", type=int, default=512, help="tile of the dense evaluation (default 512)")
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.folder), args.side, args.tile)))
        return
    side = args.side or (2048 if args.quick else 8192)
    n, bside = (12, 256) if args.quick else (48, 512)
    print(f"machine: {machine()} (2 cores shared with about 6 other agents: timings are noisy)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_file(folder)
        big = big_image(folder, side, args.tile)
        thr = batch(folder, n, bside)
    mem, blk = big["memory"], big["blockwise"]
    emit({
        "bench": "scale", "quick": args.quick, "machine": machine(),
        "image_side": side, "image_mib": side * side / 2**20,
        "memory_peak_rss_mib": mem["peak_rss_mib"], "blockwise_peak_rss_mib": blk["peak_rss_mib"],
        "memory_s_per_mpx": mem["seconds"] / mem["megapixels"], "blockwise_s_per_mpx": blk["seconds"] / blk["megapixels"],
        "blockwise_over_memory_time": blk["seconds"] / mem["seconds"],
        "blockwise_over_memory_rss": blk["peak_rss_mib"] / mem["peak_rss_mib"],
        "batch_images": n, "batch_side": bside,
        "images_per_s_warm": thr["images_per_s"], "cold_start_s": thr["cold_start_s"],
        "ratio_2_over_1_workers": thr["images_per_s"]["2 workers"] / thr["images_per_s"]["1 worker"],
        "ratio_1_worker_over_serial": thr["images_per_s"]["1 worker"] / thr["images_per_s"]["serial"],
    })


if __name__ == "__main__":
    main()
