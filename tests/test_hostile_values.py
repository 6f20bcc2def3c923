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
