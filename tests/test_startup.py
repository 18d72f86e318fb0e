"""Start-up: listing runs, showing one, help and config errors never import torch (what made
every CLI call slow to start); bench-free, so it checks imports, not seconds."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from fedtune.cli import app
from fedtune.config import load_config
from fedtune.store import RunStore
from fedtune.report import summary
load_config(None, ["strategy.name=\\"scaffold\\""])
heavy = sorted(m for m in ("torch", "ray", "grpc", "transformers") if m in sys.modules)
print(",".join(heavy))
"""


def test_listing_runs_and_config_do_not_import_torch():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"
