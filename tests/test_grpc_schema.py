"""The committed generated gRPC code matches fedtune.proto (run `make proto` if not)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PROTO = Path("fedtune/runtime/grpc/fedtune.proto")


def test_generated_code_is_current(tmp_path):
    pytest.importorskip("grpc_tools")
    (tmp_path / PROTO.parent).mkdir(parents=True)
    shutil.copy(SRC / PROTO, tmp_path / PROTO)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}",
                    f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", str(tmp_path / PROTO)], check=True)
    for name in ("fedtune_pb2.py", "fedtune_pb2.pyi", "fedtune_pb2_grpc.py"):
        fresh = (tmp_path / PROTO.parent / name).read_text()
        committed = (SRC / PROTO.parent / name).read_text()
        assert fresh == committed, f"{name} is stale: run 'make proto'"
