"""trainer=sharded's arithmetic: slicing the messages, per-owner decoding and reassembly
reproduce the PS's ĝ = Z (B R) (the same survivors everywhere) or its restriction to each
slice (each owner's own survivors)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from agc_pipeline.codes.ce_frc import CommEfficientFRC
from agc_pipeline.codes.frc import FractionalRepetitionCode
from agc_pipeline.codes.random_diagonal import RandomDiagonal
from agc_pipeline.codes.repetition import fractional
from agc_pipeline.coding.decoding import OptimalDecoder
from agc_pipeline.training.coded_step import (
    CodedStep,
    decoded_gradient,
    survivor_messages,
    to_blocks,
)
from agc_pipeline.training.optim import Optimizer
from agc_pipeline.training.sharded_maths import (
    ShardLayout,
    decode_slice,
    message_slices,
    reassemble,
    reshard_states,
    unshard,
)
from tests.test_train_coded_step import fano


def all_messages(blocks: torch.Tensor, b: np.ndarray, matrix: np.ndarray) -> torch.Tensor:
    n = b.shape[1]
    return survivor_messages(blocks, b, matrix, np.ones(n, dtype=bool))  # (n, L)


def sliced_decode(messages: torch.Tensor, step: CodedStep, b: np.ndarray,
                  masks: list[np.ndarray], d: int) -> torch.Tensor:
    """Every owner decodes its slice with its own survivors; the pieces reassembled."""
    n = messages.shape[0]
    slices = torch.stack([message_slices(msg, n) for msg in messages])  # (worker, owner, W)
    pieces = [decode_slice(slices[:, owner], step.decode(b, masks[owner]).r, masks[owner])
              for owner in range(n)]
    return reassemble(torch.stack(pieces), d)


@pytest.mark.parametrize("scheme,d", [
    (FractionalRepetitionCode(fractional(6, 2, 1), 1), 23),
    (CommEfficientFRC(fractional(8, 2, 2), 2), 29),
    (CommEfficientFRC(fractional(8, 1, 3), 3), 7),  # L = 3 < n: empty slices
])
def test_same_survivors_everywhere_give_the_ps_estimate(scheme, d: int) -> None:
    step = CodedStep(scheme, OptimalDecoder(), d, seed=0)
    g = torch.from_numpy(np.random.default_rng(1).standard_normal((scheme.k, d)))
    blocks = to_blocks(g, scheme.m)
    b = step.encoding(0)
    mask = np.ones(scheme.n, dtype=bool)
    mask[[1, 4]] = False
    messages = all_messages(blocks, b, scheme.assignment.matrix)
    ps = decoded_gradient(blocks, step.weights(b, step.decode(b, mask).r), d)
    sharded = sliced_decode(messages, step, b, [mask] * scheme.n, d)
    torch.testing.assert_close(sharded, ps, rtol=1e-12, atol=1e-12)
    if scheme.tolerates() >= 2:  # exact: the full gradient
        torch.testing.assert_close(sharded, g.sum(0), rtol=1e-9, atol=1e-9)


def test_each_owner_decodes_its_slice_with_its_own_survivors() -> None:
    a, m, d = fano(), 2, 31
    step = CodedStep(RandomDiagonal(a, m, epsilon=0.2), OptimalDecoder(), d, seed=3)
    g = torch.from_numpy(np.random.default_rng(2).standard_normal((a.k, d)))
    blocks = to_blocks(g, m)
    rng = np.random.default_rng(5)
    layout = ShardLayout(d, m, a.n)
    for t in range(3):
        b = step.encoding(t)
        masks = [rng.random(a.n) > 0.4 for _ in range(a.n)]
        for mask in masks:
            mask[rng.integers(a.n)] = True
        sharded = sliced_decode(all_messages(blocks, b, a.matrix), step, b, masks, d)
        for owner, mask in enumerate(masks):
            ps = decoded_gradient(blocks, step.weights(b, step.decode(b, mask).r), d)
            index, _ = layout.positions(owner)
            torch.testing.assert_close(sharded[index], ps[index], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d,m,n", [(23, 1, 6), (29, 2, 4), (7, 3, 8), (100, 4, 3)])
def test_the_shards_partition_the_parameters(d: int, m: int, n: int) -> None:
    """Shard σ = slice σ of each block: the shards are disjoint and cover 0..d−1, and the
    valid entries of a decoded slice are the shard's parameters in order."""
    layout = ShardLayout(d, m, n)
    index = torch.cat([layout.positions(s)[0] for s in range(n)])
    assert sorted(index.tolist()) == list(range(d)) and sum(layout.shard_sizes()) == d
    full = torch.arange(d, dtype=torch.float64)
    pieces = torch.zeros(n, m, layout.width, dtype=torch.float64)
    for s in range(n):
        idx, valid = layout.positions(s)
        pieces[s].view(-1)[valid] = full[idx]
    assert torch.equal(reassemble(pieces, d), full)


OPTIMIZERS = {
    "sgd_momentum": functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
    "adam": functools.partial(torch.optim.Adam, lr=0.01),
    "sgd": functools.partial(torch.optim.SGD, lr=0.1),
}


def shard_optimizers(full: torch.Tensor, layout: ShardLayout,
                     make: functools.partial) -> list[Optimizer]:
    """One optimizer per owner of ``layout``, on its shard of ``full`` (as trainer=sharded)."""
    return [Optimizer([torch.nn.Parameter(full[layout.positions(s)[0]].clone())], make)
            for s in range(layout.n)]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("d,m,old_n,new_n", [(23, 1, 4, 3), (29, 2, 4, 2), (7, 3, 8, 3),
                                             (100, 4, 3, 5), (31, 2, 2, 7)])
def test_resharding_the_optimizer_state_loses_nothing(name: str, d: int, m: int, old_n: int,
                                                       new_n: int) -> None:
    """Owners of the old layout step their shards (momentum 0.9, Adam, plain SGD) with
    slices of the same gradients as one optimizer on the whole vector; re-sharded to the new
    n, every state entry equals the whole optimizer's, and the new owners' next steps give
    exactly its parameters."""
    make = OPTIMIZERS[name]
    rng = np.random.default_rng(d + old_n)
    start = torch.from_numpy(rng.standard_normal(d)).float()
    grads = [torch.from_numpy(rng.standard_normal(d)).float() for _ in range(6)]
    whole = Optimizer([torch.nn.Parameter(start.clone())], make)
    old, new = ShardLayout(d, m, old_n), ShardLayout(d, m, new_n)
    owners = shard_optimizers(start, old, make)
    for g in grads[:3]:
        whole.step(g)
        for s, opt in enumerate(owners):
            opt.step(g[old.positions(s)[0]])
    states = reshard_states([opt.state_dict() for opt in owners], old, new)
    assert len(states) == new_n
    full_state = whole.state_dict()["optimizer"]["state"]
    for s, state in enumerate(states):
        index = new.positions(s)[0]
        mine = state["optimizer"]["state"]
        assert sorted(mine) == sorted(full_state)
        for key, value in full_state.get(0, {}).items():
            got = mine[0][key]
            expected = value[index] if value.dim() == 1 else value
            assert torch.equal(got, expected), (s, key)
    params = unshard([opt.params[0].detach() for opt in owners], old)
    moved = shard_optimizers(params, new, make)
    for opt, state in zip(moved, states, strict=True):
        opt.load_state_dict(state)
    for g in grads[3:]:
        whole.step(g)
        for s, opt in enumerate(moved):
            opt.step(g[new.positions(s)[0]])
    after = unshard([opt.params[0].detach() for opt in moved], new)
    assert torch.equal(after, whole.params[0].detach())


def test_resharding_refuses_states_that_do_not_fit() -> None:
    make = OPTIMIZERS["sgd_momentum"]
    old = ShardLayout(23, 2, 4)
    owners = shard_optimizers(torch.zeros(23), old, make)
    for s, opt in enumerate(owners):
        opt.step(torch.ones(old.shard_sizes()[s]))
    states = [opt.state_dict() for opt in owners]
    with pytest.raises(ValueError, match="3 shard states for n=4"):
        reshard_states(states[:3], old, ShardLayout(23, 2, 3))
    with pytest.raises(ValueError, match="keeps d and m"):
        reshard_states(states, old, ShardLayout(23, 1, 3))
    other = shard_optimizers(torch.zeros(30), ShardLayout(30, 2, 4), make)
    for opt in other:
        opt.step(torch.ones(opt.params[0].numel()))
    with pytest.raises(ValueError, match="shards of sizes"):  # another d's states
        reshard_states([opt.state_dict() for opt in other], old, ShardLayout(23, 2, 3))
