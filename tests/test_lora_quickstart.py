"""The LoRA quick-start preset ends clearly above the frozen-encoder linear probe it reports
(examples/lora-quickstart; its wall time is measured in the README, not asserted here)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .conftest import FEDTUNE, ROOT

pytest.importorskip("peft")


def test_lora_quickstart_beats_the_linear_probe(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([FEDTUNE, "run", str(ROOT / "examples" / "lora-quickstart" /
                                                "config.toml"), "--output", "json", "--quiet"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    probe = summary["baselines"]["probe"]["test_accuracy"]
    assert summary["test_accuracy"] >= probe + 0.05, (summary["test_accuracy"], probe)
