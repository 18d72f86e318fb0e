"""Your own data from the config: CSV per site, one Parquet table with a site column, NPZ
per site, per-site test files; broken files refused in one line."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from sklearn.datasets import load_wine

from fedtune.config import load_config
from fedtune.errors import DataError
from fedtune.tasks import build_task

from .conftest import FEDTUNE, ROOT


@pytest.fixture(scope="module")
def wine():
    frame = load_wine(as_frame=True).frame.rename(columns={"target": "kind"})
    frame["kind"] = frame["kind"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def write_config(folder, data_lines):
    (folder / "config.toml").write_text("[run]\nrounds = 5\n[data]\n" + data_lines)
    return folder / "config.toml"


def test_one_csv_per_site_named_after_its_file(tmp_path, wine):
    (tmp_path / "sites").mkdir()
    for i in range(3):
        wine.iloc[i::3].to_csv(tmp_path / "sites" / f"vineyard-{i}.csv", index=False)
    cfg = load_config(write_config(tmp_path, 'files = ["sites/vineyard-0.csv", '
                                   '"sites/vineyard-1.csv", "sites/vineyard-2.csv"]\n'
                                   'label_column = "kind"\n'))
    task = build_task(cfg)
    assert [n.node_id for n in task.data.nodes] == ["vineyard-0", "vineyard-1", "vineyard-2"]
    assert task.data.num_classes == 3 and task.data.input_shape == (13,)
    rows = sum(n.num_train + n.x_test.shape[0] for n in task.data.nodes) + len(task.data.y_test)
    assert rows == len(wine)
    x = np.concatenate([n.x_train.numpy() for n in task.data.nodes])
    assert np.allclose(x.mean(0), 0, atol=1e-4) and np.allclose(x.std(0), 1, atol=1e-3)
    out = subprocess.run([FEDTUNE, "run", str(tmp_path / "config.toml"), "--output", "json",
                          "--quiet", "--set", f'run.workspace="{tmp_path / "ws"}"'],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["test_accuracy"] > 0.8


def test_one_parquet_table_with_a_site_column_and_npz_sites(tmp_path, wine):
    table = wine.assign(region=np.where(wine.index % 2 == 0, "north", "south"))
    table.to_parquet(tmp_path / "all.parquet")
    task = build_task(load_config(write_config(
        tmp_path, 'files = ["all.parquet"]\nsite_column = "region"\nlabel_column = "kind"\n')))
    assert [n.node_id for n in task.data.nodes] == ["north", "south"]
    x = wine.drop(columns=["kind"]).to_numpy(np.float32)
    y = wine["kind"].map({"barbera": 0, "barolo": 1, "grignolino": 2}).to_numpy()
    for i in range(2):
        np.savez(tmp_path / f"site{i}.npz", x_train=x[i::2][:60], y_train=y[i::2][:60],
                 x_test=x[i::2][60:], y_test=y[i::2][60:])
    task = build_task(load_config(write_config(
        tmp_path, 'files = ["site0.npz", "site1.npz"]\nstandardize = false\n')))
    assert [n.node_id for n in task.data.nodes] == ["site0", "site1"]
    assert task.data.nodes[0].num_train == round(60 * 0.8)  # 20 % to the central test set
    assert len(task.data.nodes[0].y_test) == len(y[0::2][60:])  # its own test file


@pytest.mark.parametrize(("change", "expected"), [
    (lambda f: f.drop(columns=["kind"]), "has no label column 'kind'"),
    (lambda f: f.assign(note="see chart"), "column 'note' is not numeric"),
    (lambda f: f.assign(alcohol=np.nan), "x_train holds NaN or infinite values"),
])
def test_a_broken_file_is_one_line_naming_it(tmp_path, wine, change, expected):
    wine.iloc[:80].to_csv(tmp_path / "good.csv", index=False)
    change(wine.iloc[80:]).to_csv(tmp_path / "bad.csv", index=False)
    cfg = load_config(write_config(tmp_path, 'files = ["good.csv", "bad.csv"]\n'
                                   'label_column = "kind"\n'))
    with pytest.raises(DataError, match=expected) as info:
        build_task(cfg)
    assert "\n" not in str(info.value)
    missing = load_config(write_config(tmp_path, 'files = ["nope.csv"]\n'))
    with pytest.raises(DataError, match="does not exist"):
        build_task(missing)


def test_the_example_folder_runs():
    cfg = load_config(ROOT / "examples" / "own-data" / "config.toml")
    task = build_task(cfg)
    assert [n.node_id for n in task.data.nodes] == [f"hospital-{c}" for c in "abcde"]
    assert cfg.run.name == "own-data"

