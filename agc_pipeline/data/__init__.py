"""Data sets for coded SGD and the split into k data subsets D_1..D_k (paper Section II).

Tensors keep their natural shape, dim 0 indexing samples (see :class:`Dataset`):

* :func:`mnist` — real MNIST (N, 1, 28, 28): the bundled 10k test split (offline, default)
  or the full set from ``dataset.root`` (downloaded when missing). The paper's Fig. 6
  trains on MNIST.
* :func:`fashion_mnist` — Fashion-MNIST (N, 1, 28, 28) from IDX files under ``dataset.root``.
* :func:`cifar10` — CIFAR-10 (N, 3, 32, 32) from the python batches under ``dataset.root``.
* :func:`text` — character-level language modelling windows (N, T) of a UTF-8 file or
  folder, or of a generated offline default corpus.
* :func:`synthetic_linear`, :func:`synthetic_logistic` — small generated (N, D) problems for
  fast tests and convergence checks.
* :func:`split_subsets` — the k disjoint, equal-size data subsets that the assignment matrix
  places on workers: i.i.d. or label-skewed (``dataset.partition``, carried by every
  :class:`Dataset`; :func:`labels_per_subset` reports the skew).

Every function is deterministic given its ``seed``.
"""

from agc_pipeline.data.base import (
    KINDS,
    PARTITIONS,
    Dataset,
    check_partition,
    labels_per_subset,
    split_subsets,
)
from agc_pipeline.data.cifar import cifar10
from agc_pipeline.data.corpus import grammar_corpus, text
from agc_pipeline.data.mnist_sets import fashion_mnist, mnist
from agc_pipeline.data.readers import load_idx, load_pickle
from agc_pipeline.data.synthetic import synthetic_linear, synthetic_logistic

__all__ = [
    "KINDS",
    "PARTITIONS",
    "Dataset",
    "check_partition",
    "cifar10",
    "fashion_mnist",
    "grammar_corpus",
    "labels_per_subset",
    "load_idx",
    "load_pickle",
    "mnist",
    "split_subsets",
    "synthetic_linear",
    "synthetic_logistic",
    "text",
]
