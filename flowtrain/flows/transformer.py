"""A causal transformer over a sequence of tokens, with a key/value cache for reading it one
token at a time: the conditioner of TarFlow's autoregressive blocks (apple/ml-tarflow,
transformer_flow.py ``Attention``, ``MLP``, ``AttentionBlock``).

Pre-norm layers: LayerNorm -> multi-head causal self-attention -> residual, LayerNorm ->
Linear(width, expansion * width) -> GELU -> Linear -> residual. The norms run in float32
under bf16 autocast, as released (``self.norm(x.float()).type(x.dtype)``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowtrain.flows.conditioning import ClassEmbedding


def _normed(norm: nn.LayerNorm, h: Tensor) -> Tensor:
    """LayerNorm in at least float32, back in h's dtype (released: ``x.float()``)."""
    wide = torch.promote_types(h.dtype, torch.float32)
    return norm(h.to(wide)).to(h.dtype)


class KVCache:
    """The keys and values of the positions read so far, for every layer: [batch, heads,
    length, head_dim] tensors filled one position at a time, so a step attends to its own
    past without recomputing it. Allocated at the first step in the dtype the attention
    computes in (bf16 under autocast), so no step converts the whole prefix."""

    def __init__(self, n_layers: int, batch: int, heads: int, length: int, head_dim: int):
        self.shape = (n_layers, batch, heads, length, head_dim)
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.position = 0  # the position the next step writes

    def extend(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store the step's keys and values ([B, heads, 1, d]) at ``position`` and return
        every position's so far."""
        if self.keys is None or self.values is None:
            self.keys, self.values = keys.new_zeros(self.shape), values.new_zeros(self.shape)
        end = self.position + 1
        self.keys[layer, :, :, self.position:end] = keys
        self.values[layer, :, :, self.position:end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position i attends to positions 0..i."""

    def __init__(self, width: int, head_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.heads = width // head_dim
        self.head_dim = head_dim

    def forward(self, h: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """h [B, T, width]. With ``cache``, h is the one token at ``cache.position``."""
        batch, length, width = h.shape
        normed = _normed(self.norm, h)
        q, k, v = (self.qkv(normed).view(batch, length, 3, self.heads, self.head_dim)
                   .permute(2, 0, 3, 1, 4))  # each [B, heads, T, d]
        if cache is None:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k, v = cache.extend(layer, k, v)
            attended = F.scaled_dot_product_attention(q, k, v)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, width))


class FeedForward(nn.Module):
    """LayerNorm -> Linear(width, expansion * width) -> GELU -> Linear back (released: MLP)."""

    def __init__(self, width: int, expansion: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.main = nn.Sequential(nn.Linear(width, expansion * width), nn.GELU(),
                                  nn.Linear(expansion * width, width))

    def forward(self, h: Tensor) -> Tensor:
        return self.main(_normed(self.norm, h))


class TransformerLayer(nn.Module):
    """Pre-norm attention and feed-forward, each added to its input (released:
    AttentionBlock)."""

    def __init__(self, width: int, head_dim: int, expansion: int):
        super().__init__()
        self.attention = CausalSelfAttention(width, head_dim)
        self.feed_forward = FeedForward(width, expansion)

    def forward(self, h: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        h = h + self.attention(h, cache, layer)
        return h + self.feed_forward(h)


class CausalTransformer(nn.Module):
    """Tokens [B, T, in_features] -> outputs [B, T, out_features], output i a function of
    tokens 0..i only. A learned position embedding (released init: N(0, 1e-4)) is added
    after the input projection; the output projection's weights start at zero.
    ``n_classes`` > 0: a learned class embedding is added there too, for every token
    (released ``MetaBlock``: ``class_embed``, initialized N(0, 1e-4) like the positions)."""

    def __init__(self, in_features: int, out_features: int, length: int, width: int,
                 n_layers: int, head_dim: int, expansion: int, n_classes: int = 0):
        super().__init__()
        self.proj_in = nn.Linear(in_features, width)
        self.pos_embed = nn.Parameter(torch.randn(length, width) * 1e-2)
        self.class_embed = (ClassEmbedding(n_classes, width, std=1e-2) if n_classes
                            else None)
        self.layers = nn.ModuleList(TransformerLayer(width, head_dim, expansion)
                                    for _ in range(n_layers))
        self.proj_out = nn.Linear(width, out_features)
        nn.init.zeros_(self.proj_out.weight)
        self.head_dim = head_dim

    def forward(self, tokens: Tensor, flip: bool = False, context: Tensor | None = None
                ) -> Tensor:
        """Every position at once. ``flip``: the tokens come in reversed order, and the
        position embedding is reversed with them (as released, so embedding j stays with
        original token j). ``context``: the labels, for a conditional transformer."""
        h = self._embedded(tokens, self._positions(flip)[:tokens.shape[1]], context)
        for layer in self.layers:
            h = layer(h)
        return self.proj_out(h)

    def start_cache(self, batch: int, length: int) -> KVCache:
        heads = self.layers[0].attention.heads
        return KVCache(len(self.layers), batch, heads, length, self.head_dim)

    def step(self, token: Tensor, cache: KVCache, flip: bool = False,
             context: Tensor | None = None) -> Tensor:
        """The output at ``cache.position`` from that one token [B, 1, in_features] and the
        cached keys and values of the positions before it."""
        position = cache.position
        h = self._embedded(token, self._positions(flip)[position:position + 1], context)
        for index, layer in enumerate(self.layers):
            h = layer(h, cache, index)
        cache.position += 1
        return self.proj_out(h)

    def _embedded(self, tokens: Tensor, positions: Tensor, context: Tensor | None) -> Tensor:
        """The input projection plus the positions' (and the class's) embeddings."""
        h = self.proj_in(tokens) + positions
        if self.class_embed is None:
            return h
        return h + self.class_embed.or_mean(context, tokens.shape[0]).unsqueeze(1)

    def _positions(self, flip: bool) -> Tensor:
        return self.pos_embed.flip(0) if flip else self.pos_embed
