"""The sites of a federation, held in memory or made when a round asks for them.

Both kinds are a ``Sequence[NodeData]`` (so ``for site in data.nodes`` works) that also
answers, without touching any site's data: the ids in order, one site by id, and a site's
number of training examples (what weighted selection and the round's weights need).

* :class:`HeldSites`: every site's tensors in memory (bundled datasets, files, ``make_task``).
* :class:`GeneratedSites`: a site's tensors are made by a function when it is first asked
  for and kept in a least-recently-used cache bounded in bytes, so a simulation of 100,000
  sites holds the data of the sites it trains, not of all of them (and a small federation,
  which fits in the cache, is made once).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch


@dataclass
class NodeData:
    """One node's private data: train and test tensors."""

    node_id: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])


class _Lookup:
    """``require``, for both kinds of sites."""

    def site(self, node_id: str) -> NodeData | None:
        raise NotImplementedError

    def require(self, node_id: str) -> NodeData:
        """Site ``node_id``'s data; a KeyError naming it when there is no such site."""
        data = self.site(node_id)
        if data is None:
            raise KeyError(f"no site {node_id!r}")
        return data


class HeldSites(_Lookup, Sequence[NodeData]):
    """Sites whose data is all in memory."""

    def __init__(self, nodes: Sequence[NodeData]) -> None:
        self._nodes = list(nodes)
        self._index = {n.node_id: i for i, n in enumerate(self._nodes)}

    @property
    def ids(self) -> list[str]:
        return [n.node_id for n in self._nodes]

    def site(self, node_id: str) -> NodeData | None:
        i = self._index.get(node_id)
        return None if i is None else self._nodes[i]

    def num_train(self, node_id: str) -> int | None:
        i = self._index.get(node_id)
        return None if i is None else self._nodes[i].num_train

    @overload
    def __getitem__(self, i: int) -> NodeData: ...
    @overload
    def __getitem__(self, i: slice) -> list[NodeData]: ...

    def __getitem__(self, i: int | slice) -> NodeData | list[NodeData]:
        return self._nodes[i]

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[NodeData]:
        return iter(self._nodes)


class GeneratedSites(_Lookup, Sequence[NodeData]):
    """Sites made on demand by ``make(index)``; ``num_train[index]`` is known up front.
    ``make`` must be deterministic (the same site twice is the same data) and picklable."""

    def __init__(self, ids: Sequence[str], num_train: np.ndarray,
                 make: Callable[[int], NodeData], *, cache_bytes: int = 256 * 2**20) -> None:
        self._ids = list(ids)
        self._index = {node_id: i for i, node_id in enumerate(self._ids)}
        self._num_train = np.asarray(num_train, dtype=np.int64)
        self._make = make
        self._cache: OrderedDict[int, NodeData] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._held_bytes = 0

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def site(self, node_id: str) -> NodeData | None:
        i = self._index.get(node_id)
        return None if i is None else self[i]

    def num_train(self, node_id: str) -> int | None:
        i = self._index.get(node_id)
        return None if i is None else int(self._num_train[i])

    @overload
    def __getitem__(self, i: int) -> NodeData: ...
    @overload
    def __getitem__(self, i: slice) -> list[NodeData]: ...

    def __getitem__(self, i: int | slice) -> NodeData | list[NodeData]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self._ids)
        if not 0 <= i < len(self._ids):
            raise IndexError(f"site index {i} out of range ({len(self._ids)} sites)")
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        made = self._make(i)
        self.remember(i, made)
        return made

    def remember(self, i: int, data: NodeData) -> None:
        """Keep site ``i``'s data (made elsewhere, e.g. while building the test set),
        dropping the least recently used sites beyond the byte budget."""
        if i in self._cache:
            return
        self._cache[i] = data
        self._held_bytes += _nbytes(data)
        while self._held_bytes > self._cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._held_bytes -= _nbytes(dropped)

    def __len__(self) -> int:
        return len(self._ids)

    def __getstate__(self) -> dict[str, object]:  # a pickled copy (a Ray actor) starts empty
        return {**self.__dict__, "_cache": OrderedDict(), "_held_bytes": 0}


def _nbytes(d: NodeData) -> int:
    return sum(t.element_size() * t.nelement() for t in (d.x_train, d.y_train, d.x_test, d.y_test))


Sites = HeldSites | GeneratedSites
