"""Flows and their building blocks: one interface, ``x -> (z, log_det)`` with an inverse."""

from flowtrain.flows.base import Bijection, FlowModel, UniformBase

__all__ = ["Bijection", "FlowModel", "UniformBase"]
