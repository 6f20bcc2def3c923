"""The straggler regimes of the baseline comparison against their definitions: random stalls
(``straggler=stall``) and persistently slow hosts (``straggler=persistent``), their
high-frequency presets, common random numbers and one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agc_pipeline.build import build_straggler
from agc_pipeline.coding.stragglers import (
    Delay,
    Persistent,
    Slowdown,
    Stall,
    StragglerContext,
)
from agc_pipeline.errors import ConfigError
from tests.conftest import compose_config


def test_stall_frequency_is_p() -> None:
    """Over T·n independent Bernoulli(p) draws the stall fraction is within 4 standard
    deviations of p (a false alarm has probability < 1e-4)."""
    model = Stall(p=0.3, duration=1.0, per_sample=None, s=0)
    n, iterations = 16, 2000
    mask = np.array([model.stalled(t, n) for t in range(iterations)])
    sd = math.sqrt(0.3 * 0.7 / mask.size)
    assert abs(mask.mean() - 0.3) < 4 * sd
    # independent across workers: every worker's own rate is near p too (8 sd, 16 tests)
    assert np.all(np.abs(mask.mean(axis=0) - 0.3) < 8 * math.sqrt(0.21 / iterations))


def test_stalled_arrival_is_compute_plus_duration() -> None:
    model = Stall(p=0.5, duration=2.5, per_sample=0.01, s=1, comm_per_unit=0.1)
    work = np.array([100.0, 200.0, 300.0, 400.0])
    for t in range(20):
        stalled = model.stalled(t, 4)
        draw = model.draw(t, 4, message_length=3, context=_context(work))
        expected = 0.01 * work + np.where(stalled, 2.5, 0.0) + 0.1 * 3
        np.testing.assert_allclose(draw.finish_times, expected)
        # the first n − s survivors; the PS waits for the (n − s)-th arrival
        assert draw.num_survivors == 3
        assert draw.iteration_time == pytest.approx(np.sort(expected)[2])
        assert np.all(draw.finish_times[draw.survivors] <= draw.iteration_time)


def test_stall_probability_bounds() -> None:
    n = 8
    assert not Stall(p=0.0, per_sample=None).stalled(3, n).any()
    assert Stall(p=1.0, per_sample=None).stalled(3, n).all()
    np.testing.assert_allclose(Stall(p=1.0, duration=0.5, per_sample=None,
                                     s=0).compute_times(0, n), 1.5)


def test_stall_uses_the_slow_worker_stream() -> None:
    """At the same seed and p a stalled worker is straggler=slowdown's slow worker."""
    stall, slow = Stall(p=0.2, seed=4, per_sample=None), Slowdown(p=0.2, seed=4,
                                                                   per_sample=None)
    for t in range(30):
        np.testing.assert_array_equal(stall.stalled(t, 10), slow.slowdowns(t, 10) > 1)


def test_persistent_ranks_are_exactly_factor_slower() -> None:
    model = Persistent(ranks=[1, 3], factor=3.0, per_sample=0.01, s=2)
    work = np.full(5, 100.0)
    for t in range(10):
        c = model.compute_times(t, 5, work)
        np.testing.assert_allclose(c, [1.0, 3.0, 1.0, 3.0, 1.0])
        draw = model.draw(t, 5, message_length=7, context=_context(work))
        # s = 2 = |ranks|: the PS always takes the three fast workers
        np.testing.assert_array_equal(draw.survivors, [True, False, True, False, True])
        assert draw.iteration_time == pytest.approx(1.0)
    assert Persistent(ranks=[], per_sample=None).compute_times(0, 3).tolist() == [1.0] * 3


def test_persistent_with_random_base_keeps_the_ratio() -> None:
    model = Persistent(ranks=[0], factor=5.0, per_sample=None, rate=1.0, s=1)
    plain = Delay(shift=1.0, rate=1.0, s=1)
    for t in range(10):
        c, base = model.compute_times(t, 4), plain.compute_times(t, 4)
        assert c[0] == pytest.approx(5.0 * base[0])
        np.testing.assert_allclose(c[1:], base[1:])


@pytest.mark.parametrize("factory", [
    lambda: Stall(p=0.3, duration=1.0, s=1, comm_per_unit=0.01, seed=2),
    lambda: Persistent(ranks=[2], factor=2.0, rate=1.0, s=1, comm_per_unit=0.01, seed=2)])
def test_identical_draws_across_message_lengths_and_schemes(factory) -> None:
    """Common random numbers: the compute times depend on (seed, t) only; a longer message
    shifts every arrival by the same amount; two instances agree."""
    a, b = factory(), factory()
    work = np.full(6, 50.0)
    for t in range(15):
        np.testing.assert_array_equal(a.compute_times(t, 6, work), b.compute_times(t, 6, work))
        short = a.draw(t, 6, message_length=10, context=_context(work))
        long = b.draw(t, 6, message_length=1000, context=_context(work))
        np.testing.assert_allclose(long.finish_times - short.finish_times, 0.01 * 990)
        np.testing.assert_array_equal(short.survivors, long.survivors)


@pytest.mark.parametrize(("overrides", "cls"), [
    (["straggler=stall"], Stall), (["straggler=persistent"], Persistent),
    # the documented high-frequency settings
    (["straggler=stall", "straggler.p=0.3"], Stall),
    (["straggler=slowdown", "straggler.p=0.3"], Slowdown)])
def test_option_files_compose(overrides: list[str], cls: type) -> None:
    model = build_straggler(compose_config("train", [*overrides, "seed=5"]))
    assert isinstance(model, cls) and isinstance(model, Delay) and model.seed == 5
    assert model.name == overrides[0].split("=")[1]
    if len(overrides) == 2:
        assert model.p == 0.3
    draw = model.draw(0, 4, 10, _context(np.full(4, 10.0)))
    assert draw.num_survivors == 3 and np.isfinite(draw.iteration_time)


@pytest.mark.parametrize(("factory", "message"), [
    (lambda: Stall(p=1.5), r"straggler.p \(probability that a worker stalls\) must lie in "
                           r"\[0, 1\] \(got 1.5\)"),
    (lambda: Stall(p=-0.1), "must lie in"),
    (lambda: Stall(p=True), r"must lie in \[0, 1\] \(got True\)"),
    (lambda: Stall(duration=-1.0), r"straggler.duration \(stall length\) must be ≥ 0"),
    (lambda: Stall(duration=True), "straggler.duration .* must be a finite number"),
    (lambda: Persistent(factor=0.5), r"straggler.factor .* must be ≥ 1.0"),
    (lambda: Persistent(factor=False), "straggler.factor .* must be a finite number"),
    (lambda: Persistent(ranks=[0, True]), r"straggler.ranks\[1\] must be a non-negative"),
    (lambda: Persistent(ranks=[-1]), r"straggler.ranks\[0\] must be a non-negative"),
    (lambda: Persistent(ranks="0"), "straggler.ranks must be a list of integers"),
    (lambda: Persistent(ranks=[1, 1]), "must not repeat"),
    (lambda: Persistent(ranks=[0, 4], per_sample=None).draw(0, 4, 1),
     r"straggler.ranks \[4\] out of range for n = 4 workers"),
])
def test_bad_values_are_one_line_errors(factory, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        factory()
    assert "\n" not in str(info.value)


def _context(work: np.ndarray) -> StragglerContext:
    n = len(work)
    return StragglerContext(assignment=np.eye(n, dtype=np.int64), m=1, work=work)
