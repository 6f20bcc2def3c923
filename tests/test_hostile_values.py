"""A value of the wrong type is refused in one line naming the key (issue 20: a string where
a boolean is meant was taken as true, a string where a list is meant was split into letters)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agc_pipeline.build import build_dataset, build_decoder
from agc_pipeline.errors import ConfigError
from agc_pipeline.reporting.sinks import make_logger_sink
from tests.conftest import compose_config


@pytest.mark.parametrize("value", ["no", "maybe", 1, 0.0])
def test_decoder_rescale_must_be_a_boolean(value: object) -> None:
    cfg = compose_config("train", [f"decoder.rescale={value}"])
    with pytest.raises(ConfigError, match=r"^decoder.rescale must be true or false"):
        build_decoder(cfg)


@pytest.mark.parametrize("value", ["maybe", "yes", 1])
def test_dataset_download_must_be_a_boolean(value: object) -> None:
    cfg = compose_config("train", [f"dataset.download={value}", "dataset.train_size=100",
                                   "dataset.test_size=10"])
    with pytest.raises(ConfigError, match=r"^dataset.download must be true or false"):
        build_dataset(cfg)


@pytest.mark.parametrize("tags", ["notalist", "[1,2]"])
def test_wandb_tags_must_be_a_list_of_strings(tags: str, tmp_path: Path) -> None:
    cfg = compose_config("train", ["logger=wandb", "logger.mode=disabled",
                                   f"logger.tags={tags}"])
    with pytest.raises(ConfigError, match=r"^logger.tags must be a list of strings"):
        make_logger_sink(cfg.logger, tmp_path, {}, group="g", job_type="train", name="n")


@pytest.mark.parametrize("labels, says", [
    ([0, -3, 1, 2], "training labels must be in [0, 10) (found -3)"),
    ([0, 1, 10, 2], "training labels must be in [0, 10) (found 10)"),
    ([0.0, 1.0, float("nan"), 2.0], "training labels must be integers"),
])
def test_class_labels_out_of_range_are_refused(labels: list[float], says: str) -> None:
    """Issue 20: negative labels in an IDX file trained to a loss of 0.002 at 5 % accuracy."""
    import torch

    from agc_pipeline.data import Dataset

    x = torch.zeros(4, 3)
    y = torch.tensor(labels)
    with pytest.raises(ConfigError, match="^dataset toy: ") as info:
        Dataset(x, y, x[:1], torch.zeros(1, dtype=torch.int64), 10, "toy")
    assert says in str(info.value)


def test_train_and_test_samples_of_different_shapes_are_named() -> None:
    import torch

    from agc_pipeline.data import Dataset

    with pytest.raises(ConfigError, match=r"dataset toy: training samples have shape \(3,\) "
                                          r"but test samples \(4,\)"):
        Dataset(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), torch.zeros(1, 4),
                torch.zeros(1, dtype=torch.int64), 2, "toy")
