"""napari startup cost of the plugin: `import expertloop` and manifest reading.

Each measurement runs in a fresh interpreter. Target: `import expertloop`
under 0.3 s and torch NOT imported (neither by the import nor by napari
reading the manifest).

    python benchmarks/bench_startup.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine  # noqa: E402

IMPORT = (
    "import time, sys; t = time.perf_counter(); import expertloop; "
    "dt = time.perf_counter() - t; print(dt, 'torch' in sys.modules)"
)
MANIFEST = (
    "import time, sys; import npe2; t = time.perf_counter(); "
    "pm = npe2.PluginManager.instance(); pm.discover(); "
    "m = pm.get_manifest('napari-expertloop'); import expertloop.io.napari_hooks; "
    "dt = time.perf_counter() - t; print(dt, 'torch' in sys.modules)"
)
# what opening a widget adds once napari itself is loaded (as it is in napari)
WIDGETS = (
    "import time, sys; import napari, napari.qt, magicgui.widgets; t = time.perf_counter(); "
    "import expertloop.widgets.features; "
    "dt = time.perf_counter() - t; print(dt, 'torch' in sys.modules)"
)


def _run(code: str) -> tuple[float, bool]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dt, torch = out.stdout.split()
    return float(dt), torch == "True"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 3 if args.quick else 10
    _run(IMPORT)  # warm the file-system cache
    imports = [_run(IMPORT) for _ in range(n)]
    manifests = [_run(MANIFEST) for _ in range(max(2, n // 2))]
    t_import = statistics.median(t for t, _ in imports)
    widgets = [_run(WIDGETS) for _ in range(max(2, n // 2))]
    t_manifest = statistics.median(t for t, _ in manifests)
    t_widgets = statistics.median(t for t, _ in widgets)
    torch_import = any(tr for _, tr in imports)
    torch_manifest = any(tr for _, tr in manifests)
    torch_widgets = any(tr for _, tr in widgets)

    # the top of python -X importtime for `import expertloop`
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import expertloop"],
                       capture_output=True, text=True)
    rows = [ln for ln in r.stderr.splitlines() if "expertloop" in ln]

    print(f"machine: {machine()}")
    print(f"import expertloop: median {t_import * 1000:.1f} ms over {n} fresh interpreters "
          f"(target < 300 ms); torch imported: {torch_import}")
    print(f"npe2 manifest discovery + reader module: median {t_manifest * 1000:.1f} ms; "
          f"torch imported: {torch_manifest}")
    print(f"widget module import inside napari: median {t_widgets * 1000:.1f} ms; "
          f"torch imported: {torch_widgets}")
    print("python -X importtime (expertloop rows, us):")
    for ln in rows:
        print("   ", ln)
    ok = t_import < 0.3 and not (torch_import or torch_manifest or torch_widgets)
    print("PASS" if ok else "FAIL", "(target: < 0.3 s, torch not imported)")
    emit({
        "benchmark": "startup",
        "import_expertloop_s": round(t_import, 4),
        "manifest_discovery_s": round(t_manifest, 4),
        "widget_module_in_napari_s": round(t_widgets, 4),
        "torch_imported_by_widgets": torch_widgets,
        "torch_imported_by_import": torch_import,
        "torch_imported_by_manifest": torch_manifest,
        "target_met": ok,
        "runs": n,
    })


if __name__ == "__main__":
    main()
