"""TarFlow (Zhai et al., "Normalizing Flows are Capable Generative Models", ICML 2025), as
released in apple/ml-tarflow (transformer_flow.py ``MetaBlock``, ``Model``): an image cut
into non-overlapping p x p patches, each a token of C p^2 values, then a stack of
autoregressive affine flows over the token sequence whose conditioners are causal
transformers; the order reverses between blocks (identity, flip, identity, ...).

Block: z_i = (x_i - mu_i) exp(-alpha_i), (alpha_i, mu_i) from tokens 0..i-1, token 0
unchanged (the released conditioner sees a zero token in front of the sequence);
log|det| = -sum alpha. Its inverse runs one token at a time with a key/value cache.

Class-conditional TarFlow trains with a share of its labels dropped (``drop_label``: the
dropped read the mean class embedding, as released), which teaches it p(x) beside
p(x | y); sampling can then push each step's (alpha, mu) away from the unconditional
ones, a + g (a - a_uncond) (``guidance`` g, the released ``--cfg``)."""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from flowtrain.errors import ConfigError
from flowtrain.flows.base import (
    FOR_POINTS,
    Bijection,
    FlowModel,
    Inverse,
    StandardNormal,
    image_shape,
)
from flowtrain.flows.conditioning import NO_CLASS, class_count
from flowtrain.flows.transformer import CausalTransformer, KVCache

log = logging.getLogger(__name__)
# Models already told that their unconditional pass was never trained.
_WARNED_UNTRAINED: weakref.WeakSet = weakref.WeakSet()


class Patchify(Bijection):
    """[B, C, H, W] -> [B, T, C p^2]: tokens row by row, each patch's values channel
    first, then row, then column (``torch.nn.functional.unfold``'s order, as released)."""

    volume_preserving = True

    def __init__(self, event_shape: tuple[int, int, int], patch_size: int):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.patch_size = patch_size

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        channels, height, width = self.event_shape
        p = self.patch_size
        tokens = (x.reshape(-1, channels, height // p, p, width // p, p)
                  .permute(0, 2, 4, 1, 3, 5).reshape(-1, (height // p) * (width // p),
                                                     channels * p * p))
        return tokens, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        channels, height, width = self.event_shape
        p = self.patch_size
        return (z.reshape(-1, height // p, width // p, channels, p, p)
                .permute(0, 3, 1, 4, 2, 5).reshape(-1, channels, height, width))


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance at sampling: each step's output o becomes o + g (o -
    o_uncond) with g = ``weight``, or, ``annealed``, g = i / (T - 1) * ``weight`` at token
    i of T (evaluate_fid.py's ``annealed_guidance``: the weight grows over the tokens)."""

    weight: float = 0.0
    annealed: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"guidance must be a finite weight of at least 0 (0: none); "
                              f"got {self.weight}")

    def at(self, index: int, length: int) -> float:
        return self.weight * index / (length - 1) if self.annealed else self.weight


class TransformerAutoregressiveBlock(Bijection):
    """One TarFlow block on tokens [B, T, D]: an affine autoregressive flow whose shift and
    log-scale come from a causal transformer (``flip``: in reversed token order).

    ``kv_cache`` (default on): the inverse reads one token per transformer step and keeps
    the keys and values of the tokens before it; off, each step re-reads the whole prefix
    (the same numbers, T times the work: kept to test and time the cache against).
    ``guidance`` > 0 (a conditional block's inverse): each step's output o becomes
    o + g (o - o_uncond), o_uncond read with no class (a second cache), as released
    (transformer_flow.py ``MetaBlock.reverse``, ``guide_what='ab'``)."""

    def __init__(self, length: int, token_dim: int, width: int, n_layers: int, head_dim: int,
                 expansion: int = 4, flip: bool = False, kv_cache: bool = True,
                 max_log_scale: float = 0.0, n_classes: int = 0):
        super().__init__()
        self.conditioner = CausalTransformer(token_dim, 2 * token_dim, length, width,
                                             n_layers, head_dim, expansion, n_classes)
        self.flip = flip
        self.kv_cache = kv_cache
        self.max_log_scale = float(max_log_scale)
        self.guidance = Guidance()

    def _ordered(self, tokens: Tensor) -> Tensor:
        return tokens.flip(1) if self.flip else tokens

    def _affine(self, output: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(log-scale, shift) in the transform's dtype: under bf16 autocast only the
        transformer runs in bf16; the affine map and its log-det stay in float32. With
        ``max_log_scale`` > 0 the log-scale is m tanh(alpha / m), within (-m, m); 0 leaves
        it unbounded, as released."""
        log_scale, shift = output.to(like.dtype).chunk(2, dim=-1)
        if self.max_log_scale > 0:
            log_scale = self.max_log_scale * torch.tanh(log_scale / self.max_log_scale)
        return log_scale, shift

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._ordered(x)
        # output i conditions token i + 1; token 0 gets (0, 0) and passes unchanged
        output = self.conditioner(x[:, :-1], self.flip, context)
        log_scale, shift = self._affine(output, x)
        first = x[:, :1]
        rest = (x[:, 1:] - shift) * torch.exp(-log_scale)
        return self._ordered(torch.cat([first, rest], dim=1)), -log_scale.flatten(1).sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        z = self._ordered(z)
        tokens = [z[:, :1]]
        steering = self.guidance.weight > 0 and context is not None
        conditions = [context, *([torch.full_like(context, NO_CLASS)] if steering else [])]
        caches = [self.conditioner.start_cache(z.shape[0], z.shape[1]) if self.kv_cache
                  else None for _ in conditions]
        for index in range(1, z.shape[1]):
            output, *unconditional = [self._next_output(tokens, cache, condition)
                                      for cache, condition in zip(caches, conditions,
                                                                  strict=True)]
            if unconditional:  # before any log-scale bound, as the released has none
                weight = self.guidance.at(index, z.shape[1])
                output = output + weight * (output - unconditional[0])
            log_scale, shift = self._affine(output, z)
            tokens.append(z[:, index:index + 1] * torch.exp(log_scale) + shift)
        return self._ordered(torch.cat(tokens, dim=1))

    def _next_output(self, tokens: list[Tensor], cache: KVCache | None,
                     context: Tensor | None) -> Tensor:
        """The conditioner's output for the token after ``tokens``: one step on the cache,
        or the whole prefix again without one."""
        if cache is not None:
            return self.conditioner.step(tokens[-1], cache, self.flip, context)
        return self.conditioner(torch.cat(tokens, dim=1), self.flip, context)[:, -1:]


class TarFlow(FlowModel):
    """``model=tarflow``: patchify, ``blocks`` transformer autoregressive blocks of
    ``layers_per_block`` layers, each ``width`` wide with heads of ``head_dim`` channels,
    in alternating token order; the patches are put back at the end (which moves no
    density), so the base is N(0, I) over the image's own shape. ``conditional``:
    p(x | class) with ``n_classes`` classes, a learned class embedding added to every
    token in every block's transformer, as released; ``drop_label``: the share of
    training labels dropped (read as no class), so that ``guidance`` can steer samples."""

    def __init__(self, event_shape: tuple[int, ...], patch_size: int = 2, width: int = 64,
                 blocks: int = 4, layers_per_block: int = 2, head_dim: int = 32,
                 expansion: int = 4, kv_cache: bool = True, max_log_scale: float = 0.0,
                 conditional: bool = False, n_classes: int = 0, drop_label: float = 0.0):
        channels, height, width_px = image_shape(event_shape, "model=tarflow", FOR_POINTS)
        n_classes = class_count(conditional, n_classes, "model=tarflow")
        if not 0.0 <= drop_label < 1.0 or (drop_label and not n_classes):
            raise ConfigError(f"model.drop_label is the share of training labels a "
                              f"class-conditional TarFlow drops, in [0, 1), with "
                              f"model.conditional=true; got {drop_label}"
                              f"{'' if n_classes else ' on an unconditional model'}")
        sizes = {"patch_size": patch_size, "width": width, "blocks": blocks,
                 "layers_per_block": layers_per_block, "head_dim": head_dim,
                 "expansion": expansion}
        too_small = [f"model.{key}={value}" for key, value in sizes.items() if value < 1]
        if too_small:
            raise ConfigError(f"{', '.join(too_small)}: TarFlow's sizes must be at least 1")
        if max_log_scale < 0:
            raise ConfigError(f"model.max_log_scale must be 0 (unbounded, as released) or "
                              f"positive; got {max_log_scale}")
        if height % patch_size or width_px % patch_size:
            raise ConfigError(f"model.patch_size={patch_size} must divide the image's height "
                              f"and width ({height}x{width_px}): TarFlow cuts it into "
                              f"non-overlapping patches. Pick a divisor, or crop the images.")
        if width % head_dim:
            raise ConfigError(f"model.width={width} must be divisible by model.head_dim="
                              f"{head_dim}: the attention has width / head_dim heads")
        length = (height // patch_size) * (width_px // patch_size)
        if length < 2:
            raise ConfigError(f"model.patch_size={patch_size} leaves one patch of the "
                              f"{height}x{width_px} image: an autoregressive flow needs at "
                              f"least two tokens. Use a smaller patch.")
        patches = Patchify((channels, height, width_px), patch_size)
        token_flows = [TransformerAutoregressiveBlock(
            length, channels * patch_size ** 2, width, layers_per_block, head_dim, expansion,
            flip=bool(index % 2), kv_cache=kv_cache, max_log_scale=max_log_scale,
            n_classes=n_classes)
            for index in range(blocks)]
        super().__init__([patches, *token_flows, Inverse(patches)],
                         StandardNormal(tuple(event_shape)), n_classes)
        self.drop_label = drop_label

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """In training, each label dropped with probability ``drop_label`` (from the
        training random stream, as dropout draws)."""
        if self.training and self.drop_label > 0 and context is not None:
            dropped = torch.rand(context.shape, device=context.device) < self.drop_label
            context = torch.where(dropped, torch.full_like(context, NO_CLASS), context)
        return super().forward(x, context)

    @property
    def guidance(self) -> Guidance:
        """The classifier-free guidance sampling uses (weight 0: none)."""
        return self._blocks()[0].guidance

    @guidance.setter
    def guidance(self, guidance: Guidance) -> None:
        if guidance.weight > 0 and not self.n_classes:
            raise ConfigError("guidance steers a class-conditional TarFlow "
                              "(model.conditional=true)")
        for block in self._blocks():
            block.guidance = guidance

    @property
    def kv_cache(self) -> bool:
        return all(block.kv_cache for block in self._blocks())

    @kv_cache.setter
    def kv_cache(self, enabled: bool) -> None:
        for block in self._blocks():
            block.kv_cache = enabled

    def _blocks(self) -> list[TransformerAutoregressiveBlock]:
        return [transform for transform in self.transforms
                if isinstance(transform, TransformerAutoregressiveBlock)]


@contextmanager
def guided(model: FlowModel, weight: float, annealed: bool = False) -> Iterator[None]:
    """Sampling with classifier-free guidance of ``weight`` (``Guidance``; 0: as trained,
    any model): only a class-conditional TarFlow takes it."""
    guidance = Guidance(weight, annealed)  # a weight it cannot use is refused first
    if weight == 0:
        yield
        return
    if not isinstance(model, TarFlow) or not model.n_classes:
        raise ConfigError(f"guidance={weight} steers the samples of a class-conditional "
                          f"TarFlow (model=tarflow model.conditional=true, best trained with "
                          f"model.drop_label=0.1); this is a {type(model).__name__}"
                          f"{'' if model.n_classes else ' without classes'}")
    if model.drop_label == 0 and model not in _WARNED_UNTRAINED:  # once, not every call
        _WARNED_UNTRAINED.add(model)
        log.warning("guidance=%g on a TarFlow trained with model.drop_label=0: its "
                    "unconditional pass (the mean class embedding) was never trained", weight)
    before = model.guidance
    model.guidance = guidance
    try:
        yield
    finally:
        model.guidance = before
