"""Messages between the parameter server (rank 0) and the workers (ranks 1..n), and the
threads that receive them (``torch.distributed`` point-to-point, gloo or NCCL).

Worker → PS, one logical message per iteration, sent as two point-to-point messages:

* a fixed 64-byte **header** (8 float64 slots: iteration tag, kind, payload length, the
  worker's compute / encode / injected-sleep / busy seconds, and a spare slot, e.g. the pid),
* for gradient messages, the **payload**: the coded message ``Z B(:, j)`` of the declared
  length in the wire dtype (the parameters' dtype, float32 by default).

The header is what makes a wrong-size message harmless: gloo aborts the receiving *process*
when a message is longer than the posted receive buffer, so the PS posts the payload receive
with the length the header declares (bounded by ``max_length``) and rejects it afterwards if
it is not ⌈d/m⌉. The header is the "framing" in the byte counts.

PS → worker: one message of fixed size, ``[iteration, command]`` as float64 followed by the
flat parameters in their dtype (a uint8 tensor viewed both ways), so each is one send.

Why threads: gloo's ``Work.is_completed()`` on a receive stays False until ``wait()`` is
called, and a ``wait(timeout)`` that expires poisons the whole gloo context ("Application
timeout caused pair closure"). So each peer gets a thread blocked in ``wait()`` (which
releases the GIL) with a practically infinite timeout, feeding a queue; liveness is decided
by the application (``timeout_s``) and by connection errors (a killed peer's sockets close,
and gloo raises "Connection closed by peer" on that pair only).
"""

from __future__ import annotations

import datetime
import math
import queue
import re
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "FOREVER",
    "HEADER_BYTES",
    "Arrival",
    "Command",
    "Header",
    "Inbox",
    "Kind",
    "Mailbox",
    "PSLost",
    "Transport",
    "error_text",
    "params_message",
]

#: the timeout of waits that must never expire (an expired gloo wait closes every pair)
FOREVER = datetime.timedelta(days=365)
HEADER_SLOTS = 8
HEADER_BYTES = HEADER_SLOTS * 8
#: bytes of the PS's ``[iteration, command]`` prefix
PARAMS_PREFIX = 16
TAG_HEADER, TAG_PAYLOAD, TAG_PARAMS = 1, 2, 3


class Kind(IntEnum):
    """What a worker's header announces."""

    GRADIENT = 0  #: a coded message follows
    HELLO = 1  #: the worker is built and ready (``extra`` = its pid)
    BYE = 2  #: the worker acknowledges STOP and exits
    FAILED = 3  #: the worker could not start (details on its stderr)


class Command(IntEnum):
    """What the PS asks with a parameter message."""

    RUN = 0  #: compute iteration ``iteration`` at these parameters
    STOP = 1  #: reply BYE and exit


@dataclass
class Header:
    """A worker's header (all times in seconds, measured by the worker)."""

    iteration: int
    kind: Kind
    length: int = 0  #: payload length in elements (0: no payload)
    compute: float = 0.0  #: partial gradients of the held subsets
    encode: float = 0.0  #: drawing B and forming Z B(:, j)
    sleep: float = 0.0  #: injected straggler delay
    busy: float = 0.0  #: from receiving the parameters to sending (includes any backlog)
    extra: float = 0.0  #: HELLO: the pid

    def pack(self) -> torch.Tensor:
        """The 8 float64 slots."""
        return torch.tensor([self.iteration, int(self.kind), self.length, self.compute,
                             self.encode, self.sleep, self.busy, self.extra],
                            dtype=torch.float64)

    @classmethod
    def unpack(cls, slots: torch.Tensor) -> Header | None:
        """Parse received slots; None when malformed (non-finite, unknown kind)."""
        v = slots.tolist()
        if not all(math.isfinite(x) for x in v) or int(v[1]) not in Kind._value2member_map_:
            return None
        return cls(int(v[0]), Kind(int(v[1])), int(v[2]), *v[3:])


def error_text(exc: BaseException) -> str:
    """gloo's message without its source location, first sentence only (e.g. "Connection
    closed by peer [127.0.0.1]:45291")."""
    line = (str(exc).splitlines() or [type(exc).__name__])[0]
    return re.sub(r"^\[[^\]]*\] ", "", line).split(". ")[0][:200]


def params_message(iteration: int, command: Command, flat: torch.Tensor) -> torch.Tensor:
    """The PS's message: ``[iteration, command]`` (float64) then ``flat`` (its dtype), bytes."""
    msg = torch.empty(PARAMS_PREFIX + flat.numel() * flat.element_size(), dtype=torch.uint8)
    msg[:PARAMS_PREFIX].view(torch.float64).copy_(
        torch.tensor([iteration, int(command)], dtype=torch.float64))
    msg[PARAMS_PREFIX:].view(flat.dtype).copy_(flat.detach().reshape(-1).cpu())
    return msg


class Transport:
    """Point-to-point sends and blocking receives.

    gloo (``groups`` = (None, None): the default group) moves CPU tensors, told apart by
    tag. NCCL moves CUDA tensors on ``device`` and ignores tags; it runs a pair's operations
    in order on one stream, so a posted receive would hold back a send in the other
    direction: ``groups`` = (up, down) are two NCCL groups, worker → PS and PS → worker.
    """

    def __init__(self, backend: str, device: torch.device,
                 groups: tuple[Any, Any] = (None, None)) -> None:
        self.backend = backend
        self.device = device if backend == "nccl" else torch.device("cpu")
        self.up, self.down = groups

    def _group(self, tag: int) -> Any:
        return self.down if tag == TAG_PARAMS else self.up

    def bind(self) -> None:
        """Call first in a thread that uses the transport (CUDA's device is per thread)."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def send(self, tensor: torch.Tensor, dst: int, tag: int) -> dist.Work:
        """Post a send; keep ``tensor`` alive until the returned work completes."""
        work = dist.isend(tensor.to(self.device), dst=dst, group=self._group(tag), tag=tag)
        assert work is not None
        return work

    def recv(self, tensor: torch.Tensor, src: int, tag: int,
             timeout: datetime.timedelta = FOREVER) -> None:
        """Receive into ``tensor`` (on ``self.device``); raise RuntimeError on a broken pair."""
        work = dist.irecv(tensor, src=src, group=self._group(tag), tag=tag)
        assert work is not None
        work.wait(timeout)
        if self.device.type == "cuda":  # NCCL's wait orders the stream, not the host
            torch.cuda.current_stream(self.device).synchronize()

    def empty(self, size: int, dtype: torch.dtype) -> torch.Tensor:
        """A receive buffer."""
        return torch.empty(size, dtype=dtype, device=self.device)


# ------------------------------------------------------------------------------ PS side


@dataclass
class Arrival:
    """One message taken off the wire by the PS (or the loss of a worker's link)."""

    worker: int  #: 0-based worker index j (rank j + 1)
    time: float  #: ``time.perf_counter()`` when it was received
    header: Header | None = None
    payload: torch.Tensor | None = None
    nbytes: int = 0  #: bytes received (header + payload)
    error: str | None = None  #: set when the link is broken: the worker is gone


class Inbox:
    """One receiving thread per worker, all feeding one queue in arrival order.

    A thread ends after a BYE, a malformed header, a declared payload longer than
    ``max_length`` (it cannot be received safely) or a broken connection; the last three
    arrive as an :class:`Arrival` with ``error`` set.
    """

    def __init__(self, transport: Transport, workers: int, dtype: torch.dtype,
                 max_length: int) -> None:
        self.transport = transport
        self.dtype = dtype
        self.max_length = int(max_length)
        self.queue: queue.Queue[Arrival] = queue.Queue()
        self.threads = [threading.Thread(target=self._receive, args=(j,), daemon=True,
                                         name=f"agc-inbox-{j}") for j in range(workers)]

    def start(self) -> None:
        """Post the receives."""
        for thread in self.threads:
            thread.start()

    def get(self, timeout: float) -> Arrival | None:
        """The next arrival, or None after ``timeout`` seconds."""
        try:
            return self.queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def open_links(self) -> list[int]:
        """Workers whose receiving thread is still running."""
        return [j for j, t in enumerate(self.threads) if t.is_alive()]

    def join(self, timeout: float) -> list[int]:
        """Wait up to ``timeout`` seconds for every thread to end; return those still open."""
        end = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(end - time.monotonic(), 0.0))
        return self.open_links()

    def _receive(self, j: int) -> None:
        self.transport.bind()
        rank = j + 1
        while True:
            slots = self.transport.empty(HEADER_SLOTS, torch.float64)
            try:
                self.transport.recv(slots, rank, TAG_HEADER)
                header = Header.unpack(slots.cpu())
                if header is None:
                    return self._lost(j, "malformed header")
                payload, nbytes = None, HEADER_BYTES
                if header.kind == Kind.GRADIENT:
                    if not 0 <= header.length <= self.max_length:
                        return self._lost(j, f"declared payload of {header.length} elements")
                    payload = self.transport.empty(header.length, self.dtype)
                    self.transport.recv(payload, rank, TAG_PAYLOAD)
                    nbytes += payload.numel() * payload.element_size()
            except RuntimeError as exc:  # the pair is broken: the worker is gone
                return self._lost(j, error_text(exc))
            self.queue.put(Arrival(j, time.perf_counter(), header, payload, nbytes))
            if header.kind in (Kind.BYE, Kind.FAILED):
                return None

    def _lost(self, j: int, reason: str) -> None:
        self.queue.put(Arrival(j, time.perf_counter(), error=reason))


# ------------------------------------------------------------------------------ worker side


class PSLost(RuntimeError):
    """The parameter server is gone (connection error) or silent for ``timeout_s``."""


class Mailbox:
    """The worker's receiving thread: keeps only the newest parameter message.

    A straggler that finishes late thus continues with the PS's current parameters instead
    of working through a backlog of stale ones.
    """

    def __init__(self, transport: Transport, d: int, dtype: torch.dtype) -> None:
        self.transport = transport
        self.size = PARAMS_PREFIX + d * torch.empty(0, dtype=dtype).element_size()
        self.dtype = dtype
        self._cond = threading.Condition()
        self._latest: tuple[int, torch.Tensor, float] | None = None
        self._stopped = False
        self._error: str | None = None
        self._thread = threading.Thread(target=self._receive, daemon=True, name="agc-mailbox")

    def start(self) -> None:
        """Post the receive."""
        self._thread.start()

    def _receive(self) -> None:
        self.transport.bind()
        while True:
            msg = self.transport.empty(self.size, torch.uint8)
            try:
                self.transport.recv(msg, 0, TAG_PARAMS)
            except RuntimeError as exc:
                with self._cond:
                    self._error = error_text(exc)
                    self._cond.notify_all()
                return
            msg = msg.cpu()
            iteration, command = (int(v) for v in msg[:PARAMS_PREFIX].view(torch.float64))
            with self._cond:
                if command == Command.STOP:
                    self._stopped = True
                else:
                    self._latest = (iteration, msg[PARAMS_PREFIX:].view(self.dtype),
                                    time.perf_counter())
                self._cond.notify_all()
            if command == Command.STOP:
                return

    def next(self, after: int, timeout: float) -> tuple[int, torch.Tensor, float] | None:
        """The newest ``(iteration, flat parameters, receipt time)`` with iteration > after;
        None on STOP. Raises :class:`PSLost` on a broken link or ``timeout`` seconds of
        silence."""
        with self._cond:
            ready = self._cond.wait_for(
                lambda: self._stopped or self._error is not None
                or (self._latest is not None and self._latest[0] > after), timeout)
            if self._stopped:
                return None
            if self._error is not None:
                raise PSLost(f"lost the parameter server: {self._error}")
            if not ready:
                raise PSLost(f"no parameters from the PS for {timeout:g} s")
            return self._latest

    def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``; False (early) when STOP arrives or the PS is lost."""
        with self._cond:
            interrupted = self._cond.wait_for(lambda: self._stopped or self._error is not None,
                                              max(seconds, 0.0))
        return not interrupted

    def sleep_unless_newer(self, seconds: float, after: int) -> str:
        """Sleep ``seconds`` unless parameters newer than iteration ``after`` arrive first:
        ``"slept"``, ``"newer"`` (the PS has moved on) or ``"stopped"`` (STOP, or the PS
        is lost)."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopped or self._error is not None or (
                self._latest is not None and self._latest[0] > after), max(seconds, 0.0))
            if self._stopped or self._error is not None:
                return "stopped"
            return "newer" if self._latest is not None and self._latest[0] > after else "slept"
