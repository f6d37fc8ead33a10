"""Issue 16: the built wheel carries the hub/PyPI links and classifiers."""

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_built_wheel_has_urls_and_classifiers(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    (whl,) = tmp_path.glob("napari_expertloop-*.whl")
    with zipfile.ZipFile(whl) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
        assert any(n.endswith("expertloop/napari.yaml") for n in z.namelist())
        shipped = {Path(n).name for n in z.namelist() if "/data/" in n}
    data = ROOT / "src" / "expertloop" / "data"
    assert shipped == {p.name for p in data.iterdir() if p.is_file()}  # every sample file, licences included
    assert "LICENSES.md" in shipped
    assert whl.stat().st_size < 3e6, whl.stat().st_size  # samples stay small
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert set(urls) >= {"Source", "Documentation", "Bug Tracker", "User Support"}
    assert all(u.startswith("https://") for u in urls.values())
    cls = meta.get_all("Classifier")
    assert "Framework :: napari" in cls
    assert any(c.startswith("Development Status ::") for c in cls)
    assert any(c.startswith("Operating System ::") for c in cls)
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in cls)
