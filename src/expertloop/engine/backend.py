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
    return importlib.import_module("torch")


def get_torchvision() -> ModuleType:
    """Import and return torchvision (lazily), safe inside a napari session."""
    guard_triton()
    importlib.import_module("torch")
    return importlib.import_module("torchvision")


def torch_imported() -> bool:
    """Whether torch has been imported in this process."""
    return "torch" in sys.modules
