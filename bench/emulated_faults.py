"""Faults on the emulated star's links (bench/emulated.py): take a node's link down and
bring it back, change a link's rate while processes use it.

:class:`FaultyStar` is a :class:`emulated.Star` with three more methods (the same build,
namespaces and teardown; kept apart so that emulated.py stays under the 450-line rule):

* ``link_down(node)`` / ``link_up(node)``: ``ip -n <switch> link set v<node> down|up``, the
  switch's end of node ``node``'s veth. A veth whose peer is down has no carrier, so the
  node's ``eth0`` loses its carrier (checked by hand with ``ip -n <node> link show eth0``:
  ``<NO-CARRIER,BROADCAST,MULTICAST,UP>`` … ``state DOWN``) and nothing passes in either
  direction. The node keeps its address and
  its sockets: TCP connections are not reset, their segments are dropped and retransmitted
  (exponential back-off), so a link brought back within TCP's retry budget (minutes) resumes
  the same connections — what an unplugged and re-plugged cable does (checked by hand: 25
  MB at 100 Mbit/s with the receiver's link down for 3 s from 0.5 s in took 5.4 s, 2 s of
  transfer + the outage + TCP's back-off; the bridge port forwards again at once, no STP).
  ``link_state(node)`` reads the port's operational state (``DOWN`` / ``UP``, from
  ``ip -o link show``).
* ``set_rate(node, rate_mbit)``: ``tc qdisc change`` of the token bucket on both ends of
  node ``node``'s link (its upload on ``eth0``, its download on ``v<node>``), with the same
  burst and a queue limit recomputed for the new rate (max(2·burst, rate × queue_ms)); the
  queued packets stay, the new rate applies to the next dequeue. ``rate_of(node)`` reads it
  back (``tc qdisc show``; both ends must agree). Checked by hand: 100 → 10 Mbit/s makes
  ``tc -n <node> qdisc show dev eth0`` print ``rate 10Mbit burst 32Kb lat …`` and a TCP
  transfer measure ~9.6 Mbit/s (:func:`emulated.tcp_throughput`).

Everything stays inside the star's namespaces; teardown is the Star's (deleting the
namespaces removes the veths and qdiscs, whatever state a fault left them in).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import emulated  # noqa: E402

__all__ = ["FaultyStar"]

_RATE = re.compile(r"\brate (\d+(?:\.\d+)?)([KMG]?)bit\b")
_UNIT = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}


class FaultyStar(emulated.Star):
    """A :class:`emulated.Star` whose links can fail and slow down (module docstring)."""

    def port(self, node: int) -> str:
        """The switch's end of node ``node``'s link (in the switch namespace)."""
        self._check(node)
        return f"v{node}"

    def _check(self, node: int) -> None:
        if not 0 <= node < self.nodes:
            raise ValueError(f"node must lie in [0, {self.nodes - 1}] (got {node})")
        if self.switch not in self.built:
            raise emulated.EmulationError("the star is not built")

    def link_down(self, node: int) -> None:
        """Unplug node ``node``: its switch port down (no carrier on its ``eth0``)."""
        emulated._run(["ip", "-n", self.switch, "link", "set", self.port(node), "down"])

    def link_up(self, node: int) -> None:
        """Plug node ``node`` back in: its switch port up."""
        emulated._run(["ip", "-n", self.switch, "link", "set", self.port(node), "up"])

    def link_state(self, node: int) -> str:
        """The operational state of node ``node``'s switch port: ``UP``, ``DOWN``, …"""
        out = emulated._run(["ip", "-o", "-n", self.switch, "link", "show", self.port(node)])
        match = re.search(r"\bstate (\S+)", out)
        return match.group(1) if match else "UNKNOWN"

    def _tbf(self, rate_mbit: float) -> list[str]:
        limit = max(2 * self.burst_bytes, int(rate_mbit * 1e6 / 8 * self.queue_ms / 1e3))
        return ["tbf", "rate", f"{rate_mbit * 1e6:.0f}bit", "burst", str(self.burst_bytes),
                "limit", str(limit)]

    def _tbf_where(self) -> list[str]:
        """Where the token bucket hangs: the root (no delay) or below the netem."""
        return ["parent", "1:1", "handle", "10:"] if self.delay_ms else ["root", "handle", "1:"]

    def set_rate(self, node: int, rate_mbit: float) -> None:
        """Node ``node``'s link at ``rate_mbit`` each direction from now on (both tbfs)."""
        if rate_mbit <= 0:
            raise ValueError(f"rate_mbit must be > 0 (got {rate_mbit})")
        for ns, dev in ((self.netns(node), "eth0"), (self.switch, self.port(node))):
            emulated._run(["tc", "-n", ns, "qdisc", "change", "dev", dev, *self._tbf_where(),
                           *self._tbf(rate_mbit)])

    def rate_of(self, node: int) -> float:
        """Node ``node``'s link rate in Mbit/s as tc reports it (both ends must agree)."""
        rates = []
        for ns, dev in ((self.netns(node), "eth0"), (self.switch, self.port(node))):
            out = emulated._run(["tc", "-n", ns, "qdisc", "show", "dev", dev])
            match = _RATE.search(out)
            if match is None:
                raise emulated.EmulationError(f"no tbf rate on {ns} {dev}: {out.strip()}")
            rates.append(float(match.group(1)) * _UNIT[match.group(2)] / 1e6)
        if abs(rates[0] - rates[1]) > 1e-6 * max(rates):
            raise emulated.EmulationError(f"node {node}'s link: upload {rates[0]:g} Mbit/s, "
                                          f"download {rates[1]:g} Mbit/s")
        return rates[0]
