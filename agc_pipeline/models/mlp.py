"""Models on flat features: the paper's Fig. 6 MLP, a softmax MLP, logistic and linear
regression. Each flattens its input (``x.flatten(1)``), so images (N, C, H, W) and feature
vectors (N, D) both work, with D = C·H·W."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch.nn import functional as F

from agc_pipeline.models.base import CodedModel, dim_arg, generator, seeded_linear

__all__ = ["MLP", "LinearRegression", "LogisticRegression", "PaperMLP"]


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
        gen = generator(seed)
        self.num_classes = dim_arg(num_classes, "num_classes", 2)
        self.hidden = seeded_linear(dim_arg(input_dim, "input_dim"), dim_arg(hidden, "hidden"),
                                    gen)
        self.out = seeded_linear(self.hidden.out_features, self.num_classes, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x.flatten(1))))

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
        gen = generator(seed)
        self.hidden = seeded_linear(dim_arg(input_dim, "input_dim"), dim_arg(hidden, "hidden"),
                                    gen)
        self.out = seeded_linear(self.hidden.out_features,
                                 dim_arg(num_classes, "num_classes", 2), gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x.flatten(1))))


class LogisticRegression(_SoftmaxClassifier):
    """Multinomial logistic regression (a linear layer + softmax cross-entropy); C ≥ 2."""

    def __init__(self, input_dim: int | None = None, num_classes: int | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        gen = generator(seed)
        self.linear = seeded_linear(dim_arg(input_dim, "input_dim"),
                                    dim_arg(num_classes, "num_classes", 2), gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class LinearRegression(CodedModel):
    """``y ≈ w·x + b`` with loss ½‖y − ŷ‖² summed over samples; outputs have shape (N,)."""

    task: ClassVar[str] = "regression"

    def __init__(self, input_dim: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.linear = seeded_linear(dim_arg(input_dim, "input_dim"), 1, generator(seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).squeeze(-1)

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((outputs - targets) ** 2).sum()
