"""trainer=local_sgd_simulated: local SGD (n model copies in one process) against a
hand-written averaging loop, synchronous SGD at period 1, resume and one-line refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agc_pipeline.build import validate
from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training.checkpoint import load_checkpoint
from agc_pipeline.training.loop import advance
from tests.conftest import compose_config

FAST = ["dataset=synthetic_logistic", "dataset.n_samples=240", "dataset.dim=8",
        "dataset.num_classes=3", "model=mlp", "model.hidden=16", "trainer.iterations=7",
        "trainer.progress=false", "trainer.eval_every=0", "trainer.checkpoint_every=0",
        "trainer.lr=0.5", "code=uncoded_wait", "trainer.batch_size=4"]
LOCAL = ["trainer=local_sgd_simulated", *FAST]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_params(run_dir: Path) -> list[torch.Tensor]:
    return list(load_checkpoint(run_dir / "checkpoint.pt")["model"].values())


def hand_written(trainer, iterations: int, lr: float, momentum: float,  # noqa: ANN001
                 groups: list[int | None]) -> tuple[list[float], list[torch.nn.Module]]:
    """Plain torch.optim.SGD per worker and an explicit mean of the parameters of each
    group of ``groups[t]`` consecutive workers after step t (None: no averaging)."""
    n, work = trainer.n, trainer.workload
    models = [copy.deepcopy(trainer.model) for _ in range(n)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum) for m in models]
    losses = []
    for t in range(iterations):
        x, y = work.minibatch(t)
        total = 0.0
        for j, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
            optimizer.zero_grad()
            loss = model.loss_sum(model(x[j]), y[j])
            (loss * n / work.batch_samples).backward()
            optimizer.step()
            total += float(loss.detach())
        losses.append(total / work.batch_samples)
        g = groups[t]
        if g is not None:
            with torch.no_grad():
                for start in range(0, n, g):
                    block = models[start:start + g]
                    for params in zip(*(m.parameters() for m in block), strict=True):
                        mean = torch.stack(params).mean(0)
                        for p in params:
                            p.copy_(mean)
    return losses, models


@pytest.mark.parametrize(("n", "extra", "groups"), [
    (3, ["trainer.period=3"], [3, None, None, 3, None, None, 3]),
    (4, ["trainer.hierarchy={2: 2, 4: 4}"], [4, None, 2, None, 4, None, 2]),
])
def test_local_sgd_equals_a_hand_written_averaging_loop(n: int, extra: list[str],
                                                        groups: list[int | None]) -> None:
    """Each worker's SGD with momentum on its subset, the parameters averaged as
    PeriodicModelAverager / HierarchicalModelAverager do: the same losses and parameters."""
    cfg = compose_config("train", [*LOCAL, f"assignment.n={n}", "optimizer.momentum=0.9",
                                   *extra])
    trainer, reference = build_trainer(cfg), build_trainer(cfg)
    losses = [advance(trainer)["train_loss"] for _ in range(7)]
    expected, models = hand_written(reference, 7, 0.5, 0.9, groups)
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    for replica, model in zip(trainer.replicas, models, strict=True):
        for p, q in zip(replica.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    mean = [torch.stack(ps).mean(0) for ps in zip(*(m.parameters() for m in models), strict=True)]
    for p, q in zip(trainer.model.parameters(), mean, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_warmup_steps_are_synchronous() -> None:
    """With plain SGD, warm-up steps (the gradients averaged) then periodic averaging equal
    the hand-written loop that averages after every warm-up step."""
    cfg = compose_config("train", [*LOCAL, "assignment.n=3", "trainer.period=2",
                                   "trainer.warmup_steps=2"])
    trainer, reference = build_trainer(cfg), build_trainer(cfg)
    losses = [advance(trainer)["train_loss"] for _ in range(7)]
    expected, models = hand_written(reference, 7, 0.5, 0.0, [3, 3, 3, None, 3, None, 3])
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    for replica, model in zip(trainer.replicas, models, strict=True):
        for p, q in zip(replica.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_period_one_is_synchronous_sgd(tmp_path: Path) -> None:
    """period = 1 with plain SGD: the simulated uncoded wait-for-all run's losses,
    parameters and virtual clock (the slowest worker each step), to float tolerance."""
    cfg = [*FAST, "assignment.n=3", "straggler=slowdown", "straggler.p=0.3"]
    local = run_training(compose_config("train", [*cfg, "trainer=local_sgd_simulated",
                                                  "trainer.period=1"]), tmp_path / "local")
    sync = run_training(compose_config("train", [*cfg, "trainer.alpha_samples=0"]),
                        tmp_path / "sync")
    ours, theirs = rows(tmp_path / "local"), rows(tmp_path / "sync")
    np.testing.assert_allclose([r["train_loss"] for r in ours],
                               [r["train_loss"] for r in theirs], rtol=1e-6)
    np.testing.assert_allclose([r["virtual_time"] for r in ours],
                               [r["virtual_time"] for r in theirs], rtol=1e-12)
    for p, q in zip(final_params(tmp_path / "local"), final_params(tmp_path / "sync"),
                    strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert local["runtime"] == "local_sgd_simulated" and local["local_sgd"]["averages"] == 7
    assert sync["virtual_time"] == pytest.approx(local["virtual_time"])


def test_local_steps_absorb_a_straggler() -> None:
    """The clock: a period's time is the slowest worker's summed compute (not the sum of
    each step's slowest), so local SGD's clock is at most synchronous SGD's."""
    cfg = [*LOCAL, "assignment.n=3", "straggler=slowdown", "straggler.p=0.3",
           "trainer.iterations=8"]
    local = build_trainer(compose_config("train", [*cfg, "trainer.period=4"]))
    for _ in range(8):
        advance(local)
    times = np.array([local.compute_times(t) for t in range(8)])  # (iterations, n)
    # averages after steps 0, 4 (period 4 from step 0); steps 5..7 still running
    periods = (times[0].max() + times[1:5].sum(0).max() + 2 * local.comm
               + times[5:8].sum(0).max())
    assert local.state.virtual_time == pytest.approx(periods)
    assert local.state.virtual_time <= times.max(axis=1).sum() + 8 * local.comm + 1e-12


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    """3 iterations (inside a period), then resumed to 7: the 7-iteration run bit for bit
    (momentum per worker, minibatches, the workers' clocks)."""
    cfg = [*LOCAL, "assignment.n=3", "optimizer.momentum=0.9", "straggler=slowdown",
           "straggler.p=0.3", "trainer.period=4"]
    whole = run_training(compose_config("train", cfg), tmp_path / "whole")
    short = [o for o in cfg if not o.startswith("trainer.iterations")]
    run_training(compose_config("train", [*short, "trainer.iterations=3"]), tmp_path / "cut")
    resumed = run_training(compose_config("train", [*cfg, "trainer.resume=true"]),
                           tmp_path / "cut")
    assert rows(tmp_path / "whole") == rows(tmp_path / "cut")
    assert resumed["virtual_time"] == whole["virtual_time"]
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for x, y in zip(a["replicas"], b["replicas"], strict=True):
        for p, q in zip(x.values(), y.values(), strict=True):
            assert torch.equal(p, q)
    for p, q in zip(final_params(tmp_path / "whole"), final_params(tmp_path / "cut"),
                    strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(("extra", "message"), [
    (["trainer.period=0"], "trainer.period must be a positive integer"),
    (["trainer.period=true"], "trainer.period must be a positive integer"),
    (["trainer.warmup_steps=-1"], "trainer.warmup_steps must be a non-negative integer"),
    (["trainer.warmup_steps=false"], "trainer.warmup_steps must be a non-negative integer"),
    (["trainer.hierarchy={4: 2, 2: 3}"], "increasing periods"),
    (["trainer.hierarchy={2: true}"], "positive integers"),
    (["trainer.hierarchy=3"], "non-empty mapping"),
    (["trainer.hierarchy={2: 2, 4: 4}"], "the last .* must be n"),
    (["+trainer.bucket_cap_mb=1"], "does not apply to trainer=local_sgd_simulated"),
    (["code=uncoded_ignore"], "needs code=uncoded_wait"),
    (["cluster=ethernet_10g", "straggler=delay", "straggler.wait_for=deadline",
      "straggler.deadline=1"],
     "cluster=ethernet_10g retimes"),
])
def test_bad_keys_are_refused_in_one_line(extra: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        validate(compose_config("train", [*LOCAL, "assignment.n=3", *extra]))
    assert "\n" not in str(info.value)
