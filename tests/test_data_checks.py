"""Broken site data is refused at the door, in one line naming the site, the array and the
fix, before anything trains (make_task and `fedtune join --data`)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from fedtune.errors import DataError
from fedtune.task import make_task

from .conftest import FEDTUNE


def good(n=20, d=4, shift=0.0):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, d, generator=gen) + shift
    return x, (x[:, 0] > shift).long()


def task_with(site_b, test=None, **kw):
    sites = {"clinic-a": (good(), good(8)), "clinic-b": site_b}
    return make_task(lambda: nn.Linear(4, 2), sites, test=test or good(30), **kw)


def nan_rows():
    x, y = good()
    x[[3, 7], 1] = float("nan")
    return x, y


CASES = {
    "NaN features": (lambda: (nan_rows(), good(8)), ["'clinic-b'", "x_train", "2 row(s) (3, 7)"]),
    "wrong feature count": (lambda: (good(d=5), good(8, d=5)),
                            ["'clinic-b'", "feature shape (5,)", "'clinic-a' has (4,)"]),
    "x and y lengths": (lambda: ((good()[0], good()[1][:15]), good(8)),
                        ["'clinic-b'", "20 rows", "15 labels"]),
    "negative label": (lambda: ((good()[0], good()[1] - 1), good(8)),
                       ["'clinic-b'", "y_train", "negative label -1"]),
    "fractional label": (lambda: ((good()[0], good()[1].float() * 0.5), good(8)),
                         ["'clinic-b'", "non-integer label 0.5"]),
    "empty site": (lambda: ((torch.zeros(0, 4), torch.zeros(0).long()), good(8)),
                   ["'clinic-b'", "x_train is empty"]),
    "not arrays": (lambda: ("train.csv", good(8)), ["'clinic-b'", "(features, labels)"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_site_data_is_refused_by_name(case):
    make, expected = CASES[case]
    with pytest.raises(DataError) as info:
        task_with(make())
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)


def test_label_range_test_set_and_no_sites():
    with pytest.raises(DataError, match="'clinic-b': y_train holds the label 2 but num_classes = 2"):
        task_with(((good()[0], good()[1] + 1), good(8)), num_classes=2)
    with pytest.raises(DataError, match="the test set has feature shape"):
        task_with((good(), good(8)), test=good(30, d=3))
    with pytest.raises(DataError, match="no sites"):
        make_task(lambda: nn.Linear(4, 2), {}, test=good(30))


def test_whole_float_labels_are_classes_not_truncations():
    x, y = good()
    task = task_with(((x, y.double()), good(8)))
    assert task.data.nodes[1].y_train.dtype == torch.int64
    assert torch.equal(task.data.nodes[1].y_train, y)


def test_join_refuses_a_broken_file_before_it_connects(tmp_path):
    x, y = good()
    x[0, 0] = float("inf")
    np.savez(tmp_path / "site.npz", x_train=x.numpy(), y_train=y.numpy(),
             x_test=good(8)[0].numpy(), y_test=good(8)[1].numpy())
    # no coordinator listens on this port: the data error must come first
    proc = subprocess.run([FEDTUNE, "join", "--server", "127.0.0.1:9", "--site", "clinic-b",
                           "--data", str(tmp_path / "site.npz"), "--max-attempts", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "site 'clinic-b': x_train holds NaN or infinite values in 1 row(s) (0)" in proc.stderr
    assert "Traceback" not in proc.stderr and "connect" not in proc.stderr.lower()
