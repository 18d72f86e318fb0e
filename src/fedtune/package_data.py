"""Files shipped inside other installed packages (model weights, datasets, data tables),
found with ``importlib.util.find_spec`` without importing the package (some are heavy)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import FedtuneError


def package_path(package: str, relative: str, *, install: str) -> Path:
    """``relative`` inside installed ``package``; a clear error naming ``install`` if absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FedtuneError(f"the {package} package is not installed: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise FedtuneError(f"{path} is missing from the installed {package}: reinstall it "
                           f"({install})")
    return path
