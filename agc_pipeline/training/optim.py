"""The PS's optimizer: any ``torch.optim`` optimizer, an optional schedule and clipping,
stepped with the flat decoded gradient ĝ, never committing a step that leaves NaN/Inf.

``optimizer=sgd`` (``torch.optim.SGD``: lr, momentum, weight_decay; dampening 0, no
Nesterov) is the default; ``optimizer=adamw`` is ``torch.optim.AdamW``. ``scheduler=`` picks
a learning-rate schedule (:mod:`agc_pipeline.training.schedules`), stepped once per
iteration after the update. ``trainer.clip_grad_norm`` rescales ĝ to at most that global
2-norm before the step. The PS (or the simulated PS) owns this state; it is checkpointed
with the model so that a resumed run continues bit-identically.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Optimizer"]

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class Optimizer:
    """``make_optimizer(params)`` (e.g. a ``functools.partial`` of ``torch.optim.SGD``) with
    ``make_scheduler(optimizer)`` (or None) and global-norm clipping ``clip_grad_norm``."""

    def __init__(self, params: list[torch.nn.Parameter], make_optimizer: OptimizerFactory,
                 make_scheduler: SchedulerFactory | None = None,
                 clip_grad_norm: float | None = None) -> None:
        self.params = list(params)
        self.optimizer = make_optimizer(self.params)
        self.scheduler = make_scheduler(self.optimizer) if make_scheduler else None
        self.clip_grad_norm = clip_grad_norm
        self.last_grad_norm: float | None = None
        self._backup: list[torch.Tensor] | None = None
        self._state_backup: dict[tuple[int, str], torch.Tensor] = {}
        self._saved_state: dict[tuple[int, str], Any] = {}
        self._saved_schedule: dict[str, Any] | None = None
        self._saved_lrs: list[float] = []

    @property
    def lr(self) -> float:
        """The learning rate of the next step (first parameter group)."""
        return float(self.optimizer.param_groups[0]["lr"])

    @torch.no_grad()
    def step(self, flat: torch.Tensor) -> bool:
        """Apply the flat d-vector gradient ``flat`` (cast to the parameters' dtype).

        Returns False — and changes nothing (parameters, optimizer state, schedule) — when
        the step would make a parameter NaN/Inf.
        """
        # a copy when clipping: clip_grad_norm_ scales the gradients in place
        flat = flat.to(self.params[0].dtype, copy=self.clip_grad_norm is not None)
        offset = 0
        for p in self.params:
            p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        if self.clip_grad_norm is not None:
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(
                self.params, self.clip_grad_norm, foreach=False))
        self._save()
        self.optimizer.step()
        # one reduction per tensor: a NaN/Inf anywhere makes its sum non-finite
        sums = torch.stack([p.sum() for p in self.params])
        ok = bool(torch.isfinite(sums).all())
        if not ok:
            self._restore()
        for p in self.params:
            p.grad = None
        if ok and self.scheduler is not None:
            self.scheduler.step()
        return ok

    def _save(self) -> None:
        """Copy the parameters and the optimizer's state into buffers kept from step to step
        (one pass over them; no allocation after the first steps)."""
        if self._backup is None:
            self._backup = [torch.empty_like(p) for p in self.params]
        torch._foreach_copy_(self._backup, [p.detach() for p in self.params])
        saved: dict[tuple[int, str], Any] = {}
        buffers: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for index, p in enumerate(self.params):
            for key, value in self.optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    buffer = self._state_backup.get((index, key))
                    if buffer is None or buffer.shape != value.shape \
                            or buffer.dtype != value.dtype or buffer.device != value.device:
                        buffer = self._state_backup[(index, key)] = torch.empty_like(value)
                    buffers.append(buffer)
                    values.append(value)
                    saved[(index, key)] = buffer
                else:
                    saved[(index, key)] = copy.deepcopy(value)
        if buffers:  # one call for all the state's tensors (moments, step counts)
            torch._foreach_copy_(buffers, values)
        self._saved_state = saved
        self._saved_schedule = (None if self.scheduler is None
                                else copy.deepcopy(self.scheduler.state_dict()))
        self._saved_lrs = [group["lr"] for group in self.optimizer.param_groups]

    def _restore(self) -> None:
        """Undo the last step: parameters and optimizer state as :meth:`_save` left them."""
        torch._foreach_copy_([p.detach() for p in self.params], self._backup)
        for p in self.params:
            self.optimizer.state.pop(p, None)
        for (index, key), value in self._saved_state.items():
            state = self.optimizer.state[self.params[index]]
            state[key] = value.clone() if isinstance(value, torch.Tensor) else value

    def undo_step(self) -> None:
        """Undo the last committed :meth:`step` (parameters, optimizer state and schedule as
        before it): n workers' steps are all or nothing (local SGD)."""
        self._restore()
        if self.scheduler is not None and self._saved_schedule is not None:
            self.scheduler.load_state_dict(self._saved_schedule)
            for group, lr in zip(self.optimizer.param_groups, self._saved_lrs, strict=True):
                group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and schedule state (momentum buffers, Adam moments, step counts)."""
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
