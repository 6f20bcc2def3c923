"""Coded gradients in one forward and one backward pass, whatever k (paper Section III).

Encoding is linear in the loss. With the d parameters cut into m blocks of length L = ⌈d/m⌉
and g_i the partial gradient of data subset D_i, a coded combination is

    out[v] = Σ_u Σ_i C[u, i, v] · g_i[u]              (v = 0..c-1, each of length L)

for a coefficient tensor C of shape (m, k, c):

* worker j's message Z B(:, j) (Section III): c = 1, ``C[u, i, 0] = B[u·k + i, j]``;
* the simulated PS's estimate Z (B R) (Section III): c = m, ``C[u, i, v] = (B R)[u·k + i, v]``.

Since g_i = Σ_{s ∈ D_i} ∇ℓ_s, every parameter θ of block u receives
``Σ_s C[u, i(s), v] ∇_θ ℓ_s`` in output v: a *per-sample weighted* gradient whose weights
depend on the block θ lies in. :class:`CodedGradient` computes it without ever forming the k
partial gradients:

1. one forward pass, recording the output y of every module that owns parameters directly;
2. one backward pass for the per-sample signals δ = ∂(Σ_s ℓ_s)/∂y only (no parameter
   gradients are formed);
3. for each such module and each block segment of its parameters, the weight gradients with
   the per-sample weights applied to δ: for ``nn.Linear`` one matrix product per segment
   covering all c outputs, ``(C_s ⊙ δ)ᵀ x``; for ``nn.Conv2d`` one convolution backward with
   the c weighted δ's stacked along the output channels; for any other module a
   vector–Jacobian product of y with respect to its parameters.

Cost: a plain step's forward and input-gradient backward, plus c (plus one for the plain
gradient, if asked for) weight-gradient products; memory O(d + activations); nothing of size
k·d exists. Products run in the parameters' dtype; only the coefficients are computed in
float64.

The contract a model must meet (checked by :meth:`CodedGradient.check`): every module that
owns parameters returns a tensor whose dim 0 is the sample, sample s's output depends only on
sample s's input (no BatchNorm in training mode), and each parameter is used only inside the
forward of a module that owns it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agc_pipeline.errors import ConfigError

__all__ = ["CodedGradient", "CodedGradientResult"]


@dataclass
class _Segment:
    """The part ``[start, stop)`` of a parameter's flat view that lies in block ``block``;
    it lands at offset ``dest`` of that block."""

    block: int
    start: int
    stop: int
    dest: int


@dataclass
class _Param:
    param: nn.Parameter
    offset: int  #: flat offset in the parameter vector (named_parameters order)
    segments: list[_Segment]


@dataclass
class CodedGradientResult:
    """``blocks``: (c, L) coded combinations; ``plain``: the flat plain gradient
    Σ_s w_s ∇ℓ_s (or None); ``loss``: Σ_s ℓ_s over the batch (a float)."""

    blocks: torch.Tensor
    plain: torch.Tensor | None
    loss: float


class CodedGradient:
    """Coded gradients of ``model`` for a reduction factor ``m`` (see the module docstring).

    ``model`` must have a ``loss_sum(outputs, targets)`` summing the per-sample losses.
    """

    def __init__(self, model: nn.Module, m: int) -> None:
        self.model = model
        self.m = int(m)
        params = [p for _, p in model.named_parameters()]
        self.d = sum(p.numel() for p in params)
        self.length = -(-self.d // self.m)
        self._params: dict[int, _Param] = {}
        offset = 0
        for p in params:
            self._params[id(p)] = _Param(p, offset, self._segments(offset, p.numel()))
            offset += p.numel()
        self.modules = [mod for mod in model.modules()
                        if any(True for _ in mod.parameters(recurse=False))]
        for mod in self.modules:
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                raise ConfigError(
                    f"trainer.coded_gradient=weighted: {type(mod).__name__} mixes the samples "
                    "of a batch, so per-sample weights do not apply; use GroupNorm/LayerNorm "
                    "(model=cnn does) or trainer.coded_gradient=per_subset")

    def _segments(self, offset: int, size: int) -> list[_Segment]:
        out, pos = [], 0
        while pos < size:
            flat = offset + pos
            block, dest = divmod(flat, self.length)
            take = min(size - pos, self.length - dest)
            out.append(_Segment(block, pos, pos + take, dest))
            pos += take
        return out

    def check(self, x: torch.Tensor, y: torch.Tensor, rtol: float = 1e-4) -> None:
        """Raise ConfigError unless the plain gradient formed from the per-sample signals
        equals autograd's on the batch ``(x, y)`` — i.e. the model meets the contract in the
        module docstring (a parameter used outside the module that owns it, e.g. a tied
        weight read by another module, would be missed)."""
        n = x.shape[0]
        res = self(x, y, torch.zeros(n, dtype=torch.long, device=x.device),
                   np.zeros((self.m, 1, 0)), plain_weight=1.0)
        params = [p for _, p in self.model.named_parameters()]
        grads = torch.autograd.grad(self.model.loss_sum(self.model(x), y), params,
                                    allow_unused=True)
        offset = 0
        for (name, p), g in zip(self.model.named_parameters(), grads, strict=True):
            ours = res.plain[offset:offset + p.numel()]
            offset += p.numel()
            ref = torch.zeros_like(ours) if g is None else g.reshape(-1)
            scale = float(ref.norm()) + float(ours.norm())
            if scale > 0 and float((ours - ref).norm()) > rtol * scale:
                raise ConfigError(
                    f"trainer.coded_gradient=weighted: the gradient of parameter {name!r} is "
                    "not formed inside the module that owns it (e.g. a tied weight used by "
                    "another module), so per-sample weighting cannot reach it; untie it, or "
                    "use trainer.coded_gradient=per_subset")

    # ------------------------------------------------------------------------------ main

    def __call__(self, x: torch.Tensor, y: torch.Tensor, subset: torch.Tensor,
                 coefficients: np.ndarray | torch.Tensor, plain_weight: float | None = None,
                 out: torch.Tensor | None = None) -> CodedGradientResult:
        """Coded combinations for the batch ``(x, y)``.

        ``subset``: (N,) long, the data subset i(s) of each sample; ``coefficients``: (m, k', c)
        with k' > subset.max() (C above, already scaled, e.g. by 1/N); ``plain_weight``: if
        given, also return the plain gradient ``plain_weight · Σ_s ∇ℓ_s`` (flat, length d);
        ``out``: a (c, L) buffer of the parameters' dtype to write the combinations into
        (e.g. a worker's send buffer), else a new one.
        """
        params_dtype = next(self.model.parameters()).dtype
        device = x.device
        coef = torch.as_tensor(np.asarray(coefficients, dtype=np.float64), device=device)
        if coef.dim() != 3 or coef.shape[0] != self.m:
            raise ValueError(f"coefficients must be (m={self.m}, k, c), got {tuple(coef.shape)}")
        c = coef.shape[2]
        # per-sample weights w[u, v, s] = C[u, i(s), v] (float64 → the parameters' dtype)
        weights = coef[:, subset, :].permute(0, 2, 1).to(params_dtype)  # (m, c, N)
        if plain_weight is not None:
            ones = torch.full((self.m, 1, weights.shape[2]), float(plain_weight),
                              dtype=params_dtype, device=device)
            weights = torch.cat([weights, ones], dim=1)  # column c: the plain gradient
        calls: list[tuple[nn.Module, tuple, torch.Tensor]] = []

        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            calls.append((module, inputs, output))

        handles = [mod.register_forward_hook(record) for mod in self.modules]
        try:
            outputs = self.model(x)
            loss = self.model.loss_sum(outputs, y)
        finally:
            for h in handles:
                h.remove()
        ys = [out for _, _, out in calls]
        generic = any(not (self._fast_linear(mod, params_dtype)
                           or self._fast_conv(mod, params_dtype)) for mod, _, _ in calls)
        deltas = torch.autograd.grad(loss, ys, retain_graph=generic, allow_unused=True)
        if out is None:
            blocks = torch.zeros(c, self.length, dtype=params_dtype, device=device)
        else:
            if out.shape != (c, self.length) or out.dtype != params_dtype:
                raise ValueError(f"out must be ({c}, {self.length}) {params_dtype}, got "
                                 f"{tuple(out.shape)} {out.dtype}")
            blocks = out.zero_()
        plain = (torch.zeros(self.d, dtype=params_dtype, device=device)
                 if plain_weight is not None else None)
        n = x.shape[0]
        for (module, inputs, out), delta in zip(calls, deltas, strict=True):
            if delta is None:
                continue
            if out.shape[0] != n:
                raise ConfigError(
                    f"trainer.coded_gradient=weighted: module {type(module).__name__} returned "
                    f"shape {tuple(out.shape)} for a batch of {n} samples (dim 0 must be the "
                    "sample); see the model contract, or use trainer.coded_gradient=per_subset")
            if self._fast_linear(module, params_dtype):
                with torch.no_grad():
                    self._linear(module, inputs[0].detach(), delta, weights, blocks, plain, c)
            elif self._fast_conv(module, params_dtype):
                with torch.no_grad():
                    self._conv(module, inputs[0].detach(), delta, weights, blocks, plain, c)
            else:
                self._generic(module, out, delta, weights, blocks, plain, c)
        return CodedGradientResult(blocks, plain, float(loss.detach()))

    # ------------------------------------------------------------------------ per module

    @staticmethod
    def _fast_linear(module: nn.Module, dtype: torch.dtype) -> bool:
        return type(module) is nn.Linear and module.weight.dtype == dtype

    @staticmethod
    def _fast_conv(module: nn.Module, dtype: torch.dtype) -> bool:
        return (type(module) is nn.Conv2d and module.groups == 1
                and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
                and module.weight.dtype == dtype)

    def _conv(self, module: nn.Conv2d, x: torch.Tensor, delta: torch.Tensor,
              weights: torch.Tensor, blocks: torch.Tensor, plain: torch.Tensor | None,
              c: int) -> None:
        """``nn.Conv2d``: the weight gradients of every output in one convolution backward,
        by stacking the weighted δ's along the output channels (as for a conv with
        cols·C_out channels); bias gradients wᵀ Σ_hw δ."""
        n = delta.shape[0]
        cols = weights.shape[1]
        for p, is_weight in ((module.weight, True), (module.bias, False)):
            if p is None or id(p) not in self._params:
                continue
            info = self._params[id(p)]
            for seg in info.segments:
                w = weights[seg.block]  # (cols, N)
                if is_weight:
                    per = p[0].numel()
                    r0, r1 = seg.start // per, -(-seg.stop // per)
                    d_rows = delta[:, r0:r1]  # (N, r, H, W)
                    stacked = (d_rows[:, None] * w.T[:, :, None, None, None]).reshape(
                        n, cols * (r1 - r0), *delta.shape[2:])
                    shape = (cols * (r1 - r0), *p.shape[1:])
                    g = torch.ops.aten.convolution_backward(
                        stacked, x, p.new_empty(shape), None, module.stride, module.padding,
                        module.dilation, False, [0, 0], 1, [False, True, False])[1]
                    g = g.reshape(cols, -1)
                    lo = seg.start - r0 * per
                    part = g[:, lo:lo + seg.stop - seg.start]
                else:
                    summed = delta[:, seg.start:seg.stop].sum(dim=(2, 3))  # (N, r)
                    part = w @ summed
                _write(info, seg, part, blocks, plain, c)

    def _linear(self, module: nn.Linear, x: torch.Tensor, delta: torch.Tensor,
                weights: torch.Tensor, blocks: torch.Tensor, plain: torch.Tensor | None,
                c: int) -> None:
        """``nn.Linear``: weight gradients (w ⊙ δ)ᵀ x for the rows a segment covers, all
        outputs in one matrix product; bias gradients wᵀ δ."""
        n = x.shape[0]
        xs = x.reshape(n, -1, x.shape[-1])  # (N, T, in)
        ds = delta.reshape(n, -1, delta.shape[-1])  # (N, T, out)
        cols = weights.shape[1]
        fan_in = module.in_features
        x2 = xs.reshape(-1, fan_in)
        for p, is_weight in ((module.weight, True), (module.bias, False)):
            if p is None or id(p) not in self._params:
                continue
            info = self._params[id(p)]
            for seg in info.segments:
                w = weights[seg.block]  # (cols, N)
                if is_weight:
                    r0, r1 = seg.start // fan_in, -(-seg.stop // fan_in)
                    d_rows = ds[:, :, r0:r1]  # (N, T, r)
                    # (N·T, cols·r)ᵀ @ (N·T, in): every output's weighted rows in one product
                    scaled = d_rows[:, :, None, :] * w.T[:, None, :, None]  # (N, T, cols, r)
                    g = scaled.reshape(-1, cols * (r1 - r0)).T @ x2  # (cols·r, in)
                    g = g.view(cols, -1)
                    lo = seg.start - r0 * fan_in
                    part = g[:, lo:lo + seg.stop - seg.start]
                else:
                    summed = ds[:, :, seg.start:seg.stop].sum(dim=1)  # (N, r)
                    part = w @ summed  # (cols, r)
                _write(info, seg, part, blocks, plain, c)

    def _generic(self, module: nn.Module, out: torch.Tensor, delta: torch.Tensor,
                 weights: torch.Tensor, blocks: torch.Tensor, plain: torch.Tensor | None,
                 c: int) -> None:
        """Any module: one vector–Jacobian product of its output per (block, output) pair its
        parameters need, with the per-sample weights applied to δ."""
        own = [p for p in module.parameters(recurse=False) if id(p) in self._params]
        if not own:
            return
        needed = sorted({seg.block for p in own for seg in self._params[id(p)].segments})
        shape = (-1,) + (1,) * (delta.dim() - 1)
        cols = weights.shape[1]
        for u in needed:
            grads = [torch.autograd.grad(out, own, weights[u, v].view(shape) * delta,
                                         retain_graph=True, allow_unused=True)
                     for v in range(cols)]
            for index, p in enumerate(own):
                stacked = torch.stack([
                    (g[index] if g[index] is not None else torch.zeros_like(p)).reshape(-1)
                    for g in grads])  # (cols, numel)
                info = self._params[id(p)]
                for seg in info.segments:
                    if seg.block != u:
                        continue
                    _write(info, seg, stacked[:, seg.start:seg.stop], blocks, plain, c)


def _write(info: _Param, seg: _Segment, part: torch.Tensor, blocks: torch.Tensor,
           plain: torch.Tensor | None, c: int) -> None:
    """Add a segment's weighted gradients ``part`` ((c[+1], width)) at its place: outputs
    0..c-1 at offset ``seg.dest`` of the blocks, row c (if any) into the plain gradient."""
    width = seg.stop - seg.start
    blocks[:, seg.dest:seg.dest + width] += part[:c]
    if plain is not None:
        start = info.offset + seg.start
        plain[start:start + width] += part[c]
