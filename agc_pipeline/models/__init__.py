"""Models trained with coded SGD, and per-subset gradients via ``torch.func``.

The contract (what the trainers call; any ``torch.nn.Module`` that meets it can be trained,
given as ``model._target_``):

* ``model(x)`` on a batch ``x`` whose dim 0 indexes samples (a data set's natural shape:
  (N, D) features, (N, C, H, W) images, (N, T) tokens) returns outputs with dim 0 = samples.
* ``model.loss_sum(outputs, targets)``: the loss *summed* over the samples, a scalar tensor.
  The partial gradient of data subset D_i is then ``∇ loss_sum(D_i) / N`` and the full
  gradient is their sum (paper Section II: g = Σ_i g_i); the trainer divides by N.
* ``model.metric(outputs, targets)``: a float (accuracy, token accuracy or MSE).
* ``model.task``: ``"classification"`` (integer targets) or ``"regression"`` (float).
* Optional ``inputs``: the data set kinds accepted (``features``, ``image``, ``tokens``).

:class:`CodedModel` is a base class with these members; :class:`WithLoss` wraps a plain
``nn.Module`` with a named loss (``cross_entropy | bce | mse``) so nothing needs
subclassing. Initialisation should be deterministic: our models draw their parameters from
a ``torch.Generator`` seeded by their ``seed`` argument and leave the global RNG untouched.

What the coded-gradient engine additionally relies on (it weights each sample's gradient
contribution per parameter block, layer by layer):

1. Every module that directly owns parameters (``module.parameters(recurse=False)`` non-empty)
   returns a tensor whose dim 0 is the sample dimension of its input, and sample s's output
   depends only on sample s's input. So: no BatchNorm in training mode (use GroupNorm or
   LayerNorm); a positional embedding is a module that *adds* its rows to the (N, T, C) token
   embeddings, not one that returns a (T, C) tensor; attention is written with ``nn.Linear``
   q/k/v/output projections (no ``nn.MultiheadAttention``, which owns its projection weights
   and takes (T, N, C) by default).
2. A parameter is used only in the forward of the module that owns it (no weight tying
   across modules; :class:`~agc_pipeline.models.gpt.GPT` has ``tie_weights=false`` by default).
3. The model is a pure function of its parameters and input (no dropout or other draws from
   the global RNG), so ``torch.func.functional_call`` and ``vmap`` over parameter copies
   reproduce it (:func:`subset_gradients`, ``training.gradients.partial_gradients``).
"""

from agc_pipeline.models.base import CodedModel, subset_gradients
from agc_pipeline.models.cnn import CNN
from agc_pipeline.models.gpt import GPT, gpt_parameter_count
from agc_pipeline.models.mlp import MLP, LinearRegression, LogisticRegression, PaperMLP
from agc_pipeline.models.wrap import LOSSES, WithLoss

__all__ = [
    "CNN",
    "GPT",
    "LOSSES",
    "MLP",
    "CodedModel",
    "LinearRegression",
    "LogisticRegression",
    "PaperMLP",
    "WithLoss",
    "gpt_parameter_count",
    "subset_gradients",
]
