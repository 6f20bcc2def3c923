"""The protocol every runtime implements (``trainer=simulated``, ``trainer=distributed``, …).

A runtime composes a :class:`~agc_pipeline.training.core.CodedTraining` (model, data, code,
optimizer, state) and adds only what differs between runtimes: how one iteration is run and
what it measures. The shared loop (:func:`agc_pipeline.training.loop.fit`) drives it:
progress, metrics rows, checkpoint cadence and graceful stop. Adding a runtime is one module
(a settings dataclass naming the runtime class in ``runtime``, plus the class) and one YAML
in ``conf/trainer/``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from agc_pipeline.training.core import CodedTraining

__all__ = ["Runtime"]


class Runtime(Protocol):
    """What the training loop and the train app need of a runtime."""

    #: short name recorded in summary.json (``runtime``) and used by reports
    name: str
    #: the shared state: model, data, code, optimizer, iteration, totals, settings
    core: CodedTraining

    def session(self, extra_state: dict[str, Any],
                run_dir: Any) -> AbstractContextManager[None]:
        """Resources held while training (e.g. worker processes); a no-op for a simulation."""
        ...

    def step(self, evaluate: bool = False) -> dict[str, Any]:
        """Run iteration ``core.iteration`` and return its metrics row (test metrics when
        ``evaluate``); commits the update and advances ``core.iteration``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run bit-identically."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        ...

    def summary_extra(self) -> dict[str, Any]:
        """summary.json fields of this runtime (they override the shared ones)."""
        ...
