"""The PS's optimizer: SGD with optional heavy-ball momentum and weight decay.

The update rule is ``torch.optim.SGD``'s (dampening 0, no Nesterov):
``d = ĝ + λ·w``; ``v = d`` at the first step, else ``v = μ·v + d``; ``w ← w − η·v``.
It is written out because it takes the flat decoded gradient directly, because it never
commits a step that would leave NaN/Inf in the parameters (the step is computed aside and
checked first), and because ``torch.optim`` imports ``torch._dynamo`` on first use (seconds
of start-up on a small CPU, for every job of a sweep).
"""

from __future__ import annotations

from typing import Any

import torch


class SGD:
    """SGD on ``params`` with learning rate ``lr``, momentum ``momentum`` and L2 weight decay
    ``weight_decay`` (the same numbers as ``torch.optim.SGD``)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.buffers: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, flat: torch.Tensor) -> bool:
        """Apply the flat d-vector gradient ``flat`` (cast to the parameters' dtype).

        Returns False — and changes nothing — when the step would make a parameter or a
        momentum buffer NaN/Inf.
        """
        flat = flat.to(self.params[0].dtype)
        new_params, new_buffers, offset = [], [], 0
        for i, p in enumerate(self.params):
            g = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                g = g if self.buffers is None else torch.add(g, self.buffers[i],
                                                             alpha=self.momentum)
                new_buffers.append(g)
            new_params.append(torch.add(p, g, alpha=-self.lr))
        # one reduction per tensor: a NaN/Inf anywhere makes its sum non-finite
        sums = torch.stack([t.sum() for t in (*new_params, *new_buffers)])
        if not bool(torch.isfinite(sums).all()):
            return False
        for p, new in zip(self.params, new_params, strict=True):
            p.copy_(new)
        if self.momentum:
            self.buffers = new_buffers
        return True

    def state_dict(self) -> dict[str, Any]:
        """The momentum buffers (None before the first step or without momentum)."""
        return {"buffers": None if self.buffers is None else [b.clone() for b in self.buffers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        buffers = state["buffers"]
        self.buffers = None if buffers is None else [
            b.to(device=p.device, dtype=p.dtype) for b, p in zip(buffers, self.params,
                                                                 strict=True)]
