"""The parameter server of ``trainer=distributed`` (rank 0).

Each iteration t:

1. write the parameters, tagged t, once into one flat message (in ``trainer.param_dtype``;
   the master copy stays in the model's dtype) and post it to every live worker
   (non-blocking point-to-point: a slow worker holds back nobody);
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
   and take the SGD step.

The arithmetic is the simulated trainer's (same partial gradients, encoder draws, decoder
and SGD; messages travel in the model's dtype), so with the same seeds and survivor sets
both runtimes give the same parameters to float tolerance (with ``param_dtype=float32``).
The class composes the shared :class:`~agc_pipeline.training.core.CodedTraining`
(validation, α, evaluation, optimizer, state) and plugs into the shared loop
(:mod:`~agc_pipeline.training.loop`: checkpoints, graceful stop); only the iteration is its
own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agc_pipeline.errors import require
from agc_pipeline.training.coded_step import (
    TrainingDiverged,
    check_finite,
    combine_into,
)
from agc_pipeline.training.core import CodedTraining, Totals
from agc_pipeline.training.distributed import (
    PARAM_DTYPES,
    Cluster,
    DistributedSettings,
    WorkersLost,
    resolve_timing,
    torchrun_env,
)
from agc_pipeline.training.wire import HEADER_BYTES, Arrival, Kind, WireFormat

__all__ = ["DistributedTotals", "ParameterServer"]

log = logging.getLogger("agc_pipeline.train")

#: longest single wait on the inbox, so that silence is checked regularly
POLL_S = 0.05


@dataclass
class DistributedTotals(Totals):
    """Running totals (checkpointed), plus the measured ones."""

    wall_time: float = 0.0  #: sum of the iterations' wall-clock times
    decode_time: float = 0.0
    late: int = 0
    rejected: int = 0
    bytes_received: int = 0
    grad_errors: int = 0  #: iterations whose grad_error was computed


@dataclass
class Collected:
    """What one iteration's wait produced."""

    accepted: dict[int, Arrival] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)  #: accepted or rejected this iteration
    late: int = 0
    rejected: int = 0
    bytes: int = 0  #: everything received (headers included)
    discarded: int = 0  #: bytes of late, rejected and ignored messages


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


class ParameterServer:
    """Rank 0: the model, the code, the optimizer and the workers' messages.

    Composes the shared :class:`~agc_pipeline.training.core.CodedTraining` (validation, α,
    evaluation; the data is the PS's copy, for metrics); :meth:`session` starts (or joins) the
    workers around the shared training loop, :meth:`step` runs one iteration on them.
    """

    name = "distributed"

    def __init__(self, core: CodedTraining) -> None:
        self.core = core
        settings = core.settings
        require(isinstance(settings, DistributedSettings),
                "ParameterServer needs trainer=distributed settings")
        assert isinstance(settings, DistributedSettings)
        self.settings: DistributedSettings = settings
        n = core.n
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
        self.timing = resolve_timing(settings, core.straggler, n)
        core.totals = DistributedTotals()
        self.events: list[dict[str, Any]] = []
        self.cluster: Cluster | None = None
        self._backlog: deque[Arrival] = deque()
        self.params = list(core.model.parameters())
        dtype = self.params[0].dtype
        self.wire = WireFormat(core.d, core.length, dtype, PARAM_DTYPES[settings.param_dtype])
        #: ĝ as (m, L) blocks, reused
        self._blocks = torch.empty(core.m, core.length, dtype=dtype, device=core.device)

    # ------------------------------------------------------------------ the loop

    @contextlib.contextmanager
    def session(self, extra_state: dict[str, Any], run_dir: Path) -> Iterator[None]:
        """Start (or join) the workers for the loop; stop them after it. The shared loop
        (:func:`~agc_pipeline.training.loop.fit`) runs inside; :class:`WorkersLost` is
        raised (after the checkpoint) when fewer than ``trainer.min_workers`` are alive."""
        config = extra_state.get("config")
        require(isinstance(config, dict), "the distributed trainer needs the run's resolved "
                                          "configuration (extra_state['config'])")
        core = self.core
        cluster = Cluster(self.settings, core.n, Path(run_dir), config, self.wire,
                          core.device, self.events)
        threads = torch.get_num_threads()
        if self.settings.threads is None:
            torch.set_num_threads(ps_threads(threads, core.n))
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

    def step(self, evaluate: bool = False) -> dict[str, Any]:
        """Run iteration ``self.core.iteration`` on the cluster; return its metrics row."""
        cluster = self.cluster
        require(cluster is not None, "ParameterServer.step runs inside session()")
        assert cluster is not None
        t, s = self.core.iteration, self.settings
        row: dict[str, Any] = {"iteration": t}
        start = time.perf_counter()
        bytes_out = cluster.send_params(t, self.params)
        sent = time.perf_counter()
        if evaluate:
            row.update(self.core.evaluate())
        logged = t % s.log_every == 0 or t == s.iterations - 1
        loss, exact = self._metrics(t) if logged else (None, None)
        metrics_time = time.perf_counter() - sent
        b = self.core.coded.encoding(t)
        got = self._collect(t, start)
        waited = time.perf_counter()
        self._require_workers(t)
        mask = np.zeros(self.core.n, dtype=bool)
        mask[sorted(got.accepted)] = True
        estimate, condition, approx = self._decode(b, mask, got)
        decoded = time.perf_counter()
        error = None
        if exact is not None:
            norm2 = float(exact.square().sum())
            diff2 = float((estimate.to(exact.dtype) - exact).square().sum())
            error = diff2 / norm2 if norm2 > 0 else math.nan
        survivors = int(mask.sum())
        if survivors and not self.core.optimizer.step(estimate):
            raise TrainingDiverged(f"iteration {t}: the SGD step would overflow the "
                                   "parameters to NaN/Inf (diverged: lower trainer.lr)")
        end = time.perf_counter()
        payload = sum(a.nbytes - HEADER_BYTES for a in got.accepted.values())
        tot = self._add_totals(t, survivors, payload, got, error, end - start,
                               decoded - waited)
        row.update(
            train_loss=loss, grad_error=error, survivors=survivors, bytes_to_ps=payload,
            total_bytes_to_ps=tot.bytes_to_ps, bytes_received=got.bytes,
            bytes_discarded=got.discarded, bytes_from_ps=bytes_out, wall_time=tot.wall_time,
            iteration_time=end - start, wait_time=waited - sent, decode_time=decoded - waited,
            metrics_time=metrics_time, **self._worker_times(got), late=got.late,
            rejected=got.rejected, live_workers=len(cluster.live), decode_condition=condition,
            approx_error=float(approx), skipped=survivors == 0)
        self.core.iteration += 1
        return row

    def _require_workers(self, t: int) -> None:
        """Stop (before iteration t changes anything) when too few workers are alive."""
        assert self.cluster is not None
        live, least = len(self.cluster.live), self.settings.min_workers
        if live >= least:
            return
        dead = sorted({e["worker"] for e in self.events if e["event"] == "dead"})
        raise WorkersLost(
            f"iteration {t}: {live} of {self.core.n} workers alive, fewer than trainer.min_workers "
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
        core = self.core
        x, y = core.minibatch(t)
        x, y = x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:])
        if not self.settings.grad_error:
            with torch.no_grad():
                return float(core.model.loss_sum(core.model(x), y)) / core.batch_samples, None
        loss = core.model.loss_sum(core.model(x), y)
        grads = torch.autograd.grad(loss, list(core.model.parameters()))
        exact = torch.cat([g.reshape(-1) for g in grads]).to(torch.float64)
        return float(loss.detach()) / core.batch_samples, exact / core.batch_samples

    def _collect(self, t: int, start: float) -> Collected:
        """Take arrivals until the waiting rule is met (see the module docstring)."""
        cluster, timing = self.cluster, self.timing
        assert cluster is not None
        deadline = math.inf if timing.deadline_s is None else start + timing.deadline_s
        got = Collected()
        while True:
            live = cluster.live
            waiting = [j for j in live if j not in got.answered]
            if not waiting or len(got.accepted) >= timing.target(len(live), self.core.n):
                break
            now = time.perf_counter()
            if now >= deadline:
                break
            arrival = self._next(min(deadline - now, POLL_S))
            if arrival is not None and arrival.time > deadline:  # late: the next iteration's
                self._backlog.appendleft(arrival)
                break
            if arrival is not None:
                self._classify(arrival, t, got)
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
        cluster.release(j, min(h.iteration, t))
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
        if payload is None or payload.numel() != self.core.length:
            return (f"{0 if payload is None else payload.numel()} values instead of "
                    f"⌈d/m⌉ = {self.core.length}")
        # a NaN/Inf makes the sum non-finite; only then (or on overflow) scan every value
        if not math.isfinite(float(payload.sum())) and not bool(torch.isfinite(payload).all()):
            return "NaN/Inf values"
        return None

    def _decode(self, b: np.ndarray, mask: np.ndarray,
                got: Collected) -> tuple[torch.Tensor, float, float]:
        """ĝ from exactly the messages that arrived (zero without any), cond(B_𝓕), Err."""
        if not mask.any():
            core = self.core
            return (torch.zeros(core.d, dtype=self.wire.grad_dtype, device=core.device), math.inf,
                    core.coded.target_norm2)
        dec = self.core.coded.decode(b, mask)  # the n × m system, float64
        assert self.cluster is not None and self.cluster.inbox is not None
        # rows of 𝓕 cannot change now: a survivor's next message needs the next parameters
        blocks = combine_into(self.cluster.inbox.messages, dec.r, mask, self._blocks)
        if self.core.decoder.rescale:
            assert self.core.alpha is not None, "call estimate_alpha() before training"
            blocks.div_(self.core.alpha.value)
        estimate = blocks.reshape(-1)[:self.core.d]
        # the messages were checked finite, so ĝ is unless R is not (or the sum overflows,
        # which the optimizer's step refuses): no pass over ĝ here
        if not np.isfinite(dec.r).all():
            check_finite(estimate, self.core.iteration)
        return estimate, dec.condition_number, dec.error

    def _add_totals(self, t: int, survivors: int, payload: int, got: Collected,
                    error: float | None, seconds: float, decode: float) -> DistributedTotals:
        tot = self.core.totals
        tot.iterations = t + 1
        tot.survivors += survivors
        tot.bytes_to_ps += payload
        tot.skipped += int(survivors == 0)
        if error is not None and math.isfinite(error):
            tot.grad_error += error
            tot.grad_errors += 1
        tot.wall_time += seconds
        tot.decode_time += decode
        tot.late += got.late
        tot.rejected += got.rejected
        tot.bytes_received += got.bytes
        return tot

    # ------------------------------------------------------------------ state and summary

    def state_dict(self) -> dict[str, Any]:
        """The simulated trainer's state plus the measured totals and the events."""
        return {**self.core.state_dict(), "events": list(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        totals = state["totals"]
        base = {f.name: totals[f.name] for f in dataclasses.fields(Totals)}
        self.core.load_state_dict({**state, "totals": base})
        self.core.totals = DistributedTotals(**totals)
        self.events[:] = list(state.get("events", []))

    def summary_extra(self) -> dict[str, Any]:
        """summary.json fields of the distributed runtime (they override the shared ones)."""
        tot, timing = self.core.totals, self.timing
        done = max(tot.iterations, 1)
        return {
            "clock": "wall",  # measured time: reports plot wall_time
            "runtime": "distributed", "virtual_time": None, "wall_time": tot.wall_time,
            "mean_iteration_time": tot.wall_time / done,
            "mean_decode_time": tot.decode_time / done,
            "decode_fraction": tot.decode_time / tot.wall_time if tot.wall_time else None,
            "mean_grad_error": tot.grad_error / tot.grad_errors if tot.grad_errors else None,
            "late_messages": tot.late, "rejected_messages": tot.rejected,
            "total_bytes_received": tot.bytes_received,
            "dead_workers": sorted({e["worker"] for e in self.events if e["event"] == "dead"}),
            "events": list(self.events),
            "distributed": {"workers": self.core.n, "backend": self.settings.backend,
                            "launch": "torchrun" if torchrun_env() else "local",
                            "wait": timing.wait, "s": timing.s, "deadline_s": timing.deadline_s,
                            "time_scale": timing.time_scale,
                            "straggle": self.settings.straggle,
                            "timeout_s": self.settings.timeout_s,
                            "wire_dtype": str(self.wire_dtype).removeprefix("torch."),
                            "param_dtype": self.settings.param_dtype},
        }
