"""Decoding at the parameter server: optimal (least-squares) and fixed decoders, in float64.

Every decoder runs BLAS/LAPACK on one thread (:func:`one_blas_thread`): its matrices are
small, and threads only slow them down.

Given the encoding matrix B (mk×n), the target F (mk×m) and a survivor mask 𝓕, a decoder
returns R (n×m, zero outside 𝓕); the PS forms Z B R. The approximation error is
Err_𝓕(B) = ‖BR − F‖_F² (Definition 1, eq. 3).

Optimal decoding (eq. 4) uses the pseudo-inverse, R_𝓕 = B_𝓕⁺ F, so rank-deficient B_𝓕 and an
empty survivor set (R = 0, Err = mk) are handled. For many survivor sets the error is
mk − Σ_u b_u[𝓕]ᵀ G[𝓕,𝓕]⁺ b_u[𝓕] with G = BᵀB and b_u = Bᵀf_u: quadratic forms over
principal submatrices of one Gram matrix, evaluated in batches by
:class:`PrincipalQuadraticForms`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import scipy.linalg
from threadpoolctl import ThreadpoolController

from agc_pipeline.validation import require_bool

#: Gram matrices with a larger condition number are evaluated by the direct path
SCHUR_CONDITION_LIMIT = 1e5
#: relative eigenvalue threshold of the pseudo-inverse (on the Gram matrix)
PINV_RTOL = 1e-10


_BLAS = ThreadpoolController()


_LIMIT = threading.local()  #: ``depth``: how many one_blas_thread blocks this thread is in


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run BLAS/LAPACK (numpy's and scipy's) on one thread inside the ``with`` block.

    Every matrix here is small (n ≤ a few hundred): a multi-threaded BLAS only adds
    synchronisation, and on a loaded machine each call can wait milliseconds for its threads
    (a 91×91 ``cho_solve`` took 49 ms instead of 0.16 ms). Costs about 25 µs per outermost
    entry; a nested entry (e.g. ``decode`` calling ``decoding_matrix``) costs nothing.
    """
    depth = getattr(_LIMIT, "depth", 0)
    if depth:
        _LIMIT.depth = depth + 1
        try:
            yield
        finally:
            _LIMIT.depth = depth
        return
    with _BLAS.limit(limits=1, user_api="blas"):
        _LIMIT.depth = 1
        try:
            yield
        finally:
            _LIMIT.depth = 0


_F = TypeVar("_F", bound=Callable[..., Any])


def single_threaded(func: _F) -> _F:
    """Decorator: ``func`` runs under :func:`one_blas_thread`."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_blas_thread():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _condition_estimate(gram: np.ndarray) -> float:
    """LAPACK's 1-norm condition estimate of a symmetric matrix (inf unless positive definite).

    Costs one Cholesky factorisation, far less than an eigendecomposition.
    """
    factor, info = scipy.linalg.lapack.dpotrf(gram, lower=1)
    if info != 0:
        return float("inf")
    rcond, info = scipy.linalg.lapack.dpocon(factor, np.abs(gram).sum(axis=0).max(), uplo="L")
    return float(1.0 / rcond) if info == 0 and rcond > 0 else float("inf")


def _pinv_quadratic(gram: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """Σ_u v_uᵀ G⁺ v_u for a batch of symmetric PSD G (…, r, r) and vectors (…, r, m)."""
    w, v = np.linalg.eigh(gram)
    top = np.maximum(w[..., -1:], 0.0)
    keep = w > PINV_RTOL * np.maximum(top, np.finfo(np.float64).tiny)
    proj = np.einsum("...ji,...jm->...im", v, vecs)
    inv_w = np.where(keep, 1.0 / np.where(keep, w, 1.0), 0.0)
    return np.einsum("...im,...i->...", proj**2, inv_w)


class PrincipalQuadraticForms:
    """q(𝓕) = Σ_u b_u[𝓕]ᵀ G[𝓕,𝓕]⁺ b_u[𝓕] for many subsets 𝓕 of one PSD matrix G.

    When G is well conditioned (LAPACK 1-norm estimate ≤ ``SCHUR_CONDITION_LIMIT``) the
    Schur complement gives, with H = G⁻¹ and x_u = H b_u,
    q(𝓕) = Σ_u (b_uᵀx_u − x_u[S]ᵀ H[S,S]⁻¹ x_u[S]) where S is the complement of 𝓕 (the
    stragglers): one s×s solve per set instead of an (n−s)×(n−s) one. Otherwise (or when
    |S| > |𝓕|) the principal submatrix itself is pseudo-inverted through its eigenvalues.
    """

    def __init__(self, gram: np.ndarray, vecs: np.ndarray) -> None:
        gram = np.asarray(gram, dtype=np.float64)
        vecs = np.asarray(vecs, dtype=np.float64)
        if vecs.ndim == 1:
            vecs = vecs[:, None]
        self.gram = 0.5 * (gram + gram.T)
        self.vecs = vecs
        self.n, self.m = gram.shape[0], vecs.shape[1]
        self.condition_number = _condition_estimate(self.gram)
        self.use_schur = self.condition_number <= SCHUR_CONDITION_LIMIT
        if self.use_schur:
            factor = scipy.linalg.cho_factor(self.gram, lower=True)
            self.h = scipy.linalg.cho_solve(factor, np.eye(self.n))
            self.h = 0.5 * (self.h + self.h.T)
            self.x = self.h @ vecs
            self.full = float((vecs * self.x).sum())
            self.augmented = np.block([[self.h, self.x],
                                       [self.x.T, (2 * self.full + 1) * np.eye(self.m)]])
        else:
            self.full = float(_pinv_quadratic(self.gram, vecs))

    def __call__(self, masks: np.ndarray | SurvivorSets, batch: int = 4096) -> np.ndarray:
        """Evaluate q for each row of the boolean ``masks`` (N, n) (True = survivor)."""
        sets = masks if isinstance(masks, SurvivorSets) else SurvivorSets(masks)
        out = np.empty(len(sets))
        for group, (rows, _, _) in enumerate(sets.groups):
            for start in range(0, rows.size, batch):
                part = slice(start, start + batch)
                out[rows[part]] = self._evaluate_size(sets, group, part)
        return out

    def _evaluate_size(self, sets: SurvivorSets, group: int, part: slice) -> np.ndarray:
        """q for the sets ``part`` of one size group of ``sets``."""
        _, surv, strag = sets.groups[group]
        surv, strag = surv[part], strag[part]
        (count, r), s = surv.shape, strag.shape[1]
        if r == 0:
            return np.zeros(count)
        if s == 0:
            return np.full(count, self.full)
        if self.use_schur and s <= r:
            return self.full - self._straggler_forms(sets.augmented_index(group, self.m)[part])
        g_ff = self.gram[surv[:, :, None], surv[:, None, :]]
        return _pinv_quadratic(g_ff, self.vecs[surv])

    def _straggler_forms(self, flat_index: np.ndarray) -> np.ndarray:
        """Σ_u x_u[S]ᵀ H[S,S]⁻¹ x_u[S] for a batch of straggler sets S.

        One batched Cholesky factorisation of M = [[H[S,S], X[S]], [X[S]ᵀ, D]] (gathered from
        one (n+m)² matrix by precomputed flat indices): its lower-left block is
        L₂₁ = X[S]ᵀ L₁₁⁻ᵀ, so ‖L₂₁‖_F² is the form. D = (2·q(all) + 1)·I keeps M positive
        definite, since XᵀH⁻¹X ⪯ q(all)·I. Falls back to an LU solve if some H[S,S] is not
        numerically positive definite.
        """
        mats = np.take(self.augmented, flat_index)
        s = flat_index.shape[1] - self.m
        try:
            low = np.linalg.cholesky(mats)
        except np.linalg.LinAlgError:
            h_ss, x_s = mats[:, :s, :s], mats[:, :s, s:]
            return np.einsum("nsm,nsm->n", x_s, np.linalg.solve(h_ss, x_s))
        return (low[:, s:, :s] ** 2).sum(axis=(1, 2))


class SurvivorSets:
    """Survivor masks (N, n) with their survivor and straggler indices grouped by set size.

    The indices are computed once: the engine evaluates the same sets for every encoder draw
    and every scheme. Behaves as the boolean mask array where an array is expected.
    """

    def __init__(self, masks: np.ndarray) -> None:
        self.masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        #: (rows, survivors (count, r), stragglers (count, n − r)) for each size r present
        self.groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        sizes = self.masks.sum(axis=1)
        for r in np.unique(sizes):
            rows = np.flatnonzero(sizes == r)
            sub = self.masks[rows]
            self.groups.append((rows, np.nonzero(sub)[1].reshape(rows.size, int(r)),
                                np.nonzero(~sub)[1].reshape(rows.size, -1)))

        self._flat: dict[tuple[int, int], np.ndarray] = {}

    def augmented_index(self, group: int, extra: int) -> np.ndarray:
        """Flat indices (count, s+extra, s+extra) into an (n+extra)² matrix of the rows and
        columns [stragglers, n, …, n+extra−1] of each set of size group ``group`` (cached)."""
        key = (group, extra)
        if key not in self._flat:
            strag = self.groups[group][2]
            n, size = self.masks.shape[1], self.masks.shape[1] + extra
            tail = np.broadcast_to(n + np.arange(extra), (strag.shape[0], extra))
            idx = np.concatenate([strag, tail], axis=1)
            self._flat[key] = idx[:, :, None] * size + idx[:, None, :]
        return self._flat[key]

    def __len__(self) -> int:
        return self.masks.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self.masks if dtype is None else self.masks.astype(dtype, copy=False)


class ComplementErrors:
    """Err_𝓕(B) for a full-column-rank B through the stragglers' side, without forming BᵀB.

    With B = QR (thin QR, R invertible) and c = QᵀF, span(B_𝓕) = Q·span(R_𝓕) and its
    orthogonal complement inside span(Q) is spanned by the straggler columns W[:, S] of
    W = R⁻ᵀ. Hence Err_𝓕 = (‖F‖² − ‖c‖²) + ‖P_{W[:,S]} c‖², with one thin QR of the n×s
    matrix W[:, S] per set: accurate to cond(B)·eps (the Gram path loses cond(B)²·eps).
    """

    #: B with a larger condition number is left to the batched SVD path
    CONDITION_LIMIT = 1e10

    def __init__(self, b: np.ndarray, target: np.ndarray) -> None:
        q, r = np.linalg.qr(b)
        sv = np.linalg.svd(r, compute_uv=False)
        self.condition_number = float(sv[0] / sv[-1]) if sv[-1] > 0 else float("inf")
        self.usable = b.shape[0] >= b.shape[1] and self.condition_number <= self.CONDITION_LIMIT
        if self.usable:
            self.c = q.T @ target
            self.base = max(float((target**2).sum() - (self.c**2).sum()), 0.0)
            self.w = np.linalg.solve(r.T, np.eye(r.shape[0]))  # R⁻ᵀ
            self.n = b.shape[1]

    def __call__(self, masks: np.ndarray | SurvivorSets, batch: int = 4096) -> np.ndarray:
        sets = masks if isinstance(masks, SurvivorSets) else SurvivorSets(masks)
        out = np.empty(len(sets))
        for rows, _, strag in sets.groups:
            s = strag.shape[1]
            if s == 0:
                out[rows] = self.base
                continue
            for start in range(0, rows.size, batch):
                part = slice(start, start + batch)
                w_s = np.moveaxis(self.w[:, strag[part]], 1, 0)  # (N, n, s)
                q_s = np.linalg.qr(w_s)[0]
                proj = np.einsum("nis,im->nsm", q_s, self.c)
                out[rows[part]] = self.base + (proj**2).sum(axis=(1, 2))
        return out


def lstsq_errors(b: np.ndarray, target: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """‖B_𝓕 B_𝓕⁺ F − F‖_F² per survivor mask, by a rank-revealing (column-pivoted) QR of B_𝓕.

    The fallback for rank-deficient B: columns whose pivot falls below
    ``eps·max(mk, |𝓕|)·|R₀₀|`` count as dependent, mirroring ``np.linalg.lstsq``'s cut-off.
    (numpy's batched SVD is pathologically slow on these shapes; pivoted QR is not.)
    """
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    total = float((target**2).sum())
    out = np.full(masks.shape[0], total)
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        b_f = b[:, mask]
        q, r, _ = scipy.linalg.qr(b_f, mode="economic", pivoting=True)
        diag = np.abs(np.diag(r))
        rank = int((diag > np.finfo(np.float64).eps * max(b_f.shape) * diag[0]).sum())
        out[i] = total - float(((q[:, :rank].T @ target) ** 2).sum())
    return np.maximum(out, 0.0)


def optimal_errors(b: np.ndarray, target: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Err_𝓕(B) = ‖B R* − F‖_F² under optimal decoding for each survivor mask (eq. 4)."""
    b = np.asarray(b, dtype=np.float64)
    return OptimalDecoder().evaluator(b, target)(masks)


@dataclass(frozen=True)
class Decoding:
    """A decoding matrix R (n×m), its error ‖BR − F‖_F² and cond(B_𝓕) (inf if singular)."""

    r: np.ndarray
    error: float
    condition_number: float


class Decoder:
    """Base class: maps (B, F, survivor mask) to R. Subclasses implement ``decoding_matrix``."""

    name = "decoder"

    def __init__(self, rescale: bool = False) -> None:
        #: divide the decoded gradient by the Monte Carlo estimate of α (Section VII)
        self.rescale = require_bool(rescale, "decoder.rescale")

    def decoding_matrix(self, b: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @single_threaded
    def decode(self, b: np.ndarray, target: np.ndarray, mask: np.ndarray) -> Decoding:
        """R for one survivor mask, with its error and the condition number of B_𝓕."""
        b = np.asarray(b, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        r, sv = self._solve(b, target, mask)
        err = float(((b @ r - target) ** 2).sum())
        if mask.any():
            if sv is None:
                sv = np.linalg.svd(b[:, mask], compute_uv=False)
            cond = float(sv[0] / sv[-1]) if sv[-1] > sv[0] * 1e-15 else float("inf")
        else:
            cond = float("inf")
        return Decoding(r=r, error=err, condition_number=cond)

    def _solve(self, b: np.ndarray, target: np.ndarray, mask: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """R, and the singular values of B_𝓕 if the solve produced them (else None)."""
        return self.decoding_matrix(b, target, mask), None

    def evaluator(self, b: np.ndarray, target: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """A function mapping survivor masks (N, n) to the errors ‖B R_𝓕 − F‖_F² (N,).

        Subclasses override this with batched evaluations; B is fixed across calls.
        """
        def errors(masks: np.ndarray) -> np.ndarray:
            masks = np.atleast_2d(np.asarray(masks, dtype=bool))
            return np.array([self.decode(b, target, mk).error for mk in masks])

        return errors

    def errors(self, b: np.ndarray, target: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """‖B R_𝓕 − F‖_F² for each row of ``masks``."""
        return self.evaluator(b, target)(masks)


class OptimalDecoder(Decoder):
    """Least-squares decoding R_𝓕 = B_𝓕⁺ F (eq. 4; pseudo-inverse semantics, R = 0 if 𝓕 = ∅)."""

    name = "optimal"

    @single_threaded
    def decoding_matrix(self, b: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._lstsq(b, target, mask)[0]

    def _solve(self, b: np.ndarray, target: np.ndarray, mask: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray | None]:
        # a subclass that overrides decoding_matrix gets it called, as with any decoder
        if type(self).decoding_matrix is not OptimalDecoder.decoding_matrix:
            return super()._solve(b, target, mask)
        return self._lstsq(b, target, mask)

    @staticmethod
    def _lstsq(b: np.ndarray, target: np.ndarray, mask: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """R by least squares, with lstsq's singular values of B_𝓕 (so that :meth:`decode`
        needs no second SVD for the condition number)."""
        r = np.zeros((b.shape[1], target.shape[1]))
        if not mask.any():
            return r, None
        r[mask], _, _, sv = np.linalg.lstsq(b[:, mask], target, rcond=None)
        return r, sv

    @single_threaded
    def evaluator(self, b: np.ndarray, target: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """Three paths, fastest first: the Schur complement on one Gram matrix when BᵀB is
        well conditioned; :class:`ComplementErrors` when B has full column rank; else batched
        SVDs of B_𝓕 (lstsq's semantics). ``errors.condition_number`` is cond(BᵀB)'s estimate.
        """
        b = np.asarray(b, dtype=np.float64)
        forms = PrincipalQuadraticForms(b.T @ b, b.T @ target)
        total = float((target**2).sum())

        complement = None if forms.use_schur else ComplementErrors(b, target)

        @single_threaded
        def errors(masks: np.ndarray) -> np.ndarray:
            if forms.use_schur:
                return np.maximum(total - forms(masks), 0.0)
            if complement is not None and complement.usable:
                return complement(masks)
            return lstsq_errors(b, target, masks)

        errors.condition_number = forms.condition_number  # type: ignore[attr-defined]
        return errors


class FixedDecoder(Decoder):
    """Fixed decoding: R_𝓕 = (n/|𝓕|)·R₀ restricted to 𝓕, with R₀ = B⁺F chosen in advance.

    For a regular m = 1 code R₀ is a multiple of the all-ones vector, so this is the scaled
    indicator of 𝓕 of Raviv et al. and Kadhe et al. (Section III, Remark 1).
    """

    name = "fixed"

    @single_threaded
    def decoding_matrix(self, b: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
        r = np.zeros((b.shape[1], target.shape[1]))
        if mask.any():
            r0 = np.linalg.lstsq(b, target, rcond=None)[0]
            r[mask] = r0[mask] * (b.shape[1] / mask.sum())
        return r

    @single_threaded
    def evaluator(self, b: np.ndarray, target: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        b = np.asarray(b, dtype=np.float64)
        n = b.shape[1]
        r0 = np.linalg.lstsq(b, target, rcond=None)[0]

        @single_threaded
        def errors(masks: np.ndarray) -> np.ndarray:
            masks = np.atleast_2d(np.asarray(masks, dtype=bool))
            counts = masks.sum(axis=1)
            scale = np.where(counts > 0, n / np.maximum(counts, 1), 0.0)
            r = masks[:, :, None] * r0[None] * scale[:, None, None]  # (N, n, m)
            resid = np.einsum("in,Nnm->Nim", b, r) - target[None]
            return (resid**2).sum(axis=(1, 2))

        return errors
