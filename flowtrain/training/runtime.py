"""Device choice, seeding and the RNG states a checkpoint must carry."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from flowtrain.config import Device, Precision
from flowtrain.errors import ConfigError


def select_device(requested: Device | str) -> torch.device:
    """device=auto: CUDA when PyTorch sees a GPU, else the CPU."""
    requested = Device(requested)
    if requested is Device.auto:
        requested = Device.cuda if torch.cuda.is_available() else Device.cpu
    if requested is Device.cuda and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for, but PyTorch sees no CUDA GPU. "
                          "Use device=auto (CUDA when present, else CPU) or device=cpu.")
    return torch.device(requested.value)


def cpu_threads(requested: int | None, launcher: Mapping[str, Any] | None) -> int | None:
    """How many threads torch should use: the ``threads`` key when set; under Hydra's joblib
    launcher the cores divided between its ``n_jobs`` parallel jobs; else None (torch's
    default)."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"threads must be at least 1 (or null); got {requested}")
        return requested
    if launcher is None or "JoblibLauncher" not in str(launcher.get("_target_", "")):
        return None
    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs") or -1
    parallel = cores + 1 + n_jobs if n_jobs < 0 else n_jobs  # joblib: -1 is every core
    return max(1, cores // max(1, parallel))


def flush_subnormals() -> bool:
    """Treat subnormal floats (below 1.2e-38 in float32) as zero on the CPU; False where the
    CPU cannot. The mixture flows' far tails produce them, and x86 computes with them many
    times slower: on 3x32x32 photo patches the PixelCNN flow trained 21% more steps in 200 s
    with them flushed (704 against 580), and 2.15x as many at lr 1e-2. No value a flow
    reports depends on numbers that small."""
    return torch.set_flush_denormal(True)


def autocast(device: torch.device, precision: Precision | str) -> torch.autocast:
    """The context a forward pass runs in: bf16 autocast, or nothing for fp32. The flows
    cast their networks' outputs back to the input's dtype, so only the networks run in
    bfloat16 and log-dets, the loss and bits/dim stay float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=Precision(precision) is Precision.bf16)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CUDA included). CPU kernels are deterministic as they
    are; forcing deterministic CUDA kernels would cost GPU speed, so that is left alone."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """Every global RNG state the run uses, as plain containers and tensors (loadable
    weights_only). CUDA's only for the run's own GPU, so a checkpoint moves between hosts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


@contextmanager
def exact_float32() -> Iterator[None]:
    """cuDNN convolutions and CUDA matrix products in full float32 rather than TF32, which
    PyTorch lets cuDNN use by default: a reported bits/dim, or an inversion, must not
    depend on which kernel ran. Training keeps TF32's speed."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
