"""The arithmetic of ``trainer=sharded``: slicing the coded messages, decoding one slice per
owner and reassembling ĝ (pure functions, no processes).

Worker j's message ``Z B(:, j)`` has length L = ⌈d/m⌉ (paper Section III). Pad it to n·W
values, W = ⌈L/n⌉, and cut it into n contiguous slices of W values: slice σ goes to node σ,
the owner of shard σ. Owner σ decodes R for *its* survivor set 𝓕_σ (decoding (3)/(4), in
float64, exactly as the PS does) and forms ``Σ_{j∈𝓕_σ} R(j, :)ᵀ message_j[slice σ]`` —
columns σW … σW+W−1 of every block u of ĝ = Z (B R): parameter entries u·L + σW + c.
Shard σ is that set ("slice σ of each block"), so decode and update touch the same entries.
With the same 𝓕 at every owner the reassembled vector is the PS's ĝ; otherwise each slice
is the PS's ĝ for that owner's survivors, restricted to the slice (each slice unbiased
where the paper's theorems make ĝ unbiased, Section VII).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agc_pipeline.training.coded_step import block_length, combine_into

__all__ = ["ShardLayout", "decode_slice", "message_slices", "reassemble"]


@dataclass(frozen=True)
class ShardLayout:
    """Where shard σ lives for d parameters, m blocks and n owners."""

    d: int
    m: int
    n: int

    @property
    def length(self) -> int:
        """L = ⌈d/m⌉: the message length."""
        return block_length(self.d, self.m)

    @property
    def width(self) -> int:
        """W = ⌈L/n⌉: the values of one message slice (the last slices are zero-padded)."""
        return -(-self.length // self.n)

    def positions(self, owner: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, valid)`` of shard ``owner``: ``valid`` (m·W bools) marks the entries of
        its (m, W) decoded slice that are parameters (not padding), ``index`` their flat
        parameter positions u·L + σW + c, in the slice's row-major order."""
        length, width = self.length, self.width
        u = torch.arange(self.m).repeat_interleave(width)
        col = owner * width + torch.arange(width).repeat(self.m)
        flat = u * length + col
        valid = (col < length) & (flat < self.d)
        return flat[valid], valid

    def shard_sizes(self) -> list[int]:
        """How many parameters each owner holds (they sum to d)."""
        return [int(self.positions(s)[0].numel()) for s in range(self.n)]


def message_slices(message: torch.Tensor, n: int) -> torch.Tensor:
    """A worker's message (length L) as n slices of W = ⌈L/n⌉ values: (n, W), zero-padded;
    row σ is sent to owner σ."""
    length = message.numel()
    width = -(-length // n)
    out = torch.zeros(n * width, dtype=message.dtype, device=message.device)
    out[:length] = message
    return out.view(n, width)


def decode_slice(slices: torch.Tensor, r: np.ndarray, mask: np.ndarray,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Owner σ's part of ĝ = Σ_{j∈𝓕} R(j, :)ᵀ (Z B(:, j)) (the PS's combine, restricted
    to slice σ): ``slices`` (n, W), row j = worker j's slice σ (rows outside ``mask``
    never read); R (n × m) decoded in float64 for ``mask``. Returns (m, W) in the slices'
    dtype (or ``out``'s)."""
    if out is None:
        out = torch.empty(r.shape[1], slices.shape[1], dtype=slices.dtype,
                          device=slices.device)
    return combine_into(slices, r, mask, out)


def reassemble(pieces: torch.Tensor, d: int) -> torch.Tensor:
    """The n owners' decoded slices (n, m, W) → the flat d-vector (blocks of length L
    concatenated, padding dropped)."""
    n, m, width = pieces.shape
    length = block_length(d, m)
    return pieces.permute(1, 0, 2).reshape(m, n * width)[:, :length].reshape(-1)[:d]
