"""``trainer=sharded``: coded SGD without a parameter server — every node owns 1/n of the
parameters and of the optimizer state (the arithmetic: :mod:`~agc_pipeline.training.sharded_maths`).

n processes; rank r is worker r of the assignment and the owner of shard r. Each iteration t:

1. worker r (a thread) computes its message ``Z B(:, j)`` (length L = ⌈d/m⌉, Section III;
   the :class:`~agc_pipeline.training.coded_gradient.CodedGradient` pass of the PS's
   workers) at the parameters of iteration t, sleeps the straggler model's delay (× the
   time scale, as the PS's workers do) and sends slice σ (W = ⌈L/n⌉ values) to owner σ
   (point-to-point gloo sends);
2. owner r (the rank's main thread; on rank 0 the shared loop's :meth:`ShardedRuntime.step`)
   takes the first n − s slices of iteration t that arrive (its own survivor set; a late
   slice of an earlier iteration is discarded), decodes R for exactly that set (decoding
   (3)/(4), float64, as the PS does), forms its slice of ĝ = Z (B R) (divided by α with
   ``decoder.rescale``) and steps its shard's optimizer;
3. every owner's new shard is all-gathered (one gloo ``all_gather``, with a flag
   for a step that would overflow and the owner's survivor count), and the next parameters
   are handed to the worker thread. A straggling worker's own shard is served meanwhile.

Per node ≈ (d/m + d)·(n−1)/n values sent (and received) per iteration, against the ring
all-reduce's 2d·(n−1)/n (``bytes_per_node``). With an exact code, no stragglers and the same
seeds, the parameters are the simulated trainer's to float tolerance. Rank 0 (the app's
process, holding the whole data for ``train_loss`` and the test metrics) starts the others
through :mod:`~agc_pipeline.training.launch` and alone writes rows, checkpoints and the
summary. The shards' optimizer states are gathered to rank 0 at the periodic checkpoints
(start, every ``checkpoint_every``, the end): resuming from them is exact. A node that is
lost (a broken link, or ``timeout_s`` without enough slices) stops the run with
:class:`~agc_pipeline.training.distributed.WorkersLost` (exit status 4) and a checkpoint;
its other shards' optimizer state is that of the last periodic checkpoint (none for plain
SGD). The run continues with n nodes again (``trainer.resume=true``), or on another number
of nodes (``trainer.resume=true trainer.reshard=true assignment.n=<n'>``, and the keys of
``reshard_keys`` that must follow n): the checkpoint's shards' optimizer states are put
back in parameter order and cut into the new layout
(:func:`~agc_pipeline.training.sharded_maths.reshard_states`); the assignment, code, draws,
data partition and α are rebuilt for n' as a fresh run's; ``sharded.reshards`` in
summary.json records it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from agc_pipeline.build import Plan, RunSpec, build_run
from agc_pipeline.coding.stragglers import Delay
from agc_pipeline.errors import require
from agc_pipeline.training.coded import CodedPart
from agc_pipeline.training.coded_gradient import CodedGradient
from agc_pipeline.training.coded_step import (
    TrainingDiverged,
    held_subsets,
    worker_coefficients,
)
from agc_pipeline.training.distributed import DEFAULT_TIME_SCALE, FaultSettings, WorkersLost
from agc_pipeline.training.launch import (
    EXIT_PEER_LOST,
    Launch,
    rank_session,
    serve_built,
    torchrun_env,
)
from agc_pipeline.training.optim import Optimizer
from agc_pipeline.training.runtime import BaseRuntime, CodedRuntime
from agc_pipeline.training.settings import CodedSettings, ProcessKeys, TrainerSettings
from agc_pipeline.training.sharded_maths import ShardLayout, reshard_states
from agc_pipeline.training.sharded_node import ShardNode, load_flat
from agc_pipeline.training.state import RunState, StepResult, Totals
from agc_pipeline.training.wire import error_text
from agc_pipeline.training.workload import Workload
from agc_pipeline.validation import is_int, require_int

__all__ = ["ShardedRuntime", "ShardedSettings", "sharded_bytes_per_node"]

log = logging.getLogger("agc_pipeline.train")


def sharded_bytes_per_node(n: int, d: int, m: int, element_size: int = 4) -> int:
    """Values one node sends per iteration, in bytes: n − 1 message slices of ⌈⌈d/m⌉/n⌉
    and n − 1 copies of its shard (m slices of that width) in the all-gather."""
    layout = ShardLayout(d, m, n)
    return (n - 1) * (1 + m) * layout.width * element_size


@dataclass
class ShardedSettings(CodedSettings, ProcessKeys):
    """``trainer=sharded`` options (``conf/trainer/sharded.yaml``): the coded runtimes' keys,
    the processes' and its own (s, fault)."""

    grad_error: bool = False  #: must stay false: no node holds the whole ĝ
    s: int | None = None  #: an owner proceeds at n − s slices; null = straggler.s or 0
    fault: Any = None  #: FaultSettings: kill_worker (a rank 1..n−1), at_iteration
    reshard: bool = False  #: trainer.resume=true may change assignment.n (re-sharding)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_processes()
        require(self.torch_device.type == "cpu",
                "trainer=sharded runs on the CPU (gloo): use trainer.device=cpu")
        require(not self.grad_error, "trainer.grad_error=true needs the whole ĝ on one node; "
                                     "trainer=sharded decodes it in shards: leave it false")
        require(self.clip_grad_norm is None, "trainer.clip_grad_norm needs the global norm of "
                                             "ĝ, which no node of trainer=sharded holds")
        require(self.coded_gradient == "weighted",
                "trainer=sharded forms messages with trainer.coded_gradient=weighted only")
        if self.s is not None:
            require_int(self.s, "trainer.s", minimum=0)
        require(isinstance(self.reshard, bool),
                f"trainer.reshard must be true or false (got {self.reshard!r})")
        fault = FaultSettings.from_config(self.fault)
        require(fault.bad_message_worker is None,
                "trainer.fault.bad_message_worker does not apply to trainer=sharded")
        self.fault = fault


class ShardedRuntime(CodedRuntime):
    """One node of ``trainer=sharded`` (see the module docstring); rank 0 drives the loop."""

    name: ClassVar[str] = "sharded"
    settings_class: ClassVar[type[TrainerSettings]] = ShardedSettings
    processes: ClassVar[bool] = True
    preload: ClassVar[tuple[str, ...]] = ("agc_pipeline.training.sharded",)
    counters: ClassVar[dict[str, float]] = {"wall_time": 0.0, "wait_time": 0.0,
                                            "bytes_per_node": 0}
    #: besides assignment.n, what may change on a resume with trainer.reshard=true: the keys
    #: an assignment's or straggler model's validity ties to n (m and d stay)
    reshard_keys: ClassVar[tuple[str, ...]] = ("assignment.s", "assignment.k",
                                               "straggler.s", "trainer.s")

    @staticmethod
    def rank_main(config: dict[str, Any], rank: int, world_size: int) -> int:
        """A rank > 0 (:func:`serve_rank`)."""
        return serve_rank(config, rank, world_size)

    @staticmethod
    def check_plan(plan: Plan) -> None:
        """One node per worker (n ≥ 2), s < n, a killed rank 1..n−1."""
        settings, n = plan.settings, plan.scheme.n
        require(n >= 2, f"trainer=sharded needs n ≥ 2 nodes (the assignment has n = {n})")
        s = _stragglers(settings, plan.straggler)
        require(s < n, f"trainer.s must satisfy 0 ≤ s < n (got s={s}, n={n})")
        kill = settings.fault.kill_worker
        require(kill is None or (is_int(kill) and 1 <= kill < n),
                f"trainer.fault.kill_worker must be null or a rank 1..n-1 = {n - 1} for "
                f"trainer=sharded (rank 0 is the app; got {kill!r})")

    def __init__(self, spec: RunSpec, rank: int = 0) -> None:
        settings = spec.settings
        assert isinstance(settings, ShardedSettings)
        a = spec.scheme.assignment
        held = [int(i) for i in held_subsets(a.matrix, rank)]
        BaseRuntime.__init__(self, spec, held=None if rank == 0 else held)
        self.settings: ShardedSettings = settings
        self.coded_part = CodedPart(self.workload, spec.scheme, spec.decoder, spec.straggler,
                                    settings, spec.seed, spec.cluster)
        self.rank, self.n, self.m = rank, a.n, spec.scheme.m
        self.target = self.n - _stragglers(settings, spec.straggler)
        self.params = list(self.model.parameters())
        self.dtype = self.params[0].dtype
        self.layout = ShardLayout(self.d, self.m, self.n)
        index, self.valid = self.layout.positions(rank)
        flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.shard = torch.nn.Parameter(flat[index].clone())  #: shard r, what this node steps
        self.index = index
        optimizer = Optimizer([self.shard], spec.make_optimizer, spec.make_scheduler)
        self.state = RunState(optimizer, Totals.declare(self.counters))
        #: the worker's own model and data (held subsets), used only by the worker thread
        self.worker_model = copy.deepcopy(self.model)
        self.worker_data = Workload(self.worker_model, spec.dataset, a.k, spec.seed,
                                    settings.batch_size, self.workload.device, held)
        self.engine = CodedGradient(self.worker_model, self.m)
        self.local = torch.arange(len(held))
        scale = settings.time_scale
        if scale is None:
            straggler = spec.straggler
            scale = straggler.time_scale if isinstance(straggler, Delay) else DEFAULT_TIME_SCALE
        self.time_scale = float(scale)
        self.bytes_per_iteration = sharded_bytes_per_node(self.n, self.d, self.m,
                                                          self.params[0].element_size())
        self.node: ShardNode | None = None
        #: rank 0: every shard's optimizer state at the last periodic checkpoint (iteration)
        self.gathered: tuple[int, list[Any]] | None = None
        #: rank 0: the shards' optimizer states of the checkpoint resumed from (None: fresh)
        self._loaded_shards: list[Any] | None = None
        #: rank 0: the iteration of the periodic checkpoint those states are from
        self._loaded_at: int | None = None
        #: rank 0: the run's re-shardings ({iteration, from_n, to_n, optimizer_state_iteration})
        self.reshards: list[dict[str, Any]] = []
        self.launch: Launch | None = None

    # ------------------------------------------------------------------ worker side

    def message(self, t: int, flat: torch.Tensor) -> torch.Tensor:
        """Worker r's message ``Z B(:, r)`` at parameters ``flat`` (one weighted pass)."""
        load_flat(flat, list(self.worker_model.parameters()))
        x, y = self.worker_data.minibatch(t)
        b = self.coded_part.code.encoding(t)
        held = np.asarray(self.worker_data.held)
        coef = worker_coefficients(b, self.coded_part.k, self.m, self.rank, held)
        coef = coef[:, :, None] / self.worker_data.batch_samples
        subset = self.local.repeat_interleave(x.shape[1])
        res = self.engine(x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:]), subset,
                          coef)
        return res.blocks[0]

    def delay(self, t: int) -> float:
        """Seconds worker r sleeps in iteration t: its finish time in the straggler model's
        draw (one that never arrives: ``straggler_slowdown`` × the compute time plus its
        communication time, as ``straggle=late``), × the time scale."""
        coded = self.coded_part
        model = coded.straggler
        draw = coded.draw(coded.code.encoding(t), t)
        finish = float(draw.finish_times[self.rank])
        if not math.isfinite(finish):
            finish = (self.settings.straggler_slowdown * getattr(model, "compute_time", 1.0)
                      + model.comm_time(coded.length))
        return finish * self.time_scale

    def fault_exit(self, t: int) -> None:
        """``trainer.fault.kill_worker``: this rank exits abruptly at iteration t."""
        fault = self.settings.fault
        if fault.kill_worker == self.rank and t >= fault.at_iteration:
            print(f"agc-sharded rank {self.rank}: trainer.fault.kill_worker: exiting abruptly "
                  f"at iteration {t}", file=sys.stderr, flush=True)
            os._exit(0)

    def save_point(self, t: int) -> bool:
        """Whether the loop checkpoints after iteration t − 1 (periodic or the last)."""
        every = self.settings.checkpoint_every
        return t == self.settings.iterations or (every > 0 and t % every == 0)

    # ------------------------------------------------------------------ every rank

    def connect(self) -> ShardNode:
        """Groups, rank 0's state (iteration, parameters, shards' optimizer states, α),
        then the node's threads."""
        node = self.node = ShardNode(self)
        box: list[Any] = [None]
        if self.rank == 0:
            box[0] = {"iteration": self.state.iteration, "shards": self._loaded_shards,
                      "alpha": self.coded_part.alpha}
        dist.broadcast_object_list(box, src=0, group=node.gather)
        flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        dist.broadcast(flat, src=0, group=node.gather)
        load_flat(flat, self.params)
        self.state.iteration = int(box[0]["iteration"])
        self.coded_part.alpha = box[0]["alpha"]
        with torch.no_grad():
            self.shard.copy_(flat[self.index])
        if box[0]["shards"] is not None:
            self.state.optimizer.load_state_dict(box[0]["shards"][self.rank])
        node.gather_states(self.state.iteration)
        node.start(self.state.iteration, flat.clone())
        return node

    def serve(self) -> int:
        """A rank > 0: connect, own the remaining iterations, finish."""
        try:
            node = self.connect()
            while self.state.iteration < self.settings.iterations:
                node.own(self.state.iteration)
                self.state.commit(StepResult({}))
            node.finish(self.settings.timeout_s)
        except TrainingDiverged:
            return 0  # every rank sees it; rank 0 reports it
        except RuntimeError as exc:
            print(f"agc-sharded rank {self.rank}: rank 0 or a peer is gone "
                  f"({error_text(exc)}); exiting", file=sys.stderr, flush=True)
            os._exit(EXIT_PEER_LOST)
        dist.destroy_process_group()
        return 0

    # ------------------------------------------------------------------ rank 0

    @contextlib.contextmanager
    def session(self, config: dict[str, Any], run_dir: Path) -> Iterator[None]:
        """Start (or join) ranks 1..n−1 with the resolved ``config``; stop them after."""
        with rank_session(self, config, run_dir, "gloo", "sharded", self.connect, self._stop,
                          unit="node"):
            yield

    def _stop(self, launch: Launch, completed: bool) -> None:
        """After the loop: every node finishes its last iteration, then the ranks exit;
        after an error or a stop: the group is destroyed at once."""
        timeout = self.settings.timeout_s
        node, self.node = self.node, None
        if node is not None and not completed:
            node.stopped.set()
        if completed and node is not None:
            try:
                node.finish(timeout)
            except RuntimeError as exc:
                print(f"sharded ranks did not all finish cleanly: {error_text(exc)}",
                      file=sys.stderr)
        if not completed and dist.is_initialized():
            dist.destroy_process_group()
        launch.stop(min(timeout, 30.0))
        self.launch = None

    def step(self, evaluate: bool = False) -> StepResult:
        """Iteration ``state.iteration`` on every node: rank 0's metrics row (the shards are
        stepped by their owners: no gradient for the loop to apply)."""
        node = self.node
        require(node is not None, "ShardedRuntime.step runs inside session()")
        assert node is not None
        t, s = self.state.iteration, self.settings
        start = time.perf_counter()
        row: dict[str, Any] = {"iteration": t}
        if evaluate:
            row.update(self.workload.evaluate())
        loss = None
        if t % s.log_every == 0 or t == s.iterations - 1:
            x, y = self.workload.minibatch(t)
            with torch.no_grad():
                loss = float(self.model.loss_sum(self.model(x.reshape(-1, *x.shape[2:])),
                                                 y.reshape(-1, *y.shape[2:])))
            loss /= self.workload.batch_samples
        try:
            survivors, decoded, waited = node.own(t)
        except RuntimeError as exc:
            if isinstance(exc, TrainingDiverged):
                raise
            raise WorkersLost(self._lost(t, exc)) from None
        end = time.perf_counter()
        tot, per_node = self.state.totals, self.bytes_per_iteration
        used = decoded * self.layout.width * self.params[0].element_size()
        row.update(train_loss=loss, grad_error=None, survivors=survivors,
                   bytes_to_ps=used, bytes_per_node=per_node,
                   total_bytes_per_node=tot["bytes_per_node"] + per_node,
                   wall_time=tot["wall_time"] + (end - start), iteration_time=end - start,
                   wait_time=waited, skipped=False)
        increments = {"survivors": survivors, "bytes_to_ps": used, "wall_time": end - start,
                      "wait_time": waited, "bytes_per_node": per_node}
        return StepResult(row, None, increments)

    def _lost(self, t: int, exc: RuntimeError) -> str:
        dead = [] if self.launch is None else self.launch.lost()
        who = f"rank {', '.join(map(str, dead))} exited" if dead else "a node is lost"
        left = self.n - max(len(dead), 1)
        fewer = ("" if left < 2 else
                 f", or on the remaining {left} by trainer.resume=true trainer.reshard=true "
                 f"assignment.n={left} (and assignment.s/straggler.s/trainer.s fitting n={left})")
        return (f"iteration {t}: {who} ({error_text(exc)}); trainer=sharded cannot continue "
                f"without all {self.n} shards: stopped at iteration {t} with a checkpoint: "
                "continue with fresh nodes by trainer.resume=true and the same hydra.run.dir"
                f"{fewer}")

    # ------------------------------------------------------------------ state and summary

    def state_dict(self) -> dict[str, Any]:
        """The coded runtime's state plus every shard's optimizer state (gathered at the
        periodic checkpoints; see the module docstring)."""
        state = super().state_dict()
        at, shards = ((self._loaded_at, self._loaded_shards) if self.gathered is None
                      else self.gathered)
        state.update(optimizer_shards=shards, optimizer_shards_iteration=at,
                     sharded_nodes=self.n, sharded_reshards=self.reshards)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; one of a run on another number of nodes is
        re-sharded (the optimizer states into this layout, α estimated again)."""
        shards = state.get("optimizer_shards")
        at = state.get("optimizer_shards_iteration")
        old_n = int(state.get("sharded_nodes") or (len(shards) if shards else self.n))
        reshards = list(state.get("sharded_reshards") or [])
        if old_n != self.n:
            shards = self._reshard(state, shards, at, old_n, reshards)
            state = {**state, "alpha": None,
                     "optimizer": (self.state.optimizer.state_dict() if shards is None
                                   else shards[0])}
        super().load_state_dict(state)
        self._loaded_shards, self._loaded_at, self.reshards = shards, at, reshards
        if old_n != self.n:
            self.estimate_alpha()  # of the new code (None without trainer.alpha_samples)

    def _reshard(self, state: dict[str, Any], shards: list[Any] | None, at: int | None,
                 old_n: int, reshards: list[dict[str, Any]]) -> list[Any] | None:
        """The checkpoint's shard states (``old_n`` owners) in this run's layout; records the
        event in ``reshards`` and logs it."""
        t = int(state["iteration"])
        require(self.settings.reshard, f"the checkpoint holds a run on {old_n} nodes, this "
                                       f"one has {self.n}: pass trainer.reshard=true")
        if shards is not None:
            shards = reshard_states(shards, ShardLayout(self.d, self.m, old_n), self.layout)
        stale = shards is not None and at is not None and at < t and any(
            s["optimizer"]["state"] for s in shards)
        reshards.append({"iteration": t, "from_n": old_n, "to_n": self.n,
                         "optimizer_state_iteration": at})
        log.info("re-sharding at iteration %d: %d -> %d nodes (parameters of iteration %d, "
                 "every shard's optimizer state of iteration %s re-sliced)", t, old_n, self.n,
                 t, "n/a" if at is None else at)
        if stale:
            log.warning("the optimizer state is the last periodic checkpoint's (iteration "
                        "%d), not iteration %d's: the steps between changed it and are "
                        "lost (exact for plain SGD)", at, t)
        return shards

    def summary_extra(self) -> dict[str, Any]:
        """summary.json fields of the sharded runtime."""
        tot = self.state.totals
        done = max(tot.iterations, 1)
        return {"runtime": self.name, "virtual_time": None, "wall_time": tot["wall_time"],
                "mean_iteration_time": tot["wall_time"] / done,
                "total_bytes_per_node": tot["bytes_per_node"],
                "sharded": {"nodes": self.n, "m": self.m, "target": self.target,
                            "launch": "torchrun" if torchrun_env() else "local",
                            "time_scale": self.time_scale, "timeout_s": self.settings.timeout_s,
                            "bytes_per_node_per_iteration": self.bytes_per_iteration,
                            "shard_sizes": self.layout.shard_sizes(),
                            "reshards": self.reshards}}


def _stragglers(settings: ShardedSettings, straggler: Any) -> int:
    """s: ``trainer.s``, else the straggler model's s (0 under ``wait_for_all``)."""
    if settings.wait_for_all:
        return 0
    return settings.s if settings.s is not None else int(getattr(straggler, "s", None) or 0)




def serve_rank(config: dict[str, Any], rank: int, world_size: int) -> int:
    """Rank ``rank`` > 0 of ``trainer=sharded``: build the same run from rank 0's
    configuration, report ready, serve. Returns the exit status."""
    return serve_built(lambda: ShardedRuntime(build_run(OmegaConf.create(config)), rank),
                       rank, world_size, "sharded")
