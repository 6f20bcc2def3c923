"""The PS's optimizer wrapper (torch.optim + schedule + clipping, never a NaN step)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from agc_pipeline.errors import ConfigError
from agc_pipeline.training import schedules
from agc_pipeline.training.optim import Optimizer


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, 2, generator=gen)) for _ in range(2)]


def test_sgd_is_torch_sgd_on_the_flat_gradient() -> None:
    ours, ref = _params(), _params()
    opt = Optimizer(ours, functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9,
                                            weight_decay=0.01))
    torch_sgd = torch.optim.SGD(ref, lr=0.1, momentum=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        flat = torch.randn(12, generator=gen, dtype=torch.float64)
        assert opt.step(flat)
        for p, g in zip(ref, flat.view(2, 3, 2), strict=True):
            p.grad = g.float()
        torch_sgd.step()
        for a, b in zip(ours, ref, strict=True):
            assert torch.equal(a, b)  # bit-identical: the trainer's goldens rely on it
    assert all(p.grad is None for p in ours)


@pytest.mark.parametrize("make", [
    functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
    functools.partial(torch.optim.AdamW, lr=0.1),
])
def test_an_overflowing_step_changes_nothing(make: functools.partial) -> None:
    params = _params()
    opt = Optimizer(params, make)
    assert opt.step(torch.ones(12))
    before = [p.detach().clone() for p in params]
    state = {k: v.clone() if torch.is_tensor(v) else v
             for k, v in opt.optimizer.state[params[0]].items()}
    assert not opt.step(torch.full((12,), 1e300, dtype=torch.float64))  # float32 overflow
    assert all(torch.equal(a, b) for a, b in zip(params, before, strict=True))
    for key, value in opt.optimizer.state[params[0]].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(state[key]))


@pytest.mark.parametrize("make", [
    functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
    functools.partial(torch.optim.AdamW, lr=0.1),
])
def test_after_an_undone_step_training_continues_as_if_it_never_happened(
        make: functools.partial) -> None:
    """The step buffers are reused: an overflowing first step leaves no state, and the
    steps after an undone one are bit-identical to a run that never saw it."""
    ours, ref = _params(), _params()
    opt, clean = Optimizer(ours, make), Optimizer(ref, make)
    assert not opt.step(torch.full((12,), 1e300, dtype=torch.float64))
    assert not opt.optimizer.state
    grads = [torch.linspace(-1, 1, 12) * (i + 1) for i in range(4)]
    for i, g in enumerate(grads):
        assert opt.step(g) and clean.step(g)
        if i == 1:
            assert not opt.step(torch.full((12,), 1e300, dtype=torch.float64))
    assert all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))


def test_clipping_bounds_the_global_norm() -> None:
    params = _params()
    before = torch.cat([p.detach().reshape(-1) for p in params])
    opt = Optimizer(params, functools.partial(torch.optim.SGD, lr=1.0), clip_grad_norm=0.5)
    flat = torch.arange(12, dtype=torch.float32)
    assert opt.step(flat)
    assert torch.equal(flat, torch.arange(12, dtype=torch.float32))  # the input is not clipped
    after = torch.cat([p.detach().reshape(-1) for p in params])
    assert math.isclose(float((before - after).norm()), 0.5, rel_tol=1e-5)
    assert math.isclose(opt.last_grad_norm, float(flat.norm()), rel_tol=1e-6)


def test_cosine_schedule_with_warmup_and_resume() -> None:
    def build() -> Optimizer:
        return Optimizer(_params(), functools.partial(torch.optim.SGD, lr=1.0),
                         functools.partial(schedules.cosine, iterations=10, warmup=2,
                                           min_ratio=0.1))
    opt = build()
    lrs = []
    for _ in range(10):
        lrs.append(opt.lr)
        opt.step(torch.zeros(12))
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.2
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))  # decays after warm-up
    # resume: a fresh optimizer loading the state continues the same schedule
    half = build()
    for _ in range(4):
        half.step(torch.zeros(12))
    resumed = build()
    resumed.load_state_dict(half.state_dict())
    assert resumed.lr == pytest.approx(lrs[4])


def test_step_schedule_and_bad_parameters() -> None:
    opt = Optimizer(_params(), functools.partial(torch.optim.SGD, lr=1.0),
                    functools.partial(schedules.step, iterations=10, step_size=3, gamma=0.5))
    lrs = []
    for _ in range(7):
        lrs.append(opt.lr)
        opt.step(torch.zeros(12))
    assert lrs == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25])
    sgd = torch.optim.SGD(_params(), lr=1.0)
    with pytest.raises(ConfigError, match="scheduler.step_size must be a positive integer"):
        schedules.step(sgd, iterations=10, step_size=0)
    with pytest.raises(ConfigError, match="scheduler.warmup"):
        schedules.cosine(sgd, iterations=10, warmup=10)
