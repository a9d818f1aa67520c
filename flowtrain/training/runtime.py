"""Device choice, seeding and the RNG states a checkpoint must carry."""

from __future__ import annotations

import random

import numpy as np
import torch

from flowtrain.config import Device
from flowtrain.errors import ConfigError


def select_device(requested: Device | str) -> torch.device:
    requested = Device(requested)
    if requested is Device.cuda and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for, but PyTorch sees no CUDA GPU. "
                           "Use device=auto (CUDA when present, else CPU) or device=cpu.")
    if requested is Device.cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CUDA included). CPU kernels are deterministic as they
    are; forcing deterministic CUDA kernels would cost GPU speed, so that is left alone."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, as plain containers and tensors (loadable weights_only)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
