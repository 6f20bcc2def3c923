"""Data sets: IDX parsing of the bundled MNIST, seeded splits, full-set loading and errors."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import agc_pipeline.data as data
from agc_pipeline.data import (
    Dataset,
    load_idx,
    mnist,
    split_subsets,
    synthetic_linear,
    synthetic_logistic,
)
from agc_pipeline.errors import ConfigError

BUNDLED = Path(data.__file__).parent / "mnist_t10k"
CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # MNIST t10k
CONF = Path(__file__).resolve().parents[1] / "conf"


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` (uint8 or int32) as an IDX file."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def fake_mnist(folder: Path, n_train: int = 60, n_test: int = 30, compress: bool = True,
               seed: int = 0) -> None:
    """A tiny IDX set with the full-MNIST file names (labels 0..9, 28×28 uint8 images)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)


# ------------------------------------------------------------------------------------------
# IDX


def test_bundled_idx_files_parse() -> None:
    images = load_idx(BUNDLED / "t10k-images-idx3-ubyte.gz")
    labels = load_idx(BUNDLED / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).tolist() == CLASS_COUNTS
    # bright ink on a black background: corners empty, centre inked
    assert images[:, 0, 0].max() == 0 and images[:, 10:18, 10:18].mean() > 50


def test_idx_raw_and_gzip_round_trip(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) - 5
    raw = load_idx(write_idx(tmp_path / "a.idx", array))
    gz = load_idx(write_idx(tmp_path / "a.idx.gz", array, compress=True))
    np.testing.assert_array_equal(raw, array)
    np.testing.assert_array_equal(gz, array)
    assert raw.dtype.isnative


@pytest.mark.parametrize("content, match", [
    (b"\x08\x03\x00\x00\x00\x01", "bad magic"),
    (b"", "bad magic"),
    (b"\x00\x00\x08\x02\x00\x00", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "corrupt IDX file"),
    (b"\x1f\x8b\x08\x00garbage", "cannot read IDX file"),
])
def test_idx_rejects_corrupt_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_idx(path)


def test_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_idx(tmp_path / "nope.gz")


# ------------------------------------------------------------------------------------------
# MNIST


def test_bundled_mnist_split() -> None:
    ds = mnist(seed=0)
    assert isinstance(ds, Dataset) and ds.num_classes == 10 and ds.task == "classification"
    assert ds.x_train.shape == (8000, 784) and ds.x_test.shape == (2000, 784)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) == 1.0
    # train and test together are exactly the 10k images
    counts = torch.bincount(ds.y_train, minlength=10) + torch.bincount(ds.y_test, minlength=10)
    assert counts.tolist() == CLASS_COUNTS
    again, other = mnist(seed=0), mnist(seed=1)
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)
    assert not torch.equal(other.y_train, ds.y_train)


def test_bundled_mnist_sizes() -> None:
    ds = mnist(train_size=100, test_size=50, seed=3)
    assert len(ds.y_train) == 100 and len(ds.y_test) == 50
    assert len(mnist(train_size=9500).y_test) == 500  # default test size shrinks to fit
    with pytest.raises(ConfigError, match=r"at most 10000.*9000 \+ 2000"):
        mnist(train_size=9000, test_size=2000)
    with pytest.raises(ConfigError, match="dataset.train_size"):
        mnist(train_size=0)


def test_mnist_root_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        mnist(root=str(tmp_path), download=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "download" in message and str(tmp_path) in message


def test_mnist_root_download_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MNIST_MIRRORS", [(tmp_path / "no-mirror").as_uri() + "/"])
    with pytest.raises(ConfigError, match="download failed"):
        mnist(root=str(tmp_path / "root"))
    assert not list((tmp_path / "root").glob("*.part"))  # no half-written files left


def test_mnist_root_download_and_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    fake_mnist(mirror, n_train=60, n_test=30)
    md5s = {p.name[:-3]: hashlib.md5(p.read_bytes()).hexdigest() for p in mirror.iterdir()}
    monkeypatch.setattr(data, "MNIST_MIRRORS", [mirror.as_uri() + "/"])
    monkeypatch.setattr(data, "MNIST_FILES", md5s)
    root = tmp_path / "root"
    ds = mnist(root=str(root), seed=0)
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in mirror.iterdir())
    assert ds.x_train.shape == (60, 784) and ds.x_test.shape == (30, 784)
    assert ds.name == "mnist" and float(ds.x_train.max()) <= 1.0
    sub = mnist(root=str(root), train_size=20, test_size=10, seed=0, download=False)
    assert len(sub.y_train) == 20 and len(sub.y_test) == 10
    with pytest.raises(ConfigError, match="dataset.train_size must be at most 60"):
        mnist(root=str(root), train_size=61, download=False)


def test_mnist_root_raw_files(tmp_path: Path) -> None:
    fake_mnist(tmp_path, n_train=40, n_test=20, compress=False)
    ds = mnist(root=str(tmp_path), download=False)
    assert ds.x_train.shape == (40, 784) and sorted(ds.y_test.tolist()) == sorted(
        (np.arange(20) % 10).tolist())


# ------------------------------------------------------------------------------------------
# Synthetic data


def test_synthetic_linear() -> None:
    ds = synthetic_linear(n_samples=2000, dim=5, noise=0.1, seed=4)
    assert ds.num_classes is None and ds.task == "regression"
    assert ds.x_train.shape == (1600, 5) and ds.y_test.shape == (400,)
    assert ds.y_train.dtype == torch.float32
    # least squares on the training set leaves residuals of variance ≈ noise²
    x = ds.x_train.double()
    w = torch.linalg.lstsq(x, ds.y_train.double().unsqueeze(1)).solution
    residual = (x @ w).squeeze(1) - ds.y_train.double()
    assert 0.008 < float(residual.var()) < 0.012
    assert torch.equal(synthetic_linear(n_samples=2000, dim=5, seed=4).x_test, ds.x_test)
    with pytest.raises(ConfigError, match="test_fraction"):
        synthetic_linear(test_fraction=1.0)


def test_synthetic_logistic() -> None:
    ds = synthetic_logistic(n_samples=1000, dim=8, num_classes=3, seed=1)
    assert ds.num_classes == 3 and ds.y_train.dtype == torch.int64
    assert set(ds.y_train.tolist()) == {0, 1, 2}
    assert torch.equal(synthetic_logistic(n_samples=1000, dim=8, num_classes=3,
                                          seed=1).y_train, ds.y_train)
    with pytest.raises(ConfigError, match="num_classes"):
        synthetic_logistic(num_classes=1)


# ------------------------------------------------------------------------------------------
# Data subsets


def test_split_subsets_disjoint_equal_deterministic() -> None:
    idx = split_subsets(103, 10, seed=5)
    assert idx.shape == (10, 10) and idx.dtype == torch.int64
    flat = idx.flatten()
    assert len(set(flat.tolist())) == 100 and int(flat.min()) >= 0 and int(flat.max()) < 103
    assert torch.equal(split_subsets(103, 10, seed=5), idx)
    assert not torch.equal(split_subsets(103, 10, seed=6), idx)
    assert torch.equal(torch.sort(split_subsets(12, 12, 0).flatten()).values, torch.arange(12))


def test_split_subsets_too_few_samples() -> None:
    with pytest.raises(ConfigError, match=r"k = 100 data subsets need at least 100 training "
                                          r"samples \(got 50\)"):
        split_subsets(50, 100, seed=0)
    with pytest.raises(ConfigError, match="positive integer"):
        split_subsets(50, 0, seed=0)


# ------------------------------------------------------------------------------------------
# Hydra option files


@pytest.mark.parametrize("option", ["mnist", "synthetic_linear", "synthetic_logistic"])
def test_dataset_option_files_instantiate(option: str) -> None:
    cfg = OmegaConf.create({"seed": 0, "dataset": OmegaConf.load(CONF / "dataset" /
                                                                  f"{option}.yaml")})
    ds = instantiate(cfg.dataset)
    assert isinstance(ds, Dataset) and len(ds.y_train) > len(ds.y_test) > 0
