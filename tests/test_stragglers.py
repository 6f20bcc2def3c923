"""Straggler models: common random numbers, Bernoulli rate, exact counts, adversarial sets
(Claim 1), delay semantics, traces and the virtual clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from agc_pipeline.coding.stragglers import (
    Adversarial,
    Bernoulli,
    Delay,
    FixedCount,
    NoStragglers,
    StragglerContext,
    StragglerDraw,
    StragglerModel,
    VirtualClock,
    claim1_choice,
)
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import ConfigError

CONF = CONFIG_DIR


def cyclic_assignment(n: int, delta: int) -> np.ndarray:
    """k = n subsets; worker j holds subsets j, j+1, …, j+δ−1 (mod n)."""
    a = np.zeros((n, n), dtype=np.int64)
    for j in range(n):
        a[(j + np.arange(delta)) % n, j] = 1
    return a


def random_diagonal_b(a: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Construction (7) with ε = 0: block u of B is A·D_u, D_u random ±1."""
    rng = np.random.default_rng(seed)
    return np.vstack([a * rng.choice([-1.0, 1.0], size=a.shape[1]) for _ in range(m)])


def error_fn_for(b: np.ndarray, k: int, m: int) -> Callable[[np.ndarray], float]:
    """Err_𝓕(B) = min_R ‖B R − F‖²_F with R supported on the survivors (eq. 3)."""
    f = np.kron(np.eye(m), np.ones((k, 1)))

    def err(mask: np.ndarray) -> float:
        if not mask.any():
            return float((f**2).sum())
        r = np.linalg.lstsq(b[:, mask], f, rcond=None)[0]
        return float(((b[:, mask] @ r - f) ** 2).sum())

    return err


# ------------------------------------------------------------------------------------------
# Common random numbers and simple models


def test_no_stragglers() -> None:
    draw = NoStragglers(comm_per_unit=0.01).draw(3, n=6, message_length=50)
    assert isinstance(draw, StragglerDraw) and draw.survivors.all() and draw.num_survivors == 6
    assert draw.iteration_time == pytest.approx(1.5)
    np.testing.assert_allclose(draw.finish_times, 1.5)


@pytest.mark.parametrize("factory", [lambda: Bernoulli(q=0.4, seed=3),
                                     lambda: FixedCount(s=3, seed=3),
                                     lambda: Delay(s=2, seed=3)])
def test_common_random_numbers(factory: Callable[[], StragglerModel]) -> None:
    model, same = factory(), factory()
    draws = [model.draw(it, n=12, message_length=100) for it in range(20)]
    for it, draw in enumerate(draws):
        again = same.draw(it, n=12, message_length=100)
        np.testing.assert_array_equal(again.survivors, draw.survivors)
        np.testing.assert_array_equal(again.finish_times, draw.finish_times)
        # the survivor set does not depend on the message length (d vs d/m)
        np.testing.assert_array_equal(model.draw(it, 12, 7).survivors, draw.survivors)
    assert len({d.survivors.tobytes() for d in draws}) > 10  # iterations differ


def test_bernoulli_uses_the_documented_stream() -> None:
    draw = Bernoulli(q=0.3, seed=11).draw(5, n=40, message_length=1)
    expected = np.random.default_rng([11, 5, 0x57A6]).random(40) >= 0.3
    np.testing.assert_array_equal(draw.survivors, expected)
    assert not np.array_equal(Bernoulli(q=0.3, seed=12).draw(5, 40, 1).survivors, expected)


def test_bernoulli_failure_rate() -> None:
    q, n, iterations = 0.25, 40, 500
    model = Bernoulli(q=q, seed=0)
    masks = np.array([model.draw(it, n, 10).survivors for it in range(iterations)])
    rate = 1.0 - masks.mean()
    stderr = np.sqrt(q * (1 - q) / masks.size)
    assert abs(rate - q) < 5 * stderr
    # per-worker failure rates are all plausible too (independent workers)
    per_worker = 1.0 - masks.mean(axis=0)
    assert np.all(np.abs(per_worker - q) < 5 * np.sqrt(q * (1 - q) / iterations))


def test_bernoulli_may_leave_no_survivors() -> None:
    model = Bernoulli(q=0.9, seed=0)
    draws = [model.draw(it, n=2, message_length=10) for it in range(200)]
    empty = [d for d in draws if d.num_survivors == 0]
    assert empty and all(np.isinf(d.finish_times).all() for d in empty)
    assert all(np.isfinite(d.iteration_time) for d in draws)


def test_fixed_count_is_exact() -> None:
    model = FixedCount(s=4, seed=1)
    for it in range(50):
        draw = model.draw(it, n=10, message_length=5)
        assert draw.num_survivors == 6
        assert np.isinf(draw.finish_times[~draw.survivors]).all()
    assert FixedCount(s=0).draw(0, 5, 1).survivors.all()
    with pytest.raises(ConfigError, match=r"straggler.s must satisfy 0 ≤ s < n \(got s=5, n=5\)"):
        FixedCount(s=5).draw(0, n=5, message_length=1)


# ------------------------------------------------------------------------------------------
# Adversarial


@pytest.mark.parametrize("s, claim", [(3, 1), (5, 2)])  # Claim 1, Example 1: k = n, δ = 4, m = 2
def test_adversarial_lower_bound_attains_claim_1(s: int, claim: int) -> None:
    n, m = 10, 2
    a = cyclic_assignment(n, 4)
    context = StragglerContext(assignment=a, m=m)
    model = Adversarial(s=s, method="lower_bound")
    assert model.lower_bound(context) == claim == claim1_choice(n, n, 4, s, m)[0]
    draw = model.draw(0, n, message_length=8, context=context)
    assert draw.num_survivors == n - s
    assert np.array_equal(draw.survivors, model.draw(9, n, 8, context).survivors)
    for seed in range(5):  # Claim 1 holds for any code B
        err = error_fn_for(random_diagonal_b(a, m, seed), n, m)(draw.survivors)
        assert err >= claim - 1e-9
    # and it is a worst case: random sets of the same size do better on average
    b = random_diagonal_b(a, m, 0)
    err_fn = error_fn_for(b, n, m)
    randoms = [err_fn(FixedCount(s=s, seed=1).draw(it, n, 8).survivors) for it in range(30)]
    assert err_fn(draw.survivors) >= np.mean(randoms)


def test_claim1_choice_formula() -> None:
    assert claim1_choice(10, 10, 4, 0, 2) == (0, 1, 0)
    assert claim1_choice(10, 10, 4, 3, 2) == (1, 1, 1)
    assert claim1_choice(10, 10, 4, 5, 2) == (2, 2, 1)
    assert claim1_choice(20, 10, 2, 9, 3) == (27, 3, 9)  # u = 3: ⌊20·9/20⌋·3
    assert claim1_choice(91, 91, 10, 22, 2) == (4, 2, 2)  # Fig. 3 at s/n ≈ 0.24


def test_adversarial_greedy_is_worse_than_random() -> None:
    n, m, s = 10, 2, 3
    a = cyclic_assignment(n, 3)
    err_fn = error_fn_for(random_diagonal_b(a, m, 1), n, m)
    context = StragglerContext(assignment=a, m=m, error_fn=err_fn)
    greedy = Adversarial(s=s, method="greedy").draw(0, n, 4, context)
    assert greedy.num_survivors == n - s
    np.testing.assert_array_equal(
        Adversarial(s=s, method="greedy", seed=9).draw(5, n, 4, context).survivors,
        greedy.survivors)  # deterministic
    randoms = [err_fn(FixedCount(s=s, seed=2).draw(it, n, 4).survivors) for it in range(100)]
    assert err_fn(greedy.survivors) >= np.mean(randoms)
    assert err_fn(greedy.survivors) >= np.median(randoms)


def test_adversarial_needs_context() -> None:
    with pytest.raises(ConfigError, match="StragglerContext"):
        Adversarial(s=1).draw(0, 5, 1)
    context = StragglerContext(assignment=cyclic_assignment(5, 2), m=1)
    with pytest.raises(ConfigError, match="error_fn"):
        Adversarial(s=1, method="greedy").draw(0, 5, 1, context)
    with pytest.raises(ConfigError, match="straggler.s must satisfy"):
        Adversarial(s=5).draw(0, 5, 1, context)


# ------------------------------------------------------------------------------------------
# Delay


def test_delay_waits_for_first_n_minus_s() -> None:
    n, s = 12, 3
    model = Delay(shift=1.0, rate=2.0, comm_per_unit=1e-3, s=s, seed=4)
    for it in range(30):
        draw = model.draw(it, n, message_length=200)
        assert draw.num_survivors == n - s
        assert draw.iteration_time == pytest.approx(np.sort(draw.finish_times)[n - s - 1])
        assert draw.finish_times[draw.survivors].max() == draw.iteration_time
        assert (draw.finish_times[~draw.survivors] >= draw.iteration_time).all()
        assert (draw.finish_times >= 1.0 + 0.2).all()  # shift + comm is the minimum


def test_delay_deadline() -> None:
    n = 20
    model = Delay(shift=1.0, rate=1.0, comm_per_unit=0.0, wait_for="deadline", deadline=1.7)
    counts = []
    for it in range(30):
        draw = model.draw(it, n, message_length=10)
        np.testing.assert_array_equal(draw.survivors, draw.finish_times <= 1.7)
        assert draw.iteration_time <= 1.7
        counts.append(draw.num_survivors)
    # P(Exp(1) ≤ 0.7) ≈ 0.50: survivors vary around n/2
    assert 0.35 * n < np.mean(counts) < 0.65 * n and len(set(counts)) > 1
    # a deadline nobody misses: the PS stops at the last arrival
    late = Delay(wait_for="deadline", deadline=1e6).draw(0, n, 10)
    assert late.survivors.all() and late.iteration_time == late.finish_times.max()


def test_delay_comm_time_scales_with_message_length() -> None:
    n, d, c = 10, 100_000, 1e-5
    first = Delay(s=2, comm_per_unit=c, seed=1)
    for it in range(10):
        full, half = first.draw(it, n, d), first.draw(it, n, d // 2)
        assert half.iteration_time < full.iteration_time
        assert full.iteration_time - half.iteration_time == pytest.approx(c * d / 2)
        np.testing.assert_array_equal(half.survivors, full.survivors)
    # under a deadline, shorter messages (m = 2) let at least as many workers through
    deadline = Delay(wait_for="deadline", deadline=2.5, comm_per_unit=c, seed=1)
    more = 0
    for it in range(20):
        full, half = deadline.draw(it, n, d), deadline.draw(it, n, d // 2)
        assert (half.survivors >= full.survivors).all()
        more += half.num_survivors > full.num_survivors
    assert more > 0


def test_delay_trace_files(tmp_path: Path) -> None:
    times = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 2.0, np.inf], [2.0, 2.0, 1.0, 5.0]])
    np.save(tmp_path / "t.npy", times)
    csv = tmp_path / "t.csv"
    csv.write_text("\n".join(",".join(str(v) for v in row) for row in times) + "\n")
    for path in (tmp_path / "t.npy", csv):
        model = Delay(trace=str(path), s=1, comm_per_unit=0.5)
        draw = model.draw(1, n=4, message_length=2)  # row 1, comm = 1.0
        np.testing.assert_array_equal(draw.finish_times, times[1] + 1.0)
        np.testing.assert_array_equal(draw.survivors, [True, True, True, False])
        assert draw.iteration_time == 5.0
        cycled = model.draw(4, n=4, message_length=2)  # 4 mod 3 rows = row 1 again
        np.testing.assert_array_equal(cycled.finish_times, draw.finish_times)
        assert model.draw(0, n=3, message_length=0).iteration_time == 2.0  # first 3 columns
    with pytest.raises(ConfigError, match="4 worker columns, need n = 5"):
        Delay(trace=str(csv), s=1).draw(0, 5, 1)
    with pytest.raises(ConfigError, match="wait forever"):
        Delay(trace=str(csv), s=0).draw(1, 4, 1)
    deadline = Delay(trace=str(csv), wait_for="deadline", deadline=3.0, comm_per_unit=0.0)
    assert deadline.draw(1, 4, 1).iteration_time == 3.0  # worker 3 never arrives


def test_virtual_clock() -> None:
    clock = VirtualClock(decode_cost=0.01)
    model = Delay(s=1, seed=2)
    times = [clock.advance(model.draw(it, 8, 100)) for it in range(20)]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    expected = sum(model.draw(it, 8, 100).iteration_time for it in range(20)) + 20 * 0.01
    assert clock.virtual_time == pytest.approx(expected)
    before = clock.virtual_time
    clock.advance(NoStragglers(comm_per_unit=0.0).draw(0, 4, 1), decode_cost=0.5)
    assert clock.virtual_time == pytest.approx(before + 1.5)
    with pytest.raises(ConfigError, match="finite"):
        clock.advance(StragglerDraw(np.ones(2, bool), np.ones(2), 1.0), decode_cost=-2.0)


# ------------------------------------------------------------------------------------------
# Validation and option files


@pytest.mark.parametrize("factory, match", [
    (lambda: Bernoulli(q=1.2), r"straggler.q must lie in \[0, 1\) \(got 1.2\)"),
    (lambda: Bernoulli(q=-0.1), "straggler.q"),
    (lambda: Bernoulli(q=1.0), "straggler.q"),
    (lambda: FixedCount(s=-1), "straggler.s must be a non-negative integer"),
    (lambda: Adversarial(s=-2), "straggler.s"),
    (lambda: Adversarial(s=1, method="random"), "straggler.method must be one of"),
    (lambda: Delay(shift=-1.0, s=1), "straggler.shift"),
    (lambda: Delay(rate=0.0, s=1), "straggler.rate must be > 0"),
    (lambda: Delay(s=None), "wait_for=first needs straggler.s"),
    (lambda: Delay(wait_for="deadline"), "wait_for=deadline needs straggler.deadline"),
    (lambda: Delay(wait_for="deadline", deadline=0.0), "straggler.deadline must be > 0"),
    (lambda: Delay(wait_for="last", s=1), "straggler.wait_for must be one of"),
    (lambda: Delay(s=1, trace="/nonexistent/trace.csv"), "straggler.trace file not found"),
    (lambda: NoStragglers(seed=-1), "straggler.seed"),
    (lambda: NoStragglers(comm_per_unit=-1.0), "straggler.comm_per_unit"),
    # booleans are refused as numbers, naming the key
    (lambda: Bernoulli(q=False), r"^straggler.q must lie in \[0, 1\) \(got False\)$"),
    (lambda: FixedCount(s=True), r"^straggler.s must be a non-negative integer \(got True\)$"),
    (lambda: Delay(s=True), "straggler.s must be a non-negative integer"),
    (lambda: NoStragglers(compute_time=True), r"^straggler.compute_time .*\(got True\)$"),
    (lambda: NoStragglers(seed=False), "straggler.seed"),
    (lambda: Delay(s=1, p=True), r"straggler.p .* must lie in \[0, 1\] \(got True\)"),
    (lambda: Delay(s=1, r=True), "straggler.r .*got True"),
    (lambda: Delay(s=1, rate=False), "straggler.rate"),
    (lambda: Delay(wait_for="deadline", deadline=True), "straggler.deadline"),
    (lambda: Delay(s=1, time_scale=True), "straggler.time_scale"),
    (lambda: Delay(s=1, per_sample=True), "straggler.per_sample"),
])
def test_validation(factory: Callable[[], StragglerModel], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        factory()


def test_draw_argument_checks() -> None:
    with pytest.raises(ConfigError, match="iteration"):
        NoStragglers().draw(-1, 3, 1)
    with pytest.raises(ConfigError, match="n \\(number of workers\\)"):
        NoStragglers().draw(0, 0, 1)
    with pytest.raises(ConfigError, match="iteration must be a non-negative integer"):
        NoStragglers().draw(True, 3, 1)


@pytest.mark.parametrize("option", ["none", "bernoulli", "fixed", "adversarial", "delay"])
def test_straggler_option_files_instantiate(option: str) -> None:
    cfg = OmegaConf.create({"seed": 3, "straggler": OmegaConf.load(CONF / "straggler" /
                                                                    f"{option}.yaml")})
    model = instantiate(cfg.straggler)
    assert isinstance(model, StragglerModel) and model.seed == 3
    context = StragglerContext(assignment=cyclic_assignment(6, 2), m=2)
    draw = model.draw(0, n=6, message_length=10, context=context)
    assert draw.survivors.shape == (6,) and np.isfinite(draw.iteration_time)
    if option == "delay":
        assert model.time_scale == 1.0
    assert model.describe()["name"] == option
