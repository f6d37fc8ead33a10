"""A folder of images as one stack (the FLIM training set)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from expertloop.engine.jobs import Job, Progress, run_job
from expertloop.io.readers import SUPPORTED_SUFFIXES, read_image


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Supported image files of a folder, sorted by name."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"image folder {d} not found")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.name.lower().endswith(SUPPORTED_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no image in {d} (expected {', '.join(SUPPORTED_SUFFIXES)})")
    return files


def read_image_folder(folder: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """:func:`read_image_folder_job`, run to its end."""
    return run_job(read_image_folder_job(folder))


def read_image_folder_job(folder: str | os.PathLike) -> Job[tuple[np.ndarray, list[str]]]:
    """Job: ``(stack (N, *spatial), file names)``; RGB images become grey (luminance).

    All images must have the same shape (crop or resize them first).
    """
    files = image_files(folder)
    planes, shapes = [], {}
    for k, f in enumerate(files):
        yield Progress(k, len(files), f"reading {f.name} ({k + 1}/{len(files)})")
        a = np.asarray(read_image(f)[0].data)
        if a.ndim == 3 and a.shape[-1] in (3, 4):
            a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        planes.append(a)
        shapes.setdefault(a.shape, f.name)
    if len(shapes) > 1:
        desc = ", ".join(f"{s} (e.g. {n})" for s, n in shapes.items())
        raise ValueError(f"the images of {folder} differ in shape: {desc}; FLIM needs one shape")
    dtype = np.result_type(*[p.dtype for p in planes])
    return np.stack(planes).astype(dtype, copy=False), [f.name for f in files]
