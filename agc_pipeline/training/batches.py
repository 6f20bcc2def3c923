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
    rows = []
    for i in subsets:
        perm = np.random.default_rng([int(seed), epoch, int(i), BATCH_TAG]).permutation(size)
        rows.append(perm[position * batch_size:(position + 1) * batch_size])
    return torch.as_tensor(np.stack(rows), dtype=torch.long)


def take(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``x`` (h, size, …) restricted to the minibatch ``index`` (h, b): (h, b, …)."""
    if index is None:
        return x
    index = index.to(x.device)
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[rows, index]
