"""The samples of a batch grouped by data subset, for the per-subset weight gradients of
:mod:`~agc_pipeline.training.weight_gradients` (paper Section III: g_i sums the samples of
data subset D_i)."""

from __future__ import annotations

import torch

__all__ = ["Groups"]


class Groups:
    """The samples of a batch grouped by data subset: ``count`` groups (the subsets present,
    ``ids``) of ``size`` samples, shorter groups padded with zero rows.

    ``contiguous``: the batch is ``count`` consecutive groups of ``size`` (how minibatches
    are built); ``interleaved``: sample r of every group, then sample r + 1, … (the layout
    the coded-gradient engine gives a model with convolutions: every group's rows side by
    side, as the grouped convolution of the per-subset weight gradients reads them). Both
    gather by a view."""

    def __init__(self, subset: torch.Tensor) -> None:
        n = subset.numel()
        ordered = n < 2 or bool((subset[1:] >= subset[:-1]).all())
        if ordered:  # the usual case (minibatches are built subset by subset): no sort
            self.ids, counts = torch.unique_consecutive(subset, return_counts=True)
        else:
            self.ids, counts = torch.unique(subset, sorted=True, return_counts=True)
        self.count = int(self.ids.numel())
        self.size = int(counts.max()) if n else 0
        equal = bool((counts == self.size).all())
        self.contiguous = ordered and equal
        self.interleaved = (not ordered and equal and bool(
            (subset.view(self.size, self.count) == self.ids[None, :]).all()))
        #: None: the batch is already ``count`` contiguous (or interleaved) groups of ``size``
        self._where: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if not (self.contiguous or self.interleaved):
            order = torch.argsort(subset, stable=True)
            group = torch.repeat_interleave(torch.arange(self.count, device=subset.device),
                                            counts)
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(n, device=subset.device) - starts.repeat_interleave(counts)
            self._where = (order, group, rank)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """(N, …) → (count, size, …)."""
        if self.interleaved:
            return t.reshape(self.size, self.count, *t.shape[1:]).transpose(0, 1)
        if self._where is None:
            return t.reshape(self.count, self.size, *t.shape[1:])
        order, group, rank = self._where
        out = t.new_zeros(self.count, self.size, *t.shape[1:])
        out[group, rank] = t[order]
        return out
