"""What class-conditional models share: how many classes a model is built for, the labels
it is handed as its ``context``, and the class-conditional Gaussian prior of the
multi-scale flows (Glow's ``ycond``).

A conditional model p(x | y) takes the labels y, int64 [B] in 0 .. n_classes - 1, as the
``context`` every bijection already receives; the transforms that do not depend on the
class ignore it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowtrain.errors import ConfigError
from flowtrain.flows.base import Bijection, TrainingPenalty
from flowtrain.flows.mixture import bounded_log_scale
from flowtrain.flows.multiscale import GaussianPrior


def class_count(conditional: bool, n_classes: int, option: str) -> int:
    """The number of classes a model conditions on: 0 for an unconditional one. A
    conditional model needs labelled data, which says how many classes there are."""
    if not conditional:
        return 0
    if n_classes < 2:
        raise ConfigError(f"{option} model.conditional=true models p(x | class) and needs "
                          f"the number of classes (at least 2) from labelled data; got "
                          f"{n_classes}. Train it on a labelled data set (docs/CONFIG.md, "
                          f"Class-conditional models).")
    return n_classes


# A label that stands for no class: TarFlow's dropped label (apple/ml-tarflow train.py,
# --drop_label), which reads the mean of the class embeddings.
NO_CLASS = -1


def checked_labels(context: Tensor | None, batch: int, n_classes: int) -> Tensor:
    """``context`` checked to be the labels of a batch of ``batch`` examples: what a
    class-conditional layer reads. A missing one is an error, not an unconditional pass."""
    if context is None:
        raise ValueError(f"this model is class-conditional ({n_classes} classes): pass the "
                         f"class labels as the context (label=... when sampling)")
    if context.dtype != torch.long or context.shape != (batch,):
        raise ValueError(f"class labels must be int64 of shape [{batch}]; got "
                         f"{context.dtype} of shape {tuple(context.shape)}")
    return context


class ClassEmbedding(nn.Module):
    """One learned vector per class, [B, width] for labels [B]; ``std`` 0 starts every
    class at zero, so a conditional model starts as its unconditional one."""

    def __init__(self, n_classes: int, width: int, std: float = 0.0):
        super().__init__()
        self.n_classes = n_classes
        self.weight = nn.Parameter(torch.randn(n_classes, width) * std)

    def forward(self, context: Tensor | None, batch: int) -> Tensor:
        return self.weight[checked_labels(context, batch, self.n_classes)]

    def or_mean(self, context: Tensor | None, batch: int) -> Tensor:
        """As ``forward``, where a negative label (``NO_CLASS``) reads the mean of every
        class's vector (transformer_flow.py ``MetaBlock``: ``y < 0`` reads
        ``class_embed.mean(dim=0)``)."""
        labels = checked_labels(context, batch, self.n_classes)
        dropped = (labels < 0).unsqueeze(-1)
        return torch.where(dropped, self.weight.mean(dim=0),
                           self.weight[labels.clamp_min(0)])

    def as_map(self, context: Tensor | None, batch: int) -> Tensor:
        """[B, width, 1, 1]: a per-class bias for feature maps, the same at every pixel."""
        return self(context, batch)[:, :, None, None]


def class_embeddings(n_classes: int, width: int, count: int) -> nn.ModuleList | None:
    """``count`` zero-initialized class biases of ``width`` channels, one per layer of a
    conditional network; None for an unconditional one (``n_classes`` 0)."""
    if not n_classes:
        return None
    return nn.ModuleList(ClassEmbedding(n_classes, width) for _ in range(count))


class ClassPrior(GaussianPrior):
    """z -> (z - mu_y) exp(-log_sigma_y): a learned mean and log-std per class for every
    element of the top latent, zero at initialization. Glow's class-conditional prior
    (openai/glow, model.py ``prior``: ``y_emb``, a zero-initialized linear map of the
    one-hot label added to the top prior's mean and log-std) gives one value per channel,
    shared by every position; this gives one per position too, so that a single-scale
    RealNVP on one-channel images has more than two numbers per class to steer by."""

    def __init__(self, shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.shape = tuple(shape)
        self.class_mean = ClassEmbedding(n_classes, math.prod(shape))
        self.class_raw_log_std = ClassEmbedding(n_classes, math.prod(shape))

    def prior(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        batch = z.shape[0]
        mean = self.class_mean(context, batch).view(batch, *self.shape)
        log_std = bounded_log_scale(self.class_raw_log_std(context, batch))
        return mean.to(z.dtype), log_std.view(batch, *self.shape).to(z.dtype)


class ZeroLinear(nn.Module):
    """openai/glow tfops.py ``linear_zeros``: (x W + b) exp(3 logs), all three zero at the
    start, so the first outputs are 0 and the scale learns faster than the weights."""

    def __init__(self, in_features: int, out_features: int, logscale_factor: float = 3.0):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.logs = nn.Parameter(torch.zeros(out_features))
        self.logscale_factor = logscale_factor

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) * torch.exp(self.logs * self.logscale_factor)


class TopClassPredictor(Bijection, TrainingPenalty):
    """The identity on the top latent z, which in training also predicts the class from
    z's spatial mean: Glow's predictive loss (openai/glow model.py ``_f_loss``: h_y =
    reduce_mean(z, [1, 2]), ``linear_zeros("classifier")``, bits_y = cross-entropy / ln 2,
    loss = bits_x + weight_y * bits_y). In flowtrain's units, nats per example, that is
    ``weight_y`` * ``n_dims`` * cross-entropy (bits_x is per dimension)."""

    volume_preserving = True

    def __init__(self, n_channels: int, n_classes: int, weight_y: float, n_dims: int):
        super().__init__()
        self.classifier = ZeroLinear(n_channels, n_classes)
        self.n_classes = n_classes
        self.weight_y = weight_y
        self.n_dims = n_dims

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training:
            labels = checked_labels(context, x.shape[0], self.n_classes)
            logits = self.classifier(x.mean(dim=(2, 3)))
            self.penalty = (self.weight_y * self.n_dims
                            * F.cross_entropy(logits, labels, reduction="none"))
        return x, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return z
