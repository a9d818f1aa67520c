"""Data sets: each yields in-memory train and test tensors plus what the likelihood needs."""

from flowtrain.data.base import FlowData

__all__ = ["FlowData"]
