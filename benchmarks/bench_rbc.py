"""Alias of bench_blood.py (the issue names the benchmark bench_rbc.py)."""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("bench_blood.py")), run_name="__main__")
