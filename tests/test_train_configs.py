"""Every option file of the train app's groups composes and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest

from agc_pipeline.build import (
    build_dataset,
    build_model,
    build_straggler,
    build_trainer_settings,
)
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.data import Dataset
from agc_pipeline.models import CodedModel
from agc_pipeline.stragglers import StragglerModel
from agc_pipeline.train import build_trainer
from agc_pipeline.training.simulated import SimulatedSettings
from tests.conftest import compose_config
from tests.data_fixtures import fake_cifar10, fake_mnist

SMALL = ["dataset.n_samples=140", "trainer.alpha_samples=0", "trainer.progress=false"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


#: data sets read from files under dataset.root: a small fixture in the real format
FILE_DATASETS = {"fashion_mnist": fake_mnist, "cifar10": fake_cifar10}


@pytest.mark.parametrize("option", options("dataset"))
def test_dataset_options(option: str, tmp_path: Path) -> None:
    overrides = ["dataset.train_size=50", "dataset.test_size=10"] if option == "mnist" else []
    if option in FILE_DATASETS:
        overrides.append(f"dataset.root={FILE_DATASETS[option](tmp_path)}")
    data = build_dataset(compose_config("train", [f"dataset={option}", *overrides]))
    assert isinstance(data, Dataset) and len(data.y_train) > 0


#: a data set each model can train on
MODEL_DATA = {"linear": "synthetic_linear", "logistic": "synthetic_logistic",
              "mlp": "synthetic_logistic", "paper_mlp": "synthetic_logistic", "cnn": "mnist",
              "gpt": "text", "custom_example": "mnist"}


@pytest.mark.parametrize("option", options("model"))
def test_model_options(option: str) -> None:
    assert option in MODEL_DATA, f"add {option} to MODEL_DATA"
    cfg = compose_config("train", [f"model={option}", f"dataset={MODEL_DATA[option]}"])
    data = build_dataset(cfg)
    model = build_model(cfg, data)
    assert isinstance(model, CodedModel) and model.task == data.task
    model(data.x_train[:3])


@pytest.mark.parametrize("option", options("straggler"))
def test_straggler_options(option: str) -> None:
    straggler = build_straggler(compose_config("train", [f"straggler={option}"]))
    assert isinstance(straggler, StragglerModel) and straggler.name == option


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(option: str) -> None:
    settings = build_trainer_settings(compose_config("train", [f"trainer={option}"]))
    assert isinstance(settings, SimulatedSettings)


@pytest.mark.parametrize("option", options("code"))
def test_code_options_build_a_trainer(option: str) -> None:
    cfg = compose_config("train", [f"code={option}", "dataset=synthetic_logistic",
                                   "model=logistic", *SMALL])
    trainer = build_trainer(cfg)
    assert trainer.scheme.assignment.n >= 7


def test_compare_codes_uses_twelve_workers() -> None:
    for option in options("code"):
        if option in ("random_diagonal", "stack"):
            continue  # these keep the experiment's assignment
        cfg = compose_config("train", ["experiment=compare_codes", f"code={option}",
                                       "dataset.train_size=120", "dataset.test_size=10",
                                       "trainer.alpha_samples=0"])
        assert build_trainer(cfg).n == 12, option


@pytest.mark.parametrize("preset", ["fig6_bibd7", "fig6_coset27"])
def test_fig6_presets(preset: str) -> None:
    cfg = compose_config("train", [f"experiment={preset}", "trainer.alpha_samples=0"])
    trainer = build_trainer(cfg)
    assert trainer.m == 2 and cfg.trainer.iterations == 300 and cfg.straggler.q == 0.25
    assert trainer.scheme.name == "random_diagonal"
    assert (trainer.n, trainer.k) == ((7, 7) if preset == "fig6_bibd7" else (54, 27))
    if preset == "fig6_coset27":
        assert trainer.scheme.epsilon == 0.1
    stack = build_trainer(compose_config("train", [f"experiment={preset}", "code=stack",
                                                   "trainer.alpha_samples=0"]))
    assert stack.scheme.name == "stack" and stack.n == trainer.n
