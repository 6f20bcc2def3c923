"""The :class:`CodedModel` base class, seeded-init helpers and per-subset gradients."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from agc_pipeline.errors import require
from agc_pipeline.validation import require_int

__all__ = ["CodedModel", "dim_arg", "generator", "seeded_linear", "subset_gradients"]


def dim_arg(value: int | None, name: str, minimum: int = 1) -> int:
    """``model.<name>``: an integer ≥ ``minimum``; null is an error naming the app's filling."""
    require(value is not None,
            f"model.{name} must be set (it is null; the app fills it from the dataset)")
    return require_int(value, f"model.{name}", minimum)


def generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by ``model.seed`` (the global RNG stays untouched)."""
    return torch.Generator().manual_seed(require_int(seed, "model.seed", 0))


def seeded_linear(in_features: int, out_features: int, gen: torch.Generator,
                  bias: bool = True) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default U(±1/√fan_in) init drawn from ``gen``."""
    layer = nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias)
    bound = 1.0 / in_features**0.5
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=gen)
        if bias:
            layer.bias.uniform_(-bound, bound, generator=gen)
    return layer


class CodedModel(nn.Module):
    """Base class: a model plus its summed loss and its evaluation metric (the contract of
    :mod:`agc_pipeline.models`)."""

    #: ``"classification"`` (integer labels) or ``"regression"`` (float targets)
    task: ClassVar[str] = "classification"
    #: the :class:`~agc_pipeline.data.Dataset` kinds the model accepts as input
    inputs: ClassVar[tuple[str, ...]] = ("features", "image")

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss summed (not averaged) over the samples (dim 0); a scalar tensor."""
        raise NotImplementedError

    def metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """Accuracy (classification; over every position for sequence outputs) or mean
        squared error (regression)."""
        if self.task == "classification":
            return float((outputs.argmax(dim=-1) == targets).float().mean())
        return float(((outputs - targets) ** 2).mean())


def subset_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Gradients of ``loss_sum`` on each data subset, flattened: shape (k, d).

    ``x`` has shape (k, b, …) and ``y`` shape (k, b, …): row i holds the samples of D_i.
    Column order is that of ``model.named_parameters()`` (as ``parameters_to_vector``). The
    rows are *not* divided by N; their sum is the gradient of the summed loss over all k·b
    samples. ``params`` defaults to the model's own (detached) parameters.
    """
    require(x.dim() >= 2 and y.shape[:2] == x.shape[:2],
            f"x must be (k, b, …) and y (k, b, …) with matching k, b "
            f"(got {tuple(x.shape)} and {tuple(y.shape)})")
    if params is None:
        params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return model.loss_sum(functional_call(model, p, (xs,)), ys)

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([grads[name].reshape(x.shape[0], -1) for name in params], dim=1)
