"""Shared fixtures: Hydra config composition and small assignments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from agc_pipeline.conf_path import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]


def compose_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, as the app would."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
