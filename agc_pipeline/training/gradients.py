"""Partial gradients g_i of the k data subsets (paper Section II) in one forward and one backward.

g_i = ∇ loss_sum(D_i) / N, so that the full gradient of the mean loss is g = Σ_i g_i.

Method: every parameter is expanded (a stride-0 view, no copy) to one copy per subset, the
model runs on all subsets at once under ``torch.func.vmap`` over (subset copy, subset data),
and the loss is summed over *all* samples outside ``vmap``. Copy i of the parameters only
touches subset i's outputs, so autograd's gradient for copy i is ∇ loss_sum(D_i): the k
partial gradients come out of a single backward pass. It relies only on ``loss_sum`` being a
sum over samples (the :class:`~agc_pipeline.models.CodedModel` contract); unlike
``vmap(grad(loss))`` (:func:`agc_pipeline.models.subset_gradients`) it needs no batching rule
for the loss — e.g. ``binary_cross_entropy_with_logits`` has none, and ``vmap`` then loops
over the subsets.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, vmap

from agc_pipeline.models import CodedModel


def partial_gradients(model: CodedModel, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(grads, loss)``: grads[name] has shape (k, *param.shape), row i = ∇ loss_sum(D_i)
    (not yet divided by N); ``loss`` = Σ_i loss_sum(D_i), a detached scalar.

    ``x``: (k, b, …) and ``y``: (k, b, …), row i holding the samples of D_i.
    """
    k = x.shape[0]
    params = {name: p.detach().expand(k, *p.shape).requires_grad_()
              for name, p in model.named_parameters()}

    def forward(p: dict[str, torch.Tensor], xs: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xs,))

    outputs = vmap(forward)(params, x)
    loss = model.loss_sum(outputs.reshape(-1, *outputs.shape[2:]), y.reshape(-1, *y.shape[2:]))
    grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(params, grads, strict=True)), loss.detach()


def pack_gradients(grads: dict[str, torch.Tensor], scale: float, out: torch.Tensor) -> None:
    """Write ``scale · grads`` flattened in parameter order into ``out[:, :d]`` (k rows; e.g.
    the float64, zero-padded (k, m·L) buffer of Z), converting dtype in the same pass."""
    offset = 0
    for g in grads.values():
        size = g[0].numel()
        # write through a view of the buffer in the parameter's shape: autograd may return
        # a transposed layout, which reshape(k, -1) would copy first
        torch.mul(g, scale, out=out[:, offset:offset + size].view(g.shape))
        offset += size
