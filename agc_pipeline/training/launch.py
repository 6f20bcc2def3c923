"""Starting and joining the processes of the multi-process runtimes (``trainer=distributed``,
``trainer=ddp``) on ``torch.distributed``.

Two launches, one protocol:

* **local** (the Hydra app alone): the app's process is rank 0; it starts ranks
  1..world−1 (``trainer.start_method``: ``forkserver``, which imports torch once, or
  ``spawn``) and rendezvouses with them through a ``file://`` store in the run dir, so that
  parallel sweep jobs never clash;
* **torchrun** (``RANK``/``WORLD_SIZE`` in the environment): rank 0 runs the Hydra app; the
  other ranks skip Hydra (no run dir, no files, no W&B) and join (:func:`run_from_env`).

Either way every rank joins the default gloo process group, rank 0 broadcasts its resolved
configuration and all ranks exchange (pid, host); a rank lost during the start-up stops
every rank with one line naming it (:mod:`~agc_pipeline.training.startup`). A rank > 0 then
reads the runtime class from ``trainer._target_`` and runs its ``rank_main(config, rank,
world_size[, extra])`` (see :class:`~agc_pipeline.training.runtime.Runtime`): the function
that serves it. The fork server imports the runtime's ``preload`` modules once.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from hydra.utils import get_class

from agc_pipeline.errors import require
from agc_pipeline.training.safe_kill import KillRefused, safe_kill
from agc_pipeline.training.startup import (
    FAULT_POINTS,
    StartupLost,
    answer_roll_call,
    fault_spec,
    inject_fault,
    lost_line,
    peer_lost,
    post_abort,
    roll_call,
)
from agc_pipeline.training.wire import error_text

log = logging.getLogger("agc_pipeline.train")

#: exit status of a rank > 0 whose rank 0 or a peer is gone (it is not to blame)
EXIT_PEER_LOST = 3

__all__ = ["EXIT_PEER_LOST", "Launch", "RankFailed", "StartupLost", "handshake", "process_main",
           "rank_device", "rank_main", "rank_session", "require_world", "run_from_env",
           "serve_built", "torchrun_env"]

#: imported once by the fork server besides the runtime's ``preload``, so that each forked
#: rank starts in milliseconds (symbolic_shapes: torch imports it, and sympy, lazily when a
#: model is built)
PRELOAD = ("agc_pipeline.build", "agc_pipeline.codes.designs", "agc_pipeline.codes.repetition",
           "torch.fx.experimental.symbolic_shapes")
#: environment variable: a torchrun rank's rendezvous timeout before it has the config
STARTUP_TIMEOUT_ENV = "AGC_STARTUP_TIMEOUT_S"
#: a rank > 0's start-up link: the rendezvous store and whether rank 0 is alive (local
#: launch), for its line when a collective of the start-up breaks (:func:`startup_lost`)
_LINK: dict[str, Any] = {}


class RankFailed(RuntimeError):
    """A rank reported that it could not start (its own line says why): not a lost rank."""


def torchrun_env() -> tuple[int, int] | None:
    """``(rank, world_size)`` when launched by torchrun (or any ``env://`` launcher) with
    more than one process, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    return (int(os.environ["RANK"]), world) if world > 1 else None


def require_world(backend: str, world: int, torchrun_rule: str) -> None:
    """Check at start that ``world`` ranks can run: NCCL needs a GPU per rank when the app
    starts them itself; under torchrun, this process must be rank 0 of exactly ``world``
    (``torchrun_rule``: what the processes are and the ``--nproc_per_node`` to use)."""
    env = torchrun_env()
    if env is None:
        require(backend != "nccl" or torch.cuda.device_count() >= world,
                f"trainer.backend=nccl needs one GPU per rank ({world}); found "
                f"{torch.cuda.device_count()}: use trainer.backend=gloo")
    else:
        require(env == (0, world), f"torchrun started {env[1]} processes but {torchrun_rule}")


def rank_device(cuda: bool, rank: int) -> torch.device:
    """The device of ``rank``: its own GPU (LOCAL_RANK, or the rank, modulo the GPUs) when
    ``cuda``, else the CPU."""
    if not cuda:
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", rank))
    return torch.device("cuda", local % torch.cuda.device_count())


class Launch:
    """Rank 0's side of a launch: the rendezvous file, the processes it started (none under
    torchrun) and the default process group. The caller checks a torchrun world size."""

    def __init__(self, run_dir: Path, world: int, start_method: str,
                 startup_timeout_s: float, config: dict[str, Any], extra: Any = None,
                 preload: tuple[str, ...] = (), startup_fault: str = "") -> None:
        self.run_dir = Path(run_dir)
        self.world = world
        self.start_method = start_method
        self.startup_timeout_s = startup_timeout_s
        self.config = config
        self.extra = extra  #: sent with the configuration (the PS's wire format), or None
        self.preload = (*preload, *PRELOAD)  #: the modules the fork server imports once
        #: ``RANK:POINT``: that rank exits at that point of the start-up (tests; ``""``: none)
        self.startup_fault = startup_fault
        if startup_fault:
            rank, point = startup_fault.split(":")
            require(int(rank) < world and point in FAULT_POINTS,
                    f"trainer.startup_fault_rank must be null or a rank 0..{world - 1} "
                    f"(got {rank})")
        self.procs: list[Any] = []  #: rank r is procs[r − 1] (local launch)
        self._rendezvous: Path | None = None
        self._store: Any = None  #: the rendezvous file's store (local launch)
        self.name: Callable[[int], str] = "rank {}".format  #: a rank in messages

    @property
    def kind(self) -> str:
        """``local`` or ``torchrun``."""
        return "local" if torchrun_env() is None else "torchrun"

    def start(self) -> list[tuple[int, str]]:
        """Start (local launch: after the roll call of :func:`~agc_pipeline.training.startup.
        roll_call`) or await the other ranks, join the default gloo group and broadcast the
        configuration; return every rank's (pid, host). Run it inside :meth:`starting`."""
        fault = self.startup_fault
        timeout = datetime.timedelta(seconds=self.startup_timeout_s)
        if torchrun_env() is None:
            self._rendezvous = self.run_dir / f"rendezvous-{uuid.uuid4().hex[:12]}"
            path = str(self._rendezvous.resolve())
            self._store = dist.FileStore(path, self.world)
            self._store.set_timeout(timeout)
            self._spawn(f"file://{path}", fault)
            inject_fault(fault, 0, "rendezvous")
            roll_call(self._store, self.procs, self.startup_timeout_s, self.name)
            dist.init_process_group("gloo", store=dist.PrefixStore("default_pg", self._store),
                                    rank=0, world_size=self.world, timeout=timeout)
        else:
            inject_fault(fault, 0, "rendezvous")
            dist.init_process_group("gloo", init_method="env://", rank=0,
                                    world_size=self.world, timeout=timeout)
        dist.broadcast_object_list([self.config, self.extra], src=0)
        who: list[Any] = [None] * self.world
        dist.all_gather_object(who, (os.getpid(), socket.gethostname()))
        inject_fault(fault, 0, "joined")
        return [(int(pid), str(host)) for pid, host in who]

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Around rank 0's whole start-up (:meth:`start`, the ready handshake, the runtime's
        connections): a collective broken by a rank whose process exited raises StartupLost
        naming that rank, posted to the others; a rank's own failure (RankFailed) passes,
        and any other error (Ctrl-C included) passes after telling the others to leave."""
        try:
            yield
        except (StartupLost, RankFailed):
            raise
        except RuntimeError as exc:
            dead = self.lost()
            if dead:
                reason = lost_line(dead, self.procs, self.name)
                post_abort(self._store, reason)
                raise StartupLost(reason) from None
            post_abort(self._store, f"rank 0 could not start ({error_text(exc)})")
            raise
        except BaseException as exc:
            post_abort(self._store, f"rank 0 stopped during start-up ({type(exc).__name__})")
            raise

    def _spawn(self, init_method: str, fault: str) -> None:
        ctx = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            ctx.set_forkserver_preload(list(self.preload))
        for rank in range(1, self.world):
            proc = ctx.Process(target=process_main, name=f"agc-rank-{rank}",
                               args=(rank, self.world, init_method, self.startup_timeout_s,
                                     fault),
                               daemon=True)
            proc.start()
            self.procs.append(proc)

    def forget_rendezvous(self) -> None:
        """Delete the rendezvous file of the local launch (no longer read once every rank is
        connected; a rank 0 killed before that leaves it, and the next run in the run dir
        deletes it)."""
        if self._rendezvous is not None:
            self._rendezvous.unlink(missing_ok=True)
            self._rendezvous = None
        self._store = None

    def stop(self, grace: float) -> None:
        """Destroy the process group, reap the processes started here (kill those still
        running after ``grace`` seconds) and delete the rendezvous file."""
        if dist.is_initialized():
            dist.destroy_process_group()
        self.reap(grace)
        self.forget_rendezvous()

    def reap(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the processes started here; kill the others."""
        for proc in self.procs:
            proc.join(grace)
            if proc.is_alive():
                _kill_started(proc)
                proc.join(5.0)

    def exited(self, wait_s: float = 2.0) -> list[int]:
        """The ranks whose processes (started here) have exited, waiting up to ``wait_s``
        seconds for one: a peer's closed connection can be seen before its exit is."""
        deadline = time.monotonic() + wait_s
        while True:
            dead = [r for r, p in enumerate(self.procs, 1) if not p.is_alive()]
            if dead or not self.procs or time.monotonic() >= deadline:
                return dead
            time.sleep(0.02)

    def lost(self) -> list[int]:
        """The ranks that left first (:meth:`exited`), not those that exited only because a
        peer did (exit status :data:`EXIT_PEER_LOST`); all exited ranks if none is first."""
        dead = self.exited()
        first = [r for r in dead if self.procs[r - 1].exitcode != EXIT_PEER_LOST]
        return first or dead

    def kill(self, rank: int, pid: int = 0, host: str = "") -> None:
        """SIGKILL ``rank``: a process started here, or ``pid`` when it runs on this host
        (a local torchrun). Never this process, its group or a pid ≤ 1 (:func:`safe_kill`:
        a peer's reported pid is data, not a promise)."""
        if 1 <= rank <= len(self.procs):
            _kill_started(self.procs[rank - 1])
        elif pid and host == socket.gethostname():
            try:
                safe_kill(pid, signal.SIGKILL)
            except KillRefused as exc:
                log.warning("rank %d not killed: %s", rank, exc)


def _kill_started(proc: Any) -> None:
    """SIGKILL a process started here while it still runs: a fork server's child that exited
    is reaped by the fork server, and ``Process.kill`` (which does not poll first) would
    signal its pid, which the system may have given to another process since."""
    if proc.is_alive() and proc.pid:
        try:
            safe_kill(proc.pid, signal.SIGKILL)
        except KillRefused as exc:
            log.warning("%s not killed: %s", proc.name, exc)


def join(rank: int, world_size: int, init_method: str,
         startup_timeout_s: float) -> tuple[dict[str, Any], Any]:
    """A rank > 0: join the default gloo group as ``rank`` (a local launch's ``file://``
    store after its roll call) and return rank 0's configuration and the extra object sent
    with it. Raises StartupLost."""
    timeout = datetime.timedelta(seconds=startup_timeout_s)
    parent = multiprocessing.parent_process()  # rank 0 of a local launch, else None
    _LINK.update(store=None, rank0_alive=None if parent is None else parent.is_alive)
    try:
        if init_method.startswith("file://"):
            assert parent is not None  # started by rank 0 (the local launch)
            store = dist.FileStore(init_method.removeprefix("file://"), world_size)
            store.set_timeout(timeout)
            _LINK["store"] = store
            answer_roll_call(store, rank, startup_timeout_s, parent.is_alive)
            dist.init_process_group("gloo", store=dist.PrefixStore("default_pg", store),
                                    rank=rank, world_size=world_size, timeout=timeout)
        else:
            dist.init_process_group("gloo", init_method=init_method, rank=rank,
                                    world_size=world_size, timeout=timeout)
        box: list[Any] = [None, None]
        dist.broadcast_object_list(box, src=0)
        dist.all_gather_object([None] * world_size, (os.getpid(), socket.gethostname()))
    except RuntimeError as exc:
        raise startup_lost(exc) from None
    return box[0], box[1]


def startup_lost(exc: RuntimeError) -> StartupLost:
    """A rank > 0's start-up collective broke (``exc``): the StartupLost to stop with,
    naming the lost rank where rank 0 said which (:func:`~agc_pipeline.training.startup.
    peer_lost`)."""
    if isinstance(exc, StartupLost):
        return exc
    return peer_lost(_LINK.get("store"), _LINK.get("rank0_alive"), error_text(exc))


def rank_main(rank: int, world_size: int, init_method: str, startup_timeout_s: float,
              fault: str = "") -> int:
    """Join as ``rank`` and run the runtime's ``rank_main``; return the exit status. A
    start-up stopped by a lost rank ends this process at once: one line, EXIT_PEER_LOST."""
    torch.set_num_threads(1)  # the ranks share the machine's cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle
    try:
        inject_fault(fault, rank, "rendezvous")
        config, extra = join(rank, world_size, init_method, startup_timeout_s)
        inject_fault(fault or fault_spec(config["trainer"]), rank, "joined")
        runtime = get_class(config["trainer"]["_target_"])
        require(getattr(runtime, "processes", False) and runtime.rank_main is not None,
                f"trainer={runtime.name} runs in one process: it has no rank {rank} to serve")
        serve = runtime.rank_main
        if extra is None:
            return int(serve(config, rank, world_size))
        return int(serve(config, rank, world_size, extra))
    except StartupLost as exc:
        sys.stderr.write(f"agc rank {rank}: start-up aborted: {exc}; exiting\n")  # one write:
        sys.stderr.flush()  # the ranks' lines do not interleave
        sys.stdout.flush()
        os._exit(EXIT_PEER_LOST)  # a gloo thread may still be blocked: no clean exit


def process_main(rank: int, world_size: int, init_method: str, startup_timeout_s: float,
                 fault: str = "") -> None:
    """Target of the processes rank 0 starts itself (the local launch; ``fault``: see
    :func:`~agc_pipeline.training.startup.fault_spec`)."""
    status = rank_main(rank, world_size, init_method, startup_timeout_s, fault)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run_from_env() -> int:
    """A torchrun rank > 0: join via ``env://`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``)."""
    timeout = float(os.environ.get(STARTUP_TIMEOUT_ENV, "300"))
    return rank_main(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://", timeout)


def handshake(error: str | None, world: int, label: str) -> None:
    """Every rank reports whether it could build its state (``error`` None: ready); raise
    RankFailed on every rank with the first failure (``label`` names the runtime, e.g.
    ``DDP``); a lost rank breaks the collective (RuntimeError)."""
    reports: list[Any] = [None] * world
    dist.all_gather_object(reports, error)
    failed = [(r, e) for r, e in enumerate(reports) if e]
    if failed:
        rank, message = failed[0]
        raise RankFailed(f"{label} rank {rank} could not start: {message}")


def serve_built(build: Callable[[], Any], rank: int, world_size: int, label: str) -> int:
    """A rank > 0 of a multi-process runtime, once joined: ``build()`` its runtime (from rank
    0's configuration, through the composition root), report ready (:func:`handshake`), then
    ``serve()``. Returns the exit status (1 when this or another rank could not start);
    raises StartupLost when a rank is lost meanwhile."""
    error = None
    try:
        runtime = build()
    except Exception as exc:  # noqa: BLE001 - reported to rank 0
        error = f"{type(exc).__name__}: {exc}"
    try:
        handshake(error, world_size, label)
    except RankFailed:
        if error is None:  # another rank failed: rank 0 reports it
            return 1
    except RuntimeError as exc:
        if error is None:
            raise startup_lost(exc) from None
    if error is not None:
        print(f"agc-{label.lower()} rank {rank}: cannot start: {error}", file=sys.stderr,
              flush=True)
        return 1
    return int(runtime.serve())


@contextlib.contextmanager
def rank_session(runtime: Any, config: dict[str, Any], run_dir: Path, backend: str,
                 label: str, connect: Callable[[], None],
                 stop: Callable[[Launch, bool], None], unit: str = "worker") -> Iterator[Launch]:
    """Rank 0 of a multi-process runtime, around the training loop: start (or join) ranks
    1..n−1 with the resolved ``config``, wait until every rank is ready (:func:`handshake`),
    ``connect()`` them, list them in ``<run dir>/workers.json``; afterwards
    ``stop(launch, completed)``. Torch runs on one thread meanwhile (the ranks share the
    cores). ``label`` names the runtime in messages (e.g. ``DDP``)."""
    s, n = runtime.settings, runtime.n
    require_world(backend, n, f"trainer={runtime.name} runs one rank per {unit}, n = {n}: use "
                              f"--nproc_per_node={n}")
    started = time.perf_counter()
    launch = Launch(Path(run_dir), n, s.start_method, s.startup_timeout_s, config,
                    preload=runtime.preload, startup_fault=fault_spec(s))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    completed = False
    try:
        runtime.launch = launch
        with launch.starting():
            who = launch.start()
            handshake(None, n, label)
            connect()
        launch.forget_rendezvous()
        roster = {"ranks": [{"rank": r, "pid": pid, "host": host}
                            for r, (pid, host) in enumerate(who)]}
        (Path(run_dir) / "workers.json").write_text(json.dumps(roster, indent=2) + "\n")
        log.info("%d %s ranks ready in %.1f s (%s launch, %s)", n, label,
                 time.perf_counter() - started, launch.kind, backend)
        yield launch
        completed = True
    finally:
        stop(launch, completed)
        torch.set_num_threads(threads)
