"""Your own sites' data from files named in the config (``[data] files``).

Formats by extension: CSV (``.csv``, also gzipped), Parquet (``.parquet``), NumPy
(``.npz`` with ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test``).

* One file per site: the site is named after the file (``clinic-a.csv`` is ``clinic-a``).
* One table with a site column (``data.site_column``): one site per distinct value.
* In tables, ``data.label_column`` holds the class and every other column is a feature.
  Labels that are not numbers (``"benign"``, ``"malignant"``) become class indices in
  sorted order, the same at every site.
* Features are standardized (``data.standardize``, on by default) with the mean and
  standard deviation over all sites' training rows, computed from per-site sums.
* Per-site test files (``data.test_files``, in the same order as ``files``), or else
  ``data.node_test_fraction`` of each site's rows, seeded. The central test set is
  ``data.test_file``, or else ``data.test_fraction`` of each site's rows.

Every site then passes the checks at the door (:mod:`fedtune.data.checks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import DataError
from .checks import check_federation
from .federated import FederatedData, HeldSites, NodeData

if TYPE_CHECKING:
    from ..config import DataSection

Split = tuple[np.ndarray, np.ndarray]


def _read_table(path: Path) -> Any:
    import pandas as pd

    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except ImportError as exc:
        raise DataError(f"{path}: reading Parquet needs pyarrow ({exc}); pip install pyarrow, "
                        "or save the table as CSV") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as a table ({exc})") from None


def _arrays(frame: Any, path: Path, label: str, drop: tuple[str, ...] = ()) -> tuple[
        np.ndarray, np.ndarray]:
    if label not in frame.columns:
        raise DataError(f"{path} has no label column {label!r} (data.label_column); its "
                        f"columns: {', '.join(map(str, frame.columns[:8]))}")
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    features = frame.drop(columns=[label, *drop])
    bad = [str(c) for c, t in features.dtypes.items()
           if not is_numeric_dtype(t) or is_bool_dtype(t)]
    if bad:
        raise DataError(f"{path}: column {bad[0]!r} is not numeric; encode it as numbers or "
                        "drop it (every column but the label is a feature)")
    return features.to_numpy(dtype=np.float32), frame[label].to_numpy()


def _read_site(path: Path, label: str) -> tuple[np.ndarray, np.ndarray, Split | None]:
    """(x, y, (x_test, y_test) or None) of one site's file."""
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist; fix the path in data.files")
    if path.suffix == ".npz":
        try:
            arrays = np.load(path)
            test = (arrays["x_test"], arrays["y_test"]) if "x_test" in arrays else None
            return arrays["x_train"], arrays["y_train"], test
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: an .npz site file needs x_train and y_train "
                            f"(optionally x_test, y_test): {exc}") from None
    if path.suffix not in (".csv", ".parquet", ".gz"):
        raise DataError(f"{path}: unknown format {path.suffix!r}; use .csv, .parquet or .npz")
    x, y = _arrays(_read_table(path), path, label)
    return x, y, None


def _held_out(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    perm = rng.permutation(n)
    k = round(fraction * n) if n > 1 else 0
    return np.sort(perm[k:]), np.sort(perm[:k])


def load_file_federation(d: DataSection, seed: int) -> FederatedData:
    """The federation the config's data files describe."""
    sites: dict[str, tuple[np.ndarray, np.ndarray, Split | None]] = {}
    paths = [Path(p) for p in d.files]
    if d.site_column:
        if len(paths) != 1:
            raise DataError("data.site_column needs exactly one file in data.files (one table "
                            "holding every site's rows)")
        frame = _read_table(paths[0])
        if d.site_column not in frame.columns:
            raise DataError(f"{paths[0]} has no site column {d.site_column!r}")
        for site, rows in frame.groupby(d.site_column, sort=True):
            x, y = _arrays(rows, paths[0], d.label_column, drop=(d.site_column,))
            sites[str(site)] = (x, y, None)
    else:
        for path in paths:
            name = path.name.split(".")[0]
            if name in sites:
                raise DataError(f"two files in data.files name site {name!r}; rename one")
            sites[name] = _read_site(path, d.label_column)
    if d.test_files:
        if len(d.test_files) != len(sites) or d.site_column:
            raise DataError(f"data.test_files has {len(d.test_files)} files for {len(sites)} "
                            "sites; give one per site file, in the same order")
        for name, test_path in zip(list(sites), d.test_files, strict=True):
            x, y, _ = _read_site(Path(test_path), d.label_column)
            sites[name] = (sites[name][0], sites[name][1], (x, y))
    first = next(iter(sites))
    for name, (x, _, _) in sites.items():
        if x.shape[1:] != sites[first][0].shape[1:]:
            raise DataError(f"site {name!r} has {x.shape[1:]} features but site {first!r} has "
                            f"{sites[first][0].shape[1:]}; every site needs the same columns")
    labels = _label_codes([y for _, y, _ in sites.values()] +
                          [t[1] for _, _, t in sites.values() if t is not None])
    rng = np.random.default_rng(seed)
    nodes, central_x, central_y = [], [], []
    for name, (x, y, given) in sites.items():
        y = labels(y, name)
        keep, central = _held_out(len(y), 0.0 if d.test_file else d.test_fraction, rng)
        central_x.append(x[central])
        central_y.append(y[central])
        x, y = x[keep], y[keep]
        if given is None:
            train, own = _held_out(len(y), d.node_test_fraction, rng)
            test: Split = (x[own], y[own])
            x, y = x[train], y[train]
        else:
            test = (given[0], labels(given[1], name))
        nodes.append(NodeData(name, torch.as_tensor(x, dtype=torch.float32),
                              torch.as_tensor(y), torch.as_tensor(test[0], dtype=torch.float32),
                              torch.as_tensor(test[1])))
    if d.test_file:
        x, y, _ = _read_site(Path(d.test_file), d.label_column)
        x_test, y_test = x, labels(y, "the test set")
    else:
        x_test, y_test = np.concatenate(central_x), np.concatenate(central_y)
    x_t, y_t = torch.as_tensor(x_test, dtype=torch.float32), torch.as_tensor(y_test)
    if d.standardize:
        x_t = _standardize(nodes, x_t)
    classes = check_federation([(n.node_id, n.x_train, n.y_train, n.x_test, n.y_test)
                                for n in nodes], x_t, y_t, None)
    return FederatedData("files", classes, tuple(nodes[0].x_train.shape[1:]), HeldSites(nodes),
                         x_t, y_t, x_t[:0], y_t[:0])


def _label_codes(all_labels: list[np.ndarray]) -> Any:
    """Labels as int64 class indices: numbers are kept (and checked later); anything else
    (strings) is numbered in sorted order over every site, so all sites agree."""
    if all(np.issubdtype(y.dtype, np.number) for y in all_labels):
        def keep(y: np.ndarray, owner: str) -> np.ndarray:
            from .checks import checked_labels

            return checked_labels(f"site {owner!r}" if owner != "the test set" else owner,
                                  "labels", torch.as_tensor(y)).numpy()
        return keep
    names = sorted({str(v) for y in all_labels for v in y})
    index = {v: i for i, v in enumerate(names)}

    def code(y: np.ndarray, owner: str) -> np.ndarray:
        return np.array([index[str(v)] for v in y], dtype=np.int64)
    return code


def _standardize(nodes: list[NodeData], x_test: torch.Tensor) -> torch.Tensor:
    """Scale every feature to mean 0 and standard deviation 1 over all sites' training rows,
    from per-site sums (what one federated round of sums would compute, no row leaving its
    site), in place for the sites; returns the test set scaled the same way. Features with
    no spread are only centred."""
    count = sum(n.x_train.shape[0] for n in nodes)
    total = torch.stack([n.x_train.double().sum(0) for n in nodes]).sum(0)
    squares = torch.stack([(n.x_train.double() ** 2).sum(0) for n in nodes]).sum(0)
    mean = total / count
    std = (squares / count - mean ** 2).clamp(min=0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    for n in nodes:
        n.x_train = ((n.x_train - mean) / std).float()
        n.x_test = ((n.x_test - mean) / std).float()
    return ((x_test - mean) / std).float()
