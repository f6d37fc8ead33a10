"""Helpers shared by the benchmarks (machine description, JSON output)."""

from __future__ import annotations

import json
import os
import platform
import sys


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def emit(figures: dict) -> None:
    """Print the one final JSON line of figures."""
    sys.stdout.flush()
    print(json.dumps(figures, sort_keys=True), flush=True)


def ensure_display() -> object | None:
    """Start a virtual X display when there is none (Linux, needs Xvfb)."""
    if os.environ.get("DISPLAY") or not sys.platform.startswith("linux"):
        return None
    from pyvirtualdisplay import Display

    disp = Display(visible=False, size=(1280, 1024))
    disp.start()
    return disp
