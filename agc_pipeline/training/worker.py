"""A worker of ``trainer=distributed`` (rank j + 1 runs worker j of the assignment).

It joins the process group and receives the PS's configuration
(:mod:`~agc_pipeline.training.launch`), builds the same run with the app's composition root
(:func:`~agc_pipeline.build.build_run`: code, data split, model, straggler model), keeps only
the data subsets it holds, says HELLO, then
serves: newest parameters in, partial gradients of its subsets, encode ``Z B(:, j)`` with
the B of that iteration (drawn from the shared seed), sleep the straggler model's delay,
send. It exits on the PS's STOP, or when the PS is lost (a broken link, or no parameters
for :func:`~agc_pipeline.training.distributed.ps_silence_limit`) — never hanging.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from agc_pipeline.build import build_run
from agc_pipeline.coding.stragglers import Delay, StragglerContext, worker_samples
from agc_pipeline.training.coded_gradient import CodedGradient
from agc_pipeline.training.coded_step import (
    CodedStep,
    held_subsets,
    worker_coefficients,
    worker_message,
)
from agc_pipeline.training.distributed import (
    DistributedSettings,
    data_groups,
    ps_silence_limit,
    rank_device,
    resolve_timing,
)
from agc_pipeline.training.gradients import pack_gradients, partial_gradients
from agc_pipeline.training.wire import (
    TAG_FRAME,
    Frame,
    Header,
    Kind,
    Mailbox,
    PSLost,
    Transport,
    WireFormat,
    error_text,
    load_parameters,
)
from agc_pipeline.training.workload import Workload

__all__ = ["Worker", "serve_rank"]

#: exit status of a worker that lost its parameter server
EXIT_PS_LOST = 3


class Worker:
    """Worker j's state: its subsets, the model, the code and the straggler model."""

    def __init__(self, config: dict[str, Any], rank: int, transport: Transport,
                 wire: WireFormat) -> None:
        spec = build_run(OmegaConf.create(config))
        settings = spec.settings
        assert isinstance(settings, DistributedSettings)
        self.settings = settings
        self.j = rank - 1
        self.transport = transport
        self.device = rank_device(settings.torch_device.type == "cuda", rank)
        scheme, assignment = spec.scheme, spec.scheme.assignment
        self.decoder = spec.decoder
        self.straggler = spec.straggler
        self.model = spec.model.to(self.device)
        self.n, self.k, self.m = assignment.n, assignment.k, scheme.m
        self.matrix = assignment.matrix
        self.timing = resolve_timing(settings, self.straggler, self.n)
        seed = spec.seed
        self.held = held_subsets(self.matrix, self.j)
        #: only its own subsets (h, |D_i|, …), no test set
        self.workload = Workload(self.model, spec.dataset, self.k, seed, settings.batch_size,
                                 self.device, self.held)
        #: N of g_i = ∇loss_sum(D_i)/N: all samples of the iteration, over the k subsets
        self.num_samples = self.workload.batch_samples
        #: samples every worker processes per iteration (load-proportional delays)
        self.work = worker_samples(self.matrix,
                                   settings.batch_size or self.workload.subset_size)
        del spec
        self.params = list(self.model.parameters())
        self.d = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.coded = CodedStep(scheme, self.decoder, self.d, seed)
        self.length = self.coded.length
        if (self.d, self.length, self.dtype) != (wire.d, wire.length, wire.grad_dtype):
            raise RuntimeError(f"built d = {self.d}, ⌈d/m⌉ = {self.length}, {self.dtype} but "
                               f"the PS has d = {wire.d}, ⌈d/m⌉ = {wire.length}, "
                               f"{wire.grad_dtype}")
        self.wire = wire
        self.frame = Frame(transport, wire)  #: the message is formed in place, then sent
        self.engine = (CodedGradient(self.model, self.m)
                       if settings.coded_gradient == "weighted" else None)
        self.local = torch.arange(len(self.held), device=self.device)
        self.z: torch.Tensor | None = None  # per_subset: the held partial gradients, float64

    # ---------------------------------------------------------------- one iteration

    def compute(self, t: int, flat: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """``(message, compute seconds, encode seconds)`` at parameters ``flat``."""
        start = time.perf_counter()
        load_parameters(flat, self.params)
        x, y = self.workload.minibatch(t)
        b = self.coded.encoding(t)
        coefficients = worker_coefficients(b, self.k, self.m, self.j, self.held)
        if self.engine is not None:  # one weighted backward: the message directly (Section III)
            coef = coefficients[:, :, None] / self.num_samples  # (m, h, 1)
            subset = self.local.repeat_interleave(x.shape[1])
            # formed in the send buffer itself, unless that lives on another device (CUDA
            # compute over gloo: Frame.pack then copies it to the host)
            out = (self.frame.payload.view(1, -1)
                   if self.frame.payload.device == self.device else None)
            res = self.engine(x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:]),
                              subset, coef, out=out)
            self._sync()
            done = time.perf_counter()
            return res.blocks[0], done - start, 0.0
        grads, _ = partial_gradients(self.model, x, y)
        if self.z is None:
            self.z = torch.zeros(len(self.held), self.m * self.length, dtype=torch.float64,
                                 device=self.device)
        pack_gradients(grads, 1.0 / self.num_samples, self.z)
        encode = time.perf_counter()
        blocks = self.z.view(len(self.held), self.m, self.length)
        message = worker_message(blocks, coefficients).to(self.dtype)
        self._sync()
        done = time.perf_counter()
        return message, encode - start, done - encode

    def _sync(self) -> None:
        """On a GPU, wait for the kernels, so that the reported compute time is real."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def delay(self, t: int) -> float | None:
        """Injected delay of iteration t in seconds (the straggler model's arrival time ×
        time_scale, the same seeded draw on every rank); None: this message is dropped."""
        model, scale = self.straggler, self.timing.time_scale
        comm = model.comm_time(self.length)
        if isinstance(model, Delay):
            arrival = float(model.compute_times(t, self.n, self.work)[self.j]) + comm
            return arrival * scale if math.isfinite(arrival) else None
        draw = model.draw(t, self.n, self.length, self._context(t))
        if draw.survivors[self.j]:
            return float(draw.finish_times[self.j]) * scale
        if self.settings.straggle == "drop":
            return None
        return (self.settings.straggler_slowdown * model.compute_time + comm) * scale

    def _context(self, t: int) -> StragglerContext:
        """What adversarial models look at: A, m and Err_𝓕(B) of this iteration's B."""
        return self.coded.straggler_context(self.coded.encoding(t), self.matrix, self.work)

    def send(self, header: Header, payload: torch.Tensor | None = None) -> None:
        """One frame (header and payload); raise PSLost if the PS does not take it in
        timeout_s."""
        timeout = datetime.timedelta(seconds=self.settings.timeout_s)
        try:
            self.transport.send(self.frame.pack(header, payload), 0, TAG_FRAME).wait(timeout)
        except RuntimeError as exc:
            raise PSLost(f"cannot send to the PS: {error_text(exc)}") from None

    # ---------------------------------------------------------------- the loop

    def serve(self) -> None:
        """HELLO, then iterations until STOP (BYE); raises PSLost when the PS is gone."""
        mailbox = Mailbox(self.transport, self.wire)
        mailbox.start()
        self.send(Header(-1, Kind.HELLO, extra=os.getpid()))
        last = -1
        while (job := mailbox.next(last, ps_silence_limit(self.settings, last >= 0))):
            t, flat, received = job
            last = t
            self._fault_exit(t)
            message, compute, encode = self.compute(t, flat)
            message = self._fault_message(t, message)
            delay = self.delay(t)
            if delay is None:
                continue  # a straggler that never reports in this iteration
            if self.settings.abandon_stale:  # the delay model's iterations start afresh
                outcome = mailbox.sleep_unless_newer(delay, t)
                if outcome == "newer":
                    continue  # the PS moved on: its message would be late
                if outcome == "stopped":
                    break
            elif not mailbox.sleep(delay):
                break
            self.send(Header(t, Kind.GRADIENT, message.numel(), compute, encode, delay,
                             time.perf_counter() - received), message)
        self.send(Header(last, Kind.BYE))

    def _fault_exit(self, t: int) -> None:
        fault = self.settings.fault
        if fault.kill_worker == self.j and t >= fault.at_iteration:
            print(f"agc-worker {self.j}: trainer.fault.kill_worker: exiting abruptly at "
                  f"iteration {t}", file=sys.stderr, flush=True)
            os._exit(0)  # status 0: torchrun's agent would stop every rank on a failure

    def _fault_message(self, t: int, message: torch.Tensor) -> torch.Tensor:
        fault = self.settings.fault
        if fault.bad_message_worker != self.j or t != fault.bad_message_at:
            return message
        if fault.bad_message == "size":
            return torch.cat([message, message[:1]])
        bad = message.clone()
        bad[0] = math.nan if fault.bad_message == "nan" else math.inf
        return bad


def serve_rank(config: dict[str, Any], rank: int, world_size: int, wire: WireFormat) -> int:
    """Rank ``rank`` of ``trainer=distributed`` (joined by
    :func:`~agc_pipeline.training.launch.rank_main`): build from the PS's configuration and
    serve. Returns the exit status (0 after the PS's STOP); exits the process at once when the
    PS is lost."""
    backend = config["trainer"]["backend"]  # validated by the PS
    transport = Transport(backend, rank_device(backend == "nccl", rank), data_groups(backend))
    transport.bind()
    try:
        worker = Worker(config, rank, transport, wire)
    except Exception as exc:  # noqa: BLE001 - reported to the PS, details here
        print(f"agc-worker {rank - 1}: cannot start: {exc}", file=sys.stderr, flush=True)
        frame = Frame(transport, wire)
        transport.send(frame.pack(Header(-1, Kind.FAILED), None), 0, TAG_FRAME).wait()
        os._exit(1)
    try:
        worker.serve()
    except PSLost as exc:
        print(f"agc-worker {worker.j}: {exc}; exiting", file=sys.stderr, flush=True)
        os._exit(EXIT_PS_LOST)  # a receiving thread may still be blocked: no clean exit
    dist.destroy_process_group()
    return 0
