"""Jobs started from napari leave a core to the GUI thread: torch's compute
threads are capped at cpu_count - 1 (issue 18 item 16), without importing
torch at dock creation; scripts keep torch's default."""

import os
import subprocess
import sys

import pytest

SNIPPET = """
import os, sys
from expertloop.engine import backend
{before}
assert "torch" not in sys.modules
torch = backend.get_torch()
{after}
print(torch.get_num_threads())
"""


def _threads(before="", after=""):
    out = subprocess.run([sys.executable, "-c", SNIPPET.format(before=before, after=after)],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": ""})
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to leave one free")
def test_leave_cores_free_caps_torch_threads_when_torch_comes_later():
    default = _threads()
    capped = _threads(before="backend.leave_cores_free(1)")
    assert capped == min(default, os.cpu_count() - 1)
    assert capped < default or default <= os.cpu_count() - 1


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to leave one free")
def test_leave_cores_free_applies_to_an_imported_torch_and_never_below_one():
    n = _threads(after="backend.leave_cores_free(1)")
    assert 1 <= n <= os.cpu_count() - 1
    assert _threads(after="backend.leave_cores_free(10_000)") == 1
    with pytest.raises(ValueError):
        from expertloop.engine.backend import leave_cores_free

        leave_cores_free(-1)
