"""The one place in expertloop that imports torch and torchvision.

Everything in the engine gets torch through :func:`get_torch` and torchvision
through :func:`get_torchvision`, so that

* ``import expertloop`` (and napari reading the plugin manifest) never pays
  for importing torch: it is imported on first use, inside an engine call;
* the Mesa/triton crash is handled once, here.

The crash
---------
On Linux with Mesa OpenGL (llvmpipe under Xvfb, radeonsi on AMD desktops),
importing torchvision *after* napari created its OpenGL canvas kills the
process with a segmentation fault: torchvision imports ``torch._dynamo``,
which imports ``triton``, and triton's bundled LLVM (statically linked into
``triton/_C/libtriton.so``) binds its symbols to the LLVM already loaded by
Mesa. We load ``libtriton.so`` ourselves with ``RTLD_DEEPBIND`` before
torchvision is imported: the library then resolves its own symbols first,
the two LLVMs stay apart, and the later ``import triton`` reuses the handle we
opened. This keeps triton fully usable (no monkey-patching, no blocked
imports). Set ``EXPERTLOOP_NO_TRITON_DEEPBIND=1`` to switch it off.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

_lock = threading.Lock()
_triton_guard_done = False
_policy_applied = False
_cores_left_free = 0  # cores torch leaves to other threads (a GUI), see leave_cores_free


def _triton_library() -> Path | None:
    """Path of triton's compiled library, or None if triton is absent."""
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / "_C" / "libtriton.so"
        if candidate.exists():
            return candidate
    return None


def guard_triton() -> bool:
    """Pre-load triton's LLVM with RTLD_DEEPBIND (Linux only).

    Returns True when the guard is in place (or not needed), False when it
    could not be applied. Safe to call many times and from any thread.
    """
    global _triton_guard_done
    with _lock:
        if _triton_guard_done:
            return True
        if (
            not sys.platform.startswith("linux")
            or os.environ.get("EXPERTLOOP_NO_TRITON_DEEPBIND") == "1"
            or "triton" in sys.modules  # already imported: too late or fine
        ):
            _triton_guard_done = True
            return True
        lib = _triton_library()
        if lib is None:  # no triton installed: nothing can clash
            _triton_guard_done = True
            return True
        import ctypes

        try:
            ctypes.CDLL(str(lib), mode=os.RTLD_DEEPBIND | os.RTLD_NOW)
        except OSError as exc:  # pragma: no cover - depends on the platform
            log.warning("could not pre-load %s with RTLD_DEEPBIND: %s", lib, exc)
            return False
        _triton_guard_done = True
        return True


def get_torch() -> ModuleType:
    """Import and return torch (lazily)."""
    guard_triton()
    torch = importlib.import_module("torch")
    if _cores_left_free and not _policy_applied:  # once, also if torch came in another way
        _apply_thread_policy(torch)
    return torch


def _apply_thread_policy(torch: ModuleType) -> None:
    global _policy_applied
    _policy_applied = True
    n = max(1, (os.cpu_count() or 1) - _cores_left_free)
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)
        log.debug("torch uses %d compute threads (%d core(s) left to the GUI)", n, _cores_left_free)


def leave_cores_free(n: int = 1) -> None:
    """Make torch use at most ``cpu_count - n`` compute threads (never fewer
    than 1), now if torch is imported, else when it is.

    napari's docks call this (through their job runner) so that a job in a
    worker thread leaves a core to the GUI thread: with as many torch threads
    as cores, the GUI thread waits for a core and the viewer stalls while the
    job runs (``benchmarks/bench_responsiveness.py``). It does not import
    torch. Scripts and the command line keep torch's default.
    """
    global _cores_left_free, _policy_applied
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n > _cores_left_free:
        _cores_left_free, _policy_applied = n, False
    if "torch" in sys.modules and _cores_left_free and not _policy_applied:
        _apply_thread_policy(sys.modules["torch"])


def get_torchvision() -> ModuleType:
    """Import and return torchvision (lazily), safe inside a napari session."""
    guard_triton()
    importlib.import_module("torch")
    return importlib.import_module("torchvision")


def torch_imported() -> bool:
    """Whether torch has been imported in this process."""
    return "torch" in sys.modules
