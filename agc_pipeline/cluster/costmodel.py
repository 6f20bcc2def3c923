"""A cluster cost model: the time of one iteration of coded SGD on a parameter server (PS) and
of one iteration of data-parallel SGD with a ring all-reduce (DDP), from link bandwidth and
latency, per-sample compute and per-worker slowdowns. Pure numpy.

Every node (the PS and each worker) has one full-duplex link of bandwidth β (bytes/s, each
direction) and one-way latency α (s); a transfer of S bytes alone takes ``α + S/β``.

Parameter server (Sections II-III: worker j sends one vector Z B(:, j) of ⌈d/m⌉ values):

1. broadcast: the PS sends the d parameters to each worker on its outgoing link
   (``τ_b = d·b_p/β``). ``concurrent`` (what this repository's PS does, the default:
   ``send_params`` posts one non-blocking ``isend`` per live worker in a loop, so the n
   copies are on the wire together and share the PS's link fairly): every worker holds the
   parameters at ``α + n·τ_b``; ``unicast`` (one copy after another): worker j (in the PS's
   sending order) starts at ``α + (j+1)·τ_b``; ``pipelined`` (a chain broadcast in fine
   chunks, as collective libraries implement it): worker j starts at ``(j+1)·α + τ_b``;
2. compute: worker j computes for ``samples_j × flops_per_sample / worker_flops ×
   slowdown_j`` (a load-δ coded worker processes δ/k of the global batch);
3. upload: the messages share the PS's incoming link, first come first served: sorted by the
   time they are ready (r_(0) ≤ r_(1) ≤ …), message i is delivered at
   ``D_i = max(r_(i) + α, D_{i−1}) + τ_u`` with ``τ_u = ⌈d/m⌉·b_g/β``, i.e.
   ``D_i = α + (i+1)·τ_u + max_{j ≤ i} (r_(j) − j·τ_u)`` (:func:`fifo_deliveries`);
4. the PS waits for the first w = n − s deliveries (an order statistic), then decodes:
   streams the w messages once from memory (``w·⌈d/m⌉·b_g`` bytes at the PS's memory
   bandwidth) and solves the optimal decoding system of eq. (4) (``2·mk·w² + w³/3`` flops).

DDP (``torch.nn.parallel.DistributedDataParallel``): every worker computes its B/n samples,
the all-reduce waits for the slowest, and a ring all-reduce of d values takes
``2(n−1)·α + 2(n−1)/n · d·b_g/β`` (reduce-scatter then all-gather, 2(n−1) steps of d/n
values each; DDP's gradient buckets and a logged loss are further all-reduces, each paying
the latency term again); the optimizer step is local.

Compute of a node (:meth:`ClusterModel.worker_compute`): ``(d·t_p + samples ×
flops_per_sample / worker_flops) × slowdown``, where ``t_p`` (``step_time_per_parameter``)
is the fixed work per parameter of an iteration (gradient buffers, flattening, the update:
the intercept of a plain step's time against its batch size). The PS adds its own ``d·t_p``
(the update) after decoding.

A shared host (``shared_cores`` = c, ``cluster=loopback``: the PS and the workers, or the
DDP ranks, are processes on one machine): an iteration also cannot take less than the CPU
work of all processes divided by c (:func:`ps_cpu_work`, :func:`ddp_cpu_work`): every
node's compute, the PS's decode and update, and for each transfer of S bytes ``2·S·c_b``
(the kernel copies it at both ends; ``transfer_cpu_per_byte`` = c_b) plus ``c_m`` per
message (``message_cpu``: wake-ups and system calls). The iteration time is the larger of
that bound and the critical path above. With ``shared_cores`` unset (a real cluster: a
processor per node) nothing of this applies.

What the model ignores (stated again in the README and in ``plan.json``): contention beyond
the PS's link (the switch is non-blocking, workers' links are never the bottleneck of a PS
iteration), overlap of compute and communication (DDP's bucketed all-reduce during the
backward pass, a worker streaming its message as it computes), the optimizer step where
``step_time_per_parameter`` is 0 (the published clusters), messages of stragglers after
the PS moved on (cancelled, they take no bandwidth), protocol overheads beyond the
measured or published effective bandwidth, and memory limits; the sharded runtime's
losses only through ``sharded_link_efficiency``, the fraction of the rate its traffic
reaches when timed alone (on the emulated links 0.67-0.82 at n = 8, where n − 1 flows
converging on a port overflow its queue and wait for TCP's ≥ 200 ms retransmission
timeout, and about 0.7 at n = 2, with no timeout: not only the losses). On a shared host the
CPU-work bound assumes the scheduler keeps every core busy (perfect packing) and counts
the messages of the algorithms (DDP's all-reduces as the caller counts them: its buckets
and a logged loss).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from agc_pipeline.errors import require
from agc_pipeline.validation import require_choice, require_finite, require_int

__all__ = [
    "BROADCASTS",
    "PS_BROADCAST",
    "ClusterModel",
    "compute_times",
    "ddp_cpu_work",
    "ddp_iteration_times",
    "fifo_deliveries",
    "order_statistic",
    "owner_order_statistics",
    "ps_cpu_work",
    "ps_iteration_times",
    "ring_allreduce_time",
    "slowdowns",
]

#: how the PS sends the parameters to the workers (see the module docstring); the first is
#: the default: what ``trainer=distributed`` does (all n sends posted at once)
BROADCASTS = ("concurrent", "unicast", "pipelined")
#: the broadcast of this repository's PS (agc_pipeline/training/processes.py::send_params)
PS_BROADCAST = BROADCASTS[0]


@dataclass(frozen=True)
class ClusterModel:
    """Link and node figures of a cluster (``conf/cluster/<name>.yaml``), validated."""

    name: str
    bandwidth: float  #: bytes/s of every node's link, each direction
    latency: float  #: one-way latency of a message, s
    worker_flops: float  #: FLOP/s a worker sustains on its forward + backward passes
    ps_memory_bandwidth: float  #: bytes/s at which the PS streams the messages it decodes
    ps_flops: float  #: FLOP/s of the PS on the small decoding system
    #: seconds per parameter of a node's fixed per-iteration work (buffers, the update)
    step_time_per_parameter: float = 0.0
    #: all nodes are processes on one host with this many cores (None: a processor per node)
    shared_cores: int | None = None
    #: core-seconds per byte at each end of a transfer (counted on a shared host)
    transfer_cpu_per_byte: float = 0.0
    #: core-seconds per message, both ends together (counted on a shared host)
    message_cpu: float = 0.0
    #: fraction of ``bandwidth`` that ``trainer=sharded``'s traffic reaches (1: lossless)
    sharded_link_efficiency: float = 1.0

    def __post_init__(self) -> None:
        require_finite(self.bandwidth, "cluster.bandwidth", 0.0, strict_minimum=True)
        require_finite(self.latency, "cluster.latency", 0.0)
        require_finite(self.worker_flops, "cluster.worker_flops", 0.0, strict_minimum=True)
        require_finite(self.ps_memory_bandwidth, "cluster.ps_memory_bandwidth", 0.0,
                       strict_minimum=True)
        require_finite(self.ps_flops, "cluster.ps_flops", 0.0, strict_minimum=True)
        require_finite(self.step_time_per_parameter, "cluster.step_time_per_parameter", 0.0)
        if self.shared_cores is not None:
            require_int(self.shared_cores, "cluster.shared_cores", minimum=1)
        require_finite(self.transfer_cpu_per_byte, "cluster.transfer_cpu_per_byte", 0.0)
        require_finite(self.message_cpu, "cluster.message_cpu", 0.0)
        require_finite(self.sharded_link_efficiency, "cluster.sharded_link_efficiency", 0.0,
                       1.0, strict_minimum=True)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly figures."""
        return asdict(self)

    def transfer_time(self, nbytes: float) -> float:
        """One message of ``nbytes`` alone on a link: α + S/β."""
        return self.latency + nbytes / self.bandwidth

    def worker_compute(self, samples: float, flops_per_sample: float, d: int,
                       slowdown: np.ndarray | float = 1.0) -> np.ndarray:
        """A node's compute: ``(d·t_p + samples × flops_per_sample / worker_flops) ×
        slowdown`` (the fixed per-parameter work, then the samples)."""
        slow = np.asarray(slowdown, dtype=np.float64)
        return d * self.step_time_per_parameter * slow + compute_times(
            samples, flops_per_sample, self.worker_flops, slow)

    def transfer_cpu(self, nbytes: float, messages: float) -> float:
        """CPU of transfers on a shared host: ``2·nbytes·c_b + messages·c_m``."""
        return 2.0 * nbytes * self.transfer_cpu_per_byte + messages * self.message_cpu

    def shared_host_bound(self, cpu_work: np.ndarray | float) -> np.ndarray | float:
        """The least iteration time the CPU work allows on a shared host: ``work / c``
        (0 with a processor per node)."""
        if self.shared_cores is None:
            return np.zeros_like(np.asarray(cpu_work, dtype=np.float64))
        return np.asarray(cpu_work, dtype=np.float64) / self.shared_cores

    def broadcast_starts(self, n: int, param_bytes: float,
                         broadcast: str = PS_BROADCAST) -> np.ndarray:
        """When each of the n workers holds the new parameters (``param_bytes`` per copy), in
        the PS's sending order; shape (n,). ``concurrent``: the n copies share the link
        fairly and all finish at ``α + n·τ``; ``unicast``: ``α + (j+1)·τ``; ``pipelined``:
        ``(j+1)·α + τ``."""
        require_choice(broadcast, "broadcast", BROADCASTS)
        order = np.arange(1, n + 1, dtype=np.float64)
        tau = param_bytes / self.bandwidth
        if broadcast == "concurrent":
            return np.full(n, self.latency + n * tau)
        if broadcast == "unicast":
            return self.latency + order * tau
        return order * self.latency + tau

    def ps_deliveries(self, ready: np.ndarray, message_bytes: float) -> np.ndarray:
        """Delivery times at the PS of messages ready at ``ready`` (…, n) (inf: never sent),
        through its incoming link (:func:`fifo_deliveries`); same shape, worker order."""
        return fifo_deliveries(ready, self.latency, message_bytes / self.bandwidth)

    def decode_time(self, survivors: int, m: int, k: int, length: int,
                    grad_bytes: float) -> float:
        """PS decode: stream ``survivors`` messages of ``length`` values once, and solve the
        optimal decoding system of eq. (4) (Gram matrix of B_𝓕 and its factorisation)."""
        w = float(survivors)
        streamed = w * length * grad_bytes / self.ps_memory_bandwidth
        solve = (2.0 * m * k * w * w + w**3 / 3.0) / self.ps_flops
        return streamed + solve

    def ring_allreduce_time(self, n: int, values: int, bytes_per_value: float,
                            allreduces: int = 1) -> float:
        """Ring all-reduce of ``values`` values on n nodes (see :func:`ring_allreduce_time`)."""
        return ring_allreduce_time(n, values, bytes_per_value, self.bandwidth, self.latency,
                                   allreduces)


def ring_allreduce_time(n: int, values: int, bytes_per_value: float, bandwidth: float,
                        latency: float, allreduces: int = 1) -> float:
    """2(n−1) steps of ⌈values/n⌉ values: ``2(n−1)·α + 2(n−1)/n · values·b/β`` (0 for n = 1).
    The values split into ``allreduces`` all-reduces (DDP's gradient buckets, a logged loss)
    pay the latency term once each: ``allreduces·2(n−1)·α``."""
    require_int(n, "n", minimum=1)
    require_int(allreduces, "allreduces", minimum=1)
    if n == 1:
        return 0.0
    steps = 2 * (n - 1)
    return allreduces * steps * latency + steps / n * values * bytes_per_value / bandwidth


def fifo_deliveries(ready: np.ndarray, latency: float, service: float) -> np.ndarray:
    """First-come-first-served delivery of equal messages over one link.

    ``ready`` (…, n): when each message is ready to leave its worker (inf: never). Message i
    in order of readiness reaches the link after ``latency`` and occupies it for ``service``:
    ``D_i = max(r_(i) + latency, D_{i−1}) + service``, computed in closed form as
    ``latency + (i+1)·service + max_{j ≤ i}(r_(j) − j·service)``. Returns the delivery times
    in the input's order (inf for messages never sent).
    """
    ready = np.asarray(ready, dtype=np.float64)
    order = np.argsort(ready, axis=-1, kind="stable")
    r = np.take_along_axis(ready, order, axis=-1)
    steps = np.arange(r.shape[-1], dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf − finite is inf; nothing here is NaN
        sorted_done = latency + (steps + 1) * service + np.maximum.accumulate(
            r - steps * service, axis=-1)
    out = np.empty_like(sorted_done)
    np.put_along_axis(out, order, sorted_done, axis=-1)
    return out


def order_statistic(times: np.ndarray, rank: int) -> np.ndarray:
    """The ``rank``-th smallest (1-based) of ``times`` along the last axis."""
    times = np.asarray(times, dtype=np.float64)
    require(1 <= rank <= times.shape[-1],
            f"order statistic rank must lie in [1, {times.shape[-1]}] (got {rank})")
    return np.partition(times, rank - 1, axis=-1)[..., rank - 1]


def slowdowns(rng: np.random.Generator, draws: int, n: int, p: float,
              factor: float) -> np.ndarray:
    """Per-worker, per-iteration slowdowns, shape (draws, n): ``factor`` with probability p,
    else 1 (the delay model of the DDP comparison; identical for every scheme that uses the
    same generator state)."""
    require_finite(p, "p", 0.0, 1.0)
    require_finite(factor, "slowdown factor", 1.0)
    return np.where(rng.random((draws, n)) < p, float(factor), 1.0)


def compute_times(samples: float, flops_per_sample: float, worker_flops: float,
                  slowdown: np.ndarray) -> np.ndarray:
    """Compute ∝ samples × per-sample cost × slowdown."""
    return samples * flops_per_sample / worker_flops * np.asarray(slowdown, dtype=np.float64)


def ps_cpu_work(cluster: ClusterModel, cpu: np.ndarray, wait: int, d: int, m: int, k: int,
                grad_bytes: float, param_bytes: float) -> np.ndarray:
    """CPU seconds (…,) of a PS iteration on a shared host, all processes together: the n
    workers' compute ``cpu`` (…, n) (every worker computes and sends, late or not), the
    PS's decode of ``wait`` messages and its update (d·t_p), and the transfers: n copies of
    the d parameters out and n messages of ⌈d/m⌉ values in, 2n messages."""
    cpu = np.asarray(cpu, dtype=np.float64)
    n = cpu.shape[-1]
    length = math.ceil(d / m)
    ps = cluster.decode_time(wait, m, k, length, grad_bytes) + d * cluster.step_time_per_parameter
    traffic = cluster.transfer_cpu(n * d * param_bytes + n * length * grad_bytes, 2 * n)
    return cpu.sum(axis=-1) + ps + traffic


def ddp_cpu_work(cluster: ClusterModel, cpu: np.ndarray, d: int, grad_bytes: float,
                 allreduces: int = 1) -> np.ndarray:
    """CPU seconds (…,) of a DDP iteration on a shared host: the n ranks' compute ``cpu``
    (…, n) and the ring: every rank sends 2(n−1)/n·d values in 2(n−1) messages per
    all-reduce (``allreduces`` of them: DDP's buckets, a logged loss)."""
    cpu = np.asarray(cpu, dtype=np.float64)
    n = cpu.shape[-1]
    if n == 1:
        return cpu.sum(axis=-1)
    steps = 2 * (n - 1)
    traffic = cluster.transfer_cpu(n * steps / n * d * grad_bytes, allreduces * n * steps)
    return cpu.sum(axis=-1) + traffic


def ps_iteration_times(cluster: ClusterModel, compute: np.ndarray, wait: int, d: int, m: int,
                       k: int, grad_bytes: float, param_bytes: float,
                       broadcast: str = PS_BROADCAST, decode: bool = True,
                       cpu: np.ndarray | None = None) -> np.ndarray:
    """PS iteration times (…,) for per-worker compute times ``compute`` (…, n): broadcast,
    compute, FIFO upload of ⌈d/m⌉-value messages, the ``wait``-th delivery, decode and the
    PS's update (d·t_p); on a shared host at least :func:`ps_cpu_work` / c, where ``cpu``
    (…, n) is the part of ``compute`` that uses a core (default: all of it; a slept delay
    does not)."""
    compute = np.asarray(compute, dtype=np.float64)
    n = compute.shape[-1]
    require_int(wait, "wait", minimum=1, maximum=n)
    length = math.ceil(d / m)
    starts = cluster.broadcast_starts(n, d * param_bytes, broadcast)
    done = cluster.ps_deliveries(starts + compute, length * grad_bytes)
    total = order_statistic(done, wait) + d * cluster.step_time_per_parameter
    if decode:
        total = total + cluster.decode_time(wait, m, k, length, grad_bytes)
    if cluster.shared_cores is not None:
        work = ps_cpu_work(cluster, compute if cpu is None else cpu, wait, d, m, k,
                           grad_bytes, param_bytes)
        total = np.maximum(total, cluster.shared_host_bound(work))
    return total


def ddp_iteration_times(cluster: ClusterModel, compute: np.ndarray, d: int,
                        grad_bytes: float, cpu: np.ndarray | None = None,
                        allreduces: int = 1) -> np.ndarray:
    """DDP iteration times (…,): the slowest worker's compute, then a ring all-reduce of d
    gradient values in ``allreduces`` parts (no overlap with the compute); on a shared host
    at least :func:`ddp_cpu_work` / c (``cpu`` as for :func:`ps_iteration_times`)."""
    compute = np.asarray(compute, dtype=np.float64)
    n = compute.shape[-1]
    total = compute.max(axis=-1) + cluster.ring_allreduce_time(n, d, grad_bytes, allreduces)
    if cluster.shared_cores is not None:
        work = ddp_cpu_work(cluster, compute if cpu is None else cpu, d, grad_bytes,
                            allreduces)
        total = np.maximum(total, cluster.shared_host_bound(work))
    return total


def sharded_cpu_work(cluster: ClusterModel, cpu: np.ndarray, wait: int, d: int, m: int, k: int,
                     grad_bytes: float) -> np.ndarray:
    """CPU seconds (…,) of a ``trainer=sharded`` iteration on a shared host: the n nodes'
    compute ``cpu`` (…, n), n decodes of ``wait`` slices of W = ⌈⌈d/m⌉/n⌉ values, the update
    (d·t_p over all shards) and the transfers: n(n−1) slices of W values and n(n−1) shards of
    m·W values, 2n(n−1) messages."""
    cpu = np.asarray(cpu, dtype=np.float64)
    n = cpu.shape[-1]
    width = math.ceil(math.ceil(d / m) / n)
    nodes = n * cluster.decode_time(wait, m, k, width, grad_bytes)
    traffic = cluster.transfer_cpu(n * (n - 1) * (1 + m) * width * grad_bytes, 2 * n * (n - 1))
    return cpu.sum(axis=-1) + nodes + d * cluster.step_time_per_parameter + traffic


def sharded_iteration_times(cluster: ClusterModel, compute: np.ndarray, wait: int, d: int,
                            m: int, k: int, grad_bytes: float,
                            cpu: np.ndarray | None = None) -> np.ndarray:
    """``trainer=sharded`` iteration times (…,) for per-node compute times ``compute``
    (…, n). Reduce-scatter: node j's n − 1 slices of W = ⌈⌈d/m⌉/n⌉ values leave its link
    one after another, to j + 1, j + 2, … (each owner receives one at a time: the nodes are
    taken to start together and the slices not to overlap, which the runtime only
    approximates: its sends complete into socket buffers), so slice
    arrivals are ``compute_j + α + (n−1)·W·b/β`` (its own: ``compute_j``); an owner proceeds
    at the ``wait``-th, decodes W-value slices and steps d/n parameters; then the all-gather
    of the shards (m·W values each, n − 1 steps): ``(n−1)·(α + m·W·b/β)``. Both phases run
    at ``η·β`` (``sharded_link_efficiency`` η: what this traffic reaches on the links, timed
    alone by a calibration; 1 on a lossless network). On a shared host at least
    :func:`sharded_cpu_work` / c."""
    compute = np.asarray(compute, dtype=np.float64)
    n = compute.shape[-1]
    require_int(n, "n", minimum=2)
    require_int(wait, "wait", minimum=1, maximum=n)
    width = math.ceil(math.ceil(d / m) / n)
    rate = cluster.bandwidth * cluster.sharded_link_efficiency
    scatter = cluster.latency + (n - 1) * width * grad_bytes / rate
    # owner σ's arrivals: its own slice at compute_σ, the others' after the scatter; the
    # slowest owner sets the pace (the all-gather needs every shard)
    owners = owner_order_statistics(compute, scatter, wait).max(axis=-1)
    gather = (n - 1) * (cluster.latency + m * width * grad_bytes / rate)
    total = (owners + cluster.decode_time(wait, m, k, width, grad_bytes)
             + d / n * cluster.step_time_per_parameter + gather)
    if cluster.shared_cores is not None:
        work = sharded_cpu_work(cluster, compute if cpu is None else cpu, wait, d, m, k,
                                grad_bytes)
        total = np.maximum(total, cluster.shared_host_bound(work))
    return total


def owner_order_statistics(compute: np.ndarray, scatter: float, wait: int) -> np.ndarray:
    """When each owner σ of ``trainer=sharded`` holds ``wait`` slices (…, n): the
    ``wait``-th smallest of its arrivals, its own slice at ``compute_σ`` and node j's at
    ``compute_j + scatter``. Equal to ``order_statistic(compute[..., None, :] + scatter·(1 −
    I), wait)`` without the (…, n, n) array: with y the sorted ``compute + scatter`` and y'
    those without σ's entry, the answer is ``min(y'_(w−1), max(y'_(w−2), compute_σ))``
    (0-based, y'_(−1) = −inf, y'_(n−1) = +inf)."""
    compute = np.asarray(compute, dtype=np.float64)
    n = compute.shape[-1]
    require(1 <= wait <= n, f"order statistic rank must lie in [1, {n}] (got {wait})")
    x = compute + scatter
    order = np.argsort(x, axis=-1, kind="stable")
    y = np.take_along_axis(x, order, axis=-1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n), axis=-1)  # σ's position in y
    pad = np.concatenate([np.full((*y.shape[:-1], 1), -np.inf), y,
                          np.full((*y.shape[:-1], 2), np.inf)], axis=-1)

    def without_own(i: int) -> np.ndarray:
        """y'_i for every σ (index i of y with σ's entry removed), from the padded y."""
        return np.where(i < rank, pad[..., i + 1, None], pad[..., i + 2, None])

    upper = without_own(wait - 1)
    lower = without_own(wait - 2) if wait >= 2 else np.full_like(compute, -np.inf)
    return np.minimum(upper, np.maximum(lower, compute))
