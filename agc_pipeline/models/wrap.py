"""Bring your own ``nn.Module``: :class:`WithLoss` adds the summed loss and the metric."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from agc_pipeline.errors import require
from agc_pipeline.models.base import CodedModel
from agc_pipeline.validation import require_choice, require_int

__all__ = ["LOSSES", "WithLoss"]

#: loss name → task
LOSSES = {"cross_entropy": "classification", "bce": "classification", "mse": "regression"}


def _per_sample_mean(values: torch.Tensor) -> torch.Tensor:
    """Σ over dim 0 of the mean over the other dims (a sample's loss is its mean over
    positions/outputs, as :class:`~agc_pipeline.models.gpt.GPT` does for tokens)."""
    return values.flatten(1).mean(dim=1).sum() if values.dim() > 1 else values.sum()


class WithLoss(CodedModel):
    """Wraps any ``nn.Module`` (``module``: outputs for a batch, dim 0 = samples) with a
    named loss, summed over samples:

    * ``cross_entropy``: integer labels (N,) or (N, T) against logits (N, C) or (N, T, C);
      metric = accuracy.
    * ``bce``: binary cross-entropy on logits; integer labels (N,) are one-hot encoded
      against (N, C) outputs, float targets of the outputs' shape are used as they are;
      metric = accuracy of the largest output (labels) or of ``logit > 0`` (float targets).
    * ``mse``: squared error, float targets of the outputs' shape; metric = MSE.

    A sample's loss is its mean over positions / outputs. ``seed`` (not None): every
    submodule with ``reset_parameters()`` (``nn.Linear``, ``nn.Conv2d``, ``nn.Embedding``,
    norms, …) is re-initialised from it, under ``torch.random.fork_rng`` so the global RNG
    is left as it was; other parameters keep the values the module's constructor gave them.
    """

    #: set per instance from ``loss`` (None here: build_model checks it after building)
    task = None  # type: ignore[assignment]
    inputs = ("features", "image", "tokens")

    def __init__(self, module: nn.Module, loss: str = "cross_entropy",
                 seed: int | None = 0) -> None:
        super().__init__()
        require(isinstance(module, nn.Module),
                f"model.module must be a torch.nn.Module (got {type(module).__name__})")
        self.loss = require_choice(loss, "model.loss", tuple(LOSSES))
        self.task = LOSSES[self.loss]
        self.module = module
        if seed is not None:
            seed = require_int(seed, "model.seed", 0)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for sub in module.modules():
                    reset = getattr(sub, "reset_parameters", None)
                    if callable(reset):
                        reset()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def _bce_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():
            return targets.to(outputs.dtype)
        classes = torch.arange(outputs.shape[-1], device=targets.device)
        return (targets.unsqueeze(-1) == classes).to(outputs.dtype)  # one-hot, vmap-safe

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss == "cross_entropy":
            if outputs.dim() > 2:  # (N, T, C): per-sample mean over the T positions
                per = F.cross_entropy(outputs.flatten(0, -2), targets.flatten(),
                                      reduction="none")
                return _per_sample_mean(per.reshape(targets.shape))
            return F.cross_entropy(outputs, targets, reduction="sum")
        if self.loss == "bce":
            per = F.binary_cross_entropy_with_logits(
                outputs, self._bce_targets(outputs, targets), reduction="none")
            return _per_sample_mean(per)
        return _per_sample_mean((outputs - targets.to(outputs.dtype).reshape(outputs.shape))
                                ** 2)

    def metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        if self.loss == "mse":
            return float(((outputs - targets.reshape(outputs.shape)) ** 2).mean())
        if self.loss == "bce" and targets.is_floating_point():
            return float(((outputs > 0).to(targets.dtype) == targets).float().mean())
        return float((outputs.argmax(dim=-1) == targets).float().mean())
