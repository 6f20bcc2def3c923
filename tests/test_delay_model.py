"""The delay model of the time-to-accuracy comparison (``straggler=slowdown``: Delay with
``per_sample``, ``p``, ``r``): compute ∝ the samples a worker processes, × r for a slow
worker (probability p), drawn from (seed, iteration) — the same for every scheme and runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agc_pipeline.coding.stragglers import Delay, StragglerContext, worker_samples
from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer, run_training
from tests.conftest import compose_config

N = 6
SMALL = ["dataset=synthetic_logistic", "dataset.n_samples=150", "dataset.dim=6",
         "dataset.num_classes=3", "model=logistic", "trainer.iterations=12",
         "trainer.progress=false", "trainer.alpha_samples=0", "trainer.eval_every=0",
         "trainer.checkpoint_every=0", "straggler=slowdown", "straggler.p=0.3",
         "straggler.r=5", "straggler.per_sample=0.01", "seed=3"]
UNCODED = ["code=uncoded_wait", f"assignment.n={N}"]
#: construction (7), m = 2, cyclic assignment, load s + m = 3
CODE7 = ["assignment=cyclic", f"assignment.n={N}", "assignment.s=1", "m=2",
         "scheme=random_diagonal"]


def slow_factors(seed: int, t: int, n: int, p: float, r: float) -> np.ndarray:
    """The model's slow-down draw, written out: r where U(0,1) < p."""
    u = np.random.default_rng([seed, t, 0x57A6, 0x510]).random(n)
    return np.where(u < p, r, 1.0)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_compute_time_is_proportional_to_the_samples_processed() -> None:
    model = Delay(per_sample=0.5, rate=None, shift=2.0, s=0, comm_per_unit=0.0)
    work = np.array([10.0, 20.0, 30.0])
    np.testing.assert_array_equal(model.compute_times(0, 3, work), [10.0, 20.0, 30.0])
    a = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1]])  # loads 1, 1, 2
    np.testing.assert_array_equal(worker_samples(a, 7), [7, 7, 14])
    draw = model.draw(0, 3, 4, StragglerContext(a, 1, work=worker_samples(a, 7)))
    np.testing.assert_array_equal(draw.finish_times, [7.0, 7.0, 14.0])
    # the shifted-exponential factor and a trace keep working, scaled by the load
    exp = Delay(per_sample=1.0, s=0, seed=5)
    np.testing.assert_array_equal(exp.compute_times(4, 3, work),
                                  Delay(s=0, seed=5).compute_times(4, 3) * work)


def test_slow_workers_are_r_times_slower_with_probability_p() -> None:
    model = Delay(rate=None, p=0.1, r=10.0, s=1, seed=7)
    draws = np.stack([model.compute_times(t, 12) for t in range(4000)])
    assert set(np.unique(draws)) == {1.0, 10.0}
    assert (draws == 10.0).mean() == pytest.approx(0.1, abs=0.01)
    for t in (0, 17):
        np.testing.assert_array_equal(draws[t], slow_factors(7, t, 12, 0.1, 10.0))
    # p = 0 changes nothing: the shifted-exponential draws are those of before
    base = Delay(s=1, seed=7).compute_times(3, 12)
    assert np.array_equal(Delay(s=1, seed=7, p=0.0, r=10.0).compute_times(3, 12), base)


def test_the_draws_are_identical_for_every_scheme() -> None:
    """The same slow workers in every iteration for uncoded and construction (7); the
    load-3 coded worker pays 3× the uncoded worker's compute."""
    uncoded = build_trainer(compose_config("train", [*SMALL, *UNCODED])).coded_part
    coded = build_trainer(compose_config("train", [*SMALL, *CODE7])).coded_part
    assert uncoded.workload.subset_size == coded.workload.subset_size == 20
    np.testing.assert_array_equal(uncoded.work, [20] * N)
    np.testing.assert_array_equal(coded.work, [60] * N)
    for t in range(10):
        times = {}
        for name, part in (("uncoded", uncoded), ("coded", coded)):
            times[name] = part.draw(part.code.encoding(t), t).finish_times
        factors = slow_factors(3, t, N, 0.3, 5.0)
        np.testing.assert_allclose(times["uncoded"], 0.01 * 20 * factors, rtol=1e-12)
        np.testing.assert_allclose(times["coded"], 3 * times["uncoded"], rtol=1e-12)


@pytest.mark.parametrize("batch", [None, 5])
def test_the_virtual_clock_follows_the_formula(batch: int | None, tmp_path: Path) -> None:
    """Construction (7), first n − s = 5 of 6 (straggler.s=1): every iteration lasts the
    5th smallest of per_sample · δ · b · factor; uncoded wait-for-all: the largest."""
    extra = [] if batch is None else [f"trainer.batch_size={batch}"]
    b = batch or 20
    for name, code, load, rank in (("c7", CODE7, 3, N - 2), ("unc", UNCODED, 1, N - 1)):
        summary = run_training(compose_config("train", [*SMALL, *code, *extra]),
                               tmp_path / name)
        expected = [np.sort(0.01 * load * b * slow_factors(3, t, N, 0.3, 5.0))[rank]
                    for t in range(12)]
        got = [r["iteration_time"] for r in rows(tmp_path / name)]
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        assert summary["virtual_time"] == pytest.approx(sum(expected), rel=1e-12)


@pytest.mark.parametrize("kwargs,message", [
    ({"p": 1.5}, "straggler.p"), ({"r": 0.5}, "straggler.r"),
    ({"per_sample": 0.0}, "straggler.per_sample"), ({"rate": 0.0}, "straggler.rate"),
])
def test_bad_delay_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Delay(s=1, **kwargs)


def test_per_sample_needs_the_work() -> None:
    with pytest.raises(ConfigError, match="straggler.per_sample needs the samples"):
        Delay(s=1, per_sample=1.0).draw(0, 4, 10)


def test_abandon_stale_drops_an_overtaken_delay(tmp_path: Path) -> None:
    """trainer.abandon_stale=true: worker 1, slow in iteration 0 only, abandons that
    iteration when the PS moves on (no late message: its delay does not spill into iteration
    1, as in the simulated model); without it the message arrives late during iteration 1
    (test_distributed.py: test_late_messages_are_discarded_by_their_tag)."""
    trace = tmp_path / "trace.csv"
    np.savetxt(trace, np.asarray([[1.0, 3.0, 1.0, 1.0]] + [[5.0, 5.0, 5.0, 5.0]] * 4),
               delimiter=",")
    cfg = ["dataset=synthetic_logistic", "dataset.n_samples=210", "dataset.dim=6",
           "dataset.num_classes=3", "model=logistic", "trainer.iterations=5",
           "trainer.progress=false", "trainer.alpha_samples=0", "trainer.eval_every=0",
           "trainer.checkpoint_every=0", "assignment=fractional", "assignment.n=4",
           "assignment.s=1", "scheme=frc", "m=1", "straggler=delay", "straggler.s=1",
           f"straggler.trace={trace}", "straggler.comm_per_unit=0", "trainer=distributed",
           "trainer.time_scale=0.1", "trainer.timeout_s=30", "trainer.abandon_stale=true"]
    summary = run_training(compose_config("train", cfg), tmp_path / "run")
    out = rows(tmp_path / "run")
    assert out[0]["late"] == out[1]["late"] == 0  # worker 1's tag-0 message never comes
    assert summary["late_messages"] == sum(r["late"] for r in out)  # later: ties at 0.5 s
    assert [r["survivors"] for r in out] == [3] * 5
    assert all(r["grad_error"] < 1e-10 for r in out)
