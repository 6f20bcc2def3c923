"""Learning-rate schedules for ``scheduler=`` (``conf/scheduler/*.yaml``), each a
``torch.optim.lr_scheduler.LambdaLR`` stepped once per iteration.

All take ``iterations`` (the run's ``trainer.iterations``, filled in by the app) and a linear
warm-up of ``warmup`` iterations from ``lr / warmup`` to ``lr``.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from agc_pipeline.errors import require
from agc_pipeline.validation import require_finite, require_int

__all__ = ["constant", "cosine", "step"]


def _warmup(t: int, warmup: int) -> float:
    return (t + 1) / warmup if t < warmup else 1.0


def constant(optimizer: Optimizer, iterations: int, warmup: int = 0) -> LambdaLR:
    """The optimizer's learning rate (after the warm-up)."""
    warmup = require_int(warmup, "scheduler.warmup", 0)
    return LambdaLR(optimizer, lambda t: _warmup(t, warmup))


def cosine(optimizer: Optimizer, iterations: int, warmup: int = 0,
           min_ratio: float = 0.0) -> LambdaLR:
    """Cosine decay from lr to ``min_ratio · lr`` over the iterations after the warm-up."""
    iterations = require_int(iterations, "trainer.iterations", 1)
    warmup = require_int(warmup, "scheduler.warmup", 0)
    require(warmup < iterations,
            f"scheduler.warmup={warmup} must be shorter than trainer.iterations={iterations} "
            f"(the cosine decay follows the warm-up): shortening a preset also needs "
            f"scheduler.warmup=<n> with n < {iterations}, e.g. scheduler.warmup="
            f"{max(iterations // 10, 0)}")
    min_ratio = require_finite(min_ratio, "scheduler.min_ratio", 0.0, 1.0)
    span = max(iterations - warmup, 1)

    def factor(t: int) -> float:
        if t < warmup:
            return _warmup(t, warmup)
        progress = min((t - warmup) / span, 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def step(optimizer: Optimizer, iterations: int, step_size: int, gamma: float = 0.1,
         warmup: int = 0) -> LambdaLR:
    """lr · gamma^⌊t / step_size⌋ (after the warm-up)."""
    step_size = require_int(step_size, "scheduler.step_size", 1)
    gamma = require_finite(gamma, "scheduler.gamma", 0.0, strict_minimum=True)
    warmup = require_int(warmup, "scheduler.warmup", 0)
    return LambdaLR(optimizer, lambda t: _warmup(t, warmup) * gamma ** (t // step_size))
