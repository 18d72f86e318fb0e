"""Paths to the data files CodeCarbon maintains, found without importing CodeCarbon.

Importing ``codecarbon`` pulls in its tracker, pandas and more; we only read two of its
data files.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from ..package_data import package_path


@cache
def codecarbon_file(relative: str) -> Path:
    """The path of ``relative`` inside the installed codecarbon package."""
    return package_path("codecarbon", relative, install="pip install codecarbon")
