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

1. one forward pass; the output y of every module that owns parameters directly passes
   through a tap (an identity in the autograd graph);
2. one backward pass for the per-sample signals δ = ∂(Σ_s ℓ_s)/∂y only (no parameter
   gradients are formed). As δ reaches a module's tap, that module's weighted weight
   gradients are formed from its input and δ (:mod:`~agc_pipeline.training.weight_gradients`:
   per-subset products for ``nn.Linear``, fused products for ``nn.Conv2d``, norms and
   embeddings, a vector–Jacobian product for anything else) and added to the output, so δ
   and the module's input are freed as in a plain backward pass.

Cost: a plain step's forward and input-gradient backward plus weight-gradient products of
about a plain step's flops (cols / rows-per-subset more for ``nn.Linear``, cols times for
convolutions); memory O(d + activations), as a plain step; nothing of size k·d exists.
Products run in the parameters' dtype; only the coefficients are computed in float64. A
model that modifies a module's output in place (``ReLU(inplace=True)`` after a layer) is
detected on the first call; its taps then pass on a copy of each output (more memory and
time, same result).

The contract a model must meet (checked by :meth:`CodedGradient.check`): every module that
owns parameters returns a tensor whose dim 0 is the sample, sample s's output depends only on
sample s's input (no BatchNorm in training mode), and each parameter is used only inside the
forward of a module that owns it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agc_pipeline.errors import ConfigError
from agc_pipeline.training.weight_gradients import (
    Accumulator,
    Groups,
    Kernel,
    Scratch,
    Segment,
    Weighting,
    module_kernel,
)

__all__ = ["CodedGradient", "CodedGradientResult"]


@dataclass
class _Param:
    param: nn.Parameter
    offset: int  #: flat offset in the parameter vector (named_parameters order)
    segments: list[Segment]


@dataclass
class CodedGradientResult:
    """``blocks``: (c, L) coded combinations; ``plain``: the flat plain gradient
    Σ_s w_s ∇ℓ_s (or None); ``loss``: Σ_s ℓ_s over the batch (a float)."""

    blocks: torch.Tensor
    plain: torch.Tensor | None
    loss: float


class _Tap(torch.autograd.Function):
    """Identity on a module's output (a copy if ``copy``) whose backward hands δ to
    ``callback``; ``anchor`` (a leaf every tap takes) makes the backward pass reach every
    tap."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, anchor: torch.Tensor,  # noqa: ANN001
                callback: Callable[[torch.Tensor], None], copy: bool) -> torch.Tensor:
        ctx.callback = callback
        return out.clone() if copy else out

    @staticmethod
    def backward(ctx, delta: torch.Tensor) -> tuple:  # noqa: ANN001
        ctx.callback(delta)
        return delta, None, None, None


def _interleaved(t: torch.Tensor, groups: Groups) -> torch.Tensor:
    """A batch of ``groups.count`` contiguous groups of ``groups.size`` samples, reordered to
    sample 0 of every group, sample 1 of every group, … (a copy)."""
    return groups.gather(t).transpose(0, 1).reshape(t.shape)


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
        self._offsets = {key: info.offset for key, info in self._params.items()}
        self.modules = [mod for mod in model.modules()
                        if any(True for _ in mod.parameters(recurse=False))]
        for mod in self.modules:
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                raise ConfigError(
                    f"trainer.coded_gradient=weighted: {type(mod).__name__} mixes the samples "
                    "of a batch, so per-sample weights do not apply; use GroupNorm/LayerNorm "
                    "(model=cnn does) or trainer.coded_gradient=per_subset")
        #: True once the model turned out to modify a module's output in place: the taps
        #: then return copies (the tap of a returned-as-is tensor forbids in-place edits)
        self.copy_outputs = False
        self._kernels: dict[tuple[int, torch.dtype], Kernel] = {}
        #: reorder a batch of contiguous subsets to interleaved ones (models with convolutions)
        self.interleave = any(type(mod) is nn.Conv2d for mod in self.modules)
        self._scratch = Scratch()  # the kernels' work buffer, kept between calls

    def _segments(self, offset: int, size: int) -> list[Segment]:
        out, pos = [], 0
        while pos < size:
            flat = offset + pos
            block, dest = divmod(flat, self.length)
            take = min(size - pos, self.length - dest)
            out.append(Segment(block, pos, pos + take, dest))
            pos += take
        return out

    def _kernel(self, module: nn.Module, dtype: torch.dtype) -> Kernel:
        key = (id(module), dtype)
        if key not in self._kernels:
            self._kernels[key] = module_kernel(module, dtype)
        return self._kernels[key]

    def _segments_of(self, p: nn.Parameter) -> list[Segment]:
        info = self._params.get(id(p))
        return [] if info is None else info.segments

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
        given, also return the plain gradient ``plain_weight · Σ_s ∇ℓ_s`` (flat, length d).
        ``out``: a (c, L) buffer of the parameters' dtype to write the combinations into
        (zeroed first; e.g. a worker's send buffer, or one reused between calls so that d
        fresh values are not allocated and faulted in each time), else a new one.
        """
        dtype = next(self.model.parameters()).dtype
        device = x.device
        coef = torch.as_tensor(np.asarray(coefficients, dtype=np.float64), device=device)
        if coef.dim() != 3 or coef.shape[0] != self.m:
            raise ValueError(f"coefficients must be (m={self.m}, k, c), got {tuple(coef.shape)}")
        c = coef.shape[2]
        if plain_weight is not None:  # column c: the plain gradient
            coef = torch.cat([coef, torch.full((self.m, coef.shape[1], 1), float(plain_weight),
                                               dtype=coef.dtype, device=device)], dim=2)
        subset = subset.to(device)
        groups = Groups(subset)
        if self.interleave and groups.contiguous and groups.count > 1 and groups.size > 1:
            # sample r of every subset side by side: the grouped convolutions of the
            # per-subset weight gradients then read x and δ as they lie (one copy of the
            # input here instead of two of every convolution's input and δ)
            x, y, subset = (_interleaved(t, groups) for t in (x, y, subset))
            groups = Groups(subset)
        weighting = Weighting(per_sample=coef[:, subset, :].permute(0, 2, 1).to(dtype),
                              per_group=coef[:, groups.ids, :].to(dtype), groups=groups)
        if out is None:
            blocks = torch.zeros(c, self.length, dtype=dtype, device=device)
        else:
            if out.shape != (c, self.length) or out.dtype != dtype:
                raise ValueError(f"out must be ({c}, {self.length}) {dtype}, got "
                                 f"{tuple(out.shape)} {out.dtype}")
            blocks = out.zero_()
        plain = torch.zeros(self.d, dtype=dtype, device=device) if plain_weight is not None \
            else None
        n = x.shape[0]

        acc = Accumulator(blocks, plain, self._offsets, self._scratch)

        def run(module: nn.Module, kernel: Kernel, inputs: tuple, out: torch.Tensor,
                delta: torch.Tensor) -> None:
            if out.shape[0] != n:
                raise ConfigError(
                    f"trainer.coded_gradient=weighted: module {type(module).__name__} returned "
                    f"shape {tuple(out.shape)} for a batch of {n} samples (dim 0 must be the "
                    "sample); see the model contract, or use trainer.coded_gradient=per_subset")
            with torch.no_grad():
                kernel(module, inputs, out, delta, weighting, self._segments_of, acc)

        try:
            loss = self._streamed(x, y, dtype, run)
        except RuntimeError as exc:
            if "modified inplace" not in str(exc) or self.copy_outputs:
                raise
            self.copy_outputs = True
            loss = self._streamed(x, y, dtype, run)
        return CodedGradientResult(blocks, plain, loss)

    def _streamed(self, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype,
                  run: Callable) -> float:
        """Forward with a tap on every parameter-owning module; the backward pass forms
        each module's weighted gradients as its δ arrives (module docstring)."""
        anchor = torch.zeros((), dtype=dtype, device=x.device, requires_grad=True)

        def tap(module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
            if not isinstance(out, torch.Tensor):
                raise ConfigError(
                    f"trainer.coded_gradient=weighted: module {type(module).__name__} returned "
                    f"a {type(out).__name__}, not a tensor (see the model contract), or use "
                    "trainer.coded_gradient=per_subset")
            kernel = self._kernel(module, dtype)
            record = [inputs, out]

            def on_delta(delta: torch.Tensor) -> None:
                inputs_, out_ = record
                record.clear()  # our references to the input and output go now
                run(module, kernel, inputs_, out_, delta)

            return _Tap.apply(out, anchor, on_delta, self.copy_outputs)

        handles = [mod.register_forward_hook(tap) for mod in self.modules]
        try:
            loss = self.model.loss_sum(self.model(x), y)
        finally:
            for h in handles:
                h.remove()
        torch.autograd.grad(loss, anchor, allow_unused=True)
        return float(loss.detach())
