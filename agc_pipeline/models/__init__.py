"""Models trained with coded SGD, and per-subset gradients via ``torch.func``.

Every model is a :class:`CodedModel`: a plain ``nn.Module`` whose ``loss_sum`` is the loss
*summed* over the samples it is given. The partial gradient of data subset D_i is then
``∇ loss_sum(D_i) / N`` and the full gradient is their sum (paper §1: g = Σ_i g_i); the
trainer divides by N. Models are pure functions of their parameters, so
:func:`subset_gradients` can compute all k partial gradients in one
``vmap(grad(...))`` call over a leading subset dimension.

Initialisation is deterministic: each model draws its parameters from a ``torch.Generator``
seeded by its ``seed`` argument and leaves the global RNG untouched.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from agc_pipeline.errors import require

__all__ = [
    "MLP",
    "CodedModel",
    "LinearRegression",
    "LogisticRegression",
    "PaperMLP",
    "subset_gradients",
]


def _dim(value: int | None, name: str, minimum: int = 1) -> int:
    require(value is not None,
            f"model.{name} must be set (it is null; the app fills it from the dataset)")
    require(isinstance(value, int) and value >= minimum,
            f"model.{name} must be an integer ≥ {minimum} (got {value!r})")
    return int(value)


def _linear(in_features: int, out_features: int, gen: torch.Generator) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default U(±1/√fan_in) init drawn from ``gen``."""
    layer = nn.utils.skip_init(nn.Linear, in_features, out_features)
    bound = 1.0 / in_features**0.5
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=gen)
        layer.bias.uniform_(-bound, bound, generator=gen)
    return layer


def _generator(seed: int) -> torch.Generator:
    require(isinstance(seed, int) and seed >= 0,
            f"model.seed must be a non-negative integer (got {seed!r})")
    return torch.Generator().manual_seed(seed)


class CodedModel(nn.Module):
    """Base class: a model plus its summed loss and its evaluation metric."""

    #: ``"classification"`` (integer labels) or ``"regression"`` (float targets)
    task: ClassVar[str] = "classification"

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss summed (not averaged) over the samples; a scalar tensor."""
        raise NotImplementedError

    def metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """Accuracy (classification) or mean squared error (regression)."""
        if self.task == "classification":
            return float((outputs.argmax(dim=-1) == targets).float().mean())
        return float(((outputs - targets) ** 2).mean())


class _SoftmaxClassifier(CodedModel):
    """Softmax cross-entropy over integer labels."""

    task: ClassVar[str] = "classification"

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction="sum")


class PaperMLP(CodedModel):
    """The paper's Fig. 6 network: 784-128 (ReLU) - 10 (sigmoid), binary cross-entropy.

    ``forward`` returns the pre-sigmoid outputs; ``loss_sum`` applies the sigmoid and the
    binary cross-entropy against one-hot labels together (``binary_cross_entropy_with_logits``,
    numerically stable; identical in value to BCE on sigmoid outputs), summed over samples and
    the 10 output units. The predicted class is the largest output.
    """

    task: ClassVar[str] = "classification"

    def __init__(self, input_dim: int | None = 784, hidden: int = 128,
                 num_classes: int | None = 10, seed: int = 0) -> None:
        super().__init__()
        gen = _generator(seed)
        self.num_classes = _dim(num_classes, "num_classes", 2)
        self.hidden = _linear(_dim(input_dim, "input_dim"), _dim(hidden, "hidden"), gen)
        self.out = _linear(self.hidden.out_features, self.num_classes, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # one-hot by comparison (F.one_hot has no vmap batching rule)
        classes = torch.arange(self.num_classes, device=targets.device)
        one_hot = (targets.unsqueeze(-1) == classes).to(outputs.dtype)
        return F.binary_cross_entropy_with_logits(outputs, one_hot, reduction="sum")


class MLP(_SoftmaxClassifier):
    """One hidden ReLU layer, softmax cross-entropy."""

    def __init__(self, input_dim: int | None = None, hidden: int = 128,
                 num_classes: int | None = None, seed: int = 0) -> None:
        super().__init__()
        gen = _generator(seed)
        self.hidden = _linear(_dim(input_dim, "input_dim"), _dim(hidden, "hidden"), gen)
        self.out = _linear(self.hidden.out_features, _dim(num_classes, "num_classes", 2), gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


class LogisticRegression(_SoftmaxClassifier):
    """Multinomial logistic regression (a linear layer + softmax cross-entropy); C ≥ 2."""

    def __init__(self, input_dim: int | None = None, num_classes: int | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        gen = _generator(seed)
        self.linear = _linear(_dim(input_dim, "input_dim"),
                              _dim(num_classes, "num_classes", 2), gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class LinearRegression(CodedModel):
    """``y ≈ w·x + b`` with loss ½‖y − ŷ‖² summed over samples; outputs have shape (N,)."""

    task: ClassVar[str] = "regression"

    def __init__(self, input_dim: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.linear = _linear(_dim(input_dim, "input_dim"), 1, _generator(seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((outputs - targets) ** 2).sum()


def subset_gradients(model: CodedModel, x: torch.Tensor, y: torch.Tensor,
                     params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Gradients of ``loss_sum`` on each data subset, flattened: shape (k, d).

    ``x`` has shape (k, b, D) and ``y`` shape (k, b): row i holds the samples of D_i. Column
    order is that of ``model.named_parameters()`` (as ``parameters_to_vector``). The rows are
    *not* divided by N; their sum is the gradient of the summed loss over all k·b samples.
    ``params`` defaults to the model's own (detached) parameters.
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
