"""Errors a user can fix. The CLI prints their message alone, without a traceback."""

from __future__ import annotations


class FlowtrainError(Exception):
    """Bad input or state: the message names what is wrong and how to fix it."""


class DataError(FlowtrainError, ValueError):
    """A data set that cannot be trained on."""


class CheckpointError(FlowtrainError, RuntimeError):
    """A checkpoint that cannot be used."""


class ConfigError(FlowtrainError, ValueError):
    """A config value that composes but cannot work (a shape, a device, a batch size)."""


def user_error_in(error: BaseException) -> FlowtrainError | None:
    """The FlowtrainError behind ``error``, looking through wrappers such as Hydra's
    InstantiationException, which re-raises a constructor's error ``from`` it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, FlowtrainError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class NonFiniteError(FlowtrainError, FloatingPointError):
    """Training produced NaN or infinity; the last good checkpoint is kept."""
