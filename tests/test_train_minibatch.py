"""Minibatches (trainer.batch_size), the two coded-gradient paths and the PS's optimizer
state in the simulated trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer
from agc_pipeline.training.batches import batch_indices, take
from agc_pipeline.training.loop import advance
from tests.conftest import compose_config

FAST = ["dataset=synthetic_logistic", "dataset.n_samples=420", "dataset.dim=6",
        "dataset.num_classes=3", "model=mlp", "model.hidden=8", "trainer.iterations=6",
        "trainer.progress=false", "trainer.alpha_samples=0", "trainer.eval_every=0",
        "trainer.checkpoint_every=0", "trainer.lr=0.5"]


def _trainer(*overrides: str):  # noqa: ANN202
    return build_trainer(compose_config("train", [*FAST, *overrides]))


def test_each_epoch_visits_every_sample_of_every_subset_once() -> None:
    size, b = 10, 3  # 3 batches per epoch, 1 sample dropped
    for epoch in range(3):
        seen = torch.cat([batch_indices(7, epoch * 3 + p, [0, 1, 4], size, b)
                          for p in range(3)], dim=1)
        for row in seen:
            assert len(set(row.tolist())) == 9 and row.max() < size
    first = batch_indices(7, 0, [0, 1], size, b)
    assert not torch.equal(first[0], first[1])  # subsets are shuffled independently
    assert torch.equal(first[1], batch_indices(7, 0, [1], size, b)[0])  # a worker's view
    assert not torch.equal(batch_indices(7, 0, [0], size, b), batch_indices(7, 3, [0], size, b))
    assert batch_indices(7, 0, [0], size, None) is None


@pytest.mark.parametrize("extra", [[], ["trainer.batch_size=4"], ["m=1"],
                                   ["straggler=none", "m=3"]])
def test_weighted_and_per_subset_give_the_same_decoded_gradient(extra: list[str]) -> None:
    fast = _trainer(*extra)
    ref = _trainer(*extra, "trainer.coded_gradient=per_subset")
    for _ in range(3):
        a, b = advance(fast), advance(ref)
        assert a["survivors"] == b["survivors"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["grad_error"] == pytest.approx(b["grad_error"], rel=1e-4, abs=1e-9)
        for p, q in zip(fast.model.parameters(), ref.model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 10), (3, 10, 4), (2, 7, 1, 5, 5)])
def test_take_picks_each_subsets_rows(shape: tuple[int, ...]) -> None:
    """``take`` (one index_select on the flattened subsets) equals advanced indexing
    ``x[rows, index]``, for labels, features and images, and for a non-contiguous ``x``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    index = torch.stack([torch.randperm(shape[1], generator=g)[:4] for _ in range(shape[0])])
    rows = torch.arange(shape[0])[:, None]
    assert torch.equal(take(x, index), x[rows, index])
    labels = torch.randint(0, 9, shape[:2], generator=g)
    assert torch.equal(take(labels, index), labels[rows, index])
    strided = torch.randn(shape[1], shape[0], *shape[2:], generator=g).transpose(0, 1)
    assert torch.equal(take(strided, index), strided[rows, index])
    assert take(x, None) is x


def test_minibatch_rows_and_samples() -> None:
    trainer = _trainer("trainer.batch_size=5")
    assert trainer.workload.subset_size == 48 and trainer.workload.batch_samples == 35
    losses = [advance(trainer)["train_loss"] for _ in range(4)]
    assert len(set(losses)) == 4  # a different minibatch every iteration
    with pytest.raises(ConfigError, match="trainer.batch_size=49 exceeds the 48 samples"):
        _trainer("trainer.batch_size=49")
    with pytest.raises(ConfigError, match="trainer.batch_size must be a positive integer"):
        _trainer("trainer.batch_size=0")
    with pytest.raises(ConfigError, match="trainer.coded_gradient must be weighted or"):
        _trainer("trainer.coded_gradient=fast")
    with pytest.raises(ConfigError, match="trainer.clip_grad_norm must be a finite number"):
        _trainer("trainer.clip_grad_norm=-1")


def test_grad_error_off_logs_none_and_trains_the_same() -> None:
    on, off = _trainer(), _trainer("trainer.grad_error=false")
    for _ in range(3):
        a, b = advance(on), advance(off)
        assert b["grad_error"] is None and a["grad_error"] is not None
    for p, q in zip(on.model.parameters(), off.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_minibatch_resume_is_bit_identical_with_momentum() -> None:
    extra = ("trainer.batch_size=4", "optimizer.momentum=0.9")
    whole = _trainer(*extra)
    for _ in range(6):
        advance(whole)
    first = _trainer(*extra)
    for _ in range(3):
        advance(first)
    second = _trainer(*extra)
    second.load_state_dict(first.state_dict())
    for _ in range(3):
        advance(second)
    for p, q in zip(whole.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert np.isfinite(second.workload.train_loss())


def test_adamw_with_cosine_warmup_resumes_bit_identically() -> None:
    extra = ("trainer.batch_size=4", "optimizer=adamw", "trainer.lr=0.01",
             "scheduler=cosine", "scheduler.warmup=2")
    whole = _trainer(*extra)
    lrs = []
    for _ in range(6):
        lrs.append(whole.state.optimizer.lr)
        advance(whole)
    assert lrs[0] == pytest.approx(0.005) and lrs[1] == pytest.approx(0.01)
    assert lrs[5] < lrs[2]
    assert type(whole.state.optimizer.optimizer).__name__ == "AdamW"
    first = _trainer(*extra)
    for _ in range(3):
        advance(first)
    second = _trainer(*extra)
    second.load_state_dict(first.state_dict())
    for _ in range(3):
        advance(second)
    for p, q in zip(whole.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(("override", "message"), [
    ("optimizer.lr=-1", "optimizer.lr must be > 0.0"),
    ("optimizer.lr=inf", "optimizer.lr must be a finite number"),
    ("optimizer.momentum=-0.5", "optimizer: Invalid momentum value"),
    ("+optimizer.bogus=1", "optimizer: .*bogus"),
    ("scheduler=step", "scheduler: .*step_size|scheduler.step_size"),
    ("scheduler.warmup=-1", "scheduler.warmup must be a non-negative integer"),
    # issue 20: a shortened preset's warm-up; the message says what to pass
    ("scheduler=cosine scheduler.warmup=30", "scheduler.warmup=30 must be shorter than "
     r"trainer.iterations=\d+ .*pass|needs scheduler.warmup=<n>"),
])
def test_bad_optimizer_and_scheduler_settings_fail_in_one_line(override: str,
                                                               message: str) -> None:
    extra = ["scheduler=step", "scheduler.step_size=null"] if override == "scheduler=step" \
        else override.split()
    with pytest.raises(ConfigError, match=message):
        _trainer(*extra)


@pytest.mark.parametrize("model", [
    ["dataset=mnist", "dataset.train_size=140", "dataset.test_size=10", "model=cnn",
     "model.width=4", "model.depth=2"],
    ["dataset=text", "dataset.context=8", "dataset.train_size=140", "dataset.test_size=10",
     "model=gpt", "model.layers=1", "model.width=16", "model.heads=2"],
], ids=["cnn", "gpt"])
def test_weighted_equals_per_subset_on_the_cnn_and_the_gpt(model: list[str]) -> None:
    """The one-pass coded gradient and the k partial gradients give the same ĝ (to 1e-5
    relative) on the residual CNN and the transformer, with minibatches and stragglers."""
    base = [o for o in FAST if not o.startswith(("dataset", "model"))]
    extra = [*base, *model, "trainer.batch_size=4", "straggler.q=0.3", "optimizer=adamw",
             "trainer.lr=0.001"]
    fast = build_trainer(compose_config("train", extra))
    ref = build_trainer(compose_config("train", [*extra, "trainer.coded_gradient=per_subset"]))
    for _ in range(2):
        t = fast.state.iteration
        x, y = fast.workload.minibatch(t)
        b = fast.coded_part.code.encoding(t)
        mask = fast.coded_part.draw(b, t).survivors
        dec = fast.coded_part.code.decode(b, mask)
        weights = fast.coded_part.code.weights(b, dec.r)
        g_fast, _, _ = fast.coded_part.gradient(x, y, b, weights, mask, dec)
        g_ref, _, _ = ref.coded_part.gradient(x, y, b, weights, mask, dec)
        rel = float((g_fast.double() - g_ref.double()).norm() / g_ref.double().norm())
        assert rel < 1e-5
        a, c = advance(fast), advance(ref)
        assert a["survivors"] == c["survivors"]
        assert a["train_loss"] == pytest.approx(c["train_loss"], rel=1e-5)


def test_summary_has_no_grad_error_when_it_is_not_computed(tmp_path) -> None:  # noqa: ANN001
    from agc_pipeline.train import run_training

    summary = run_training(compose_config("train", [*FAST, "trainer.grad_error=false"]),
                           tmp_path)
    assert summary["mean_grad_error"] is None
