"""``trainer.broadcast=sequential``: the PS posts the parameters to one worker at a time (the
cost model's ``unicast`` broadcast), in an order rotated every iteration, never two copies of
the current parameters in transit at once; the training is the simulated trainer's, and a
worker lost mid-sequence is skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training.processes import Cluster
from tests.conftest import compose_config
from tests.test_distributed import CODE7, DIST, FAST, FRC, ONE_DROPS, final_params, rows, train

pytestmark = pytest.mark.watchdog(180)

SEQUENTIAL = "trainer.broadcast=sequential"


def test_sends_go_one_at_a_time_in_a_rotating_order(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    offer = Cluster._offer
    posts: list[tuple[int, int, list[int]]] = []

    def recorded(self: Cluster, j: int) -> int:
        assert self._current is not None
        iteration, msg = self._current
        others = [k for k, p in enumerate(self.peers) if k != j and p.outbox is not None
                  and any(m is msg for _, m in p.outbox.in_flight)]
        posts.append((iteration, j, others))
        return offer(self, j)

    monkeypatch.setattr(Cluster, "_offer", recorded)
    summary, out = train(tmp_path, *CODE7, SEQUENTIAL, "trainer.iterations=6")
    assert summary["status"] == "completed"
    assert summary["distributed"]["broadcast"] == "sequential"
    assert [r["survivors"] for r in out] == [4] * 6  # no stragglers: every worker, each time
    assert all(not others for _, _, others in posts), posts  # never two copies in transit
    for t in range(6):
        order = [j for it, j, _ in posts if it == t]
        assert order == [(t + i) % 4 for i in range(4)], (t, order)


def test_sequential_training_equals_the_simulated_run(tmp_path: Path) -> None:
    """One worker (seeded) never answers each iteration: same survivors and parameters."""
    overrides = [*CODE7, *ONE_DROPS]
    simulated = [o for o in overrides if not o.startswith("trainer.")]
    run_training(compose_config("train", [*FAST, *simulated]), tmp_path / "sim")
    summary, out = train(tmp_path / "dist", *overrides, SEQUENTIAL)
    assert [r["survivors"] for r in out] == [r["survivors"] for r in rows(tmp_path / "sim")]
    for p, q in zip(final_params(tmp_path / "dist"), final_params(tmp_path / "sim"),
                    strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_worker_lost_mid_sequence_is_skipped(tmp_path: Path) -> None:
    summary, out = train(tmp_path, *FRC, SEQUENTIAL, "trainer.wait=all",
                         "trainer.iterations=6", "trainer.fault.kill_worker=2",
                         "trainer.fault.at_iteration=2")
    assert summary["status"] == "completed" and summary["dead_workers"] == [2]
    assert [r["survivors"] for r in out] == [4, 4, 3, 3, 3, 3]
    assert max(r["iteration_time"] for r in out) < 10  # the broken link, not the timeout
    assert all(r["grad_error"] < 1e-10 for r in out)


def test_an_unknown_broadcast_is_refused() -> None:
    with pytest.raises(ConfigError, match="trainer.broadcast must be one of concurrent | "
                                          "sequential"):
        build_trainer(compose_config("train", [*FAST, *DIST, *CODE7, "trainer.broadcast=tree"]))
