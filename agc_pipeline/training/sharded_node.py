"""The threads and the owner step of one ``trainer=sharded`` node
(:mod:`~agc_pipeline.training.sharded`): a receiving thread per peer (gloo's receives
complete only in ``wait()``, see :mod:`~agc_pipeline.training.wire`), the worker thread
(message, injected delay, slices out) and the owner's iteration (first n − s slices,
decoding (3)/(4) for exactly those, the shard's optimizer step, the all-gather).
"""

from __future__ import annotations

import datetime
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from agc_pipeline.training.coded_step import TrainingDiverged
from agc_pipeline.training.sharded_maths import decode_slice, reassemble
from agc_pipeline.training.wire import error_text

if TYPE_CHECKING:
    from agc_pipeline.training.sharded import ShardedRuntime

__all__ = ["BYE", "ShardNode", "load_flat"]

#: the header value of the last slice a worker sends (its peers' receivers stop)
BYE = -1.0


def load_flat(flat: torch.Tensor, params: list[torch.Tensor]) -> None:
    """Copy the flat vector into ``params``."""
    offset = 0
    with torch.no_grad():
        for p in params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


class _Params:
    """The newest parameters (iteration, flat vector), handed from owner to worker."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.value: tuple[int, torch.Tensor] | None = None

    def put(self, t: int, flat: torch.Tensor) -> None:
        with self.cond:
            self.value = (t, flat)
            self.cond.notify_all()

    def newer(self, last: int) -> tuple[int, torch.Tensor]:
        with self.cond:
            self.cond.wait_for(lambda: self.value is not None and self.value[0] > last)
            assert self.value is not None
            return self.value


class ShardNode:
    """One node's worker thread, receiving threads and owner step (every rank)."""

    def __init__(self, runtime: ShardedRuntime) -> None:
        self.rt = rt = runtime
        s = rt.settings
        timeout = datetime.timedelta(seconds=s.timeout_s)
        self.p2p = dist.new_group(backend="gloo", timeout=timeout)  # message slices
        self.gather = dist.new_group(backend="gloo", timeout=timeout)  # shards, control
        self.inbox: queue.Queue[tuple[int, int, torch.Tensor] | BaseException] = queue.Queue()
        self.params = _Params()
        self.threads = [threading.Thread(target=self._receive, args=(j,), daemon=True)
                        for j in range(rt.n) if j != rt.rank]
        self.threads.append(threading.Thread(target=self._work, daemon=True))
        self.stopped = threading.Event()

    def start(self, t: int, flat: torch.Tensor) -> None:
        self.params.put(t, flat)
        for thread in self.threads:
            thread.start()

    def finish(self, grace: float) -> None:
        """Let the worker send its last slices, wait for the threads, barrier."""
        for thread in self.threads:
            thread.join(grace)
        dist.barrier(group=self.gather)

    # ------------------------------------------------------------ threads

    def _receive(self, j: int) -> None:
        """Peer j's slices, in order, into the inbox until its BYE (or a broken link)."""
        width = self.rt.layout.width
        try:
            while True:
                buf = torch.empty(width + 1, dtype=self.rt.dtype)
                dist.irecv(buf, src=j, group=self.p2p).wait()
                if float(buf[0]) == BYE:
                    return
                self.inbox.put((j, int(buf[0]), buf[1:]))
        except (RuntimeError, ValueError) as exc:  # ValueError: the group was destroyed
            if not self.stopped.is_set():
                self.inbox.put(RuntimeError(f"node {j}: {error_text(exc)}"))

    def _work(self) -> None:
        """The worker: newest parameters in, message, delay, slices out; BYE at the end."""
        rt, last = self.rt, -1
        try:
            while (job := self.params.newer(last))[0] < rt.settings.iterations:
                last, flat = job
                rt.fault_exit(last)
                message = rt.message(last, flat)
                delay = rt.delay(last)
                if delay > 0 and self.stopped.wait(delay):
                    return
                self._send(float(last), message)
            self._send(BYE, None)
        except (RuntimeError, ValueError) as exc:
            if not self.stopped.is_set():
                self.inbox.put(RuntimeError(f"worker {rt.rank}: {error_text(exc)}"))

    def _send(self, header: float, message: torch.Tensor | None) -> None:
        rt = self.rt
        n, width = rt.n, rt.layout.width
        frames = torch.zeros(n, width + 1, dtype=rt.dtype)
        frames[:, 0] = header
        if message is not None:
            padded = torch.zeros(n * width, dtype=rt.dtype)
            padded[:message.numel()] = message
            frames[:, 1:] = padded.view(n, width)
            self.inbox.put((rt.rank, int(header), frames[rt.rank, 1:].clone()))
        # posted one at a time, to rank + 1, rank + 2, …; wait() returns once gloo has
        # handed the slice to the socket, so on the wire consecutive slices may overlap
        for r in range(1, n):
            dist.isend(frames[(rt.rank + r) % n], dst=(rt.rank + r) % n, group=self.p2p).wait()

    # ------------------------------------------------------------ the owner

    def collect(self, t: int) -> tuple[torch.Tensor, np.ndarray]:
        """The first n − s slices of iteration t: (n, W) rows and the survivor mask."""
        rt = self.rt
        rows = torch.zeros(rt.n, rt.layout.width, dtype=rt.dtype)
        mask = np.zeros(rt.n, dtype=bool)
        deadline = time.monotonic() + rt.settings.timeout_s
        while mask.sum() < rt.target:
            try:
                item = self.inbox.get(timeout=max(deadline - time.monotonic(), 1e-3))
            except queue.Empty:
                raise RuntimeError(f"owner {rt.rank}: {int(mask.sum())} of {rt.target} slices "
                                   f"of iteration {t} in trainer.timeout_s") from None
            if isinstance(item, BaseException):
                raise item
            j, when, values = item
            if when == t:
                rows[j], mask[j] = values, True
        return rows, mask

    def own(self, t: int) -> tuple[int, int, float]:
        """Owner step of iteration t (every rank): decode the slice, step the shard,
        all-gather, hand the parameters on. Returns (fewest survivors of an owner, slices
        decoded by all owners, seconds waited for slices)."""
        rt = self.rt
        start = time.perf_counter()
        rows, mask = self.collect(t)
        waited = time.perf_counter() - start
        b = rt.coded_part.code.encoding(t)
        piece = decode_slice(rows, rt.coded_part.code.decode(b, mask).r, mask)
        if rt.coded_part.decoder.rescale:
            assert rt.coded_part.alpha is not None, "call estimate_alpha() before training"
            piece.div_(rt.coded_part.alpha.value)
        ok = rt.state.optimizer.step(piece.view(-1)[rt.valid])
        size = rt.layout.m * rt.layout.width
        mine = torch.zeros(size + 2, dtype=rt.dtype)
        mine[:size][rt.valid] = rt.shard.detach()
        mine[size], mine[size + 1] = float(ok), float(mask.sum())
        out = torch.empty(rt.n, size + 2, dtype=rt.dtype)
        dist.all_gather(list(out.unbind(0)), mine, group=self.gather)
        if not bool((out[:, size] == 1).all()):
            raise TrainingDiverged(f"iteration {t}: the SGD step would overflow the "
                                   "parameters to NaN/Inf (diverged: lower trainer.lr)")
        flat = reassemble(out[:, :size].reshape(rt.n, rt.layout.m, rt.layout.width),
                          rt.d).clone()
        load_flat(flat, rt.params)
        if rt.save_point(t + 1):  # before the worker sees iteration t + 1 (a fault there)
            self.gather_states(t + 1)
        self.params.put(t + 1, flat)
        counts = out[:, size + 1]
        return int(counts.min()), int(counts.sum()), waited

    def gather_states(self, t: int) -> None:
        """Every shard's optimizer state to rank 0 (the checkpoints of iteration t)."""
        rt = self.rt
        states: list[Any] | None = [None] * rt.n if rt.rank == 0 else None
        dist.gather_object(rt.state.optimizer.state_dict(), states, dst=0, group=self.gather)
        if states is not None:
            rt.gathered = (t, states)
