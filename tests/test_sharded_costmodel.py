"""The cost model of trainer=sharded: reduce-scatter of the message slices, the owners' n − s
arrivals, the all-gather of the shards (hand cases on round-number links)."""

from __future__ import annotations

import numpy as np
import pytest

from agc_pipeline.cluster.costmodel import (
    ClusterModel,
    ddp_iteration_times,
    sharded_cpu_work,
    sharded_iteration_times,
)
from agc_pipeline.errors import ConfigError

#: 10 bytes/s, 0.5 s latency, decode free
TOY = ClusterModel(name="toy", bandwidth=10.0, latency=0.5, worker_flops=1.0,
                   ps_memory_bandwidth=1e30, ps_flops=1e30)


def test_two_nodes_hand_case() -> None:
    """n = 2, d = 20 float32, m = 2: L = 10, slices of W = 5 values (20 B, 2 s); scatter
    α + 2 = 2.5 s; all-gather 1·(α + 2·5·4/10) = 4.5 s."""
    one = np.ones(2)
    assert sharded_iteration_times(TOY, one, 2, 20, 2, 2, 4) == pytest.approx(1 + 2.5 + 4.5)
    assert sharded_iteration_times(TOY, one, 1, 20, 2, 2, 4) == pytest.approx(1 + 4.5)
    # DDP's ring on the same links: 1 + 2α + 80/10 = 10 s
    assert ddp_iteration_times(TOY, one, 20, 4) == pytest.approx(10.0)


def test_link_efficiency_slows_both_phases_only_of_sharded() -> None:
    """η = 0.5: the sharded traffic at 5 B/s: scatter α + 20/5 = 4.5 s, all-gather
    1·(α + 40/5) = 8.5 s; DDP's ring keeps the full rate (10 s)."""
    half = ClusterModel(**{**TOY.describe(), "name": "half", "sharded_link_efficiency": 0.5})
    one = np.ones(2)
    assert sharded_iteration_times(half, one, 2, 20, 2, 2, 4) == pytest.approx(1 + 4.5 + 8.5)
    assert ddp_iteration_times(half, one, 20, 4) == pytest.approx(10.0)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"^cluster\.sharded_link_efficiency must be"):
            ClusterModel(**{**TOY.describe(), "sharded_link_efficiency": bad})


def test_three_nodes_with_a_slow_one() -> None:
    """n = 3, d = 30, m = 1: W = 10 values (40 B, 4 s), scatter α + 2·4 = 8.5 s, all-gather
    2·(α + 4) = 9 s. Compute 3, 0, 0 s: waiting for all, owners 1 and 2 see node 0's slice
    at 11.5 s; waiting for 2, every owner has 2 slices at 8.5 s."""
    compute = np.array([3.0, 0.0, 0.0])
    assert sharded_iteration_times(TOY, compute, 3, 30, 1, 3, 4) == pytest.approx(11.5 + 9)
    assert sharded_iteration_times(TOY, compute, 2, 30, 1, 3, 4) == pytest.approx(8.5 + 9)
    batch = np.stack([compute, np.zeros(3)])
    np.testing.assert_allclose(sharded_iteration_times(TOY, batch, 3, 30, 1, 3, 4),
                               [20.5, 17.5])


def test_shared_host_bound() -> None:
    """2 cores, 0.1 core-s per byte and message: n = 2, d = 20, m = 2 moves 2·1·(1+2)·5·4 =
    120 B (2·120·0.1 = 24 core-s) in 4 messages (0.4), plus 2 s of compute: 26.4 / 2."""
    host = ClusterModel(**{**TOY.describe(), "name": "host", "shared_cores": 2,
                           "transfer_cpu_per_byte": 0.1, "message_cpu": 0.1})
    one = np.ones(2)
    assert sharded_cpu_work(host, one, 2, 20, 2, 2, 4) == pytest.approx(26.4)
    assert sharded_iteration_times(host, one, 2, 20, 2, 2, 4) == pytest.approx(13.2)


def test_one_node_is_refused() -> None:
    with pytest.raises(ConfigError):
        sharded_iteration_times(TOY, np.ones(1), 1, 20, 2, 1, 4)
