"""Models: per-subset gradients via vmap, summed losses, deterministic init, config errors."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn import functional as F
from torch.nn.utils import parameters_to_vector

from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.data import split_subsets, synthetic_logistic
from agc_pipeline.errors import ConfigError
from agc_pipeline.models import (
    MLP,
    CodedModel,
    LinearRegression,
    LogisticRegression,
    PaperMLP,
    subset_gradients,
)

CONF = CONFIG_DIR
D, K, B = 12, 5, 8  # features, data subsets, samples per subset


def make_case(name: str) -> tuple[CodedModel, torch.Tensor, torch.Tensor]:
    """A small model and data of shape (K, B, D) / (K, B)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(K, B, D, generator=gen)
    labels = torch.randint(0, 3, (K, B), generator=gen)
    models: dict[str, Callable[[], CodedModel]] = {
        "paper_mlp": lambda: PaperMLP(input_dim=D, hidden=16, num_classes=3, seed=1),
        "mlp": lambda: MLP(input_dim=D, hidden=16, num_classes=3, seed=1),
        "logistic": lambda: LogisticRegression(input_dim=D, num_classes=3, seed=1),
        "linear": lambda: LinearRegression(input_dim=D, seed=1),
    }
    model = models[name]()
    y = torch.randn(K, B, generator=gen) if name == "linear" else labels
    return model, x, y


def autograd_flat(model: CodedModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    model.loss_sum(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("name", ["paper_mlp", "mlp", "logistic", "linear"])
def test_vmap_subset_gradients_match_autograd(name: str) -> None:
    model, x, y = make_case(name)
    grads = subset_gradients(model, x, y)
    d = sum(p.numel() for p in model.parameters())
    assert grads.shape == (K, d)
    for i in range(K):  # one autograd pass per data subset
        torch.testing.assert_close(grads[i], autograd_flat(model, x[i], y[i]),
                                   rtol=1e-5, atol=1e-6)
    # Section II: the partial gradients sum to the full-batch gradient
    full = autograd_flat(model, x.reshape(K * B, D), y.reshape(K * B))
    torch.testing.assert_close(grads.sum(0), full, rtol=1e-5, atol=1e-5)


def test_subset_gradients_on_mnist_scale() -> None:
    model = PaperMLP(seed=0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(7, 20, 784, generator=gen), torch.randint(0, 10, (7, 20), generator=gen)
    grads = subset_gradients(model, x, y)
    assert grads.shape == (7, 784 * 128 + 128 + 128 * 10 + 10)
    full = autograd_flat(model, x.reshape(140, 784), y.reshape(140))
    torch.testing.assert_close(grads.sum(0), full, rtol=1e-5, atol=1e-5 * float(full.abs().max()))
    # explicit params (the trainer passes its own) give the same result
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.testing.assert_close(subset_gradients(model, x, y, params), grads)


def test_loss_values() -> None:
    x, y = torch.randn(50, D), torch.randint(0, 3, (50,))
    paper = PaperMLP(input_dim=D, hidden=16, num_classes=3)
    out = paper(x)
    # BCE-with-logits equals BCE on the sigmoid outputs, summed over samples and units
    expected = F.binary_cross_entropy(torch.sigmoid(out), F.one_hot(y, 3).float(),
                                      reduction="sum")
    torch.testing.assert_close(paper.loss_sum(out, y), expected)
    # near-zero logits at init: ≈ C·log 2 per sample (BCE) and ≈ log C (softmax CE)
    zero = torch.zeros(50, 3)
    assert math.isclose(float(paper.loss_sum(zero, y)), 50 * 3 * math.log(2), rel_tol=1e-6)
    logistic = LogisticRegression(input_dim=D, num_classes=3)
    assert math.isclose(float(logistic.loss_sum(zero, y)), 50 * math.log(3), rel_tol=1e-6)
    linear = LinearRegression(input_dim=D)
    assert float(linear.loss_sum(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]))) == 2.5
    assert linear(x).shape == (50,)


def test_metrics() -> None:
    y = torch.tensor([0, 2, 1, 1])
    logits = F.one_hot(torch.tensor([0, 2, 1, 0]), 3).float()
    assert MLP(input_dim=2, num_classes=3).metric(logits, y) == 0.75
    assert PaperMLP(input_dim=2, num_classes=3).metric(logits, y) == 0.75
    linear = LinearRegression(input_dim=2)
    assert linear.task == "regression" and PaperMLP.task == "classification"
    assert linear.metric(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])) == 2.5


def test_deterministic_init_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = parameters_to_vector(PaperMLP(seed=4).parameters())
    assert torch.equal(torch.rand(3), before)  # global RNG state untouched
    assert torch.equal(parameters_to_vector(PaperMLP(seed=4).parameters()), a)
    assert not torch.equal(parameters_to_vector(PaperMLP(seed=5).parameters()), a)
    bound = 1 / math.sqrt(784)
    assert float(PaperMLP(seed=4).hidden.weight.detach().abs().max()) <= bound


@pytest.mark.parametrize("factory, match", [
    (lambda: PaperMLP(input_dim=None), "model.input_dim must be set"),
    (lambda: MLP(input_dim=10, num_classes=None), "model.num_classes must be set"),
    (lambda: LogisticRegression(input_dim=10, num_classes=1), "model.num_classes"),
    (lambda: LinearRegression(input_dim=0), "model.input_dim"),
    (lambda: MLP(input_dim=10, num_classes=2, hidden=0), "model.hidden"),
    (lambda: LinearRegression(input_dim=3, seed=-1), "model.seed"),
])
def test_constructor_errors(factory: Callable[[], CodedModel], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        factory()


def test_gradient_descent_with_subset_gradients_learns() -> None:
    ds = synthetic_logistic(n_samples=600, dim=10, seed=0)
    model = LogisticRegression(input_dim=10, num_classes=2, seed=0)
    idx = split_subsets(len(ds.y_train), 6, seed=0)
    x, y = ds.x_train[idx], ds.y_train[idx]
    n = idx.numel()
    theta = parameters_to_vector(model.parameters()).detach()
    with torch.no_grad():
        initial = float(model.loss_sum(model(ds.x_train), ds.y_train)) / len(ds.y_train)
    for _ in range(25):
        grad = subset_gradients(model, x, y).sum(0) / n
        theta = theta - 1.0 * grad
        torch.nn.utils.vector_to_parameters(theta, model.parameters())
    with torch.no_grad():
        final = float(model.loss_sum(model(ds.x_train), ds.y_train)) / len(ds.y_train)
        accuracy = model.metric(model(ds.x_test), ds.y_test)
    assert final < 0.6 * initial
    assert accuracy > 0.7  # labels are drawn from softmax(X W*): not separable


@pytest.mark.parametrize("option", ["paper_mlp", "mlp", "logistic", "linear"])
def test_model_option_files_instantiate(option: str) -> None:
    raw = OmegaConf.load(CONF / "model" / f"{option}.yaml")
    cfg = OmegaConf.create({"seed": 0, "model": raw})
    with pytest.raises(InstantiationException, match="must be set"):
        instantiate(cfg.model)  # dims left null: the app must fill them in
    cfg.model.input_dim = 784
    if "num_classes" in cfg.model:
        cfg.model.num_classes = 10
    model = instantiate(cfg.model)
    assert isinstance(model, CodedModel)


@pytest.mark.parametrize("name", ["paper_mlp", "mlp", "logistic", "linear"])
def test_flat_models_flatten_images_themselves(name: str) -> None:
    """Data sets keep their natural shape; the flat-feature models flatten (N, C, H, W)."""
    model, x, y = make_case(name)
    images = x.reshape(K, B, 3, 2, 2)  # D = 12 = 3·2·2
    torch.testing.assert_close(model(images[0]), model(x[0]), rtol=0, atol=0)
    torch.testing.assert_close(subset_gradients(model, images, y), subset_gradients(model, x, y),
                               rtol=0, atol=0)
