"""Bring-your-own models (WithLoss, the YAML example) and build_model's filling and checking
of model keys from the data set."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn
from torch.nn import functional as F

from agc_pipeline.build import build_dataset, build_model
from agc_pipeline.data import mnist
from agc_pipeline.errors import ConfigError
from agc_pipeline.models import CNN, GPT, PaperMLP, WithLoss
from tests.conftest import compose_config
from tests.data_fixtures import fake_cifar10


def build(overrides: list[str]) -> nn.Module:
    cfg = compose_config("train", overrides)
    return build_model(cfg, build_dataset(cfg))


# ------------------------------------------------------------------------------------------
# WithLoss


def test_with_loss_values() -> None:
    gen = torch.Generator().manual_seed(0)
    out, labels = torch.randn(6, 4, generator=gen), torch.randint(0, 4, (6,), generator=gen)
    ce = WithLoss(nn.Identity(), "cross_entropy")
    torch.testing.assert_close(ce.loss_sum(out, labels),
                               F.cross_entropy(out, labels, reduction="sum"))
    assert ce.task == "classification"
    assert ce.metric(out, labels) == float((out.argmax(1) == labels).float().mean())
    # sequences: Σ over samples of the per-sample mean over positions
    seq_out, seq_y = torch.randn(3, 5, 4, generator=gen), torch.randint(0, 4, (3, 5))
    expected = sum(F.cross_entropy(seq_out[i], seq_y[i]) for i in range(3))
    torch.testing.assert_close(ce.loss_sum(seq_out, seq_y), expected)
    bce = WithLoss(nn.Identity(), "bce")
    one_hot = F.one_hot(labels, 4).float()
    torch.testing.assert_close(
        bce.loss_sum(out, labels),
        F.binary_cross_entropy_with_logits(out, one_hot, reduction="none").mean(1).sum())
    assert bce.metric(out, one_hot) == float(((out > 0).float() == one_hot).float().mean())
    mse = WithLoss(nn.Identity(), "mse")
    target = torch.randn(6, generator=gen)
    assert mse.task == "regression"
    torch.testing.assert_close(mse.loss_sum(out[:, 0], target),
                               ((out[:, 0] - target) ** 2).sum())
    assert math.isclose(mse.metric(out[:, 0], target), float(((out[:, 0] - target) ** 2).mean()),
                        rel_tol=1e-6)


def test_with_loss_seeded_reinit_leaves_global_rng_alone() -> None:
    def module() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))

    def flat(model: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.manual_seed(1)
    a = flat(WithLoss(module(), seed=7))
    torch.manual_seed(2)  # another global state: the re-draw from the seed does not see it
    assert torch.equal(flat(WithLoss(module(), seed=7)), a)
    assert not torch.equal(flat(WithLoss(module(), seed=8)), a)
    plain = module()
    state = torch.random.get_rng_state()
    WithLoss(plain, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # ... nor moves it


def test_with_loss_errors() -> None:
    with pytest.raises(ConfigError, match="model.loss must be one of cross_entropy | bce | mse"):
        WithLoss(nn.Identity(), "hinge")
    with pytest.raises(ConfigError, match="model.module must be a torch.nn.Module"):
        WithLoss("not a module")  # type: ignore[arg-type]


def test_custom_example_yaml_trains_on_mnist() -> None:
    cfg = compose_config("train", ["model=custom_example", "dataset=mnist",
                                   "dataset.train_size=256", "dataset.test_size=10"])
    data = build_dataset(cfg)
    torch.manual_seed(0)
    before = torch.rand(2)
    torch.manual_seed(0)
    model = build_model(cfg, data)
    assert torch.equal(torch.rand(2), before)  # building left the global RNG where it was
    again = build_model(cfg, data)
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)  # seeded: the same init every time
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = model.loss_sum(model(data.x_train), data.y_train) / len(data.y_train)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_a_module_without_the_contract_is_refused_in_one_line() -> None:
    cfg = compose_config("train", ["model=custom_example", "dataset=mnist",
                                   "dataset.train_size=20", "dataset.test_size=0"])
    cfg.model = OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": 784,
                                  "out_features": 10})
    with pytest.raises(ConfigError, match=r"model Linear has no loss_sum / metric.*WithLoss"):
        build_model(cfg, build_dataset(cfg))


# ------------------------------------------------------------------------------------------
# build_model: keys filled from the data set, set keys checked


def test_build_model_fills_image_and_text_keys(tmp_path: Path) -> None:
    cnn = build(["model=cnn", "dataset=mnist", "dataset.train_size=20", "dataset.test_size=0"])
    assert isinstance(cnn, CNN) and (cnn.in_channels, cnn.image_size) == (1, 28)
    assert cnn(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    root = fake_cifar10(tmp_path)
    cifar = build(["model=cnn", "dataset=cifar10", f"dataset.root={root}"])
    assert isinstance(cifar, CNN) and (cifar.in_channels, cifar.image_size) == (3, 32)
    gpt = build(["model=gpt", "dataset=text", "dataset.context=32"])
    assert isinstance(gpt, GPT) and gpt.context == 32 and gpt.vocab_size == 42
    paper = build(["model=paper_mlp", "dataset=mnist", "dataset.train_size=20"])
    assert isinstance(paper, PaperMLP) and paper.hidden.in_features == 784
    # the paper's MLP flattens (N, 1, 28, 28) itself: the same outputs as on flat pixels
    images = mnist(train_size=5, test_size=0).x_train
    torch.testing.assert_close(paper(images), paper(images.reshape(5, 784)), rtol=0, atol=0)


@pytest.mark.parametrize("overrides, match", [
    (["model=cnn", "dataset=mnist", "model.in_channels=3"],
     r"model.in_channels=3 does not match dataset mnist10k \(in_channels = 1\)"),
    (["model=gpt", "dataset=text", "model.context=128"],
     r"model.context=128 does not match dataset text \(context = 64\)"),
    (["model=cnn", "dataset=synthetic_logistic"],
     r"model CNN takes image inputs but dataset synthetic_logistic holds features of shape "
     r"\(20,\)"),
    (["model=gpt", "dataset=mnist"], "model GPT takes tokens inputs but dataset mnist10k"),
    (["model=paper_mlp", "dataset=text"], "model PaperMLP takes features or image inputs"),
    (["model=custom_example", "dataset=synthetic_linear"],
     "model WithLoss is a classification model but dataset synthetic_linear is a regression"),
])
def test_build_model_mismatches_are_one_line(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        build(overrides)
    assert "\n" not in str(info.value)


def test_build_model_key_the_data_set_cannot_fill() -> None:
    cfg = compose_config("train", ["model=custom_example", "dataset=synthetic_logistic"])
    with open_dict(cfg.model):
        cfg.model.context = None  # a key only token data sets can fill
    with pytest.raises(ConfigError, match=r"model.context is null and dataset "
                                          r"synthetic_logistic \(features of shape \(20,\)\)"):
        build_model(cfg, build_dataset(cfg))
    cfg.model.context = 8
    with pytest.raises(ConfigError, match="model.context=8 but dataset synthetic_logistic"):
        build_model(cfg, build_dataset(cfg))
