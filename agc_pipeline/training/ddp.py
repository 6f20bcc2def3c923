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
3. the same optimizer step on every rank (:class:`~agc_pipeline.training.optim.Optimizer`:
   schedule, clipping, NaN/Inf guard). The averaged gradient is the gradient of the k·b
   samples, so the losses equal the simulated trainer's with ``code=uncoded_wait`` to float
   tolerance; ``train_loss`` (one 8-byte all-reduce) is formed on logged iterations only.

Rank 0 is the app's process: it starts ranks 1..n−1 (or joins them under torchrun,
``--nproc_per_node=n``) through :mod:`~agc_pipeline.training.launch`, broadcasts its model
(DDP's own broadcast) and optimizer state — so a resumed run continues on every rank — and
alone writes metrics rows, checkpoints, summary.json and W&B. One zero-loss forward/backward
at the start fixes DDP's bucket layout (DDP rebuilds its buckets after its first backward),
so a resumed run sums every gradient in the order of an uninterrupted one: bit-identical.
Every rank computes with one thread, so the replicas' optimizer steps agree bit for bit.

DDP cannot continue without one of its ranks: a collective that fails (gloo: a peer's
connection closed) or stays incomplete for ``trainer.timeout_s`` raises
:class:`~agc_pipeline.training.distributed.WorkersLost` on rank 0; the loop saves the
checkpoint of the last completed iteration and the app exits with status 4 (continue with
``trainer.resume=true``). The other ranks exit (status 3) when rank 0 or a peer is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
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
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from agc_pipeline.coding.stragglers import Delay
from agc_pipeline.errors import ConfigError, require
from agc_pipeline.training.batches import batch_indices, take
from agc_pipeline.training.coded_step import TrainingDiverged, held_subsets
from agc_pipeline.training.core import CodedTraining, Totals
from agc_pipeline.training.distributed import DEFAULT_TIME_SCALE, FaultSettings, WorkersLost
from agc_pipeline.training.launch import Launch, rank_device, require_world, torchrun_env
from agc_pipeline.training.settings import TrainerSettings
from agc_pipeline.training.wire import error_text
from agc_pipeline.validation import is_int, require_choice, require_finite, require_int

__all__ = ["DdpRuntime", "DdpSettings", "DdpTotals", "ring_allreduce_bytes", "serve_rank"]

log = logging.getLogger("agc_pipeline.train")

#: exit status of a rank > 0 whose rank 0 or peer is gone
EXIT_PEER_LOST = 3


def ring_allreduce_bytes(n: int, d: int, element_size: int = 4) -> int:
    """Bytes one rank sends (and receives) in a ring all-reduce of d values over n ranks:
    2(n−1)/n · d · element_size (reduce-scatter, then all-gather)."""
    return (2 * (n - 1) * d * element_size) // n


@dataclass
class DdpSettings(TrainerSettings):
    """``trainer=ddp`` options (``conf/trainer/ddp.yaml``): the shared keys of
    :class:`~agc_pipeline.training.settings.TrainerSettings` plus the launch and liveness
    keys of ``trainer=distributed``. ``decode_cost``, ``materialize_messages`` and
    ``grad_error`` do not apply (no decoding; the all-reduced gradient is exact)."""

    runtime: ClassVar[str] = "agc_pipeline.training.ddp.DdpRuntime"
    rank_main: ClassVar[str] = "agc_pipeline.training.ddp.serve_rank"

    backend: str | None = None  #: gloo | nccl; null = nccl on CUDA, gloo on the CPU
    start_method: str = "forkserver"  #: local launch: forkserver | spawn
    time_scale: float | None = None  #: s per time unit; null = straggler.time_scale or 0.1
    timeout_s: float = 60.0  #: a collective incomplete this long: a rank is lost
    startup_timeout_s: float = 300.0  #: rendezvous, configuration and start handshake
    min_workers: int | None = None  #: null or n: DDP cannot continue without a rank
    bucket_cap_mb: float = 25.0  #: DDP's gradient bucket size
    alpha_samples: int = 0  #: no α: nothing is decoded
    grad_error: bool = False  #: must stay false (the all-reduced gradient is exact)
    coded_gradient: str = "per_subset"  #: unused (no coded gradient is formed)
    fault: Any = None  #: FaultSettings (kill_worker = a rank 1..n−1, at_iteration)

    def __post_init__(self) -> None:
        super().__post_init__()
        cuda = self.torch_device.type == "cuda"
        if self.backend is None:
            self.backend = "nccl" if cuda else "gloo"
        require_choice(self.backend, "trainer.backend", ("gloo", "nccl"))
        require(self.backend != "nccl" or cuda,
                "trainer.backend=nccl needs trainer.device=cuda (NCCL all-reduces CUDA tensors); "
                "use trainer.backend=gloo on the CPU")
        require_choice(self.start_method, "trainer.start_method", ("forkserver", "spawn"))
        if self.time_scale is not None:
            require_finite(self.time_scale, "trainer.time_scale", minimum=0.0)
        for name in ("timeout_s", "startup_timeout_s", "bucket_cap_mb"):
            require_finite(getattr(self, name), f"trainer.{name}", minimum=0.0,
                           strict_minimum=True)
        if self.min_workers is not None:
            require_int(self.min_workers, "trainer.min_workers", minimum=1)
        require(not self.grad_error, "trainer.grad_error=true does not apply to trainer=ddp "
                                     "(the all-reduced gradient is the exact one)")
        require(self.decode_cost == 0.0 and not self.materialize_messages,
                "trainer.decode_cost and trainer.materialize_messages are simulated-trainer "
                "options (trainer=ddp decodes nothing)")
        fault = FaultSettings.from_config(self.fault)
        require(fault.bad_message_worker is None,
                "trainer.fault.bad_message_worker does not apply to trainer=ddp (no messages "
                "to corrupt: DDP all-reduces)")
        self.fault = fault


@dataclass
class DdpTotals(Totals):
    """Running totals (checkpointed), plus the measured ones."""

    wall_time: float = 0.0  #: sum of the iterations' wall-clock times (rank 0)
    sleep_time: float = 0.0  #: injected (modelled) compute time slept by rank 0
    bytes_per_rank: int = 0  #: ring all-reduce bytes sent by each rank


def _code_name() -> str | None:
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("code")


def _handshake(error: str | None, world: int) -> None:
    """Every rank reports whether it could build its state (None: ready); raise on rank 0
    with the first failure."""
    reports: list[Any] = [None] * world
    dist.all_gather_object(reports, error)
    failed = [(r, e) for r, e in enumerate(reports) if e]
    if failed:
        rank, message = failed[0]
        raise RuntimeError(f"DDP rank {rank} could not start: {message}")


class DdpRuntime:
    """One DDP rank (rank 0: the app's process, which also drives the shared loop).

    Composes the shared :class:`~agc_pipeline.training.core.CodedTraining` (model, data,
    optimizer, straggler model, state); on rank 0 :meth:`session` starts the other ranks
    around the loop and :meth:`step` runs one iteration; ranks > 0 run :meth:`serve`.
    """

    name = "ddp"

    def __init__(self, core: CodedTraining) -> None:
        self.core = core
        settings = core.settings
        require(isinstance(settings, DdpSettings), "DdpRuntime needs trainer=ddp settings")
        assert isinstance(settings, DdpSettings)
        self.settings: DdpSettings = settings
        scheme, a = core.scheme, core.scheme.assignment
        if not (a.kind == "identity" and scheme.name == "stack" and core.m == 1
                and settings.wait_for_all):
            code = _code_name()
            raise ConfigError(
                "trainer=ddp is plain data-parallel SGD on the uncoded partition: it needs "
                "code=uncoded_wait (assignment=identity, scheme=stack, m=1, "
                f"trainer.wait_for_all=true); got {f'code={code}: ' if code else ''}"
                f"assignment={a.kind}, scheme={scheme.name}, m={core.m}, "
                f"wait_for_all={str(settings.wait_for_all).lower()}")
        n = self.n = core.n
        #: DDP's gradient buckets after its rebuild (read when the session ends)
        self.buckets: int | None = None
        require(settings.min_workers in (None, n),
                f"trainer.min_workers={settings.min_workers}: trainer=ddp needs all n = {n} "
                "ranks (DDP cannot continue without one; a lost rank stops the run with a "
                "checkpoint, exit status 4); leave it null")
        kill = settings.fault.kill_worker
        require(kill is None or (is_int(kill) and 1 <= kill < n),
                f"trainer.fault.kill_worker must be null or a rank 1..n-1 = {n - 1} for "
                f"trainer=ddp (rank 0 is the app; got {kill!r})")
        straggler = core.straggler
        scale = settings.time_scale
        if scale is None:
            scale = straggler.time_scale if isinstance(straggler, Delay) else DEFAULT_TIME_SCALE
        self.time_scale = float(scale)
        self.cuda = core.device.type == "cuda"
        self.bytes_per_iteration = ring_allreduce_bytes(n, core.d, core.wire_bytes)
        core.totals = DdpTotals()
        self.rank = self.subset = 0
        self.launch: Launch | None = None
        self.ddp: DistributedDataParallel | None = None
        self.control: Any = None  #: gloo group: train-loss sums, state broadcast, barrier
        self.x: torch.Tensor | None = None  #: this rank's data subset (1, |D_r|, …)
        self.y: torch.Tensor | None = None

    # ------------------------------------------------------------------ rank 0

    @contextlib.contextmanager
    def session(self, extra_state: dict[str, Any], run_dir: Path) -> Iterator[None]:
        """Start (or join) ranks 1..n−1 and connect them for the loop; stop them after it."""
        config = extra_state.get("config")
        require(isinstance(config, dict), "trainer=ddp needs the run's resolved configuration "
                                          "(extra_state['config'])")
        s, n = self.settings, self.n
        require_world(s.backend, n, f"trainer=ddp runs one rank per worker, n = {n}: use "
                                    f"--nproc_per_node={n}")
        started = time.perf_counter()
        launch = Launch(Path(run_dir), n, s.start_method, s.startup_timeout_s, config)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        completed = False
        try:
            self.launch = launch
            who = launch.start()
            _handshake(None, n)
            self._connect(0)
            launch.forget_rendezvous()
            roster = {"ranks": [{"rank": r, "pid": pid, "host": host}
                                for r, (pid, host) in enumerate(who)]}
            (Path(run_dir) / "workers.json").write_text(json.dumps(roster, indent=2) + "\n")
            log.info("%d DDP ranks ready in %.1f s (%s launch, %s)", n,
                     time.perf_counter() - started, launch.kind, s.backend)
            yield
            completed = True
        finally:
            self._stop(launch, completed)
            torch.set_num_threads(threads)

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

    def step(self, evaluate: bool = False) -> dict[str, Any]:
        """Run iteration ``core.iteration`` on every rank; return rank 0's metrics row."""
        require(self.ddp is not None, "DdpRuntime.step runs inside session()")
        core = self.core
        t = core.iteration
        row: dict[str, Any] = {"iteration": t}
        start = time.perf_counter()
        if evaluate:
            row.update(core.evaluate())
        try:
            loss, slept, compute, modelled = self._run(t)
        except TrainingDiverged:
            raise
        except RuntimeError as exc:
            raise WorkersLost(self._lost(t, exc)) from None
        end = time.perf_counter()
        tot = core.totals
        assert isinstance(tot, DdpTotals)
        tot.iterations, tot.survivors = t + 1, tot.survivors + self.n
        tot.wall_time += end - start
        tot.sleep_time += slept
        tot.bytes_per_rank += self.bytes_per_iteration
        row.update(train_loss=loss, grad_error=None, survivors=self.n, live_workers=self.n,
                   bytes_per_rank=self.bytes_per_iteration,
                   total_bytes_per_rank=tot.bytes_per_rank, wall_time=tot.wall_time,
                   iteration_time=end - start, sleep_time=slept, compute_time=compute,
                   modelled_time=modelled, skipped=False)
        core.iteration += 1
        return row

    def _lost(self, t: int, exc: RuntimeError) -> str:
        launch = self.launch
        dead = [] if launch is None else [r for r, p in enumerate(launch.procs, 1)
                                          if not p.is_alive()]
        who = f"rank {', '.join(map(str, dead))} exited" if dead else "a rank is gone"
        return (f"iteration {t}: {who} ({error_text(exc)}); DDP cannot continue without all "
                f"{self.n} ranks: stopped at iteration {t} with a checkpoint: continue with "
                "fresh ranks by trainer.resume=true and the same hydra.run.dir")

    # ------------------------------------------------------------------ every rank

    def _connect(self, rank: int) -> None:
        """Groups, rank 0's optimizer state and iteration, DDP (which broadcasts rank 0's
        parameters) and the bucket layout; keep only this rank's data subset."""
        core, s = self.core, self.settings
        self.rank = rank
        timeout = datetime.timedelta(seconds=s.timeout_s)
        self.control = dist.new_group(backend="gloo", timeout=timeout)
        group = (self.control if s.backend == "gloo"
                 else dist.new_group(backend="nccl", timeout=timeout))
        box: list[Any] = [None]
        if rank == 0:
            box[0] = {"iteration": core.iteration, "optimizer": core.optimizer.state_dict()}
        dist.broadcast_object_list(box, src=0, group=self.control)
        if rank > 0:
            core.iteration = int(box[0]["iteration"])
            core.optimizer.load_state_dict(box[0]["optimizer"])
        (subset,) = held_subsets(core.assignment_matrix, rank)  # A = I: subset r
        self.subset = int(subset)
        self.x, self.y = core.x[subset:subset + 1], core.y[subset:subset + 1]
        if rank > 0:  # the rest of the training set and the test set are rank 0's
            self.x, self.y = self.x.clone(), self.y.clone()
            core.x, core.y = self.x, self.y
            core.x_test, core.y_test = core.x_test[:0], core.y_test[:0]
        # CUDA: rank r > 0 made its GPU current before building (serve_rank); rank 0 uses
        # the current one (cuda:0, or LOCAL_RANK 0 under torchrun)
        device_ids = [next(core.model.parameters()).device.index] if self.cuda else None
        self.ddp = DistributedDataParallel(core.model, device_ids=device_ids,
                                           process_group=group, bucket_cap_mb=s.bucket_cap_mb)
        self._settle_buckets()

    def _settle_buckets(self) -> None:
        """One zero-loss forward/backward on one sample: DDP rebuilds its buckets (in the
        order the gradients became ready) after its first backward, so every iteration of a
        fresh or a resumed run all-reduces in the same layout (the same summation order)."""
        assert self.ddp is not None and self.x is not None and self.y is not None
        model = self.core.model
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
        core = self.core
        return core.draw(core.coded.encoding(t), t).finish_times

    def _run(self, t: int) -> tuple[float | None, float, float, float]:
        """Iteration t on this rank: ``(train loss or None, seconds slept, seconds of
        forward/backward/all-reduce/step, modelled iteration time in time units)``."""
        core, s = self.core, self.settings
        assert self.ddp is not None and self.x is not None and self.y is not None
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
        index = batch_indices(core.seed, t, [self.subset], core.subset_size, s.batch_size)
        x, y = take(self.x, index)[0], take(self.y, index)[0]
        loss = core.model.loss_sum(self.ddp(x), y)
        # DDP averages over the n ranks: the mean of n·g_r is Σ_r g_r, g_r = ∇loss_r / (k·b)
        (loss * (self.n / core.batch_samples)).backward()
        flat = torch.cat([p.grad.reshape(-1) for p in core.model.parameters()])
        if not core.optimizer.step(flat):
            raise TrainingDiverged(f"iteration {t}: the SGD step would overflow the "
                                   "parameters to NaN/Inf (diverged: lower trainer.lr)")
        value = None
        if t % s.log_every == 0 or t == s.iterations - 1:
            total = torch.tensor([float(loss.detach())], dtype=torch.float64)
            dist.all_reduce(total, group=self.control)
            value = float(total) / core.batch_samples
        return value, slept, time.perf_counter() - started, float(times.max())

    def serve(self, rank: int) -> int:
        """A rank > 0: connect, run the remaining iterations, wait for every rank; return
        the exit status (exits the process when rank 0 or a peer is gone)."""
        try:
            self._connect(rank)
            for t in range(self.core.iteration, self.settings.iterations):
                self._run(t)
            dist.barrier(group=self.control)
        except TrainingDiverged:
            return 0  # every rank sees it; rank 0 reports it
        except RuntimeError as exc:
            print(f"agc-ddp rank {rank}: rank 0 or a peer is gone ({error_text(exc)}); "
                  "exiting", file=sys.stderr, flush=True)
            os._exit(EXIT_PEER_LOST)
        dist.destroy_process_group()
        return 0

    # ------------------------------------------------------------------ state and summary

    def state_dict(self) -> dict[str, Any]:
        """The shared state (model, optimizer, totals)."""
        return self.core.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        totals = state["totals"]
        base = {f.name: totals[f.name] for f in dataclasses.fields(Totals)}
        self.core.load_state_dict({**state, "totals": base})
        self.core.totals = DdpTotals(**totals)

    def summary_extra(self) -> dict[str, Any]:
        """summary.json fields of the DDP runtime (they override the shared ones)."""
        tot = self.core.totals
        assert isinstance(tot, DdpTotals)
        done = max(tot.iterations, 1)
        return {
            "runtime": self.name, "clock": "wall", "virtual_time": None, "wall_time": tot.wall_time,
            "mean_iteration_time": tot.wall_time / done, "total_bytes_to_ps": None,
            "total_bytes_per_rank": tot.bytes_per_rank, "mean_sleep_time": tot.sleep_time / done,
            "ddp": {"workers": self.n, "backend": self.settings.backend,
                    "launch": "torchrun" if torchrun_env() else "local",
                    "time_scale": self.time_scale, "timeout_s": self.settings.timeout_s,
                    "bucket_cap_mb": self.settings.bucket_cap_mb, "buckets": self.buckets,
                    "bytes_per_rank_per_iteration": self.bytes_per_iteration},
        }


def serve_rank(config: dict[str, Any], rank: int, world_size: int) -> int:
    """Rank ``rank`` > 0 of ``trainer=ddp`` (joined by
    :func:`~agc_pipeline.training.launch.rank_main`): build the same run from rank 0's
    configuration, report ready, serve. Returns the exit status."""
    from agc_pipeline.train import build_trainer

    error = None
    try:
        cfg = OmegaConf.create(config)
        if str(cfg.trainer.device).startswith("cuda"):
            torch.cuda.set_device(rank_device(True, rank))
        runtime = build_trainer(cfg)
        assert isinstance(runtime, DdpRuntime)
    except Exception as exc:  # noqa: BLE001 - reported to rank 0
        error = f"{type(exc).__name__}: {exc}"
    try:
        _handshake(error, world_size)
    except RuntimeError:
        if error is None:  # another rank failed: rank 0 reports it
            return 1
    if error is not None:
        print(f"agc-ddp rank {rank}: cannot start: {error}", file=sys.stderr, flush=True)
        return 1
    return runtime.serve(rank)
