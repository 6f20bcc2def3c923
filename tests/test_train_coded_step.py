"""The runtime-independent coded step: blocks, messages, exact decoding, α and unbiasedness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.codes.base import Scheme
from agc_pipeline.codes.ce_frc import CommEfficientFRC
from agc_pipeline.codes.crc import CyclicRepetitionCode
from agc_pipeline.codes.designs import bibd
from agc_pipeline.codes.frc import FractionalRepetitionCode
from agc_pipeline.codes.graphs import biregular
from agc_pipeline.codes.hadamard_nullspace import HadamardNullspace
from agc_pipeline.codes.random_diagonal import RandomDiagonal
from agc_pipeline.codes.repetition import cyclic, fractional, identity
from agc_pipeline.codes.stack import Stack
from agc_pipeline.coding.decoding import FixedDecoder, OptimalDecoder
from agc_pipeline.coding.stragglers import Bernoulli
from agc_pipeline.data import split_subsets, synthetic_logistic
from agc_pipeline.models import LogisticRegression, PaperMLP, subset_gradients
from agc_pipeline.training.coded_step import (
    CodedStep,
    block_length,
    combine,
    decoded_gradient,
    encoder_rng,
    from_blocks,
    survivor_messages,
    to_blocks,
)
from agc_pipeline.training.gradients import pack_gradients, partial_gradients


def fano() -> Assignment:
    return bibd(design="fano", transpose=True)


def random_blocks(k: int, d: int, m: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random partial gradients (k, d) float64 and their (k, m, L) blocks."""
    g = torch.from_numpy(np.random.default_rng(seed).standard_normal((k, d)))
    return g, to_blocks(g, m)


def test_blocks_pad_and_round_trip() -> None:
    g, blocks = random_blocks(3, 11, 4)
    assert block_length(11, 4) == 3 and blocks.shape == (3, 4, 3)
    assert torch.equal(blocks.reshape(3, -1)[:, 11:], torch.zeros(3, 1, dtype=g.dtype))
    for i in range(3):
        assert torch.equal(from_blocks(blocks[i], 11), g[i])
    assert block_length(12, 4) == 3 and block_length(1, 3) == 1


@pytest.mark.parametrize("m,d", [(1, 10), (2, 13), (3, 13)])
def test_message_path_equals_direct_path(m: int, d: int) -> None:
    """combine(survivors' messages Z B(:,j), R) == Z (B R): associativity, float64."""
    a = fano()
    step = CodedStep(RandomDiagonal(a, m, epsilon=0.2), OptimalDecoder(), d, seed=3)
    g, blocks = random_blocks(a.k, d, m)
    rng = np.random.default_rng(1)
    for t in range(5):
        b = step.encoding(t)
        mask = rng.random(a.n) > 0.3
        mask[0] = True
        r = step.decode(b, mask).r
        via_messages = combine(survivor_messages(blocks, b, a.matrix, mask), r[mask], d)
        direct = decoded_gradient(blocks, step.weights(b, r), d)
        torch.testing.assert_close(via_messages, direct, rtol=1e-12, atol=1e-12)


def test_encoder_draws_are_shared_by_seed_and_iteration() -> None:
    a = fano()
    s1 = CodedStep(RandomDiagonal(a, 2), OptimalDecoder(), 10, seed=5)
    s2 = CodedStep(RandomDiagonal(a, 2), OptimalDecoder(), 10, seed=5)
    assert np.array_equal(s1.encoding(7), s2.encoding(7))
    assert not np.array_equal(s1.encoding(7), s1.encoding(8))
    assert np.array_equal(RandomDiagonal(a, 2).encode(encoder_rng(5, 7)), s1.encoding(7))
    fixed = CodedStep(Stack(a, 2), OptimalDecoder(), 10, seed=5)
    assert fixed.encoding(0) is fixed.encoding(1)  # deterministic schemes: one cached B


def exact_cases() -> list[tuple[str, Scheme, int]]:
    """(label, scheme, s): exact codes and the stragglers they tolerate."""
    return [
        ("frc", FractionalRepetitionCode(fractional(6, 2, 1), 1), 2),
        ("crc", CyclicRepetitionCode(cyclic(7, 2, 1), 1), 2),
        ("ce_frc m=2", CommEfficientFRC(fractional(8, 2, 2), 2), 2),
        ("ce_frc m=3", CommEfficientFRC(fractional(8, 1, 3), 3), 1),
        ("hadamard s=0", HadamardNullspace(biregular(8, 4, 2, 4, seed=0), 2), 0),
        ("identity s=0", Stack(identity(5), 1), 0),
    ]


@pytest.mark.parametrize("label,scheme,s", exact_cases(), ids=[c[0] for c in exact_cases()])
def test_exact_codes_recover_the_full_gradient_for_every_admissible_straggler_set(
        label: str, scheme: Scheme, s: int) -> None:
    d = 17
    step = CodedStep(scheme, OptimalDecoder(), d, seed=0)
    g, blocks = random_blocks(scheme.k, d, scheme.m, seed=2)
    full = g.sum(dim=0)
    b = step.encoding(0)
    n = scheme.n
    for count in range(s + 1):
        for stragglers in itertools.combinations(range(n), count):
            mask = np.ones(n, dtype=bool)
            mask[list(stragglers)] = False
            dec = step.decode(b, mask)
            estimate = decoded_gradient(blocks, step.weights(b, dec.r), d)
            torch.testing.assert_close(estimate, full, rtol=1e-9, atol=1e-9)
            assert dec.error < 1e-12


def test_random_diagonal_is_unbiased_up_to_alpha() -> None:
    """Lemma 3: for a BIBD with ε = 0 and optimal decoding, E_D E_𝓕[B R] = α F; hence
    E[ĝ] = α g. The stack baseline is not (its blocks mix g[1] and g[2])."""
    a, q, draws, d = fano(), 0.25, 2000, 9
    straggler = Bernoulli(q=q, seed=11)

    def survivors(b: np.ndarray, index: int) -> np.ndarray:
        return straggler.draw(index, a.n, 1).survivors

    step = CodedStep(RandomDiagonal(a, 2), OptimalDecoder(), d, seed=4)
    alpha = step.estimate_alpha(survivors, draws)
    assert 0.3 < alpha.value < 1.0
    assert alpha.residual < 0.03, alpha  # E[BR] is a multiple of F
    stack = CodedStep(Stack(a, 2), OptimalDecoder(), d, seed=4).estimate_alpha(survivors, 500)
    assert stack.residual > 0.2, stack

    # the gradient itself, on independent draws (other encoder/straggler streams)
    g, blocks = random_blocks(a.k, d, 2, seed=5)
    other = Bernoulli(q=q, seed=12)
    mean = torch.zeros(d, dtype=torch.float64)
    for t in range(draws):
        b = step.encoding(t)
        r = step.decode(b, other.draw(t, a.n, 1).survivors).r
        mean += decoded_gradient(blocks, step.weights(b, r), d)
    mean /= draws
    full = g.sum(dim=0)
    rel = float((mean - alpha.value * full).norm() / full.norm())
    assert rel < 0.05, rel


def test_alpha_of_the_uncoded_baselines() -> None:
    """A = I: optimal decoding sums the survivors (α = 1 − q); fixed decoding rescales by
    n/|𝓕| (α = P(𝓕 ≠ ∅) = 1 − qⁿ)."""
    a, q = identity(6), 0.3
    straggler = Bernoulli(q=q, seed=0)

    def survivors(b: np.ndarray, index: int) -> np.ndarray:
        return straggler.draw(index, a.n, 1).survivors

    optimal = CodedStep(Stack(a, 1), OptimalDecoder(), 4, 0).estimate_alpha(survivors, 2000)
    assert abs(optimal.value - (1 - q)) < 4 * optimal.stderr + 1e-3
    fixed = CodedStep(Stack(a, 1), FixedDecoder(), 4, 0).estimate_alpha(survivors, 2000)
    assert abs(fixed.value - (1 - q**6)) < 4 * fixed.stderr + 1e-3


@pytest.mark.parametrize("make", [
    lambda: LogisticRegression(input_dim=6, num_classes=3, seed=1),
    lambda: PaperMLP(input_dim=6, hidden=5, num_classes=3, seed=1),
], ids=["logistic", "paper_mlp"])
def test_partial_gradients_match_per_subset_autograd(make) -> None:  # noqa: ANN001
    """One backward with expanded parameters == vmap(grad) per subset; packing scales by 1/N
    into the float64 padded buffer."""
    model = make()
    data = synthetic_logistic(n_samples=60, dim=6, num_classes=3, seed=0, test_fraction=0.0)
    idx = split_subsets(60, 4, seed=0)
    x, y = data.x_train[idx], data.y_train[idx]
    grads, loss = partial_gradients(model, x, y)
    reference = subset_gradients(model, x, y)
    buffer = torch.zeros(4, reference.shape[1] + 3, dtype=torch.float64)
    pack_gradients(grads, 1 / 60, buffer)
    torch.testing.assert_close(buffer[:, : reference.shape[1]],
                               reference.double() / 60, rtol=1e-5, atol=1e-7)
    assert torch.equal(buffer[:, reference.shape[1]:], torch.zeros(4, 3, dtype=torch.float64))
    total = model.loss_sum(model(x.reshape(60, -1)), y.reshape(60))
    torch.testing.assert_close(loss, total.detach(), rtol=1e-5, atol=1e-5)
