"""The names a config may use, without importing what they name.

Validating a config must not import torch (about 1.5 s): a typo in `fedtune run --set ...`
should be reported at once. The registries themselves (strategies, datasets, partitioners)
live with their code; ``tests/test_store_cli.py`` checks these lists match them.
"""

STRATEGY_NAMES = ("fedavg", "fedavgm", "fedprox", "scaffold", "fedadam", "fedyogi",
                  "fedadagrad", "fednova", "diloco")
DATASET_NAMES = ("digits", "breast_cancer", "wine", "mnist1d", "synthetic", "rotten_tomatoes")
PARTITION_NAMES = ("iid", "dirichlet", "shards", "quantity", "natural")
