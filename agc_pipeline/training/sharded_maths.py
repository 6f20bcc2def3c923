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

Re-sharding (a run continued on another number of nodes): every shard's optimizer state,
in the old layout, is put back in parameter order (:func:`unshard`) and cut again for the
new n (:func:`reshard_states`); entry by entry nothing changes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agc_pipeline.training.coded_step import block_length, combine_into

__all__ = ["ShardLayout", "decode_slice", "message_slices", "reassemble", "reshard_states",
           "unshard"]


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


def unshard(pieces: list[torch.Tensor], layout: ShardLayout) -> torch.Tensor:
    """The owners' shards (``pieces[σ]``: shard σ of ``layout``, in its order) → the flat
    d-vector in parameter order."""
    require_sizes([p.numel() for p in pieces], layout)
    full = torch.empty(layout.d, dtype=pieces[0].dtype, device=pieces[0].device)
    for owner, piece in enumerate(pieces):
        full[layout.positions(owner)[0]] = piece.reshape(-1)
    return full


def require_sizes(sizes: list[int], layout: ShardLayout) -> None:
    """Raise ValueError unless ``sizes`` are the shard sizes of ``layout``."""
    if sizes != layout.shard_sizes():
        raise ValueError(f"shards of sizes {sizes} are not those of d={layout.d}, "
                         f"m={layout.m}, n={layout.n} ({layout.shard_sizes()})")


def reshard_states(states: list[dict[str, Any]], old: ShardLayout,
                   new: ShardLayout) -> list[dict[str, Any]]:
    """Every shard's optimizer state (:meth:`~agc_pipeline.training.optim.Optimizer.state_dict`
    of the one-parameter optimizer of owner σ, ``old.n`` of them) → the states of the
    ``new.n`` owners of ``new``. A 1-D tensor of the state (momentum, Adam's moments) is per
    entry: reassembled in parameter order and cut into the new shards; the state's other values
    (Adam's step count) must be equal in every shard; hyper-parameters and the schedule are
    shard 0's (every owner follows the same schedule). Raises ValueError for states that do
    not fit ``old``."""
    if len(states) != old.n:
        raise ValueError(f"{len(states)} shard states for n={old.n} owners")
    if (old.d, old.m) != (new.d, new.m):
        raise ValueError(f"re-sharding keeps d and m (old d={old.d}, m={old.m}; "
                         f"new d={new.d}, m={new.m})")
    per_param = [s["optimizer"]["state"] for s in states]
    keys = sorted(per_param[0])
    if any(sorted(p) != keys for p in per_param):
        raise ValueError("the shards' optimizer states hold different parameters")
    out = [copy.deepcopy(states[0]) for _ in range(new.n)]
    for index in keys:
        entries = [p[index] for p in per_param]
        names = sorted(entries[0])
        if any(sorted(e) != names for e in entries):
            raise ValueError("the shards' optimizer states hold different keys")
        for name in names:
            values = [e[name] for e in entries]
            if isinstance(values[0], torch.Tensor) and values[0].dim() == 1:
                full = unshard(values, old)
                for owner in range(new.n):
                    out[owner]["optimizer"]["state"][index][name] = \
                        full[new.positions(owner)[0]].clone()
            elif any(not _same(v, values[0]) for v in values[1:]):
                raise ValueError(f"the shards' optimizer states differ in {name!r}")
    return out


def _same(a: Any, b: Any) -> bool:
    """Whether two shared state values are equal (tensors: same shape and values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and bool(torch.equal(a, b)))
    return bool(a == b)
