"""The coded SGD step, independent of any runtime (paper Sections II, III and VII).

Shared by the simulated cluster and the distributed runtime; it knows nothing of Hydra, W&B
or torch.distributed.

Notation (paper Sections II–III): k partial gradients g_i ∈ R^d, each cut into m blocks of length
L = ⌈d/m⌉ (zero-padded); ``Z = [G[1] | … | G[m]]`` with ``G[u] = [g_1[u] … g_k[u]]`` so that
column ``u·k + i`` of Z is block u of g_i, matching row ``u·k + i`` of B. Worker j sends
``Z B(:, j)`` (length L); the PS decodes R (n×m, zero outside the survivors 𝓕) and forms
``Z B R`` (L×m), whose m columns concatenated and un-padded are the gradient estimate ĝ.

Two algebraically identical ways to get ĝ:

* the message path — :func:`worker_message` for each survivor j, then :func:`combine`:
  ``ĝ = Σ_{j∈𝓕} (Z B(:, j)) R(j, :)``;
* the direct path — :func:`decoded_gradient`: ``ĝ = Z (B R)``, one (mk×m) weight matrix
  applied to Z. By associativity ``(Z B) R = Z (B R)``; the simulation uses it because it
  touches Z once instead of once per worker. Both accumulate in float64.

Randomness of the encoder comes only from :func:`encoder_rng` (seed, iteration), so every
runtime — workers and PS alike — draws the same B in the same iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from agc_pipeline.codes.base import Scheme
from agc_pipeline.coding.decoding import Decoder, Decoding
from agc_pipeline.coding.stragglers import StragglerContext

__all__ = [
    "ALPHA_ITERATION_OFFSET",
    "ENCODER_TAG",
    "AlphaEstimate",
    "CodedStep",
    "TrainingDiverged",
    "apply_weights",
    "block_length",
    "check_finite",
    "combine",
    "combine_into",
    "decoded_gradient",
    "encoder_rng",
    "from_blocks",
    "held_subsets",
    "survivor_messages",
    "to_blocks",
    "worker_coefficients",
    "worker_message",
]

#: third entry of the encoder RNG seed (the straggler stream uses 0x57A6)
ENCODER_TAG = 0xE7C0
#: third entry of the RNG seed of the α estimate's encoder draws
ALPHA_TAG = 0xA1FA
#: the α estimate draws straggler patterns at iterations offset by this (never trained on)
ALPHA_ITERATION_OFFSET = 1 << 40


class TrainingDiverged(RuntimeError):
    """The decoded gradient holds NaN/Inf, or the step would overflow the parameters."""

    exit_status = 3  #: the train app's exit status


def encoder_rng(seed: int, iteration: int) -> np.random.Generator:
    """The generator of iteration ``iteration``'s encoder draw (e.g. construction (7)'s D)."""
    return np.random.default_rng([int(seed), int(iteration), ENCODER_TAG])


def block_length(d: int, m: int) -> int:
    """L = ⌈d/m⌉: the message length when a d-vector is cut into m zero-padded blocks."""
    return -(-int(d) // int(m))


def to_blocks(grads: torch.Tensor, m: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(k, d) partial gradients → (k, m, L) blocks, zero-padded to m·L (one copy).

    ``blocks[i, u]`` is g_i[u], column ``u·k + i`` of Z.
    """
    k, d = grads.shape
    length = block_length(d, m)
    out = torch.zeros(k, m * length, dtype=dtype or grads.dtype, device=grads.device)
    out[:, :d] = grads
    return out.view(k, m, length)


def from_blocks(blocks: torch.Tensor, d: int) -> torch.Tensor:
    """(m, L) blocks of one vector → the flat, un-padded d-vector."""
    return blocks.reshape(-1)[:d]


def held_subsets(assignment: np.ndarray, worker: int) -> np.ndarray:
    """Indices of the data subsets worker j holds: the support of A(:, j)."""
    return np.flatnonzero(np.asarray(assignment)[:, worker])


def worker_coefficients(b: np.ndarray, k: int, m: int, worker: int,
                        held: np.ndarray) -> np.ndarray:
    """B(:, j) restricted to the held subsets, as an (m, |held|) array: ``[u, h] = B[u·k +
    held[h], j]`` (rows of other subsets are zero since supp(A_u) = supp(A))."""
    return np.asarray(b).reshape(m, k, -1)[:, held, worker]


def worker_message(blocks: torch.Tensor, coefficients: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Worker j's message ``Z B(:, j) = Σ_u Σ_i B[u·k+i, j] g_i[u]`` (length L), float64.

    ``blocks``: (h, m, L), the blocks of the h subsets the worker holds;
    ``coefficients``: (m, h), from :func:`worker_coefficients`. A runtime casts the result to
    its wire dtype.
    """
    coef = torch.as_tensor(coefficients, dtype=torch.float64, device=blocks.device)
    return torch.einsum("hul,uh->l", blocks.to(torch.float64), coef)


def combine(messages: torch.Tensor, r: np.ndarray | torch.Tensor, d: int) -> torch.Tensor:
    """The PS's estimate from the survivors' messages: block u is ``Σ_j R(j, u) · message_j``.

    ``messages``: (|𝓕|, L); ``r``: (|𝓕|, m), the survivors' rows of R. Returns the flat,
    un-padded float64 d-vector ``Z B R``.
    """
    coef = torch.as_tensor(r, dtype=torch.float64, device=messages.device)
    return from_blocks(coef.T @ messages.to(torch.float64), d)


#: columns of the message matrix combined at a time by :func:`combine_into`: the (m × chunk)
#: output tile stays in cache while every run of survivors adds to it, so ĝ is written to
#: memory once (n = 8, m = 2: 2 MiB of float32 messages read per tile of 0.5 MiB); also
#: faster than one product over all columns with a single run (measured on CPU, d = 50M)
COMBINE_CHUNK = 1 << 16


def combine_into(messages: torch.Tensor, r: np.ndarray, mask: np.ndarray,
                 out: torch.Tensor) -> torch.Tensor:
    """:func:`combine` without copies of the messages, for the distributed PS: ``out``
    (m, L) = Σ_{j∈𝓕} R(j, :)ᵀ message_j for the (n × L) message matrix (row j: worker j's
    message; rows outside the survivor mask are never read), in the dtype of ``out`` (the
    messages', e.g. float32: float32 accumulation), with R (n × m) computed in float64 and
    rounded once. One matrix product per run of consecutive survivors (views of the matrix,
    no gather), a tile of ``COMBINE_CHUNK`` columns at a time, so that each message is read
    once and ``out`` written once (no second pass over ĝ when a survivor is missing).
    Returns ``out``."""
    coef = torch.as_tensor(np.asarray(r, dtype=np.float64)).to(out.device, out.dtype)
    index = np.flatnonzero(mask)
    if index.size == 0:
        return out.zero_()
    starts = np.flatnonzero(np.diff(index) != 1) + 1  # where a new run of survivors begins
    runs = [(int(index[lo]), int(index[hi - 1]) + 1)
            for lo, hi in zip(np.r_[0, starts], np.r_[starts, index.size], strict=True)]
    a, b = runs[0]
    length = out.shape[1]
    for lo in range(0, length, COMBINE_CHUNK):
        hi = min(lo + COMBINE_CHUNK, length)
        tile = out[:, lo:hi]
        torch.mm(coef[a:b].T, messages[a:b, lo:hi], out=tile)
        for a2, b2 in runs[1:]:
            tile.addmm_(coef[a2:b2].T, messages[a2:b2, lo:hi])
    return out


def survivor_messages(blocks: torch.Tensor, b: np.ndarray, assignment: np.ndarray,
                      mask: np.ndarray) -> torch.Tensor:
    """The messages ``Z B(:, j)`` of the survivors j ∈ 𝓕 (in worker order): (|𝓕|, L)."""
    k, m, length = blocks.shape
    rows = []
    for j in np.flatnonzero(mask):
        held = held_subsets(assignment, int(j))
        rows.append(worker_message(blocks[torch.as_tensor(held, device=blocks.device)],
                                   worker_coefficients(b, k, m, int(j), held)))
    if not rows:
        return torch.zeros(0, length, dtype=torch.float64, device=blocks.device)
    return torch.stack(rows)


def apply_weights(blocks: torch.Tensor, weights: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(Z W)ᵀ`` for an (mk × c) weight matrix W: shape (c, L), row v = Σ_u Σ_i W[u·k+i, v]
    g_i[u]. ``blocks`` is (k, m, L); computed as Σ_u W_uᵀ · blocks[:, u, :] (m strided matrix
    products, no copy of Z)."""
    k, m, _ = blocks.shape
    w = torch.as_tensor(weights, dtype=blocks.dtype, device=blocks.device).reshape(m, k, -1)
    out = w[0].T @ blocks[:, 0, :]
    for u in range(1, m):
        out += w[u].T @ blocks[:, u, :]
    return out


def decoded_gradient(blocks: torch.Tensor, br: np.ndarray | torch.Tensor, d: int) -> torch.Tensor:
    """The PS's estimate ``Z (B R)`` as a flat, un-padded d-vector (dtype of ``blocks``).

    Algebraically identical to :func:`combine` of the survivors' messages, since
    ``(Z B) R = Z (B R)``, but reads Z once. Pass float64 ``blocks`` for exact accumulation.
    """
    return from_blocks(apply_weights(blocks, br), d)


@dataclass(frozen=True)
class AlphaEstimate:
    """Monte Carlo estimate of α in ``E_D E_𝓕 [B R] = α F`` (Section VII).

    ``value`` = ⟨mean(B R), F⟩ / ‖F‖²_F, ``stderr`` its standard error, ``residual`` =
    ‖mean(B R) − α F‖_F / ‖F‖_F (≈ 0 when E[B R] is a multiple of F, as Lemma 3 and
    Corollaries 4–5 state for construction (7)), ``samples`` the number of draws.
    """

    value: float
    stderr: float
    residual: float
    samples: int

    def as_dict(self) -> dict[str, float | int]:
        """JSON-friendly fields."""
        return asdict(self)


class CodedStep:
    """Encoding and decoding of one coded iteration for a scheme, a decoder and d parameters.

    ``encoding(t)`` gives B for iteration t (a fresh draw from :func:`encoder_rng` for
    randomised schemes, one cached matrix otherwise); ``decode(b, mask)`` gives R;
    ``weights(b, r)`` gives B R, the mk×m matrix the PS applies to Z.
    """

    def __init__(self, scheme: Scheme, decoder: Decoder, d: int, seed: int) -> None:
        self.scheme = scheme
        self.decoder = decoder
        self.m = scheme.m
        self.k = scheme.k
        self.n = scheme.n
        self.d = int(d)
        self.seed = int(seed)
        self.length = block_length(self.d, self.m)
        self.target = scheme.target
        self.target_norm2 = float((self.target**2).sum())
        self._fixed = None if scheme.randomized else np.asarray(scheme.encode(None), np.float64)

    def encoding(self, iteration: int) -> np.ndarray:
        """B (mk×n, float64) for ``iteration``."""
        if self._fixed is not None:
            return self._fixed
        return np.asarray(self.scheme.encode(encoder_rng(self.seed, iteration)), np.float64)

    def decode(self, b: np.ndarray, mask: np.ndarray) -> Decoding:
        """R (n×m) for survivor mask ``mask``, its error ‖BR − F‖²_F and cond(B_𝓕)."""
        return self.decoder.decode(b, self.target, mask)

    def straggler_context(self, b: np.ndarray, assignment: np.ndarray,
                          work: np.ndarray | None = None) -> StragglerContext:
        """What straggler models look at: A, m and Err_𝓕(B) for this B (adversarial models;
        the batched evaluator is built on first use only) and the samples each worker
        processes (``work``, for load-proportional delays)."""
        cache: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

        def error_fn(mask: np.ndarray) -> float:
            if "errors" not in cache:
                cache["errors"] = self.decoder.evaluator(b, self.target)
            return float(cache["errors"](np.asarray(mask, dtype=bool)[None])[0])

        return StragglerContext(assignment, self.m, error_fn, work)

    def weights(self, b: np.ndarray, r: np.ndarray) -> np.ndarray:
        """B R (mk×m): ĝ = Z (B R)."""
        return b @ r

    def estimate_alpha(self, survivors: Callable[[np.ndarray, int], np.ndarray],
                       samples: int) -> AlphaEstimate:
        """α = ⟨E[B R], F⟩/‖F‖²_F by Monte Carlo over ``samples`` encoder draws and survivor
        sets; ``survivors(b, index)`` returns the survivor mask of draw ``index`` for B = b.

        Encoder draws use their own stream (seed, index, ALPHA_TAG), never one used in
        training.
        """
        total = np.zeros_like(self.target)
        values = np.empty(samples)
        for index in range(samples):
            if self._fixed is not None:
                b = self._fixed
            else:
                rng = np.random.default_rng([self.seed, index, ALPHA_TAG])
                b = np.asarray(self.scheme.encode(rng), np.float64)
            mask = np.asarray(survivors(b, index), dtype=bool)
            br = b @ self.decoder.decoding_matrix(b, self.target, mask)
            total += br
            values[index] = float((br * self.target).sum()) / self.target_norm2
        mean = total / samples
        alpha = float(values.mean())
        stderr = float(values.std(ddof=1) / math.sqrt(samples)) if samples > 1 else math.inf
        residual = float(np.linalg.norm(mean - alpha * self.target)
                         / math.sqrt(self.target_norm2))
        return AlphaEstimate(alpha, stderr, residual, int(samples))


def check_finite(gradient: torch.Tensor, iteration: int) -> None:
    """Raise :class:`TrainingDiverged` unless every entry of the decoded gradient is finite."""
    if not bool(torch.isfinite(gradient).all()):
        bad = int((~torch.isfinite(gradient)).sum())
        raise TrainingDiverged(
            f"iteration {iteration}: the decoded gradient has {bad} NaN/Inf entries "
            "(diverged: lower trainer.lr, or check the data and the decoder)")
