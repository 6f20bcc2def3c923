"""The cluster cost model (agc_pipeline/cluster/costmodel.py) against hand-computed cases, its
monotonicity, and the simulated trainer's virtual clock under ``cluster=``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agc_pipeline.build import build_cluster
from agc_pipeline.cluster.costmodel import (
    ClusterModel,
    compute_times,
    ddp_cpu_work,
    ddp_iteration_times,
    fifo_deliveries,
    order_statistic,
    ps_cpu_work,
    ps_iteration_times,
    ring_allreduce_time,
    slowdowns,
)
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer
from agc_pipeline.training.loop import advance
from tests.conftest import compose_config

#: a cluster with round numbers: 10 bytes/s, 0.5 s latency, PS decode free
TOY = ClusterModel(name="toy", bandwidth=10.0, latency=0.5, worker_flops=1.0,
                   ps_memory_bandwidth=1e30, ps_flops=1e30)


# ------------------------------------------------------------------------------------------
# ring all-reduce: 2(n−1)α + 2(n−1)/n · d·b/β


def test_ring_allreduce_hand_cases() -> None:
    # n = 4, d = 1000 float32 values, β = 1000 B/s, α = 0.01 s: 6 steps of 250 values
    # = 6·0.01 + 6·(250·4)/1000 = 0.06 + 6 = 6.06 s
    assert ring_allreduce_time(4, 1000, 4, 1000.0, 0.01) == pytest.approx(6.06)
    # n = 2: 2 steps of d/2: 2α + d·b/β
    assert ring_allreduce_time(2, 10, 2, 5.0, 1.0) == pytest.approx(2.0 + 4.0)
    assert ring_allreduce_time(1, 10**9, 4, 1.0, 1.0) == 0.0  # nothing to exchange
    # large n: per-rank traffic tends to 2·d·b, latency grows linearly
    big = ring_allreduce_time(1024, 10**6, 4, 1e9, 0.0)
    assert big == pytest.approx(2 * 1023 / 1024 * 4e6 / 1e9)
    assert TOY.ring_allreduce_time(4, 1000, 4) == pytest.approx(6 * 0.5 + 6 * 1000 / 10)


# ------------------------------------------------------------------------------------------
# the PS's incoming link: FIFO delivery of ⌈d/m⌉-value messages


def test_fifo_deliveries_hand_cases() -> None:
    # three messages ready together: latency, then one after another on the link
    np.testing.assert_allclose(fifo_deliveries(np.zeros(3), 1.0, 2.0), [3.0, 5.0, 7.0])
    # readiness out of worker order, a gap that empties the queue, an inf that never comes
    ready = np.array([10.0, 0.0, np.inf, 1.0])
    np.testing.assert_allclose(fifo_deliveries(ready, 0.0, 2.0), [12.0, 2.0, np.inf, 4.0])
    # batched over leading axes, each row its own queue
    rows = np.array([[0.0, 0.0], [0.0, 5.0]])
    np.testing.assert_allclose(fifo_deliveries(rows, 0.5, 1.0), [[1.5, 2.5], [1.5, 6.5]])


def _fifo_loop(ready: np.ndarray, latency: float, service: float) -> np.ndarray:
    """The recursion D_i = max(r_(i) + α, D_{i−1}) + τ, written as a plain loop."""
    out = np.full(len(ready), np.inf)
    last = -np.inf
    for j in sorted(range(len(ready)), key=lambda j: (ready[j], j)):
        if math.isfinite(ready[j]):
            last = max(ready[j] + latency, last) + service
            out[j] = last
    return out


def test_fifo_closed_form_equals_the_recursion(rng: np.random.Generator) -> None:
    for _ in range(50):
        ready = rng.exponential(1.0, size=12)
        ready[rng.random(12) < 0.2] = np.inf
        latency, service = rng.random(), rng.random()
        np.testing.assert_allclose(fifo_deliveries(ready, latency, service),
                                   _fifo_loop(ready, latency, service))


def _unicast(*args: object, **kw: object) -> np.ndarray:
    """ps_iteration_times with the one-copy-after-another broadcast (the hand cases below
    were computed for it; the default is now the concurrent broadcast the PS really does)."""
    return ps_iteration_times(*args, broadcast="unicast", **kw)  # type: ignore[arg-type]


def test_ps_iteration_hand_case() -> None:
    """n = 3, d = 10 float32 parameters, m = 2: messages of 5 values (20 B, τ_u = 2 s),
    parameter copies of 40 B (τ_b = 4 s), α = 0.5 s; unicast broadcast."""
    starts = TOY.broadcast_starts(3, 40.0, "unicast")
    np.testing.assert_allclose(starts, [4.5, 8.5, 12.5])  # α + (j+1)·τ_b
    np.testing.assert_allclose(TOY.broadcast_starts(3, 40.0, "pipelined"), [4.5, 5.0, 5.5])
    one = np.ones(3)
    ps_iteration_times = _unicast
    # compute 1 s each: ready 5.5, 9.5, 13.5; gaps of 4 s > τ_u: no queue, + α + τ_u
    assert ps_iteration_times(TOY, one, 3, 10, 2, 3, 4, 4) == pytest.approx(16.0)
    assert ps_iteration_times(TOY, one, 2, 10, 2, 3, 4, 4) == pytest.approx(12.0)
    assert ps_iteration_times(TOY, one, 1, 10, 2, 3, 4, 4) == pytest.approx(8.0)
    # compute 3, 0, 0 s: ready 7.5, 8.5, 12.5; D = 10, max(9, 10) + 2 = 12, max(13, 12) + 2
    compute = np.array([3.0, 0.0, 0.0])
    assert ps_iteration_times(TOY, compute, 3, 10, 2, 3, 4, 4) == pytest.approx(15.0)
    # m = 1: messages of 10 values, τ_u = 4 s; 16-bit parameters halve τ_b to 2 s:
    # starts 2.5, 4.5, 6.5, ready 3.5, 5.5, 7.5; D = 8, max(6, 8) + 4 = 12, 16
    assert ps_iteration_times(TOY, one, 3, 10, 1, 3, 4, 2) == pytest.approx(16.0)
    # odd d: ⌈d/m⌉ values per message (d = 11, m = 2: 6 values, τ_u = 2.4 s)
    assert ps_iteration_times(TOY, one, 1, 11, 2, 3, 4, 4) == pytest.approx(
        0.5 + 4.4 + 1.0 + 0.5 + 2.4)


def test_concurrent_broadcast_hand_case() -> None:
    """The PS posts all n copies at once (processes.py::send_params: one isend per worker):
    they share its link fairly and every worker holds the parameters at α + n·τ_b. TOY,
    n = 3, d = 10, m = 2 as above: τ_b = 4 s, so every worker starts at 0.5 + 12 = 12.5 s
    (the unicast's last start), τ_u = 2 s."""
    np.testing.assert_allclose(TOY.broadcast_starts(3, 40.0, "concurrent"), [12.5] * 3)
    np.testing.assert_allclose(TOY.broadcast_starts(3, 40.0), [12.5] * 3)  # the default
    np.testing.assert_allclose(TOY.broadcast_starts(1, 40.0, "concurrent"),
                               TOY.broadcast_starts(1, 40.0, "unicast"))  # one copy: equal
    one = np.ones(3)
    # compute 1 s: all ready at 13.5; the messages queue: D = 13.5 + 0.5 + 2, + 2, + 2
    for wait, expected in ((1, 16.0), (2, 18.0), (3, 20.0)):
        assert ps_iteration_times(TOY, one, wait, 10, 2, 3, 4, 4,
                                  broadcast="concurrent") == pytest.approx(expected)
        assert ps_iteration_times(TOY, one, wait, 10, 2, 3, 4, 4) == pytest.approx(expected)
    # against unicast (16 s when waiting for all): the workers no longer upload while the
    # later copies are still going out, so the messages queue behind each other (+ 2·τ_u)
    assert ps_iteration_times(TOY, one, 3, 10, 2, 3, 4, 4, broadcast="unicast") == \
        pytest.approx(16.0)
    # m = 1 and 16-bit parameters: τ_b = 2 s, τ_u = 4 s; ready 6.5 + 1 = 7.5; D = 12, 16, 20
    assert ps_iteration_times(TOY, one, 3, 10, 1, 3, 4, 2) == pytest.approx(20.0)
    # a slow worker (compute 3, 0, 0 s): ready 15.5, 12.5, 12.5: D = 15, 17, max(16, 17) + 2
    compute = np.array([3.0, 0.0, 0.0])
    assert ps_iteration_times(TOY, compute, 3, 10, 2, 3, 4, 4) == pytest.approx(19.0)
    assert ps_iteration_times(TOY, compute, 2, 10, 2, 3, 4, 4) == pytest.approx(17.0)


def test_decode_time_hand_case() -> None:
    cluster = ClusterModel(name="x", bandwidth=1.0, latency=0.0, worker_flops=1.0,
                           ps_memory_bandwidth=100.0, ps_flops=1000.0)
    # 4 survivors × 10 values × 4 B = 160 B at 100 B/s; 2·m·k·w² + w³/3 = 2·2·6·16 + 64/3
    expected = 1.6 + (2 * 2 * 6 * 16 + 64 / 3) / 1000.0
    assert cluster.decode_time(4, 2, 6, 10, 4) == pytest.approx(expected)
    with_decode = ps_iteration_times(cluster, np.zeros(4), 4, 20, 2, 6, 4, 4)
    without = ps_iteration_times(cluster, np.zeros(4), 4, 20, 2, 6, 4, 4, decode=False)
    assert with_decode - without == pytest.approx(expected)


def test_ddp_iteration_is_the_slowest_worker_plus_the_ring() -> None:
    compute = np.array([[1.0, 3.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0]])
    ring = TOY.ring_allreduce_time(4, 1000, 4)
    np.testing.assert_allclose(ddp_iteration_times(TOY, compute, 1000, 4),
                               [3.0 + ring, 1.0 + ring])


# ------------------------------------------------------------------------------------------
# a node's fixed work per parameter and the shared host (cluster=loopback)


def _host(**kw: float) -> ClusterModel:
    """TOY's links (10 B/s, α = 0.5 s) on one host of 2 cores."""
    return ClusterModel(**{**TOY.describe(), "name": "host", "shared_cores": 2, **kw})


def test_worker_compute_adds_the_fixed_work_per_parameter() -> None:
    cluster = ClusterModel(**{**TOY.describe(), "worker_flops": 2.0,
                              "step_time_per_parameter": 0.01})
    # d = 100: 1 s fixed, then 10 samples × 6 flops / 2 FLOP/s = 30 s; × slowdown 1, 2
    np.testing.assert_allclose(cluster.worker_compute(10, 6, 100, np.array([1.0, 2.0])),
                               [31.0, 62.0])
    # the PS's own update (d·t_p = 10·0.1 = 1 s) follows the wait: TOY's 16 s case + 1 s
    slow_ps = ClusterModel(**{**TOY.describe(), "step_time_per_parameter": 0.1})
    assert _unicast(slow_ps, np.ones(3), 3, 10, 2, 3, 4, 4) == pytest.approx(17.0)
    assert TOY.worker_compute(10, 6, 100) == pytest.approx(60.0)  # t_p = 0: samples only


def test_ps_cpu_work_and_the_shared_host_bound_hand_case() -> None:
    """TOY's n = 3, d = 10, m = 2 case (critical path 16 s) on 2 shared cores with
    c_b = 0.25 core-s per byte at each end and c_m = 1 core-s per message: 3 copies of 40 B
    out and 3 messages of 20 B in = 180 B, 2·180·0.25 + 6·1 = 96 core-s of traffic."""
    host = _host(transfer_cpu_per_byte=0.25, message_cpu=1.0)
    one = np.ones(3)
    assert ps_cpu_work(host, one, 3, 10, 2, 3, 4, 4) == pytest.approx(3.0 + 96.0)
    assert ps_iteration_times(host, one, 3, 10, 2, 3, 4, 4) == pytest.approx(99.0 / 2)
    # a slept delay takes no core: compute 1 s on the path, cpu 0 in the work
    assert ps_iteration_times(host, one, 3, 10, 2, 3, 4, 4, cpu=np.zeros(3)) == \
        pytest.approx(96.0 / 2)
    # cheap transfers: the work (3 + 2·180·0.01 = 6.6 core-s) / 2 < 16 s: the path decides
    cheap = _host(transfer_cpu_per_byte=0.01)
    assert _unicast(cheap, one, 3, 10, 2, 3, 4, 4) == pytest.approx(16.0)
    # a processor per node (shared_cores unset): the same figures change nothing
    apart = ClusterModel(**{**host.describe(), "shared_cores": None})
    assert _unicast(apart, one, 3, 10, 2, 3, 4, 4) == pytest.approx(16.0)
    assert apart.shared_host_bound(123.0) == 0.0
    # the PS's decode and update are work too (d·t_p = 10·0.5 = 5 core-s)
    busy_ps = _host(transfer_cpu_per_byte=0.25, message_cpu=1.0, step_time_per_parameter=0.5)
    assert ps_cpu_work(busy_ps, one, 3, 10, 2, 3, 4, 4) == pytest.approx(3.0 + 5.0 + 96.0)


def test_ddp_cpu_work_and_the_shared_host_bound_hand_case() -> None:
    """n = 4, d = 1000 float32 values: each rank sends 2(n−1) = 6 chunks of 250 values
    (6000 B), 24000 B in all, 24 messages; c_b = 0.25, c_m = 1: 2·24000·0.25 + 24 = 12024
    core-s of traffic; compute 1, 3, 2, 0.5 s. Path: 3 s + the ring's 603 s."""
    host = _host(transfer_cpu_per_byte=0.25, message_cpu=1.0)
    compute = np.array([1.0, 3.0, 2.0, 0.5])
    assert ddp_cpu_work(host, compute, 1000, 4) == pytest.approx(6.5 + 12024.0)
    assert ddp_iteration_times(host, compute, 1000, 4) == pytest.approx((6.5 + 12024.0) / 2)
    cheap = _host(transfer_cpu_per_byte=1e-6)
    assert ddp_iteration_times(cheap, compute, 1000, 4) == pytest.approx(3.0 + 603.0)
    # one rank: no ring, no traffic, only its compute
    assert ddp_cpu_work(host, np.array([[2.0]]), 1000, 4) == pytest.approx([2.0])
    # batched over draws, the bound per draw
    both = np.stack([compute, 2 * compute])
    np.testing.assert_allclose(ddp_iteration_times(host, both, 1000, 4),
                               [(6.5 + 12024) / 2, (13 + 12024) / 2])


def test_order_statistics_and_compute() -> None:
    times = np.array([[3.0, 1.0, 2.0, np.inf], [0.0, 0.0, 5.0, 1.0]])
    np.testing.assert_array_equal(order_statistic(times, 1), [1.0, 0.0])
    np.testing.assert_array_equal(order_statistic(times, 3), [3.0, 1.0])
    np.testing.assert_array_equal(order_statistic(times, 4), [np.inf, 5.0])
    with pytest.raises(ConfigError, match="rank"):
        order_statistic(times, 5)
    # 100 samples × 6 flops / 50 FLOP/s × slowdown
    np.testing.assert_allclose(compute_times(100, 6, 50.0, np.array([1.0, 10.0])), [12, 120])


def test_slowdowns_are_seeded_and_monotone_in_p() -> None:
    a = slowdowns(np.random.default_rng(1), 2000, 16, 0.2, 10.0)
    b = slowdowns(np.random.default_rng(1), 2000, 16, 0.05, 10.0)
    assert set(np.unique(a)) == {1.0, 10.0}
    assert abs((a == 10.0).mean() - 0.2) < 0.01
    assert (b <= a).all()  # common random numbers: a worker slow at p = 0.05 is slow at 0.2
    np.testing.assert_array_equal(a, slowdowns(np.random.default_rng(1), 2000, 16, 0.2, 10.0))


# ------------------------------------------------------------------------------------------
# monotonicity: more waiting, more data, more stragglers, less bandwidth never make it faster


def test_iteration_times_are_monotone() -> None:
    ib = build_cluster(compose_config("train", ["cluster=ib_100g"]))
    assert ib is not None
    n, d, k = 64, 10**8, 72
    rng = np.random.default_rng(0)
    uniform = rng.random((500, n))
    prev_ps = prev_ddp = None
    for p in (0.0, 0.05, 0.2):
        slow = np.where(uniform < p, 10.0, 1.0)
        compute = compute_times(2**20 / n, 6 * d, ib.worker_flops, slow)
        ps = ps_iteration_times(ib, compute, n - 8, d, 2, k, 4, 2).mean()
        ddp = ddp_iteration_times(ib, compute, d, 4).mean()
        if prev_ps is not None:
            assert ps >= prev_ps and ddp >= prev_ddp
        prev_ps, prev_ddp = ps, ddp
    compute = compute_times(2**20 / n, 6 * d, ib.worker_flops, np.where(uniform < 0.05, 10, 1))
    waits = [ps_iteration_times(ib, compute, w, d, 2, k, 4, 2).mean() for w in (1, 32, 56, 64)]
    assert waits == sorted(waits)
    by_m = [ps_iteration_times(ib, compute, 56, d, m, k, 4, 2, decode=False).mean()
            for m in (4, 2, 1)]
    assert by_m == sorted(by_m)  # shorter messages (larger m) never slow the PS down
    by_d = [ps_iteration_times(ib, compute, 56, dd, 2, k, 4, 2).mean()
            for dd in (10**6, 10**7, 10**8)]
    assert by_d == sorted(by_d)
    slower = ClusterModel(**{**ib.describe(), "bandwidth": ib.bandwidth / 10})
    assert (ps_iteration_times(slower, compute, 56, d, 2, k, 4, 2)
            >= ps_iteration_times(ib, compute, 56, d, 2, k, 4, 2)).all()
    rings = [ib.ring_allreduce_time(n, d, 4) for n in (2, 16, 64, 256)]
    assert rings == sorted(rings)


def test_cluster_figures_are_validated_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^cluster\.bandwidth must be > 0"):
        build_cluster(compose_config("train", ["cluster=ib_100g", "cluster.bandwidth=0"]))
    with pytest.raises(ConfigError, match=r"^cluster\.latency must be a finite number"):
        build_cluster(compose_config("train", ["cluster=ib_100g", "cluster.latency=x"]))
    with pytest.raises(ConfigError, match=r"^cluster\.shared_cores must be a positive integer"):
        build_cluster(compose_config("train", ["cluster=loopback", "cluster.shared_cores=0"]))
    with pytest.raises(ConfigError, match=r"^cluster\.transfer_cpu_per_byte must be"):
        build_cluster(compose_config("train", ["cluster=loopback",
                                               "cluster.transfer_cpu_per_byte=-1"]))
    with pytest.raises(ConfigError, match=r"^cluster\.sharded_link_efficiency must be ≤ 1"):
        build_cluster(compose_config("train", ["cluster=emulated_50mbit",
                                               "cluster.sharded_link_efficiency=1.5"]))
    with pytest.raises(ConfigError, match=r"^cluster\.sharded_link_efficiency must be > 0"):
        build_cluster(compose_config("train", ["cluster=ib_100g",
                                               "+cluster.sharded_link_efficiency=0"]))
    with pytest.raises(ConfigError, match=r"^cluster\.step_time_per_parameter must be"):
        build_cluster(compose_config("train", ["cluster=ib_100g",
                                               "cluster.step_time_per_parameter=nan"]))


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONFIG_DIR / "cluster").glob("*.yaml")))
def test_every_cluster_option_builds(option: str) -> None:
    cluster = build_cluster(compose_config("train", [f"cluster={option}"]))
    if option == "none":
        assert cluster is None
    else:
        assert isinstance(cluster, ClusterModel) and cluster.name == option


# ------------------------------------------------------------------------------------------
# the simulated trainer's virtual clock under cluster=


SMALL = ["dataset=synthetic_logistic", "model=logistic", "dataset.n_samples=140",
         "trainer.alpha_samples=0", "trainer.progress=false"]


def test_default_clock_has_no_cluster() -> None:
    cfg = compose_config("train", SMALL)
    assert cfg.cluster.name == "none" and build_cluster(cfg) is None
    runtime = build_trainer(cfg)
    assert runtime.coded_part.cluster is None
    row = advance(runtime)
    # Bernoulli window: compute_time + comm_per_unit · ⌈d/m⌉ (d = 42, m = 2)
    assert row["iteration_time"] == pytest.approx(1.0 + 1e-6 * 21)


def test_cluster_clock_matches_a_hand_computation() -> None:
    """Fano plane (n = 7), m = 2, logistic regression with d = 42 float32 parameters, every
    worker computing 1 ms, cluster=ethernet_10g (β = 1.15e9 B/s, α = 25 µs): the PS posts
    the seven 168-byte copies at once (the concurrent broadcast, as its send_params does),
    so every worker starts at α + 7·τ_b (τ_b = 168/β); the seven 84-byte messages, ready
    together, queue on the PS's link (τ_u = 84/β), so the iteration ends at
    α + 7·τ_b + 1 ms + α + 7·τ_u. (With the unicast broadcast this case was
    α + 7·τ_b + 1 ms + α + τ_u: the earlier workers uploaded while later copies went out.)"""
    cfg = compose_config("train", [*SMALL, "cluster=ethernet_10g", "straggler=none",
                                   "straggler.compute_time=0.001"])
    runtime = build_trainer(cfg)
    coded = runtime.coded_part
    assert (coded.n, coded.d, coded.length, coded.wire_bytes) == (7, 42, 21, 4)
    beta, alpha = 1.15e9, 25e-6
    expected = alpha + 7 * 168 / beta + 0.001 + alpha + 7 * 84 / beta
    first = advance(runtime)
    second = advance(runtime)
    assert first["iteration_time"] == pytest.approx(expected, rel=1e-12)
    assert second["virtual_time"] == pytest.approx(2 * expected, rel=1e-12)
    assert first["survivors"] == 7


def test_cluster_clock_with_delays_queues_the_messages() -> None:
    """Shifted-exponential compute (seconds) and the first n − s = 5 survivors: the PS waits
    for the last survivor's delivery through the FIFO recursion (written as a loop here)."""
    cfg = compose_config("train", [*SMALL, "cluster=loopback", "straggler=delay",
                                   "straggler.s=2", "straggler.shift=1e-5",
                                   "straggler.rate=1e5"])
    runtime = build_trainer(cfg)
    coded, cluster = runtime.coded_part, runtime.coded_part.cluster
    assert cluster is not None
    compute = coded.straggler.draw(0, coded.n, 0).finish_times
    survivors = coded.straggler.draw(0, coded.n, coded.length).survivors
    starts = np.full(7, cluster.latency + 7 * coded.d * 4 / cluster.bandwidth)  # concurrent
    arrival = _fifo_loop(starts + compute, cluster.latency, coded.length * 4 / cluster.bandwidth)
    row = advance(runtime)
    assert row["survivors"] == 5
    assert row["iteration_time"] == pytest.approx(arrival[survivors].max(), rel=1e-12)


def test_cluster_needs_the_simulated_trainer_and_first_n_minus_s() -> None:
    with pytest.raises(ConfigError, match=r"^cluster=ib_100g .*trainer=simulated only"):
        build_trainer(compose_config("train", [*SMALL, "cluster=ib_100g",
                                               "trainer=distributed"]))
    with pytest.raises(ConfigError, match=r"^cluster=ib_100g .*wait_for=first"):
        build_trainer(compose_config("train", [*SMALL, "cluster=ib_100g", "straggler=delay",
                                               "straggler.wait_for=deadline",
                                               "straggler.deadline=2.0"]))


# ------------------------------------------------------------------------------------------
# calibration: the prediction bench/bench_vs_ddp.py prints, held for a small configuration


def test_the_loopback_prediction_of_bench_vs_ddp_holds_for_slept_delays(tmp_path) -> None:
    """DDP and the uncoded PS with n = 3 on this machine, straggler=slowdown slept at 0.1 s
    per unit (0.3–1.3 s per iteration): the mean iteration time that cluster=loopback
    predicts (bench_vs_ddp.modelled_times) lies within 25 % of the measured one."""
    import importlib.util
    import json

    from agc_pipeline.train import run_training
    from tests.conftest import ROOT, compose_config

    spec = importlib.util.spec_from_file_location("bench_vs_ddp",
                                                  ROOT / "bench" / "bench_vs_ddp.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    scale, iterations = 0.1, 4
    base = ["dataset=synthetic_logistic", "dataset.n_samples=240", "dataset.dim=8",
            "dataset.num_classes=3", "model=mlp", "model.hidden=16",
            f"trainer.iterations={iterations}", "trainer.progress=false",
            "trainer.eval_every=0", "trainer.checkpoint_every=0", "trainer.lr=0.5",
            "code=uncoded_wait", "assignment.n=3", "straggler=slowdown", "straggler.p=0.3",
            "straggler.r=4", "straggler.per_sample=0.05", "straggler.comm_per_unit=0",
            f"trainer.time_scale={scale}", "trainer.timeout_s=60"]
    for name, runtime in (("ddp", ["trainer=ddp"]),
                          ("ps", ["trainer=distributed", "trainer.grad_error=false",
                                  "trainer.alpha_samples=0"])):
        cfg = compose_config("train", [*base, *runtime])
        run_training(cfg, tmp_path / name)
        rows = [json.loads(line) for line in
                (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        measured = sum(r["iteration_time"] for r in rows) / len(rows)
        _, predicted = bench.modelled_times(cfg, iterations, scale)
        predicted_mean = sum(predicted) / len(predicted)
        assert predicted_mean > 0.2
        assert abs(predicted_mean / measured - 1) <= 0.25, (name, predicted_mean, measured)
