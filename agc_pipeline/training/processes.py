"""The parameter server's side of the processes of ``trainer=distributed``
(:class:`Cluster`): launch, the workers' links, liveness and the parameter sends."""

from __future__ import annotations

import json
import logging
import queue
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agc_pipeline.training.distributed import DistributedSettings, data_groups
from agc_pipeline.training.launch import Launch, RankFailed, rank_device, require_world
from agc_pipeline.training.outbox import COMMAND, Outbox
from agc_pipeline.training.startup import fault_spec
from agc_pipeline.training.wire import (
    TAG_PARAMS,
    Arrival,
    Command,
    Inbox,
    Kind,
    Transport,
    WireFormat,
    error_text,
    write_parameters,
)

__all__ = ["Cluster"]

log = logging.getLogger("agc_pipeline.train")

#: parameter messages kept for reuse once every worker has them
PARAMS_POOL = 3


@dataclass
class _Peer:
    """What the PS knows about one worker."""

    pid: int = 0
    host: str = ""
    alive: bool = True
    heard: float = 0.0  #: perf_counter of the last message
    posted: float = 0.0  #: perf_counter when the current parameters were posted to it
    given: int = -1  #: the iteration of the newest parameters posted to it
    outbox: Outbox | None = None  #: its sends (once the links are up)


def _worker_name(rank: int) -> str:
    return f"worker {rank - 1} (rank {rank})"


class Cluster:
    """The PS's side of the processes: the process group, the workers it started (none
    under torchrun), their links (:class:`~agc_pipeline.training.wire.Inbox`), liveness
    and the parameter sends. A context manager: entering starts everything and waits for
    every worker's HELLO; leaving stops the workers and tears down.
    """

    def __init__(self, settings: DistributedSettings, n: int, run_dir: Path,
                 config: dict[str, Any], wire: WireFormat, device: torch.device,
                 events: list[dict[str, Any]], preload: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.n = n
        self.run_dir = Path(run_dir)
        self.config = config
        self.wire = wire
        self.device = device  #: the PS's compute device (its message matrix lives there)
        self.peers = [_Peer() for _ in range(n)]
        self.events = events  #: shared with the PS: worker deaths are appended here
        self.launch = Launch(self.run_dir, n + 1, settings.start_method,
                             settings.startup_timeout_s, config, wire, preload,
                             fault_spec(settings))
        self.launch.name = _worker_name
        self.procs = self.launch.procs  #: worker j's process is procs[j] (local launch)
        self.inbox: Inbox | None = None
        self.transport: Transport | None = None
        #: worker j's waiter puts j here after each of its sends completes
        self._done: queue.SimpleQueue[int] = queue.SimpleQueue()
        #: parameter messages whose sends are not all complete: id → [msg, sends in transit]
        self._pending: dict[int, list[Any]] = {}
        self._spare: list[torch.Tensor] = []  #: released parameter messages, for reuse
        self._current: tuple[int, torch.Tensor] | None = None  #: the newest parameters
        self.max_in_flight = 0  #: most parameter sends to one worker in transit at once
        self.held_back = 0  #: parameter messages not posted to a worker at the cap
        #: ``trainer.broadcast=sequential``: the workers still to be sent the current
        #: parameters, in order, and the one whose send is in transit now
        self._sequence: deque[int] = deque()
        self._sending: int | None = None

    # ------------------------------------------------------------------ start and stop

    def __enter__(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._teardown()

    def _start(self) -> None:
        started = time.perf_counter()
        s = self.settings
        world = self.n + 1
        require_world(s.backend, world, f"the assignment has n = {self.n} workers: use "
                                        f"--nproc_per_node={world} (n + 1, rank 0 = the PS)")
        with self.launch.starting():  # a worker lost meanwhile: StartupLost, naming it
            who = self.launch.start()
            for peer, (pid, host) in zip(self.peers, who[1:], strict=True):
                peer.pid, peer.host = int(pid), str(host)
            cuda = s.torch_device.type == "cuda" or s.backend == "nccl"
            self.transport = Transport(s.backend, rank_device(cuda, 0), data_groups(s.backend))
            self.transport.bind()
            self.inbox = Inbox(self.transport, self.n, self.wire, self.device)
            self.inbox.start()
            for j, peer in enumerate(self.peers):
                peer.outbox = Outbox(j, self.transport, self._done)
            self._await_hellos(s.startup_timeout_s)
        self.launch.forget_rendezvous()  # every rank is connected: the file is no longer read
        self._write_roster(who[0])
        log.info("%d workers ready in %.1f s (%s launch, %s)", self.n,
                 time.perf_counter() - started, "local" if self.procs else "torchrun",
                 s.backend)

    def _await_hellos(self, timeout: float) -> None:
        assert self.inbox is not None
        ready: set[int] = set()
        end = time.perf_counter() + timeout
        while len(ready) < self.n:
            arrival = self.inbox.get(end - time.perf_counter())
            if arrival is None:
                missing = sorted(set(range(self.n)) - ready)
                raise RuntimeError(f"workers {missing} did not report ready within "
                                   f"trainer.startup_timeout_s = {timeout:g} s")
            h = arrival.header
            if arrival.error is not None:  # its link broke: lost, unless it reported first
                raise RuntimeError(f"worker {arrival.worker} failed to start "
                                   f"({arrival.error})")
            if h is None or h.kind != Kind.HELLO:
                raise RankFailed(f"worker {arrival.worker} failed to start (see its stderr)")
            ready.add(arrival.worker)
            self.peers[arrival.worker].heard = arrival.time

    def _write_roster(self, ps: tuple[int, str]) -> None:
        roster = {"ps": {"rank": 0, "pid": ps[0], "host": ps[1]},
                  "workers": [{"worker": j, "rank": j + 1, "pid": p.pid, "host": p.host}
                              for j, p in enumerate(self.peers)]}
        (self.run_dir / "workers.json").write_text(json.dumps(roster, indent=2) + "\n")

    def _teardown(self) -> None:
        """Stop the live workers, end every link, destroy the group, reap the processes."""
        grace = min(self.settings.timeout_s, 30.0)
        if self.inbox is not None:
            for j in self.live:
                self._send_command(j, Command.STOP)
            if self.inbox.join(grace):
                self._kill(self.inbox.open_links())
                if self.inbox.join(10.0):  # e.g. a stopped (SIGSTOP) worker on another node
                    log.error("the links to workers %s cannot be closed (hung workers on "
                              "another host?); this process may abort at exit",
                              self.inbox.open_links())
                    return
        end = time.monotonic() + 10.0
        for peer in self.peers:  # every worker has left or was killed: no send is pending
            if peer.outbox is not None and not peer.outbox.close(end - time.monotonic()):
                log.warning("a send to worker %d is still not complete", peer.outbox.j)
        self.launch.stop(grace)

    def _kill(self, workers: list[int]) -> None:
        """SIGKILL workers on this host (spawned here or by a local torchrun)."""
        for j in workers:
            peer = self.peers[j]
            self.launch.kill(j + 1, peer.pid, peer.host)
            log.warning("worker %d did not stop; killed it", j)

    # ------------------------------------------------------------------ liveness

    @property
    def live(self) -> list[int]:
        """Workers not (yet) declared dead."""
        return [j for j, p in enumerate(self.peers) if p.alive]

    def heard(self, arrival: Arrival) -> None:
        """Record that a worker spoke (for the silence timeout)."""
        self.peers[arrival.worker].heard = arrival.time

    def silent(self, workers: list[int], since: float, now: float) -> list[int]:
        """Those of ``workers`` silent for ``timeout_s`` (counted from ``since`` at most)."""
        limit = self.settings.timeout_s
        return [j for j in workers if now - max(self.peers[j].heard, since) > limit]

    def mark_dead(self, j: int, iteration: int, reason: str, link_broken: bool) -> None:
        """Treat worker j as a permanent straggler from now on (logged once)."""
        peer = self.peers[j]
        if not peer.alive:
            return
        peer.alive = False
        if peer.outbox is not None:  # its messages in transit are reused once complete only
            peer.outbox.owed = False
        self.events.append({"iteration": iteration, "worker": j, "event": "dead",
                            "reason": reason})
        log.warning("iteration %d: worker %d is dead (%s); continuing with %d workers",
                    iteration, j, reason, len(self.live))
        if not link_broken:
            self._send_command(j, Command.STOP)  # a merely silent worker: ask it to leave

    # ------------------------------------------------------------------ parameters

    def send_params(self, iteration: int, params: list[torch.Tensor]) -> int:
        """Write the parameters once into one flat message (in ``trainer.param_dtype``) and
        post it to every live worker (non-blocking); return the bytes posted.

        A worker with :data:`~agc_pipeline.training.outbox.MAX_IN_FLIGHT` parameter sends
        not yet complete (a link slower than the PS's iterations, a stopped process) is
        skipped and owed the parameters: :meth:`catch_up` posts the newest ones when one of
        its sends completes. Without the cap a slow link queued one message per iteration
        without bound (PS memory, stale parameters, and a STOP behind the whole backlog)."""
        assert self.transport is not None
        self._reap()  # every live worker is offered the new parameters below
        if self._current is not None and id(self._current[1]) not in self._pending:
            self._recycle(self._current[1])  # complete while current (kept till now)
        msg = self._spare.pop() if self._spare else self.transport.empty(self.wire.params_bytes)
        write_parameters(msg, iteration, Command.RUN, params, self.wire.param_dtype)
        self._current = (iteration, msg)
        live = self.live
        if self.settings.broadcast == "concurrent":
            return sum(self._offer(j) for j in live)
        shift = iteration % len(live) if live else 0  # no worker always last
        self._sequence = deque(live[shift:] + live[:shift])
        self._sending = None
        return self._send_next()

    @property
    def broadcasting(self) -> bool:
        """A sequential broadcast is under way (the PS's loop then looks more often)."""
        return self._sending is not None or bool(self._sequence)

    def _send_next(self) -> int:
        """``trainer.broadcast=sequential``: once the send in transit is complete, post the
        current parameters to the next worker of the sequence; the bytes posted."""
        if self._sending is not None:
            peer = self.peers[self._sending]
            assert peer.outbox is not None and self._current is not None
            if peer.alive and any(msg is self._current[1] for _, msg in peer.outbox.in_flight):
                return 0
            self._sending = None
        while self._sequence:
            j = self._sequence.popleft()
            if not self.peers[j].alive or self.peers[j].given == self._current[0]:
                continue
            posted = self._offer(j)
            if posted:
                self._sending = j
                return posted
        return 0

    def catch_up(self) -> int:
        """Take the completed sends (without blocking) and post the newest parameters to the
        live workers owed them whose links have room now; the bytes posted."""
        sent = 0
        for j in self._reap():
            outbox = self.peers[j].outbox
            if self.peers[j].alive and outbox is not None and outbox.owed:
                sent += self._offer(j)
        if self.broadcasting:
            sent += self._send_next()
        return sent

    def _reap(self) -> set[int]:
        """Account for the sends the waiters reported complete (messages every send of which
        is complete are reused); the workers they went to."""
        workers: set[int] = set()
        while True:
            try:
                j = self._done.get_nowait()
            except queue.Empty:
                return workers
            workers.add(j)
            outbox = self.peers[j].outbox
            assert outbox is not None
            iteration, msg = outbox.completed()
            entry = self._pending.get(id(msg)) if iteration != COMMAND else None
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._pending[id(msg)]
                    if self._current is None or msg is not self._current[1]:
                        self._recycle(msg)

    def sends_in_flight(self) -> int:
        """The most parameter sends in transit to one live worker now."""
        return max((p.outbox.params_in_flight for p in self.peers
                    if p.alive and p.outbox is not None), default=0)

    def _recycle(self, msg: torch.Tensor) -> None:
        if len(self._spare) < PARAMS_POOL:
            self._spare.append(msg)

    def _offer(self, j: int) -> int:
        """Post the current parameters to worker j unless its link is at the cap."""
        outbox = self.peers[j].outbox
        assert outbox is not None and self._current is not None
        iteration, msg = self._current
        outbox.owed = outbox.full
        if outbox.owed:
            self.held_back += 1
            return 0
        if not self._post(j, iteration, msg):
            return 0
        self.max_in_flight = max(self.max_in_flight, outbox.params_in_flight)
        self.peers[j].posted = time.perf_counter()
        self.peers[j].given = iteration
        return msg.numel()

    def round_trip(self, arrival: Arrival) -> float:
        """Seconds from posting the parameters to worker j to its message's arrival."""
        return arrival.time - self.peers[arrival.worker].posted

    def _send_command(self, j: int, command: Command) -> None:
        """Post a command (never held back: it comes behind at most the cap's messages)."""
        assert self.transport is not None
        msg = write_parameters(self.transport.empty(self.wire.params_bytes), -1, command, None,
                               self.wire.param_dtype)
        self._post(j, COMMAND, msg)

    def _post(self, j: int, iteration: int, msg: torch.Tensor) -> bool:
        outbox = self.peers[j].outbox
        assert outbox is not None
        try:
            outbox.post(msg, TAG_PARAMS, iteration)
        except RuntimeError as exc:
            self.mark_dead(j, iteration, error_text(exc), link_broken=True)
            return False
        if iteration != COMMAND:
            self._pending.setdefault(id(msg), [msg, 0])[1] += 1
        return True
