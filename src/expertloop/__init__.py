"""napari-expertloop: make scarce expert time count in bioimage analysis.

Importing this package is cheap: it never imports torch, Qt or napari.
The compute engine lives in :mod:`expertloop.engine`, readers and writers in
:mod:`expertloop.io`, the napari widgets in :mod:`expertloop.widgets`.
"""

__version__ = "0.1.0"

#: the project's home (pyproject's [project.urls] Source); docs pages live under docs/
REPO_URL = "https://github.com/napari-expertloop/napari-expertloop"


def docs_url(page: str) -> str:
    """The web address of ``docs/<page>`` (``page`` with or without ``.md``)."""
    return f"{REPO_URL}/blob/main/docs/{page if page.endswith('.md') else page + '.md'}"


__all__ = ["REPO_URL", "__version__", "docs_url"]
