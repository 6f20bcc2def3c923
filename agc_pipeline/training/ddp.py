"""``trainer=ddp``: the baseline users run today — plain data-parallel SGD with
``torch.nn.parallel.DistributedDataParallel`` over n processes (gloo on CPU, NCCL on GPUs).

It needs ``code=uncoded_wait`` (A = I, m = 1, every worker waited for; Section II's uncoded
baseline): rank r trains on data subset D_r of the same split of the samples into k = n
subsets that every code uses, taking ``trainer.batch_size`` samples of it per iteration (the
same minibatches as the simulated trainer, :mod:`~agc_pipeline.training.batches`). Each
iteration, on every rank:

1. sleep the straggler model's compute time of worker r for iteration t (× the time scale):
   the draw of the simulated trainer and of ``trainer=distributed``'s workers under
   ``trainer.wait_for_all`` — e.g. ``straggler=slowdown``, compute ∝ the samples processed,
   r× slower with probability p;
2. forward and backward on its minibatch; DDP all-reduces (averages) the gradients in buckets
   during the backward pass (ring all-reduce: 2(n−1)/n · d · 4 bytes sent and as many
   received per rank in float32 — the nominal count, logged as ``bytes_per_rank``);
3. the same optimizer step on every rank, committed as every runtime's
   (:meth:`~agc_pipeline.training.state.RunState.commit`: schedule, clipping, the NaN/Inf
   guard; rank 0 through the shared loop, ranks > 0 in :meth:`DdpRuntime.serve`). The
   averaged gradient is the gradient of the k·b samples, so the losses equal the simulated
   trainer's with ``code=uncoded_wait`` to float tolerance; ``train_loss`` (one 8-byte
   all-reduce) is formed on logged iterations only.

Rank 0 is the app's process: it starts ranks 1..n−1 (or joins them under torchrun,
``--nproc_per_node=n``) through :mod:`~agc_pipeline.training.launch`, broadcasts its model
(DDP's own broadcast) and optimizer state — so a resumed run continues on every rank — and
alone writes metrics rows, checkpoints, summary.json and W&B. One zero-loss forward/backward
at the start fixes DDP's bucket layout (DDP rebuilds its buckets after its first backward),
so a resumed run sums every gradient in the order of an uninterrupted one: bit-identical.
Every rank computes with one thread, so the replicas' optimizer steps agree bit for bit.
A rank r > 0 holds only its data subset D_r (its own
:class:`~agc_pipeline.training.workload.Workload`); no rank forms an encoding matrix per
iteration (the delays come from :func:`~agc_pipeline.training.coded.draw_stragglers` with
the uncoded B, built once).

DDP cannot continue without one of its ranks: a collective that fails (gloo: a peer's
connection closed) or stays incomplete for ``trainer.timeout_s`` raises
:class:`~agc_pipeline.training.distributed.WorkersLost` on rank 0; the loop saves the
checkpoint of the last completed iteration and the app exits with status 4 (continue with
``trainer.resume=true``). The other ranks exit (status 3) when rank 0 or a peer is gone.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from agc_pipeline.build import Plan, RunSpec, build_run
from agc_pipeline.coding.stragglers import Delay, worker_samples
from agc_pipeline.errors import require
from agc_pipeline.training.batches import batch_indices, take
from agc_pipeline.training.coded import draw_stragglers
from agc_pipeline.training.coded_step import CodedStep, TrainingDiverged, block_length
from agc_pipeline.training.ddp_settings import DdpSettings, ring_allreduce_bytes
from agc_pipeline.training.distributed import DEFAULT_TIME_SCALE, WorkersLost
from agc_pipeline.training.launch import (
    EXIT_PEER_LOST,
    Launch,
    rank_device,
    rank_session,
    serve_built,
    torchrun_env,
)
from agc_pipeline.training.runtime import BaseRuntime
from agc_pipeline.training.settings import TrainerSettings
from agc_pipeline.training.state import StepResult
from agc_pipeline.training.wire import error_text
from agc_pipeline.validation import is_int

__all__ = ["DdpRuntime", "DdpSettings", "ring_allreduce_bytes", "serve_rank"]

log = logging.getLogger("agc_pipeline.train")





class DdpRuntime(BaseRuntime):
    """One DDP rank (rank 0: the app's process, which also drives the shared loop; a rank
    r > 0 holds only its data subset D_r).

    No code is decoded (``coded = False``: the rules require ``code=uncoded_wait``); on rank
    0 :meth:`session` starts the other ranks around the loop and :meth:`step` runs one
    iteration; ranks > 0 run :meth:`serve`.
    """

    name: ClassVar[str] = "ddp"
    settings_class: ClassVar[type[TrainerSettings]] = DdpSettings
    processes: ClassVar[bool] = True
    preload: ClassVar[tuple[str, ...]] = ("agc_pipeline.training.ddp",)
    counters: ClassVar[dict[str, float]] = {
        "wall_time": 0.0,  # sum of the iterations' wall-clock times (rank 0)
        "sleep_time": 0.0,  # injected (modelled) compute time slept by rank 0
        "bytes_per_rank": 0}  # ring all-reduce bytes sent by each rank

    @staticmethod
    def rank_main(config: dict[str, Any], rank: int, world_size: int) -> int:
        """A rank > 0 (:func:`serve_rank`)."""
        return serve_rank(config, rank, world_size)

    @staticmethod
    def check_plan(plan: Plan) -> None:
        """``trainer=ddp``'s rules against the rest of the run (:func:`agc_pipeline.rules.
        check_plan` calls them before any data or model is built): one rank per worker, all
        of them needed."""
        settings, n = plan.settings, plan.scheme.n
        require(settings.min_workers in (None, n),
                f"trainer.min_workers={settings.min_workers}: trainer=ddp needs all n = {n} "
                "ranks (DDP cannot continue without one; a lost rank stops the run with a "
                "checkpoint, exit status 4); leave it null")
        kill = settings.fault.kill_worker
        require(kill is None or (is_int(kill) and 1 <= kill < n),
                f"trainer.fault.kill_worker must be null or a rank 1..n-1 = {n - 1} for "
                f"trainer=ddp (rank 0 is the app; got {kill!r})")

    def __init__(self, spec: RunSpec, rank: int = 0) -> None:
        super().__init__(spec, held=None if rank == 0 else [rank])
        settings = spec.settings
        assert isinstance(settings, DdpSettings)
        self.settings: DdpSettings = settings
        a = spec.scheme.assignment
        n = self.n = a.n
        self.rank = rank
        #: DDP's gradient buckets after its rebuild (read when the session ends)
        self.buckets: int | None = None
        scale = settings.time_scale
        if scale is None:
            straggler = spec.straggler
            scale = straggler.time_scale if isinstance(straggler, Delay) else DEFAULT_TIME_SCALE
        self.time_scale = float(scale)
        self.cuda = self.settings.torch_device.type == "cuda"
        wire_bytes = next(self.model.parameters()).element_size()
        self.bytes_per_iteration = ring_allreduce_bytes(n, self.d, wire_bytes)
        #: the straggler model's view (A = I, m = 1): the uncoded B, built once
        code = CodedStep(spec.scheme, spec.decoder, self.d, spec.seed)
        work = worker_samples(a.matrix, settings.batch_size or self.workload.subset_size)
        self._context = code.straggler_context(code.encoding(0), a.matrix, work)
        self.state = self._make_state()
        self.launch: Launch | None = None
        self.ddp: DistributedDataParallel | None = None
        self.control: Any = None  #: gloo group: train-loss sums, state broadcast, barrier
        i = self.workload.held.index(rank)  #: this rank's data subset D_r: (1, |D_r|, …)
        self.x, self.y = self.workload.x[i:i + 1], self.workload.y[i:i + 1]

    # ------------------------------------------------------------------ rank 0

    @contextlib.contextmanager
    def session(self, config: dict[str, Any], run_dir: Path) -> Iterator[None]:
        """Start (or join) ranks 1..n−1, sending them the resolved ``config``, and connect
        them for the loop; stop them after it."""
        with rank_session(self, config, run_dir, self.settings.backend, "DDP", self._connect,
                          self._stop):
            yield

    def _stop(self, launch: Launch, completed: bool) -> None:
        """After the last iteration: a barrier (every rank done), then reap the ranks. After
        an error or a stop: destroy the group at once (the others see their links close)."""
        grace = min(self.settings.timeout_s, 30.0)
        if completed and self.control is not None:
            try:
                dist.barrier(group=self.control)
            except RuntimeError as exc:
                log.warning("DDP ranks did not all finish cleanly: %s", error_text(exc))
        if not completed and dist.is_initialized():
            dist.destroy_process_group()
        launch.stop(grace)
        if self.ddp is not None:  # read once, off the iterations' path
            self.buckets = self._bucket_count()
        self.ddp = self.control = self.launch = None

    def step(self, evaluate: bool = False) -> StepResult:
        """Run iteration ``state.iteration`` on every rank: rank 0's metrics row and its
        averaged gradient (every rank steps with the same one)."""
        require(self.ddp is not None, "DdpRuntime.step runs inside session()")
        t = self.state.iteration
        row: dict[str, Any] = {"iteration": t}
        start = time.perf_counter()
        if evaluate:
            row.update(self.workload.evaluate())
        try:
            loss, slept, compute, modelled, gradient = self._run(t)
        except RuntimeError as exc:
            raise WorkersLost(self._lost(t, exc)) from None
        end = time.perf_counter()
        tot, per_rank = self.state.totals, self.bytes_per_iteration
        row.update(train_loss=loss, grad_error=None, survivors=self.n, live_workers=self.n,
                   bytes_per_rank=per_rank, total_bytes_per_rank=tot["bytes_per_rank"] + per_rank,
                   wall_time=tot["wall_time"] + (end - start), iteration_time=end - start,
                   sleep_time=slept, compute_time=compute, modelled_time=modelled,
                   skipped=False)
        increments = {"survivors": self.n, "wall_time": end - start, "sleep_time": slept,
                      "bytes_per_rank": per_rank}
        return StepResult(row, gradient, increments)

    def _lost(self, t: int, exc: RuntimeError) -> str:
        dead = [] if self.launch is None else self.launch.lost()
        who = f"rank {', '.join(map(str, dead))} exited" if dead else "a rank is gone"
        return (f"iteration {t}: {who} ({error_text(exc)}); DDP cannot continue without all "
                f"{self.n} ranks: stopped at iteration {t} with a checkpoint: continue with "
                "fresh ranks by trainer.resume=true and the same hydra.run.dir")

    # ------------------------------------------------------------------ every rank

    def _connect(self) -> None:
        """Groups, rank 0's optimizer state and iteration, DDP (which broadcasts rank 0's
        parameters) and the bucket layout."""
        s, rank, state = self.settings, self.rank, self.state
        timeout = datetime.timedelta(seconds=s.timeout_s)
        self.control = dist.new_group(backend="gloo", timeout=timeout)
        group = (self.control if s.backend == "gloo"
                 else dist.new_group(backend="nccl", timeout=timeout))
        box: list[Any] = [None]
        if rank == 0:
            box[0] = {"iteration": state.iteration, "optimizer": state.optimizer.state_dict()}
        dist.broadcast_object_list(box, src=0, group=self.control)
        if rank > 0:
            state.iteration = int(box[0]["iteration"])
            state.optimizer.load_state_dict(box[0]["optimizer"])
        # CUDA: rank r > 0 made its GPU current before building (serve_rank); rank 0 uses
        # the current one (cuda:0, or LOCAL_RANK 0 under torchrun)
        device_ids = [next(self.model.parameters()).device.index] if self.cuda else None
        self.ddp = DistributedDataParallel(self.model, device_ids=device_ids,
                                           process_group=group, bucket_cap_mb=s.bucket_cap_mb)
        self._settle_buckets()

    def _settle_buckets(self) -> None:
        """One zero-loss forward/backward on one sample: DDP rebuilds its buckets (in the
        order the gradients became ready) after its first backward, so every iteration of a
        fresh or a resumed run all-reduces in the same layout (the same summation order)."""
        assert self.ddp is not None
        model = self.model
        out = self.ddp(self.x[0, :1])
        (model.loss_sum(out, self.y[0, :1]) * 0.0).backward()
        for p in model.parameters():
            p.grad = None

    def _bucket_count(self) -> int | None:
        """How many all-reduces DDP splits the gradients into (its logging data; None where
        this PyTorch does not report it)."""
        try:
            sizes = str(self.ddp._get_ddp_logging_data()["bucket_sizes"])  # type: ignore[union-attr]
        except (AttributeError, KeyError, RuntimeError):
            return None
        return len([part for part in sizes.split(",") if part.strip()]) or None

    def modelled_times(self, t: int) -> np.ndarray:
        """Every worker's modelled compute (+ communication) time of iteration t in time
        units: the straggler model's draw with every worker waited for."""
        length = block_length(self.d, 1)  # m = 1: a worker would send all d values
        return draw_stragglers(self.spec.straggler, t, self.n, length, self._context,
                               self.settings).finish_times

    def _run(self, t: int) -> tuple[float | None, float, float, float, torch.Tensor]:
        """Iteration t on this rank: ``(train loss or None, seconds slept, seconds of
        forward/backward/all-reduce, modelled iteration time in time units, the averaged
        gradient)``."""
        s, work = self.settings, self.workload
        assert self.ddp is not None
        fault = s.fault
        if fault.kill_worker == self.rank and t >= fault.at_iteration:
            print(f"agc-ddp rank {self.rank}: trainer.fault.kill_worker: exiting abruptly at "
                  f"iteration {t}", file=sys.stderr, flush=True)
            os._exit(0)  # status 0: torchrun's agent would stop every rank on a failure
        times = self.modelled_times(t)
        slept = float(times[self.rank]) * self.time_scale
        if slept > 0:
            time.sleep(slept)
        started = time.perf_counter()
        index = batch_indices(work.seed, t, [self.rank], work.subset_size, s.batch_size)
        x, y = take(self.x, index)[0], take(self.y, index)[0]
        loss = self.model.loss_sum(self.ddp(x), y)
        # DDP averages over the n ranks: the mean of n·g_r is Σ_r g_r, g_r = ∇loss_r / (k·b)
        (loss * (self.n / work.batch_samples)).backward()
        flat = torch.cat([p.grad.reshape(-1) for p in self.model.parameters()])
        value = None
        if t % s.log_every == 0 or t == s.iterations - 1:
            total = torch.tensor([float(loss.detach())], dtype=torch.float64)
            dist.all_reduce(total, group=self.control)
            value = float(total) / work.batch_samples
        return value, slept, time.perf_counter() - started, float(times.max()), flat

    def serve(self) -> int:
        """A rank > 0: connect, run (and commit) the remaining iterations, wait for every
        rank; return the exit status (exits the process when rank 0 or a peer is gone)."""
        try:
            self._connect()
            while self.state.iteration < self.settings.iterations:
                *_, gradient = self._run(self.state.iteration)
                self.state.commit(StepResult({}, gradient))
            dist.barrier(group=self.control)
        except TrainingDiverged:
            return 0  # every rank sees it; rank 0 reports it
        except RuntimeError as exc:
            print(f"agc-ddp rank {self.rank}: rank 0 or a peer is gone ({error_text(exc)}); "
                  "exiting", file=sys.stderr, flush=True)
            os._exit(EXIT_PEER_LOST)
        dist.destroy_process_group()
        return 0

    # ------------------------------------------------------------------ state and summary

    def summary_extra(self) -> dict[str, Any]:
        """summary.json fields of the DDP runtime (they override the shared ones)."""
        tot = self.state.totals
        done = max(tot.iterations, 1)
        return {
            "runtime": self.name, "virtual_time": None, "wall_time": tot["wall_time"],
            "mean_iteration_time": tot["wall_time"] / done, "total_bytes_to_ps": None,
            "total_bytes_per_rank": tot["bytes_per_rank"],
            "mean_sleep_time": tot["sleep_time"] / done,
            "ddp": {"workers": self.n, "backend": self.settings.backend,
                    "launch": "torchrun" if torchrun_env() else "local",
                    "time_scale": self.time_scale, "timeout_s": self.settings.timeout_s,
                    "bucket_cap_mb": self.settings.bucket_cap_mb, "buckets": self.buckets,
                    "bytes_per_rank_per_iteration": self.bytes_per_iteration},
        }


def serve_rank(config: dict[str, Any], rank: int, world_size: int) -> int:
    """Rank ``rank`` > 0 of ``trainer=ddp`` (joined by
    :func:`~agc_pipeline.training.launch.rank_main`): build the same run from rank 0's
    configuration (:func:`~agc_pipeline.build.build_run`), report ready, serve. Returns the
    exit status."""

    def build() -> DdpRuntime:
        cfg = OmegaConf.create(config)
        if str(cfg.trainer.device).startswith("cuda"):
            torch.cuda.set_device(rank_device(True, rank))
        return DdpRuntime(build_run(cfg), rank)

    return serve_built(build, rank, world_size, "DDP")
