"""Bundled datasets (no downloads) and partitioners that spread them over nodes."""

from .datasets import DATASETS, Dataset, load_dataset
from .federated import FederatedData, NodeData, build_federated_data
from .partition import PARTITIONERS

__all__ = ["DATASETS", "PARTITIONERS", "Dataset", "FederatedData", "NodeData",
           "build_federated_data", "load_dataset"]
