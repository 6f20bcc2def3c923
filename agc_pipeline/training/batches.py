"""Minibatches drawn from each data subset D_i (``trainer.batch_size``).

Every iteration takes ``b`` samples from every subset: subset i is shuffled once per epoch
(by the generator of (seed, epoch, i)) and cut into ⌊|D_i|/b⌋ batches, the remainder being
dropped. The draw is a pure function of (seed, iteration), so the simulated PS and every
worker of a distributed run — which holds only its own subsets — pick the same samples, and
a resumed run continues with the same batches. ``b = None`` takes the whole subset in its
stored order (full-batch SGD, as the paper's experiments do).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["BATCH_TAG", "batch_indices", "take"]

#: last entry of the minibatch generator's seed (the encoder uses 0xE7C0, stragglers 0x57A6)
BATCH_TAG = 0xBA7C


def batch_indices(seed: int, iteration: int, subsets: np.ndarray | list[int], size: int,
                  batch_size: int | None) -> torch.Tensor | None:
    """Positions (within each subset, 0..size-1) of iteration ``iteration``'s minibatch for
    each subset in ``subsets``: a (len(subsets), b) long tensor, or None for the whole subset.
    """
    if batch_size is None or batch_size >= size:
        return None
    per_epoch = size // batch_size
    epoch, position = divmod(int(iteration), per_epoch)
    rows = [_permutation(int(seed), epoch, int(i), size)
            [position * batch_size:(position + 1) * batch_size] for i in subsets]
    return torch.as_tensor(np.stack(rows), dtype=torch.long)


#: the permutations of the epochs in use, {(seed, epoch, subset, size): permutation}: drawn
#: once per epoch instead of once per iteration (the same values; a minibatch costs a slice)
_PERMUTATIONS: dict[tuple[int, int, int, int], np.ndarray] = {}
_CACHED_SAMPLES = 1 << 22  #: at most this many cached positions (older epochs are dropped)


def _permutation(seed: int, epoch: int, subset: int, size: int) -> np.ndarray:
    """Subset ``subset``'s shuffle of epoch ``epoch`` (the generator of (seed, epoch, i))."""
    key = (seed, epoch, subset, size)
    perm = _PERMUTATIONS.get(key)
    if perm is None:
        perm = np.random.default_rng([seed, epoch, subset, BATCH_TAG]).permutation(size)
        perm.setflags(write=False)
        while _PERMUTATIONS and size * (len(_PERMUTATIONS) + 1) > _CACHED_SAMPLES:
            del _PERMUTATIONS[next(iter(_PERMUTATIONS))]  # the oldest first
        _PERMUTATIONS[key] = perm
    return perm


def take(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``x`` (h, size, …) restricted to the minibatch ``index`` (h, b): (h, b, …)."""
    if index is None:
        return x
    index = index.to(x.device)
    if x.dim() == 2:  # labels: 1.5 µs against advanced indexing's 6 µs
        return torch.gather(x, 1, index)
    h, size = x.shape[0], x.shape[1]
    flat = (index + size * torch.arange(h, device=x.device)[:, None]).view(-1)
    # one index_select of whole rows: 40 µs against advanced indexing's 106 µs for 27
    # subsets' 16 of 64 MNIST rows (1 thread, 2026-12-07)
    return x.reshape(h * size, *x.shape[2:]).index_select(0, flat).view(
        h, index.shape[1], *x.shape[2:])
