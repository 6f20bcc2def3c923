"""The runtime protocol (``trainer=simulated|distributed|ddp|…``) and the base classes that
build a runtime's parts from a :class:`~agc_pipeline.build.RunSpec`.

A runtime is a class named by ``trainer._target_`` in ``conf/trainer/<name>.yaml``; the
class declares its settings dataclass and its capabilities as class attributes:

* ``name`` (summary.json's ``runtime``), ``settings_class`` (its keys, validated at start);
* ``coded``: it decodes a code (builds :class:`~agc_pipeline.training.coded.CodedPart`,
  estimates α); ``virtual_clock``: it keeps the simulated clock (``cluster=`` allowed);
* ``processes``: it starts processes; ``rank_main(config, rank, world_size[, extra])`` serves
  a rank > 0 and the fork server imports ``preload`` (:mod:`~agc_pipeline.training.launch`);
* ``counters``: its own running totals (name → initial value) besides the shared ones;
* ``reshard_keys``: the config keys besides ``assignment.n`` that may change when a run is
  resumed on another number of nodes (``trainer.reshard=true``); empty: it never is.

Its :meth:`Runtime.step` runs one iteration and *returns* a
:class:`~agc_pipeline.training.state.StepResult`; the shared loop
(:func:`~agc_pipeline.training.loop.fit`) commits it (optimizer step, divergence check,
totals, clock, iteration, checkpoints). Adding a runtime is one module (a subclass of
:class:`BaseRuntime` or :class:`CodedRuntime`) and one YAML.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

from agc_pipeline.build import RunSpec
from agc_pipeline.coding.stragglers import VirtualClock
from agc_pipeline.training.coded import CodedPart
from agc_pipeline.training.coded_step import AlphaEstimate
from agc_pipeline.training.optim import Optimizer
from agc_pipeline.training.settings import CodedSettings, TrainerSettings
from agc_pipeline.training.state import RunState, StepResult, Totals
from agc_pipeline.training.workload import Workload

__all__ = ["BaseRuntime", "CodedRuntime", "Runtime"]


class Runtime(Protocol):
    """What the training loop and the train app need of a runtime."""

    name: ClassVar[str]
    settings_class: ClassVar[type[TrainerSettings]]
    coded: ClassVar[bool]
    virtual_clock: ClassVar[bool]
    processes: ClassVar[bool]
    reshard_keys: ClassVar[tuple[str, ...]]
    spec: RunSpec
    settings: TrainerSettings
    workload: Workload
    state: RunState

    @property
    def alpha(self) -> AlphaEstimate | None: ...

    def estimate_alpha(self) -> AlphaEstimate | None: ...

    def session(self, config: dict[str, Any],
                run_dir: Path) -> contextlib.AbstractContextManager[None]:
        """Resources held while training (e.g. worker processes); a no-op for a simulation."""
        ...

    def step(self, evaluate: bool = False) -> StepResult:
        """Run iteration ``state.iteration`` (test metrics when ``evaluate``); change no
        state: the loop commits the result."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def summary_extra(self) -> dict[str, Any]:
        """summary.json fields of this runtime (they override the shared ones)."""
        ...


class BaseRuntime:
    """A runtime's shared parts: the model on its device, the workload and the run state
    (optimizer, totals with the runtime's ``counters``, the clock when ``virtual_clock``).
    ``held``: the data subsets this process keeps (None: all, and the test set)."""

    name: ClassVar[str] = ""
    settings_class: ClassVar[type[TrainerSettings]] = TrainerSettings
    coded: ClassVar[bool] = False
    virtual_clock: ClassVar[bool] = False
    processes: ClassVar[bool] = False
    rank_main: ClassVar[Callable[..., int] | None] = None
    preload: ClassVar[tuple[str, ...]] = ()
    counters: ClassVar[dict[str, float]] = {}
    reshard_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: RunSpec, held: list[int] | None = None) -> None:
        assert isinstance(spec.settings, self.settings_class), "build_run builds the settings"
        self.spec = spec
        self.settings = spec.settings
        self.model = spec.model.to(self.settings.torch_device)
        self.workload = Workload(self.model, spec.dataset, spec.scheme.k, spec.seed,
                                 self.settings.batch_size, self.settings.torch_device, held)
        self.d = sum(p.numel() for p in self.model.parameters())

    def _make_state(self, clock: VirtualClock | None = None) -> RunState:
        """The run state; called last by the constructors (after the start-up checks)."""
        optimizer = Optimizer(list(self.model.parameters()), self.spec.make_optimizer,
                              self.spec.make_scheduler, self.settings.clip_grad_norm)
        return RunState(optimizer, Totals.declare(self.counters), clock)

    @property
    def alpha(self) -> AlphaEstimate | None:
        """α (Section VII): None for a runtime without a code."""
        return None

    def estimate_alpha(self) -> AlphaEstimate | None:
        """Estimate α at the start of a fresh run (nothing to estimate here)."""
        return None

    @contextlib.contextmanager
    def session(self, config: dict[str, Any], run_dir: Path) -> Iterator[None]:
        """Nothing to start."""
        yield

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (model, optimizer, clock, totals)."""
        return {**self.state.state_dict(), "model": self.model.state_dict(),
                "alpha": None if self.alpha is None else self.alpha.as_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.state.load_state_dict(state)

    def summary_extra(self) -> dict[str, Any]:
        """summary.json fields of this runtime."""
        return {"runtime": self.name}


class CodedRuntime(BaseRuntime):
    """A runtime that decodes a code: plus the coded part (code, straggler draws, α)."""

    coded: ClassVar[bool] = True
    settings_class: ClassVar[type[TrainerSettings]] = CodedSettings

    def __init__(self, spec: RunSpec, materialize: bool = False) -> None:
        super().__init__(spec)
        assert isinstance(self.settings, CodedSettings)
        self.coded_part = CodedPart(self.workload, spec.scheme, spec.decoder, spec.straggler,
                                    self.settings, spec.seed, spec.cluster, materialize)

    @property
    def alpha(self) -> AlphaEstimate | None:
        return self.coded_part.alpha

    def estimate_alpha(self) -> AlphaEstimate | None:
        """α by Monte Carlo (``trainer.alpha_samples`` draws), or None."""
        return self.coded_part.estimate_alpha()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        alpha = state["alpha"]
        self.coded_part.alpha = None if alpha is None else AlphaEstimate(**alpha)
