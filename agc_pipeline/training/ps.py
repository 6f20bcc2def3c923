"""The parameter server of ``trainer=distributed`` (rank 0).

Each iteration t:

1. write the parameters, tagged t, once into one flat message (in ``trainer.param_dtype``;
   the master copy stays in the model's dtype) and post it to every live worker
   (non-blocking point-to-point: a slow worker holds back nobody; a worker with 2 sends
   still in transit is owed the newest parameters instead, posted while collecting as soon
   as one completes: :mod:`~agc_pipeline.training.outbox`);
2. on a logged row only (``trainer.log_every``, and the last iteration), while the workers
   compute, evaluate the train loss of the iteration's minibatch and, with
   ``trainer.grad_error``, its true gradient on the PS's own copy of the training set — for
   logging only: the update uses nothing but the workers' messages;
3. draw the same B as the workers (``encoder_rng(seed, t)``) and collect messages in arrival
   order until the waiting rule is met (:class:`~agc_pipeline.training.distributed.Timing`:
   the first n − s, a deadline, or every live worker). Messages tagged with an earlier
   iteration are discarded (late); a wrong length or NaN/Inf is rejected (a straggler for
   this iteration); a broken link or ``timeout_s`` of silence makes a worker dead — a
   permanent straggler, logged as an event;
4. decode R for exactly the set that arrived (the n × m system, in float64), form
   ĝ = Σ_j message_j R(j, :) in the messages' dtype with one matrix product
   (:func:`~agc_pipeline.training.coded_step.combine_into`; no float64 copy of d-vectors),
   and return it: the shared loop takes the SGD step.

The arithmetic is the simulated trainer's (same partial gradients, encoder draws, decoder
and SGD; messages travel in the model's dtype), so with the same seeds and survivor sets
both runtimes give the same parameters to float tolerance (with ``param_dtype=float32``).
The class is a :class:`~agc_pipeline.training.runtime.CodedRuntime` (workload, code, α,
run state) and plugs into the shared loop (:mod:`~agc_pipeline.training.loop`: the commit,
checkpoints, graceful stop); only the iteration and the processes are its own.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from agc_pipeline.build import Plan, RunSpec
from agc_pipeline.errors import require
from agc_pipeline.training.coded_step import check_finite, combine_into
from agc_pipeline.training.distributed import (
    PARAM_DTYPES,
    DistributedSettings,
    WorkersLost,
    resolve_timing,
    torchrun_env,
)
from agc_pipeline.training.processes import Cluster
from agc_pipeline.training.runtime import CodedRuntime
from agc_pipeline.training.settings import TrainerSettings
from agc_pipeline.training.state import StepResult
from agc_pipeline.training.wire import HEADER_BYTES, Arrival, Kind, WireFormat

__all__ = ["ParameterServer"]

log = logging.getLogger("agc_pipeline.train")

#: longest single wait on the inbox, so that silence is checked regularly
POLL_S = 0.05
#: the same while a sequential broadcast waits for a send to complete to post the next
SEQUENCE_POLL_S = 0.002


@dataclass
class Collected:
    """What one iteration's wait produced."""

    accepted: dict[int, Arrival] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)  #: accepted or rejected this iteration
    late: int = 0
    rejected: int = 0
    bytes: int = 0  #: everything received (headers included)
    discarded: int = 0  #: bytes of late, rejected and ignored messages
    sent: int = 0  #: parameter bytes posted while waiting (to workers whose links drained)


def ps_threads(threads: int, n: int) -> int:
    """The PS's torch threads while its workers run (``trainer.threads`` null): at most the
    cores its local workers (one thread each) leave free, at least 1. Busy-waiting OpenMP
    threads on cores the workers hold slow every PS operation down many times over."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", n + 1)) - 1 if torchrun_env() else n
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(threads, cores - local))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class ParameterServer(CodedRuntime):
    """Rank 0: the model, the code, the optimizer and the workers' messages.

    A :class:`~agc_pipeline.training.runtime.CodedRuntime` (the data is the PS's copy, for
    metrics); :meth:`session` starts (or joins) the workers around the shared training loop,
    :meth:`step` runs one iteration on them.
    """

    name: ClassVar[str] = "distributed"
    settings_class: ClassVar[type[TrainerSettings]] = DistributedSettings
    processes: ClassVar[bool] = True
    preload: ClassVar[tuple[str, ...]] = ("agc_pipeline.training.worker",)
    #: measured totals (checkpointed) besides the shared ones
    counters: ClassVar[dict[str, float]] = {
        "wall_time": 0.0,  # sum of the iterations' wall-clock times
        "decode_time": 0.0, "late": 0, "rejected": 0, "bytes_received": 0,
        "grad_errors": 0}  # iterations whose grad_error was computed

    @staticmethod
    def rank_main(config: dict[str, Any], rank: int, world_size: int, wire: WireFormat) -> int:
        """A worker's rank (:func:`~agc_pipeline.training.worker.serve_rank`)."""
        from agc_pipeline.training.worker import serve_rank

        return serve_rank(config, rank, world_size, wire)

    @staticmethod
    def check_plan(plan: Plan) -> None:
        """``trainer=distributed``'s rules against the rest of the run
        (:func:`agc_pipeline.rules.check_plan` calls them before any data or model is built):
        n workers of the assignment, a waiting rule the straggler model allows, one GPU per
        rank with NCCL."""
        settings, n = plan.settings, plan.scheme.n
        require(settings.workers in (None, n),
                f"trainer.workers={settings.workers} but the assignment has n = {n} "
                "workers (leave trainer.workers null, or change the assignment)")
        require(settings.min_workers <= n,
                f"trainer.min_workers={settings.min_workers} but the assignment has only "
                f"n = {n} workers")
        settings.fault.validate(n)
        require(settings.backend != "nccl" or torchrun_env() is not None
                or torch.cuda.device_count() >= n + 1,
                f"trainer.backend=nccl needs one GPU per rank (n + 1 = {n + 1}); found "
                f"{torch.cuda.device_count()}: use trainer.backend=gloo")
        resolve_timing(settings, plan.straggler, n)

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        settings = spec.settings
        assert isinstance(settings, DistributedSettings)
        self.settings: DistributedSettings = settings
        coded = self.coded_part
        self.n = coded.n
        self.timing = resolve_timing(settings, spec.straggler, self.n)
        self.state = self._make_state()
        self.events: list[dict[str, Any]] = []
        self.cluster: Cluster | None = None
        self._backlog: deque[Arrival] = deque()
        self.max_sends_in_flight = 0  #: most parameter sends to one worker in transit
        self.params = list(self.model.parameters())
        dtype = self.params[0].dtype
        self.wire = WireFormat(coded.d, coded.length, dtype,
                               PARAM_DTYPES[settings.param_dtype])
        #: ĝ as (m, L) blocks, reused
        self._blocks = torch.empty(coded.m, coded.length, dtype=dtype, device=coded.device)

    # ------------------------------------------------------------------ the loop

    @contextlib.contextmanager
    def session(self, config: dict[str, Any], run_dir: Path) -> Iterator[None]:
        """Start (or join) the workers, sending them the resolved ``config``; stop them
        after the loop. The shared loop (:func:`~agc_pipeline.training.loop.fit`) runs
        inside; :class:`WorkersLost` is raised (after the checkpoint) when fewer than
        ``trainer.min_workers`` are alive."""
        cluster = Cluster(self.settings, self.n, Path(run_dir), config, self.wire,
                          self.coded_part.device, self.events, self.preload)
        threads = torch.get_num_threads()
        if self.settings.threads is None:
            torch.set_num_threads(ps_threads(threads, self.n))
        with cluster:
            self.cluster = cluster
            try:
                yield
            finally:
                self.cluster = None
                self._backlog.clear()
                torch.set_num_threads(threads)

    @property
    def wire_dtype(self) -> torch.dtype:
        """The dtype of the workers' messages: the model's."""
        return self.wire.grad_dtype

    def step(self, evaluate: bool = False) -> StepResult:
        """Run iteration ``state.iteration`` on the cluster: its metrics row and ĝ."""
        cluster = self.cluster
        require(cluster is not None, "ParameterServer.step runs inside session()")
        assert cluster is not None
        t, s = self.state.iteration, self.settings
        row: dict[str, Any] = {"iteration": t}
        start = time.perf_counter()
        held = cluster.held_back
        bytes_out = cluster.send_params(t, self.params)
        in_flight = cluster.sends_in_flight()
        self.max_sends_in_flight = max(self.max_sends_in_flight, cluster.max_in_flight)
        sent = time.perf_counter()
        if evaluate:
            row.update(self.workload.evaluate())
        logged = t % s.log_every == 0 or t == s.iterations - 1
        loss, exact = self._metrics(t) if logged else (None, None)
        metrics_time = time.perf_counter() - sent
        b = self.coded_part.code.encoding(t)
        got = self._collect(t, start)
        waited = time.perf_counter()
        self._require_workers(t)
        mask = np.zeros(self.n, dtype=bool)
        mask[sorted(got.accepted)] = True
        estimate, condition, approx = self._decode(b, mask, got)
        decoded = time.perf_counter()
        error = None
        if exact is not None:
            norm2 = float(exact.square().sum())
            diff2 = float((estimate.to(exact.dtype) - exact).square().sum())
            error = diff2 / norm2 if norm2 > 0 else math.nan
        survivors = int(mask.sum())
        end = time.perf_counter()
        payload = sum(a.nbytes - HEADER_BYTES for a in got.accepted.values())
        counted = error is not None and math.isfinite(error)
        increments = {"survivors": survivors, "bytes_to_ps": payload,
                      "skipped": int(survivors == 0), "wall_time": end - start,
                      "decode_time": decoded - waited, "late": got.late,
                      "rejected": got.rejected, "bytes_received": got.bytes,
                      "grad_error": error if counted else 0.0, "grad_errors": int(counted)}
        tot = self.state.totals
        row.update(
            train_loss=loss, grad_error=error, survivors=survivors, bytes_to_ps=payload,
            total_bytes_to_ps=tot.bytes_to_ps + payload, bytes_received=got.bytes,
            bytes_discarded=got.discarded, bytes_from_ps=bytes_out + got.sent,
            wall_time=tot["wall_time"] + (end - start), iteration_time=end - start,
            wait_time=waited - sent, decode_time=decoded - waited, metrics_time=metrics_time,
            **self._worker_times(got), late=got.late, rejected=got.rejected,
            live_workers=len(cluster.live), sends_in_flight=in_flight,
            held_back=cluster.held_back - held, decode_condition=condition,
            approx_error=float(approx), skipped=survivors == 0)
        return StepResult(row, estimate if survivors else None, increments)

    def _require_workers(self, t: int) -> None:
        """Stop (before iteration t changes anything) when too few workers are alive."""
        assert self.cluster is not None
        live, least = len(self.cluster.live), self.settings.min_workers
        if live >= least:
            return
        dead = sorted({e["worker"] for e in self.events if e["event"] == "dead"})
        raise WorkersLost(
            f"iteration {t}: {live} of {self.n} workers alive, fewer than trainer.min_workers "
            f"= {least} (dead: {dead}); stopped at iteration {t} with a checkpoint: continue "
            "with fresh workers by trainer.resume=true and the same hydra.run.dir")

    def _worker_times(self, got: Collected) -> dict[str, float | None]:
        """Means over the accepted messages of what the workers report, and of the
        communication time: round trip minus the worker's busy time."""
        assert self.cluster is not None
        arrivals = [a for a in got.accepted.values() if a.header is not None]
        heads = [a.header for a in arrivals if a.header is not None]
        return {"compute_time": _mean([h.compute for h in heads]),
                "encode_time": _mean([h.encode for h in heads]),
                "sleep_time": _mean([h.sleep for h in heads]),
                "comm_time": _mean([self.cluster.round_trip(a) - h.busy
                                    for a, h in zip(arrivals, heads, strict=True)])}

    # ------------------------------------------------------------------ pieces

    def _metrics(self, t: int) -> tuple[float, torch.Tensor | None]:
        """Train loss at the current parameters and, with ``trainer.grad_error``, the true
        gradient (float64) on the workers' minibatch, as the simulated runtime computes them."""
        model, work = self.model, self.workload
        x, y = work.minibatch(t)
        x, y = x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:])
        if not self.settings.grad_error:
            with torch.no_grad():
                return float(model.loss_sum(model(x), y)) / work.batch_samples, None
        loss = model.loss_sum(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        exact = torch.cat([g.reshape(-1) for g in grads]).to(torch.float64)
        return float(loss.detach()) / work.batch_samples, exact / work.batch_samples

    def _collect(self, t: int, start: float) -> Collected:
        """Take arrivals until the waiting rule is met (see the module docstring)."""
        cluster, timing = self.cluster, self.timing
        assert cluster is not None
        deadline = math.inf if timing.deadline_s is None else start + timing.deadline_s
        got = Collected()
        while True:
            live = cluster.live
            waiting = [j for j in live if j not in got.answered]
            if not waiting or len(got.accepted) >= timing.target(len(live), self.n):
                break
            now = time.perf_counter()
            if now >= deadline:
                break
            poll = SEQUENCE_POLL_S if cluster.broadcasting else POLL_S
            arrival = self._next(min(deadline - now, poll))
            if arrival is not None and arrival.time > deadline:  # late: the next iteration's
                self._backlog.appendleft(arrival)
                break
            if arrival is not None:
                self._classify(arrival, t, got)
            got.sent += cluster.catch_up()
            for j in cluster.silent(waiting, start, time.perf_counter()):
                cluster.mark_dead(j, t, f"silent for trainer.timeout_s = "
                                        f"{self.settings.timeout_s:g} s", link_broken=False)
        return got

    def _next(self, timeout: float) -> Arrival | None:
        if self._backlog:
            return self._backlog.popleft()
        assert self.cluster is not None and self.cluster.inbox is not None
        return self.cluster.inbox.get(timeout)

    def _classify(self, arrival: Arrival, t: int, got: Collected) -> None:
        """Accept, discard (late), reject (bad) or register the loss of a worker."""
        cluster = self.cluster
        assert cluster is not None
        j, h = arrival.worker, arrival.header
        got.bytes += arrival.nbytes
        if arrival.error is not None or h is None:
            cluster.mark_dead(j, t, arrival.error or "malformed header", link_broken=True)
            return
        cluster.heard(arrival)
        if not cluster.peers[j].alive or h.kind != Kind.GRADIENT:
            got.discarded += arrival.nbytes
            if h.kind != Kind.GRADIENT:  # BYE/FAILED in training: the worker is leaving
                cluster.mark_dead(j, t, f"sent {h.kind.name}", link_broken=True)
            return
        if h.iteration < t:
            got.late += 1
            got.discarded += arrival.nbytes
            return
        got.answered.add(j)
        reason = self._invalid(arrival, t)
        if reason is not None:
            got.rejected += 1
            got.discarded += arrival.nbytes
            self.events.append({"iteration": t, "worker": j, "event": "rejected",
                                "reason": reason})
            log.warning("iteration %d: rejected the message of worker %d (%s)", t, j, reason)
            return
        got.accepted[j] = arrival

    def _invalid(self, arrival: Arrival, t: int) -> str | None:
        """Why a message of the current iteration cannot be used, or None."""
        h, payload = arrival.header, arrival.payload
        assert h is not None
        if h.iteration > t:
            return f"tagged with a future iteration {h.iteration}"
        length = self.coded_part.length
        if payload is None or payload.numel() != length:
            return (f"{0 if payload is None else payload.numel()} values instead of "
                    f"⌈d/m⌉ = {length}")
        # a NaN/Inf makes the sum non-finite; only then (or on overflow) scan every value
        if not math.isfinite(float(payload.sum())) and not bool(torch.isfinite(payload).all()):
            return "NaN/Inf values"
        return None

    def _decode(self, b: np.ndarray, mask: np.ndarray,
                got: Collected) -> tuple[torch.Tensor, float, float]:
        """ĝ from exactly the messages that arrived (zero without any), cond(B_𝓕), Err."""
        coded = self.coded_part
        if not mask.any():
            return (torch.zeros(coded.d, dtype=self.wire.grad_dtype, device=coded.device),
                    math.inf, coded.code.target_norm2)
        dec = coded.code.decode(b, mask)  # the n × m system, float64
        assert self.cluster is not None and self.cluster.inbox is not None
        # rows of 𝓕 cannot change now: a survivor's next message needs the next parameters
        blocks = combine_into(self.cluster.inbox.messages, dec.r, mask, self._blocks)
        if coded.decoder.rescale:
            assert coded.alpha is not None, "call estimate_alpha() before training"
            blocks.div_(coded.alpha.value)
        estimate = blocks.reshape(-1)[:coded.d]
        # the messages were checked finite, so ĝ is unless R is not (or the sum overflows,
        # which the optimizer's step refuses): no pass over ĝ here
        if not np.isfinite(dec.r).all():
            check_finite(estimate, self.state.iteration)
        return estimate, dec.condition_number, dec.error

    # ------------------------------------------------------------------ state and summary

    def state_dict(self) -> dict[str, Any]:
        """The coded runtime's state plus the events."""
        return {**super().state_dict(), "events": list(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        super().load_state_dict(state)
        self.events[:] = list(state.get("events", []))

    def summary_extra(self) -> dict[str, Any]:
        """summary.json fields of the distributed runtime (they override the shared ones)."""
        tot, timing = self.state.totals, self.timing
        done = max(tot.iterations, 1)
        wall, decode, counted = tot["wall_time"], tot["decode_time"], tot["grad_errors"]
        return {
            "runtime": "distributed", "virtual_time": None, "wall_time": wall,
            "mean_iteration_time": wall / done, "mean_decode_time": decode / done,
            "decode_fraction": decode / wall if wall else None,
            "mean_grad_error": tot.grad_error / counted if counted else None,
            "late_messages": tot["late"], "rejected_messages": tot["rejected"],
            "total_bytes_received": tot["bytes_received"],
            "dead_workers": sorted({e["worker"] for e in self.events if e["event"] == "dead"}),
            "events": list(self.events),
            "distributed": {"workers": self.n, "backend": self.settings.backend,
                            "launch": "torchrun" if torchrun_env() else "local",
                            "wait": timing.wait, "s": timing.s, "deadline_s": timing.deadline_s,
                            "time_scale": timing.time_scale,
                            "straggle": self.settings.straggle,
                            "timeout_s": self.settings.timeout_s,
                            "max_sends_in_flight": self.max_sends_in_flight,
                            "broadcast": self.settings.broadcast,
                            "wire_dtype": str(self.wire_dtype).removeprefix("torch."),
                            "param_dtype": self.settings.param_dtype},
        }
