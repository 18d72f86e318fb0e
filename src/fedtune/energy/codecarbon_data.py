"""Paths to the data files CodeCarbon maintains, found without importing CodeCarbon.

Importing ``codecarbon`` pulls in its tracker, pandas and more (~0.2 s); we only read two of
its data files, so we locate the installed package with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from ..errors import FedtuneError


@cache
def codecarbon_file(relative: str) -> Path:
    """The path of ``relative`` inside the installed codecarbon package."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        raise FedtuneError("the codecarbon package is not installed; energy and CO2 need its "
                           "data files: pip install codecarbon")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FedtuneError(f"codecarbon's data file {relative} is missing from {path.parent}; "
                           "reinstall codecarbon")
    return path
