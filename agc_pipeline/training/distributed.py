"""``trainer=distributed``: coded SGD on real processes with ``torch.distributed``.

Rank 0 is the parameter server (:mod:`~agc_pipeline.training.ps`), ranks 1..n the workers
(:mod:`~agc_pipeline.training.worker`; worker j of the assignment runs as rank j + 1).
Messages and receiving threads: :mod:`~agc_pipeline.training.wire`.

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

import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from agc_pipeline.coding.stragglers import Adversarial, Bernoulli, Delay, FixedCount, StragglerModel
from agc_pipeline.errors import ConfigError, require
from agc_pipeline.training.launch import (  # noqa: F401 - re-exported
    STARTUP_TIMEOUT_ENV,
    Launch,
    rank_device,
    require_world,
    torchrun_env,
)
from agc_pipeline.training.settings import TrainerSettings
from agc_pipeline.training.wire import (
    FOREVER,
    TAG_PARAMS,
    Arrival,
    Command,
    Inbox,
    Kind,
    Transport,
    WireFormat,
    error_text,
    write_parameters,
)
from agc_pipeline.validation import (
    is_int,
    require_bool,
    require_choice,
    require_finite,
    require_int,
)

__all__ = ["Cluster", "DistributedSettings", "FaultSettings", "Timing", "WorkersLost",
           "resolve_timing", "torchrun_env"]

log = logging.getLogger("agc_pipeline.train")

WAIT_MODES = ("first", "deadline", "all")
#: seconds per model time unit for straggler models without a ``time_scale`` of their own
DEFAULT_TIME_SCALE = 0.1
#: imported once by the fork server, so that each forked worker starts in milliseconds
#: (symbolic_shapes: torch imports it, and sympy, lazily when a model is built)
PRELOAD = ("agc_pipeline.training.worker", "agc_pipeline.codes.designs",
           "agc_pipeline.codes.repetition", "torch.fx.experimental.symbolic_shapes")
#: ``trainer.param_dtype``: the dtype of the parameters sent to the workers
PARAM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: parameter messages kept for reuse once every worker has them
PARAMS_POOL = 3


class WorkersLost(RuntimeError):
    """Fewer than ``trainer.min_workers`` workers are alive: the run stops (with a
    checkpoint) instead of skipping the remaining iterations."""


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
class DistributedSettings(TrainerSettings):
    """``trainer=distributed`` options (``conf/trainer/distributed.yaml``).

    Shares the optimisation, logging and checkpoint keys of every runtime
    (:class:`~agc_pipeline.training.settings.TrainerSettings`);
    ``wait_for_all: true`` means ``wait: all`` (so ``code=uncoded_wait`` works unchanged).
    ``decode_cost`` and ``materialize_messages`` are simulation-only and must keep their
    defaults: the PS's decode time is measured, and workers always send real messages.
    """

    runtime: ClassVar[str] = "agc_pipeline.training.ps.ParameterServer"
    rank_main: ClassVar[str] = "agc_pipeline.training.worker.serve_rank"

    workers: int | None = None  #: n; null = the assignment's n (must match it)
    backend: str = "gloo"  #: gloo | nccl (messages as CUDA tensors; one GPU per rank)
    start_method: str = "forkserver"  #: local launch: forkserver | spawn
    wait: str | None = None  #: first | deadline | all; null = straggler.wait_for or first
    s: int | None = None  #: first: proceed at n − s messages; null = straggler.s or 0
    deadline_s: float | None = None  #: seconds per iteration; null = straggler.deadline·scale
    time_scale: float | None = None  #: s per time unit; null = straggler.time_scale or 0.1
    straggle: str = "late"  #: fixed-window stragglers: late (sleep longer) | drop (no send)
    timeout_s: float = 60.0  #: a worker silent this long while awaited is dead
    min_workers: int = 1  #: fewer live workers stop the run (checkpoint, exit status 4)
    startup_timeout_s: float = 300.0  #: rendezvous, configuration and first hello
    grad_error: bool = True  #: the PS computes the true gradient (logged rows only)
    param_dtype: str = "float32"  #: parameters to the workers: float32 | bfloat16 | float16
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
        require_choice(self.start_method, "trainer.start_method", ("forkserver", "spawn"))
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
        if self.time_scale is not None:
            require_finite(self.time_scale, "trainer.time_scale", minimum=0.0)
        require_choice(self.straggle, "trainer.straggle", ("late", "drop"))
        for name in ("timeout_s", "startup_timeout_s"):
            require_finite(getattr(self, name), f"trainer.{name}", minimum=0.0,
                           strict_minimum=True)
        require_int(self.min_workers, "trainer.min_workers", minimum=1)
        require_bool(self.grad_error, "trainer.grad_error")
        require_choice(self.param_dtype, "trainer.param_dtype", tuple(PARAM_DTYPES))
        require_bool(self.abandon_stale, "trainer.abandon_stale")
        require(self.decode_cost == 0.0 and not self.materialize_messages,
                "trainer.decode_cost and trainer.materialize_messages are simulated-trainer "
                "options (the distributed PS measures its decode time; workers always send)")
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


@dataclass
class _Peer:
    """What the PS knows about one worker."""

    pid: int = 0
    host: str = ""
    alive: bool = True
    heard: float = 0.0  #: perf_counter of the last message
    posted: float = 0.0  #: perf_counter when the current parameters were posted to it
    sends: deque[tuple[int, Any, torch.Tensor]] = field(default_factory=deque)


class Cluster:
    """The PS's side of the processes: the process group, the workers it started (none
    under torchrun), their links (:class:`~agc_pipeline.training.wire.Inbox`), liveness
    and the parameter sends. A context manager: entering starts everything and waits for
    every worker's HELLO; leaving stops the workers and tears down.
    """

    def __init__(self, settings: DistributedSettings, n: int, run_dir: Path,
                 config: dict[str, Any], wire: WireFormat, device: torch.device,
                 events: list[dict[str, Any]]) -> None:
        self.settings = settings
        self.n = n
        self.run_dir = Path(run_dir)
        self.config = config
        self.wire = wire
        self.device = device  #: the PS's compute device (its message matrix lives there)
        self.peers = [_Peer() for _ in range(n)]
        self.events = events  #: shared with the PS: worker deaths are appended here
        self.launch = Launch(self.run_dir, n + 1, settings.start_method,
                             settings.startup_timeout_s, config, wire)
        self.procs = self.launch.procs  #: worker j's process is procs[j] (local launch)
        self.inbox: Inbox | None = None
        self.transport: Transport | None = None
        self._graveyard: list[Any] = []  #: sends to dead workers, kept alive, never waited
        #: parameter messages posted and not yet released by every worker: id → [msg, count]
        self._pending: dict[int, list[Any]] = {}
        self._spare: list[torch.Tensor] = []  #: released parameter messages, for reuse

    # ------------------------------------------------------------------ start and stop

    def __enter__(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._teardown()

    def _start(self) -> None:
        started = time.perf_counter()
        s = self.settings
        world = self.n + 1
        require_world(s.backend, world, f"the assignment has n = {self.n} workers: use "
                                        f"--nproc_per_node={world} (n + 1, rank 0 = the PS)")
        who = self.launch.start()
        for peer, (pid, host) in zip(self.peers, who[1:], strict=True):
            peer.pid, peer.host = int(pid), str(host)
        cuda = s.torch_device.type == "cuda" or s.backend == "nccl"
        self.transport = Transport(s.backend, rank_device(cuda, 0), data_groups(s.backend))
        self.transport.bind()
        self.inbox = Inbox(self.transport, self.n, self.wire, self.device)
        self.inbox.start()
        self._await_hellos(s.startup_timeout_s)
        self.launch.forget_rendezvous()  # every rank is connected: the file is no longer read
        self._write_roster(who[0])
        log.info("%d workers ready in %.1f s (%s launch, %s)", self.n,
                 time.perf_counter() - started, "local" if self.procs else "torchrun",
                 s.backend)

    def _await_hellos(self, timeout: float) -> None:
        assert self.inbox is not None
        ready: set[int] = set()
        end = time.perf_counter() + timeout
        while len(ready) < self.n:
            arrival = self.inbox.get(end - time.perf_counter())
            if arrival is None:
                missing = sorted(set(range(self.n)) - ready)
                raise RuntimeError(f"workers {missing} did not report ready within "
                                   f"trainer.startup_timeout_s = {timeout:g} s")
            h = arrival.header
            if arrival.error is not None or h is None or h.kind != Kind.HELLO:
                raise RuntimeError(f"worker {arrival.worker} failed to start "
                                   f"({arrival.error or 'see its stderr'})")
            ready.add(arrival.worker)
            self.peers[arrival.worker].heard = arrival.time

    def _write_roster(self, ps: tuple[int, str]) -> None:
        roster = {"ps": {"rank": 0, "pid": ps[0], "host": ps[1]},
                  "workers": [{"worker": j, "rank": j + 1, "pid": p.pid, "host": p.host}
                              for j, p in enumerate(self.peers)]}
        (self.run_dir / "workers.json").write_text(json.dumps(roster, indent=2) + "\n")

    def _teardown(self) -> None:
        """Stop the live workers, end every link, destroy the group, reap the processes."""
        grace = min(self.settings.timeout_s, 30.0)
        if self.inbox is not None:
            for j in self.live:
                self._send_command(j, Command.STOP)
            if self.inbox.join(grace):
                self._kill(self.inbox.open_links())
                if self.inbox.join(10.0):  # e.g. a stopped (SIGSTOP) worker on another node
                    log.error("the links to workers %s cannot be closed (hung workers on "
                              "another host?); this process may abort at exit",
                              self.inbox.open_links())
                    return
        self.launch.stop(grace)

    def _kill(self, workers: list[int]) -> None:
        """SIGKILL workers on this host (spawned here or by a local torchrun)."""
        for j in workers:
            peer = self.peers[j]
            self.launch.kill(j + 1, peer.pid, peer.host)
            log.warning("worker %d did not stop; killed it", j)

    # ------------------------------------------------------------------ liveness

    @property
    def live(self) -> list[int]:
        """Workers not (yet) declared dead."""
        return [j for j, p in enumerate(self.peers) if p.alive]

    def heard(self, arrival: Arrival) -> None:
        """Record that a worker spoke (for the silence timeout)."""
        self.peers[arrival.worker].heard = arrival.time

    def silent(self, workers: list[int], since: float, now: float) -> list[int]:
        """Those of ``workers`` silent for ``timeout_s`` (counted from ``since`` at most)."""
        limit = self.settings.timeout_s
        return [j for j in workers if now - max(self.peers[j].heard, since) > limit]

    def mark_dead(self, j: int, iteration: int, reason: str, link_broken: bool) -> None:
        """Treat worker j as a permanent straggler from now on (logged once)."""
        peer = self.peers[j]
        if not peer.alive:
            return
        peer.alive = False
        self._graveyard.extend(peer.sends)
        peer.sends.clear()
        self.events.append({"iteration": iteration, "worker": j, "event": "dead",
                            "reason": reason})
        log.warning("iteration %d: worker %d is dead (%s); continuing with %d workers",
                    iteration, j, reason, len(self.live))
        if not link_broken:
            self._send_command(j, Command.STOP)  # a merely silent worker: ask it to leave

    # ------------------------------------------------------------------ parameters

    def send_params(self, iteration: int, params: list[torch.Tensor]) -> int:
        """Write the parameters once into one flat message (in ``trainer.param_dtype``) and
        post it to every live worker (non-blocking); return the bytes posted."""
        assert self.transport is not None
        msg = self._spare.pop() if self._spare else self.transport.empty(self.wire.params_bytes)
        write_parameters(msg, iteration, Command.RUN, params, self.wire.param_dtype)
        sent = 0
        for j in self.live:
            if self._post(j, iteration, msg):
                self.peers[j].posted = time.perf_counter()
                sent += msg.numel()
        return sent

    def round_trip(self, arrival: Arrival) -> float:
        """Seconds from posting the parameters to worker j to its message's arrival."""
        return arrival.time - self.peers[arrival.worker].posted

    def release(self, j: int, iteration: int) -> None:
        """Worker j has answered ``iteration``: the sends up to it are complete (a message
        every worker has is reused)."""
        sends = self.peers[j].sends
        while sends and sends[0][0] <= iteration:
            _, work, msg = sends.popleft()
            work.wait(FOREVER)  # complete already: returns at once
            entry = self._pending.get(id(msg))
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._pending[id(msg)]
                    if len(self._spare) < PARAMS_POOL:
                        self._spare.append(msg)

    def _send_command(self, j: int, command: Command) -> None:
        assert self.transport is not None
        msg = write_parameters(self.transport.empty(self.wire.params_bytes), -1, command, None,
                               self.wire.param_dtype)
        self._post(j, -1, msg)

    def _post(self, j: int, iteration: int, msg: torch.Tensor) -> bool:
        assert self.transport is not None
        try:
            work = self.transport.send(msg, j + 1, TAG_PARAMS)
        except RuntimeError as exc:
            self.mark_dead(j, iteration, error_text(exc), link_broken=True)
            return False
        self.peers[j].sends.append((iteration if iteration >= 0 else 1 << 62, work, msg))
        if iteration >= 0:
            self._pending.setdefault(id(msg), [msg, 0])[1] += 1
        return True
