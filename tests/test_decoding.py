"""Optimal and fixed decoding: batched Gram evaluation against per-set least squares."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from agc_pipeline.analysis.engine import ErrorStudy, straggler_masks
from agc_pipeline.codes.base import target_matrix
from agc_pipeline.codes.designs import bibd
from agc_pipeline.codes.random_diagonal import RandomDiagonal
from agc_pipeline.coding.decoding import (
    FixedDecoder,
    OptimalDecoder,
    PrincipalQuadraticForms,
    SurvivorSets,
    optimal_errors,
)


def lstsq_error(b: np.ndarray, f: np.ndarray, mask: np.ndarray) -> float:
    """The authors' method: one lstsq per survivor set."""
    if not mask.any():
        return float((f**2).sum())
    r = np.linalg.lstsq(b[:, mask], f, rcond=None)[0]
    return float(((b[:, mask] @ r - f) ** 2).sum())


def random_masks(n: int, rng: np.random.Generator) -> np.ndarray:
    rows = [straggler_masks(n, s, 6, rng) for s in range(n + 1)]
    return np.vstack(rows)


@pytest.mark.parametrize("shape", [(24, 10), (39, 12), (9, 12)])
def test_batched_errors_match_lstsq(shape: tuple[int, int], rng: np.random.Generator) -> None:
    mk, n = shape
    b = rng.standard_normal((mk, n))
    f = target_matrix(mk // 3, 3)
    masks = random_masks(n, rng)
    fast = optimal_errors(b, f, masks)
    slow = np.array([lstsq_error(b, f, mk_) for mk_ in masks])
    np.testing.assert_allclose(fast, slow, atol=1e-9)


def test_schur_and_direct_paths_agree(rng: np.random.Generator) -> None:
    g = rng.standard_normal((15, 40))
    gram = g @ g.T
    vecs = rng.standard_normal((15, 2))
    forms = PrincipalQuadraticForms(gram, vecs)
    assert forms.use_schur
    masks = random_masks(15, rng)
    schur = forms(masks)
    forms.use_schur = False
    direct = forms(masks)
    np.testing.assert_allclose(schur, direct, rtol=1e-10, atol=1e-10)


def test_rank_deficient_stack_matches_lstsq(rng: np.random.Generator) -> None:
    a = (rng.random((6, 10)) < 0.4).astype(float)
    a[:, a.sum(axis=0) == 0] = 1.0
    b = np.vstack([a, a])  # rank ≤ 6 < n = 10: G is singular
    f = target_matrix(6, 2)
    forms = PrincipalQuadraticForms(b.T @ b, b.T @ f)
    assert not forms.use_schur and forms.condition_number == float("inf")
    masks = random_masks(10, rng)
    np.testing.assert_allclose(optimal_errors(b, f, masks),
                               [lstsq_error(b, f, m_) for m_ in masks], atol=1e-9)


def test_empty_survivor_set_gives_zero_decoder() -> None:
    b = np.ones((4, 3))
    f = target_matrix(2, 2)
    mask = np.zeros(3, dtype=bool)
    for decoder in (OptimalDecoder(), FixedDecoder()):
        d = decoder.decode(b, f, mask)
        assert np.all(d.r == 0) and d.error == pytest.approx(4.0)
        assert d.condition_number == float("inf")
        assert decoder.errors(b, f, mask[None])[0] == pytest.approx(4.0)


def test_decode_matches_evaluator_and_is_float64(rng: np.random.Generator) -> None:
    b = rng.integers(-1, 2, size=(12, 8))  # integer input is promoted to float64
    f = target_matrix(6, 2)
    for decoder in (OptimalDecoder(), FixedDecoder()):
        masks = random_masks(8, rng)
        batched = decoder.errors(b, f, masks)
        single = [decoder.decode(b, f, m_).error for m_ in masks]
        np.testing.assert_allclose(batched, single, atol=1e-9)
        d = decoder.decode(b, f, masks[3])
        assert d.r.dtype == np.float64
        assert np.all(d.r[~masks[3]] == 0)


def test_optimal_is_never_worse_than_fixed(rng: np.random.Generator) -> None:
    b = rng.standard_normal((10, 9))
    f = target_matrix(5, 2)
    masks = random_masks(9, rng)
    assert np.all(OptimalDecoder().errors(b, f, masks)
                  <= FixedDecoder().errors(b, f, masks) + 1e-9)


def test_fixed_decoder_is_scaled_indicator_for_regular_m1_code() -> None:
    # cyclic assignment, n = k = 6, load 3: R0 = 1/3, fixed R = (n/|F|)/3 on survivors
    a = sum(np.roll(np.eye(6), t, axis=0) for t in range(3))
    f = target_matrix(6, 1)
    mask = np.array([1, 1, 0, 1, 1, 1], dtype=bool)
    r = FixedDecoder().decode(a, f, mask).r
    np.testing.assert_allclose(r[mask, 0], (6 / 5) / 3)
    assert r[2, 0] == 0


def test_condition_number_reported(rng: np.random.Generator) -> None:
    b = rng.standard_normal((10, 5))
    d = OptimalDecoder().decode(b, target_matrix(5, 2), np.ones(5, dtype=bool))
    assert d.condition_number == pytest.approx(np.linalg.cond(b))
    sing = np.hstack([b[:, :2], b[:, :1]])
    d2 = OptimalDecoder().decode(sing, target_matrix(5, 2), np.ones(3, dtype=bool))
    assert d2.condition_number == float("inf")


def test_complement_path_matches_lstsq_on_ill_conditioned_b(rng: np.random.Generator) -> None:
    from agc_pipeline.coding.decoding import ComplementErrors

    # square B with cond ≈ 1e4: the Gram path is skipped, the complement path is used
    u, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    v, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    b = u @ np.diag(np.logspace(0, -4, 20)) @ v.T
    f = target_matrix(10, 2)
    forms = PrincipalQuadraticForms(b.T @ b, b.T @ f)
    assert not forms.use_schur
    comp = ComplementErrors(b, f)
    assert comp.usable
    masks = random_masks(20, rng)
    slow = [lstsq_error(b, f, m_) for m_ in masks]
    np.testing.assert_allclose(comp(masks), slow, atol=1e-9)
    np.testing.assert_allclose(optimal_errors(b, f, masks), slow, atol=1e-9)
    # tall B (mk > n)
    tall = rng.standard_normal((30, 12)) @ np.diag(np.logspace(0, -3, 12))
    f3 = target_matrix(10, 3)
    masks = random_masks(12, rng)
    np.testing.assert_allclose(ComplementErrors(tall, f3)(masks),
                               [lstsq_error(tall, f3, m_) for m_ in masks], atol=1e-9)


def _blas_threads() -> int:
    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


def test_survivor_sets_and_the_cholesky_path_match_lstsq(rng: np.random.Generator) -> None:
    b = rng.standard_normal((30, 14))
    f = target_matrix(15, 2)
    masks = random_masks(14, rng)
    errors_of = OptimalDecoder().evaluator(b, f)
    sets = SurvivorSets(masks)
    np.testing.assert_array_equal(np.asarray(sets), masks)
    slow = [lstsq_error(b, f, m_) for m_ in masks]
    np.testing.assert_allclose(errors_of(sets), slow, atol=1e-9)
    np.testing.assert_allclose(errors_of(sets), errors_of(masks), rtol=0, atol=0)


def test_decoders_and_the_engine_run_blas_on_one_thread(monkeypatch: pytest.MonkeyPatch,
                                                        rng: np.random.Generator) -> None:
    """Small matrices: BLAS threads only cost (a 91×91 cho_solve took 49 ms instead of 0.16 ms
    on a loaded machine), so the PS decode and the analysis engine pin BLAS to one thread."""
    seen: list[int] = []
    for name in ("lstsq", "cholesky", "svd"):
        real = getattr(np.linalg, name)

        def spy(*args, _real=real, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(_blas_threads())
            return _real(*args, **kwargs)

        monkeypatch.setattr(np.linalg, name, spy)
    b = rng.standard_normal((20, 8))
    f = target_matrix(10, 2)
    mask = np.ones(8, dtype=bool)
    mask[:2] = False
    study = ErrorStudy(RandomDiagonal(bibd("fano"), 2), [1, 2], 2, 5)
    with threadpool_limits(limits=2, user_api="blas"):
        assert _blas_threads() == 2
        for decoder in (OptimalDecoder(), FixedDecoder()):
            decoder.decode(b, f, mask)
            decoder.decoding_matrix(b, f, mask)
            decoder.evaluator(b, f)(random_masks(8, rng))
        study.run()
        assert _blas_threads() == 2  # restored afterwards
    assert seen and set(seen) == {1}, seen


def test_nested_one_blas_thread_limits_once_and_restores(monkeypatch: pytest.MonkeyPatch,
                                                         ) -> None:
    """A nested entry (decode calling decoding_matrix) does not query and reset the thread
    pools again (25 µs each, per iteration); the outer block's limit holds after an inner
    block ends, and the pools come back when the outermost one does."""
    from agc_pipeline.coding import decoding

    limits: list[int] = []
    real = decoding._BLAS.limit

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        limits.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding._BLAS, "limit", counting)
    with threadpool_limits(limits=2, user_api="blas"):
        with decoding.one_blas_thread():
            with decoding.one_blas_thread():
                assert _blas_threads() == 1
            assert _blas_threads() == 1
        assert _blas_threads() == 2
        b = np.random.default_rng(0).standard_normal((14, 7))
        OptimalDecoder().decode(b, target_matrix(7, 2), np.ones(7, dtype=bool))
        assert _blas_threads() == 2
    assert len(limits) == 2  # one per outermost block: the test's and decode's


@pytest.mark.parametrize("shape", [(14, 7), (6, 9)])
def test_decode_condition_number_from_the_solve_matches_svd(shape: tuple[int, int],
                                                          rng: np.random.Generator) -> None:
    """The optimal decoder takes cond(B_𝓕) from lstsq's singular values (no second SVD); it
    equals the 2-norm condition number, tall or wide, and is inf when B_𝓕 is singular."""
    b = rng.standard_normal(shape)
    f = target_matrix(shape[0] // 2, 2)
    mask = np.ones(shape[1], dtype=bool)
    mask[0] = False
    dec = OptimalDecoder().decode(b, f, mask)
    assert dec.condition_number == pytest.approx(np.linalg.cond(b[:, mask]), rel=1e-9)
    singular = b.copy()
    singular[0, :] = 0.0  # rank min(shape) - 1, tall or wide
    singular[:, 2] = 0.0
    assert OptimalDecoder().decode(singular, f, mask).condition_number == float("inf")
    assert OptimalDecoder().decode(b, f, np.zeros(shape[1], dtype=bool)).condition_number \
        == float("inf")


def test_a_subclass_overriding_decoding_matrix_is_used_by_decode() -> None:
    """decode() reaches an overriding decoding_matrix (the lstsq shortcut is the optimal
    decoder's own)."""

    class Halved(OptimalDecoder):
        def decoding_matrix(self, b: np.ndarray, target: np.ndarray,
                            mask: np.ndarray) -> np.ndarray:
            return 0.5 * super().decoding_matrix(b, target, mask)

    b = np.random.default_rng(1).standard_normal((14, 7))
    f = target_matrix(7, 2)
    mask = np.ones(7, dtype=bool)
    full, half = OptimalDecoder().decode(b, f, mask), Halved().decode(b, f, mask)
    np.testing.assert_allclose(half.r, 0.5 * full.r, rtol=1e-12)
    assert half.condition_number == pytest.approx(full.condition_number, rel=1e-9)
