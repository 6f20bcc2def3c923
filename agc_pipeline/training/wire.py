"""Messages between the parameter server (rank 0) and the workers (ranks 1..n), and the
threads that receive them (``torch.distributed`` point-to-point, gloo or NCCL).

Every message is **one flat buffer** (a uint8 tensor viewed in the dtypes of its parts), so
each is one send and one receive:

* worker → PS, a **frame**: a 64-byte header (8 float64 slots: iteration tag, kind, payload
  length, the worker's compute / encode / injected-sleep / busy seconds, and a spare slot,
  e.g. the pid) followed, for gradient messages, by the **payload**: the coded message
  ``Z B(:, j)`` of the declared length in the gradients' dtype (float32 by default);
* PS → worker: ``[iteration, command]`` as float64 followed by the flat parameters in
  ``trainer.param_dtype`` (float32, bfloat16 or float16; the PS's master copy stays in the
  model's dtype). The PS writes the parameters into the buffer in one pass (the dtype
  conversion included) and posts the same buffer to every worker.

The PS receives each frame into a buffer of :attr:`WireFormat.frame_bytes`: room for
⌈d/m⌉ + :data:`FRAME_SLACK` elements. gloo aborts the receiving *process* when a message is
longer than the posted buffer and accepts a shorter one, so a header-only frame (HELLO, BYE)
and a payload of the wrong length (up to the slack) are received and the latter rejected by
its declared length; the workers never send more. NCCL needs equal sizes on both sides, so
there every frame is sent at its full capacity. Receive buffers are reused (one per worker
at the PS, three at a worker), so that no iteration pays for fresh pages; the PS's
receiving thread of worker j copies its payload into row j of one (n × ⌈d/m⌉) message
matrix while the PS waits for the others, and the PS decodes with one matrix product.

Why threads: gloo's ``Work.is_completed()`` on a receive stays False until ``wait()`` is
called, and a ``wait(timeout)`` that expires poisons the whole gloo context ("Application
timeout caused pair closure"). So each peer gets a thread blocked in ``wait()`` (which
releases the GIL) with a practically infinite timeout, feeding a queue; liveness is decided
by the application (``timeout_s``) and by connection errors (a killed peer's sockets close,
and gloo raises "Connection closed by peer" on that pair only). Sends are non-blocking
(``isend``): a slow worker's transfers never hold back the others'.
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
    "FRAME_SLACK",
    "HEADER_BYTES",
    "Arrival",
    "Command",
    "Header",
    "Inbox",
    "Kind",
    "Mailbox",
    "PSLost",
    "Transport",
    "WireFormat",
    "error_text",
    "load_parameters",
    "write_parameters",
]

#: the timeout of waits that must never expire (an expired gloo wait closes every pair)
FOREVER = datetime.timedelta(days=365)
HEADER_SLOTS = 8
HEADER_BYTES = HEADER_SLOTS * 8
#: bytes of the PS's ``[iteration, command]`` prefix
PARAMS_PREFIX = 16
#: elements a frame's payload may exceed ⌈d/m⌉ by and still be received (then rejected)
FRAME_SLACK = 1024
TAG_FRAME, TAG_PARAMS = 1, 3


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


@dataclass(frozen=True)
class WireFormat:
    """The sizes and dtypes of the messages (the PS broadcasts it with the configuration)."""

    d: int  #: parameters
    length: int  #: ⌈d/m⌉, the payload of a gradient frame
    grad_dtype: torch.dtype  #: the payload's dtype (the model's)
    param_dtype: torch.dtype  #: the parameters' dtype on the wire (``trainer.param_dtype``)

    @property
    def max_length(self) -> int:
        """The longest payload a frame buffer holds (elements)."""
        return self.length + FRAME_SLACK

    @property
    def frame_bytes(self) -> int:
        """Capacity of a frame buffer: header + ``max_length`` elements."""
        return HEADER_BYTES + self.max_length * _itemsize(self.grad_dtype)

    @property
    def params_bytes(self) -> int:
        """Size of a parameter message: prefix + d elements in ``param_dtype``."""
        return PARAMS_PREFIX + self.d * _itemsize(self.param_dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def error_text(exc: BaseException) -> str:
    """gloo's message without its source location, first sentence only (e.g. "Connection
    closed by peer [127.0.0.1]:45291")."""
    line = (str(exc).splitlines() or [type(exc).__name__])[0]
    return re.sub(r"^\[[^\]]*\] ", "", line).split(". ")[0][:200]


def write_parameters(msg: torch.Tensor, iteration: int, command: Command,
                     params: list[torch.Tensor] | None, dtype: torch.dtype) -> torch.Tensor:
    """Fill the PS's message ``msg`` (uint8, :attr:`WireFormat.params_bytes`):
    ``[iteration, command]`` then the parameters flattened in order, converted to ``dtype``
    in the same pass (one copy; None leaves them as they are, e.g. for STOP)."""
    msg[:PARAMS_PREFIX].view(torch.float64).copy_(
        torch.tensor([iteration, int(command)], dtype=torch.float64))
    if params is not None:
        flat = msg[PARAMS_PREFIX:].view(dtype)
        offset = 0
        with torch.no_grad():
            for p in params:
                flat[offset:offset + p.numel()].view_as(p).copy_(p)
                offset += p.numel()
    return msg


def load_parameters(flat: torch.Tensor, params: list[torch.Tensor]) -> None:
    """Set ``params`` from the flat vector received: as views of ``flat`` (no copy; moved
    to their device first if need be) when it has their dtype, else converted into them
    in one pass."""
    if flat.dtype == params[0].dtype:
        torch.nn.utils.vector_to_parameters(flat.to(params[0].device), params)
        return
    offset = 0
    with torch.no_grad():
        for p in params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


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
        """Post a send of ``tensor`` (on ``self.device``); keep it alive until the returned
        work completes."""
        work = dist.isend(tensor, dst=dst, group=self._group(tag), tag=tag)
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

    def empty(self, size: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        """A buffer on the transport's device."""
        return torch.empty(size, dtype=dtype, device=self.device)


class Frame:
    """A worker's reusable frame buffer: header + payload in one flat uint8 tensor."""

    def __init__(self, transport: Transport, wire: WireFormat) -> None:
        self.transport = transport
        self.wire = wire
        self.buffer = transport.empty(wire.frame_bytes)
        self.payload = self.buffer[HEADER_BYTES:HEADER_BYTES + wire.length * _itemsize(
            wire.grad_dtype)].view(wire.grad_dtype)  #: the coded message is written here

    def pack(self, header: Header, payload: torch.Tensor | None) -> torch.Tensor:
        """The bytes to send: ``header`` then ``payload`` (copied unless it is
        :attr:`payload` itself); the whole buffer on NCCL (equal sizes on both sides)."""
        used = HEADER_BYTES
        if payload is not None:
            nbytes = payload.numel() * payload.element_size()
            if nbytes > self.buffer.numel() - HEADER_BYTES:
                raise ValueError(f"a payload of {payload.numel()} elements exceeds the "
                                 f"frame's {self.wire.max_length}")
            view = self.buffer[HEADER_BYTES:HEADER_BYTES + nbytes].view(payload.dtype)
            if view.data_ptr() != payload.data_ptr():
                view.copy_(payload.reshape(-1))
            used += nbytes
        self.buffer[:HEADER_BYTES].view(torch.float64).copy_(header.pack())
        return self.buffer if self.transport.backend == "nccl" else self.buffer[:used]


# ------------------------------------------------------------------------------ PS side


@dataclass
class Arrival:
    """One message taken off the wire by the PS (or the loss of a worker's link)."""

    worker: int  #: 0-based worker index j (rank j + 1)
    time: float  #: ``time.perf_counter()`` when it was received
    header: Header | None = None
    #: the coded message: row j of the inbox's message matrix (valid until worker j's next
    #: message, which cannot come before the PS's next parameters), or a copy when its
    #: length is wrong
    payload: torch.Tensor | None = None
    nbytes: int = 0  #: bytes received (header + declared payload)
    error: str | None = None  #: set when the link is broken: the worker is gone


class Inbox:
    """One receiving thread per worker, all feeding one queue in arrival order.

    Each thread receives into its own reusable frame and copies a gradient payload of the
    right length into row j of :attr:`messages` (n × ⌈d/m⌉, on the PS's device), while the
    PS still waits for others; the PS combines the survivors' rows in place. Row j changes
    only when worker j sends again, which, once its message of iteration t is taken, needs
    the parameters of iteration t + 1, posted after the decode. A thread ends
    after a BYE, a malformed header, a declared payload longer than a frame holds, or a
    broken connection; the last three arrive as an :class:`Arrival` with ``error`` set.
    """

    def __init__(self, transport: Transport, workers: int, wire: WireFormat,
                 device: torch.device) -> None:
        self.transport = transport
        self.wire = wire
        self.queue: queue.Queue[Arrival] = queue.Queue()
        #: row j: worker j's newest message of the right length (zero until it has one)
        self.messages = torch.zeros(workers, wire.length, dtype=wire.grad_dtype, device=device)
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
        dtype, size = self.wire.grad_dtype, _itemsize(self.wire.grad_dtype)
        frame = self.transport.empty(self.wire.frame_bytes)
        while True:
            try:
                self.transport.recv(frame, rank, TAG_FRAME)
            except RuntimeError as exc:  # the pair is broken: the worker is gone
                return self._lost(j, error_text(exc))
            header = Header.unpack(frame[:HEADER_BYTES].view(torch.float64).cpu())
            if header is None:
                return self._lost(j, "malformed header")
            payload, nbytes = None, HEADER_BYTES
            if header.kind == Kind.GRADIENT:
                if not 0 <= header.length <= self.wire.max_length:
                    return self._lost(j, f"declared payload of {header.length} elements")
                nbytes += header.length * size
                payload = frame[HEADER_BYTES:nbytes].view(dtype)
                if header.length == self.wire.length:
                    self.messages[j].copy_(payload)
                    payload = self.messages[j]
                else:  # to be rejected: keep a copy (the frame is received into again)
                    payload = payload.clone()
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
    of working through a backlog of stale ones. Three buffers rotate: the one the worker
    computes with (its parameters may be views of it), the newest received, and the one
    being received into.
    """

    def __init__(self, transport: Transport, wire: WireFormat) -> None:
        self.transport = transport
        self.wire = wire
        self._buffers = [transport.empty(wire.params_bytes) for _ in range(3)]
        self._cond = threading.Condition()
        self._latest: tuple[int, int, float] | None = None  #: (iteration, buffer, time)
        self._in_use: int | None = None  #: buffer handed out by next()
        self._stopped = False
        self._error: str | None = None
        self._thread = threading.Thread(target=self._receive, daemon=True, name="agc-mailbox")

    def start(self) -> None:
        """Post the receive."""
        self._thread.start()

    def _free(self) -> int:
        with self._cond:
            busy = {self._in_use, None if self._latest is None else self._latest[1]}
            return next(i for i in range(3) if i not in busy)

    def _receive(self) -> None:
        self.transport.bind()
        while True:
            index = self._free()
            msg = self._buffers[index]
            try:
                self.transport.recv(msg, 0, TAG_PARAMS)
            except RuntimeError as exc:
                with self._cond:
                    self._error = error_text(exc)
                    self._cond.notify_all()
                return
            iteration, command = (int(v) for v in msg[:PARAMS_PREFIX].view(torch.float64).cpu())
            with self._cond:
                if command == Command.STOP:
                    self._stopped = True
                else:
                    self._latest = (iteration, index, time.perf_counter())
                self._cond.notify_all()
            if command == Command.STOP:
                return

    def next(self, after: int, timeout: float) -> tuple[int, torch.Tensor, float] | None:
        """The newest ``(iteration, flat parameters, receipt time)`` with iteration > after;
        None on STOP. The flat parameters stay valid until the following call. Raises
        :class:`PSLost` on a broken link or ``timeout`` seconds of silence."""
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
            assert self._latest is not None
            iteration, index, received = self._latest
            self._in_use = index
            flat = self._buffers[index][PARAMS_PREFIX:].view(self.wire.param_dtype)
            return iteration, flat, received

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
