"""The PS's sends to one worker (:class:`Outbox`): at most :data:`MAX_IN_FLIGHT` parameter
messages in transit, and a waiter thread that learns when each send is complete.

Why a thread: gloo's send ``Work`` reports completion only through ``wait()``
(``is_completed()`` stays false until someone has waited on it; ``wait(timeout)`` that
times out marks the work finished with an error), and a send to a worker that has not
posted its receive (a slow link, a stopped process) blocks in ``wait()``. So the waiter is
the only caller of ``wait()`` for its worker's sends: it waits on them in the order they
were posted (sends on one pair complete in that order) and reports each completion to the
PS's loop through a queue (:attr:`Outbox.done`), which the loop drains without blocking.
A worker whose link cannot keep up thus holds at most :data:`MAX_IN_FLIGHT` parameter
messages, and its STOP comes behind at most that many.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Any

import torch

from agc_pipeline.training.wire import FOREVER, Transport

__all__ = ["MAX_IN_FLIGHT", "Outbox"]

#: parameter sends to one worker in transit beyond which newer parameters are held back
MAX_IN_FLIGHT = 2
#: the iteration recorded for a command (STOP): never counted against the cap
COMMAND = -1


class Outbox:
    """Worker j's sends from the PS. The PS's loop calls :meth:`post` and :meth:`completed`
    (one thread); the waiter thread calls ``wait()`` and puts ``j`` on ``done`` after each.
    """

    def __init__(self, j: int, transport: Transport, done: queue.SimpleQueue[int]) -> None:
        self.j = j
        self.transport = transport
        self.done = done
        #: posted and not yet reported complete, in order: (iteration or COMMAND, message)
        self.in_flight: deque[tuple[int, torch.Tensor]] = deque()
        self.owed = False  #: newer parameters were held back (the cap was reached)
        self._works: queue.SimpleQueue[tuple[Any, torch.Tensor] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._wait, daemon=True,
                                        name=f"agc-outbox-{j}")
        self._thread.start()

    @property
    def params_in_flight(self) -> int:
        """Parameter sends posted and not yet complete."""
        return sum(1 for it, _ in self.in_flight if it != COMMAND)

    @property
    def full(self) -> bool:
        """At :data:`MAX_IN_FLIGHT`: newer parameters must wait."""
        return self.params_in_flight >= MAX_IN_FLIGHT

    def post(self, msg: torch.Tensor, tag: int, iteration: int) -> None:
        """Post a send of ``msg`` to the worker (``iteration`` :data:`COMMAND` for a
        command); raises RuntimeError when the link is broken. ``msg`` must stay unchanged
        until :meth:`completed` returns it."""
        work = self.transport.send(msg, self.j + 1, tag)
        self.in_flight.append((iteration, msg))
        self._works.put((work, msg))

    def completed(self) -> tuple[int, torch.Tensor]:
        """The oldest send, reported complete by the waiter (call once per ``j`` taken off
        ``done``): ``(iteration, message)``."""
        return self.in_flight.popleft()

    def close(self, timeout: float) -> bool:
        """Let the waiter end once its sends are complete; True when it has, within
        ``timeout`` seconds (a send to a worker that never receives keeps it waiting)."""
        self._works.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _wait(self) -> None:
        self.transport.bind()
        cuda = self.transport.device.type == "cuda"
        while (item := self._works.get()) is not None:
            work, msg = item  # the message stays referenced until its send is complete
            try:
                work.wait(FOREVER)
                if cuda:  # NCCL's wait orders the stream, not the host
                    torch.cuda.current_stream(self.transport.device).synchronize()
            except RuntimeError:
                pass  # a broken link: the inbox's thread reports the worker's loss
            del work, msg, item
            self.done.put(self.j)
