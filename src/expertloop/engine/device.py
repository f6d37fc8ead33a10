"""Compute device choice: CUDA, then Apple MPS, then CPU.

Priority of the choice:

1. the ``device`` argument of :func:`select_device` (or of any engine call
   that takes one);
2. the environment variable ``EXPERTLOOP_DEVICE`` (``cpu``, ``cuda``,
   ``cuda:1``, ``mps``);
3. automatic: CUDA if available, then MPS, then CPU.

Asking explicitly for a device that is not available raises
:class:`DeviceError`; there is no silent fallback.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from expertloop.engine.backend import get_torch

log = logging.getLogger(__name__)

ENV_VAR = "EXPERTLOOP_DEVICE"


class DeviceError(RuntimeError):
    """A requested compute device is unknown or unavailable."""


@dataclass(frozen=True)
class DeviceInfo:
    """The chosen device and why it was chosen."""

    device: str  # e.g. "cpu", "cuda:0", "mps"
    source: str  # "argument", "environment" or "auto"
    name: str  # human-readable hardware name

    def __str__(self) -> str:
        return f"{self.device} ({self.name}; chosen by {self.source})"


def _check(torch, dev: str) -> str:
    try:
        d = torch.device(dev)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(
            f"unknown device {dev!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from exc
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {dev!r} requested but CUDA is not available")
        index = 0 if d.index is None else d.index
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {dev!r} requested but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist"
            )
        return f"cuda:{index}"
    if d.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"device {dev!r} requested but MPS is not available")
        return "mps"
    if d.type == "cpu":
        return "cpu"
    raise DeviceError(f"device type {d.type!r} is not supported: use cpu, cuda or mps")


def _name(torch, dev: str) -> str:
    if dev.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(dev))
    if dev == "mps":
        return "Apple Metal (MPS)"
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def device_info(device: str | None = None) -> DeviceInfo:
    """Choose the compute device and say why (see module docs)."""
    torch = get_torch()
    if device:
        dev, source = _check(torch, str(device)), "argument"
    elif os.environ.get(ENV_VAR, "").strip():
        dev, source = _check(torch, os.environ[ENV_VAR].strip()), "environment"
    else:
        source = "auto"
        if torch.cuda.is_available():
            dev = "cuda:0"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            dev = "mps"
        else:
            dev = "cpu"
    info = DeviceInfo(device=dev, source=source, name=_name(torch, dev))
    log.info("expertloop compute device: %s", info)
    return info


def select_device(device: str | None = None):
    """Return the ``torch.device`` to compute on (see module docs)."""
    return get_torch().device(device_info(device).device)


def autocast_context(device):
    """Mixed precision where it is supported (CUDA), a no-op elsewhere."""
    import contextlib

    torch = get_torch()
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()
