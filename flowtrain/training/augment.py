"""Random translations of training images, the augmentation Glow's released code trains
CIFAR-10 and MNIST with (openai/glow data_loaders/get_mnist_cifar.py at train.py's default
``--dal 1``: Keras ``ImageDataGenerator(width_shift_range=0.1, height_shift_range=0.1)``).

Keras draws a real-valued shift, uniform in +-range times the image's height and width,
and resamples bilinearly with the edge pixels extended beyond the border
(keras_preprocessing image.py ``apply_affine_transform``: scipy.ndimage
``affine_transform``, ``order=1``, ``mode='nearest'``, on float32 images); Glow then floors
the result back to integers (``x_to_uint8``). Done here the same way in torch, on a batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowtrain.errors import ConfigError


def check_shift_range(shift: float) -> None:
    """``data.shift`` is a fraction of an image's size (a run's config is checked before
    any data is read by flowtrain/config_ranges.py; this guards BatchStream's callers)."""
    if not 0.0 <= shift < 1.0:
        raise ConfigError(f"data.shift is a fraction of the image's height and width, in "
                          f"[0, 1) (Glow's is 0.1); got {shift}")


def check_shift(shift: float, data_shape: tuple[int, ...]) -> None:
    """``data.shift`` for data of this shape: images [N, C, H, W] only."""
    check_shift_range(shift)
    if shift > 0 and len(data_shape) != 4:
        raise ConfigError(f"data.shift translates images [N, C, H, W]; this data has shape "
                          f"{tuple(data_shape)}. Leave data.shift=0.")


def random_offsets(n: int, height: int, width: int, shift: float,
                   generator: torch.Generator) -> Tensor:
    """[n, 2] shifts (rows, columns) in pixels, each uniform in +-shift times the size."""
    size = torch.tensor([height, width], dtype=torch.float64)
    return (torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 - 1) * shift * size


def _resampled(values: Tensor, offsets: Tensor, dim: int) -> Tensor:
    """Linear interpolation of ``values`` [N, C, H, W] (float64) along ``dim`` (2: rows,
    3: columns) at position + offset, coordinates beyond the border clamped to it."""
    length = values.shape[dim]
    position = (torch.arange(length, dtype=torch.float64, device=values.device)
                + offsets[:, None]).clamp(0, length - 1)  # [N, length]
    below = position.floor()
    weight = position - below
    below = below.long()
    above = (below + 1).clamp_max(length - 1)
    shape = [len(values), 1, 1, 1]
    shape[dim] = length
    index_shape = list(values.shape)

    def taken(index: Tensor) -> Tensor:
        return values.gather(dim, index.view(shape).expand(index_shape))
    weight = weight.view(shape)
    return (1 - weight) * taken(below) + weight * taken(above)


def translated(images: Tensor, offsets: Tensor) -> Tensor:
    """``images`` [N, C, H, W] of integer values, each moved by its ``offsets`` [N, 2]
    (rows, columns; output pixel (i, j) reads the input at (i + rows, j + columns)),
    bilinearly, rounded to float32 and floored as Glow does; in the images' dtype, on
    their device."""
    values = images.to(torch.float64)
    offsets = offsets.to(values.device, non_blocking=True)
    values = _resampled(_resampled(values, offsets[:, 0], 2), offsets[:, 1], 3)
    return values.float().floor().to(images.dtype)
