"""Data checked at the door: a site's arrays are refused before anything trains, with one
line naming the site, the array, what is wrong and the fix.

What is checked: features and labels as arrays of matching length; finite features; labels
that are whole numbers from 0 to the number of classes - 1; no empty training set; the same
feature shape at every site and in the test set. Without these checks a broken site was only
dropped every round (or crashed deep inside torch), and the run still ended ``complete``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import DataError

FIX_LABELS = "labels must be class indices 0, 1, ..., C-1"


def checked_labels(owner: str, name: str, y: torch.Tensor) -> torch.Tensor:
    """``y`` as int64 class indices, or a :class:`DataError` (floats must be whole
    numbers: 1.0 is class 1, 0.5 is refused, never truncated)."""
    if y.dim() != 1:
        raise DataError(f"{owner}: {name} has shape {tuple(y.shape)}; it must be one label "
                        f"per row (1-D); {FIX_LABELS}")
    if y.is_floating_point():
        if not bool(torch.isfinite(y).all()):
            raise DataError(f"{owner}: {name} holds NaN or infinite labels; {FIX_LABELS}")
        whole = y == y.round()
        if not bool(whole.all()):
            bad = y[~whole][0].item()
            raise DataError(f"{owner}: {name} holds the non-integer label {bad:g}; "
                            f"{FIX_LABELS} (regression targets are not supported)")
    elif y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{owner}: {name} has dtype {y.dtype}; {FIX_LABELS}")
    y = y.long()
    if y.numel() and int(y.min()) < 0:
        raise DataError(f"{owner}: {name} holds the negative label {int(y.min())}; "
                        f"{FIX_LABELS}")
    return y


def check_split(owner: str, split: str, x: torch.Tensor, y: torch.Tensor, *,
                allow_empty: bool = False) -> None:
    """One (x, y) split: lengths, emptiness, finite features."""
    if x.dim() == 0:
        raise DataError(f"{owner}: x_{split} is a single number; it must have one row per "
                        "example")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{owner}: x_{split} has {x.shape[0]} rows but y_{split} has "
                        f"{y.shape[0]} labels; give one label per row")
    if x.shape[0] == 0 and not allow_empty:
        raise DataError(f"{owner}: x_{split} is empty; a site needs at least one training "
                        "example (leave the site out, or give it data)")
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        rows = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).nonzero().flatten()
        shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise DataError(f"{owner}: x_{split} holds NaN or infinite values in {len(rows)} "
                        f"row(s) ({shown}); clean or drop those rows")


def check_federation(sites: Sequence[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor,
                                           torch.Tensor]],
                     x_test: torch.Tensor, y_test: torch.Tensor,
                     num_classes: int | None) -> int:
    """Every site's train and test split, and the shared test set; the number of classes
    (given, or one more than the largest label seen)."""
    if not sites:
        raise DataError("no sites: give at least one site's (train, test) data")
    shape = tuple(sites[0][1].shape[1:])
    labels_max = -1
    for node_id, xtr, ytr, xte, yte in sites:
        owner = f"site {node_id!r}"
        check_split(owner, "train", xtr, ytr)
        check_split(owner, "test", xte, yte, allow_empty=True)
        for split, x in (("train", xtr), ("test", xte)):
            if tuple(x.shape[1:]) != shape:
                raise DataError(f"{owner}: x_{split} has feature shape {tuple(x.shape[1:])} "
                                f"but site {sites[0][0]!r} has {shape}; every site and the "
                                "test set need the same features in the same order")
        for split, y in (("train", ytr), ("test", yte)):
            if num_classes is not None and y.numel() and int(y.max()) >= num_classes:
                raise DataError(f"{owner}: y_{split} holds the label {int(y.max())} but "
                                f"num_classes = {num_classes}; {FIX_LABELS}")
        labels_max = max(labels_max, int(ytr.max()), int(yte.max()) if yte.numel() else -1)
    check_split("the test set", "test", x_test, y_test, allow_empty=True)
    if x_test.numel() and tuple(x_test.shape[1:]) != shape:
        raise DataError(f"the test set has feature shape {tuple(x_test.shape[1:])} but the "
                        f"sites have {shape}; give it the same features in the same order")
    if y_test.numel():
        labels_max = max(labels_max, int(y_test.max()))
    classes = num_classes if num_classes is not None else labels_max + 1
    if labels_max >= classes:
        raise DataError(f"a label {labels_max} is out of range for num_classes = {classes}; "
                        f"{FIX_LABELS} (or raise num_classes)")
    if classes < 2:
        raise DataError(f"the data has {classes} class(es); classification needs at least 2")
    return classes
