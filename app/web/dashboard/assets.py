"""The dashboard's static files, and the charting library served from its Python package.

Charts are drawn by plotly.js, which the ``plotly`` package on PyPI ships as
``plotly/package_data/plotly.min.js``: the file is found without importing the package, served
from this process (gzipped once, cached for a year under a versioned URL), and nothing is
fetched from a CDN, so the dashboard works on a network with no way out. Without the package
the pages still work: they show their tables and say the charts are unavailable.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from functools import cache
from importlib import metadata
from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
TEMPLATES_DIR = Path(__file__).parent / "templates"
IMMUTABLE = "public, max-age=31536000, immutable"


@cache
def plotly_path() -> Path | None:
    """plotly.min.js inside the installed ``plotly`` package, or None."""
    spec = importlib.util.find_spec("plotly")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    return None


@cache
def plotly_version() -> str | None:
    """The ``plotly`` package's version (it names the bundle's URL), or None."""
    if plotly_path() is None:
        return None
    try:
        return metadata.version("plotly")
    except metadata.PackageNotFoundError:
        return "0"


@cache
def plotly_gzip() -> bytes:
    path = plotly_path()
    if path is None:
        raise FileNotFoundError("plotly is not installed")
    return gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)


@cache
def static_version() -> str:
    """A digest of the dashboard's own CSS and JS, appended to their URLs so a browser
    never runs a stale copy after an upgrade."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]
