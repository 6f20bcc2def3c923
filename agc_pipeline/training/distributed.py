"""``trainer=distributed``: coded SGD on real processes with ``torch.distributed``.

Rank 0 is the parameter server (:mod:`~agc_pipeline.training.ps`; its side of the processes:
:mod:`~agc_pipeline.training.processes`), ranks 1..n the workers
(:mod:`~agc_pipeline.training.worker`; worker j of the assignment runs as rank j + 1).
Messages and receiving threads: :mod:`~agc_pipeline.training.wire`. This module: the
settings, the waiting rule (:func:`resolve_timing`) and injected faults.

Two launches, one protocol (:mod:`~agc_pipeline.training.launch`, shared with
``trainer=ddp``):

* **local** (the Hydra app alone): the PS — the app's own process — starts the n workers
  (``trainer.start_method``: ``forkserver``, which imports torch once, or ``spawn``) and
  rendezvouses with them through a ``file://`` store in the run dir, so that parallel sweep
  jobs never clash;
* **torchrun** (``RANK``/``WORLD_SIZE`` in the environment, ``WORLD_SIZE = n + 1``): rank 0
  runs the Hydra app and is the PS; the other ranks skip Hydra (no run dir, no files, no
  W&B) and join as workers.

Either way the PS broadcasts its resolved configuration, so every rank builds the same code,
data split, model and straggler model from one source. The default process group is gloo
(control, and the data plane on CPU); ``trainer.backend=nccl`` adds an NCCL group that
carries the messages as CUDA tensors (two groups, one per direction; see
:class:`~agc_pipeline.training.wire.Transport`). Dead-worker detection relies on gloo's
connection errors: with NCCL a dead peer is caught only by ``timeout_s``, and its link
cannot be closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from agc_pipeline.coding.stragglers import Adversarial, Bernoulli, Delay, FixedCount, StragglerModel
from agc_pipeline.errors import ConfigError, require
from agc_pipeline.training.launch import (  # noqa: F401 - re-exported
    STARTUP_TIMEOUT_ENV,
    rank_device,
    torchrun_env,
)
from agc_pipeline.training.settings import CodedSettings, ProcessKeys
from agc_pipeline.validation import (
    is_int,
    require_bool,
    require_choice,
    require_finite,
    require_int,
)

__all__ = ["DistributedSettings", "FaultSettings", "Timing", "WorkersLost", "resolve_timing",
           "torchrun_env"]

WAIT_MODES = ("first", "deadline", "all")
#: how the PS posts the parameters to the workers (``trainer.broadcast``)
BROADCAST_MODES = ("concurrent", "sequential")
#: seconds per model time unit for straggler models without a ``time_scale`` of their own
DEFAULT_TIME_SCALE = 0.1
#: ``trainer.param_dtype``: the dtype of the parameters sent to the workers
PARAM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class WorkersLost(RuntimeError):
    """Fewer than ``trainer.min_workers`` workers are alive: the run stops (with a
    checkpoint) instead of skipping the remaining iterations."""

    exit_status = 4  #: the train app's exit status


@dataclass
class FaultSettings:
    """``trainer.fault.*``: injected faults (worker indices j are 0-based; rank = j + 1)."""

    kill_worker: int | None = None  #: this worker exits abruptly (os._exit) ...
    at_iteration: int = 0  #: ... when it is handed this iteration
    bad_message_worker: int | None = None  #: this worker sends one bad message ...
    bad_message: str = "nan"  #: ... nan | inf | size (one element too many) ...
    bad_message_at: int = 0  #: ... in this iteration

    @classmethod
    def from_config(cls, value: Any) -> FaultSettings:
        """``trainer.fault`` (a mapping, None or a FaultSettings) as validated settings."""
        fault = value if value is not None else {}
        if not isinstance(fault, FaultSettings):
            try:
                fault = cls(**dict(fault))
            except TypeError as exc:
                raise ConfigError(f"trainer.fault: {exc}") from None
        fault.validate()
        return fault

    def validate(self, n: int | None = None) -> None:
        """Raise ConfigError for impossible values (worker indices against ``n`` if given)."""
        for name in ("kill_worker", "bad_message_worker"):
            j = getattr(self, name)
            require(j is None or (is_int(j) and j >= 0 and (n is None or j < n)),
                    f"trainer.fault.{name} must be null or a worker index 0..n-1 "
                    f"(got {j!r}{'' if n is None else f', n = {n}'})")
        for name in ("at_iteration", "bad_message_at"):
            require_int(getattr(self, name), f"trainer.fault.{name}", minimum=0)
        if isinstance(self.bad_message, float):  # YAML and Hydra read nan/inf as floats
            self.bad_message = str(self.bad_message)
        require_choice(self.bad_message, "trainer.fault.bad_message", ("nan", "inf", "size"))


@dataclass
class DistributedSettings(CodedSettings, ProcessKeys):
    """``trainer=distributed`` options (``conf/trainer/distributed.yaml``): the coded
    runtimes' keys (:class:`~agc_pipeline.training.settings.CodedSettings`), the processes'
    (:class:`~agc_pipeline.training.settings.ProcessKeys`) and the PS's waiting rule.
    ``wait_for_all: true`` means ``wait: all`` (so ``code=uncoded_wait`` works unchanged).
    """

    workers: int | None = None  #: n; null = the assignment's n (must match it)
    backend: str = "gloo"  #: gloo | nccl (messages as CUDA tensors; one GPU per rank)
    wait: str | None = None  #: first | deadline | all; null = straggler.wait_for or first
    s: int | None = None  #: first: proceed at n − s messages; null = straggler.s or 0
    deadline_s: float | None = None  #: seconds per iteration; null = straggler.deadline·scale
    straggle: str = "late"  #: fixed-window stragglers: late (sleep longer) | drop (no send)
    min_workers: int = 1  #: fewer live workers stop the run (checkpoint, exit status 4)
    param_dtype: str = "float32"  #: parameters to the workers: float32 | bfloat16 | float16
    #: concurrent (the n sends posted at once share the PS's link) | sequential (one after
    #: another, the order rotated every iteration: the cost model's ``unicast``)
    broadcast: str = "concurrent"
    #: a worker still sleeping its injected delay when newer parameters arrive abandons the
    #: stale iteration (each iteration starts afresh, as in the simulated delay model)
    abandon_stale: bool = False
    fault: Any = None  #: FaultSettings or a mapping of its fields

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.workers is not None:
            require_int(self.workers, "trainer.workers", minimum=1)
        require_choice(self.backend, "trainer.backend", ("gloo", "nccl"))
        require(self.backend != "nccl" or torch.cuda.is_available(),
                "trainer.backend=nccl needs CUDA; use trainer.backend=gloo")
        self.validate_processes()
        if self.wait is not None:
            require_choice(self.wait, "trainer.wait", WAIT_MODES)
        if self.wait_for_all:
            require(self.wait in (None, "all"), f"trainer.wait_for_all=true means "
                                                f"trainer.wait=all (got wait={self.wait})")
            self.wait = "all"
        self.wait_for_all = self.wait == "all"  # α is then estimated with every worker
        if self.s is not None:
            require_int(self.s, "trainer.s", minimum=0)
        if self.deadline_s is not None:
            require_finite(self.deadline_s, "trainer.deadline_s", minimum=0.0,
                           strict_minimum=True)
        require_choice(self.straggle, "trainer.straggle", ("late", "drop"))
        require_choice(self.broadcast, "trainer.broadcast", BROADCAST_MODES)
        require_int(self.min_workers, "trainer.min_workers", minimum=1)
        require_choice(self.param_dtype, "trainer.param_dtype", tuple(PARAM_DTYPES))
        require_bool(self.abandon_stale, "trainer.abandon_stale")
        self.fault = FaultSettings.from_config(self.fault)


@dataclass(frozen=True)
class Timing:
    """The resolved waiting rule of the PS and the workers' sleep scale."""

    wait: str  #: first | deadline | all
    s: int  #: first: the PS proceeds at n − s messages
    deadline_s: float | None  #: the PS proceeds at this many seconds (None: no deadline)
    time_scale: float  #: seconds of real sleep per time unit of the straggler model

    def target(self, live: int, n: int) -> int:
        """Messages the PS waits for with ``live`` workers alive."""
        return min(n - self.s, live) if self.wait == "first" else live


def ps_silence_limit(settings: DistributedSettings, started: bool) -> float:
    """Seconds a worker waits for parameters before it takes the PS for dead: the startup
    timeout for the first ones; afterwards 2·timeout_s + 10 s, longer than any legitimate
    pause (the PS waits at most timeout_s for a silent worker before declaring it dead)."""
    return 2 * settings.timeout_s + 10.0 if started else settings.startup_timeout_s


def resolve_timing(settings: DistributedSettings, straggler: StragglerModel, n: int) -> Timing:
    """Fill the null waiting options from the straggler model; check the combination."""
    delay = straggler if isinstance(straggler, Delay) else None
    model_s = getattr(straggler, "s", None)
    scale = settings.time_scale
    if scale is None:
        scale = delay.time_scale if delay is not None else DEFAULT_TIME_SCALE
    wait = settings.wait or (delay.wait_for if delay is not None else "first")
    s = settings.s if settings.s is not None else int(model_s or 0)
    require(s < n, f"trainer.s must satisfy 0 ≤ s < n (got s={s}, n={n})")
    deadline = settings.deadline_s
    if deadline is None and delay is not None and delay.deadline is not None \
            and wait == "deadline":
        deadline = delay.deadline * scale
    require(wait != "deadline" or deadline is not None,
            "trainer.wait=deadline needs trainer.deadline_s (or straggler=delay with "
            "straggler.deadline)")
    if settings.straggle == "drop" and not isinstance(straggler, Delay) and deadline is None:
        dropping = isinstance(straggler, Bernoulli) or wait == "all" or (
            isinstance(straggler, FixedCount | Adversarial) and straggler.s > s)
        require(not dropping,
                "trainer.straggle=drop: stragglers never send, so the PS needs a deadline "
                "(trainer.deadline_s) or trainer.wait=first with trainer.s ≥ straggler.s; "
                "or use trainer.straggle=late")
    return Timing(wait, s, deadline, float(scale))


def data_groups(backend: str) -> tuple[Any, Any]:
    """The groups that carry the messages (worker → PS, PS → worker): the default gloo
    group for both, or two new NCCL groups (collectives: every rank calls this once, right
    after the configuration)."""
    if backend != "nccl":
        return None, None
    return dist.new_group(backend="nccl"), dist.new_group(backend="nccl")
