"""Bundled datasets (no downloads) and partitioners that spread them over nodes."""

from .dataset import Dataset
from .datasets import DATASETS, load_dataset
from .federated import FederatedData, NodeData, build_federated_data
from .partition import PARTITIONERS

__all__ = ["DATASETS", "PARTITIONERS", "Dataset", "FederatedData", "NodeData",
           "build_federated_data", "load_dataset"]
