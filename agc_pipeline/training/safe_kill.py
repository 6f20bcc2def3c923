"""The one way this package (and its tests) signal another process: :func:`safe_kill`.

It signals exactly one process, named by a pid > 1, and refuses this process, its parent,
its process group's leader and its session's leader (``os.kill`` with 0 or a negative pid
signals a whole process group, -1 every process the user may signal: under pytest that is
pytest itself and whatever started it). Every kill in ``agc_pipeline/`` and ``tests/`` goes
through it (``tests/test_safe_kill.py`` checks the sources), and nothing here signals a
group: processes started here are killed one by one, by the pid of a child that is known to
run (:func:`agc_pipeline.training.launch._kill_started`).
"""

from __future__ import annotations

import os

__all__ = ["KillRefused", "protected_pids", "safe_kill"]


class KillRefused(ValueError):
    """The pid names a process group, every process, or this process's own lineage."""


def protected_pids() -> dict[int, str]:
    """The pids never signalled from here, with what they are."""
    protected = {os.getpid(): "this process", os.getppid(): "this process's parent",
                 os.getpgrp(): "this process group's leader"}
    try:
        protected.setdefault(os.getsid(0), "this session's leader")
    except OSError:
        pass
    return protected


def safe_kill(pid: int, sig: int) -> bool:
    """Send ``sig`` to the one process ``pid``; False when it is gone already. Raises
    KillRefused for a pid ≤ 1 (0 or < 0: a process group or every process; 1: init) or one
    of :func:`protected_pids`."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
        raise KillRefused(f"refusing to signal pid {pid!r}: only one process, by a pid > 1 "
                          "(0 and negative pids signal process groups)")
    what = protected_pids().get(pid)
    if what is not None:
        raise KillRefused(f"refusing to signal pid {pid}: {what}")
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True
