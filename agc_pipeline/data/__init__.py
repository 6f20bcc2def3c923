"""Data sets for coded SGD and the split into k data subsets D_1..D_k (paper §1).

* :func:`mnist` — real MNIST: the bundled 10k test split (offline, default) or the full set
  from a folder (downloaded when missing). The paper's Fig. 6 trains on MNIST.
* :func:`synthetic_linear`, :func:`synthetic_logistic` — small generated problems for fast
  tests and convergence checks.
* :func:`split_subsets` — the k disjoint, equal-size data subsets that the assignment matrix
  places on workers.

Every function is deterministic given its ``seed``. Features are float32 and flattened;
labels are int64 (classification) or float32 targets (regression).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from agc_pipeline.errors import ConfigError, require

__all__ = [
    "Dataset",
    "load_idx",
    "mnist",
    "split_subsets",
    "synthetic_linear",
    "synthetic_logistic",
]


@dataclass
class Dataset:
    """A train/test pair of tensors.

    ``x_*``: float32, shape (N, D). ``y_*``: int64 class labels (classification) or float32
    targets of shape (N,) (regression, ``num_classes is None``).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int | None
    name: str

    @property
    def input_dim(self) -> int:
        """Number of features D."""
        return int(self.x_train.shape[1])

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"``."""
        return "regression" if self.num_classes is None else "classification"


# --------------------------------------------------------------------------------------------
# IDX format (http://yann.lecun.com/exdb/mnist/): 0x00 0x00, a type byte, the number of
# dimensions, then one big-endian int32 per dimension, then the data, big-endian, row-major.

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into an array of its native shape and type.

    Raises :class:`ConfigError` for a missing, truncated or corrupt file.
    """
    path = Path(path)
    require(path.is_file(), f"IDX file not found: {path}")
    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ConfigError(f"{path}: cannot read IDX file ({exc})") from exc
    require(len(raw) >= 4 and raw[0] == 0 and raw[1] == 0 and raw[2] in _IDX_TYPES,
            f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    require(ndim >= 1 and len(raw) >= header, f"{path}: truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    require(len(raw) - header == expected,
            f"{path}: corrupt IDX file: header says shape {shape} ({expected} data bytes), "
            f"file holds {len(raw) - header}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------------------------
# MNIST

_BUNDLED = Path(__file__).resolve().parent / "mnist_t10k"

#: file stem → MD5 of the standard gzip file
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}

#: download mirrors tried in order (each + "<stem>.gz")
MNIST_MIRRORS: list[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

_DOWNLOAD_TIMEOUT_S = 30.0


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _check_mnist_pair(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    require(images.ndim == 3 and images.dtype == np.uint8,
            f"{where}: MNIST images must be a uint8 array N×rows×cols (got {images.shape})")
    require(labels.ndim == 1 and labels.shape[0] == images.shape[0],
            f"{where}: {labels.shape[0]} labels for {images.shape[0]} images")
    require(int(labels.max(initial=0)) <= 9, f"{where}: MNIST labels must lie in 0..9")


@lru_cache(maxsize=1)
def _bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The bundled 10k images and labels, MD5-checked once per process."""
    arrays = []
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        path = _BUNDLED / f"{stem}.gz"
        require(path.is_file(), f"bundled MNIST file missing: {path}; reinstall agc_pipeline")
        digest = _md5(path)
        require(digest == MNIST_FILES[stem],
                f"bundled MNIST file {path} is corrupt (MD5 {digest}, expected "
                f"{MNIST_FILES[stem]}); reinstall agc_pipeline")
        arrays.append(load_idx(path))
    _check_mnist_pair(arrays[0], arrays[1], str(_BUNDLED))
    return arrays[0], arrays[1]


def _find_idx(root: Path, stem: str) -> Path | None:
    """``root/stem[.gz]``, also under torchvision's ``root/MNIST/raw`` layout."""
    for folder in (root, root / "MNIST" / "raw"):
        for name in (stem, f"{stem}.gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _download(stem: str, root: Path) -> Path:
    """Fetch ``stem.gz`` from the first mirror that serves it with the right MD5."""
    target = root / f"{stem}.gz"
    failures = []
    for mirror in MNIST_MIRRORS:
        url = f"{mirror}{stem}.gz"
        fd, tmp_name = tempfile.mkstemp(dir=root, suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
                tmp.write_bytes(resp.read())
            digest = _md5(tmp)
            if digest != MNIST_FILES[stem]:
                failures.append(f"{url}: MD5 {digest} != {MNIST_FILES[stem]}")
                continue
            tmp.replace(target)
            return target
        except OSError as exc:  # URLError, HTTPError and timeouts are OSErrors
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError("; ".join(failures))


def _mnist_dir(root: Path, download: bool) -> dict[str, Path]:
    """Locate the four full-MNIST files in ``root``, downloading missing ones if allowed."""
    paths = {stem: _find_idx(root, stem) for stem in MNIST_FILES}
    missing = [stem for stem, p in paths.items() if p is None]
    if not missing:
        return paths  # type: ignore[return-value]
    listed = ", ".join(f"{s}[.gz]" for s in missing)
    if not download:
        raise ConfigError(f"dataset.root={root}: missing MNIST files {listed}, and "
                          "dataset.download is false; put the IDX files there or allow the "
                          "download (or set dataset.root=null for the bundled 10k images)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stem in missing:
            paths[stem] = _download(stem, root)
    except OSError as exc:
        raise ConfigError(f"dataset.root={root}: missing MNIST files {listed}, and the download "
                          f"failed ({exc}); copy the IDX files there by hand (or set "
                          "dataset.root=null for the bundled 10k images)") from exc
    return paths  # type: ignore[return-value]


def _pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 N×28×28 → float32 N×784 in [0, 1]."""
    flat = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    return torch.from_numpy(flat)


def _check_size(value: int | None, name: str, minimum: int) -> None:
    require(value is None or (isinstance(value, int | np.integer) and value >= minimum),
            f"dataset.{name} must be an integer ≥ {minimum} or null (got {value!r})")


def mnist(root: str | None = None, train_size: int | None = None,
          test_size: int | None = None, seed: int = 0, download: bool = True) -> Dataset:
    """MNIST digits, pixels scaled to [0, 1], images flattened to 784 features.

    ``root=None``: the bundled 10,000-image test split (see ``data/mnist_t10k/LICENSE.md``),
    permuted by ``seed`` and cut into ``train_size`` (default 8000) training and
    ``test_size`` (default 2000) test images. ``root`` given: the full set read from IDX
    files in ``root`` (downloaded when missing and ``download`` is true); ``train_size`` /
    ``test_size`` (default: all 60,000 / 10,000) pick a seeded random subset of each split.
    """
    _check_size(train_size, "train_size", 1)
    _check_size(test_size, "test_size", 0)
    rng = np.random.default_rng(seed)
    if root is None:
        images, labels = _bundled_mnist()
        n_train = 8000 if train_size is None else int(train_size)
        n_test = max(0, min(2000, len(labels) - n_train)) if test_size is None else int(test_size)
        require(n_train + n_test <= len(labels),
                f"dataset.train_size + dataset.test_size must be at most {len(labels)}, the "
                f"bundled MNIST images (got {n_train} + {n_test}); set dataset.root to a "
                "folder with the full MNIST set for more")
        perm = rng.permutation(len(labels))
        tr, te = perm[:n_train], perm[n_train:n_train + n_test]
        return Dataset(_pixels(images[tr]), torch.from_numpy(labels[tr].astype(np.int64)),
                       _pixels(images[te]), torch.from_numpy(labels[te].astype(np.int64)),
                       num_classes=10, name="mnist10k")

    paths = _mnist_dir(Path(root).expanduser(), download)
    splits = []
    for prefix, size, key in (("train", train_size, "train_size"),
                              ("t10k", test_size, "test_size")):
        images = load_idx(paths[f"{prefix}-images-idx3-ubyte"])
        labels = load_idx(paths[f"{prefix}-labels-idx1-ubyte"])
        _check_mnist_pair(images, labels, str(root))
        count = len(labels) if size is None else int(size)
        require(count <= len(labels),
                f"dataset.{key} must be at most {len(labels)} for {root} (got {count})")
        idx = rng.permutation(len(labels))[:count]
        splits += [_pixels(images[idx]), torch.from_numpy(labels[idx].astype(np.int64))]
    return Dataset(*splits, num_classes=10, name="mnist")


# --------------------------------------------------------------------------------------------
# Synthetic problems


def _check_synthetic(n_samples: int, dim: int, test_fraction: float) -> tuple[int, int]:
    require(isinstance(n_samples, int | np.integer) and n_samples >= 2,
            f"dataset.n_samples must be an integer ≥ 2 (got {n_samples!r})")
    require(isinstance(dim, int | np.integer) and dim >= 1,
            f"dataset.dim must be a positive integer (got {dim!r})")
    require(0.0 <= test_fraction < 1.0,
            f"dataset.test_fraction must lie in [0, 1) (got {test_fraction})")
    n_test = int(round(n_samples * test_fraction))
    require(n_samples - n_test >= 1, "dataset.test_fraction leaves no training samples")
    return n_samples - n_test, n_test


def synthetic_linear(n_samples: int = 1024, dim: int = 20, noise: float = 0.1, seed: int = 0,
                     test_fraction: float = 0.2) -> Dataset:
    """Linear regression data ``y = X w* + noise·ε``, X and ε standard normal, w* ~ N(0, I/dim).

    The first ``(1 − test_fraction)·n_samples`` rows form the training set.
    """
    n_train, _ = _check_synthetic(n_samples, dim, test_fraction)
    require(noise >= 0, f"dataset.noise must be ≥ 0 (got {noise})")
    rng = np.random.default_rng(seed)
    w_star = rng.standard_normal(dim) / np.sqrt(dim)
    x = rng.standard_normal((n_samples, dim))
    y = x @ w_star + noise * rng.standard_normal(n_samples)
    x_t, y_t = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    return Dataset(x_t[:n_train], y_t[:n_train], x_t[n_train:], y_t[n_train:],
                   num_classes=None, name="synthetic_linear")


def synthetic_logistic(n_samples: int = 1024, dim: int = 20, num_classes: int = 2,
                       seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Multinomial-logistic data: X standard normal, W* ~ N(0, I) (dim×C), labels drawn from
    ``softmax(X W*)`` (so the Bayes classifier is linear but not perfect)."""
    n_train, _ = _check_synthetic(n_samples, dim, test_fraction)
    require(isinstance(num_classes, int | np.integer) and num_classes >= 2,
            f"dataset.num_classes must be an integer ≥ 2 (got {num_classes!r})")
    rng = np.random.default_rng(seed)
    w_star = rng.standard_normal((dim, num_classes))
    x = rng.standard_normal((n_samples, dim))
    logits = x @ w_star
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    cdf = probs.cumsum(axis=1)
    u = rng.random((n_samples, 1))
    y = np.minimum((u > cdf).sum(axis=1), num_classes - 1)  # inverse-CDF sampling
    x_t, y_t = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    return Dataset(x_t[:n_train], y_t[:n_train], x_t[n_train:], y_t[n_train:],
                   num_classes=int(num_classes), name="synthetic_logistic")


# --------------------------------------------------------------------------------------------
# Data subsets


def split_subsets(num_samples: int, k: int, seed: int) -> torch.Tensor:
    """Indices of k disjoint, equal-size data subsets D_1..D_k (paper §1), shape (k, N // k).

    A seeded random permutation of ``range(num_samples)`` cut into k rows; the
    ``num_samples mod k`` left-over samples are dropped (equal sizes make the partial
    gradients comparable, as the paper assumes).
    """
    require(isinstance(k, int | np.integer) and k >= 1,
            f"k (number of data subsets) must be a positive integer (got {k!r})")
    require(num_samples >= k,
            f"k = {k} data subsets need at least {k} training samples (got {num_samples})")
    perm = np.random.default_rng(seed).permutation(num_samples)
    size = num_samples // k
    return torch.from_numpy(perm[: k * size].reshape(k, size).astype(np.int64))
