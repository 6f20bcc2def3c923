"""``trainer=local_sgd``: local SGD (and hierarchical SGD) on n processes over gloo, with
PyTorch's own model averaging — ``torch.distributed.algorithms.model_averaging.averagers.
PeriodicModelAverager``, or ``hierarchical_model_averager.HierarchicalModelAverager`` when
``trainer.hierarchy`` is set — and the warm-up of ``torch.distributed.optim.
PostLocalSGDOptimizer`` (synchronous steps: the gradients all-reduced, as its
``post_localSGD_hook`` does).

Like DDP it is uncoded (``code=uncoded_wait``): rank r trains on data subset D_r with its own
optimizer (momentum and schedule per rank); rank 0 is the app's process and drives the
shared loop, ranks > 0 serve (:mod:`~agc_pipeline.training.launch`, as
:mod:`~agc_pipeline.training.ddp`). Iteration t on every rank:

1. the pending average: PyTorch's averager decides, for the step before t, whether (and in
   which group) the parameters are averaged — PeriodicModelAverager averages after step s
   when s ≥ warm-up and (s − warm-up) % period = 0; HierarchicalModelAverager
   (``trainer.hierarchy`` = {period: group size}) for s ≥ warm-up at the largest period
   dividing s. It runs at the start of iteration t (and at the session's end), so that a
   checkpoint never holds half an iteration;
2. sleep the straggler model's compute time of worker r (the wait-for-all draw DDP's ranks
   sleep, less the communication of d values; × ``trainer.time_scale``);
3. forward and backward on its minibatch: g_r = ∇ loss_r · n / (k·b); during the warm-up
   (t < ``trainer.warmup_steps``) the mean of the g_r (one all-reduce);
4. its own optimizer step (rank 0: the shared loop's commit; ranks > 0: :meth:`serve`).

``trainer.period=1`` with plain SGD is synchronous SGD (DDP's losses to float tolerance).
Rows (rank 0): ``train_loss`` (Σ_r loss_r / (k·b), one 8-byte all-reduce, only on logged
iterations where the ranks are in step anyway: :meth:`LocalSgdRuntime.logs_loss`),
``wall_time``, ``iteration_time``, ``sleep_time``, ``averaged`` (the group size averaged at
the start of the iteration, or null), ``modelled_time`` (the planner's
local-SGD clock on the same draws, :mod:`~agc_pipeline.training.local_sgd_simulated`, time
units), ``bytes_per_rank`` (ring all-reduce of d values per average). Test metrics are rank
0's parameters (the mean right after an average).

Checkpoints: rank 0 writes ``checkpoint.pt``; every rank r > 0 writes its own model and
optimizer (``ranks/rank<r>.pt`` in the run dir) at the same cadence (start,
``trainer.checkpoint_every``, end). A resumed rank takes its own file when it holds rank 0's
iteration (bit-identical resume), else rank 0's parameters and optimizer state (after a lost
rank: the local models since the last average are lost). A lost rank stops the run with a
checkpoint and exit status 4, as DDP.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
from torch.distributed.algorithms.model_averaging.hierarchical_model_averager import (
    HierarchicalModelAverager,
)

from agc_pipeline.build import Plan, RunSpec, build_run
from agc_pipeline.coding.stragglers import Delay
from agc_pipeline.errors import require
from agc_pipeline.training.averaging_clock import AveragingClock
from agc_pipeline.training.batches import batch_indices, take
from agc_pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from agc_pipeline.training.coded_step import TrainingDiverged
from agc_pipeline.training.ddp_settings import ring_allreduce_bytes
from agc_pipeline.training.distributed import DEFAULT_TIME_SCALE, WorkersLost
from agc_pipeline.training.launch import EXIT_PEER_LOST, Launch, rank_session, serve_built
from agc_pipeline.training.local_sgd_settings import (
    LocalSgdProcessSettings,
    averaging_group,
    check_local_plan,
)
from agc_pipeline.training.optim import Optimizer
from agc_pipeline.training.runtime import BaseRuntime
from agc_pipeline.training.settings import TrainerSettings
from agc_pipeline.training.state import RunState, StepResult, Totals
from agc_pipeline.training.wire import error_text

__all__ = ["LocalSgdProcessSettings", "LocalSgdRuntime", "serve_rank"]

log = logging.getLogger("agc_pipeline.train")



class _AveragingState(RunState):
    """The run state plus the averager's position: ``checked`` = the steps whose averaging
    decision has run (checkpointed)."""

    def __init__(self, optimizer: Optimizer, totals: Totals) -> None:
        super().__init__(optimizer, totals)
        self.checked = 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "averaged_through": self.checked}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.checked = int(state["averaged_through"])


class LocalSgdRuntime(BaseRuntime):
    """One local-SGD rank (rank 0: the app's process and the shared loop; a rank r > 0 holds
    only D_r and runs :meth:`serve`). See the module docstring."""

    name: ClassVar[str] = "local_sgd"
    settings_class: ClassVar[type[TrainerSettings]] = LocalSgdProcessSettings
    processes: ClassVar[bool] = True
    preload: ClassVar[tuple[str, ...]] = ("agc_pipeline.training.local_sgd",)
    counters: ClassVar[dict[str, float]] = {
        "wall_time": 0.0, "sleep_time": 0.0,
        "averages": 0,  # averages and warm-up all-reduces
        "bytes_per_rank": 0,  # ring all-reduce bytes sent by each rank (nominal)
        "modelled_time": 0.0}  # the planner's local-SGD clock (time units)

    @staticmethod
    def rank_main(config: dict[str, Any], rank: int, world_size: int) -> int:
        """A rank > 0 (:func:`serve_rank`)."""
        return serve_rank(config, rank, world_size)

    @staticmethod
    def check_plan(plan: Plan) -> None:
        """``trainer=local_sgd``'s rules against the rest of the run."""
        check_local_plan(plan)

    def __init__(self, spec: RunSpec, rank: int = 0) -> None:
        super().__init__(spec, held=None if rank == 0 else [rank])
        settings = spec.settings
        assert isinstance(settings, LocalSgdProcessSettings)
        self.settings: LocalSgdProcessSettings = settings
        a = spec.scheme.assignment
        self.n, self.rank = a.n, rank
        scale = settings.time_scale
        if scale is None:
            straggler = spec.straggler
            scale = straggler.time_scale if isinstance(straggler, Delay) else DEFAULT_TIME_SCALE
        self.time_scale = float(scale)
        self.draws = AveragingClock(spec, settings, self.workload.subset_size, self.d)
        self.comm = self.draws.comm
        wire_bytes = next(self.model.parameters()).element_size()
        self.bytes_per_average = ring_allreduce_bytes(self.n, self.d, wire_bytes)
        optimizer = Optimizer(list(self.model.parameters()), spec.make_optimizer,
                              spec.make_scheduler, settings.clip_grad_norm)
        self.state = _AveragingState(optimizer, Totals.declare(self.counters))
        self.ready = np.zeros(self.n)  #: rank 0: the modelled clock of every worker (units)
        self.launch: Launch | None = None
        self.control: Any = None
        self.averager: PeriodicModelAverager | HierarchicalModelAverager | None = None
        self.run_dir: Path | None = None
        i = self.workload.held.index(rank)
        self.x, self.y = self.workload.x[i:i + 1], self.workload.y[i:i + 1]

    # ------------------------------------------------------------------ rank 0

    @contextlib.contextmanager
    def session(self, config: dict[str, Any], run_dir: Path) -> Iterator[None]:
        """Start (or join) ranks 1..n−1 and connect them; after the loop, the last pending
        average, a barrier and the ranks' exit."""
        self.run_dir = Path(run_dir)
        with rank_session(self, config, run_dir, "gloo", "local-SGD", self._connect,
                          self._stop):
            yield

    def _stop(self, launch: Launch, completed: bool) -> None:
        grace = min(self.settings.timeout_s, 30.0)
        if completed and self.control is not None:
            try:
                self._catch_up(self.state.iteration)
                dist.barrier(group=self.control)
            except RuntimeError as exc:
                log.warning("local-SGD ranks did not all finish cleanly: %s", error_text(exc))
        if not completed and dist.is_initialized():
            dist.destroy_process_group()
        launch.stop(grace)
        self.control = self.launch = self.averager = None

    def step(self, evaluate: bool = False) -> StepResult:
        """Iteration ``state.iteration`` on every rank: rank 0's row and its own gradient."""
        require(self.control is not None, "LocalSgdRuntime.step runs inside session()")
        t = self.state.iteration
        start = time.perf_counter()
        try:
            averaged = self._catch_up(t)
            row: dict[str, Any] = {"iteration": t}
            if evaluate:
                row.update(self.workload.evaluate())
            loss, slept, gradient = self._run(t)
        except RuntimeError as exc:
            raise WorkersLost(self._lost(t, exc)) from None
        end = time.perf_counter()
        modelled = self._modelled(t)
        tot = self.state.totals
        sent = self.bytes_per_average if averaged is not None or t < self.settings.warmup_steps \
            else 0
        row.update(train_loss=loss, grad_error=None, survivors=self.n, averaged=averaged,
                   bytes_per_rank=sent, total_bytes_per_rank=tot["bytes_per_rank"] + sent,
                   wall_time=tot["wall_time"] + (end - start), iteration_time=end - start,
                   sleep_time=slept, modelled_time=tot["modelled_time"] + modelled,
                   skipped=False)
        increments = {"survivors": self.n, "wall_time": end - start, "sleep_time": slept,
                      "bytes_per_rank": sent, "averages": int(sent > 0),
                      "modelled_time": modelled}
        return StepResult(row, gradient, increments)

    def _modelled(self, t: int) -> float:
        """The planner's local-SGD clock: iteration t's increment of the latest worker's time
        (each worker's compute; the group's slowest at a synchronisation, plus d values' comm).
        Advances ``ready`` (rank 0's bookkeeping; checkpointed)."""
        before = float(self.ready.max())
        ready = self.ready + self.compute_times(t)
        group = self.n if t < self.settings.warmup_steps else \
            averaging_group(t, self.settings, self.n)
        if group is not None:
            ready = np.repeat(ready.reshape(-1, group).max(axis=1) + self.comm, group)
        self.ready = ready
        return float(ready.max()) - before

    def _lost(self, t: int, exc: RuntimeError) -> str:
        dead = [] if self.launch is None else self.launch.lost()
        who = f"rank {', '.join(map(str, dead))} exited" if dead else "a rank is gone"
        return (f"iteration {t}: {who} ({error_text(exc)}); local SGD cannot continue without "
                f"all {self.n} ranks: stopped at iteration {t} with a checkpoint: continue with "
                "trainer.resume=true and the same hydra.run.dir")

    # ------------------------------------------------------------------ every rank

    def _connect(self) -> None:
        """The control group; rank 0's iteration, parameters and optimizer state (a rank
        with its own state at that iteration keeps it); PyTorch's averager."""
        s, rank, state = self.settings, self.rank, self.state
        self.control = dist.new_group(backend="gloo",
                                      timeout=datetime.timedelta(seconds=s.timeout_s))
        box: list[Any] = [None]
        if rank == 0:
            box[0] = {"iteration": state.iteration, "checked": state.checked,
                      "optimizer": state.optimizer.state_dict(), "run_dir": str(self.run_dir)}
        dist.broadcast_object_list(box, src=0, group=self.control)
        for p in self.model.parameters():
            dist.broadcast(p.data, src=0, group=self.control)
        if rank > 0:
            self.run_dir = Path(box[0]["run_dir"])
            state.iteration, state.checked = int(box[0]["iteration"]), int(box[0]["checked"])
            own = self._rank_file()
            saved = load_checkpoint(own) if own.is_file() else None
            if saved is not None and int(saved["iteration"]) == state.iteration:
                self.model.load_state_dict(saved["model"])
                state.optimizer.load_state_dict(saved["optimizer"])
            else:
                state.optimizer.load_state_dict(box[0]["optimizer"])
                if state.iteration > 0:
                    print(f"agc-local-sgd rank {rank}: no state of iteration "
                          f"{state.iteration}: starting from rank 0's parameters",
                          file=sys.stderr, flush=True)
            self._save_rank()
        if s.hierarchy is None:
            self.averager = PeriodicModelAverager(s.period, s.warmup_steps, self.control)
        else:
            self.averager = HierarchicalModelAverager(OrderedDict(s.hierarchy), s.warmup_steps,
                                                      self.control)
        # every rank has made its groups (through the rendezvous store) before rank 0
        # removes the store's file
        dist.barrier(group=self.control)

    def _catch_up(self, t: int) -> int | None:
        """Run the averager's decisions for the steps before t not yet run (the pending
        average); the group size that averaged, or None."""
        assert self.averager is not None
        group = None
        params = list(self.model.parameters())
        while self.state.checked < t:
            step = self.state.checked
            self.averager.step = step
            # the averagers average the parameters that have a gradient (after
            # PostLocalSGDOptimizer's step, all of them); the loop's optimizer clears them
            for p in params:
                p.grad = torch.zeros_like(p)
            self.averager.average_parameters(params)
            for p in params:
                p.grad = None
            group = averaging_group(step, self.settings, self.n)
            self.state.checked = step + 1
        return group

    def compute_times(self, t: int) -> np.ndarray:
        """Every worker's local-step time of iteration t (:class:`AveragingClock`)."""
        return self.draws.compute_times(t)

    def _run(self, t: int) -> tuple[float | None, float, torch.Tensor]:
        """Sleep, forward, backward (warm-up: the mean gradient): ``(train loss or None,
        seconds slept, this rank's gradient)``."""
        s, work, n = self.settings, self.workload, self.n
        if s.fault.kill_worker == self.rank and t >= s.fault.at_iteration:
            print(f"agc-local-sgd rank {self.rank}: trainer.fault.kill_worker: exiting abruptly "
                  f"at iteration {t}", file=sys.stderr, flush=True)
            os._exit(0)  # status 0: torchrun's agent would stop every rank on a failure
        slept = float(self.compute_times(t)[self.rank]) * self.time_scale
        if slept > 0:
            time.sleep(slept)
        index = batch_indices(work.seed, t, [self.rank], work.subset_size, s.batch_size)
        x, y = take(self.x, index)[0], take(self.y, index)[0]
        params = list(self.model.parameters())
        loss = self.model.loss_sum(self.model(x), y)
        grads = torch.autograd.grad(loss * (n / work.batch_samples), params)
        flat = torch.cat([g.reshape(-1) for g in grads])
        if t < s.warmup_steps:  # the warm-up's gradient all-reduce (allreduce_hook's maths)
            flat.div_(n)
            dist.all_reduce(flat, group=self.control)
        value = None
        if self.logs_loss(t):
            total = torch.tensor([float(loss.detach())], dtype=torch.float64)
            dist.all_reduce(total, group=self.control)
            value = float(total) / work.batch_samples
        return value, slept, flat

    def logs_loss(self, t: int) -> bool:
        """Whether iteration t's row has ``train_loss`` (one all-reduce, which waits for every
        rank): logged iterations (``trainer.log_every``) where the ranks are in step anyway —
        the first and the last, warm-up steps and those that start with an average of all n —
        so that the loss never synchronises the local steps."""
        s, n = self.settings, self.n
        logged = t % s.log_every == 0 or t == s.iterations - 1
        in_step = (t in (0, s.iterations - 1) or t <= s.warmup_steps
                   or averaging_group(t - 1, s, n) == n)
        return logged and in_step

    def _rank_file(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "ranks" / f"rank{self.rank}.pt"

    def _save_rank(self) -> None:
        """A rank > 0's own model and optimizer (its share of the checkpoint)."""
        path = self._rank_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, {"iteration": self.state.iteration,
                               "model": self.model.state_dict(),
                               "optimizer": self.state.optimizer.state_dict()})

    def serve(self) -> int:
        """A rank > 0: connect, run and commit the remaining iterations (saving its state at
        the loop's cadence), the last pending average, wait for every rank."""
        s = self.settings
        try:
            self._connect()
            while self.state.iteration < s.iterations:
                t = self.state.iteration
                self._catch_up(t)
                *_, gradient = self._run(t)
                self.state.commit(StepResult({}, gradient))
                if s.checkpoint_every and self.state.iteration % s.checkpoint_every == 0:
                    self._save_rank()
            self._catch_up(self.state.iteration)
            self._save_rank()
            dist.barrier(group=self.control)
        except TrainingDiverged:
            return 0
        except RuntimeError as exc:
            print(f"agc-local-sgd rank {self.rank}: rank 0 or a peer is gone "
                  f"({error_text(exc)}); exiting", file=sys.stderr, flush=True)
            os._exit(EXIT_PEER_LOST)
        dist.destroy_process_group()
        return 0

    # ------------------------------------------------------------------ state and summary

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ready": self.ready.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ready = np.asarray(state["ready"], dtype=np.float64)

    def summary_extra(self) -> dict[str, Any]:
        """summary.json fields of this runtime."""
        s, tot = self.settings, self.state.totals
        done = max(tot.iterations, 1)
        return {"runtime": self.name, "virtual_time": None, "wall_time": tot["wall_time"],
                "mean_iteration_time": tot["wall_time"] / done, "total_bytes_to_ps": None,
                "total_bytes_per_rank": tot["bytes_per_rank"],
                "mean_sleep_time": tot["sleep_time"] / done,
                "local_sgd": {"workers": self.n, "period": s.period,
                              "warmup_steps": s.warmup_steps,
                              "hierarchy": None if s.hierarchy is None else
                              {str(p): g for p, g in s.hierarchy.items()},
                              "averages": tot["averages"], "simulated": False,
                              "modelled_time": tot["modelled_time"],
                              "time_scale": self.time_scale}}




def serve_rank(config: dict[str, Any], rank: int, world_size: int) -> int:
    """Rank ``rank`` > 0: build the run from rank 0's configuration, report ready, serve."""
    return serve_built(lambda: LocalSgdRuntime(build_run(OmegaConf.create(config)), rank),
                       rank, world_size, "local-SGD")
