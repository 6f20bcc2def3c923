"""A rank lost during the start-up of a multi-process runtime (:mod:`launch`).

Without care, one rank killed (or crashed) while the others start leaves each of them
waiting out ``trainer.startup_timeout_s`` (300 s) in the gloo rendezvous, then leaving with a
``RuntimeError: Wait timeout`` traceback apiece. Instead, in the local launch:

* **roll call** (before the rendezvous): each rank > 0, once running, sets ``agc/up/<rank>``
  in the rendezvous file's store and waits for rank 0's ``agc/go`` (every rank is up: all
  join the process group) or ``agc/abort`` (one line: which rank was lost); it leaves by
  itself when rank 0 is gone (``multiprocessing.parent_process()``: the end of a pipe that
  only rank 0 holds). Rank 0 meanwhile watches the processes it started (:func:`roll_call`);
* **after the rendezvous** (the configuration broadcast, the ready handshake, the runtime's
  connections): a collective broken by a lost rank raises on the others; rank 0 names the
  rank whose process exited (:meth:`~launch.Launch.starting`) and posts ``agc/abort``, which
  the others read for their own line (:func:`peer_lost`).

Every rank then leaves with one line and no traceback: rank 0 raises :class:`StartupLost`
(the app: ``agc-train: start-up failed: rank 2 was lost during start-up (…)``, exit status
4, as for workers lost later), the others exit with ``EXIT_PEER_LOST``.

``trainer.startup_fault_rank`` makes a given rank exit at a given point
(``trainer.startup_fault_point``) of the start-up, for tests.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["FAULT_POINTS", "StartupLost", "answer_roll_call", "fault_spec", "inject_fault",
           "peer_lost", "post_abort", "roll_call"]

#: where ``trainer.startup_fault_rank`` exits (``trainer.startup_fault_point``): ``rendezvous``
#: (running, before the roll call; rank 0: right after starting the others) or ``joined``
#: (in the process group, with rank 0's configuration, before the ready handshake)
FAULT_POINTS = ("rendezvous", "joined")
GO, ABORT, UP = "agc/go", "agc/abort", "agc/up/"
POLL_S = 0.02  #: seconds between two looks at the store and the processes
#: seconds a rank whose collective broke waits for rank 0's reason before its own line
REASON_WAIT_S = 2.0


class StartupLost(RuntimeError):
    """A rank was lost (or never came up) before the run started: every rank stops."""

    exit_status = 4  #: the train app's exit status (as for workers lost during the run)


def fault_spec(trainer: Any) -> str:
    """``RANK:POINT`` of the ``trainer`` keys (settings or rank 0's configuration mapping)
    ``startup_fault_rank`` and ``startup_fault_point``; empty: no fault."""
    get = trainer.get if isinstance(trainer, dict) else lambda key: getattr(trainer, key, None)
    rank = get("startup_fault_rank")
    return "" if rank is None else f"{rank}:{get('startup_fault_point')}"


def inject_fault(spec: str, rank: int, point: str) -> None:
    """Exit this process at once (``os._exit(1)``, as if killed) when ``spec``
    (:func:`fault_spec`) names ``rank`` and ``point``."""
    if spec == f"{rank}:{point}":
        sys.stderr.write(f"agc rank {rank}: trainer.startup_fault_rank={rank}: exiting "
                         f"abruptly at start-up ({point})\n")
        sys.stderr.flush()
        os._exit(1)


def how_it_ended(exitcode: int | None) -> str:
    """A process's exit status in words."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def lost_line(ranks: Sequence[int], procs: Sequence[Any],
              name: Callable[[int], str] = "rank {}".format) -> str:
    """``rank 2 was lost during start-up (exited with status 1)`` for the started
    ``procs`` (rank r is procs[r − 1]) that exited; ``name``: how a rank is called."""
    what = [(name(r), how_it_ended(procs[r - 1].exitcode)) for r in ranks]
    if len(what) == 1:
        return f"{what[0][0]} was lost during start-up ({what[0][1]})"
    return f"{', '.join(f'{who} ({how})' for who, how in what)} were lost during start-up"


def post_abort(store: Any, reason: str) -> None:
    """Tell the other ranks why the start-up stops (they print it); never raises."""
    if store is None:
        return
    try:
        store.set(ABORT, reason)
    except RuntimeError:
        pass


def roll_call(store: Any, procs: Sequence[Any], timeout_s: float,
              name: Callable[[int], str] = "rank {}".format) -> None:
    """Rank 0 of a local launch: wait until every started rank is up (then post ``go``);
    raise StartupLost (posted to the others) when one exits first or ``timeout_s`` passes
    (``name``: how a rank is called)."""
    keys = [f"{UP}{r}" for r in range(1, len(procs) + 1)]
    end = time.monotonic() + timeout_s
    while True:
        up = store.check(keys)
        lost = [r for r, proc in enumerate(procs, 1) if proc.exitcode is not None]
        if lost:
            reason = lost_line(lost, procs, name)
        elif up:
            store.set(GO, "1")
            return
        elif time.monotonic() > end:
            missing = [r for r, key in enumerate(keys, 1) if not store.check([key])]
            reason = (f"{', '.join(map(name, missing))} did not start within "
                      f"trainer.startup_timeout_s = {timeout_s:g} s")
        else:
            time.sleep(POLL_S)
            continue
        post_abort(store, reason)
        raise StartupLost(reason)


def answer_roll_call(store: Any, rank: int, timeout_s: float,
                     rank0_alive: Callable[[], bool]) -> None:
    """Rank > 0 of a local launch: say it is up, then wait for rank 0's ``go``; raise
    StartupLost on its ``abort``, when rank 0 is gone (``rank0_alive()`` false) or after
    ``timeout_s``."""
    store.set(f"{UP}{rank}", str(os.getpid()))
    end = time.monotonic() + timeout_s
    while not store.check([GO]):
        if store.check([ABORT]):
            raise StartupLost(store.get(ABORT).decode())
        if not rank0_alive():
            raise StartupLost("rank 0 was lost during start-up")
        if time.monotonic() > end:
            raise StartupLost(f"rank 0 did not start the process group within "
                              f"trainer.startup_timeout_s = {timeout_s:g} s")
        time.sleep(POLL_S)


def peer_lost(store: Any, rank0_alive: Callable[[], bool] | None, error: str) -> StartupLost:
    """Rank > 0 whose start-up collective broke (``error``): rank 0's reason (waiting up to
    :data:`REASON_WAIT_S` for it), else what this rank knows (``rank0_alive``: None where
    it cannot tell)."""
    end = time.monotonic() + REASON_WAIT_S
    while store is not None:
        try:
            if store.check([ABORT]):
                return StartupLost(store.get(ABORT).decode())
        except RuntimeError:
            break
        if rank0_alive is not None and not rank0_alive():
            return StartupLost(f"rank 0 was lost during start-up ({error})")
        if time.monotonic() > end:
            break
        time.sleep(POLL_S)
    return StartupLost(f"a rank was lost during start-up ({error})")
