"""Shared helpers: small, fast configs on real bundled data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fedtune.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
FEDTUNE = str(Path(sys.executable).parent / "fedtune")


def small_config(*overrides: str) -> RunConfig:
    base = ["run.rounds=3", "data.num_nodes=4", "evaluation.personalize_steps=2"]
    return load_config(None, [*base, *overrides])


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["COLUMNS"] = "120"
    return env
