"""The residual CNN and the GPT: shapes, parameter counts, seeded init, the per-sample
contract of the coded-gradient engine, per-subset gradients under vmap, and learning."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parameters_to_vector

from agc_pipeline.data import mnist, text
from agc_pipeline.errors import ConfigError
from agc_pipeline.models import CNN, GPT, CodedModel, gpt_parameter_count, subset_gradients
from agc_pipeline.training.gradients import partial_gradients

VOCAB = 42  # characters of the default text corpus


def small_cnn(seed: int = 0) -> CNN:
    return CNN(in_channels=1, num_classes=10, image_size=28, width=8, depth=2, seed=seed)


def small_gpt(seed: int = 0) -> GPT:
    return GPT(vocab_size=VOCAB, context=16, layers=2, width=32, heads=4, seed=seed)


def cnn_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def gpt_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, VOCAB, (n, 16), generator=gen)
    return x, torch.randint(0, VOCAB, (n, 16), generator=gen)


CASES: dict[str, tuple[Callable[[], CodedModel], Callable]] = {
    "cnn": (small_cnn, cnn_batch),
    "gpt": (small_gpt, gpt_batch),
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------
# CNN


@pytest.mark.parametrize("channels, size, width, depth, d", [
    (1, 28, 16, 3, 77_562),   # default on MNIST / Fashion-MNIST
    (3, 32, 16, 3, 77_850),   # default on CIFAR-10
    (1, 28, 16, 2, 19_642),
    (3, 32, 32, 3, 308_266),
    (3, 32, 64, 4, 4_901_450),
])
def test_cnn_parameter_counts_and_shapes(channels: int, size: int, width: int, depth: int,
                                         d: int) -> None:
    model = CNN(in_channels=channels, num_classes=10, image_size=size, width=width,
                depth=depth, seed=0)
    assert count(model) == d
    assert model(torch.rand(3, channels, size, size)).shape == (3, 10)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 1 + 2 * depth


def test_cnn_rejects_wrong_images_and_bad_keys() -> None:
    model = small_cnn()
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 1, 28, 28\)"):
        model(torch.rand(2, 3, 32, 32))
    for kwargs, match in [(dict(width=0), "model.width"), (dict(depth=1.5), "model.depth"),
                          (dict(in_channels=None), "model.in_channels must be set"),
                          (dict(image_size=4), "model.image_size")]:
        with pytest.raises(ConfigError, match=match):
            CNN(**{"in_channels": 1, "num_classes": 10, "image_size": 28, **kwargs})


# ------------------------------------------------------------------------------------------
# GPT

#: the configurations documented in conf/model/gpt.yaml (V = 42, the default corpus)
GPT_CONFIGS = [
    (2, 64, 4, 64, 109_568),
    (4, 128, 4, 64, 812_288),
    (6, 256, 8, 128, 4_793_344),
    (8, 384, 8, 128, 14_277_888),
]


@pytest.mark.parametrize("layers, width, heads, context, d", GPT_CONFIGS)
def test_gpt_parameter_counts_of_documented_configs(layers: int, width: int, heads: int,
                                                    context: int, d: int) -> None:
    assert gpt_parameter_count(VOCAB, context, layers, width) == d
    model = GPT(vocab_size=VOCAB, context=context, layers=layers, width=width, heads=heads)
    assert count(model) == d
    tied = GPT(vocab_size=VOCAB, context=context, layers=layers, width=width, heads=heads,
               tie_weights=True)
    assert count(tied) == d - VOCAB * width == gpt_parameter_count(VOCAB, context, layers,
                                                                   width, tie_weights=True)


def test_gpt_is_causal_and_shapes() -> None:
    model = small_gpt()
    gen = torch.Generator().manual_seed(1)
    x, _ = gpt_batch(2, gen)
    out = model(x)
    assert out.shape == (2, 16, VOCAB)
    changed = x.clone()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    other = model(changed)
    torch.testing.assert_close(other[:, :9], out[:, :9], rtol=0, atol=1e-6)  # the past only
    assert not torch.allclose(other[:, 9:], out[:, 9:])
    assert model(x[:, :5]).shape == (2, 5, VOCAB)  # shorter sequences use the first positions
    with pytest.raises(ValueError, match="exceed model.context = 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_gpt_loss_is_summed_per_sequence_mean_token_cross_entropy() -> None:
    model = small_gpt()
    gen = torch.Generator().manual_seed(2)
    x, y = gpt_batch(5, gen)
    out = model(x)
    per_sequence = torch.stack([F.cross_entropy(out[i], y[i]) for i in range(5)])
    torch.testing.assert_close(model.loss_sum(out, y), per_sequence.sum())
    # near-uniform logits at init: ≈ log V per token
    assert abs(float(model.loss_sum(out, y).detach()) / 5 - math.log(VOCAB)) < 0.05
    hits = (out.argmax(-1) == y).float().mean()
    assert model.metric(out, y) == pytest.approx(float(hits))


def test_gpt_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.width must be a multiple of model.heads"):
        GPT(vocab_size=10, context=8, width=30, heads=4)
    with pytest.raises(ConfigError, match="model.context must be set"):
        GPT(vocab_size=10, context=None)
    with pytest.raises(ConfigError, match="model.tie_weights must be true or false"):
        GPT(vocab_size=10, context=8, tie_weights="yes")


# ------------------------------------------------------------------------------------------
# Both: seeded init, the engine's contract, vmap gradients, learning


@pytest.mark.parametrize("name", CASES)
def test_seeded_init_leaves_global_rng_alone(name: str) -> None:
    factory, _ = CASES[name]
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = parameters_to_vector(factory().parameters())
    assert torch.equal(torch.rand(3), before)  # the global RNG did not move
    assert torch.equal(parameters_to_vector(factory().parameters()), a)
    other = CNN(1, 10, 28, width=8, depth=2, seed=1) if name == "cnn" else small_gpt(seed=1)
    assert not torch.equal(parameters_to_vector(other.parameters()), a)


@pytest.mark.parametrize("name", CASES)
def test_modules_with_parameters_map_samples_to_samples(name: str) -> None:
    """The coded-gradient engine's contract: every module that owns parameters returns
    (N, …) for a batch of N, and sample s's outputs depend on sample s's input only."""
    factory, batch = CASES[name]
    model = factory()
    gen = torch.Generator().manual_seed(3)
    x, _ = batch(5, gen)
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    assert len(owners) >= 8
    seen: dict[int, tuple[int, ...]] = {}
    handles = [m.register_forward_hook(
        lambda mod, inp, out, key=i: seen.__setitem__(key, tuple(out.shape)))
        for i, m in enumerate(owners)]
    out = model(x)
    for handle in handles:
        handle.remove()
    assert len(seen) == len(owners)
    assert all(shape[0] == 5 for shape in seen.values()), seen
    # every parameter is owned by a hooked module (none used outside its owner's forward)
    owned = {id(p) for m in owners for p in m.parameters(recurse=False)}
    assert owned == {id(p) for p in model.parameters()}
    # sample independence: changing samples 1..4 leaves sample 0's outputs as they were
    x2, _ = batch(5, torch.Generator().manual_seed(4))
    x2[0] = x[0]
    torch.testing.assert_close(model(x2)[0], out[0], rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap loops over SDPA
@pytest.mark.parametrize("name", CASES)
def test_vmap_partial_gradients_match_per_subset_autograd(name: str) -> None:
    """``partial_gradients`` (vmap over functional_call with expanded parameters) and
    ``subset_gradients`` (vmap(grad)) agree with one autograd pass per data subset."""
    factory, batch = CASES[name]
    model = factory()
    k, b = 3, 4
    gen = torch.Generator().manual_seed(5)
    x, y = batch(k * b, gen)
    x, y = x.reshape(k, b, *x.shape[1:]), y.reshape(k, b, *y.shape[1:])
    grads, loss = partial_gradients(model, x, y)
    flat = subset_gradients(model, x, y)
    total = 0.0
    for i in range(k):
        model.zero_grad()
        sub_loss = model.loss_sum(model(x[i]), y[i])
        sub_loss.backward()
        total += float(sub_loss.detach())
        reference = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        ours = torch.cat([grads[n][i].reshape(-1) for n, _ in model.named_parameters()])
        assert float((ours - reference).norm() / reference.norm()) < 1e-5
        assert float((flat[i] - reference).norm() / reference.norm()) < 1e-5
    assert float(loss) == pytest.approx(total, rel=1e-5)


def sgd_losses(model: CodedModel, x: torch.Tensor, y: torch.Tensor, lr: float,
               steps: int = 30) -> list[float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model.loss_sum(model(x), y) / len(x)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_cnn_loss_falls_with_plain_sgd() -> None:
    data = mnist(train_size=64, test_size=0, seed=0)
    losses = sgd_losses(small_cnn(), data.x_train, data.y_train, lr=0.5)
    assert losses[0] == pytest.approx(math.log(10), abs=0.3)
    assert losses[-1] < 0.9 * losses[0]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.15  # a trend, not one lucky step


def test_gpt_loss_falls_with_plain_sgd() -> None:
    data = text(context=16, train_size=64, test_size=0, seed=0)
    model = GPT(vocab_size=data.vocab_size, context=16, layers=2, width=32, heads=4)
    losses = sgd_losses(model, data.x_train, data.y_train, lr=0.3)
    assert losses[0] == pytest.approx(math.log(data.vocab_size), abs=0.1)
    assert losses[-1] < losses[0] - 0.5  # below log V: the character frequencies are learnt
