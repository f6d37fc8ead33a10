"""Checks on what a file *declares* before anything is allocated for it.

A crafted header (a TIFF claiming 100000 x 100000 pixels, a NIfTI claiming
30000^3 voxels, a half-truncated file) must give one clear message, not a
``MemoryError`` or ``struct.error`` deep inside a decoder. Readers call
:func:`check_declared_size` with the shape and dtype from the header.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

# deflate cannot expand data by more than ~1032:1; allow some header slack
MAX_DEFLATE_RATIO = 1100


class DeclaredSizeError(ValueError):
    """The file declares more data than it holds or than memory can take."""


class UnsafePathError(ValueError):
    """A name read from a file points outside the folder it must stay in."""


def resolve_inside(folder: str | os.PathLike, name: str | os.PathLike, *,
                   error: type[Exception] = UnsafePathError) -> Path:
    """``folder / name`` resolved (links followed); refused unless it stays inside ``folder``.

    For names that come from files a user did not write (an annotation's
    image name, an index of masks): absolute paths, ``..`` and links that
    leave ``folder`` raise ``error``.
    """
    folder = Path(folder)
    root = folder.resolve()
    if not str(name) or Path(name).is_absolute():
        raise error(f"{name!s}: only relative paths inside {folder} are accepted")
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise error(f"{name!s} points outside {folder}; refused")
    return path


def available_memory() -> int:
    """Bytes of memory available to this process right now.

    psutil's available memory (Linux, macOS, Windows), lowered to what is
    left under a cgroup v2 memory limit when the process runs in one (a
    container or a batch job reports the machine's memory otherwise).
    """
    import psutil

    free = int(psutil.virtual_memory().available)
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            free = min(free, max(0, int(limit) - int(used)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit visible: psutil's figure stands
    return free


def _fmt(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_declared_size(shape, dtype, path: str | os.PathLike, *,
                        compression: str | None = None, offset: int = 0,
                        in_memory: bool = True) -> int:
    """Refuse a header whose data cannot be in the file or cannot fit in memory.

    ``compression``: None (raw data: the file must hold every byte after
    ``offset``), ``"deflate"`` (zlib/gzip: at most ~1100 times the file size)
    or any other name (only the memory check applies). Returns the number of
    bytes the data will take. ``in_memory=False`` (lazy, chunked reading)
    skips the memory check. Raises :class:`DeclaredSizeError`.
    """
    path = Path(path)
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise DeclaredSizeError(f"{path.name}: the header declares a negative size {tuple(dims)}")
    nbytes = math.prod(dims) * np.dtype(dtype).itemsize
    size = path.stat().st_size
    shape_txt = " x ".join(map(str, dims))
    if compression is None and nbytes + offset > size:
        raise DeclaredSizeError(
            f"{path.name}: the header declares {shape_txt} {np.dtype(dtype)} "
            f"({_fmt(nbytes)}) but the file holds only {_fmt(size)}; it is truncated "
            "or corrupt")
    if compression == "deflate" and nbytes > MAX_DEFLATE_RATIO * size:
        raise DeclaredSizeError(
            f"{path.name}: the header declares {shape_txt} {np.dtype(dtype)} "
            f"({_fmt(nbytes)}), more than a {_fmt(size)} compressed file can hold; "
            "it is corrupt")
    free = available_memory()
    if in_memory and nbytes > free:
        raise DeclaredSizeError(
            f"{path.name}: the image is {shape_txt} {np.dtype(dtype)} ({_fmt(nbytes)}), "
            f"more than the {_fmt(free)} of memory available")
    return nbytes
