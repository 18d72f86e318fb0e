"""The documentation cannot drift from the code: the site builds with ``mkdocs build
--strict`` (broken links, missing pages and bad API references fail it), and every
``python`` and ``bash`` code block of every page runs, in order, one page per folder
(``text``, ``toml`` and ``console`` blocks are shown, not run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```(python|bash)[^\n]*\n(.*?)^```", re.S | re.M)
PAGES = sorted(p for p in DOCS.rglob("*.md") if BLOCK.search(p.read_text()))


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out['PATH']}"
    out["HF_HUB_OFFLINE"] = out["TRANSFORMERS_OFFLINE"] = "1"
    out["FEDTUNE_REPO"] = str(ROOT)
    out["COLUMNS"] = "120"
    return out


def test_site_builds_strict(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "index.html").is_file()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_every_code_block_runs(page: Path, tmp_path: Path) -> None:
    for i, (kind, code) in enumerate(BLOCK.findall(page.read_text())):
        shell = ["bash", "-euo", "pipefail", "-c", code]
        cmd = [sys.executable, "-c", code] if kind == "python" else shell
        done = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, (f"{page.name} block {i + 1} ({kind}) failed:\n{code}\n"
                                      f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
