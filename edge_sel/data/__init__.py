"""Data: sources -> indexed uint8 tensors; stratified splits; batched augmentation; batch loader."""

from edge_sel.data.dataset import IndexedDataset, Splits
from edge_sel.data.loader import Batch, BatchLoader
from edge_sel.data.sources import load_source
from edge_sel.data.split import make_splits, parse_shard

__all__ = ["IndexedDataset", "Splits", "Batch", "BatchLoader", "load_source", "make_splits", "parse_shard"]
