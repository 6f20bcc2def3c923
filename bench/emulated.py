"""An emulated star cluster on this host: n + 1 network namespaces behind one bridge, every
node's link shaped with ``tc`` in both directions. Needs root (or CAP_NET_ADMIN and
CAP_SYS_ADMIN) and the ``ip`` and ``tc`` binaries (iproute2).

    python bench/emulated.py --nodes 3 --rate-mbit 100     # build, print, wait for Ctrl-C
    python bench/emulated.py --cleanup                      # remove leftover namespaces

Layout (``<p>`` = ``agc<pid>``, the building process's pid):

* ``<p>-sw``: the switch, a bridge ``br0`` with one port ``v<i>`` per node;
* ``<p>-n<i>`` (i = 0..nodes−1): node i, interface ``eth0`` at ``10.213.<x>.<i+1>/24``
  (x = pid mod 256; the subnet exists only inside these namespaces: nothing is routed
  out of them, and each star has its own bridge) and ``lo`` up;
* each node's link is a veth pair ``eth0`` ↔ ``v<i>``; a token bucket (``tbf``) on the
  egress of *both* ends shapes the node's upload (``eth0``) and download (``v<i>``) to
  ``rate``; optional one-way ``delay`` (``netem``, below the tbf) on both ends too.

Token bucket: ``burst`` bytes (default 32 KiB: ≥ rate/HZ at ≤ 200 Mbit/s) and a queue
``limit`` of ``max(2·burst, rate × queue_ms)`` bytes (default ``queue_ms`` = 20: 250 KB at
100 Mbit/s), beyond which packets are dropped (TCP backs off). ``host_queue`` (packets, off
by default): a node's own egress queues in a ``pfifo`` of that many packets under its tbf
instead (1000: a Linux host's default transmit queue), so that a sender's TCP does not drop
its own packets; the switch ports keep the byte limit. Keep rates ≤ ~200 Mbit/s on
a 2-core host: above that the kernel's copies, not the token bucket, set the rate (a warning
says so).

Teardown always happens: :class:`Star` is a context manager, and every star built by this
process is also removed at exit (``atexit``) and on SIGINT/SIGTERM; processes started with
:meth:`Star.popen` are killed first. A failed step removes what was built and raises one
:class:`EmulationError`. ``--cleanup`` removes the namespaces of stars whose building process
is gone (``--force``: all of them).
"""

from __future__ import annotations

import argparse
import atexit
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cli import at_least  # noqa: E402  (re-exported: emulated.at_least)

__all__ = ["HOST_QUEUE", "EmulationError", "Star", "at_least", "cleanup", "missing_requirements",
           "run_bench", "tcp_losses", "tcp_throughput"]

#: namespaces of the stars this module builds: agc<pid>-sw, agc<pid>-n<i>
NAME_PATTERN = re.compile(r"^agc(\d+)-(sw|n\d+)$")
#: above this rate a 2-core host's CPU, not the link, decides (a warning)
MAX_RATE_MBIT = 200.0
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
#: ``--host-queue``'s suggestion: Linux's default transmit queue (txqueuelen), packets
HOST_QUEUE = 1000

_LIVE: list[Star] = []
_HANDLERS_INSTALLED = False


class EmulationError(RuntimeError):
    """The emulated cluster cannot be built (or torn down): what failed, and why."""


def _capabilities() -> int:
    """This process's effective capability mask (0 where /proc does not say)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def run_bench(name: str, out: Path | None, bench: Callable[[Path], int]) -> int:
    """A benchmark's ``main`` around ``bench(run dir)``: exit 2 naming what this host lacks
    (before anything is built), the run dirs in ``out`` (default: a new temporary dir), exit 1
    with one line on an :class:`EmulationError`."""
    missing = missing_requirements()
    if missing:
        print(f"{name}: missing " + "; ".join(missing), file=sys.stderr)
        return 2
    out = (out or Path(tempfile.mkdtemp(prefix=f"{name}_"))).resolve()
    try:
        return bench(out)
    except EmulationError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 1


def missing_requirements() -> list[str]:
    """What this host lacks to build a star (empty: nothing)."""
    missing = []
    caps = _capabilities()  # root in a container may lack them too
    for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")):
        if not caps >> bit & 1:
            missing.append(f"{name} (run as root, with it)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            missing.append(f"the `{tool}` binary (iproute2)")
    return missing


def _run(argv: Sequence[str]) -> str:
    """Run one ip/tc command; its stdout, or EmulationError with its stderr."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise EmulationError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): "
                             f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def namespaces() -> list[str]:
    """Every network namespace on this host (``ip netns list``)."""
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line]


class Star:
    """n nodes behind one switch; see the module docstring. ``build()`` (or ``with``) makes
    it; ``teardown()`` removes it (idempotent)."""

    def __init__(self, nodes: int, rate_mbit: float, delay_ms: float = 0.0,
                 burst_bytes: int = 32 * 1024, queue_ms: float = 20.0,
                 host_queue: int | None = None) -> None:
        if nodes < 1 or nodes > 250:
            raise ValueError(f"nodes must lie in [1, 250] (got {nodes})")
        if host_queue is not None and host_queue < 1:
            raise ValueError(f"host_queue must be ≥ 1 packet or None (got {host_queue})")
        if rate_mbit <= 0 or delay_ms < 0 or burst_bytes < 1600 or queue_ms <= 0:
            raise ValueError("rate_mbit and queue_ms must be > 0, delay_ms ≥ 0, burst_bytes "
                             f"≥ 1600 (got {rate_mbit}, {queue_ms}, {delay_ms}, {burst_bytes})")
        if rate_mbit > MAX_RATE_MBIT:
            warnings.warn(f"rate {rate_mbit:g} Mbit/s > {MAX_RATE_MBIT:g}: on a small host the "
                          "CPU, not the emulated link, may set the rate", stacklevel=2)
        self.nodes = nodes
        self.rate_mbit = float(rate_mbit)
        self.delay_ms = float(delay_ms)
        self.burst_bytes = int(burst_bytes)
        self.queue_ms = float(queue_ms)
        self.host_queue = host_queue
        pid = os.getpid()
        self.prefix = f"agc{pid}"
        self.subnet = ipaddress.ip_network(f"10.213.{pid % 256}.0/24")
        self.built: list[str] = []  #: namespaces made so far (the switch first)
        self.procs: list[subprocess.Popen] = []

    # ------------------------------------------------------------------ names
    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def netns(self, node: int) -> str:
        """Node ``node``'s namespace."""
        return f"{self.prefix}-n{node}"

    def address(self, node: int) -> str:
        """Node ``node``'s IPv4 address (on its ``eth0``)."""
        return str(self.subnet.network_address + node + 1)

    @property
    def queue_limit_bytes(self) -> int:
        """The token bucket's queue: max(2·burst, rate × queue_ms)."""
        return max(2 * self.burst_bytes, int(self.rate_mbit * 1e6 / 8 * self.queue_ms / 1e3))

    def describe(self) -> str:
        delay = f", {self.delay_ms:g} ms delay each way" if self.delay_ms else ""
        return (f"star of {self.nodes} nodes ({self.netns(0)}..{self.netns(self.nodes - 1)}, "
                f"switch {self.switch}, {self.subnet}): {self.rate_mbit:g} Mbit/s per link "
                f"each direction{delay}, tbf burst {self.burst_bytes} B, switch port queue "
                f"{self.queue_limit_bytes} B, node egress queue "
                + (f"{self.host_queue} packets" if self.host_queue else "the same"))

    # ------------------------------------------------------------------ build
    def __enter__(self) -> Star:
        return self.build()

    def __exit__(self, *exc: Any) -> None:
        self.teardown()

    def build(self) -> Star:
        """Make the namespaces, bridge, links and shaping; on any failure remove what was
        made and raise EmulationError."""
        missing = missing_requirements()
        if missing:
            raise EmulationError("cannot build an emulated cluster: missing "
                                 + "; ".join(missing))
        _install_handlers()
        _LIVE.append(self)
        try:
            self._make_switch()
            for node in range(self.nodes):
                self._make_node(node)
        except BaseException as err:
            self.teardown()
            if isinstance(err, EmulationError):
                raise EmulationError(f"building the {self.describe()} failed, removed what "
                                     f"was built: {err}") from None
            raise
        return self

    def _add_netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self.built.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _make_switch(self) -> None:
        self._add_netns(self.switch)
        _run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.switch, "link", "set", "br0", "up"])

    def _make_node(self, node: int) -> None:
        ns, port = self.netns(node), f"v{node}"
        self._add_netns(ns)
        _run(["ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name",
              "eth0", "netns", ns])
        _run(["ip", "-n", self.switch, "link", "set", port, "master", "br0"])
        _run(["ip", "-n", ns, "addr", "add", f"{self.address(node)}/{self.subnet.prefixlen}",
              "dev", "eth0"])
        self._shape(ns, "eth0", self.host_queue)
        self._shape(self.switch, port)
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", self.switch, "link", "set", port, "up"])

    def _shape(self, ns: str, dev: str, packets: int | None = None) -> None:
        """A tbf on ``dev``'s egress (under a netem delay where set); ``packets``: its queue
        is a ``pfifo`` of that many packets instead of the tbf's own byte limit."""
        tbf = ["tbf", "rate", f"{self.rate_mbit * 1e6:.0f}bit", "burst",
               str(self.burst_bytes), "limit", str(self.queue_limit_bytes)]
        queue = [] if packets is None else ["pfifo", "limit", str(packets)]
        if not self.delay_ms:
            _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", *tbf])
            if queue:
                _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle",
                      "10:", *queue])
            return
        try:
            _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
                  "delay", f"{self.delay_ms}ms", "limit", "100000"])
        except EmulationError as err:
            raise EmulationError(f"{err} (a delay needs netem: the kernel module sch_netem)"
                                 ) from None
        _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:",
              *tbf])
        if queue:
            _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", "10:1", "handle",
                  "20:", *queue])

    # ------------------------------------------------------------------ use
    def exec_argv(self, node: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside node ``node``'s namespace."""
        return ["ip", "netns", "exec", self.netns(node), *argv]

    def popen(self, node: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in node ``node``'s namespace; killed at teardown if still running."""
        proc = subprocess.Popen(self.exec_argv(node, argv), **kwargs)
        self.procs.append(proc)
        return proc

    # ------------------------------------------------------------------ teardown
    def teardown(self) -> None:
        """Kill the processes started here, then delete the namespaces (their veths and
        qdiscs go with them). Idempotent; errors are collected and raised at the end."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        self.procs.clear()
        errors = []
        for name in reversed(self.built):
            try:
                _run(["ip", "netns", "del", name])
            except EmulationError as err:
                errors.append(str(err))
        self.built.clear()
        if self in _LIVE:
            _LIVE.remove(self)
        if not _LIVE:
            _restore_handlers()
        if errors:
            raise EmulationError("teardown: " + "; ".join(errors))


#: receiver of :func:`tcp_throughput`: bytes and seconds from the first byte to EOF
_RECEIVER = """
import socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(1); print("ready", flush=True)
conn, _ = srv.accept(); total = 0; first = None
while True:
    chunk = conn.recv(1 << 20)
    if not chunk:
        break
    first = first or time.perf_counter(); total += len(chunk)
print(total, time.perf_counter() - first, flush=True)
"""
_SENDER = """
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
block, left = bytes(1 << 16), int(sys.argv[3])
while left > 0:
    left -= conn.send(block[:min(left, len(block))])
conn.close()
"""


def tcp_throughput(star: Star, src: int, dst: int, nbytes: int, port: int = 5201,
                   timeout_s: float = 60.0) -> float:
    """Send ``nbytes`` over one TCP connection from node ``src`` to node ``dst``; the
    receiver's rate in bits/s (first byte to end of stream)."""
    receiver = star.popen(dst, [sys.executable, "-c", _RECEIVER, star.address(dst), str(port)],
                          stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    if receiver.stdout.readline().strip() != "ready":
        raise EmulationError(f"the TCP receiver in {star.netns(dst)} did not start")
    sender = star.popen(src, [sys.executable, "-c", _SENDER, star.address(dst), str(port),
                              str(nbytes)])
    sender.wait(timeout_s)
    out, _ = receiver.communicate(timeout=timeout_s)
    total, seconds = out.split()
    if int(total) != nbytes or sender.returncode != 0:
        raise EmulationError(f"TCP transfer {src} -> {dst}: {total} of {nbytes} bytes arrived "
                             f"(sender exit {sender.returncode})")
    return 8.0 * nbytes / float(seconds)


def tcp_losses(star: Star) -> tuple[int, int]:
    """(retransmitted TCP segments, retransmission timeouts) of every node so far: each
    namespace's ``Tcp: RetransSegs`` (/proc/net/snmp) and ``TcpExt: TCPTimeouts``
    (/proc/net/netstat), summed."""
    wanted = {("Tcp:", "RetransSegs"): 0, ("TcpExt:", "TCPTimeouts"): 1}
    totals = [0, 0]
    for node in range(star.nodes):
        lines = _run(star.exec_argv(node, ["cat", "/proc/net/snmp", "/proc/net/netstat"]))
        rows = [line.split() for line in lines.splitlines() if line]
        for names, values in zip(rows[::2], rows[1::2], strict=False):  # header, values
            for name, value in zip(names[1:], values[1:], strict=False):
                if (names[0], name) in wanted:
                    totals[wanted[names[0], name]] += int(value)
    return totals[0], totals[1]


def _teardown_all() -> None:
    for star in list(_LIVE):
        try:
            star.teardown()
        except EmulationError as err:
            print(f"emulated: {err}", file=sys.stderr)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _teardown_all()
    previous = _PREVIOUS.get(signum)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_PREVIOUS: dict[int, Any] = {}


def _install_handlers() -> None:
    """atexit (once), SIGINT and SIGTERM handlers while a star is alive (signals only from
    the main thread); :func:`_restore_handlers` puts the previous ones back."""
    global _HANDLERS_INSTALLED
    if not _HANDLERS_INSTALLED:
        atexit.register(_teardown_all)
        _HANDLERS_INSTALLED = True
    if _PREVIOUS:
        return  # installed for a star that is still alive
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            _PREVIOUS[sig] = signal.signal(sig, _on_signal)
    except ValueError:  # not the main thread: atexit and the context manager only
        pass


def _restore_handlers() -> None:
    """The signal handlers as they were before the first live star (after the last one is
    torn down), so that a star leaves the process as it found it."""
    try:
        for sig, previous in list(_PREVIOUS.items()):
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            del _PREVIOUS[sig]
    except ValueError:  # not the main thread
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup(force: bool = False) -> list[str]:
    """Delete the namespaces named like this module's whose building process is gone (all of
    them with ``force``); return their names."""
    removed = []
    for name in namespaces():
        match = NAME_PATTERN.match(name)
        if match and (force or not _alive(int(match.group(1)))):
            _run(["ip", "netns", "del", name])
            removed.append(name)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rate-mbit", type=at_least(0, strict=True), default=100.0)
    parser.add_argument("--delay-ms", type=at_least(0), default=0.0)
    parser.add_argument("--burst-bytes", type=at_least(1600, int), default=32 * 1024)
    parser.add_argument("--queue-ms", type=at_least(0, strict=True), default=20.0)
    parser.add_argument("--host-queue", type=at_least(0, int), default=0,
                        help=f"packets a node's own egress queues (e.g. {HOST_QUEUE}; 0: none)")
    parser.add_argument("--cleanup", action="store_true",
                        help="remove leftover namespaces of stars whose process is gone")
    parser.add_argument("--force", action="store_true", help="--cleanup: remove all of them")
    args = parser.parse_args(argv)
    missing = missing_requirements()
    if missing:
        print("emulated: missing " + "; ".join(missing), file=sys.stderr)
        return 2
    if args.cleanup:
        removed = cleanup(args.force)
        print(f"removed {len(removed)} namespaces" + (f": {' '.join(removed)}" if removed
                                                      else ""))
        return 0
    try:  # the star's own checks (e.g. at most 250 nodes): a usage error, nothing built
        star = Star(args.nodes, args.rate_mbit, args.delay_ms, args.burst_bytes,
                    args.queue_ms, args.host_queue or None)
    except ValueError as err:
        parser.error(str(err))
    try:
        with star:
            print(star.describe())
            for node in range(star.nodes):
                print(f"  node {node}: ip netns exec {star.netns(node)} …  ({star.address(node)})")
            print("Ctrl-C removes it", flush=True)
            while True:
                time.sleep(3600)
    except EmulationError as err:
        print(f"emulated: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
