"""Images for the browser: read on the server, sent as rendered PNG/JPEG only.

The browser never sees a path or URI: it asks for an image by its store id
(:mod:`expertloop.web.app` checks the asker may read it), and the file behind
that id is read here only when it lies inside one of the server's image roots
(after resolving ``..`` and symbolic links). A 3D image is sent one slice at a
time; contrast limits are applied here (default: the 0.5 and 99.5 percentiles
of the slice), so 16-bit or float data become 8-bit pixels. TIFFs are read
lazily (only the asked slice's chunks); a view is at most ``max_side`` pixels
on a side, from the smallest big-enough pyramid level and then a stride, and
reports the full-size shape so that annotations stay in full-resolution pixels.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expertloop.store.core import local_path

FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}


class ImageRefused(Exception):
    """The image cannot be shown: outside the image roots, remote, or unreadable.

    ``status``: 403 for files this server may not show, 404 for missing or
    unreadable ones and slices that do not exist."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Rendered:
    body: bytes
    media_type: str
    shape: tuple  # (rows, cols) of the full-size slice (the pixels may be smaller)
    n_slices: int
    z: int
    limits: tuple[float, float]


def resolve_inside(uri: str, roots: list[Path]) -> Path:
    """The local file of ``uri`` if it lies inside one of ``roots``; else refuse."""
    path = local_path(uri)
    if path is None:
        raise ImageRefused("remote images are not served by this server", 403)
    if not path.is_absolute():
        raise ImageRefused("relative image paths are not served (index absolute paths)",
                           403)
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(r) for r in roots):
        raise ImageRefused("the image lies outside the server's image roots", 403)
    if not real.is_file():
        raise ImageRefused("the image file is missing on the server")
    return real


def _to_uint8(plane: np.ndarray, lo: float | None, hi: float | None,
              rgb: bool) -> tuple[np.ndarray, tuple[float, float]]:
    plane = np.asarray(plane)
    if rgb and plane.dtype == np.uint8 and lo is None and hi is None:
        return plane[..., :3], (0.0, 255.0)
    data = plane.astype(np.float32)
    if lo is None or hi is None:
        finite = data[np.isfinite(data)]
        p_lo, p_hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
        lo = float(p_lo) if lo is None else lo
        hi = float(p_hi) if hi is None else hi
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((np.nan_to_num(data, nan=lo) - lo) * (255.0 / (hi - lo)), 0, 255)
    out = out.astype(np.uint8)
    return (out[..., :3] if rgb else out), (float(lo), float(hi))


class Renderer:
    """Renders images by URI with a small LRU cache of encoded results."""

    def __init__(self, roots, cache_items: int = 256, max_side: int = 4096) -> None:
        self.roots = [Path(os.path.realpath(Path(r).expanduser())) for r in roots]
        self.max_side = int(max_side)
        self._cache: OrderedDict = OrderedDict()
        self._cache_items = int(cache_items)
        self._lock = threading.Lock()

    @staticmethod
    def warm_up() -> None:
        """Import the image stack (dask, zarr, tifffile, imageio, Pillow: about 2 s)
        now, so that the first image view does not pay for it."""
        import dask.array  # noqa: F401
        import imageio.v3  # noqa: F401
        import tifffile  # noqa: F401
        import zarr  # noqa: F401
        from PIL import Image  # noqa: F401

        import expertloop.io  # noqa: F401

    def _read(self, path: Path):
        from expertloop.io import ImageReadError, read_image

        try:  # TIFFs lazily (dask, one chunk per plane or tile; pyramids as levels)
            item = read_image(path, lazy=True)[0]
        except (ImageReadError, OSError) as exc:
            raise ImageRefused(f"the image cannot be read: {exc}") from exc
        levels = item.data if isinstance(item.data, list) else [item.data]
        return levels, bool(item.meta.get("rgb"))

    def _plane(self, levels: list, rgb: bool, z: int | None, size: int | None):
        """(full-size plane shape, slice count, z, pixels of the plane at <= the asked
        size): the smallest pyramid level that is big enough, then a stride."""
        full = levels[0]
        spatial = full.ndim - (1 if rgb else 0)
        if spatial not in (2, 3):
            raise ImageRefused(f"only 2D and 3D images are shown, not {tuple(full.shape)}")
        planes = full.shape[0] if spatial == 3 else 1
        if spatial == 3:
            z = planes // 2 if z is None else int(z)
            if not 0 <= z < planes:
                raise ImageRefused(f"slice {z} is outside 0..{planes - 1}")
        else:
            z = 0
        yx = tuple(int(n) for n in full.shape[spatial - 2:spatial])
        want = min(self.max_side, size) if size is not None else self.max_side
        level = full
        for lv in levels[1:]:
            if max(lv.shape[spatial - 2:spatial]) >= want:
                level = lv
        if spatial == 3:
            plane = level[min(level.shape[0] - 1, z * level.shape[0] // planes)]
        else:
            plane = level
        step = max(1, -(-max(plane.shape[:2]) // want))
        if step > 1:
            plane = plane[::step, ::step]
        return yx, planes, z, np.asarray(plane)

    def render(self, uri: str, *, z: int | None = None, lo: float | None = None,
               hi: float | None = None, size: int | None = None,
               fmt: str = "png") -> Rendered:
        if fmt not in FORMATS:
            raise ImageRefused(f"format must be one of {sorted(FORMATS)}", 400)
        path = resolve_inside(uri, self.roots)
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, z, lo, hi, size, fmt)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        levels, rgb = self._read(path)
        shape, planes, z, plane = self._plane(levels, rgb, z, size)
        pixels, limits = _to_uint8(plane, lo, hi, rgb)
        rendered = self._encode(pixels, fmt, size, planes, z, limits, shape)
        with self._lock:
            self._cache[key] = rendered
            while len(self._cache) > self._cache_items:
                self._cache.popitem(last=False)
        return rendered

    @staticmethod
    def _encode(pixels: np.ndarray, fmt: str, size: int | None, planes: int, z: int,
                limits: tuple[float, float], shape: tuple) -> Rendered:
        from PIL import Image as PILImage

        img = PILImage.fromarray(pixels)
        if size is not None and max(img.size) > size:
            img.thumbnail((int(size), int(size)))
        buf = io.BytesIO()
        if fmt == "jpeg":
            img.convert("RGB").save(buf, "JPEG", quality=85)
        else:
            img.save(buf, "PNG", optimize=False)
        return Rendered(buf.getvalue(), FORMATS[fmt], shape, planes, z, limits)
