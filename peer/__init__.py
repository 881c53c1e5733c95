"""The peer daemon: trains a model on its shard and exchanges tensors with its neighbors."""

__version__ = "0.1.0"
