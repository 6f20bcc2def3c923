"""A decoder-only transformer language model (GPT-2 style, Radford et al. 2019).

Token embedding + learned positional embedding, ``layers`` pre-LayerNorm blocks (causal
multi-head self-attention via ``F.scaled_dot_product_attention(is_causal=True)``, then an
MLP of hidden size 4·width with GELU), a final LayerNorm and a linear head to the vocabulary.
No dropout (training stays a deterministic function of the seed).

Parameters: d = 12·L·C² + 13·L·C + 2·C (final norm) + V·C (tokens) + T·C (positions)
+ V·C (head; 0 with ``tie_weights``), for L layers, width C, vocabulary V and context T.

Written for the coded-gradient engine's contract (see :mod:`agc_pipeline.models`): every
module that owns parameters maps (N, …) to (N, …) sample by sample — the positional
embedding *adds* its rows to the (N, T, C) token embeddings, attention is plain ``nn.Linear``
projections around the fused attention kernel.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from agc_pipeline.errors import require
from agc_pipeline.models.base import CodedModel, dim_arg, generator
from agc_pipeline.validation import require_bool

__all__ = ["GPT", "Block", "CausalSelfAttention", "PositionalEmbedding", "gpt_parameter_count"]

_STD = 0.02  # GPT-2's init scale


def _linear(c_in: int, c_out: int, gen: torch.Generator, std: float = _STD,
            bias: bool = True) -> nn.Linear:
    """``nn.Linear`` with N(0, std²) weights drawn from ``gen`` and zero bias."""
    layer = nn.utils.skip_init(nn.Linear, c_in, c_out, bias=bias)
    with torch.no_grad():
        layer.weight.normal_(0.0, std, generator=gen)
        if bias:
            layer.bias.zero_()
    return layer


class PositionalEmbedding(nn.Module):
    """Adds learned position vectors: (N, T, C) → (N, T, C), T ≤ ``context``."""

    def __init__(self, context: int, width: int, gen: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(context, width).normal_(0.0, _STD,
                                                                        generator=gen))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.weight[: h.shape[-2]]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: a fused q/k/v projection, the attention kernel, an
    output projection."""

    def __init__(self, width: int, heads: int, gen: torch.Generator, proj_std: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = _linear(width, 3 * width, gen)
        self.proj = _linear(width, width, gen, std=proj_std)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        *lead, t, c = h.shape
        q, k, v = self.qkv(h).split(c, dim=-1)
        # (…, T, C) → (…, heads, T, C / heads)
        q, k, v = (z.reshape(*lead, t, self.heads, c // self.heads).transpose(-3, -2)
                   for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(-3, -2).reshape(*lead, t, c))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: h + attn(ln(h)), then h + mlp(ln(h))."""

    def __init__(self, width: int, heads: int, gen: torch.Generator, proj_std: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, gen, proj_std)
        self.ln2 = nn.LayerNorm(width)
        self.fc = _linear(width, 4 * width, gen)
        self.fc_proj = _linear(4 * width, width, gen, std=proj_std)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.ln1(h))
        return h + self.fc_proj(F.gelu(self.fc(self.ln2(h))))


def gpt_parameter_count(vocab_size: int, context: int, layers: int, width: int,
                        tie_weights: bool = False) -> int:
    """d of :class:`GPT` (the formula in the module docstring)."""
    c = width
    return (12 * layers * c * c + 13 * layers * c + 2 * c + vocab_size * c + context * c
            + (0 if tie_weights else vocab_size * c))


class GPT(CodedModel):
    """Decoder-only transformer LM on token ids (N, T) → logits (N, T, vocab_size).

    ``loss_sum`` = Σ over sequences of the mean next-token cross-entropy of the sequence, so
    ``loss_sum / N`` is the per-token cross-entropy; ``metric`` is the token accuracy.
    ``tie_weights``: the head reuses the token embedding matrix (fewer parameters, but a
    parameter then serves two modules: only for gradient paths that do not rely on per-module
    hooks; see :mod:`agc_pipeline.models`).
    """

    inputs = ("tokens",)

    def __init__(self, vocab_size: int | None = None, context: int | None = None,
                 layers: int = 2, width: int = 64, heads: int = 4, tie_weights: bool = False,
                 seed: int = 0) -> None:
        super().__init__()
        gen = generator(seed)
        self.vocab_size = dim_arg(vocab_size, "vocab_size", 2)
        self.context = dim_arg(context, "context")
        layers = dim_arg(layers, "layers")
        width = dim_arg(width, "width")
        heads = dim_arg(heads, "heads")
        require(width % heads == 0,
                f"model.width must be a multiple of model.heads (got width={width}, "
                f"heads={heads})")
        self.tie_weights = require_bool(tie_weights, "model.tie_weights")
        self.tokens = nn.utils.skip_init(nn.Embedding, self.vocab_size, width)
        with torch.no_grad():
            self.tokens.weight.normal_(0.0, _STD, generator=gen)
        self.positions = PositionalEmbedding(self.context, width, gen)
        proj_std = _STD / math.sqrt(2 * layers)  # GPT-2: scaled residual projections
        self.blocks = nn.Sequential(*(Block(width, heads, gen, proj_std)
                                      for _ in range(layers)))
        self.ln_f = nn.LayerNorm(width)
        self.head = None if self.tie_weights else _linear(width, self.vocab_size, gen,
                                                          bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > self.context:
            raise ValueError(f"GPT: sequences of {x.shape[-1]} tokens exceed model.context = "
                             f"{self.context}")
        h = self.ln_f(self.blocks(self.positions(self.tokens(x))))
        return F.linear(h, self.tokens.weight) if self.head is None else self.head(h)

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_token = F.cross_entropy(outputs.flatten(0, -2), targets.flatten(), reduction="sum")
        return per_token / targets.shape[-1]
