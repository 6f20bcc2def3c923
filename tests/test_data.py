"""Data sets: IDX parsing of the bundled MNIST, seeded splits, full-set loading and errors,
natural tensor shapes, Fashion-MNIST, CIFAR-10 (from a fixture in the real format) and
character-level text windows."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import agc_pipeline.data.mnist_sets as mnist_sets
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.data import (
    Dataset,
    cifar10,
    fashion_mnist,
    grammar_corpus,
    load_idx,
    mnist,
    split_subsets,
    synthetic_linear,
    synthetic_logistic,
    text,
)
from agc_pipeline.errors import ConfigError
from tests.data_fixtures import IDX_STEMS, fake_cifar10, fake_mnist, write_idx

BUNDLED = Path(mnist_sets.__file__).parent / "mnist_t10k"
CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # MNIST t10k
CONF = CONFIG_DIR


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
    assert ds.x_train.shape == (8000, 1, 28, 28) and ds.x_test.shape == (2000, 1, 28, 28)
    assert ds.kind == "image" and ds.sample_shape == (1, 28, 28) and ds.input_dim == 784
    assert ds.in_channels == 1 and ds.image_size == 28 and ds.context is None
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


def test_test_size_zero_gives_an_empty_test_split(tmp_path: Path) -> None:
    """Issue 10 point 14: dataset.test_size=0 crashed ("cannot reshape array of size 0")."""
    ds = mnist(train_size=100, test_size=0, seed=0)
    assert ds.x_test.shape == (0, 1, 28, 28) and ds.y_test.shape == (0,)
    assert ds.x_test.dtype == torch.float32 and ds.sample_shape == (1, 28, 28)
    fake_mnist(tmp_path, n_train=20, n_test=10)
    full = mnist(root=str(tmp_path), test_size=0, download=False)
    assert full.x_test.shape == (0, 1, 28, 28) and len(full.y_train) == 20
    assert text(test_size=0).x_test.shape == (0, 64)


def test_mnist_root_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        mnist(root=str(tmp_path), download=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "download" in message and str(tmp_path) in message


def test_mnist_root_download_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_sets, "MNIST_MIRRORS", [(tmp_path / "no-mirror").as_uri() + "/"])
    with pytest.raises(ConfigError, match="download failed"):
        mnist(root=str(tmp_path / "root"))
    assert not list((tmp_path / "root").glob("*.part"))  # no half-written files left


def test_mnist_root_download_and_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    fake_mnist(mirror, n_train=60, n_test=30)
    md5s = {p.name[:-3]: hashlib.md5(p.read_bytes()).hexdigest() for p in mirror.iterdir()}
    monkeypatch.setattr(mnist_sets, "MNIST_MIRRORS", [mirror.as_uri() + "/"])
    monkeypatch.setattr(mnist_sets, "MNIST_FILES", md5s)
    root = tmp_path / "root"
    ds = mnist(root=str(root), seed=0)
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in mirror.iterdir())
    assert ds.x_train.shape == (60, 1, 28, 28) and ds.x_test.shape == (30, 1, 28, 28)
    assert ds.name == "mnist" and float(ds.x_train.max()) <= 1.0
    sub = mnist(root=str(root), train_size=20, test_size=10, seed=0, download=False)
    assert len(sub.y_train) == 20 and len(sub.y_test) == 10
    with pytest.raises(ConfigError, match="dataset.train_size must be at most 60"):
        mnist(root=str(root), train_size=61, download=False)


def test_mnist_root_raw_files(tmp_path: Path) -> None:
    fake_mnist(tmp_path, n_train=40, n_test=20, compress=False)
    ds = mnist(root=str(tmp_path), download=False)
    assert ds.x_train.shape == (40, 1, 28, 28) and sorted(ds.y_test.tolist()) == sorted(
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
# Fashion-MNIST


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_fashion_mnist_reads_idx_files(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "FashionMNIST" / "raw" if layout == "torchvision" else tmp_path
    fake_mnist(folder, n_train=50, n_test=20, compress=layout == "flat", seed=3)
    ds = fashion_mnist(root=str(tmp_path), seed=1)
    assert ds.name == "fashion_mnist" and ds.num_classes == 10 and ds.kind == "image"
    assert ds.x_train.shape == (50, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    # the pixels are the file's, scaled to [0, 1], in a seeded order
    images = load_idx(next(folder.glob("train-images-idx3-ubyte*")))
    found = {tuple((ds.x_train[i, 0] * 255).round().to(torch.uint8).flatten().tolist())
             for i in range(50)}
    assert found == {tuple(img.flatten().tolist()) for img in images}
    again = fashion_mnist(root=str(tmp_path), seed=1, train_size=10, test_size=5)
    assert torch.equal(again.y_train, fashion_mnist(root=str(tmp_path), seed=1,
                                                     train_size=10, test_size=5).y_train)
    assert len(again.y_train) == 10 and len(again.y_test) == 5


def test_fashion_mnist_missing_files_one_line(tmp_path: Path) -> None:
    fake_mnist(tmp_path, n_train=5, n_test=5)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError) as info:
        fashion_mnist(root=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and "t10k-labels-idx1-ubyte" in message
    assert "train-images" not in message and f"dataset.root={tmp_path}" in message
    with pytest.raises(ConfigError, match="dataset.root must be set"):
        fashion_mnist(root=None)


# ------------------------------------------------------------------------------------------
# CIFAR-10


def test_cifar10_fixture_shapes_and_pixel_order(tmp_path: Path) -> None:
    fake_cifar10(tmp_path, per_batch=8, n_test=6, seed=2)
    ds = cifar10(root=str(tmp_path), seed=0)
    assert ds.name == "cifar10" and ds.kind == "image" and ds.num_classes == 10
    assert ds.x_train.shape == (40, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.in_channels == 3 and ds.image_size == 32 and ds.input_dim == 3072
    # rows are channel-major: 1024 red, 1024 green, 1024 blue values, row by row
    batch = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    rows = {tuple(r.tolist()): label for r, label in zip(batch[b"data"], batch[b"labels"],
                                                         strict=True)}
    for image, label in zip(ds.x_test, ds.y_test, strict=True):
        key = tuple((image * 255).round().to(torch.uint8).flatten().tolist())
        assert rows[key] == int(label)
    # root may also be the batch folder itself; subsets are seeded
    sub = cifar10(root=str(tmp_path / "cifar-10-batches-py"), train_size=7, test_size=0, seed=4)
    assert sub.x_train.shape == (7, 3, 32, 32) and sub.x_test.shape == (0, 3, 32, 32)
    assert torch.equal(sub.x_train, cifar10(root=str(tmp_path), train_size=7, test_size=0,
                                            seed=4).x_train)
    with pytest.raises(ConfigError, match="dataset.train_size must be at most 40"):
        cifar10(root=str(tmp_path), train_size=41)


def test_cifar10_reads_newer_pickle_protocols(tmp_path: Path) -> None:
    fake_cifar10(tmp_path, per_batch=3, n_test=2, protocol=4)
    assert cifar10(root=str(tmp_path)).x_train.shape == (15, 3, 32, 32)


def test_cifar10_absent_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        cifar10(root=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and f"dataset.root={tmp_path}" in message
    assert "data_batch_1" in message and "cifar-10-python.tar.gz" in message
    fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match=r"missing data_batch_3 in .*cifar-10-batches-py"):
        cifar10(root=str(tmp_path))
    with pytest.raises(ConfigError, match="dataset.root must be set for dataset=cifar10"):
        cifar10(root=None)


class _Exploit:
    def __reduce__(self) -> tuple:
        return (print, ("pwned",))


@pytest.mark.parametrize("payload, match", [
    (b"not a pickle", "cannot read pickled data"),
    (pickle.dumps({b"data": 1}), "not a CIFAR-10 batch"),
    (pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}), r"\(N, 3072\)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}), "0..9"),
    (pickle.dumps(_Exploit()), "refusing to load builtins.print"),
])
def test_cifar10_corrupt_or_unsafe_batch(tmp_path: Path, payload: bytes, match: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    fake_cifar10(tmp_path, per_batch=2, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(payload)
    with pytest.raises(ConfigError, match=match):
        cifar10(root=str(tmp_path))
    assert "pwned" not in capsys.readouterr().out  # the pickle's code never ran


# ------------------------------------------------------------------------------------------
# Character-level text

DEFAULT_CORPUS_SHA256 = "0615dbc9d3ac08ef98cb36ec26424d6e627f33182a02828da01c17e91c658ffa"


def decode(ds: Dataset, ids: torch.Tensor) -> str:
    assert ds.vocab is not None
    return "".join(ds.vocab[int(i)] for i in ids)


def test_default_corpus_is_pinned_and_english_like() -> None:
    corpus = grammar_corpus()
    assert hashlib.sha256(corpus.encode()).hexdigest() == DEFAULT_CORPUS_SHA256
    assert 300_000 <= len(corpus) <= 500_000
    words = corpus.split()
    assert 300 <= len(set(words)) <= 2000 and words.count("the") > 1000
    assert grammar_corpus(5000, seed=1) != grammar_corpus(5000, seed=2)


def test_text_windows_and_shifted_targets() -> None:
    ds = text(context=32, seed=0)
    corpus = grammar_corpus()
    assert ds.kind == "tokens" and ds.task == "classification" and ds.name == "text"
    assert ds.x_train.dtype == torch.int64 and ds.y_train.shape == ds.x_train.shape
    assert ds.sample_shape == (32,) and ds.context == 32 and ds.input_dim == 32
    assert ds.vocab == "".join(sorted(set(corpus))) and ds.vocab_size == len(ds.vocab)
    assert ds.num_classes == ds.vocab_size and ds.in_channels is None
    # y is x shifted by one character; x[i] is a window of the corpus
    assert torch.equal(ds.y_train[:, :-1], ds.x_train[:, 1:])
    cut = round(len(corpus) * 0.9)
    for i in (0, 17, len(ds.x_train) - 1):
        window = decode(ds, ds.x_train[i]) + decode(ds, ds.y_train[i, -1:])
        start = corpus.find(window)
        assert start >= 0 and start % 32 == 0 and start + 33 <= cut
    # non-overlapping windows cover the training text; test windows come from its tail
    assert len(ds.x_train) == (cut - 33) // 32 + 1
    for i in range(len(ds.x_test)):
        assert corpus.find(decode(ds, ds.x_test[i]), cut) >= cut
    # seeded order, same windows
    other = text(context=32, seed=1)
    assert not torch.equal(other.x_train, ds.x_train)
    assert sorted(map(tuple, other.x_train.tolist())) == sorted(map(tuple, ds.x_train.tolist()))
    assert torch.equal(text(context=32, seed=0).x_test, ds.x_test)


def test_text_from_file_and_folder(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("abcdefghij" * 3, encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("ü€ü€ü€ü€", encoding="utf-8")
    (tmp_path / ".hidden").write_text("\xff never read", encoding="latin-1")
    one = text(path=str(tmp_path / "b.txt"), context=4, stride=1, test_fraction=0.0)
    assert one.vocab == "abcdefghij" and one.x_test.shape == (0, 4)
    assert len(one.x_train) == 30 - 4 and one.name == "text:b.txt"
    assert sorted(map(tuple, one.x_train[:, 0:1].tolist()))[0] == (0,)
    both = text(path=str(tmp_path), context=4, test_fraction=0.25)
    assert both.vocab == "\nabcdefghijü€"  # b.txt then sub/a.txt, joined by a newline
    assert torch.equal(both.y_train[:, :-1], both.x_train[:, 1:])
    with pytest.raises(ConfigError, match="train_size must be at most"):
        text(path=str(tmp_path), context=4, train_size=100)
    with pytest.raises(ConfigError, match="too short for one window"):
        text(path=str(tmp_path / "b.txt"), context=40)


def test_text_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe not utf-8")
    cases = [
        (dict(path=str(tmp_path / "bad.txt")), r"bad.txt is not UTF-8 text"),
        (dict(path=str(tmp_path / "nope")), "no such file or folder"),
        (dict(context=0), "dataset.context must be a positive integer"),
        (dict(stride=2.5), "dataset.stride"),
        (dict(test_fraction=1.0), "dataset.test_fraction must be ≤ 0.9"),
        (dict(test_size=-1), "dataset.test_size"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ConfigError, match=match) as info:
            text(**kwargs)
        assert "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no files"):
        text(path=str(tmp_path / "empty"))


# ------------------------------------------------------------------------------------------
# Hydra option files


@pytest.mark.parametrize("option", ["mnist", "synthetic_linear", "synthetic_logistic", "text",
                                    "fashion_mnist", "cifar10"])
def test_dataset_option_files_instantiate(option: str, tmp_path: Path) -> None:
    cfg = OmegaConf.create({"seed": 0, "dataset": OmegaConf.load(CONF / "dataset" /
                                                                  f"{option}.yaml")})
    if option == "fashion_mnist":
        cfg.dataset.root = str(fake_mnist(tmp_path, n_train=30, n_test=10))
    if option == "cifar10":
        cfg.dataset.root = str(fake_cifar10(tmp_path))
    ds = instantiate(cfg.dataset)
    assert isinstance(ds, Dataset) and len(ds.y_train) > len(ds.y_test) > 0
    expected = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32),
                "text": (64,), "synthetic_linear": (20,), "synthetic_logistic": (20,)}
    assert ds.sample_shape == expected[option]


def test_idx_stems_match_the_loader() -> None:
    assert set(IDX_STEMS) == set(mnist_sets.MNIST_FILES)
