"""``trainer=local_sgd_simulated``: local SGD (and hierarchical SGD) on a simulated cluster —
n workers in one process, each with its own model copy and optimizer, averaging their
parameters every ``trainer.period`` local steps.

The maths is PyTorch's model averaging (``torch.distributed.optim.PostLocalSGDOptimizer``
with ``torch.distributed.algorithms.model_averaging.averagers.PeriodicModelAverager``, or
``hierarchical_model_averager.HierarchicalModelAverager`` when ``trainer.hierarchy`` is
set), written with plain tensors; iteration t is the averager's ``step``:

1. every worker j takes its minibatch of data subset D_j (``code=uncoded_wait``: the
   uncoded partition, rank j trains on D_j as under DDP) and forms
   g_j = ∇ loss_j(θ_j) · n / (k·b) (the mean of the g_j is the synchronous gradient);
2. t < ``trainer.warmup_steps``: every worker steps with the mean of the g_j (the warm-up's
   gradient all-reduce, PostLocalSGD's ``post_localSGD_hook``); afterwards with its own g_j,
   through its own optimizer (momentum and schedule state per worker, as on n ranks);
3. after the step, averaging as the averagers do: periodic: every worker's θ_j becomes the
   mean when t ≥ warmup and (t − warmup) % period = 0; hierarchical
   (``trainer.hierarchy`` = {period: group size}, increasing periods, the last group all n):
   for t ≥ warmup, the largest period dividing t picks the group size g and each block of
   g consecutive workers averages. Only parameters are averaged, never optimizer states.

``period = 1`` and ``warmup_steps = 0`` with plain SGD is synchronous data-parallel SGD
(DDP, or the simulated ``code=uncoded_wait`` run) to float tolerance.

Rows: ``train_loss`` is Σ_j loss_j / (k·b) at the workers' current parameters; test metrics
and the checkpoint's ``model`` are at the mean of the workers' parameters. The virtual clock
(time units of the straggler model) is the planner's local-SGD model
(:mod:`agc_pipeline.cluster.mitigations`) on the draws DDP's ranks sleep: worker j's local
step takes its wait-for-all finish time minus the communication time of d values
(``straggler.comm_per_unit``); a synchronisation (warm-up step or average) waits for the
slowest worker of the group and adds that communication time. With a ``cluster=`` model
(:mod:`agc_pipeline.cluster.costmodel`; straggler times then in seconds) the communication
of a synchronisation is instead the cluster's ring all-reduce of the d values among the
group's g workers, 2(g−1)·latency + 2(g−1)/g · d·b/bandwidth (the simulated DDP of the
arena, ``mitigation=ddp``: period 1). A row's ``virtual_time`` is the latest worker's time.

The keys and the averaging rule are ``trainer=local_sgd``'s
(:mod:`~agc_pipeline.training.local_sgd`: n processes over gloo with PyTorch's own averager
objects), whose losses this runtime's equal to float tolerance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from agc_pipeline.build import Plan, RunSpec
from agc_pipeline.coding.stragglers import VirtualClock
from agc_pipeline.errors import ConfigError
from agc_pipeline.training.averaging_clock import AveragingClock
from agc_pipeline.training.coded_step import TrainingDiverged
from agc_pipeline.training.ddp_settings import ring_allreduce_bytes
from agc_pipeline.training.local_sgd_settings import (
    LocalSgdSettings,
    averaging_group,
    check_local_plan,
)
from agc_pipeline.training.optim import Optimizer
from agc_pipeline.training.runtime import BaseRuntime
from agc_pipeline.training.settings import TrainerSettings
from agc_pipeline.training.state import RunState, StepResult, Totals, apply_gradient

__all__ = ["LocalSgdSimulatedRuntime"]


class LocalSgdState(RunState):
    """The run state of n workers: an optimizer per worker (``optimizers[0]`` is the shared
    ``optimizer``); :meth:`commit` steps each worker with its row of the (n, d) gradient and
    then calls ``after_steps(t)`` (averaging, the mean model). A step that would overflow
    restores every worker (the state stays the last good one)."""

    def __init__(self, optimizers: list[Optimizer], totals: Totals, clock: VirtualClock,
                 after_steps: Callable[[int], None]) -> None:
        super().__init__(optimizers[0], totals, clock)
        self.optimizers = optimizers
        self.after_steps = after_steps

    def commit(self, result: StepResult) -> None:
        gradients, t = result.gradient, self.iteration
        assert gradients is not None and gradients.shape[0] == len(self.optimizers)
        stepped: list[Optimizer] = []
        try:
            for optimizer, gradient in zip(self.optimizers, gradients, strict=True):
                apply_gradient(optimizer, gradient, t)
                stepped.append(optimizer)
        except TrainingDiverged:  # the workers that stepped go back: all or nothing
            for optimizer in stepped:
                optimizer.undo_step()
            raise
        self.after_steps(t)
        super().commit(StepResult(result.row, None, result.increments, result.virtual_time))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "worker_optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for optimizer, saved in zip(self.optimizers, state["worker_optimizers"], strict=True):
            optimizer.load_state_dict(saved)


class LocalSgdSimulatedRuntime(BaseRuntime):
    """n simulated workers with their own model copies; see the module docstring."""

    name: ClassVar[str] = "local_sgd_simulated"
    settings_class: ClassVar[type[TrainerSettings]] = LocalSgdSettings
    virtual_clock: ClassVar[bool] = True
    counters: ClassVar[dict[str, float]] = {
        "averages": 0,  # averaging rounds (any group size), warm-up all-reduces included
        "bytes_per_rank": 0}  # ring all-reduce bytes sent by each worker (nominal)

    @staticmethod
    def check_plan(plan: Plan) -> None:
        """Its settings against the rest of the run (:func:`check_local_plan`)."""
        check_local_plan(plan)

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        settings = spec.settings
        assert isinstance(settings, LocalSgdSettings)
        self.settings: LocalSgdSettings = settings
        a = spec.scheme.assignment
        self.n = a.n
        if self.workload.k != self.n:
            raise ConfigError(f"trainer=local_sgd_simulated needs one data subset per worker "
                              f"(k = n; got k = {self.workload.k}, n = {self.n})")
        self.replicas = [copy.deepcopy(self.model) for _ in range(self.n)]
        self.draws = AveragingClock(spec, settings, self.workload.subset_size, self.d)
        self.comm = self.draws.comm
        wire_bytes = next(self.model.parameters()).element_size()
        self.cluster = spec.cluster
        self.wire_bytes = wire_bytes
        self.bytes_per_average = ring_allreduce_bytes(self.n, self.d, wire_bytes)
        #: no batch statistics (BatchNorm): a warm-up step may take one pass over all samples
        self._per_sample_model = not any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                                         for module in self.model.modules())
        #: every worker's virtual time after its last step (time units)
        self.ready = np.zeros(self.n)
        optimizers = [Optimizer(list(r.parameters()), spec.make_optimizer,
                                spec.make_scheduler, settings.clip_grad_norm)
                      for r in self.replicas]
        self.state = LocalSgdState(optimizers, Totals.declare(self.counters), VirtualClock(),
                                   self._after_steps)

    # ------------------------------------------------------------------ one iteration

    def compute_times(self, t: int) -> np.ndarray:
        """Every worker's local-step time of iteration t (:class:`AveragingClock`)."""
        return self.draws.compute_times(t)

    def synchronised(self, ready: np.ndarray, group: int) -> np.ndarray:
        """Each block of ``group`` consecutive workers waits for its slowest, then all-reduces."""
        blocks = ready.reshape(-1, group)
        return np.repeat(blocks.max(axis=1) + self.sync_time(group), group)

    def sync_time(self, group: int) -> float:
        """The communication of one synchronisation of ``group`` workers: the straggler
        model's time of d values, or with ``cluster=`` its ring all-reduce."""
        if self.cluster is None:
            return self.comm
        return float(self.cluster.ring_allreduce_time(group, self.d, self.wire_bytes))

    def step(self, evaluate: bool = False) -> StepResult:
        """Iteration ``state.iteration``: the metrics row and the (n, d) worker gradients."""
        work, t, n = self.workload, self.state.iteration, self.n
        row: dict[str, Any] = {"iteration": t}
        if evaluate:
            row.update(work.evaluate())
        x, y = work.minibatch(t)
        warmup = t < self.settings.warmup_steps
        if warmup and self._per_sample_model:
            losses, stacked = self._warmup_gradient(x, y)
        else:
            losses, stacked = self._worker_gradients(x, y)
            if warmup:  # the warm-up's gradient all-reduce: every worker steps with the mean
                stacked = (stacked / n).sum(0).expand(n, -1)
        group = n if warmup else averaging_group(t, self.settings, n)
        ready = self.ready + self.compute_times(t)
        if group is not None:
            ready = self.synchronised(ready, group)
        virtual_time = float(ready.max())
        sent = self.bytes_per_average if group is not None else 0
        row.update(train_loss=sum(losses) / work.batch_samples, grad_error=None,
                   survivors=n, averaged=averaging_group(t, self.settings, n), bytes_per_rank=sent,
                   total_bytes_per_rank=self.state.totals["bytes_per_rank"] + sent,
                   virtual_time=virtual_time,
                   iteration_time=virtual_time - float(self.ready.max()), skipped=False)
        increments = {"survivors": n, "averages": int(group is not None),
                      "bytes_per_rank": sent}
        self._pending_ready = ready
        return StepResult(row, stacked, increments, virtual_time)

    def _worker_gradients(self, x: torch.Tensor,
                          y: torch.Tensor) -> tuple[list[float], torch.Tensor]:
        """Every worker's minibatch loss and gradient g_j at its own parameters, (n, d)."""
        scale = self.n / self.workload.batch_samples
        losses, gradients = [], []
        for j, replica in enumerate(self.replicas):
            params = list(replica.parameters())
            loss = replica.loss_sum(replica(x[j]), y[j])
            grads = torch.autograd.grad(loss * scale, params)
            gradients.append(torch.cat([g.reshape(-1) for g in grads]))
            losses.append(float(loss.detach()))
        return losses, torch.stack(gradients)

    def _warmup_gradient(self, x: torch.Tensor,
                         y: torch.Tensor) -> tuple[list[float], torch.Tensor]:
        """A warm-up step (all steps so far synchronous, so every replica holds the same
        parameters and optimizer state): the mean of the g_j in one pass over the n workers'
        samples — Σ_j ∇ loss_j = ∇ Σ_j loss_j for a model without batch statistics (the
        simulated DDP, ``mitigation=ddp``). Equal to the per-worker mean to float tolerance."""
        replica = self.replicas[0]
        params = list(replica.parameters())
        loss = replica.loss_sum(replica(x.flatten(0, 1)), y.flatten(0, 1))
        grads = torch.autograd.grad(loss / self.workload.batch_samples, params)
        mean = torch.cat([g.reshape(-1) for g in grads])
        return [float(loss.detach())], mean.expand(self.n, -1)

    def _after_steps(self, t: int) -> None:
        """After every worker's optimizer step of iteration t (the commit): average as the
        averager would, advance the workers' clocks and set the mean model."""
        group = averaging_group(t, self.settings, self.n)
        with torch.no_grad():
            flats = torch.stack([parameters_to_vector(r.parameters()) for r in self.replicas])
            if group is not None:  # utils.average_parameters: Σ_j (θ_j / g)
                blocks = flats.reshape(self.n // group, group, -1)
                means = (blocks / group).sum(1, keepdim=True)
                flats = means.expand_as(blocks).reshape(self.n, -1)
                for replica, flat in zip(self.replicas, flats, strict=True):
                    vector_to_parameters(flat.clone(), replica.parameters())
            vector_to_parameters((flats / self.n).sum(0), self.model.parameters())
        self.ready = self._pending_ready

    # ------------------------------------------------------------------ state and summary

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "replicas": [r.state_dict() for r in self.replicas],
                "ready": self.ready.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for replica, saved in zip(self.replicas, state["replicas"], strict=True):
            replica.load_state_dict(saved)
        self.ready = np.asarray(state["ready"], dtype=np.float64)

    def summary_extra(self) -> dict[str, Any]:
        """summary.json fields of this runtime."""
        s, tot = self.settings, self.state.totals
        return {"runtime": self.name, "total_bytes_to_ps": None,
                "total_bytes_per_rank": tot["bytes_per_rank"],
                "local_sgd": {"workers": self.n, "period": s.period,
                              "warmup_steps": s.warmup_steps,
                              "hierarchy": None if s.hierarchy is None else
                              {str(p): g for p, g in s.hierarchy.items()},
                              "averages": tot["averages"], "simulated": True,
                              "bytes_per_rank_per_average": self.bytes_per_average}}
