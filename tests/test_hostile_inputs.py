"""Damaged input files and values blamed on the wrong key (issue 20): each is refused in one
line naming the file (or the key) and what is wrong with it."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from agc_pipeline.cluster.planner import load_convergence
from agc_pipeline.errors import ConfigError

#: a convergence file (bench/measure_convergence.py's shape) of three short curves
CURVES = {"exact": "exact", "curves": {
    "exact": {"normalised_error": 0.0, "loss": [5.0, 4.0, 3.0, 2.0, 1.0]},
    "a": {"normalised_error": 0.2, "loss": [5.0, 4.5, 4.0, 3.0, 2.0]},
    "b": {"normalised_error": 0.5, "loss": [5.0, 5.0, 4.5, 4.0, 3.5]}}}


def write_curves(path: Path, **changes: object) -> Path:
    data = json.loads(json.dumps(CURVES))
    for label, curve in changes.items():
        data["curves"][label] = curve
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
    return path


def test_a_sound_convergence_file_is_read(tmp_path: Path) -> None:
    assert load_convergence(write_curves(tmp_path / "c.json"), 0.6, None).target_loss == 3.0


@pytest.mark.parametrize("damage, says", [
    (b"\xff\xfe\x00{bad", "not a convergence-curves file (not UTF-8 text)"),
    (b"", "not a convergence-curves file (JSONDecodeError"),
    (b"[1, 2]", "not a convergence-curves file (TypeError"),
    (b'{"exact": "x", "curves": {}}', "not a convergence-curves file (KeyError: 'x')"),
    (b'{"exact": "e", "curves": {"e": {"loss": [1, 2]}}}',
     "not a convergence-curves file (KeyError: 'normalised_error')"),
    (b'{"exact": "e", "curves": {"e": {"normalised_error": 0, "loss": "abc"}}}',
     "not a convergence-curves file (ValueError"),
])
def test_a_damaged_convergence_file_is_named(tmp_path: Path, damage: bytes, says: str) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(damage)
    with pytest.raises(ConfigError, match="^plan.convergence ") as info:
        load_convergence(path, 0.5, None)
    assert str(path) in str(info.value) and says in str(info.value)


@pytest.mark.parametrize("curve, says", [
    ({"normalised_error": 0.2, "loss": [5.0, float("nan"), 4.0]}, "holds a NaN or infinite"),
    ({"normalised_error": 0.2, "loss": [5.0, float("inf"), 4.0]}, "holds a NaN or infinite"),
    ({"normalised_error": float("nan"), "loss": [5.0, 4.0]}, "holds a NaN or infinite"),
    ({"normalised_error": 1.0, "loss": [5.0, 4.0]}, "normalised_error 1.0, outside [0, 1)"),
])
def test_a_convergence_curve_with_nan_is_named(tmp_path: Path, curve: dict, says: str) -> None:
    path = write_curves(tmp_path / "c.json", a=curve)
    with pytest.raises(ConfigError, match=rf"^plan.convergence {path}: curve 'a' "):
        load_convergence(path, 0.5, None)
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace(")", r"\)")):
        load_convergence(path, 0.5, None)


def test_a_convergence_path_that_is_a_directory_is_not_called_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_convergence(tmp_path, 0.5, None)


# ------------------------------------------------------------------------------------------
# values and data files that were blamed on the wrong thing, or on nothing


@pytest.mark.parametrize("override, key", [("optimizer.weight_decay=nan", "weight_decay"),
                                           ("optimizer.momentum=inf", "momentum")])
def test_a_nan_optimizer_value_is_blamed_on_its_key(override: str, key: str) -> None:
    """weight_decay=nan ran and stopped as 'diverged: lower trainer.lr'."""
    from agc_pipeline.build import build_optimizer
    from tests.conftest import compose_config

    with pytest.raises(ConfigError, match=rf"^optimizer.{key} must be a finite number"):
        build_optimizer(compose_config("train", [override]))


def test_a_nan_in_adamw_betas_is_blamed_on_betas() -> None:
    from agc_pipeline.build import build_optimizer
    from tests.conftest import compose_config

    with pytest.raises(ConfigError, match=r"^optimizer.betas must be a finite number"):
        build_optimizer(compose_config("train", ["optimizer=adamw", "optimizer.betas=[0.9,nan]"]))


MNIST = Path("/work/shared/data/mnist")
BUNDLED = Path(__file__).resolve().parents[1] / "agc_pipeline" / "data" / "mnist_t10k"


def _mnist_copy(root: Path) -> Path:
    """A full-MNIST folder built from the bundled 10k split (its files as both splits)."""
    source = MNIST if (MNIST / "t10k-labels-idx1-ubyte.gz").is_file() else BUNDLED
    root.mkdir()
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            (root / f"{split}-{kind}-ubyte.gz").write_bytes(
                (source / f"t10k-{kind}-ubyte.gz").read_bytes())
    return root


@pytest.mark.parametrize("damage", ["deflate data", "truncated", "header"])
def test_a_damaged_gzip_mnist_file_is_named(tmp_path: Path, damage: str) -> None:
    """Damaged deflate data raised zlib.error, a traceback naming no file."""
    from agc_pipeline.data import mnist

    root = _mnist_copy(tmp_path / "mnist")
    bad = root / "train-labels-idx1-ubyte.gz"
    raw = bad.read_bytes()
    bad.write_bytes({"deflate data": raw[:10] + bytes(50) + raw[60:],
                     "truncated": raw[: len(raw) // 2],
                     "header": b"\x1f\x8b" + bytes(20)}[damage])
    with pytest.raises(ConfigError, match=rf"^{bad}: cannot read IDX file \("):
        mnist(root=str(root), train_size=100, test_size=10, download=False)


def test_a_fifo_as_dataset_path_is_not_called_missing(tmp_path: Path) -> None:
    from agc_pipeline.data import text
    from agc_pipeline.data.readers import load_idx

    fifo = tmp_path / "corpus"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=rf"^dataset.path={fifo}: not a regular file or a "
                                          "folder$"):
        text(path=str(fifo))
    with pytest.raises(ConfigError, match=rf"^{fifo}: not a regular file"):
        load_idx(fifo)


def _cifar_folder(root: Path, labels: list) -> Path:
    """A fake CIFAR-10 folder: five training batches and a test batch of 4 images each, the
    first training batch with ``labels``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for index, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        batch = {b"data": np.zeros((4, 3072), dtype=np.uint8),
                 b"labels": labels if index == 0 else [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


@pytest.mark.parametrize("labels, says", [
    ([b"cat", b"dog", b"cat", b"dog"], "b'labels' must be integers in 0..9 (got |S3 values"),
    ([0.0, float("nan"), 1.0, 2.0], "b'labels' must be integers in 0..9 (got float64 values"),
    ([0.5, 1.5, 2.5, 3.5], "b'labels' must be integers in 0..9 (got float64 values"),
    ([0, 1, 2, 10], "b'labels' must hold 4 labels in 0..9"),
])
def test_cifar_labels_that_are_not_classes_are_named(tmp_path: Path, labels: list,
                                                     says: str) -> None:
    """Strings and NaN were a ValueError traceback; 0.5 was silently class 0."""
    from agc_pipeline.data import cifar10

    folder = _cifar_folder(tmp_path, labels)
    with pytest.raises(ConfigError, match=rf"^{folder / 'data_batch_1'}: ") as info:
        cifar10(root=str(tmp_path))
    assert says in str(info.value)


def test_a_sound_fake_cifar_folder_is_read(tmp_path: Path) -> None:
    from agc_pipeline.data import cifar10

    _cifar_folder(tmp_path, [3, 2, 1, 0])
    assert cifar10(root=str(tmp_path)).y_train.shape == (20,)


@pytest.mark.parametrize("bounds, says", [
    ("[bogus]", "analysis.plot_bounds: 'bogus' is not a bound of scheme random_diagonal "
                "(allowed: eq10, lemma1_mean, lemma1_max)"),
    ("[eq10,lemma1]", "analysis.plot_bounds: 'lemma1' is not a bound"),
    ("eq10", "analysis.plot_bounds must be a list of bound names or null (got 'eq10')"),
])
def test_unknown_plot_bounds_are_refused_before_the_study(tmp_path: Path, bounds: str,
                                                          says: str) -> None:
    """An unknown bound name drew nothing, silently, after the whole study had run."""
    from agc_pipeline.analyze import run_analysis
    from tests.conftest import compose_config

    cfg = compose_config("analyze", ["experiment=fig3", "debug=fast", "analysis.progress=false",
                                     f"analysis.plot_bounds={bounds}"])
    with pytest.raises(ConfigError) as info:
        run_analysis(cfg, tmp_path)
    assert str(info.value) == says or str(info.value).startswith(says)
    assert not list(tmp_path.iterdir())


def test_the_presets_plot_bounds_are_allowed(tmp_path: Path) -> None:
    from agc_pipeline.analyze import bound_names, build_study
    from tests.conftest import compose_config

    cfg = compose_config("analyze", ["experiment=fig4", "debug=fast"])
    assert set(cfg.analysis.plot_bounds) <= set(bound_names(build_study(cfg)))
