"""Per-module weighted weight gradients for the coded-gradient engine (paper Section III).

For a module with parameters θ, per-sample output signals δ_s = ∂(Σ_s ℓ_s)/∂y_s and a
parameter segment lying in block u, the engine (:mod:`~agc_pipeline.training.coded_gradient`)
needs, for every output column v,

    G[v] = Σ_s w[u, v, s] ∇_θ ℓ_s,        w[u, v, s] = C[u, i(s), v],

where i(s) is the data subset of sample s. Each function here forms G for one module type
from the module's input and δ alone and adds it to an :class:`Accumulator` (the c coded
blocks and, as column c, the plain gradient):

* ``nn.Linear``, weight: **per subset** when a subset holds enough rows (samples × positions):
  P_i = Σ_{s ∈ D_i} δ_s x_sᵀ as one batched product (the plain weight-gradient flops in all),
  then G[v] = Σ_i C[u, i, v] P_i, a tile (some subsets × some rows) at a time in a reused
  scratch buffer so that the products stay in cache and no memory is allocated per tile
  (extra flops ≈ cols / rows-per-subset of the weight-gradient product; nothing of size
  k·d is formed). With one column (a worker's message), or fewer than
  ``PER_SUBSET_MIN_ROWS`` rows per subset times columns, **per sample**: (w ⊙ δ)ᵀ x with
  every column stacked in one product (cols × the weight-gradient flops: with one column
  exactly a plain weight gradient, with an inner dimension of all the rows);
* ``nn.Conv2d``: per subset, P_i = Σ_{s ∈ D_i} δ_s ⋆ x_s by one grouped convolution
  backward (the subsets as groups: the plain weight-gradient flops), then
  G[v] = Σ_i C[u, i, v] P_i;
* ``nn.LayerNorm`` / ``nn.GroupNorm``: per-sample sums of δ ⊙ x̂ (x̂ from the forward's
  statistics), weighted;
* ``nn.Embedding``: the weighted δ rows added at their token ids;
* anything else: a vector–Jacobian product of the module's output per (block, column).

Products run in the parameters' dtype; the coefficients come from float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agc_pipeline.training.subset_groups import Groups

__all__ = ["Accumulator", "Groups", "Scratch", "Segment", "Weighting", "linear_path",
           "module_kernel"]

#: rows (samples × positions) per subset times output columns from which the per-subset
#: product is used (never with one column): with fewer, the k' small products and their
#: combination cost more than the per-sample product's cols × flops. Measured on CPU, one
#: thread, MLPs 784-128-10 and 784-1270-10, k = 7 and 27: 2 columns break even at 8-10 rows
#: per subset, 3 columns at 6 (per sample faster below, per subset above)
PER_SUBSET_MIN_ROWS = 20
#: elements of one tile of per-subset products (8 MiB of float32: g subsets × R rows of the
#: weight, written into a reused scratch buffer and combined while still in cache), and the
#: rows R of a tile when not all subsets fit (narrower products run slower); measured on CPU
TILE_ELEMENTS = 1 << 21
TILE_ROWS = 128
#: elements of the per-subset convolution weight gradients formed at once (32 MiB of float32)
CONV_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class Segment:
    """The part ``[start, stop)`` of a parameter's flat view that lies in block ``block``;
    it lands at offset ``dest`` of that block."""

    block: int
    start: int
    stop: int
    dest: int


@dataclass
class Weighting:
    """One call's weights: ``per_sample`` (m, cols, N) = w above, ``per_group``
    (m, count, cols) = C[u, ids, v], both in the parameters' dtype."""

    per_sample: torch.Tensor
    per_group: torch.Tensor
    groups: Groups

    @property
    def cols(self) -> int:
        return int(self.per_sample.shape[1])




class Scratch:
    """Work buffers reused by every kernel call (and across steps): fresh multi-MiB
    temporaries per tile cost page faults that were a fifth of a coded step on CPU.
    ``slot`` picks one of several buffers that are needed at the same time."""

    def __init__(self) -> None:
        self._bufs: dict[int, torch.Tensor] = {}

    def take(self, shape: tuple[int, ...], like: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device (valid until
        the next call with this ``slot``)."""
        n = math.prod(shape)
        buf = self._bufs.get(slot)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or \
                buf.device != like.device:
            buf = self._bufs[slot] = torch.empty(max(n, TILE_ELEMENTS), dtype=like.dtype,
                                                 device=like.device)
        return buf[:n].view(shape)


class Accumulator:
    """The engine's outputs: ``blocks`` (c, L), the c coded combinations, and ``plain`` (d,)
    or None, the plain gradient (column c of the weights); ``offsets[id(p)]`` is parameter
    p's offset in the flat parameter vector; ``scratch``, the kernels' work buffer."""

    def __init__(self, blocks: torch.Tensor, plain: torch.Tensor | None,
                 offsets: dict[int, int], scratch: Scratch) -> None:
        self.blocks, self.plain, self.offsets, self.scratch = blocks, plain, offsets, scratch
        self.c = int(blocks.shape[0])

    def add(self, p: nn.Parameter, seg: Segment, start: int, part: torch.Tensor) -> None:
        """Add ``part`` ((cols, width): every column's gradient of p's flat entries
        ``[start, start + width)``, inside ``seg``)."""
        width, c = part.shape[1], self.c
        dest = seg.dest + start - seg.start
        self.blocks[:, dest:dest + width] += part[:c]
        if self.plain is not None:
            flat = self.offsets[id(p)] + start
            self.plain[flat:flat + width] += part[c]

    def add_product(self, p: nn.Parameter, seg: Segment, start: int, coef: torch.Tensor,
                    values: torch.Tensor) -> None:
        """:meth:`add` of ``coef @ values`` ((cols, r) @ (r, width)), written in place by
        one matrix product per output (no temporary)."""
        width, c = values.shape[1], self.c
        dest = seg.dest + start - seg.start
        if c:
            self.blocks[:, dest:dest + width].addmm_(coef[:c], values)
        if self.plain is not None:
            flat = self.offsets[id(p)] + start
            self.plain[flat:flat + width].addmv_(values.T, coef[c])

Segments = Callable[[nn.Parameter], list[Segment]]
Kernel = Callable[[nn.Module, tuple, torch.Tensor, torch.Tensor, Weighting, Segments,
                   Accumulator], None]


def _owned(module: nn.Module, names: Iterable[str], segments: Segments,
           ) -> Iterable[tuple[str, nn.Parameter, list[Segment]]]:
    for name in names:
        p = getattr(module, name, None)
        if isinstance(p, nn.Parameter):
            segs = segments(p)
            if segs:
                yield name, p, segs


def _sample_sums(p: nn.Parameter, segs: list[Segment], per_sample: torch.Tensor,
                 w: Weighting, out: Accumulator) -> None:
    """Emit ``w @ per_sample`` for parameters whose per-sample gradient is the row
    ``per_sample[s]`` ((N, numel) — norms' and biases' sums over positions)."""
    for seg in segs:
        out.add_product(p, seg, seg.start, w.per_sample[seg.block],
                        per_sample[:, seg.start:seg.stop])


def linear(module: nn.Linear, inputs: tuple, y: torch.Tensor, delta: torch.Tensor,
           w: Weighting, segments: Segments, out: Accumulator) -> None:
    """``nn.Linear``: weight per subset (chunked) or per sample, bias wᵀ Σ_t δ."""
    x = inputs[0].detach()
    n, fan_in, fan_out = x.shape[0], module.in_features, module.out_features
    x3, d3 = x.reshape(n, -1, fan_in), delta.reshape(n, -1, fan_out)  # (N, T, ·)
    for name, p, segs in _owned(module, ("weight", "bias"), segments):
        if name == "bias":
            _sample_sums(p, segs, d3.sum(dim=1), w, out)
        elif linear_path(w.groups.size * x3.shape[1], w.cols) == "per_subset":
            _linear_per_subset(p, x3, d3, fan_in, segs, w, out)
        else:
            _linear_per_sample(p, x3, d3, fan_in, segs, w, out)


def linear_path(rows_per_subset: int, cols: int) -> str:
    """``"per_subset"`` or ``"per_sample"``: how :func:`linear` forms a weight's ``cols``
    columns when a subset holds ``rows_per_subset`` rows (see ``PER_SUBSET_MIN_ROWS``)."""
    if cols > 1 and rows_per_subset * cols >= PER_SUBSET_MIN_ROWS:
        return "per_subset"
    return "per_sample"


def _linear_per_subset(p: nn.Parameter, x3: torch.Tensor, d3: torch.Tensor, fan_in: int,
                       segs: list[Segment], w: Weighting, out: Accumulator) -> None:
    groups = w.groups
    count = groups.count
    xg = groups.gather(x3).reshape(count, -1, fan_in)  # (k', S, in)
    # (k', out, S), a transposed view (as autograd's own δᵀ x): no copy of δ
    dg = groups.gather(d3).reshape(count, -1, d3.shape[-1]).transpose(1, 2)
    # a tile: g subsets × R rows of the weight (all subsets and more rows if they fit)
    g = max(1, min(count, TILE_ELEMENTS // (TILE_ROWS * fan_in)))
    rows = max(TILE_ROWS, TILE_ELEMENTS // (count * fan_in)) if g == count else TILE_ROWS
    for seg in segs:
        coef = w.per_group[seg.block].T.contiguous()  # (cols, k')
        r0, r1 = seg.start // fan_in, -(-seg.stop // fan_in)
        for i0 in range(0, count, g):
            i1 = min(i0 + g, count)
            for a in range(r0, r1, rows):
                b = min(a + rows, r1)
                products = out.scratch.take((i1 - i0, b - a, fan_in), xg)
                torch.bmm(dg[i0:i1, a:b], xg[i0:i1], out=products)  # P_i, these rows
                flat = products.view(i1 - i0, -1)
                lo, hi = max(a * fan_in, seg.start), min(b * fan_in, seg.stop)
                out.add_product(p, seg, lo, coef[:, i0:i1],
                                flat[:, lo - a * fan_in:hi - a * fan_in])


def _linear_per_sample(p: nn.Parameter, x3: torch.Tensor, d3: torch.Tensor, fan_in: int,
                       segs: list[Segment], w: Weighting, out: Accumulator) -> None:
    x2 = x3.reshape(-1, fan_in)
    cols = w.cols
    for seg in segs:
        ws = w.per_sample[seg.block]  # (cols, N)
        r0, r1 = seg.start // fan_in, -(-seg.stop // fan_in)
        # (N·T, cols·r)ᵀ @ (N·T, in): every column's weighted rows in one product
        scaled = d3[:, :, None, r0:r1] * ws.T[:, None, :, None]  # (N, T, cols, r)
        g = (scaled.reshape(-1, cols * (r1 - r0)).T @ x2).view(cols, -1)
        lo = seg.start - r0 * fan_in
        out.add(p, seg, seg.start, g[:, lo:lo + seg.stop - seg.start])


def conv2d(module: nn.Conv2d, inputs: tuple, y: torch.Tensor, delta: torch.Tensor,
           w: Weighting, segments: Segments, out: Accumulator) -> None:
    """``nn.Conv2d`` (groups = 1, zero padding): the weight gradient of every data subset
    present, P_i = Σ_{s ∈ D_i} δ_s ⋆ x_s, by one grouped convolution backward (the subsets
    as groups: the plain weight-gradient flops, no weighted copies), then
    G[v] = Σ_i C[u, i, v] P_i; bias wᵀ Σ_hw δ."""
    x = inputs[0].detach()
    for name, p, segs in _owned(module, ("weight", "bias"), segments):
        if name == "bias":
            _sample_sums(p, segs, delta.sum(dim=(2, 3)), w, out)
            continue
        count, numel = w.groups.count, p.numel()
        chunk = max(1, min(count, CONV_CHUNK_ELEMENTS // numel))
        for i0 in range(0, count, chunk):
            i1 = min(i0 + chunk, count)
            flat = _conv_per_subset(module, p, x, delta, w.groups, i0, i1,
                                    out.scratch)  # (g, numel)
            for seg in segs:
                coef = w.per_group[seg.block, i0:i1].T  # (cols, g)
                out.add_product(p, seg, seg.start, coef, flat[:, seg.start:seg.stop])


def _conv_per_subset(module: nn.Conv2d, p: nn.Parameter, x: torch.Tensor,
                     delta: torch.Tensor, groups: Groups, i0: int, i1: int,
                     scratch: Scratch) -> torch.Tensor:
    """(i1 - i0, numel): the weight gradients of groups i0..i1-1 (of ``groups``), one
    convolution backward with the groups' samples side by side along the channels
    (batch: the group size; short groups padded with zero samples, which add nothing)."""
    g, size = i1 - i0, groups.size
    xs = groups.gather(x)[i0:i1]  # (g, size, C_in, H, W)
    ds = groups.gather(delta)[i0:i1]
    if x.shape[1] <= 4:
        # few input channels (the stem): channels-last runs the grouped backward far faster
        fmt = torch.channels_last
        xg = xs.transpose(0, 1).reshape(size, g * x.shape[1], *x.shape[2:]).contiguous(
            memory_format=fmt)
        dg = ds.transpose(0, 1).reshape(size, g * delta.shape[1], *delta.shape[2:]
                                        ).contiguous(memory_format=fmt)
    else:  # side by side: as they lie (interleaved batch), else in reused buffers (fresh
        # ones cost page faults every step)
        fmt = torch.contiguous_format
        xg = _side_by_side(xs, scratch, slot=1)
        dg = _side_by_side(ds, scratch, slot=2)
    weight = p.new_empty((g * p.shape[0], *p.shape[1:])).contiguous(memory_format=fmt)
    grad = torch.ops.aten.convolution_backward(
        dg, xg, weight, None, module.stride, module.padding, module.dilation, False, [0, 0],
        g, [False, True, False])[1]
    return grad.contiguous().view(g, -1)


def _side_by_side(t: torch.Tensor, scratch: Scratch, slot: int) -> torch.Tensor:
    """(g, size, C, …) → (size, g·C, …), each sample's g groups side by side along the
    channels: a view when ``t`` is a slice of an interleaved batch, else one copy."""
    g, size = t.shape[:2]
    side = t.transpose(0, 1)
    if not side.is_contiguous():
        side = scratch.take(tuple(side.shape), t, slot=slot).copy_(side)
    return side.view(size, g * t.shape[2], *t.shape[3:])


def layer_norm(module: nn.LayerNorm, inputs: tuple, y: torch.Tensor, delta: torch.Tensor,
               w: Weighting, segments: Segments, out: Accumulator) -> None:
    """``nn.LayerNorm``: weight Σ_t δ ⊙ x̂ and bias Σ_t δ per sample, weighted; x̂ from the
    forward's statistics (mean and 1/σ per position, kept by autograd for the norm's own
    backward) when they are there, else recomputed."""
    x = inputs[0].detach()
    n = x.shape[0]
    for name, p, segs in _owned(module, ("weight", "bias"), segments):
        d3 = delta.reshape(n, -1, p.numel())
        if name == "weight":
            xhat = _layer_norm_xhat(module, x, y).reshape(n, -1, p.numel())
            _sample_sums(p, segs, (d3 * xhat).sum(dim=1), w, out)
        else:
            _sample_sums(p, segs, d3.sum(dim=1), w, out)


def _layer_norm_xhat(module: nn.LayerNorm, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x̂ = (x − μ)/σ over the normalised dimensions (the same values as F.layer_norm's)."""
    dims = len(module.normalized_shape)
    saved = _saved_statistics(y, x.shape[:x.dim() - dims] + (1,) * dims, x.dtype)
    if saved is None:
        return F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    return (x - saved[0]) * saved[1]


def _saved_statistics(y: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype,
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The mean and 1/σ a norm's autograd node kept for its own backward, if they are there
    with this shape and dtype."""
    fn = y.grad_fn
    mean, rstd = (getattr(fn, "_saved_result1", None), getattr(fn, "_saved_result2", None))
    if (mean is None or rstd is None or tuple(mean.shape) != tuple(shape)
            or tuple(rstd.shape) != tuple(shape) or mean.dtype != dtype):
        return None
    return mean, rstd


def group_norm(module: nn.GroupNorm, inputs: tuple, y: torch.Tensor, delta: torch.Tensor,
               w: Weighting, segments: Segments, out: Accumulator) -> None:
    """``nn.GroupNorm``: weight Σ_hw δ ⊙ x̂ and bias Σ_hw δ per sample and channel, weighted.
    With the forward's statistics (mean μ, 1/σ per sample and group, kept by autograd for
    the norm's own backward) Σ_hw δ ⊙ x̂ = (Σ_hw δ x − μ Σ_hw δ)/σ: no x̂ is recomputed."""
    x = inputs[0].detach()
    n, c = x.shape[0], module.num_channels
    d3 = delta.reshape(n, c, -1)
    sums = d3.sum(dim=2)  # (N, C): Σ_hw δ
    for name, p, segs in _owned(module, ("weight", "bias"), segments):
        if name == "weight":
            _sample_sums(p, segs, _group_norm_products(module, x, y, d3, sums), w, out)
        else:
            _sample_sums(p, segs, sums, w, out)


def _group_norm_products(module: nn.GroupNorm, x: torch.Tensor, y: torch.Tensor,
                         d3: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """(N, C): Σ_hw δ ⊙ x̂ per sample and channel."""
    n, c = d3.shape[:2]
    saved = _saved_statistics(y, (n, module.num_groups), x.dtype)
    if saved is None:
        xhat = F.group_norm(x, module.num_groups, None, None, module.eps).reshape(n, c, -1)
        return (d3 * xhat).sum(dim=2)
    dx = torch.linalg.vecdot(d3, x.reshape(n, c, -1))  # Σ_hw δ x, no temporary
    mean, rstd = (t.repeat_interleave(c // module.num_groups, dim=1) for t in saved)
    return (dx - mean * sums) * rstd


def embedding(module: nn.Embedding, inputs: tuple, y: torch.Tensor, delta: torch.Tensor,
              w: Weighting, segments: Segments, out: Accumulator) -> None:
    """``nn.Embedding``: each column's weighted δ rows added at their token ids (the row
    ``padding_idx``, if any, gets none)."""
    ids = inputs[0].reshape(inputs[0].shape[0], -1)  # (N, T)
    n, dim = ids.shape[0], module.embedding_dim
    d3 = delta.reshape(n, -1, dim)
    for _, p, segs in _owned(module, ("weight",), segments):
        for block in sorted({seg.block for seg in segs}):
            ws = w.per_sample[block]  # (cols, N)
            weighted = (d3[None] * ws[:, :, None, None]).reshape(w.cols, -1, dim)
            g = p.new_zeros(w.cols, module.num_embeddings, dim)
            g.index_add_(1, ids.reshape(-1), weighted)
            if module.padding_idx is not None:
                g[:, module.padding_idx] = 0
            g = g.reshape(w.cols, -1)
            for seg in segs:
                if seg.block == block:
                    out.add(p, seg, seg.start, g[:, seg.start:seg.stop])


def generic(module: nn.Module, inputs: tuple, y: torch.Tensor, delta: torch.Tensor,
            w: Weighting, segments: Segments, out: Accumulator) -> None:
    """Any module: one vector–Jacobian product of its output per (block, column) its
    parameters need, with the per-sample weights applied to δ (the graph is kept)."""
    own = [(p, segments(p)) for p in module.parameters(recurse=False)]
    own = [(p, segs) for p, segs in own if segs]
    if not own:
        return
    params = [p for p, _ in own]
    shape = (-1,) + (1,) * (delta.dim() - 1)
    for u in sorted({seg.block for _, segs in own for seg in segs}):
        grads = [torch.autograd.grad(y, params, w.per_sample[u, v].view(shape) * delta,
                                     retain_graph=True, allow_unused=True)
                 for v in range(w.cols)]
        for index, (p, segs) in enumerate(own):
            stacked = torch.stack([
                (g[index] if g[index] is not None else torch.zeros_like(p)).reshape(-1)
                for g in grads])  # (cols, numel)
            for seg in segs:
                if seg.block == u:
                    out.add(p, seg, seg.start, stacked[:, seg.start:seg.stop])


def module_kernel(module: nn.Module, dtype: torch.dtype) -> Kernel:
    """The function forming ``module``'s weighted gradients (:func:`generic` for any module
    without a fast path, and for parameters of another dtype)."""
    own = list(module.parameters(recurse=False))
    if any(p.dtype != dtype for p in own):
        return generic
    kind = type(module)
    if kind is nn.Linear:
        return linear
    if (kind is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple)):
        return conv2d
    if kind is nn.LayerNorm and module.elementwise_affine:
        return layer_norm
    if kind is nn.GroupNorm and module.affine:
        return group_norm
    if (kind is nn.Embedding and module.max_norm is None and not module.scale_grad_by_freq
            and not module.sparse):
        return embedding
    return generic
